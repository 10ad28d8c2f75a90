// Timers: co_await sleep_for(ctx, 10ms) suspends without blocking the loop; a `timer`
// object has an expiry that can be moved or cancelled while a coroutine waits on it.
#pragma once

#include <liburing.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <stop_token>
#include <utility>

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

class timer;

namespace detail {

/// Now on CLOCK_MONOTONIC (the steady clock), in nanoseconds.
inline std::int64_t monotonic_now_ns() noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

/// One co_await on a timer: an IORING_OP_TIMEOUT at the timer's expiry. The expiry
/// may move while it waits. Later: nothing is sent; when the kernel's timeout fires
/// early, the wait resubmits itself for the new expiry (so resetting an idle timeout
/// on every read costs no SQE). Earlier: the request is cancelled and resubmitted.
class timer_wait_op final : public operation {
public:
    timer_wait_op(io_context& ctx, timer* t, const op_limits& lim) noexcept
        : operation(ctx, lim), timer_(t), stop_(lim.stop) {}
    ~timer_wait_op() {
        dying_ = true;  // on_complete must not resubmit while settle() reaps
        settle();       // the kernel reads at_
        unlink();
    }
    bool await_ready() noexcept;
    void await_suspend(std::coroutine_handle<> h);
    void prepare(io_uring_sqe* sqe) noexcept override;
    bool on_complete() noexcept override;
    io_result<void> await_resume() noexcept {
        finish_wait();
        unlink();
        if (res_ == -ETIME || res_ >= 0) return {};
        return {result_error(), "timer::wait"};
    }

private:
    friend class ringsock::timer;
    bool waiting() const noexcept { return state_ == op_state::pending || state_ == op_state::in_flight; }
    /// The timer's expiry changed (`expiry_ns`): follow it.
    void expiry_moved(std::int64_t expiry_ns) noexcept {
        // Only an expiry earlier than the one the kernel holds needs the kernel.
        if (state_ == op_state::in_flight && expiry_ns < armed_ns_) {
            moving_ = true;
            ctx_->request_cancel(this);
        }
    }
    /// timer::cancel() or ~timer(): end with operation_canceled (unless already fired).
    bool cancel(bool timer_gone) noexcept;
    void unlink() noexcept;

    timer* timer_;
    std::stop_token stop_;
    timer_wait_op* next_ = nullptr;
    timer_wait_op* prev_ = nullptr;
    bool linked_ = false;
    bool moving_ = false;    // cancelled to move the expiry earlier, not to end the wait
    bool canceled_ = false;  // by timer::cancel() or the timer's destruction
    bool dying_ = false;
    std::int64_t armed_ns_ = 0;  // the expiry the kernel holds
    __kernel_timespec at_{};
};

}  // namespace detail

/// A timer bound to an io_context, for deadlines that move: idle timeouts, heartbeats.
///
///   ringsock::timer idle(ctx);
///   idle.expires_after(30s);
///   // one coroutine:                          // another, on each request:
///   if (co_await idle.wait()) conn.close();    idle.expires_after(30s);
///
/// Semantics (like tokio's Sleep::reset, not Asio's): changing the expiry while a wait
/// is in progress moves that wait's deadline; the wait is not cancelled. A wait ends
/// with success once the current expiry has passed, with operation_canceled after
/// cancel() or destruction of the timer, and as usual for its own op_limits (a stop
/// request, or timed_out). A wait that has already completed (even if its coroutine
/// has not resumed yet) keeps its result. A new timer never expires until told to.
///
/// Each wait uses one SQE; moving the expiry later uses none until the old expiry comes
/// (then one to re-arm); moving it earlier costs a cancel and a new SQE. No thread.
/// Several coroutines may wait on one timer at once. Not movable (waits point at it);
/// use it on the context's thread and destroy it before the context.
class timer {
public:
    /// The clock expiries are measured on (CLOCK_MONOTONIC).
    using clock = std::chrono::steady_clock;

    /// A timer on `ctx` that never expires until given an expiry.
    explicit timer(io_context& ctx) noexcept : ctx_(&ctx) {}
    timer(const timer&) = delete;
    timer& operator=(const timer&) = delete;
    /// Waits in progress end with operation_canceled (a wait that already fired keeps
    /// its success); none of them touches the timer again.
    ~timer() {
        while (head_) head_->cancel(true);
    }

    /// Sets the expiry to `d` from now (zero or negative: now; too long: never).
    template <class Rep, class Period>
    void expires_after(std::chrono::duration<Rep, Period> d) noexcept {
        set_expiry(detail::monotonic_now_ns() + op_limits::saturate(d).count());
    }
    /// Sets the expiry to `t` (in the past: expired; time_point::max(): never).
    template <class Duration>
    void expires_at(std::chrono::time_point<clock, Duration> t) noexcept {
        // saturate(): time_point::max() in a coarse unit would overflow in nanoseconds.
        set_expiry(op_limits::saturate(t.time_since_epoch()).count());
    }
    /// The current expiry (clock::time_point::max() region when never set).
    clock::time_point expiry() const noexcept {
        return clock::time_point(std::chrono::duration_cast<clock::duration>(std::chrono::nanoseconds(expiry_ns_)));
    }

    /// Waits until the expiry. co_await yields io_result<void>: success when the timer
    /// expired, operation_canceled after cancel() (or a stop request), timed_out when
    /// `lim`'s own time limit came first. An expiry already past returns at once.
    /// The timer must outlive the co_await.
    [[nodiscard]] detail::timer_wait_op wait(op_limits lim = {}) noexcept {
        return detail::timer_wait_op(*ctx_, this, lim);
    }

    /// Ends every wait in progress with operation_canceled (a wait that already fired
    /// keeps its success). The expiry stays; a later wait() waits for it as usual.
    /// Returns the number of waits cancelled.
    std::size_t cancel() noexcept {
        std::size_t n = 0;
        for (auto* w = head_; w;) {
            auto* following = w->next_;
            n += w->cancel(false);
            w = following;
        }
        return n;
    }

    /// The context its waits run on.
    io_context& context() const noexcept { return *ctx_; }

private:
    friend class detail::timer_wait_op;
    void set_expiry(std::int64_t ns) noexcept {
        expiry_ns_ = ns;
        for (auto* w = head_; w; w = w->next_) w->expiry_moved(ns);
    }

    io_context* ctx_;
    std::int64_t expiry_ns_ = op_limits::no_limit.count();  // CLOCK_MONOTONIC
    detail::timer_wait_op* head_ = nullptr;                 // waits in progress
};

namespace detail {

inline bool timer_wait_op::await_ready() noexcept {
    if (operation::await_ready()) return true;  // a stop already requested
    if (monotonic_now_ns() < timer_->expiry_ns_) return false;
    res_ = -ETIME;  // already expired: no SQE
    state_ = op_state::done;
    return true;
}

inline void timer_wait_op::await_suspend(std::coroutine_handle<> h) {
    next_ = timer_->head_;
    prev_ = nullptr;
    if (next_) next_->prev_ = this;
    timer_->head_ = this;
    linked_ = true;
    operation::await_suspend(h);
}

inline void timer_wait_op::prepare(io_uring_sqe* sqe) noexcept {
    if (timer_) armed_ns_ = timer_->expiry_ns_;
    at_ = __kernel_timespec{armed_ns_ / 1'000'000'000, armed_ns_ % 1'000'000'000};
    io_uring_prep_timeout(sqe, &at_, 0, IORING_TIMEOUT_ABS);
}

inline bool timer_wait_op::on_complete() noexcept {
    const bool fired = res_ == -ETIME;
    const bool moved = res_ == -ECANCELED && std::exchange(moving_, false);
    // Cancelled for good (stop, cancel(), own time limit), or an error: as it is.
    if ((!fired && !moved) || timed_out_ || dying_ || !timer_) return true;
    // A cancel() or stop that came with the move wins, even if the new expiry is due.
    if (!fired && (canceled_ || stop_.stop_requested())) return true;
    if (monotonic_now_ns() >= timer_->expiry_ns_) {
        res_ = -ETIME;  // due: the expiry moved earlier and has passed, or fired on time
        return true;
    }
    // Not due: the expiry moved. Unless a cancel or stop raced the move, follow it.
    if (canceled_ || stop_.stop_requested()) {
        res_ = -ECANCELED;
        return true;
    }
    cancel_requested_ = cancel_sent_ = false;
    ctx_->submit(this);
    return false;
}

inline bool timer_wait_op::cancel(bool timer_gone) noexcept {
    if (timer_gone) {
        unlink();
        timer_ = nullptr;
    }
    if (!waiting()) return false;
    canceled_ = true;
    moving_ = false;
    ctx_->request_cancel(this);
    return true;
}

inline void timer_wait_op::unlink() noexcept {
    if (!linked_) return;
    if (prev_) prev_->next_ = next_;
    else timer_->head_ = next_;
    if (next_) next_->prev_ = prev_;
    next_ = prev_ = nullptr;
    linked_ = false;
}

}  // namespace detail

}  // namespace ringsock
