// Stop requests from other threads: a stop callback runs on whatever thread requested
// the stop, but only the loop's thread may touch the ring. The callback posts the
// operation here and wakes the loop through an eventfd the ring keeps a read armed on;
// the loop then cancels it. An operation purges itself before its frame can go.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <mutex>
#include <vector>

#include "../unique_fd.hpp"
#include "errno.hpp"
#include "operation.hpp"

namespace ringsock::detail {

class remote_queue {
public:
    remote_queue() {
        wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!wake_fd_) throw_errno(errno, "io_context: eventfd");
    }

    int wake_fd() const noexcept { return wake_fd_.get(); }
    bool has_posts() const noexcept { return flag_.load(std::memory_order_acquire); }

    void post(operation* op) noexcept {
        {
            std::lock_guard lock(mu_);
            cancels_.push_back(op);  // NOLINT: may allocate, rarely (a stop from another thread)
            op->remote_cancel_posted_.store(true, std::memory_order_release);
        }
        flag_.store(true, std::memory_order_release);
        wake();
    }
    /// Removes `op`'s post, if any: called before the operation can be freed.
    void purge(operation* op) noexcept {
        std::lock_guard lock(mu_);
        std::erase(cancels_, op);
        op->remote_cancel_posted_.store(false, std::memory_order_relaxed);
    }
    /// Everything posted so far, for the loop to cancel.
    std::vector<operation*> take() noexcept {
        flag_.store(false, std::memory_order_relaxed);
        std::vector<operation*> todo;
        std::lock_guard lock(mu_);
        todo.swap(cancels_);
        for (auto* op : todo) op->remote_cancel_posted_.store(false, std::memory_order_relaxed);
        return todo;
    }
    /// Wakes the loop. Safe from any thread.
    void wake() noexcept {
        std::uint64_t one = 1;
        // A full eventfd counter (EAGAIN) already means "wake up".
        [[maybe_unused]] auto n = ::write(wake_fd_.get(), &one, sizeof one);
    }

private:
    unique_fd wake_fd_;
    std::atomic<bool> flag_{false};
    std::mutex mu_;
    std::vector<operation*> cancels_;
};

}  // namespace ringsock::detail
