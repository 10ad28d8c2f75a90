// The loop behind an io_context: owns the ring and its helpers, resumes ready
// coroutines, and runs the turn: submit everything the resumed coroutines prepared
// in one enter, copy completions out, advance the CQ, and only then resume waiters.
// Also owns spawned (detached) tasks and takes stop requests from other threads.
#pragma once

#include <algorithm>
#include <atomic>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <sys/syscall.h>
#include <thread>
#include <unistd.h>
#include <utility>

#include "../task.hpp"
#include "deadline_list.hpp"
#include "file_table.hpp"
#include "inbox.hpp"
#include "operation.hpp"
#include "ready_queue.hpp"
#include "remote_queue.hpp"
#include "ring.hpp"
#include "submission.hpp"

namespace ringsock::detail {

/// How an io_context is set up (io_context::options).
struct context_options {
    /// Submission queue size (at least 2); the completion queue is four times larger.
    unsigned entries = 256;
    /// Ask for SINGLE_ISSUER|DEFER_TASKRUN (falls back when the kernel refuses).
    bool defer_taskrun = true;
    /// Size of the table of registered files (capped at RLIMIT_NOFILE); 0 turns
    /// registration off. A socket takes a slot once it has made `register_after`
    /// requests, so short-lived connections never pay the two extra syscalls
    /// (register, unregister); when the table is full, sockets use plain descriptors.
    unsigned registered_files = 1024;
    unsigned register_after = 16;
    /// Let other threads wake this loop with IORING_OP_MSG_RING when the kernel has it;
    /// false: always through the loop's eventfd (the fallback for older kernels).
    bool msg_ring = true;
};

/// The frame of a spawned task: owned by the scheduler until it finishes.
struct detached_promise;
struct detached_handle {
    using promise_type = detached_promise;
    std::coroutine_handle<detached_promise> h;
};

struct detached_promise : resumable, posted_item {
    scheduler* sched = nullptr;
    detached_promise* next_detached = nullptr;
    detached_promise* prev_detached = nullptr;
    detached_handle get_return_object() noexcept {
        return {std::coroutine_handle<detached_promise>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() const noexcept { return {}; }
    std::suspend_never final_suspend() const noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }  // never reached: run_detached catches all
    ~detached_promise();
    // Posted by spawn_on from another thread: started on the target loop, or destroyed
    // unstarted if the target shuts down first.
    void run(scheduler& s) override;
    void discard() noexcept override {
        std::coroutine_handle<detached_promise>::from_promise(*this).destroy();
    }
};

/// The loop running a turn on this thread, if any: posts from inside a turn wake their
/// target with IORING_OP_MSG_RING through this loop's ring (batched into its next enter).
inline thread_local scheduler* running_loop = nullptr;

class scheduler {
    friend struct detached_promise;

public:
    scheduler(io_context& owner, const context_options& opts)
        : owner_(owner), ring_(opts.entries, opts.defer_taskrun, opts.msg_ring), sub_(ring_, files_, deadlines_, ready_) {
        ring_.set_registered_files(files_.open(ring_.native(), opts.registered_files, opts.register_after));
        wake_op_.emplace(*this);
        sub_.submit(&*wake_op_);
    }
    scheduler(const scheduler&) = delete;
    scheduler& operator=(const scheduler&) = delete;
    /// Cancels every operation still in flight and waits for the kernel to finish with
    /// them, then destroys spawned tasks that have not finished. Nothing is resumed.
    ~scheduler() { shut_down(); }

    /// Cancels every operation still in flight and waits for the kernel to finish with
    /// them, then destroys spawned tasks that have not finished. Nothing is resumed.
    /// Idempotent; the loop must not run afterwards.
    void shut_down() noexcept {
        inbox_.close();  // posted work that never ran: discarded (functions and unstarted tasks)
        // Spawned tasks that never finished go first: each of their operations settles,
        // cancelling its request by user_data (a hash lookup in the kernel). One
        // cancel-everything request instead costs a scan of every armed poll per request
        // it cancels: quadratic, 43 s for 10,000 idle reads (benchmarks/idle_conns).
        while (detached_head_) {
            auto h = std::coroutine_handle<detached_promise>::from_promise(*detached_head_);
            h.destroy();  // the promise unlinks itself
        }
        sub_.drain();    // what other frames still have in flight (sync_wait's task...)
        ready_.clear();  // completed but never resumed: their frames go with their owners
        wake_op_.reset();
    }

    io_context& owner() const noexcept { return owner_; }
    const ring_features& features() const noexcept { return ring_.features(); }
    io_uring* native_handle() noexcept { return ring_.native(); }
    bool on_loop_thread() const noexcept { return std::this_thread::get_id() == thread_; }
    std::size_t outstanding_work() const noexcept { return ready_.work(); }

    // -- the run loop ---------------------------------------------------------------
    std::size_t run();
    bool run_one();
    std::size_t poll();
    void stop() noexcept {
        stopped_.store(true, std::memory_order_release);
        if (!on_loop_thread()) remote_.wake();
    }
    bool stopped() const noexcept { return stopped_.load(std::memory_order_acquire); }
    void restart() noexcept { stopped_.store(false, std::memory_order_release); }
    void spawn(task<void> t);
    /// Thread-safe: queues `item` to run on this loop and wakes it if needed.
    void post(posted_item* item) noexcept;
    /// Thread-safe spawn: on this loop's thread it is spawn(); from another thread the
    /// task is handed over through the inbox.
    void spawn_from_any_thread(task<void> t);
    /// Closes the inbox (later posts are discarded) and discards what it holds.
    void close_inbox() noexcept { inbox_.close(); }
    template <class T>
    T sync_wait(task<T> t);
    auto yield() noexcept;

    // -- what operations and awaiters use ---------------------------------------------
    void submit(operation* op) noexcept { sub_.submit(op); }
    template <class Op>
    [[gnu::always_inline]] void submit_direct(Op* op) noexcept { sub_.submit_direct(op); }
    bool submit_now(operation* op) noexcept { return sub_.submit_now(op); }
    void request_cancel(operation* op) noexcept { sub_.request_cancel(op); }
    void request_cancel_from_any_thread(operation* op) noexcept {
        if (on_loop_thread()) sub_.request_cancel(op);
        else remote_.post(op);
    }
    void purge_remote_cancel(operation* op) noexcept { remote_.purge(op); }
    void settle(operation* op) noexcept { sub_.settle(op); }
    void release_gate(operation* op) noexcept { sub_.release_gate(op); }
    void make_ready_op(operation* op) noexcept { sub_.make_ready_op(op); }
    void watch_deadline(operation* op) noexcept { deadlines_.watch(op); }
    void unwatch_deadline(operation* op) noexcept { deadlines_.unwatch(op); }
    void make_ready(resumable* r) noexcept { ready_.push(r); }
    /// An SQE for a request that is not an operation (its user_data must be 0 and its
    /// success skipped), or nullptr if the SQ stays full after a flush.
    io_uring_sqe* raw_sqe() noexcept { return ring_.get_sqe_flushing(); }
    /// Hands every prepared SQE to the kernel now (before a descriptor they name closes).
    void flush() noexcept { ring_.flush(); }
    /// True when no other coroutine is queued to run before the next enter, so an
    /// operation started now would be alone in it (speculative I/O pays then).
    bool idle_after_current() const noexcept { return ready_.empty(); }
    /// Stricter: nor would the next enter submit anything. A request prepared now would
    /// be alone in that enter, paying a whole ring round on its own.
    bool alone_in_next_enter() noexcept { return ready_.empty() && sub_.nothing_to_submit(); }
    /// Spends one of this turn's direct syscalls; false when they are used up. A
    /// coroutine whose every operation completes at once by a direct syscall never
    /// suspends: without a budget it would starve timers, signals, stop requests and
    /// every other coroutine (tokio's cooperative budget answers the same). Out of
    /// budget, operations take the ring, so the coroutine suspends and the turn ends.
    /// (Operations that fail before any syscall, e.g. on a stopped token, spend nothing:
    /// a loop retrying only those is a busy loop of the caller's own.)
    bool take_direct() noexcept {
        if (direct_left_ == 0) return false;
        --direct_left_;
        return true;
    }
    static constexpr unsigned direct_per_turn = 128;
    void unready(resumable* r) noexcept { ready_.unready(r); }
    void add_work() noexcept { ready_.add_work(); }
    void record_detached_exception(std::exception_ptr e) noexcept {
        if (!detached_error_) detached_error_ = std::move(e);
    }
    void unlink_detached(detached_promise* p) noexcept {
        if (p->prev_detached) p->prev_detached->next_detached = p->next_detached;
        else if (detached_head_ == p) detached_head_ = p->next_detached;
        if (p->next_detached) p->next_detached->prev_detached = p->prev_detached;
        p->next_detached = p->prev_detached = nullptr;
        ready_.erase(p);
    }
    void check_thread(const char* what) const {
        if (!on_loop_thread())
            throw std::logic_error(std::string("ringsock: io_context::") + what +
                                   " called from a thread other than the one that created the context");
    }

private:
    /// Internal operation: an eventfd read that lets other threads wake the loop.
    class wake_op final : public operation {
    public:
        explicit wake_op(scheduler& s) noexcept : operation(s, {}) {}
        ~wake_op() { settle(); }  // the kernel writes value_
        void prepare(io_uring_sqe* sqe) noexcept override {
            io_uring_prep_read(sqe, ctx_->remote_.wake_fd(), &value_, sizeof value_, 0);
        }
        bool is_internal() const noexcept override { return true; }
        bool on_complete() noexcept override {
            ctx_->process_remote();
            if (!ctx_->sub_.shutting_down()) ctx_->sub_.submit(this);
            return false;
        }

    private:
        std::uint64_t value_ = 0;
    };

    bool turn(bool block, std::size_t max_resume, std::size_t& resumed);
    /// Leaving run()/run_one()/poll()/sync_wait(): a wake that a post made through this
    /// ring (wake_from) waits in the SQ for the next enter, which may never come (the
    /// caller stops driving the loop and waits for the target): submit it now.
    struct leave_guard {
        scheduler* s;
        ~leave_guard() {
            if (s->sub_.take_wake_queued() && s->ring_.sq_ready() > 0) s->ring_.flush();
        }
    };
    /// Repeats the cancels of operations that are still in flight, at most every
    /// retry interval (the clock is read only while there are such operations).
    void repeat_cancels() noexcept {
        timespec now{};
        ::clock_gettime(CLOCK_MONOTONIC, &now);
        const long long ns = now.tv_sec * 1'000'000'000LL + now.tv_nsec;
        if (retry_due_ns_ == 0) retry_due_ns_ = ns + submission::retry_interval_ns;
        if (ns < retry_due_ns_) return;
        retry_due_ns_ = ns + submission::retry_interval_ns;
        sub_.retry_cancels();
        if (!sub_.has_retries()) retry_due_ns_ = 0;
    }
    void process_remote() noexcept {
        for (auto* op : remote_.take()) sub_.request_cancel(op);
    }
    /// Runs posted functions and starts posted tasks, oldest first.
    void process_inbox() {
        posted_item* item = inbox_.take();
        while (item) {
            posted_item* next = item->next_posted;
            item->run(*this);
            item = next;
        }
    }
    /// Wakes this loop after a post from `from` (the loop running on the posting
    /// thread, or nullptr). Cheapest first: a MSG_RING riding the posting loop's next
    /// enter, a ringless MSG_RING (Linux >= 6.13), the eventfd.
    void wake_from(scheduler* from) noexcept;
    void rethrow_detached() {
        if (detached_error_) std::rethrow_exception(std::exchange(detached_error_, nullptr));
    }
    void adopt_detached(detached_promise* p) noexcept {
        link_detached(p);
        ready_.push(p);
        ready_.add_work();
    }
    void link_detached(detached_promise* p) noexcept {
        p->next_detached = detached_head_;
        p->prev_detached = nullptr;
        if (detached_head_) detached_head_->prev_detached = p;
        detached_head_ = p;
    }

    io_context& owner_;
    std::thread::id thread_ = std::this_thread::get_id();
    std::atomic<bool> stopped_{false};
    // TRICKY: declaration order is destruction order in reverse: the submission and
    // the operations it may still settle go before the ring; the file table after
    // every socket operation (its destructor only detaches sockets that outlive us).
    ring ring_;
    file_table files_;
    ready_queue ready_;
    deadline_list deadlines_;
    remote_queue remote_;
    inbox inbox_;
    submission sub_;
    std::optional<wake_op> wake_op_;
    unsigned poll_tick_ = 0;
    unsigned direct_left_ = direct_per_turn;
    long long retry_due_ns_ = 0;
    std::exception_ptr detached_error_;
    detached_promise* detached_head_ = nullptr;
};

inline detached_promise::~detached_promise() {
    if (sched) sched->unlink_detached(this);
}

inline detached_handle run_detached(scheduler* s, task<void> t) {
    try {
        co_await std::move(t);
    } catch (...) {
        s->record_detached_exception(std::current_exception());
    }
}

// One loop turn: submit what is queued, collect completions (blocking only when
// nothing is ready), then resume what was ready at that point.
inline bool scheduler::turn(bool block, std::size_t max_resume, std::size_t& resumed) {
    struct running_guard {
        scheduler* saved;
        explicit running_guard(scheduler* s) noexcept : saved(std::exchange(running_loop, s)) {}
        ~running_guard() { running_loop = saved; }
    } running(this);
    direct_left_ = direct_per_turn;
    if (remote_.has_posts()) process_remote();
    if (inbox_.has_items()) {
        process_inbox();
        // A posted function that posted to this loop again (no wake: same thread), stopped
        // it or threw must not leave the loop blocked in the enter below.
        if (inbox_.has_items() || stopped() || detached_error_) block = false;
    }
    sub_.flush_pending();
    sub_.flush_late();
    __kernel_timespec next_deadline{};
    const bool has_deadline =
        !deadlines_.empty() && deadlines_.expire(
                                   [this](operation* op) {
                                       op->timed_out_ = true;
                                       sub_.request_cancel(op);  // completes it as timed_out, unsubmitted
                                   },
                                   next_deadline);
    if (ready_.empty()) {
        if (ready_.work() == 0) {
            // Nothing can resume; still hand queued SQEs (cancels) to the kernel.
            if (ring_.sq_ready() > 0) ring_.enter(false);
            return false;
        }
        // TRICKY: the in-flight cap only smooths bursts. Everything in flight may be a
        // read that waits forever (idle peers) while the sends that would wake them are
        // queued behind the cap: waiting now would deadlock. With nothing ready, submit
        // past the cap; NODROP keeps any CQ overflow in the kernel and reap() drains it.
        if (sub_.has_pending()) sub_.flush_pending(true);
        // Wake for the earliest deadline of an operation still waiting in user space, and
        // soon enough to repeat cancels that may have missed (submission::retry_cancels).
        if (block && (has_deadline || sub_.has_retries())) {
            __kernel_timespec wait = has_deadline ? deadline_list::until(next_deadline)
                                                  : __kernel_timespec{1, 0};
            if (sub_.has_retries() && (wait.tv_sec > 0 || wait.tv_nsec > submission::retry_interval_ns))
                wait = __kernel_timespec{0, submission::retry_interval_ns};
            ring_.enter_until(wait);
        } else {
            ring_.enter(block);
        }
    } else if (ring_.sq_ready() > 0 || (++poll_tick_ & 31) == 0) {
        // Coroutines are waiting to run: look for completions but never block, and
        // do it at least every 32 turns so I/O is not starved by CPU-bound ping-pong.
        ring_.enter(false);
    }
    sub_.reap();
    if (sub_.has_retries()) repeat_cancels();
    if (inbox_.has_items()) process_inbox();
    // What is ready now, not what these resumes make ready (that waits for the next turn).
    // A resumed coroutine may take another out of the queue (settle): pop can run dry.
    std::size_t budget = std::min(ready_.size(), max_resume);
    while (budget-- > 0) {
        resumable* r = ready_.pop();
        if (!r) break;
        ready_.remove_work();
        r->waiter_.resume();
        ++resumed;
        if (detached_error_ || stopped()) [[unlikely]] break;
    }
    return true;
}

inline std::size_t scheduler::run() {
    check_thread("run");
    leave_guard leave{this};
    std::size_t resumed = 0;
    while (!stopped()) {
        if (!turn(true, static_cast<std::size_t>(-1), resumed)) break;
        rethrow_detached();
    }
    return resumed;
}

inline bool scheduler::run_one() {
    check_thread("run_one");
    leave_guard leave{this};
    std::size_t resumed = 0;
    while (!stopped() && resumed == 0) {
        if (!turn(true, 1, resumed)) break;
        rethrow_detached();
    }
    return resumed > 0;
}

inline std::size_t scheduler::poll() {
    check_thread("poll");
    leave_guard leave{this};
    std::size_t resumed = 0;
    if (!stopped()) {
        turn(false, static_cast<std::size_t>(-1), resumed);
        rethrow_detached();
    }
    return resumed;
}

inline void scheduler::spawn(task<void> t) {
    check_thread("spawn");
    auto h = run_detached(this, std::move(t)).h;
    auto& promise = h.promise();
    promise.sched = this;
    promise.waiter_ = h;
    adopt_detached(&promise);
}

inline void detached_promise::run(scheduler& s) {
    sched = &s;
    s.adopt_detached(this);
}

inline void scheduler::post(posted_item* item) noexcept {
    if (!inbox_.push(item)) return;  // a wake is already on its way, or the inbox is closed
    // On the loop's own thread the next turn looks at the inbox before it can block.
    if (on_loop_thread()) return;
    wake_from(running_loop);
}

inline void scheduler::wake_from(scheduler* from) noexcept {
    if (ring_.features().msg_ring) {
        if (from && from != this && !from->sub_.shutting_down() && from->sub_.send_wake(ring_.fd(), &remote_)) return;
        // No loop on this thread: the same message without a ring of our own.
        static std::atomic<int> ringless{0};  // 0 unknown, 1 works, -1 the kernel lacks it
        if (ringless.load(std::memory_order_relaxed) >= 0) {
            io_uring_sqe sqe{};
            io_uring_prep_msg_ring(&sqe, ring_.fd(), 0, submission::msg_ring_wake, 0);
            constexpr unsigned register_send_msg_ring = 31;  // IORING_REGISTER_SEND_MSG_RING, Linux 6.13
            const long rc = ::syscall(__NR_io_uring_register, -1, register_send_msg_ring, &sqe, 1);
            if (rc >= 0) {
                ringless.store(1, std::memory_order_relaxed);
                return;
            }
            if (errno == EINVAL || errno == EOPNOTSUPP || errno == EBADF) ringless.store(-1, std::memory_order_relaxed);
        }
    }
    remote_.wake();
}

inline void scheduler::spawn_from_any_thread(task<void> t) {
    if (on_loop_thread()) {
        spawn(std::move(t));
        return;
    }
    auto h = run_detached(this, std::move(t)).h;
    h.promise().waiter_ = h;
    post(&h.promise());
}

template <class T>
T scheduler::sync_wait(task<T> t) {
    check_thread("sync_wait");
    if (!t.valid()) throw std::invalid_argument("ringsock: io_context::sync_wait: empty task");
    struct starter : resumable {
        scheduler* s;
        ~starter() { s->unready(this); }
    } start;
    start.s = this;
    start.waiter_ = t.handle();
    leave_guard leave{this};
    ready_.push(&start);
    ready_.add_work();
    std::size_t resumed = 0;
    while (!t.done()) {
        if (!turn(true, static_cast<std::size_t>(-1), resumed))
            throw std::logic_error("ringsock: io_context::sync_wait: the task waits for something that can never happen");
        rethrow_detached();
    }
    return t.handle().promise().take();
}

inline auto scheduler::yield() noexcept {
    struct awaiter : resumable {
        scheduler* s;
        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<> h) noexcept {
            waiter_ = h;
            s->add_work();
            s->make_ready(this);
        }
        void await_resume() const noexcept {}
        ~awaiter() { s->unready(this); }
    };
    awaiter a;
    a.s = this;
    return a;
}

}  // namespace ringsock::detail

#include "operation_impl.hpp"
