// io_context: owns one io_uring and runs the coroutines that use it, on one thread.
// Each loop turn submits every SQE the resumed coroutines prepared in one enter,
// copies the CQEs out, advances the CQ, and only then resumes their waiters.
#pragma once

#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "detail/errno.hpp"
#include "detail/fatal.hpp"
#include "detail/socket_state.hpp"
#include "detail/operation.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "task.hpp"
#include "unique_fd.hpp"

namespace ringsock {

/// What the ring was set up with, for tests, logs and benchmarks.
struct ring_features {
    unsigned sq_entries = 0;
    unsigned cq_entries = 0;
    bool single_issuer = false;
    bool defer_taskrun = false;
    bool coop_taskrun = false;
    bool registered_ring_fd = false;
    /// Slots in the ring's table of registered files (0: none; sockets then use plain
    /// descriptors).
    unsigned registered_files = 0;
};

class io_context;

namespace detail {

/// The frame of a spawned task: owned by the io_context until it finishes.
struct detached_promise;
struct detached_handle {
    using promise_type = detached_promise;
    std::coroutine_handle<detached_promise> h;
};

struct detached_promise : resumable {
    io_context* ctx = nullptr;
    detached_promise* next_detached = nullptr;
    detached_promise* prev_detached = nullptr;
    detached_handle get_return_object() noexcept {
        return {std::coroutine_handle<detached_promise>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() const noexcept { return {}; }
    std::suspend_never final_suspend() const noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept;  // never reached: run_detached catches all
    ~detached_promise();
};

}  // namespace detail

/// Owns one io_uring. Everything bound to an io_context (sockets, listeners, tasks) must
/// be used on the thread that created it and destroyed before it. Only stop() and stop
/// requests on operations' stop tokens may come from other threads.
class io_context {
public:
    struct options {
        /// Submission queue size; the completion queue is four times larger.
        unsigned entries = 256;
        /// Ask for SINGLE_ISSUER|DEFER_TASKRUN (falls back when the kernel refuses).
        bool defer_taskrun = true;
        /// Size of the table of registered files (capped at RLIMIT_NOFILE); 0 turns
        /// registration off. A socket takes a slot once it has made `register_after`
        /// requests, so short-lived connections never pay the two extra syscalls
        /// (register, unregister); when the table is full, sockets use plain descriptors.
        unsigned registered_files = 1024;
        unsigned register_after = 16;
    };

    io_context() : io_context(options{}) {}
    /// Throws std::system_error naming the step if the ring cannot be set up.
    explicit io_context(options opts);
    io_context(const io_context&) = delete;
    io_context& operator=(const io_context&) = delete;
    /// Cancels every operation still in flight and waits for the kernel to finish with
    /// them, then destroys spawned tasks that have not finished. Nothing is resumed.
    ~io_context();

    /// Runs until stop() or until there is no more work. Returns the number of coroutine
    /// resumptions. An exception escaping a spawned task is rethrown from here; the
    /// loop and the other tasks stay intact and run() may be called again.
    std::size_t run();
    /// Resumes at most one coroutine, blocking until one is ready. Returns false if there
    /// was no work or the context is stopped.
    bool run_one();
    /// Resumes whatever is ready without blocking. Returns the number resumed.
    std::size_t poll();
    /// Makes run() return soon. Safe from any thread and from signal-free contexts.
    void stop() noexcept;
    bool stopped() const noexcept { return stopped_.load(std::memory_order_acquire); }
    /// Clears the stopped state so run() can be called again.
    void restart() noexcept { stopped_.store(false, std::memory_order_release); }

    /// Starts `t` on this loop, detached: the context owns it until it finishes. An
    /// exception escaping it is rethrown from the run()/run_one()/sync_wait() call that
    /// was driving the loop. Call on the loop's thread.
    void spawn(task<void> t);

    /// Runs the loop until `t` finishes and returns its value or rethrows its exception.
    template <class T>
    T sync_wait(task<T> t);

    /// Suspends the calling coroutine and resumes it on the next loop turn.
    auto yield() noexcept;

    const ring_features& features() const noexcept { return features_; }
    io_uring* native_handle() noexcept { return &ring_; }
    bool on_loop_thread() const noexcept { return std::this_thread::get_id() == owner_; }
    /// Number of operations and waiters that keep run() from returning.
    std::size_t outstanding_work() const noexcept { return work_; }

    // -- machinery used by operations; not for application code --------------------
    void submit(detail::operation* op) noexcept;
    void request_cancel(detail::operation* op) noexcept;
    void request_cancel_from_any_thread(detail::operation* op) noexcept;
    void purge_remote_cancel(detail::operation* op) noexcept;
    void settle(detail::operation* op) noexcept;
    void make_ready(detail::resumable* r) noexcept { ready_.push_back(r); }
    /// Completes an operation that was waiting without an SQE (e.g. in a queue).
    void make_ready_op(detail::operation* op) noexcept {
        unwatch_deadline(op);
        op->state_ = detail::op_state::ready;
        ready_.push_back(op);
    }
    /// Takes a resumable that is being destroyed out of the ready list, giving back the
    /// work unit its make_ready() came with (a no-op if it is not queued).
    void unready(detail::resumable* r) noexcept {
        if (!r->linked_) return;
        ready_.erase(r);
        --work_;
    }
    void add_work() noexcept { ++work_; }
    void remove_work() noexcept { --work_; }
    void record_detached_exception(std::exception_ptr e) noexcept {
        if (!detached_error_) detached_error_ = std::move(e);
    }
    void link_detached(detail::detached_promise* p) noexcept;
    void release_gate(detail::operation* op) noexcept;
    void unlink_detached(detail::detached_promise* p) noexcept;
    /// Operations that wait in user space (gated or pending) with a deadline: the loop
    /// expires them itself, since the kernel's link timeout only starts at submission.
    void watch_deadline(detail::operation* op) noexcept;
    void unwatch_deadline(detail::operation* op) noexcept;
    /// Gives a registered-file slot back (registered_file::release).
    void release_file_slot(int slot) noexcept;
    /// A registered_file moved: its slot's owner is now `f`.
    void move_file_slot(int slot, detail::registered_file* f) noexcept { file_owners_[static_cast<unsigned>(slot)] = f; }

private:
    class wake_op;

    bool try_prepare(detail::operation* op, bool past_cap = false) noexcept;
    void use_registered(detail::registered_file& f, io_uring_sqe* sqe) noexcept;
    void flush_pending(bool past_cap = false) noexcept;
    void flush_late() noexcept;
    detail::resumable_list& pending_list(detail::operation* op) noexcept {
        return op->queued_late_ ? late_ : pending_;
    }
    void flush_sq() noexcept;
    io_uring_sqe* get_sqe_flushing() noexcept;
    void enter(bool wait) noexcept;
    /// Expires user-space waits whose deadline passed; returns the earliest deadline
    /// still ahead in `next` (false if none).
    bool expire_deadlines(__kernel_timespec& next) noexcept;
    void reap() noexcept;
    void check_overflow() noexcept;
    void dispatch(std::uint64_t ud, int res, unsigned flags) noexcept;
    void complete(detail::operation* op) noexcept;
    bool turn(bool block, std::size_t max_resume, std::size_t& resumed);
    void resume_front();
    void process_remote() noexcept;
    void wake() noexcept;
    void rethrow_detached();
    void drain_all() noexcept;
    void check_thread(const char* what) const;

    io_uring ring_{};
    ring_features features_{};
    std::thread::id owner_ = std::this_thread::get_id();
    std::atomic<bool> stopped_{false};
    bool shutting_down_ = false;
    detail::resumable_list ready_;
    detail::resumable_list pending_;
    detail::resumable_list late_;  // receives prepared at the end of the turn (submit)
    std::vector<detail::operation*> cancel_backlog_;
    std::size_t inflight_ = 0;      // CQEs still expected for non-zero user_data
    std::size_t inflight_cap_ = 0;  // at most this many, so the CQ never overflows
    std::size_t work_ = 0;
    unsigned poll_tick_ = 0;
    std::exception_ptr detached_error_;
    detail::operation* deadline_head_ = nullptr;
    detail::detached_promise* detached_head_ = nullptr;

    unique_fd wake_fd_;
    wake_op* wake_op_ = nullptr;
    std::atomic<bool> remote_flag_{false};
    std::mutex remote_mu_;
    std::vector<detail::operation*> remote_cancels_;

    std::vector<int> free_file_slots_;  // capacity = the table size: never reallocates
    // Who holds each slot, so a context destroyed before its sockets (a misuse) leaves
    // them unregistered instead of pointing at a dead context.
    std::vector<detail::registered_file*> file_owners_;
    unsigned register_after_ = 0;
};

// ---------------------------------------------------------------------------------
// Internal operation: an eventfd read that lets other threads wake the loop.
class io_context::wake_op final : public detail::operation {
public:
    explicit wake_op(io_context& ctx) noexcept : operation(ctx, {}) {}
    ~wake_op() { settle(); }  // the kernel writes value_
    void prepare(io_uring_sqe* sqe) noexcept override {
        io_uring_prep_read(sqe, ctx_->wake_fd_.get(), &value_, sizeof value_, 0);
    }
    bool is_internal() const noexcept override { return true; }
    bool on_complete() noexcept override {
        ctx_->process_remote();
        if (!ctx_->shutting_down_) ctx_->submit(this);
        return false;
    }

private:
    std::uint64_t value_ = 0;
};

namespace detail {

inline operation::~operation() {
    // Every concrete operation settles in its own destructor, while the members the
    // kernel may read still exist. Reaching here unsettled is a bug in ringsock.
    if (state_ != op_state::done && state_ != op_state::idle)
        fatal("operation destroyed while the kernel or the loop still refers to it (missing settle())");
}

inline void operation::await_suspend(std::coroutine_handle<> h) {
    waiter_ = h;
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
    if (stop_.stop_possible()) stop_cb_.emplace(stop_, canceller{this});
}

inline void operation::canceller::operator()() const noexcept {
    op->ctx_->request_cancel_from_any_thread(op);
}

inline void operation::finish_wait() noexcept {
    // Destroying the callback waits for a concurrent invocation on another thread.
    stop_cb_.reset();
    if (remote_cancel_posted_.load(std::memory_order_acquire)) ctx_->purge_remote_cancel(this);
    if (in_deadline_list_) ctx_->unwatch_deadline(this);
    ctx_->release_gate(this);
    state_ = op_state::done;
}

inline void operation::settle() noexcept {
    if (state_ == op_state::done || state_ == op_state::idle) return;
    stop_cb_.reset();
    if (remote_cancel_posted_.load(std::memory_order_acquire)) ctx_->purge_remote_cancel(this);
    ctx_->settle(this);
}

inline void socket_state::detach_all(io_context& ctx) noexcept {
    for (op_gate* g : {&send_gate, &recv_gate}) {
        while (auto* r = g->waiters.front()) {
            auto* op = static_cast<operation*>(r);
            ctx.request_cancel(op);  // gated: leaves the list, completes as cancelled
            op->detach_socket();
        }
        if (operation* op = std::exchange(g->holder, nullptr)) {
            op->detach_socket();
            ctx.request_cancel(op);  // pending: dropped; in flight: ASYNC_CANCEL queued
        }
        g->busy = false;
    }
}

inline detached_promise::~detached_promise() {
    if (ctx) ctx->unlink_detached(this);
}

inline void detached_promise::unhandled_exception() noexcept { std::terminate(); }

inline detached_handle run_detached(io_context* ctx, task<void> t) {
    try {
        co_await std::move(t);
    } catch (...) {
        ctx->record_detached_exception(std::current_exception());
    }
}

}  // namespace detail

// ---------------------------------------------------------------------------------

inline io_context::io_context(options opts) {
    if (opts.entries == 0) opts.entries = 1;
    io_uring_params p{};
    auto try_init = [&](unsigned flags) {
        p = io_uring_params{};
        p.flags = flags | IORING_SETUP_CQSIZE;
        p.cq_entries = opts.entries * 4;
        return io_uring_queue_init_params(opts.entries, &ring_, &p);
    };
    int rc = -EINVAL;
    if (opts.defer_taskrun) {
        rc = try_init(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
        if (rc == 0) features_.single_issuer = features_.defer_taskrun = true;
    }
    if (rc < 0) {
        rc = try_init(IORING_SETUP_COOP_TASKRUN);
        if (rc == 0) features_.coop_taskrun = true;
    }
    if (rc < 0) rc = try_init(0);
    if (rc < 0) detail::throw_errno(-rc, "io_context: io_uring_queue_init_params");
    if (!(p.features & IORING_FEAT_NODROP)) {
        io_uring_queue_exit(&ring_);
        throw std::system_error(std::make_error_code(std::errc::not_supported),
                                "io_context: kernel lacks IORING_FEAT_NODROP (Linux >= 5.5 needed)");
    }
    features_.sq_entries = p.sq_entries;
    features_.cq_entries = p.cq_entries;
    features_.registered_ring_fd = io_uring_register_ring_fd(&ring_) == 1;
    if (opts.registered_files > 0) {
        // The kernel refuses a table larger than RLIMIT_NOFILE.
        rlimit lim{};
        unsigned n = opts.registered_files;
        if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < n)
            n = static_cast<unsigned>(lim.rlim_cur);
        if (n > 0 && io_uring_register_files_sparse(&ring_, n) == 0) {
            free_file_slots_.reserve(n);
            file_owners_.assign(n, nullptr);
            for (unsigned i = n; i-- > 0;) free_file_slots_.push_back(static_cast<int>(i));
            features_.registered_files = n;
            register_after_ = opts.register_after;
        }
    }
    inflight_cap_ = p.cq_entries;

    wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_fd_) {
        int err = errno;
        io_uring_queue_exit(&ring_);
        detail::throw_errno(err, "io_context: eventfd");
    }
    wake_op_ = new wake_op(*this);  // one allocation per context
    submit(wake_op_);
}

inline io_context::~io_context() {
    drain_all();
    // Spawned tasks that never finished: destroy their frames. Their operations have
    // all completed above, so destroying them touches nothing the kernel still holds.
    while (detached_head_) {
        auto h = std::coroutine_handle<detail::detached_promise>::from_promise(*detached_head_);
        h.destroy();  // the promise unlinks itself
    }
    delete wake_op_;
    for (auto* f : file_owners_) {
        if (f) {
            f->ctx = nullptr;
            f->slot = detail::registered_file::never;
        }
    }
    io_uring_queue_exit(&ring_);
}

inline void io_context::check_thread(const char* what) const {
    if (!on_loop_thread())
        throw std::logic_error(std::string("ringsock: io_context::") + what +
                               " called from a thread other than the one that created the context");
}

inline void io_context::drain_all() noexcept {
    shutting_down_ = true;
    // Operations never submitted are simply dropped; their awaiters see ECANCELED.
    while (auto* r = late_.empty() ? pending_.pop_front() : late_.pop_front()) {
        auto* op = static_cast<detail::operation*>(r);
        op->queued_late_ = false;
        op->res_ = -ECANCELED;
        op->state_ = detail::op_state::ready;
    }
    while (deadline_head_) unwatch_deadline(deadline_head_);
    if (inflight_ == 0) return;
    if (io_uring_sqe* sqe = get_sqe_flushing()) {
        io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
        sqe->user_data = 0;
    }
    while (inflight_ > 0) {
        int rc = io_uring_submit_and_wait(&ring_, 1);
        if (!detail::enter_error_is_transient(rc)) detail::fatal("io_uring_enter (draining the ring)", -rc);
        check_overflow();
        reap();
        for (auto* op : cancel_backlog_) request_cancel(op);
        cancel_backlog_.clear();
    }
    // Completed but never resumed: forget them; their awaiters are destroyed with frames.
    while (auto* r = ready_.pop_front()) (void)r;
}

inline void io_context::link_detached(detail::detached_promise* p) noexcept {
    p->next_detached = detached_head_;
    p->prev_detached = nullptr;
    if (detached_head_) detached_head_->prev_detached = p;
    detached_head_ = p;
}

inline void io_context::unlink_detached(detail::detached_promise* p) noexcept {
    if (p->prev_detached) p->prev_detached->next_detached = p->next_detached;
    else if (detached_head_ == p) detached_head_ = p->next_detached;
    if (p->next_detached) p->next_detached->prev_detached = p->prev_detached;
    p->next_detached = p->prev_detached = nullptr;
    ready_.erase(p);
}

inline void io_context::spawn(task<void> t) {
    check_thread("spawn");
    auto h = detail::run_detached(this, std::move(t)).h;
    auto& promise = h.promise();
    promise.ctx = this;
    promise.waiter_ = h;
    link_detached(&promise);
    make_ready(&promise);
    add_work();
}

template <class T>
T io_context::sync_wait(task<T> t) {
    check_thread("sync_wait");
    if (!t.valid()) throw std::invalid_argument("ringsock: io_context::sync_wait: empty task");
    struct starter : detail::resumable {
        io_context* ctx;
        ~starter() { ctx->unready(this); }
    } start;
    start.ctx = this;
    start.waiter_ = t.handle();
    make_ready(&start);
    add_work();
    std::size_t resumed = 0;
    while (!t.done()) {
        if (!turn(true, static_cast<std::size_t>(-1), resumed))
            throw std::logic_error("ringsock: io_context::sync_wait: the task waits for something that can never happen");
        rethrow_detached();
    }
    return t.handle().promise().take();
}

inline auto io_context::yield() noexcept {
    struct awaiter : detail::resumable {
        io_context* ctx;
        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<> h) noexcept {
            waiter_ = h;
            ctx->add_work();
            ctx->make_ready(this);
        }
        void await_resume() const noexcept {}
        ~awaiter() { ctx->unready(this); }
    };
    awaiter a;
    a.ctx = this;
    return a;
}

inline std::size_t io_context::run() {
    check_thread("run");
    std::size_t resumed = 0;
    while (!stopped()) {
        if (!turn(true, static_cast<std::size_t>(-1), resumed)) break;
        rethrow_detached();
    }
    return resumed;
}

inline bool io_context::run_one() {
    check_thread("run_one");
    std::size_t resumed = 0;
    while (!stopped() && resumed == 0) {
        if (!turn(true, 1, resumed)) break;
        rethrow_detached();
    }
    return resumed > 0;
}

inline std::size_t io_context::poll() {
    check_thread("poll");
    std::size_t resumed = 0;
    if (!stopped()) {
        turn(false, static_cast<std::size_t>(-1), resumed);
        rethrow_detached();
    }
    return resumed;
}

inline void io_context::stop() noexcept {
    stopped_.store(true, std::memory_order_release);
    if (!on_loop_thread()) wake();
}

inline void io_context::rethrow_detached() {
    if (detached_error_) std::rethrow_exception(std::exchange(detached_error_, nullptr));
}

// One loop turn: submit what is queued, collect completions (blocking only when
// nothing is ready), then resume what was ready at that point.
inline bool io_context::turn(bool block, std::size_t max_resume, std::size_t& resumed) {
    if (remote_flag_.load(std::memory_order_acquire)) process_remote();
    flush_pending();
    flush_late();
    __kernel_timespec next_deadline{};
    const bool has_deadline = deadline_head_ && expire_deadlines(next_deadline);
    if (ready_.empty()) {
        if (work_ == 0) {
            // Nothing can resume; still hand queued SQEs (cancels) to the kernel.
            if (io_uring_sq_ready(&ring_) > 0) enter(false);
            return false;
        }
        // TRICKY: the in-flight cap only smooths bursts. Everything in flight may be a
        // read that waits forever (idle peers) while the sends that would wake them are
        // queued behind the cap: waiting now would deadlock. With nothing ready, submit
        // past the cap; NODROP keeps any CQ overflow in the kernel and reap() drains it.
        if (!pending_.empty()) flush_pending(true);
        if (block && has_deadline) {
            // Wake for the earliest deadline of an operation still waiting in user space.
            timespec now{};
            ::clock_gettime(CLOCK_MONOTONIC, &now);
            long long ns = (next_deadline.tv_sec - now.tv_sec) * 1'000'000'000LL + (next_deadline.tv_nsec - now.tv_nsec);
            if (ns < 0) ns = 0;
            __kernel_timespec rel{ns / 1'000'000'000, ns % 1'000'000'000};
            io_uring_cqe* cqe = nullptr;
            int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &rel, nullptr);
            if (!detail::enter_error_is_transient(rc)) detail::fatal("io_uring_enter (wait with timeout)", -rc);
            check_overflow();
        } else {
            enter(block);
        }
    } else if (io_uring_sq_ready(&ring_) > 0 || (++poll_tick_ & 31) == 0) {
        // Coroutines are waiting to run: look for completions but never block, and
        // do it at least every 32 turns so I/O is not starved by CPU-bound ping-pong.
        enter(false);
    }
    reap();
    std::size_t budget = ready_.size();
    while (budget-- > 0 && max_resume > 0 && !ready_.empty()) {
        resume_front();
        ++resumed;
        --max_resume;
        if (detached_error_ || stopped()) break;
    }
    return true;
}

inline void io_context::resume_front() {
    detail::resumable* r = ready_.pop_front();
    --work_;
    r->waiter_.resume();
}

inline void io_context::enter(bool wait) noexcept {
    int rc = wait ? io_uring_submit_and_wait(&ring_, 1) : io_uring_submit_and_get_events(&ring_);
    // EINTR: a signal arrived; EBUSY/EAGAIN: the CQ backlog must be reaped first.
    // All three are handled by reaping and trying again on the next turn. Anything else
    // (EBADR: the kernel dropped a completion) leaves operations the kernel may still
    // write into with no way to know when it is done: give up loudly.
    if (!detail::enter_error_is_transient(rc)) detail::fatal("io_uring_enter", -rc);
    check_overflow();
}

inline void io_context::check_overflow() noexcept {
    // With NODROP the kernel keeps overflowing CQEs on a list; a non-zero koverflow
    // means it could not, and some operation will never see its completion.
    if (ring_.cq.koverflow && *ring_.cq.koverflow != 0)
        detail::fatal("completion queue overflow: the kernel dropped completions");
}

inline void io_context::watch_deadline(detail::operation* op) noexcept {
    if (op->in_deadline_list_) return;
    op->in_deadline_list_ = true;
    op->deadline_prev_ = nullptr;
    op->deadline_next_ = deadline_head_;
    if (deadline_head_) deadline_head_->deadline_prev_ = op;
    deadline_head_ = op;
}

inline void io_context::unwatch_deadline(detail::operation* op) noexcept {
    if (!op->in_deadline_list_) return;
    op->in_deadline_list_ = false;
    if (op->deadline_prev_) op->deadline_prev_->deadline_next_ = op->deadline_next_;
    else deadline_head_ = op->deadline_next_;
    if (op->deadline_next_) op->deadline_next_->deadline_prev_ = op->deadline_prev_;
    op->deadline_next_ = op->deadline_prev_ = nullptr;
}

inline bool io_context::expire_deadlines(__kernel_timespec& next) noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    const __kernel_timespec now{ts.tv_sec, ts.tv_nsec};
    bool any = false;
    for (detail::operation* op = deadline_head_; op;) {
        detail::operation* following = op->deadline_next_;
        using detail::op_state;
        if (op->state_ != op_state::gated && op->state_ != op_state::pending) {
            unwatch_deadline(op);  // submitted: the kernel's link timeout watches it now
        } else if (!detail::deadline_before(now, op->deadline_)) {
            unwatch_deadline(op);
            op->timed_out_ = true;
            request_cancel(op);  // completes it as timed_out without submitting
        } else if (!any || detail::deadline_before(op->deadline_, next)) {
            next = op->deadline_;
            any = true;
        }
        op = following;
    }
    return any;
}

inline void io_context::reap() noexcept {
    struct completion {
        std::uint64_t user_data;
        int res;
        unsigned flags;
    };
    constexpr unsigned batch = 64;
    completion copied[batch];
    bool flushed = false;
    for (;;) {
        // The CQ read inline (io_uring_peek_batch_cqe is an out-of-line library call).
        // The ring has 16-byte CQEs: no IORING_SETUP_CQE32.
        unsigned head = *ring_.cq.khead;
        unsigned n = io_uring_smp_load_acquire(ring_.cq.ktail) - head;
        if (n == 0) {
            // CQEs the kernel kept on its overflow list (NODROP) come back with a
            // GETEVENTS enter, as io_uring_peek_batch_cqe does it.
            if (flushed || !io_uring_cq_has_overflow(&ring_)) break;
            (void)io_uring_get_events(&ring_);
            flushed = true;
            continue;
        }
        if (n > batch) n = batch;
        const unsigned mask = ring_.cq.ring_mask;
        for (unsigned i = 0; i < n; ++i) {
            const io_uring_cqe& c = ring_.cq.cqes[(head + i) & mask];
            copied[i] = {c.user_data, c.res, c.flags};
        }
        // Advance before running any completion logic: a handler may submit new SQEs.
        io_uring_cq_advance(&ring_, n);
        for (unsigned i = 0; i < n; ++i) dispatch(copied[i].user_data, copied[i].res, copied[i].flags);
        if (n < batch) break;
    }
}

inline void io_context::dispatch(std::uint64_t ud, int res, unsigned flags) noexcept {
    if (ud == 0) return;  // results of cancel requests: the target's own CQE tells all
    if (ud & 1) {
        // The link timeout of an operation. -ECANCELED means the operation finished
        // first; anything else (-ETIME, or -ENOENT/-EALREADY when the operation was
        // running on an io-wq thread and got interrupted) means the deadline fired.
        auto* op = reinterpret_cast<detail::operation*>(ud & ~std::uint64_t{1});
        --inflight_;
        if (res != -ECANCELED) op->timed_out_ = true;
        if (--op->cqes_left_ == 0) complete(op);
        return;
    }
    auto* op = reinterpret_cast<detail::operation*>(ud);
    bool last = !(flags & IORING_CQE_F_MORE);
    op->on_cqe(res, flags);
    if (last) {
        --inflight_;
        if (--op->cqes_left_ == 0) complete(op);
    }
}

inline void io_context::complete(detail::operation* op) noexcept {
    // A cancel still waiting in the backlog must not outlive the operation it aims at:
    // once resumed, the frame holding the operation may be freed.
    if (op->cancel_sent_ && !cancel_backlog_.empty()) std::erase(cancel_backlog_, op);
    op->state_ = detail::op_state::ready;
    if (!op->on_complete()) {
        // Resubmitted itself (now pending or in flight), or internal and finished.
        if (op->state_ == detail::op_state::ready) op->state_ = detail::op_state::idle;
        return;
    }
    // The socket direction stays with it until it resumes (finish_wait): the next
    // operation's SQE would not reach the kernel before this turn's resumes anyway.
    make_ready(op);
}

inline void io_context::release_gate(detail::operation* op) noexcept {
    if (!op->holds_gate_) return;
    op->holds_gate_ = false;
    detail::op_gate* gate = op->gate_;
    if (auto* next = static_cast<detail::operation*>(gate->waiters.pop_front())) {
        next->holds_gate_ = true;
        gate->holder = next;
        submit(next);
    } else {
        gate->busy = false;
        gate->holder = nullptr;
    }
}

inline void io_context::submit(detail::operation* op) noexcept {
    op->cqes_left_ = 0;
    if (shutting_down_) {
        op->res_ = -ECANCELED;
        op->state_ = detail::op_state::ready;
        if (!op->is_internal()) make_ready(op);
        return;
    }
    if (op->submit_late_) {
        // TRICKY: a receive's SQE goes into the SQ after every SQE the rest of this turn
        // prepares (flush_late runs right before the turn's enter), so when the peer end
        // is on this loop, its send reaches the socket first and the receive completes
        // inline instead of arming poll and completing from task-work. It is never held
        // past the enter: the order within one batch is all that changes.
        op->state_ = detail::op_state::pending;
        op->queued_late_ = true;
        late_.push_back(op);
        if (op->has_deadline_) watch_deadline(op);
        return;
    }
    if (!pending_.empty() || !try_prepare(op)) {
        op->state_ = detail::op_state::pending;
        pending_.push_back(op);
        if (op->has_deadline_) watch_deadline(op);
    }
}

inline void io_context::flush_late() noexcept {
    while (auto* r = late_.pop_front()) {
        auto* op = static_cast<detail::operation*>(r);
        op->queued_late_ = false;
        if (!pending_.empty() || !try_prepare(op)) {
            op->state_ = detail::op_state::pending;
            pending_.push_back(op);
        }
    }
}

inline io_uring_sqe* io_context::get_sqe_flushing() noexcept {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {
        flush_sq();
        sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
}

inline void io_context::flush_sq() noexcept {
    // Hand the SQ to the kernel without waiting; a full SQ is never an error.
    int rc = io_uring_submit(&ring_);
    if (!detail::enter_error_is_transient(rc)) detail::fatal("io_uring_enter (submit)", -rc);
}

inline bool io_context::try_prepare(detail::operation* op, bool past_cap) noexcept {
    unsigned need = op->has_deadline_ ? 2 : 1;
    if (!past_cap && inflight_ + need > inflight_cap_) return false;
    if (io_uring_sq_space_left(&ring_) < need) {
        flush_sq();
        if (io_uring_sq_space_left(&ring_) < need) return false;
    }
    if (op->on_socket_ && (!op->sock_ || op->sock_->closed)) {
        // Its socket was closed while the request waited to be submitted: the
        // descriptor number may already belong to another file. Never touch it.
        op->res_ = -ECANCELED;
        op->cqes_left_ = 0;
        op->state_ = detail::op_state::ready;
        make_ready(op);
        return true;
    }
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    op->prepare(sqe);
    if (op->sock_) use_registered(op->sock_->file, sqe);
    io_uring_sqe_set_data(sqe, op);
    op->cqes_left_ = 1;
    if (op->has_deadline_) {
        sqe->flags |= IOSQE_IO_LINK;
        io_uring_sqe* t = io_uring_get_sqe(&ring_);
        io_uring_prep_link_timeout(t, &op->deadline_, IORING_TIMEOUT_ABS);
        t->user_data = reinterpret_cast<std::uint64_t>(op) | 1;
        op->cqes_left_ = 2;
    }
    inflight_ += need;
    op->state_ = detail::op_state::in_flight;
    return true;
}

inline void io_context::use_registered(detail::registered_file& f, io_uring_sqe* sqe) noexcept {
    if (f.slot < 0) {
        if (f.slot != detail::registered_file::unregistered || ++f.uses < register_after_ ||
            free_file_slots_.empty())
            return;
        int fd = sqe->fd;
        int slot = free_file_slots_.back();
        if (io_uring_register_files_update(&ring_, static_cast<unsigned>(slot), &fd, 1) != 1) {
            f.slot = detail::registered_file::never;
            return;
        }
        free_file_slots_.pop_back();
        file_owners_[static_cast<unsigned>(slot)] = &f;
        f.slot = slot;
        f.ctx = this;
    }
    sqe->fd = f.slot;
    sqe->flags |= IOSQE_FIXED_FILE;
}

inline void io_context::release_file_slot(int slot) noexcept {
    int none = -1;
    // Only fails for arguments we never pass; the slot is not reused if it does.
    file_owners_[static_cast<unsigned>(slot)] = nullptr;
    if (io_uring_register_files_update(&ring_, static_cast<unsigned>(slot), &none, 1) == 1)
        free_file_slots_.push_back(slot);
}

inline void detail::registered_file::take(registered_file& o) noexcept {
    ctx = std::exchange(o.ctx, nullptr);
    slot = std::exchange(o.slot, unregistered);
    uses = std::exchange(o.uses, 0);
    if (slot >= 0) ctx->move_file_slot(slot, this);
}

inline void detail::registered_file::release() noexcept {
    if (slot >= 0) ctx->release_file_slot(slot);
    ctx = nullptr;
    slot = unregistered;
    uses = 0;
}

inline void io_context::flush_pending(bool past_cap) noexcept {
    if (!cancel_backlog_.empty()) {
        auto backlog = std::move(cancel_backlog_);
        cancel_backlog_.clear();
        for (auto* op : backlog) {
            op->cancel_sent_ = false;
            request_cancel(op);
        }
    }
    while (!pending_.empty()) {
        auto* op = static_cast<detail::operation*>(pending_.front());
        pending_.erase(op);
        if (!try_prepare(op, past_cap)) {
            // Still no room: keep its place and wait for completions to free some.
            pending_.push_front(op);
            op->state_ = detail::op_state::pending;
            break;
        }
    }
}

inline void io_context::request_cancel(detail::operation* op) noexcept {
    op->cancel_requested_ = true;
    switch (op->state_) {
        case detail::op_state::pending:
            pending_list(op).erase(op);
            op->queued_late_ = false;
            unwatch_deadline(op);
            op->res_ = -ECANCELED;
            op->cqes_left_ = 0;
            op->state_ = detail::op_state::ready;
            make_ready(op);
            break;
        case detail::op_state::gated:
            op->gate_->waiters.erase(op);
            unwatch_deadline(op);
            op->res_ = -ECANCELED;
            op->state_ = detail::op_state::ready;
            make_ready(op);
            break;
        case detail::op_state::in_flight: {
            if (op->cancel_sent_) break;
            io_uring_sqe* sqe = get_sqe_flushing();
            if (!sqe) {
                cancel_backlog_.push_back(op);  // rare: retried on the next turn
                op->cancel_sent_ = true;
                break;
            }
            io_uring_prep_cancel64(sqe, reinterpret_cast<std::uint64_t>(op), 0);
            sqe->user_data = 0;
            sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
            op->cancel_sent_ = true;
            break;
        }
        default:
            break;  // already complete: the real result wins
    }
}

inline void io_context::request_cancel_from_any_thread(detail::operation* op) noexcept {
    if (on_loop_thread()) {
        request_cancel(op);
        return;
    }
    {
        std::lock_guard lock(remote_mu_);
        remote_cancels_.push_back(op);
        op->remote_cancel_posted_.store(true, std::memory_order_release);
    }
    remote_flag_.store(true, std::memory_order_release);
    wake();
}

inline void io_context::purge_remote_cancel(detail::operation* op) noexcept {
    std::lock_guard lock(remote_mu_);
    std::erase(remote_cancels_, op);
    op->remote_cancel_posted_.store(false, std::memory_order_relaxed);
}

inline void io_context::process_remote() noexcept {
    remote_flag_.store(false, std::memory_order_relaxed);
    std::vector<detail::operation*> todo;
    {
        std::lock_guard lock(remote_mu_);
        todo.swap(remote_cancels_);
        for (auto* op : todo) op->remote_cancel_posted_.store(false, std::memory_order_relaxed);
    }
    for (auto* op : todo) request_cancel(op);
}

inline void io_context::wake() noexcept {
    std::uint64_t one = 1;
    // A full eventfd counter (EAGAIN) already means "wake up".
    [[maybe_unused]] auto n = ::write(wake_fd_.get(), &one, sizeof one);
}

inline void io_context::settle(detail::operation* op) noexcept {
    using detail::op_state;
    unwatch_deadline(op);
    switch (op->state_) {
        case op_state::gated:
            op->gate_->waiters.erase(op);
            --work_;
            break;
        case op_state::pending:
            pending_list(op).erase(op);
            op->queued_late_ = false;
            if (!op->is_internal()) --work_;
            break;
        case op_state::in_flight:
            // The frame holding this operation is going away while the kernel may still
            // read or write it: cancel and reap until its last CQE has arrived. Other
            // completions reaped meanwhile are queued, not resumed.
            request_cancel(op);
            while (op->state_ == op_state::in_flight) {
                if (std::erase(cancel_backlog_, op) > 0) {
                    op->cancel_sent_ = false;  // it never reached the SQ: issue it now
                    request_cancel(op);
                }
                int rc = io_uring_submit_and_wait(&ring_, 1);
                // Giving up here would free memory the kernel still owns.
                if (!detail::enter_error_is_transient(rc)) detail::fatal("io_uring_enter (settling an operation)", -rc);
                check_overflow();
                reap();
            }
            if (op->state_ == op_state::ready) {
                ready_.erase(op);
                if (!op->is_internal()) --work_;
            }
            break;
        case op_state::ready:
            ready_.erase(op);
            if (!op->is_internal()) --work_;
            break;
        default:
            break;
    }
    release_gate(op);
    op->state_ = op_state::done;
}

}  // namespace ringsock
