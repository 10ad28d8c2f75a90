// The receive that takes its buffer from a buffer_ring (IOSQE_BUFFER_SELECT): armed, it
// holds no memory of ours; its completion names the buffer the kernel filled. When the
// ring is empty the kernel answers ENOBUFS and consumes nothing; the operation then
// waits with a plain TIMEOUT request (so cancels, time limits and settle() reach it like
// any request in flight) that a returning buffer cuts short with TIMEOUT_REMOVE.
#pragma once

#include <liburing.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>

#include "../buffer_ring.hpp"
#include "../error.hpp"
#include "../io_result.hpp"
#include "operation.hpp"
#include "scheduler.hpp"
#include "socket_state.hpp"

namespace ringsock::detail {

/// Cuts short the TIMEOUT request with which `op` waits for a buffer (a buffer came
/// back). With no SQE to be had, the wait's own timer ends it soon enough.
inline void end_buffer_wait(scheduler& s, operation* op) noexcept {
    if (io_uring_sqe* sqe = s.raw_sqe()) {
        io_uring_prep_timeout_remove(sqe, reinterpret_cast<std::uint64_t>(op), 0);
        sqe->user_data = 0;
        sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    }
}

class lent_receive_op final : public operation, public buffer_ring_user {
public:
    lent_receive_op(io_context& ctx, int fd, socket_state* st, buffer_ring& ring, bool message, const char* what,
                    const op_limits& lim) noexcept
        : operation(ctx, lim), fd_(fd), ring_(ring.core_), message_(message), what_(what) {
        attach(st, &st->recv_gate);
        submit_late_ = true;
        ring_->attach(this);
    }
    lent_receive_op(const lent_receive_op&) = delete;
    lent_receive_op& operator=(const lent_receive_op&) = delete;
    ~lent_receive_op() {
        settle();  // the kernel may still pick a buffer, or hold the wait's timespec
        ring_->unstarve(this);
        // Completed with a buffer that never reached the caller (coroutine destroyed
        // before it resumed): the buffer goes back, or the ring would shrink for good.
        if (!taken_ && !waiting_ && (cqe_flags_ & IORING_CQE_F_BUFFER)) ring_->give_back(buffer_id());
        ring_->detach(this);  // last: may free the core of a destroyed buffer_ring
    }

    bool await_ready() noexcept {
        if (ring_->closed) {  // its buffer_ring was destroyed before the read began
            res_ = -ECANCELED;
            state_ = op_state::done;
            return true;
        }
        return operation::await_ready();
    }
    void await_suspend(std::coroutine_handle<> h) { suspend_direct<lent_receive_op>(h); }

    void prepare(io_uring_sqe* sqe) noexcept override {
        if (waiting_) {
            io_uring_prep_timeout(sqe, &wait_, 0, 0);
            return;
        }
        // On message sockets MSG_TRUNC makes the result the message's full length.
        io_uring_prep_recv(sqe, fd_, nullptr, static_cast<unsigned>(ring_->size), message_ ? MSG_TRUNC : 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = ring_->group;
    }

    bool on_complete() noexcept override {
        if (waiting_) {
            waiting_ = false;
            sqe_without_file_ = false;
            ring_->unstarve(this);
            if (interrupted() || socket_gone()) {
                res_ = -ECANCELED;
                return true;
            }
            cqe_flags_ = 0;
            ctx_->submit(this);  // a buffer may be back: receive again
            return false;
        }
        if (res_ == -ENOBUFS) {
            // The ring was empty. Cut short (a stop, the time limit, the socket closed)
            // before a buffer came back: it ends cancelled like the wait would, never
            // with the kernel's ENOBUFS (not an error of the caller's: nothing was lost).
            if (interrupted() || socket_gone()) {
                res_ = -ECANCELED;
                return true;
            }
            waiting_ = true;
            // TRICKY: the file table would register the socket from this TIMEOUT's
            // sqe->fd (-1), emptying the slot every later read uses (EBADF).
            sqe_without_file_ = true;
            ring_->starve(this);
            ctx_->submit(this);
            return false;
        }
        return true;
    }

    io_result<lent_buffer> await_resume() noexcept {
        finish_wait();
        if (cqe_flags_ & IORING_CQE_F_BUFFER) {
            taken_ = true;
            if (res_ <= 0) {
                ring_->give_back(buffer_id());
                return lent_buffer{};
            }
            const auto full = static_cast<std::size_t>(res_);
            if (message_ && full > ring_->size) {
                // The part that fit is the caller's; the rest of the message is gone.
                return {ring_->lend(buffer_id(), ring_->size), make_error_code(errc::message_truncated), what_};
            }
            return ring_->lend(buffer_id(), full);
        }
        if (res_ < 0) return {result_error(), what_};
        return lent_buffer{};  // end of stream, or an empty message
    }

    /// Called by the ring when a buffer came back: end this operation's wait now.
    void wake() noexcept override { end_buffer_wait(*ctx_, this); }
    /// The buffer_ring is being destroyed: end this read (see ~buffer_ring).
    void cancel_for_close() noexcept override { ctx_->request_cancel(this); }

private:
    std::uint16_t buffer_id() const noexcept { return static_cast<std::uint16_t>(cqe_flags_ >> IORING_CQE_BUFFER_SHIFT); }

    int fd_;
    buffer_ring_core* ring_;
    bool message_;
    bool waiting_ = false;  // the request in flight is the wait for a buffer, not the receive
    bool taken_ = false;
    const char* what_;
    // How long one wait lasts if no returning buffer cuts it short (then it tries again).
    __kernel_timespec wait_{0, 20'000'000};
};

}  // namespace ringsock::detail

namespace ringsock {

namespace detail {

inline void buffer_ring_core::put_back(std::uint16_t id) noexcept {
    --lent;
    if (!closed) {
        io_uring_buf_ring_add(br, buffer(id), static_cast<unsigned>(size), id, io_uring_buf_ring_mask(count), 0);
        io_uring_buf_ring_advance(br, 1);
        if (buffer_ring_user* op = starved_head) {
            unstarve(op);
            op->wake();
        }
    }
    free_if_orphaned();
}

inline void buffer_ring_core::starve(buffer_ring_user* op) noexcept {
    if (op->starved_) return;
    op->starved_ = true;
    op->starved_next_ = nullptr;
    op->starved_prev_ = starved_tail;
    if (starved_tail) starved_tail->starved_next_ = op;
    else starved_head = op;
    starved_tail = op;
}

inline void buffer_ring_core::unstarve(buffer_ring_user* op) noexcept {
    if (!op->starved_) return;
    op->starved_ = false;
    if (op->starved_prev_) op->starved_prev_->starved_next_ = op->starved_next_;
    else starved_head = op->starved_next_;
    if (op->starved_next_) op->starved_next_->starved_prev_ = op->starved_prev_;
    else starved_tail = op->starved_prev_;
    op->starved_next_ = op->starved_prev_ = nullptr;
}

inline void buffer_ring_core::attach(buffer_ring_user* op) noexcept {
    ++users;
    op->user_prev_ = nullptr;
    op->user_next_ = users_head;
    if (users_head) users_head->user_prev_ = op;
    users_head = op;
}

inline void buffer_ring_core::detach(buffer_ring_user* op) noexcept {
    --users;
    if (op->user_prev_) op->user_prev_->user_next_ = op->user_next_;
    else users_head = op->user_next_;
    if (op->user_next_) op->user_next_->user_prev_ = op->user_prev_;
    op->user_next_ = op->user_prev_ = nullptr;
    free_if_orphaned();
}

}  // namespace detail

inline buffer_ring::~buffer_ring() {
    detail::buffer_ring_core* c = core_;
    c->closed = true;
    // Nothing the kernel holds points into the buffers once it no longer knows the
    // group: a read that has not picked a buffer yet can never pick one now.
    (void)io_uring_unregister_buf_ring(c->ctx->native_handle(), c->group);
    // Reads still naming the ring end (a completion that already won keeps its data);
    // their frames may live on (spawned tasks die with the io_context), so the core
    // stays until the last of them and the last lent buffer are gone.
    // cancel_for_close() never detaches (the read detaches when it is destroyed).
    for (detail::buffer_ring_user* op = c->users_head; op; op = op->user_next_) op->cancel_for_close();
    c->free_if_orphaned();
}

}  // namespace ringsock
