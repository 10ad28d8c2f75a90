// The operations behind file.hpp: OPENAT2, STATX, positional READ/WRITE and CLOSE on
// the ring. Operations started through a ringsock::file are tracked by it, so closing
// or destroying the file cancels them before the descriptor number can be reused.
#pragma once

#include <fcntl.h>
#include <linux/openat2.h>
#include <liburing.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <optional>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "../error.hpp"
#include "../io_context.hpp"
#include "../io_result.hpp"
#include "../op_limits.hpp"
#include "../unique_fd.hpp"
#include "operation.hpp"
#include "transfer_ops.hpp"

namespace ringsock {
class file;
}

namespace ringsock::detail {

/// A request interrupted on an io-wq thread (a FIFO open cancelled while it waits for
/// a writer) can complete with the kernel-internal restart codes ERESTARTSYS (512),
/// ERESTARTNOINTR, ERESTARTNOHAND and ERESTART_RESTARTBLOCK (516), which no user-space
/// errno names. They all mean "interrupted": -EINTR, which the base maps to
/// operation_canceled or timed_out.
inline int restart_as_eintr(int res) noexcept {
    return (res <= -512 && res >= -516) ? -EINTR : res;
}

class file_operation;
class file_op_list;

/// The operations started through one ringsock::file: an intrusive list (never
/// allocates) through file_operation's own links.
class file_op_list {
public:
    file_op_list() noexcept = default;
    file_op_list(const file_op_list&) = delete;
    file_op_list& operator=(const file_op_list&) = delete;
    /// Takes over `o`'s operations and re-points them here (the file moved).
    void take(file_op_list& o) noexcept;
    void push(file_operation* op) noexcept;
    void erase(file_operation* op) noexcept;
    /// Detaches every operation and cancels the queued and in-flight ones (those
    /// not yet awaited will complete cancelled without an SQE). True if one was in
    /// flight: its SQE may still sit in the SQ, so flush before closing the descriptor.
    bool detach_all(scheduler& s) noexcept;

private:
    file_operation* head_ = nullptr;
};

/// A time limit kept in user space for a request that may block on an io-wq thread.
/// TRICKY: the kernel (seen on 6.18) never arms the link timeout of a request that
/// runs on io-wq from the start (IOSQE_ASYNC, or forced async like OPENAT2 with
/// O_CREAT/O_TRUNC and STATX): a FIFO open with a time limit would wait forever. So
/// such an operation arms its own IORING_OP_TIMEOUT beside the request instead, and
/// cancels the request when it fires (an ASYNC_CANCEL does interrupt io-wq work).
/// Internal: it never resumes anything itself and counts as no work.
class wq_deadline final : public operation {
public:
    wq_deadline(io_context& ctx, file_operation* parent) noexcept : operation(ctx, op_limits()), parent_(parent) {}
    ~wq_deadline() { settle(); }  // the kernel reads at_; its CQE names this object
    bool is_internal() const noexcept override { return true; }
    void prepare(io_uring_sqe* sqe) noexcept override { io_uring_prep_timeout(sqe, &at_, 0, IORING_TIMEOUT_ABS); }
    bool on_complete() noexcept override;

    /// Starts the timer (after the request, so it follows it in the SQ).
    void arm(std::chrono::nanoseconds limit) noexcept {
        at_ = deadline_after(limit);
        ctx_->submit(this);
    }
    /// The request finished first: true if the caller must wait for this timer's own
    /// completion (its CQE names this object) before resuming; then it is cancelled and
    /// its completion makes the request ready.
    bool hold_request() noexcept {
        if (state_ == op_state::pending) {
            settle();  // never reached the SQ: just leave the queue
            return false;
        }
        if (state_ != op_state::in_flight) return false;
        parent_waits_ = true;
        ctx_->request_cancel(this);
        return true;
    }
    /// The request is being destroyed: never touch it again.
    void forget_request() noexcept { parent_ = nullptr; }

private:
    file_operation* parent_;
    __kernel_timespec at_{};
    bool parent_waits_ = false;
};

/// Base of the file operations: an optional tracking by a file (see file_op_list) and
/// time limits that also hold on io-wq (wq_deadline). Abstract: the concrete
/// operations are final and call `release()` first in their own destructors.
class file_operation : public operation {
public:
    /// `wq_limit`: keep the time limit in user space (wq_deadline) rather than in a link
    /// timeout, for requests that may block on io-wq.
    file_operation(io_context& ctx, const op_limits& lim, file_op_list* owner, bool wq_limit = false) noexcept
        : operation(ctx, wq_limit ? op_limits(lim.stop) : lim), owner_(owner), deadline_(ctx, this) {
        if (owner_) owner_->push(this);
        if (wq_limit && lim.timeout) limit_ = *lim.timeout;
    }

    void await_suspend(std::coroutine_handle<> h) {
        operation::await_suspend(h);
        if (limit_ && (state_ == op_state::pending || state_ == op_state::in_flight)) deadline_.arm(*limit_);
    }
    /// The request's own completion: resume now, unless its timer must be reaped first.
    bool on_complete() noexcept override { return !deadline_.hold_request(); }

protected:
    ~file_operation() {
        if (owner_) owner_->erase(this);
    }
    /// Call first in every concrete destructor: makes sure neither the kernel nor the
    /// loop refers to the request any more (then deadline_'s own destructor settles it).
    void release() noexcept {
        deadline_.forget_request();
        settle();
    }
    /// The file it was started on was closed (or released) before it was awaited.
    bool file_gone() const noexcept { return was_tracked_ && !owner_; }
    /// For await_ready(): completes at once, without an SQE, if the file is gone.
    bool complete_if_file_gone() noexcept {
        if (!file_gone()) return false;
        res_ = -ECANCELED;
        state_ = op_state::done;
        return true;
    }

private:
    friend class file_op_list;
    friend class wq_deadline;
    void deadline_expired() noexcept {
        timed_out_ = true;
        ctx_->request_cancel(this);
    }
    void deadline_reaped() noexcept { ctx_->make_ready_op(this); }

    file_op_list* owner_ = nullptr;
    file_operation* next_ = nullptr;
    file_operation* prev_ = nullptr;
    bool was_tracked_ = false;
    std::optional<std::chrono::nanoseconds> limit_;
    wq_deadline deadline_;
};

inline bool wq_deadline::on_complete() noexcept {
    if (parent_ == nullptr) return false;
    if (std::exchange(parent_waits_, false)) parent_->deadline_reaped();  // the request ended first
    else if (res_ == -ETIME) parent_->deadline_expired();
    return false;
}

inline void file_op_list::push(file_operation* op) noexcept {
    op->was_tracked_ = true;
    op->prev_ = nullptr;
    op->next_ = head_;
    if (head_) head_->prev_ = op;
    head_ = op;
}

inline void file_op_list::erase(file_operation* op) noexcept {
    if (op->prev_) op->prev_->next_ = op->next_;
    else head_ = op->next_;
    if (op->next_) op->next_->prev_ = op->prev_;
    op->next_ = op->prev_ = nullptr;
    op->owner_ = nullptr;
}

inline void file_op_list::take(file_op_list& o) noexcept {
    head_ = std::exchange(o.head_, nullptr);
    for (file_operation* op = head_; op; op = op->next_) op->owner_ = this;
}

inline bool file_op_list::detach_all(scheduler& s) noexcept {
    bool in_flight = false;
    while (file_operation* op = head_) {
        erase(op);
        switch (op->state_) {
            case op_state::in_flight:
                in_flight = true;
                s.request_cancel(op);  // ASYNC_CANCEL; interrupted(): no further chunk
                break;
            case op_state::pending:
            case op_state::gated:
                s.request_cancel(op);  // completes cancelled, never reaches the kernel
                break;
            default:
                break;  // not awaited yet (sees file_gone()), or already complete
        }
    }
    return in_flight;
}

/// IORING_OP_OPENAT2. The descriptor the kernel installs belongs to this operation
/// from its CQE on: handed over in await_resume, or closed by the destructor when the
/// awaiting coroutine is destroyed first (after settle() reaped the completion).
template <class Result>
class open_op final : public file_operation {
public:
    open_op(io_context& ctx, int dirfd, const char* path, const open_how& how, const op_limits& lim,
            file_op_list* owner = nullptr) noexcept
        : file_operation(ctx, lim, owner, true), dirfd_(dirfd), path_(path), how_(how) {
        how_.flags |= O_CLOEXEC;
    }
    // TRICKY: the kernel reads path_ and how_ and installs a descriptor: settle first,
    // then fd_ (a member) closes what a late completion produced.
    ~open_op() { release(); }
    bool await_ready() noexcept { return complete_if_file_gone() || operation::await_ready(); }
    void prepare(io_uring_sqe* sqe) noexcept override {
        io_uring_prep_openat2(sqe, dirfd_, path_, &how_);
        // TRICKY: io_uring first tries an open inline with O_NONBLOCK added, so a FIFO
        // reader gets a descriptor at once (no writer yet) and a writer gets ENXIO,
        // unlike openat2(2). IOSQE_ASYNC opens on an io-wq thread with the caller's
        // exact flags. A caller who asked for O_NONBLOCK loses nothing inline.
        if (!(how_.flags & O_NONBLOCK)) sqe->flags |= IOSQE_ASYNC;
    }
    void on_cqe(int res, unsigned flags) noexcept override {
        res = restart_as_eintr(res);
        if (res >= 0) fd_.reset(res);  // ours, whatever happens to the waiter
        operation::on_cqe(res, flags);
    }
    io_result<Result> await_resume() noexcept {
        finish_wait();
        // A descriptor that arrived wins over a late stop or time limit: with O_CREAT
        // or O_TRUNC the open has had its effect, so reporting it cancelled would lie.
        if (!fd_) return {res_ < 0 ? result_error() : std::make_error_code(std::errc::bad_file_descriptor), "open"};
        if constexpr (std::is_same_v<Result, unique_fd>) return std::move(fd_);
        else return Result(ctx_->owner(), std::move(fd_));
    }

private:
    int dirfd_;
    const char* path_;
    open_how how_;
    unique_fd fd_;
};

/// IORING_OP_STATX into a struct statx held here (the kernel writes it on completion).
class statx_op final : public file_operation {
public:
    statx_op(io_context& ctx, int dirfd, const char* path, int flags, unsigned mask, const op_limits& lim,
             file_op_list* owner = nullptr) noexcept
        : file_operation(ctx, lim, owner, true), dirfd_(dirfd), path_(path), flags_(flags), mask_(mask) {}
    ~statx_op() { release(); }  // the kernel writes buf_ and reads path_
    bool await_ready() noexcept { return complete_if_file_gone() || operation::await_ready(); }
    void prepare(io_uring_sqe* sqe) noexcept override {
        io_uring_prep_statx(sqe, dirfd_, path_, flags_, mask_, &buf_);
    }
    void on_cqe(int res, unsigned flags) noexcept override { operation::on_cqe(restart_as_eintr(res), flags); }
    io_result<struct statx> await_resume() noexcept {
        finish_wait();
        if (res_ < 0) return {result_error(), "statx"};
        return buf_;
    }

private:
    int dirfd_;
    const char* path_;
    int flags_;
    unsigned mask_;
    struct statx buf_{};
};

/// Positional IORING_OP_READ / IORING_OP_WRITE. The "some" kinds make one request and
/// report what it moved; read_exact loops until the buffer is full (end of file first
/// is errc::end_of_stream), write_all until everything is written. Each chunk goes to
/// offset + bytes done; the time limit covers all chunks.
class rw_at_op final : public file_operation {
public:
    enum class kind : unsigned char { read_some, read_exact, write_some, write_all };

    rw_at_op(io_context& ctx, int fd, std::byte* buf, std::size_t len, std::uint64_t offset, kind k,
             const op_limits& lim, file_op_list* owner = nullptr) noexcept
        : file_operation(ctx, lim, owner), fd_(fd), buf_(buf), total_(len), offset_(offset), kind_(k) {}
    ~rw_at_op() { release(); }  // the kernel reads or writes buf_
    bool await_ready() noexcept {
        if (complete_if_file_gone()) return true;
        if (operation::await_ready()) return true;
        if (total_ == 0) {
            state_ = op_state::done;  // nothing to move: never mistake it for end of file
            return true;
        }
        return false;
    }
    void prepare(io_uring_sqe* sqe) noexcept override {
        const auto n = static_cast<unsigned>(std::min(total_ - done_, max_chunk));
        if (writes()) io_uring_prep_write(sqe, fd_, buf_ + done_, n, offset_ + done_);
        else io_uring_prep_read(sqe, fd_, buf_ + done_, n, offset_ + done_);
    }
    void on_cqe(int res, unsigned flags) noexcept override { operation::on_cqe(restart_as_eintr(res), flags); }
    bool on_complete() noexcept override {
        if (res_ <= 0) return true;
        done_ += static_cast<std::size_t>(res_);
        const bool whole = kind_ == kind::read_exact || kind_ == kind::write_all;
        // Never after a cancel or a time limit, nor once the file is closed.
        if (whole && done_ < total_ && !interrupted() && !file_gone()) {
            ctx_->submit(this);
            return false;
        }
        return true;
    }
    io_result<std::size_t> await_resume() noexcept {
        finish_wait();
        const char* what = writes() ? "write_at" : "read_at";
        if (kind_ == kind::read_some || kind_ == kind::write_some) {
            if (res_ < 0 && done_ == 0) return {0, result_error(), what};
            return done_;  // a short count: end of file (read) or a full device (write)
        }
        if (done_ == total_) return done_;
        std::error_code ec;
        if (res_ < 0) ec = result_error();
        else if (res_ == 0 && !writes()) ec = make_error_code(errc::end_of_stream);
        else if (res_ == 0) ec = std::make_error_code(std::errc::no_space_on_device);  // wrote nothing
        else ec = std::make_error_code(timed_out() ? std::errc::timed_out : std::errc::operation_canceled);
        return {done_, ec, what};
    }

private:
    bool writes() const noexcept { return kind_ == kind::write_some || kind_ == kind::write_all; }

    int fd_;
    std::byte* buf_;
    std::size_t total_;
    std::size_t done_ = 0;
    std::uint64_t offset_;
    kind kind_;
};

/// IORING_OP_CLOSE of a descriptor this operation owns. The descriptor is released in
/// every case: by the kernel, or, when the request never ran (a stop or time limit
/// before it reached the kernel, or a cancel that caught it queued on io-wq: its result
/// is then exactly -ECANCELED), by a plain close(2) here.
class close_op final : public file_operation {
public:
    close_op(io_context& ctx, unique_fd fd, const op_limits& lim) noexcept
        : file_operation(ctx, lim, nullptr, true), fd_(fd.release()) {}
    ~close_op() {
        release();
        close_if_still_ours();
    }
    bool await_ready() noexcept {
        if (fd_ < 0) {
            res_ = -EBADF;
            state_ = op_state::done;
            return true;
        }
        return operation::await_ready();
    }
    void prepare(io_uring_sqe* sqe) noexcept override {
        io_uring_prep_close(sqe, fd_);
        handed_ = true;
    }
    void on_cqe(int res, unsigned flags) noexcept override { operation::on_cqe(restart_as_eintr(res), flags); }
    io_result<void> await_resume() noexcept {
        finish_wait();
        close_if_still_ours();
        if (res_ < 0) return {result_error(), "close"};
        return {};
    }

private:
    void close_if_still_ours() noexcept {
        if (fd_ < 0) return;
        // Once the kernel ran the request the number is gone (even on EINTR from a
        // flush): closing it again could hit another thread's new descriptor.
        if (!handed_ || res_ == -ECANCELED) ::close(fd_);
        fd_ = -1;
    }

    int fd_;
    bool handed_ = false;
};

}  // namespace ringsock::detail
