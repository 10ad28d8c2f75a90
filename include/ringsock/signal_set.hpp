// signal_set: signals as awaitable events. The signals are blocked in the calling
// thread and read from a signalfd through the ring, so a server can co_await SIGTERM
// beside its socket work.
#pragma once

#include <liburing.h>
#include <pthread.h>
#include <signal.h>
#include <sys/signalfd.h>

#include <cerrno>
#include <initializer_list>

#include "detail/errno.hpp"
#include "detail/operation.hpp"
#include "detail/socket_state.hpp"
#include "io_context.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "unique_fd.hpp"

namespace ringsock {
namespace detail {

/// IORING_OP_READ of one signalfd_siginfo record (a signalfd is not a socket).
class signal_wait_op final : public operation {
public:
    signal_wait_op(io_context& ctx, int fd, socket_state* st, const op_limits& lim) noexcept
        : operation(ctx, lim), fd_(fd) {
        // Waits queue one at a time on the set, so destroying it can reach them.
        attach(st, &st->recv_gate);
    }
    ~signal_wait_op() { settle(); }  // the kernel writes info_
    void prepare(io_uring_sqe* sqe) noexcept override {
        io_uring_prep_read(sqe, fd_, &info_, sizeof info_, 0);
    }
    io_result<int> await_resume() noexcept {
        finish_wait();
        if (res_ < 0) return {result_error(), "signal_set::wait"};
        if (res_ != static_cast<int>(sizeof info_))
            return {std::make_error_code(std::errc::io_error), "signal_set::wait: short signalfd read"};
        return static_cast<int>(info_.ssi_signo);
    }

private:
    int fd_;
    signalfd_siginfo info_{};
};

}  // namespace detail

/// Delivers the given signals as values. Construct it before starting any thread (or
/// block the signals in every thread yourself): a signal is only queued for the
/// signalfd if no thread has it unblocked. Two instances of one signal that arrive
/// before a wait merge into one. Children inherit the blocked mask: unblock the signals
/// after fork() or with posix_spawnattr_setsigmask. The signals stay blocked when the
/// set is destroyed, so a late signal is not delivered with its default action.
class signal_set {
public:
    /// Throws std::system_error if the signals cannot be blocked or the signalfd created.
    signal_set(io_context& ctx, std::initializer_list<int> signals) : ctx_(&ctx) {
        sigemptyset(&mask_);
        for (int s : signals) {
            if (sigaddset(&mask_, s) < 0) detail::throw_errno(errno, "signal_set: sigaddset");
        }
        if (int rc = ::pthread_sigmask(SIG_BLOCK, &mask_, nullptr); rc != 0)
            detail::throw_errno(rc, "signal_set: pthread_sigmask");
        fd_.reset(::signalfd(-1, &mask_, SFD_CLOEXEC | SFD_NONBLOCK));
        if (!fd_) detail::throw_errno(errno, "signal_set: signalfd");
    }

    /// Takes over the signalfd and the waits in progress; the moved-from set has no
    /// signalfd. The signals stay blocked either way.
    signal_set(signal_set&&) noexcept = default;
    signal_set& operator=(signal_set&&) = delete;
    /// Waits in progress end with operation_canceled.
    ~signal_set() {
        if (ctx_ && state_.detach_all(detail::core(*ctx_))) detail::core(*ctx_).flush();
        state_.closed = true;
        state_.file.close();
    }

    /// Waits for one of the signals; co_await yields io_result<int> (the signal number).
    [[nodiscard]] auto wait(op_limits lim = {}) { return detail::signal_wait_op(*ctx_, fd_.get(), &state_, lim); }

    /// The signals this set blocked and delivers.
    const sigset_t& mask() const noexcept { return mask_; }
    /// The signalfd (non-blocking, close-on-exec), still owned by the set.
    int native_handle() const noexcept { return fd_.get(); }

private:
    io_context* ctx_;
    detail::socket_state state_;  // the waits in progress, for the destructor
    sigset_t mask_{};
    unique_fd fd_;
};

}  // namespace ringsock
