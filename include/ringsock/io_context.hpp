// io_context: owns one io_uring and runs the coroutines that use it, on one thread.
// A thin front: the loop lives in detail/scheduler.hpp, the ring in detail/ring.hpp,
// submission and cancellation in detail/submission.hpp, deadlines of operations still
// waiting in user space in detail/deadline_list.hpp, stop requests from other threads
// in detail/remote_queue.hpp and registered files in detail/file_table.hpp.
#pragma once

#include <liburing.h>

#include <cstddef>
#include <optional>

#include "detail/operation.hpp"
#include "detail/scheduler.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "task.hpp"

namespace ringsock {

/// Owns one io_uring. Everything bound to an io_context (sockets, listeners, tasks) must
/// be used on the thread that created it and destroyed before it. Only stop() and stop
/// requests on operations' stop tokens may come from other threads.
class io_context {
public:
    /// Ring set-up, an aggregate: `entries` (submission queue size, default 256; the
    /// completion queue is four times larger), `defer_taskrun` (ask for
    /// SINGLE_ISSUER|DEFER_TASKRUN, default true; falls back when refused),
    /// `registered_files` (size of the registered-file table, default 1024; 0: off) and
    /// `register_after` (requests a socket makes before it takes a slot, default 16).
    using options = detail::context_options;

    /// A ring with the default options. Throws std::system_error as the other constructor.
    io_context() : io_context(options{}) {}
    /// Throws std::system_error naming the step if the ring cannot be set up.
    explicit io_context(options opts) : sched_(*this, opts) {}
    io_context(const io_context&) = delete;
    io_context& operator=(const io_context&) = delete;
    /// Cancels every operation still in flight and waits for the kernel to finish with
    /// them, then destroys spawned tasks that have not finished. Nothing is resumed.
    ~io_context() = default;

    /// Runs until stop() or until there is no more work. Returns the number of coroutine
    /// resumptions. An exception escaping a spawned task is rethrown from here; the
    /// loop and the other tasks stay intact and run() may be called again.
    std::size_t run() { return sched_.run(); }
    /// Resumes at most one coroutine, blocking until one is ready. Returns false if there
    /// was no work or the context is stopped.
    bool run_one() { return sched_.run_one(); }
    /// Resumes whatever is ready without blocking. Returns the number resumed.
    std::size_t poll() { return sched_.poll(); }
    /// Makes run() return soon. Safe from any thread.
    void stop() noexcept { sched_.stop(); }
    /// True after stop() until restart(). Safe from any thread.
    bool stopped() const noexcept { return sched_.stopped(); }
    /// Clears the stopped state so run() can be called again.
    void restart() noexcept { sched_.restart(); }

    /// Starts `t` on this loop, detached: the context owns it until it finishes. An
    /// exception escaping it is rethrown from the run()/run_one()/sync_wait() call that
    /// was driving the loop. Call on the loop's thread.
    void spawn(task<void> t) { sched_.spawn(std::move(t)); }

    /// Runs the loop until `t` finishes and returns its value or rethrows its exception.
    template <class T>
    T sync_wait(task<T> t) {
        return sched_.sync_wait(std::move(t));
    }

    /// Suspends the calling coroutine and resumes it on the next loop turn.
    auto yield() noexcept { return sched_.yield(); }

    /// What the ring was actually set up with (the kernel may refuse some options).
    const ring_features& features() const noexcept { return sched_.features(); }
    /// The liburing ring. Submitting to it directly bypasses the context's bookkeeping:
    /// for inspection and tests.
    io_uring* native_handle() noexcept { return sched_.native_handle(); }
    /// True on the thread that created the context (the only one that may run it).
    bool on_loop_thread() const noexcept { return sched_.on_loop_thread(); }
    /// Number of operations and waiters that keep run() from returning.
    std::size_t outstanding_work() const noexcept { return sched_.outstanding_work(); }

private:
    friend detail::scheduler& detail::core(io_context& ctx) noexcept;
    detail::scheduler sched_;
};

// Implementation only: the library's way to the scheduler (declared in
// detail/scheduler.hpp). Doxygen cannot match this definition to that declaration.
/// \cond
inline detail::scheduler& detail::core(io_context& ctx) noexcept { return ctx.sched_; }
/// \endcond

}  // namespace ringsock
