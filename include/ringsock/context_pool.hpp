// context_pool: one io_context per thread, each created, run and destroyed on its own
// thread (a ring set up SINGLE_ISSUER accepts submissions from that thread only). Work
// reaches a ring with post() / spawn_on() (post.hpp); connections are spread over the
// rings with hand_off() / serve() (hand_off.hpp).
//
// Why not one listener per ring: AF_UNIX has no SO_REUSEPORT, and dup()ed listeners
// share one wait queue in which the kernel wakes accept waiters exclusively, the
// longest-armed first. A multishot ACCEPT stays armed, so one ring takes every
// connection. Accept on one ring and hand connections to the others instead.
#pragma once

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include "io_context.hpp"

namespace ringsock {

/// A fixed set of threads, each running its own io_context from construction until the
/// pool stops. Start work on them with spawn_on() / post() (safe from any thread).
///
/// Shutdown (stop() then join(), or the destructor), on every ring: its loop returns,
/// all rings wait for each other, each discards work posted but never run, cancels
/// the operations still in flight and destroys the tasks still spawned on it, and the
/// rings wait for each other again. The contexts themselves stay (closed: whatever is
/// posted to them is discarded) until the pool is destroyed, so any thread may post to
/// a ring of a live pool, stopped or not, and no context is freed while another thread
/// may name it.
class context_pool {
public:
    /// Starts `threads` rings (0: one per CPU). Throws std::system_error naming the step
    /// if a ring cannot be set up (then no thread is left running). First grows the
    /// process's descriptor table to RLIMIT_NOFILE (see grow_descriptor_table).
    explicit context_pool(std::size_t threads = 0, io_context::options opts = {})
        : size_(threads ? threads : std::max(1u, std::thread::hardware_concurrency())),
          slots_(new slot[size_]),
          phase_(static_cast<std::ptrdiff_t>(size_)) {
        grow_descriptor_table();
        for (std::size_t i = 0; i < size_; ++i) slots_[i].thread = std::thread([this, i, opts] { thread_main(i, opts); });
        std::unique_lock lock(mu_);
        started_cv_.wait(lock, [&] { return started_ == size_; });
        if (setup_error_) {
            lock.unlock();
            stop();
            release_and_join();
            std::rethrow_exception(setup_error_);
        }
    }
    context_pool(const context_pool&) = delete;
    context_pool& operator=(const context_pool&) = delete;
    /// stop() and join(); an exception from a ring that join() did not report is dropped.
    ~context_pool() {
        stop();
        release_and_join();
    }

    /// Number of rings (and threads).
    std::size_t size() const noexcept { return size_; }
    /// Ring `i` (< size()). Use it from its own thread, or through post() / spawn_on().
    io_context& operator[](std::size_t i) noexcept { return *slots_[i].ctx; }
    /// The rings in turn, for spreading work evenly. Thread-safe.
    io_context& next() noexcept { return *slots_[next_.fetch_add(1, std::memory_order_relaxed) % size_].ctx; }
    /// The ring with the fewest live connections handed to it by hand_off()/serve().
    io_context& least_loaded() noexcept {
        std::size_t best = 0;
        long best_load = slots_[0].load.load(std::memory_order_relaxed);
        for (std::size_t i = 1; i < size_; ++i) {
            const long l = slots_[i].load.load(std::memory_order_relaxed);
            if (l < best_load) {
                best = i;
                best_load = l;
            }
        }
        return *slots_[best].ctx;
    }
    /// The index of `ctx` in this pool, or size() if it is not one of its rings.
    std::size_t index_of(const io_context& ctx) const noexcept {
        for (std::size_t i = 0; i < size_; ++i)
            if (slots_[i].ctx == &ctx) return i;
        return size_;
    }
    /// Live connections handed to ring `i` (hand_off.hpp keeps this count).
    long load(std::size_t i) const noexcept { return slots_[i].load.load(std::memory_order_relaxed); }
    /// The counter hand_off() keeps for `ctx`, or nullptr if it is not in this pool.
    std::atomic<long>* load_counter(const io_context& ctx) noexcept {
        const std::size_t i = index_of(ctx);
        return i < size_ ? &slots_[i].load : nullptr;
    }

    /// Makes every ring's loop return and the pool shut down. Safe from any thread,
    /// including a ring's own (e.g. a task that saw SIGTERM).
    void stop() noexcept {
        // Under the lock: a ring cannot destroy its context while this names it.
        std::lock_guard lock(mu_);
        if (stopping_.exchange(true, std::memory_order_acq_rel)) return;
        for (std::size_t i = 0; i < size_; ++i)
            if (slots_[i].ctx) slots_[i].ctx->stop();
    }
    /// True once stop() was called (or a ring failed): the pool is shutting down.
    bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }

    /// Blocks until the pool has stopped (stop(), or an exception escaping a task on any
    /// ring, which stops the whole pool) and every ring has shut down, then rethrows the
    /// first such exception. The threads and their (closed) contexts remain until the
    /// destructor. Call from a thread that is not one of the pool's.
    void join() {
        std::unique_lock lock(mu_);
        finished_cv_.wait(lock, [&] { return finished_ == size_; });
        if (run_error_) std::rethrow_exception(std::exchange(run_error_, nullptr));
    }

private:
    /// TRICKY: in a multi-threaded process every doubling of the descriptor table waits
    /// for an RCU grace period (expand_files -> synchronize_rcu), milliseconds each; a
    /// burst of accepts then lags 8-16 ms behind the last connect (benchmarks/accept_burst).
    /// Grow it once, now, to the soft RLIMIT_NOFILE (at most 65,536 slots: 512 KiB).
    static void grow_descriptor_table() noexcept {
        rlimit rl{};
        if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < 2) return;
        const rlim_t top = std::min<rlim_t>(rl.rlim_cur, 65536) - 1;
        const int probe = ::eventfd(0, EFD_CLOEXEC);
        if (probe < 0) return;
        const int high = ::fcntl(probe, F_DUPFD_CLOEXEC, static_cast<int>(top));
        if (high >= 0) ::close(high);
        ::close(probe);
    }

    struct slot {
        io_context* ctx = nullptr;
        std::atomic<long> load{0};
        std::thread thread;
    };

    void thread_main(std::size_t i, io_context::options opts) {
        std::optional<io_context> ctx;
        try {
            ctx.emplace(opts);
        } catch (...) {
            std::lock_guard lock(mu_);
            if (!setup_error_) setup_error_ = std::current_exception();
        }
        {
            std::lock_guard lock(mu_);
            slots_[i].ctx = ctx ? &*ctx : nullptr;
            ++started_;
        }
        started_cv_.notify_all();
        {
            std::unique_lock lock(mu_);
            started_cv_.wait(lock, [&] { return started_ == size_; });
        }
        if (ctx && !setup_error_) {
            // The pool keeps every loop running while it waits for posted work.
            detail::core(*ctx).add_work();
            while (!stopping()) {
                try {
                    ctx->run();
                } catch (...) {
                    {
                        std::lock_guard lock(mu_);
                        if (!run_error_) run_error_ = std::current_exception();
                    }
                    stop();  // one ring's failure ends the pool; join() rethrows it
                }
                if (!stopping()) ctx->restart();  // someone stopped this ring alone: keep serving
            }
        }
        phase_.arrive_and_wait();  // every loop has returned: no user code runs from here
        if (ctx) {
            detail::core(*ctx).close_inbox();
            detail::core(*ctx).shut_down();  // cancels in flight, destroys spawned tasks
        }
        phase_.arrive_and_wait();  // every ring is shut down
        // Other threads may still post to this (closed) context: it goes only with the
        // pool, destroyed on its own thread.
        {
            std::unique_lock lock(mu_);
            ++finished_;
            finished_cv_.notify_all();
            finished_cv_.wait(lock, [&] { return released_; });
            slots_[i].ctx = nullptr;
        }
        ctx.reset();
    }

    /// Lets the threads destroy their contexts and end, and joins them.
    void release_and_join() {
        {
            std::lock_guard lock(mu_);
            released_ = true;
        }
        finished_cv_.notify_all();
        join_threads();
    }

    void join_threads() {
        std::lock_guard lock(join_mu_);
        for (std::size_t i = 0; i < size_; ++i)
            if (slots_[i].thread.joinable()) slots_[i].thread.join();
    }

    std::size_t size_;
    std::unique_ptr<slot[]> slots_;
    std::atomic<std::size_t> next_{0};
    std::atomic<bool> stopping_{false};
    std::barrier<> phase_;
    std::mutex mu_;
    std::mutex join_mu_;
    std::condition_variable started_cv_;
    std::condition_variable finished_cv_;
    std::size_t started_ = 0;
    std::size_t finished_ = 0;  // rings shut down (join() waits for all)
    bool released_ = false;     // the destructor lets the threads destroy their contexts
    std::exception_ptr setup_error_;
    std::exception_ptr run_error_;
};

}  // namespace ringsock
