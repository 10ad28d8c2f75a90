// What the loop will resume next, and how much work keeps run() going: an intrusive
// FIFO of resumables (never allocates) and the count of outstanding operations and
// waiters. Submission, cancellation and the scheduler all feed it.
#pragma once

#include <cstddef>

#include "operation.hpp"

namespace ringsock::detail {

class ready_queue {
public:
    bool empty() const noexcept { return list_.empty(); }
    std::size_t size() const noexcept { return list_.size(); }
    void push(resumable* r) noexcept { list_.push_back(r); }
    resumable* pop() noexcept { return list_.pop_front(); }
    void erase(resumable* r) noexcept { list_.erase(r); }
    /// Forgets everything queued (teardown: the frames go with their owners).
    void clear() noexcept {
        while (list_.pop_front()) {
        }
    }

    void add_work() noexcept { ++work_; }
    void remove_work() noexcept { --work_; }
    std::size_t work() const noexcept { return work_; }
    /// Takes a resumable that is being destroyed out of the queue, giving back the
    /// work unit its push came with (a no-op if it is not queued).
    void unready(resumable* r) noexcept {
        if (!r->linked_) return;
        list_.erase(r);
        --work_;
    }

private:
    resumable_list list_;
    std::size_t work_ = 0;
};

}  // namespace ringsock::detail
