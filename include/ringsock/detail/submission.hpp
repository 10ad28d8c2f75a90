// Submission and cancellation: turns operations into SQEs and completions back into
// ready operations. A full SQ is never an error (operations wait in `pending_`),
// in-flight requests are capped at the CQ size, receives go last in a turn's batch,
// every cancel goes through here (a cancel that finds the SQ full waits in a backlog,
// never lost), and settle() makes sure the kernel is done with an operation before
// its memory goes.
#pragma once

#include <liburing.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "deadline_list.hpp"
#include "fatal.hpp"
#include "file_table.hpp"
#include "op_list.hpp"
#include "operation.hpp"
#include "ready_queue.hpp"
#include "remote_queue.hpp"
#include "ring.hpp"
#include "socket_state.hpp"

namespace ringsock::detail {

class submission {
public:
    /// user_data of the completion another ring posts here with IORING_OP_MSG_RING to
    /// wake this loop for posted work (inbox.hpp). Operations are 8-byte aligned, link
    /// timeouts tag bit 0; tag value 2 alone is the wake, 2 on a pointer is the failed
    /// MSG_RING this ring sent to the remote_queue it points at.
    static constexpr std::uint64_t msg_ring_wake = 2;

    /// Queues an IORING_OP_MSG_RING that wakes the ring `target_ring_fd`; if it fails,
    /// `fallback` is woken through its eventfd instead. False when the SQ is full.
    bool send_wake(int target_ring_fd, remote_queue* fallback) noexcept {
        io_uring_sqe* sqe = ring_.get_sqe_flushing();
        if (!sqe) return false;
        io_uring_prep_msg_ring(sqe, target_ring_fd, 0, msg_ring_wake, 0);
        sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
        sqe->user_data = reinterpret_cast<std::uint64_t>(fallback) | msg_ring_wake;
        wake_queued_ = true;
        return true;
    }
    /// Whether a wake was queued since the last call (the loop must not leave it in the
    /// SQ when it stops running: nothing else would ever submit it).
    bool take_wake_queued() noexcept { return std::exchange(wake_queued_, false); }

    /// How often a cancel that may have missed its target is repeated.
    static constexpr long retry_interval_ns = 10'000'000;

    submission(ring& r, file_table& files, deadline_list& deadlines, ready_queue& ready) noexcept
        : ring_(r), files_(files), deadlines_(deadlines), ready_(ready), inflight_cap_(r.features().cq_entries) {}

    /// Starts `op` (or its next chunk): into the SQ now, or queued in order.
    void submit(operation* op) noexcept {
        op->cqes_left_ = 0;
        if (shutting_down_) {
            // Teardown: the next chunk of a write_all is never sent; the operation
            // completes cancelled (and is settled with its frame).
            op->cancel_requested_ = true;
            op->res_ = -ECANCELED;
            op->state_ = op_state::ready;
            if (!op->is_internal()) ready_.push(op);
            return;
        }
        if (op->submit_late_) {
            // TRICKY: a receive's SQE goes into the SQ after every SQE the rest of this
            // turn prepares (flush_late runs right before the turn's enter), so when the
            // peer end is on this loop, its send reaches the socket first and the receive
            // completes inline instead of arming poll and completing from task-work. It
            // is never held past the enter: the order within one batch is all that changes.
            op->state_ = op_state::pending;
            op->queued_late_ = true;
            late_.push_back(op);
            if (op->has_deadline_) deadlines_.watch(op);
            return;
        }
        if (!pending_.empty() || !try_prepare(op)) {
            op->state_ = op_state::pending;
            pending_.push_back(op);
            if (op->has_deadline_) deadlines_.watch(op);
        }
    }

    /// Puts the SQE of an internal operation without a time limit into the SQ now, past
    /// the in-flight cap and the queue: a request that stays armed (a ring_reader's
    /// multishot receive) and so must never wait in a list a cancel would complete it
    /// from. Precondition: its socket, if any, is open. False when the context is
    /// shutting down or the SQ stays full after a flush.
    bool submit_now(operation* op) noexcept {
        op->cqes_left_ = 0;
        if (shutting_down_) return false;
        return try_prepare(op, true);
    }

    /// The turn's receives, now that every other SQE of the turn is in the SQ.
    void flush_late() noexcept {
        // Detached from the list in one go: preparing runs no user code, so nothing
        // can reach the late list while the chain is walked.
        for (resumable* r = late_.take_all(); r;) {
            resumable* following = r->next_;
            auto* op = static_cast<operation*>(r);
            op->linked_ = false;
            op->queued_late_ = false;
            if (!pending_.empty() || !(op->prepare_late_ ? op->prepare_late_(*this, op) : try_prepare(op))) {
                op->state_ = op_state::pending;
                pending_.push_back(op);
            }
            r = following;
        }
    }

    /// submit() for an operation of a known final type `Op` with no time limit whose
    /// socket direction is free: the common case, with prepare() called directly. Any
    /// other situation (shutdown, a queue to keep order with, the cap, a full SQ, a
    /// closed socket) takes the general path.
    template <class Op>
    [[gnu::always_inline]] void submit_direct(Op* op) noexcept {
        op->cqes_left_ = 0;
        op->plain_cqe_ = std::is_same_v<decltype(&Op::on_cqe), void (operation::*)(int, unsigned) noexcept>;
        if (op->submit_late_) {
            if (shutting_down_) [[unlikely]] return submit(op);
            op->state_ = op_state::pending;
            op->queued_late_ = true;
            op->prepare_late_ = &prepare_late<Op>;
            late_.push_back(op);
            return;
        }
        if (shutting_down_ || !pending_.empty() || !prepare_direct(op)) [[unlikely]] submit(op);
    }

private:
    /// The SQE of a socket operation of final type `Op` without a time limit (only
    /// suspend_direct leads here, and it sends those with one to the general path), with
    /// prepare() called directly. False, with nothing consumed, when the general path
    /// must decide (the in-flight cap, a full SQ, a socket closed since).
    template <class Op>
    [[gnu::always_inline]] bool prepare_direct(Op* op) noexcept {
        if (inflight_ >= inflight_cap_ || !op->sock_ || op->sock_->closed) [[unlikely]]
            return false;
        io_uring_sqe* sqe = ring_.get_sqe();
        if (!sqe) [[unlikely]] return false;
        op->Op::prepare(sqe);
        if (!op->sqe_without_file_) files_.use(op->sock_->file, sqe);
        sqe->user_data = reinterpret_cast<std::uint64_t>(op);
        op->cqes_left_ = 1;
        ++inflight_;
        op->state_ = op_state::in_flight;
        return true;
    }
    /// flush_late's typed path for what submit_direct queued late.
    template <class Op>
    static bool prepare_late(submission& s, operation* op) noexcept {
        auto* typed = static_cast<Op*>(op);
        return s.prepare_direct(typed) || s.try_prepare_out_of_line(op);
    }
    [[gnu::noinline]] bool try_prepare_out_of_line(operation* op) noexcept { return try_prepare(op); }

public:

    /// Retries cancels that found the SQ full, then queued operations, in order.
    /// `past_cap`: ignore the in-flight cap (see scheduler::turn).
    void flush_pending(bool past_cap = false) noexcept {
        if (!cancel_backlog_.empty()) {
            auto backlog = std::move(cancel_backlog_);
            cancel_backlog_.clear();
            for (auto* op : backlog) {
                op->cancel_sent_ = false;
                request_cancel(op);
            }
        }
        while (!pending_.empty()) {
            auto* op = static_cast<operation*>(pending_.front());
            pending_.erase(op);
            if (!try_prepare(op, past_cap)) {
                // Still no room: keep its place and wait for completions to free some.
                pending_.push_front(op);
                op->state_ = op_state::pending;
                break;
            }
        }
    }
    bool has_pending() const noexcept { return !pending_.empty(); }

    /// Cancels `op` in whatever state it is: gated or pending ones complete at once
    /// with -ECANCELED and never reach the kernel; one in flight gets an ASYNC_CANCEL
    /// (its own CQE, not the cancel's, completes it); a completed one keeps its result.
    void request_cancel(operation* op) noexcept {
        op->cancel_requested_ = true;
        switch (op->state_) {
            case op_state::pending:
                pending_list(op).erase(op);
                op->queued_late_ = false;
                cancel_queued(op);
                break;
            case op_state::gated:
                op->gate_->waiters.erase(op);
                // Out of the gate nothing on the socket can reach it any more, so it must
                // not reach the socket either (the socket may die before it resumes).
                op->detach_socket();
                cancel_queued(op);
                break;
            case op_state::in_flight: {
                if (op->cancel_sent_) break;
                op->cancel_sent_ = true;
                io_uring_sqe* sqe = ring_.get_sqe_flushing();
                if (!sqe) {
                    cancel_backlog_.push_back(op);  // rare: retried by the next flush_pending
                    retry_watch(op);
                    break;
                }
                io_uring_prep_cancel64(sqe, reinterpret_cast<std::uint64_t>(op), 0);
                sqe->user_data = 0;  // the cancel's own result never refers to the op
                sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
                retry_watch(op);
                break;
            }
            default:
                break;  // already complete: the real result wins
        }
    }

    /// TRICKY: an ASYNC_CANCEL that arrives while its target is being handed to an io-wq
    /// thread (a CONNECT to a full backlog, a send to a full datagram receiver) finds
    /// nothing (-ENOENT) and the request then blocks for good; a link timeout can miss
    /// the same way. Every operation cancelled while in flight stays on this list until
    /// its completion, and the loop repeats its cancel every few milliseconds.
    bool has_retries() const noexcept { return !retries_.empty(); }
    /// True when the next enter would submit nothing: no SQE prepared, none queued.
    bool nothing_to_submit() noexcept { return late_.empty() && pending_.empty() && ring_.sq_ready() == 0; }
    void retry_cancels() noexcept {
        for (operation* op = retries_.front(); op;) {
            operation* following = retry_list::next(op);
            if (op->state_ == op_state::in_flight) {
                op->cancel_sent_ = false;
                request_cancel(op);
            } else {
                retry_unwatch(op);
            }
            op = following;
        }
    }

    /// Hands the socket direction `op` holds to the next waiter, if any.
    void release_gate(operation* op) noexcept {
        if (!op->holds_gate_) return;
        op->holds_gate_ = false;
        op_gate* gate = op->gate_;
        if (auto* next = static_cast<operation*>(gate->waiters.pop_front())) {
            next->holds_gate_ = true;
            gate->holder = next;
            submit(next);
        } else {
            gate->busy = false;
            gate->holder = nullptr;
        }
    }

    /// Completes an operation that waited without an SQE (e.g. an accept waiter).
    void make_ready_op(operation* op) noexcept {
        deadlines_.unwatch(op);
        op->state_ = op_state::ready;
        ready_.push(op);
    }

    /// Copies completions out and dispatches them (see ring::reap).
    void reap() noexcept {
        ring_.reap([this](std::uint64_t ud, int res, unsigned flags) { dispatch(ud, res, flags); });
    }

    /// Makes sure the kernel and the loop no longer refer to `op`, without resuming it:
    /// leaves any queue, and if it is in flight, cancels it and reaps until its last
    /// CQE is in. Completions of other operations reaped meanwhile are queued, not run.
    void settle(operation* op) noexcept {
        deadlines_.unwatch(op);
        retry_unwatch(op);
        switch (op->state_) {
            case op_state::gated:
                op->gate_->waiters.erase(op);
                ready_.remove_work();
                break;
            case op_state::pending:
                pending_list(op).erase(op);
                op->queued_late_ = false;
                if (!op->is_internal()) ready_.remove_work();
                break;
            case op_state::in_flight:
                request_cancel(op);
                while (op->state_ == op_state::in_flight) {
                    if (std::erase(cancel_backlog_, op) > 0) {
                        op->cancel_sent_ = false;  // it never reached the SQ: issue it now
                        request_cancel(op);
                    }
                    // Giving up here would free memory the kernel still owns: the ring
                    // aborts on any error it cannot retry. A cancel can miss a request
                    // being handed to io-wq: wait a little, then cancel again.
                    ring_.enter_until(__kernel_timespec{0, retry_interval_ns});
                    reap();
                    if (op->state_ == op_state::in_flight && !std::count(cancel_backlog_.begin(), cancel_backlog_.end(), op)) {
                        op->cancel_sent_ = false;
                        request_cancel(op);
                    }
                }
                retry_unwatch(op);
                if (op->state_ == op_state::ready) {
                    ready_.erase(op);
                    if (!op->is_internal()) ready_.remove_work();
                }
                break;
            case op_state::ready:
                ready_.erase(op);
                if (!op->is_internal()) ready_.remove_work();
                break;
            default:
                break;
        }
        release_gate(op);
        op->state_ = op_state::done;
    }

    /// Teardown: queued operations are dropped as cancelled, everything in flight is
    /// cancelled and reaped. Nothing is resumed; later submissions complete cancelled.
    void drain() noexcept {
        shutting_down_ = true;
        while (auto* r = late_.empty() ? pending_.pop_front() : late_.pop_front()) {
            auto* op = static_cast<operation*>(r);
            op->queued_late_ = false;
            op->res_ = -ECANCELED;
            op->state_ = op_state::ready;
        }
        deadlines_.clear();
        retries_.clear();
        bool cancel_all_sent = false;
        while (inflight_ > 0) {
            if (!cancel_all_sent) {
                // Nothing new is submitted from here on; if the SQ is full even after a
                // flush, the enter below makes room and the cancel goes out next time.
                if (io_uring_sqe* sqe = ring_.get_sqe_flushing()) {
                    io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
                    sqe->user_data = 0;
                    cancel_all_sent = true;
                }
            }
            // Wait a little; a cancel that missed a request on its way to io-wq is sent again.
            ring_.enter_until(__kernel_timespec{0, retry_interval_ns});
            reap();
            cancel_all_sent = false;
            auto backlog = std::move(cancel_backlog_);
            cancel_backlog_.clear();
            for (auto* op : backlog) {
                op->cancel_sent_ = false;
                request_cancel(op);
            }
        }
    }

private:
    resumable_list& pending_list(operation* op) noexcept { return op->queued_late_ ? late_ : pending_; }

    void cancel_queued(operation* op) noexcept {
        deadlines_.unwatch(op);
        op->res_ = -ECANCELED;
        op->cqes_left_ = 0;
        op->state_ = op_state::ready;
        ready_.push(op);
    }

    bool try_prepare(operation* op, bool past_cap = false) noexcept {
        const unsigned need = op->has_deadline_ ? 2 : 1;
        if (!past_cap && inflight_ + need > inflight_cap_) return false;
        if (need > 1 || !ring_.has_sqe()) [[unlikely]] {
            if (ring_.sq_space_left() < need) {
                ring_.flush();
                if (ring_.sq_space_left() < need) return false;
            }
        }
        if (op->on_socket_ && (!op->sock_ || op->sock_->closed)) [[unlikely]] {
            // Its socket was closed while the request waited to be submitted: the
            // descriptor number may already belong to another file. Never touch it.
            cancel_queued(op);
            return true;
        }
        io_uring_sqe* sqe = ring_.get_sqe();
        op->prepare(sqe);
        if (op->sock_ && !op->sqe_without_file_) files_.use(op->sock_->file, sqe);
        io_uring_sqe_set_data(sqe, op);
        op->cqes_left_ = 1;
        if (op->has_deadline_) {
            sqe->flags |= IOSQE_IO_LINK;
            io_uring_sqe* t = ring_.get_sqe();
            io_uring_prep_link_timeout(t, &op->deadline_, IORING_TIMEOUT_ABS);
            t->user_data = reinterpret_cast<std::uint64_t>(op) | 1;
            op->cqes_left_ = 2;
        }
        inflight_ += need;
        op->state_ = op_state::in_flight;
        return true;
    }

    void dispatch(std::uint64_t ud, int res, unsigned flags) noexcept {
        if ((ud & 3) == 0 && ud != 0) [[likely]] {
            auto* op = reinterpret_cast<operation*>(ud);
            if (op->plain_cqe_) {
                op->res_ = res;
                op->cqe_flags_ = flags;
            } else {
                op->on_cqe(res, flags);
            }
            if (!(flags & IORING_CQE_F_MORE)) {
                --inflight_;
                if (--op->cqes_left_ == 0) complete(op);
            }
            return;
        }
        dispatch_tagged(ud, res);
    }

    [[gnu::noinline]] void dispatch_tagged(std::uint64_t ud, int res) noexcept {
        if (ud == 0) return;  // results of cancel requests: the target's own CQE tells all
        if ((ud & 3) == msg_ring_wake) {
            // A wake from another ring (the turn looks at the inbox anyway), or a wake
            // this ring sent that failed (the target's CQ is full...): use its eventfd.
            if (ud != msg_ring_wake && !shutting_down_) reinterpret_cast<remote_queue*>(ud & ~std::uint64_t{3})->wake();
            return;
        }
        if (ud & 1) {
            // The link timeout of an operation. -ECANCELED means the operation finished
            // first; anything else (-ETIME, or -ENOENT/-EALREADY when the operation was
            // running on an io-wq thread and got interrupted) means the deadline fired.
            auto* op = reinterpret_cast<operation*>(ud & ~std::uint64_t{1});
            --inflight_;
            if (res != -ECANCELED) {
                op->timed_out_ = true;
                // The request itself is still out: make sure it ends (see retry_cancels).
                if (op->cqes_left_ > 1) {
                    op->cancel_requested_ = true;
                    retry_watch(op);
                }
            }
            if (--op->cqes_left_ == 0) complete(op);
            return;
        }
    }

    [[gnu::noinline]] void forget_cancel(operation* op) noexcept {
        if (op->in_retry_list_) retry_unwatch(op);
        // A cancel still waiting in the backlog must not outlive the operation it aims
        // at: once resumed, the frame holding the operation may be freed.
        if (op->cancel_sent_ && !cancel_backlog_.empty()) std::erase(cancel_backlog_, op);
    }

    void retry_watch(operation* op) noexcept { retries_.push(op); }
    void retry_unwatch(operation* op) noexcept { retries_.erase(op); }

    void complete(operation* op) noexcept {
        if (op->in_retry_list_ || op->cancel_sent_) [[unlikely]] forget_cancel(op);
        op->state_ = op_state::ready;
        if (!op->on_complete()) {
            // Resubmitted itself (now pending, in flight, or ready and queued when the
            // context is shutting down), or an internal operation that has finished.
            if (op->state_ == op_state::ready && op->is_internal()) op->state_ = op_state::idle;
            return;
        }
        // The socket direction stays with it until it resumes (finish_wait): the next
        // operation's SQE would not reach the kernel before this turn's resumes anyway.
        ready_.push(op);
    }

    ring& ring_;
    file_table& files_;
    deadline_list& deadlines_;
    ready_queue& ready_;
    resumable_list pending_;
    resumable_list late_;  // receives prepared at the end of the turn (submit)
    std::vector<operation*> cancel_backlog_;
    using retry_list = op_list<&operation::retry_next_, &operation::retry_prev_, &operation::in_retry_list_>;
    retry_list retries_;
    std::size_t inflight_ = 0;      // CQEs still expected for non-zero user_data
    std::size_t inflight_cap_ = 0;  // at most this many, so the CQ never overflows
    bool shutting_down_ = false;
    bool wake_queued_ = false;  // send_wake() put an SQE in the SQ (take_wake_queued)

public:
    bool shutting_down() const noexcept { return shutting_down_; }
};

}  // namespace ringsock::detail
