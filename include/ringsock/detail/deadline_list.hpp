// Deadlines of operations that wait in user space: gated behind another operation on
// the same socket direction, or pending for room in the SQ. The kernel's link timeout
// only starts when the request is submitted, so the loop expires these itself and
// wakes for the earliest one. Only operations with a time limit are ever listed.
#pragma once

#include <ctime>

#include "op_list.hpp"
#include "operation.hpp"

namespace ringsock::detail {

class deadline_list {
public:
    bool empty() const noexcept { return list_.empty(); }
    void watch(operation* op) noexcept { list_.push(op); }
    void unwatch(operation* op) noexcept { list_.erase(op); }
    void clear() noexcept { list_.clear(); }

    /// Calls `expire(op)` for every listed operation still waiting in user space whose
    /// deadline has passed (unlisted first), drops those that reached the kernel (their
    /// link timeout watches them now), and returns the earliest deadline still ahead in
    /// `next` (false if there is none).
    template <class F>
    bool expire(F&& expire_op, __kernel_timespec& next) noexcept {
        timespec ts{};
        ::clock_gettime(CLOCK_MONOTONIC, &ts);
        const __kernel_timespec now{ts.tv_sec, ts.tv_nsec};
        bool any = false;
        for (operation* op = list_.front(); op;) {
            operation* following = list::next(op);
            if (op->state_ != op_state::gated && op->state_ != op_state::pending) {
                unwatch(op);
            } else if (!deadline_before(now, op->deadline_)) {
                unwatch(op);
                expire_op(op);
            } else if (!any || deadline_before(op->deadline_, next)) {
                next = op->deadline_;
                any = true;
            }
            op = following;
        }
        return any;
    }

    /// How long from now until `t` (zero if it has passed).
    static __kernel_timespec until(const __kernel_timespec& t) noexcept {
        timespec now{};
        ::clock_gettime(CLOCK_MONOTONIC, &now);
        long long ns = (t.tv_sec - now.tv_sec) * 1'000'000'000LL + (t.tv_nsec - now.tv_nsec);
        if (ns < 0) ns = 0;
        return __kernel_timespec{ns / 1'000'000'000, ns % 1'000'000'000};
    }

private:
    using list = op_list<&operation::deadline_next_, &operation::deadline_prev_, &operation::in_deadline_list_>;
    list list_;
};

}  // namespace ringsock::detail
