// The definitions of operation's awaiter protocol and of socket_state::detach_all:
// they need the scheduler, which needs the operation's declaration, so they come
// after both (scheduler.hpp includes this at its end).
#pragma once

#include "fatal.hpp"
#include "operation.hpp"
#include "scheduler.hpp"
#include "socket_state.hpp"

namespace ringsock::detail {

inline operation::~operation() {
    // Every concrete operation settles in its own destructor, while the members the
    // kernel may read still exist. Reaching here unsettled is a bug in ringsock.
    if (state_ != op_state::done && state_ != op_state::idle)
        fatal("operation destroyed while the kernel or the loop still refers to it (missing settle())");
    if (has_stop_cb_) [[unlikely]] end_stop_callback();  // never started, or not yet resumed
}

inline void operation::await_suspend(std::coroutine_handle<> h) {
    waiter_ = h;
    // The clock is read only for operations with a time limit.
    if (has_deadline_) deadline_ = deadline_after(timeout_);
    ctx_->add_work();
    if (gate_ && gate_->busy) {
        state_ = op_state::gated;
        gate_->waiters.push_back(this);
        if (has_deadline_) ctx_->watch_deadline(this);
    } else {
        if (gate_) {
            gate_->busy = true;
            gate_->holder = this;
            holds_gate_ = true;
        }
        ctx_->submit(this);
    }
    if (stop_.stop_possible()) start_stop_callback();
}

template <class Op>
inline void operation::suspend_direct(std::coroutine_handle<> h) {
    // Socket operations always have a gate (attach()).
    if (has_deadline_ || gate_->busy) [[unlikely]] return operation::await_suspend(h);
    waiter_ = h;
    ctx_->add_work();
    gate_->busy = true;
    gate_->holder = this;
    holds_gate_ = true;
    ctx_->submit_direct(static_cast<Op*>(this));
    // After the submission, as in await_suspend: a stop requested meanwhile runs the
    // callback at once, on this thread, and cancels what was just queued.
    if (stop_.stop_possible()) [[unlikely]] start_stop_callback();
}

inline void operation::canceller::operator()() const noexcept { op->ctx_->request_cancel_from_any_thread(op); }

inline void operation::finish_wait() noexcept {
    if (has_stop_cb_ || in_deadline_list_) [[unlikely]] leave_watches();
    if (holds_gate_) {
        op_gate* g = gate_;
        if (g->waiters.empty()) {  // nobody waits for the direction: just free it
            holds_gate_ = false;
            g->busy = false;
            g->holder = nullptr;
        } else {
            ctx_->release_gate(this);
        }
    }
    state_ = op_state::done;
}

inline void operation::leave_watches() noexcept {
    // Destroying the callback waits for a concurrent invocation on another thread; only
    // that callback ever posts a remote cancel.
    if (has_stop_cb_) {
        end_stop_callback();
        if (remote_cancel_posted_.load(std::memory_order_acquire)) ctx_->purge_remote_cancel(this);
    }
    if (in_deadline_list_) ctx_->unwatch_deadline(this);
}

inline void operation::settle_slow() noexcept {
    if (has_stop_cb_) {
        end_stop_callback();
        if (remote_cancel_posted_.load(std::memory_order_acquire)) ctx_->purge_remote_cancel(this);
    }
    ctx_->settle(this);
}

inline bool operation::may_try_now(bool sends) noexcept {
    socket_state* st = sock_;
    return st && at_speculative_point(*st, sends) && may_try_now_in_run(sends);
}

inline bool operation::at_speculative_point(socket_state& st, bool sends) noexcept {
    // A run in one direction (a writer or reader loop): the last attempt's luck holds.
    if (st.same_direction_as_last(sends)) return true;
    // A send after a receive (a response, the next request) is not in a run, but when
    // nothing else would go into the next enter, the ring would cost it a round of its
    // own: an enter, a CQE and a resume before the receive that follows can even be
    // prepared. A receive after a send stays on the ring: its data is rarely there yet.
    return sends && ctx_->alone_in_next_enter();
}

inline bool operation::may_try_now_in_run(bool sends) noexcept {
    socket_state* st = sock_;
    speculation& spec = sends ? st->send_spec : st->recv_spec;
    return spec.worth_trying() && !gate_->busy && !st->closed && ctx_->idle_after_current() && ctx_->take_direct();
}

inline bool operation::took_now(long r, bool sends) noexcept {
    speculation& spec = sends ? sock_->send_spec : sock_->recv_spec;
    if (r >= 0) {
        spec.hit();
        res_ = static_cast<int>(r);
        return true;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        spec.missed();
        return false;
    }
    res_ = -errno;  // a real error: the operation ends with it
    return true;
}

inline bool socket_state::detach_all(scheduler& s) noexcept {
    bool in_flight = false;
    for (op_gate* g : {&send_gate, &recv_gate}) {
        while (auto* r = g->waiters.front()) {
            auto* op = static_cast<operation*>(r);
            s.request_cancel(op);  // gated: leaves the list, completes as cancelled
            op->detach_socket();
        }
        if (operation* op = std::exchange(g->holder, nullptr)) {
            op->detach_socket();
            in_flight = in_flight || op->state_ == op_state::in_flight;
            s.request_cancel(op);  // pending: dropped; in flight: ASYNC_CANCEL queued
        }
        g->busy = false;
    }
    return in_flight;
}

}  // namespace ringsock::detail
