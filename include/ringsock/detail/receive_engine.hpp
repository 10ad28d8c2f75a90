// The machinery behind ring_reader: one multishot receive (IORING_RECV_MULTISHOT with
// IOSQE_BUFFER_SELECT) that stays armed on a socket and feeds a queue of lent buffers,
// and the awaiter that takes from that queue or waits for the next completion. Modelled
// on acceptor.hpp's accept_engine: the engine is heap-allocated (its address is the
// request's user_data for as long as the request is armed) and waiters queue on a gate
// that is always busy, so their time limits and stop tokens work in user space.
#pragma once

#include <liburing.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "../buffer_ring.hpp"
#include "../error.hpp"
#include "../io_result.hpp"
#include "lent_receive_op.hpp"
#include "operation.hpp"
#include "scheduler.hpp"
#include "socket_state.hpp"

namespace ringsock::detail {

/// One completion of the multishot receive, in arrival order: a lent buffer, or the
/// end of the stream / an empty message (res 0, no buffer), or an error (res < 0).
struct received {
    lent_buffer buf;
    int res = 0;  // the kernel's result: on message sockets the message's full length
};

/// FIFO of completions not yet taken. A vector read from a moving head: taking the last
/// one empties it without freeing, so a steady receive/take cycle never allocates. It
/// keeps the ring-wide count of buffers held in readers' queues up to date.
class received_fifo {
public:
    explicit received_fifo(unsigned* ring_read_ahead) noexcept : read_ahead_(ring_read_ahead) {}
    received_fifo(const received_fifo&) = delete;
    received_fifo& operator=(const received_fifo&) = delete;
    bool empty() const noexcept { return head_ == items_.size(); }
    std::size_t size() const noexcept { return items_.size() - head_; }
    void push_back(received&& r) {
        const bool buffer = !r.buf.empty();
        items_.push_back(std::move(r));
        if (buffer) ++*read_ahead_;
    }
    /// Precondition: !empty().
    received pop_front() noexcept {
        received r = std::move(items_[head_++]);
        if (!r.buf.empty()) --*read_ahead_;
        if (head_ == items_.size()) {
            items_.clear();
            head_ = 0;
        }
        return r;
    }
    /// Returns every buffer to its ring.
    void clear() noexcept {
        for (std::size_t i = head_; i < items_.size(); ++i) {
            if (!items_[i].buf.empty()) --*read_ahead_;
        }
        items_.clear();
        head_ = 0;
    }

private:
    std::vector<received> items_;
    std::size_t head_ = 0;
    unsigned* read_ahead_;
};

class receive_wait;

class receive_engine final : public operation, public buffer_ring_user {
public:
    /// Completions queued with nobody waiting before the engine stops receiving (it
    /// cancels the multishot request; the data then waits in the socket, where the
    /// peer's flow control applies, instead of draining the shared buffer_ring).
    static constexpr std::size_t queue_cap = 16;

    receive_engine(io_context& ctx, int fd, socket_state* st, buffer_ring_core* ring, bool message) noexcept
        : operation(ctx, {}), fd_(fd), ring_(ring), message_(message) {
        ring_->attach(this);
        if (st->recv_gate.busy) {
            busy_ = true;  // a read is already under way on the socket
            wanted_ = st;  // only compared, never followed (see take_socket)
            return;
        }
        hold(st);
    }
    /// The socket state this engine reads, or nullptr (gone, or never taken: busy()).
    socket_state* socket_state_held() const noexcept { return holds_gate_ ? sock_ : nullptr; }
    /// The socket state that was busy when this engine was made (busy() only).
    const socket_state* wanted() const noexcept { return wanted_; }
    /// A busy engine takes `st` after all, now that the reader that held it is gone.
    /// Precondition: `st` is live (the caller just saw another engine hold it) and is
    /// the state this engine was made for.
    void take_socket(socket_state* st) noexcept {
        if (!busy_ || st != wanted_ || st->recv_gate.busy) return;
        busy_ = false;
        wanted_ = nullptr;
        hold(st);
    }
    receive_engine(const receive_engine&) = delete;
    receive_engine& operator=(const receive_engine&) = delete;
    ~receive_engine() {
        shut();
        ring_->detach(this);  // last: may free the core of a destroyed buffer_ring
    }

    bool is_internal() const noexcept override { return true; }

    void prepare(io_uring_sqe* sqe) noexcept override {
        if (waiting_) {
            io_uring_prep_timeout(sqe, &wait_, 0, 0);
            return;
        }
        // Length 0: each completion's size is the picked buffer's. On message sockets
        // MSG_TRUNC makes the result the message's full length (truncation is reported).
        io_uring_prep_recv_multishot(sqe, fd_, nullptr, 0, message_ ? MSG_TRUNC : 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = ring_->group;
    }

    void on_cqe(int res, unsigned flags) noexcept override {
        if (waiting_) return;  // the wait for a buffer ended (a buffer came back, or its timer)
        received r;
        r.res = res;
        if (flags & IORING_CQE_F_BUFFER) {
            const auto id = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
            if (closing_ || res <= 0) ring_->give_back(id);
            else r.buf = ring_->lend(id, std::min(static_cast<std::size_t>(res), ring_->size));
        }
        if (closing_) return;
        if (res == -ENOBUFS) {
            // The ring ran dry (the request has ended): the data stays in the socket.
            starved_ = true;
            return;
        }
        if (res == -ECANCELED) return;  // our own cancel: the queue cap, a close, shut()
        deliver(std::move(r), (flags & IORING_CQE_F_MORE) != 0);
    }

    bool on_complete() noexcept override {
        state_ = op_state::idle;
        cancel_requested_ = cancel_sent_ = false;
        if (waiting_) {
            waiting_ = false;
            sqe_without_file_ = false;
            ring_->unstarve(this);
        }
        if (closing_) return false;
        // The socket was closed (moved from, released...): what is queued can never be
        // handed out (receive() reports operation_canceled); give the buffers back now,
        // not when the reader goes (it may be kept for long, and the ring is shared).
        if (gone()) queue_.clear();
        if (std::exchange(starved_, false) && !waiters_.waiters.empty() && queue_.empty() && may_arm()) {
            // Someone waits and the ring is empty: wait for a buffer to come back with
            // a TIMEOUT request (cancels reach it like the receive) and receive again.
            waiting_ = true;
            sqe_without_file_ = true;  // TRICKY: the TIMEOUT's fd (-1) must not reach the file table
            ring_->starve(this);
            if (!ctx_->submit_now(this)) fail_waiters(-ECANCELED);
            return false;
        }
        arm();
        return false;
    }

    /// Gives back every queued completion's buffer (the socket is gone).
    void drop_queue() noexcept { queue_.clear(); }
    /// The next completion in order, if one is queued and no completion handed to a
    /// waiter is still on its way to that waiter (it must resume first: the order in
    /// which coroutines see the data is the order it came in, as with plain reads, whose
    /// holder keeps the direction until it resumes).
    bool take(received& out) noexcept {
        if (handed_ || queue_.empty()) return false;
        out = queue_.pop_front();
        return true;
    }
    /// Arms the multishot receive if someone waits and it is not armed. A request that
    /// cannot be armed (the socket was closed, the context or the ring is going away)
    /// ends every wait with operation_canceled.
    void arm() noexcept {
        // Waiters are served from the queue first (pump()); only then is more received.
        if (closing_ || state_ != op_state::idle || waiters_.waiters.empty() || !queue_.empty()) return;
        if (!may_arm() || !ctx_->submit_now(this)) fail_waiters(-ECANCELED);
    }
    op_gate* waiters() noexcept { return &waiters_; }
    /// The socket had a read under way when the reader was made: this reader never reads.
    bool busy() const noexcept { return busy_; }
    /// Whether the socket was closed, moved from or destroyed since.
    bool gone() const noexcept { return busy_ || socket_gone() || sock_->closed; }
    bool message() const noexcept { return message_; }
    std::size_t buffer_size() const noexcept { return ring_->size; }
    std::size_t queued() const noexcept { return queue_.size(); }

    void wake() noexcept override {
        if (waiting_ && state_ == op_state::in_flight) end_buffer_wait(*ctx_, this);
    }
    void cancel_for_close() noexcept override {
        if (state_ == op_state::in_flight) ctx_->request_cancel(this);
    }

    /// Stops receiving, waits until the kernel has let go of the request, hands the
    /// socket's receive direction to whatever waits for it, ends every wait with
    /// operation_canceled and gives the queued buffers back.
    void shut() noexcept {
        closing_ = true;
        forget_handed();
        settle();  // cancels and reaps the armed request; releases the direction
        state_ = op_state::idle;
        if (holds_gate_) ctx_->release_gate(this);
        ring_->unstarve(this);
        waiting_ = false;
        fail_waiters(-ECANCELED);
        queue_.clear();
    }

    /// Gives queued completions to waiters, in order, once the completion handed last
    /// has reached its coroutine; then arms the request if waiters remain.
    inline void pump() noexcept;
    /// The waiter `w`, handed a completion, resumed or was destroyed.
    void handed_done(receive_wait* w) noexcept {
        if (handed_ != w) return;
        handed_ = nullptr;
        pump();
    }

private:
    bool may_arm() const noexcept { return !gone() && !ring_->closed; }
    // Holds the receive direction for the reader's whole life: a plain read started
    // meanwhile waits behind it instead of taking bytes out of the middle of the stream.
    void hold(socket_state* st) noexcept {
        attach(st, &st->recv_gate);
        st->recv_gate.busy = true;
        st->recv_gate.holder = this;
        holds_gate_ = true;
    }
    inline void deliver(received&& r, bool more) noexcept;
    inline void hand(receive_wait* w, received&& r) noexcept;
    inline void forget_handed() noexcept;
    inline void fail_waiters(int res) noexcept;

    int fd_;
    buffer_ring_core* ring_;
    bool message_;
    bool busy_ = false;
    const socket_state* wanted_ = nullptr;
    bool closing_ = false;
    bool starved_ = false;  // the request ended with ENOBUFS
    bool waiting_ = false;  // the request in flight is the wait for a buffer
    op_gate waiters_{true, nullptr, {}};  // always "busy": receive() waiters queue here
    receive_wait* handed_ = nullptr;       // handed a completion, not yet resumed
    received_fifo queue_{&ring_->read_ahead};  // TRICKY: after ring_ (initialised from it)
    // How long one wait lasts if no returning buffer cuts it short (then it tries again).
    __kernel_timespec wait_{0, 20'000'000};
};

/// The awaiter of ring_reader::receive(): takes the next queued completion, or waits in
/// the engine's queue of waiters for the armed request to hand it one. A time limit or a
/// stop request ends the wait in user space (the loop's deadline list), so a completion
/// is only ever handed to a waiter that is still there.
class receive_wait final : public operation {
public:
    receive_wait(io_context& ctx, receive_engine* engine, const op_limits& lim) noexcept
        : operation(ctx, lim), engine_(engine) {
        if (engine) gate_ = engine->waiters();
    }
    receive_wait(const receive_wait&) = delete;
    receive_wait& operator=(const receive_wait&) = delete;
    ~receive_wait() {
        settle();  // a buffer handed over but never taken goes back with got_
        if (std::exchange(in_transit_, false)) engine_->handed_done(this);  // the next waiter may go on
    }

    bool await_ready() noexcept {
        if (!engine_ || engine_->busy()) {
            // A moved-from reader, or one made while another read was under way.
            res_ = engine_ ? -EBUSY : -EBADF;
        } else if (engine_->gone()) {
            res_ = -ECANCELED;  // the socket was closed: its reads are cancelled
            engine_->drop_queue();  // and what was queued can never be handed out
        } else if (!operation::await_ready()) {
            if (!engine_->take(got_.buf_and_res)) return false;
            got_.valid = true;
            message_ = engine_->message();
            size_ = engine_->buffer_size();
        }
        state_ = op_state::done;
        return true;
    }
    void await_suspend(std::coroutine_handle<> h) {
        message_ = engine_->message();
        size_ = engine_->buffer_size();
        operation::await_suspend(h);
        engine_->pump();
    }
    void prepare(io_uring_sqe*) noexcept override {}  // never submitted: it only waits

    io_result<lent_buffer> await_resume() noexcept {
        finish_wait();
        if (std::exchange(in_transit_, false)) engine_->handed_done(this);
        if (!got_.valid) return {result_error(), "ring_reader::receive"};
        received& r = got_.buf_and_res;
        if (r.res < 0) return {std::error_code(-r.res, std::generic_category()), "ring_reader::receive"};
        if (message_ && static_cast<std::size_t>(r.res) > size_) {
            // The part that fit is the caller's; the rest of the message is gone.
            return {std::move(r.buf), make_error_code(errc::message_truncated), "ring_reader::receive"};
        }
        return std::move(r.buf);
    }

    /// Called by the engine: this wait ends with `res` (operation_canceled...).
    void fail(int res) noexcept { res_ = res; }
    /// Called by the engine: this waiter gets `r`.
    void hand(received&& r) noexcept {
        got_.buf_and_res = std::move(r);
        got_.valid = true;
        in_transit_ = true;
    }
    /// Called by the engine as it goes: this waiter must not tell it it resumed.
    void forget_engine() noexcept { in_transit_ = false; }

private:
    struct taken {
        received buf_and_res;
        bool valid = false;
    };
    receive_engine* engine_;
    taken got_;
    bool in_transit_ = false;  // handed a completion by the engine, which waits for this to resume
    bool message_ = false;
    std::size_t size_ = 0;
};

inline void receive_engine::hand(receive_wait* w, received&& r) noexcept {
    w->hand(std::move(r));
    handed_ = w;
    ctx_->make_ready_op(w);
}

inline void receive_engine::forget_handed() noexcept {
    if (receive_wait* w = std::exchange(handed_, nullptr)) w->forget_engine();
}

inline void receive_engine::pump() noexcept {
    if (!handed_ && !queue_.empty()) {
        if (auto* w = static_cast<receive_wait*>(static_cast<operation*>(waiters_.waiters.pop_front())))
            hand(w, queue_.pop_front());
    }
    arm();
}

inline void receive_engine::deliver(received&& r, bool more) noexcept {
    if (!handed_ && queue_.empty()) {
        if (auto* w = static_cast<receive_wait*>(static_cast<operation*>(waiters_.waiters.pop_front()))) {
            hand(w, std::move(r));
            return;
        }
    }
    queue_.push_back(std::move(r));
    // Nobody reads right now and the queue is long, or readers' queues together hold
    // half the shared ring: stop taking the socket's data (and the ring's buffers) until
    // the reader catches up, so one connection's reader cannot starve the others; the
    // next wait re-arms.
    if (more && !cancel_sent_ && (queue_.size() >= queue_cap || 2 * ring_->read_ahead >= ring_->count))
        ctx_->request_cancel(this);
}

inline void receive_engine::fail_waiters(int res) noexcept {
    while (auto* w = static_cast<receive_wait*>(static_cast<operation*>(waiters_.waiters.pop_front()))) {
        w->fail(res);
        ctx_->make_ready_op(w);
    }
}

}  // namespace ringsock::detail
