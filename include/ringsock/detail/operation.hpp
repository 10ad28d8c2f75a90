// The operation base: the state of one io_uring request, living in the awaiting
// coroutine's frame. `user_data` points here; the loop copies each CQE out, advances
// the CQ, stores the result here, and only then resumes the waiting coroutine.
#pragma once

#include <liburing.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <ctime>
#include <new>
#include <optional>
#include <stop_token>
#include <utility>

#include "../op_limits.hpp"

namespace ringsock {
class io_context;
namespace detail {
class scheduler;
/// The machinery behind an io_context (defined in io_context.hpp).
scheduler& core(io_context& ctx) noexcept;
}  // namespace detail
}  // namespace ringsock

namespace ringsock::detail {

class scheduler;
class submission;
class deadline_list;
class remote_queue;

/// Anything the loop can resume: a node of the intrusive ready list.
struct resumable {
    resumable* next_ = nullptr;
    resumable* prev_ = nullptr;
    bool linked_ = false;  // in the ready list (or, for operations, the pending list)
    std::coroutine_handle<> waiter_{};
};

/// Intrusive doubly linked FIFO of resumables; never allocates.
class resumable_list {
public:
    bool empty() const noexcept { return head_ == nullptr; }
    std::size_t size() const noexcept { return size_; }
    resumable* front() const noexcept { return head_; }
    void push_front(resumable* r) noexcept {
        r->prev_ = nullptr;
        r->next_ = head_;
        if (head_) head_->prev_ = r; else tail_ = r;
        head_ = r;
        r->linked_ = true;
        ++size_;
    }
    void push_back(resumable* r) noexcept {
        r->next_ = nullptr;
        r->prev_ = tail_;
        if (tail_) tail_->next_ = r; else head_ = r;
        tail_ = r;
        r->linked_ = true;
        ++size_;
    }
    void erase(resumable* r) noexcept {
        if (!r->linked_) return;
        if (r->prev_) r->prev_->next_ = r->next_; else head_ = r->next_;
        if (r->next_) r->next_->prev_ = r->prev_; else tail_ = r->prev_;
        r->next_ = r->prev_ = nullptr;
        r->linked_ = false;
        --size_;
    }
    resumable* pop_front() noexcept {
        resumable* r = head_;
        if (!r) return nullptr;
        // The head has no predecessor: a shorter unlink than erase().
        head_ = r->next_;
        if (head_) head_->prev_ = nullptr; else tail_ = nullptr;
        r->next_ = nullptr;
        r->linked_ = false;
        --size_;
        return r;
    }
    /// Empties the list and returns its first node; walk it with next_, reading each
    /// node's next_ before handing the node on (it may be linked elsewhere then).
    resumable* take_all() noexcept {
        resumable* r = head_;
        head_ = tail_ = nullptr;
        size_ = 0;
        return r;
    }
    /// Takes over all of `o`'s nodes (this list must be empty).
    void take(resumable_list& o) noexcept {
        head_ = std::exchange(o.head_, nullptr);
        tail_ = std::exchange(o.tail_, nullptr);
        size_ = std::exchange(o.size_, 0);
    }

private:
    resumable* head_ = nullptr;
    resumable* tail_ = nullptr;
    std::size_t size_ = 0;
};

class operation;

/// Serialises one direction of one socket: at most one operation in flight, the rest
/// wait here in order, so two write_all calls never interleave their bytes. The holder
/// keeps the gate from submission until it resumes (or is settled), so closing or
/// destroying the socket can reach every operation that still refers to it.
struct op_gate {
    bool busy = false;
    operation* holder = nullptr;
    resumable_list waiters;
};

enum class op_state : std::uint8_t {
    idle,       // not submitted
    gated,      // waiting for its socket's direction to be free
    pending,    // waiting for room in the SQ or under the in-flight cap, or for the
                // end of the turn (a receive, see io_context::submit)
    in_flight,  // SQE handed to the ring, CQE(s) outstanding
    ready,      // all CQEs arrived, waiting in the ready list to resume
    done,       // resumed (or never started)
};

struct socket_state;

/// Base of every io_uring-backed awaiter. Three hooks: prepare() fills the SQE,
/// on_cqe() records each completion, on_complete() decides whether the operation is
/// finished (resume the waiter) or has resubmitted itself (e.g. write_all's next chunk).
///
/// Lifetime rule: the kernel may read or write any member of the most-derived class
/// (buffers, iovecs, msghdr, sockaddr, the descriptor) until the operation is settled.
/// So every concrete operation is `final` and calls settle() first thing in its own
/// destructor, before any of its members die. ~operation() checks that this happened.
class operation : public resumable {
public:
    operation(io_context& ctx, const op_limits& limits) noexcept : ctx_(&core(ctx)), stop_(limits.stop) {
        take_timeout(limits);
    }
    /// Takes the stop token over: no reference count taken and dropped again.
    operation(io_context& ctx, op_limits&& limits) noexcept : ctx_(&core(ctx)), stop_(std::move(limits.stop)) {
        take_timeout(limits);
    }
    /// For the scheduler's own internal operations.
    operation(scheduler& s, const op_limits& limits) noexcept : ctx_(&s), stop_(limits.stop) {}
    operation(const operation&) = delete;
    operation& operator=(const operation&) = delete;

    /// Fills `sqe`; user_data and link flags are set by the context afterwards.
    virtual void prepare(io_uring_sqe* sqe) noexcept = 0;
    /// One CQE for this operation (several for multishot requests).
    virtual void on_cqe(int res, unsigned flags) noexcept {
        res_ = res;
        cqe_flags_ = flags;
    }
    /// All CQEs are in. Return true to resume the waiter; false after resubmitting.
    virtual bool on_complete() noexcept { return true; }
    /// Whether this request counts as work that keeps io_context::run() going.
    virtual bool is_internal() const noexcept { return false; }

    // Awaiter protocol shared by all operations.
    bool await_ready() noexcept {
        if (stop_.stop_requested()) {
            // A token already stopped completes at once without submitting anything.
            res_ = -ECANCELED;
            state_ = op_state::done;
            return true;
        }
        return false;
    }
    void await_suspend(std::coroutine_handle<> h);

    /// Call first in every await_resume: detaches the stop callback, gives the socket
    /// direction to the next operation and leaves the deadline list.
    [[gnu::always_inline]] void finish_wait() noexcept;
    /// Makes sure the kernel no longer touches this operation: cancels it if it is in
    /// flight and waits for its completion, without resuming anything. Idempotent.
    /// Concrete operations call it first in their destructors.
    void settle() noexcept {
        if (state_ != op_state::done && state_ != op_state::idle) [[unlikely]] settle_slow();
    }

    /// True when the operation ended because its time limit expired.
    bool timed_out() const noexcept { return timed_out_; }

    /// The result turned into an error: ECANCELED/EINTR become operation_canceled,
    /// or timed_out if the time limit fired.
    std::error_code result_error() const noexcept {
        if (res_ >= 0) return {};
        // -512..-516 are the kernel's internal restart codes (ERESTARTSYS...): a request
        // interrupted on an io-wq thread (a cancelled blocking open) can leak them.
        if (res_ == -ECANCELED || res_ == -EINTR || res_ == -ETIME || (res_ <= -512 && res_ >= -516)) {
            return std::make_error_code(timed_out_ ? std::errc::timed_out
                                                   : std::errc::operation_canceled);
        }
        return {-res_, std::generic_category()};
    }

    /// Whether a cancel or an expired deadline means no further resubmission.
    bool interrupted() const noexcept { return cancel_requested_ || timed_out_; }

    /// The socket this operation acts on, or nullptr once that socket was closed,
    /// moved away from or destroyed (or for operations on no socket).
    socket_state* socket() const noexcept { return sock_; }
    /// Whether the operation was started on a socket that has since been closed or
    /// destroyed: it must not be submitted again and must not touch the socket.
    bool socket_gone() const noexcept { return on_socket_ && sock_ == nullptr; }

protected:
    friend class scheduler;
    friend class submission;
    friend class deadline_list;
    friend class remote_queue;
    friend struct socket_state;

    /// For operations on a socket: queue on its send or receive direction.
    void attach(socket_state* st, op_gate* gate) noexcept {
        sock_ = st;
        gate_ = gate;
        on_socket_ = true;
    }
    /// await_suspend for a socket operation of final type `Op`: in the common case (no
    /// time limit, its direction free) the SQE is prepared without a virtual call
    /// (submission::submit_direct), and a stop callback is registered only if the
    /// operation has a stop token; anything else takes the general path.
    template <class Op>
    [[gnu::always_inline]] void suspend_direct(std::coroutine_handle<> h);
    /// Speculative I/O (speculation.hpp): whether one direct non-blocking syscall is
    /// worth trying instead of a ring round; then report how it went.
    bool may_try_now(bool sends) noexcept;
    bool at_speculative_point(socket_state& st, bool sends) noexcept;
    bool may_try_now_in_run(bool sends) noexcept;
    /// Takes a direct attempt's result `r` (a syscall's return, errno set on -1) into
    /// res_. False when it would have blocked: the operation goes to the ring instead.
    bool took_now(long r, bool sends) noexcept;
    void take_timeout(const op_limits& limits) noexcept {
        if (limits.timeout && *limits.timeout < op_limits::no_limit) [[unlikely]] {
            timeout_ = *limits.timeout;
            has_deadline_ = true;
        }
    }
    /// The socket is going away: forget it (called by socket_state only).
    void detach_socket() noexcept {
        sock_ = nullptr;
        gate_ = nullptr;
        holds_gate_ = false;
    }

    ~operation();

    scheduler* ctx_;  // the loop's machinery behind the io_context
    int res_ = 0;
    unsigned cqe_flags_ = 0;
    op_state state_ = op_state::idle;
    std::uint8_t cqes_left_ = 0;
    bool timed_out_ = false;
    bool cancel_requested_ = false;
    bool cancel_sent_ = false;
    bool has_deadline_ = false;
    bool holds_gate_ = false;
    bool on_socket_ = false;
    /// Set by receives: the loop puts their SQE after the other SQEs of the same turn
    /// (see io_context::submit), so a send to the same socket pair goes first.
    bool submit_late_ = false;
    bool queued_late_ = false;  // waiting in the context's late list (state pending)
    /// The next SQE this operation prepares names no file (e.g. a lent read's wait for a
    /// buffer is a TIMEOUT): the file table must neither count nor rewrite it.
    bool sqe_without_file_ = false;
    bool in_deadline_list_ = false;
    op_gate* gate_ = nullptr;
    socket_state* sock_ = nullptr;
    std::atomic<bool> remote_cancel_posted_{false};
    bool in_retry_list_ = false;
    /// Set by submission::submit_direct for types that keep the base on_cqe: the CQE is
    /// stored without a virtual call.
    bool plain_cqe_ = false;
    /// Set with submit_late_ by submission::submit_direct: prepares this operation's SQE
    /// at the end of the turn without a virtual call (nullptr: the general path).
    bool (*prepare_late_)(submission&, operation*) noexcept = nullptr;

private:
    struct canceller {
        operation* op;
        void operator()() const noexcept;
    };
    using stop_callback = std::stop_callback<canceller>;
    std::stop_token stop_;
    bool has_stop_cb_ = false;  // stop_cb_ holds a live callback

protected:
    // TRICKY: the fields below are left uninitialized, and the hot ones above come
    // first: an operation without a time limit or a stop token never writes or reads
    // these cache lines (with thousands of connections each op's construction would
    // otherwise miss in L1 on them). deadline_ and timeout_ are valid only with
    // has_deadline_, the list links only while in_deadline_list_ / in_retry_list_
    // (op_list::push sets them), stop_cb_ only with has_stop_cb_.
    __kernel_timespec deadline_;
    // Links in the context's list of operations that wait in user space (gated or
    // pending) with a deadline: the kernel's link timeout cannot see them there.
    operation* deadline_next_;
    operation* deadline_prev_;
    // Links in the submission's list of in-flight operations whose cancel may have
    // missed them (a request being handed to an io-wq thread): the cancel is repeated.
    operation* retry_next_;
    operation* retry_prev_;

    /// Whether a stop token is attached that can still be stopped.
    bool stop_possible() const noexcept { return stop_.stop_possible(); }

private:
    [[gnu::cold]] void settle_slow() noexcept;
    [[gnu::cold]] void leave_watches() noexcept;
    void start_stop_callback() noexcept {
        ::new (static_cast<void*>(stop_cb_)) stop_callback(stop_, canceller{this});
        has_stop_cb_ = true;
    }
    /// Destroying the callback waits for a concurrent invocation on another thread.
    void end_stop_callback() noexcept {
        std::launder(reinterpret_cast<stop_callback*>(stop_cb_))->~stop_callback();
        has_stop_cb_ = false;
    }
    std::chrono::nanoseconds timeout_;
    alignas(stop_callback) unsigned char stop_cb_[sizeof(stop_callback)];
};

/// Absolute CLOCK_MONOTONIC deadline `d` from now, as io_uring wants it. `d` is
/// clamped to [0, op_limits::no_limit], so the sum never overflows.
inline __kernel_timespec deadline_after(std::chrono::nanoseconds d) noexcept {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    if (d.count() < 0) d = std::chrono::nanoseconds{0};
    if (d > op_limits::no_limit) d = op_limits::no_limit;
    long long ns = static_cast<long long>(now.tv_nsec) + d.count() % 1'000'000'000;
    long long sec = static_cast<long long>(now.tv_sec) + d.count() / 1'000'000'000 + ns / 1'000'000'000;
    return __kernel_timespec{sec, ns % 1'000'000'000};
}

/// a < b for absolute deadlines.
inline bool deadline_before(const __kernel_timespec& a, const __kernel_timespec& b) noexcept {
    return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

}  // namespace ringsock::detail
