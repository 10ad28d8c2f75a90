// Work other threads hand to a loop: functions (post) and tasks (spawn_on). Producers
// push under a mutex and wake the loop only when no wake is already on its way, so a
// storm of posts costs one wake per loop turn, not one per post. The loop takes the
// whole list at once at the start of a turn. A closed inbox (its context is shutting
// down) discards what is pushed instead of keeping it.
#pragma once

#include <atomic>
#include <mutex>

namespace ringsock::detail {

class scheduler;

/// One unit of posted work. run() executes it on the target loop and frees it;
/// discard() frees it without running (the target is gone or shutting down).
struct posted_item {
    posted_item* next_posted = nullptr;
    virtual void run(scheduler& s) = 0;
    virtual void discard() noexcept = 0;

protected:
    ~posted_item() = default;
};

class inbox {
public:
    inbox() = default;
    inbox(const inbox&) = delete;
    inbox& operator=(const inbox&) = delete;
    ~inbox() { close(); }

    /// Queues `item`. Returns whether the loop must be woken (no wake is pending yet);
    /// false also when the inbox is closed, and then `item` has been discarded.
    bool push(posted_item* item) noexcept {
        {
            std::unique_lock lock(mu_);
            if (closed_) {
                lock.unlock();
                item->discard();  // may run destructors that post elsewhere: not under the lock
                return false;
            }
            item->next_posted = nullptr;
            if (tail_) tail_->next_posted = item;
            else head_ = item;
            tail_ = item;
        }
        return !wake_pending_.exchange(true, std::memory_order_acq_rel);
    }

    /// Cheap check for the loop: something was pushed since the last take().
    bool has_items() const noexcept { return wake_pending_.load(std::memory_order_acquire); }

    /// Everything pushed so far, oldest first. Clears the wake flag before taking, so a
    /// push that misses this take wakes the loop again.
    posted_item* take() noexcept {
        wake_pending_.store(false, std::memory_order_seq_cst);
        std::lock_guard lock(mu_);
        posted_item* all = head_;
        head_ = tail_ = nullptr;
        return all;
    }

    /// Stops accepting work and discards what is queued. Idempotent.
    void close() noexcept {
        posted_item* all = nullptr;
        {
            std::lock_guard lock(mu_);
            closed_ = true;
            all = head_;
            head_ = tail_ = nullptr;
        }
        while (all) {
            posted_item* next = all->next_posted;
            all->discard();
            all = next;
        }
    }

private:
    std::mutex mu_;
    posted_item* head_ = nullptr;
    posted_item* tail_ = nullptr;
    bool closed_ = false;
    std::atomic<bool> wake_pending_{false};
};

}  // namespace ringsock::detail
