// Timers: co_await sleep_for(ctx, 10ms) suspends without blocking the loop.
#pragma once

#include <liburing.h>

#include <cerrno>
#include <chrono>

#include "detail/operation.hpp"
#include "io_context.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"

namespace ringsock {
namespace detail {

/// IORING_OP_TIMEOUT with an absolute CLOCK_MONOTONIC expiry; -ETIME is success.
class sleep_op final : public operation {
public:
    sleep_op(io_context& ctx, __kernel_timespec at, std::stop_token stop) noexcept
        : operation(ctx, op_limits(std::move(stop))), at_(at) {}
    ~sleep_op() { settle(); }  // the kernel reads at_
    void prepare(io_uring_sqe* sqe) noexcept override {
        io_uring_prep_timeout(sqe, &at_, 0, IORING_TIMEOUT_ABS);
    }
    io_result<void> await_resume() noexcept {
        finish_wait();
        if (res_ == -ETIME || res_ >= 0) return {};
        return {result_error(), "sleep"};
    }

private:
    __kernel_timespec at_;
};

}  // namespace detail

/// Suspends for `d`. co_await yields io_result<void>; a stop request ends it early
/// with operation_canceled. Any duration too long to represent (hours::max()) sleeps
/// "forever" (op_limits::no_limit, about 146 years); zero or negative returns at once.
template <class Rep, class Period>
[[nodiscard]] inline auto sleep_for(io_context& ctx, std::chrono::duration<Rep, Period> d, std::stop_token stop = {}) {
    return detail::sleep_op(ctx, detail::deadline_after(op_limits::saturate(d)), std::move(stop));
}
/// Suspends until `t` on the steady clock (CLOCK_MONOTONIC on Linux).
template <class Duration>
[[nodiscard]] inline auto sleep_until(io_context& ctx, std::chrono::time_point<std::chrono::steady_clock, Duration> t,
                                      std::stop_token stop = {}) {
    const auto now = std::chrono::steady_clock::now();
    // Subtract only when t is ahead: time_point::min() - now would overflow.
    const auto d = t <= now ? std::chrono::steady_clock::duration::zero()
                            : std::chrono::duration_cast<std::chrono::steady_clock::duration>(t - now);
    return detail::sleep_op(ctx, detail::deadline_after(op_limits::saturate(d)), std::move(stop));
}

}  // namespace ringsock
