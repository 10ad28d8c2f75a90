// Tests for io_context: ring setup, spawn/run/run_one/poll/stop semantics, exceptions
// from spawned tasks, sync_wait, far more operations than ring entries, and tearing a
// context down with operations still in flight.
#include <catch2/catch.hpp>

#include <ringsock/io_context.hpp>
#include <ringsock/stream_socket.hpp>
#include <ringsock/task.hpp>
#include <ringsock/timer.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstring>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

using namespace std::chrono_literals;
using ringsock::io_context;
using ringsock::stream_socket;
using ringsock::task;

/// Counts live instances, so a test can prove coroutine frames were destroyed.
struct counted {
    static inline int live = 0;
    counted() noexcept { ++live; }
    counted(const counted&) noexcept { ++live; }
    counted(counted&&) noexcept { ++live; }
    counted& operator=(const counted&) = default;
    counted& operator=(counted&&) = default;
    ~counted() { --live; }
};

task<void> increment(int* n, counted c) {
    (void)c;
    ++*n;
    co_return;
}

task<void> stepper(io_context& ctx, int* steps) {
    ++*steps;
    co_await ctx.yield();
    ++*steps;
    co_await ctx.yield();
    ++*steps;
}

task<void> record(io_context& ctx, std::string* log, char tag, int times) {
    for (int i = 0; i < times; ++i) {
        *log += tag;
        co_await ctx.yield();
    }
}

task<void> spinner(io_context& ctx, const bool* quit, int* spins) {
    while (!*quit) {
        ++*spins;
        co_await ctx.yield();
    }
}

task<void> stop_after(io_context& ctx, int turns) {
    for (int i = 0; i < turns; ++i) co_await ctx.yield();
    ctx.stop();
}

task<void> sleeper(io_context& ctx, std::chrono::nanoseconds d, std::stop_token token, int* ok, int* canceled) {
    auto r = co_await ringsock::sleep_for(ctx, d, std::move(token));
    if (r) ++*ok;
    else if (r.error() == std::errc::operation_canceled) ++*canceled;
}

task<void> throws_after_yield(io_context& ctx, counted c) {
    (void)c;
    co_await ctx.yield();
    throw std::runtime_error("spawned task failed");
}

task<int> value_after_sleep(io_context& ctx, int v) {
    (void)co_await ringsock::sleep_for(ctx, 1ms);
    co_return v;
}

task<std::string> string_after_yield(io_context& ctx) {
    co_await ctx.yield();
    co_return "done";
}

task<int> throws_after_sleep(io_context& ctx) {
    (void)co_await ringsock::sleep_for(ctx, 1ms);
    throw std::runtime_error("sync_wait task failed");
}

task<void> never_resumed() { co_await std::suspend_always{}; }

/// Reads from a socket whose peer never writes; both ends live in this frame.
task<void> silent_reader(stream_socket a, stream_socket b, counted c, std::atomic<int>* started, int* finished) {
    (void)c;
    std::array<char, 16> buf{};
    started->fetch_add(1, std::memory_order_release);
    auto r = co_await a.read_some(buf);
    (void)r;
    (void)b;
    ++*finished;
}

/// One side of a ping-pong: sends "ping" and expects "pong", `rounds` times.
task<void> pinger(stream_socket s, int rounds, int* ok, counted c) {
    (void)c;
    std::array<char, 4> buf{};
    for (int i = 0; i < rounds; ++i) {
        auto w = co_await s.write_all(std::string_view("ping"));
        if (!w || *w != 4) co_return;
        auto r = co_await s.read_exact(buf);
        if (!r || std::string_view(buf.data(), buf.size()) != "pong") co_return;
    }
    ++*ok;
}

/// The other side: answers each "ping" with "pong".
task<void> ponger(stream_socket s, int rounds, int* ok, counted c) {
    (void)c;
    std::array<char, 4> buf{};
    for (int i = 0; i < rounds; ++i) {
        auto r = co_await s.read_exact(buf);
        if (!r || std::string_view(buf.data(), buf.size()) != "ping") co_return;
        auto w = co_await s.write_all(std::string_view("pong"));
        if (!w) co_return;
    }
    ++*ok;
}

/// A ping-pong with both sockets in one task (the data fits the socket buffer).
task<void> self_ping(stream_socket a, stream_socket b, int* ok) {
    std::array<char, 4> buf{};
    auto w = co_await a.write_all(std::string_view("ping"));
    auto r = co_await b.read_exact(buf);
    if (w && r && std::string_view(buf.data(), 4) == "ping") ++*ok;
}

}  // namespace

TEST_CASE("io_context: the ring uses SINGLE_ISSUER|DEFER_TASKRUN on this kernel", "[io_context]") {
    io_context ctx;
    const auto& f = ctx.features();
    REQUIRE(f.defer_taskrun);
    REQUIRE(f.single_issuer);
    REQUIRE_FALSE(f.coop_taskrun);
    REQUIRE(f.sq_entries == 256);
    REQUIRE(f.cq_entries == 4 * f.sq_entries);
    REQUIRE(ctx.native_handle()->ring_fd >= 0);
    REQUIRE(ctx.on_loop_thread());
    REQUIRE_FALSE(ctx.stopped());

    io_context small(io_context::options{.entries = 8});
    REQUIRE(small.features().sq_entries == 8);
    REQUIRE(small.features().cq_entries == 32);
}

TEST_CASE("io_context: a context without DEFER_TASKRUN works too", "[io_context]") {
    io_context ctx(io_context::options{.defer_taskrun = false});
    REQUIRE_FALSE(ctx.features().defer_taskrun);
    REQUIRE_FALSE(ctx.features().single_issuer);

    int ok = 0, canceled = 0;
    ctx.spawn(sleeper(ctx, 1ms, {}, &ok, &canceled));
    for (int i = 0; i < 10; ++i) {
        auto [a, b] = stream_socket::pair(ctx).value();
        ctx.spawn(self_ping(std::move(a), std::move(b), &ok));
    }
    ctx.run();
    REQUIRE(ok == 11);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("io_context: run(), run_one() and poll() return at once when there is no work", "[io_context]") {
    io_context ctx;
    REQUIRE(ctx.outstanding_work() == 0);
    REQUIRE(ctx.run() == 0);
    REQUIRE_FALSE(ctx.run_one());
    REQUIRE(ctx.poll() == 0);
    REQUIRE_FALSE(ctx.stopped());
}

TEST_CASE("io_context: spawn runs tasks, and run() returns once they are done", "[io_context]") {
    counted::live = 0;
    io_context ctx;
    int n = 0;
    for (int i = 0; i < 3; ++i) ctx.spawn(increment(&n, counted{}));
    REQUIRE(n == 0);  // spawn only schedules
    REQUIRE(ctx.outstanding_work() == 3);
    REQUIRE(counted::live == 3);
    REQUIRE(ctx.run() >= 3);
    REQUIRE(n == 3);
    REQUIRE(ctx.outstanding_work() == 0);
    REQUIRE(counted::live == 0);  // finished spawned frames are freed

    // The context can be run again after it ran out of work.
    ctx.spawn(increment(&n, counted{}));
    ctx.run();
    REQUIRE(n == 4);
}

TEST_CASE("io_context: spawned tasks that are never run are destroyed with the context", "[io_context]") {
    counted::live = 0;
    int n = 0;
    {
        io_context ctx;
        for (int i = 0; i < 5; ++i) ctx.spawn(increment(&n, counted{}));
        REQUIRE(counted::live == 5);
    }
    REQUIRE(n == 0);
    REQUIRE(counted::live == 0);
}

TEST_CASE("io_context: run_one() resumes exactly one coroutine", "[io_context]") {
    io_context ctx;
    int steps = 0;
    ctx.spawn(stepper(ctx, &steps));
    REQUIRE(steps == 0);
    REQUIRE(ctx.run_one());
    REQUIRE(steps == 1);
    REQUIRE(ctx.run_one());
    REQUIRE(steps == 2);
    REQUIRE(ctx.run_one());
    REQUIRE(steps == 3);
    REQUIRE(ctx.outstanding_work() == 0);
    REQUIRE_FALSE(ctx.run_one());
}

TEST_CASE("io_context: run_one() blocks until an operation completes", "[io_context]") {
    io_context ctx;
    int ok = 0, canceled = 0;
    ctx.spawn(sleeper(ctx, 5ms, {}, &ok, &canceled));
    REQUIRE(ctx.run_one());  // starts the task, which suspends in the sleep
    REQUIRE(ok == 0);
    REQUIRE(ctx.run_one());  // waits for the timer, then resumes the task
    REQUIRE(ok == 1);
    REQUIRE_FALSE(ctx.run_one());
}

TEST_CASE("io_context: poll() resumes what is ready and never blocks", "[io_context]") {
    io_context ctx;
    int steps = 0;
    ctx.spawn(stepper(ctx, &steps));
    ctx.spawn(stepper(ctx, &steps));
    // Each poll() resumes what was ready when it started; yields land in the next one.
    REQUIRE(ctx.poll() == 2);
    REQUIRE(steps == 2);
    REQUIRE(ctx.poll() == 2);
    REQUIRE(steps == 4);
    REQUIRE(ctx.poll() == 2);
    REQUIRE(steps == 6);
    REQUIRE(ctx.poll() == 0);

    // A sleep of an hour: poll() must come back without waiting for it.
    std::stop_source source;
    int ok = 0, canceled = 0;
    ctx.spawn(sleeper(ctx, 1h, source.get_token(), &ok, &canceled));
    REQUIRE(ctx.poll() == 1);
    REQUIRE(ctx.poll() == 0);
    REQUIRE(ctx.poll() == 0);
    REQUIRE(ctx.outstanding_work() == 1);
    source.request_stop();
    ctx.run();
    REQUIRE(canceled == 1);
    REQUIRE(ok == 0);
}

TEST_CASE("io_context: yield() lets the other ready coroutines run first", "[io_context]") {
    io_context ctx;
    std::string log;
    ctx.spawn(record(ctx, &log, 'a', 3));
    ctx.spawn(record(ctx, &log, 'b', 3));
    ctx.run();
    REQUIRE(log == "ababab");
}

TEST_CASE("io_context: stop() from inside the loop makes run() return; restart() resumes", "[io_context]") {
    io_context ctx;
    bool quit = false;
    int spins = 0;
    ctx.spawn(spinner(ctx, &quit, &spins));
    ctx.spawn(stop_after(ctx, 3));
    ctx.run();
    REQUIRE(ctx.stopped());
    REQUIRE(spins >= 1);
    REQUIRE(ctx.outstanding_work() > 0);  // the spinner is still there

    // While stopped, nothing runs.
    int before = spins;
    REQUIRE(ctx.run() == 0);
    REQUIRE_FALSE(ctx.run_one());
    REQUIRE(ctx.poll() == 0);
    REQUIRE(spins == before);

    ctx.restart();
    REQUIRE_FALSE(ctx.stopped());
    REQUIRE(ctx.run_one());
    REQUIRE(spins == before + 1);
    quit = true;
    ctx.run();
    REQUIRE(ctx.outstanding_work() == 0);
    REQUIRE_FALSE(ctx.stopped());
}

TEST_CASE("io_context: stop() from another thread wakes run() blocked on an operation", "[io_context]") {
    counted::live = 0;
    {
        io_context ctx;
        std::atomic<int> started{0};
        int finished = 0;
        {
            auto [a, b] = stream_socket::pair(ctx).value();
            ctx.spawn(silent_reader(std::move(a), std::move(b), counted{}, &started, &finished));
        }
        std::thread stopper([&] {
            while (started.load(std::memory_order_acquire) == 0) std::this_thread::sleep_for(1ms);
            std::this_thread::sleep_for(20ms);  // most likely blocked in io_uring_enter by now
            ctx.stop();
        });
        auto t0 = std::chrono::steady_clock::now();
        ctx.run();
        stopper.join();
        REQUIRE(std::chrono::steady_clock::now() - t0 < 5s);
        REQUIRE(ctx.stopped());
        REQUIRE(started == 1);
        REQUIRE(finished == 0);
        REQUIRE(counted::live == 1);

        // The loop still works after a restart, with the read still pending.
        ctx.restart();
        REQUIRE(ctx.sync_wait(value_after_sleep(ctx, 5)) == 5);
        REQUIRE(finished == 0);
        // Destroying the context now cancels the read and frees the frame.
    }
    REQUIRE(counted::live == 0);
}

TEST_CASE("io_context: stop() from another thread works repeatedly", "[io_context]") {
    io_context ctx;
    std::atomic<int> started{0};
    int finished = 0;
    {
        auto [a, b] = stream_socket::pair(ctx).value();
        ctx.spawn(silent_reader(std::move(a), std::move(b), counted{}, &started, &finished));
    }
    for (int i = 0; i < 5; ++i) {
        std::thread stopper([&] {
            while (started.load(std::memory_order_acquire) == 0) std::this_thread::sleep_for(1ms);
            std::this_thread::sleep_for(5ms);
            ctx.stop();
        });
        ctx.run();
        stopper.join();
        REQUIRE(ctx.stopped());
        ctx.restart();
    }
    REQUIRE(finished == 0);
}

TEST_CASE("io_context: calls from a thread other than the owner are refused", "[io_context]") {
    io_context ctx;
    int refused = 0;
    std::thread other([&] {
        try {
            ctx.run();
        } catch (const std::logic_error&) {
            ++refused;
        }
        try {
            (void)ctx.poll();
        } catch (const std::logic_error&) {
            ++refused;
        }
        try {
            int n = 0;
            ctx.spawn(increment(&n, counted{}));
        } catch (const std::logic_error&) {
            ++refused;
        }
    });
    other.join();
    REQUIRE(refused == 3);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("io_context: an exception escaping a spawned task is rethrown from run(); the loop goes on",
          "[io_context]") {
    counted::live = 0;
    io_context ctx;
    std::string log;
    ctx.spawn(record(ctx, &log, 'x', 10));
    ctx.spawn(throws_after_yield(ctx, counted{}));
    REQUIRE_THROWS_WITH(ctx.run(), "spawned task failed");
    REQUIRE(counted::live == 0);  // the failed task's frame is gone
    REQUIRE(log.size() < 10);
    REQUIRE_FALSE(ctx.stopped());

    ctx.run();
    REQUIRE(log == std::string(10, 'x'));
    REQUIRE(ctx.outstanding_work() == 0);

    // run_one() and sync_wait() report it as well.
    ctx.spawn(throws_after_yield(ctx, counted{}));
    REQUIRE(ctx.run_one());  // starts it
    REQUIRE_THROWS_WITH(ctx.run_one(), "spawned task failed");

    ctx.spawn(throws_after_yield(ctx, counted{}));
    REQUIRE_THROWS_WITH(ctx.sync_wait(value_after_sleep(ctx, 1)), "spawned task failed");
    REQUIRE(counted::live == 0);
}

TEST_CASE("io_context: sync_wait returns the task's value or rethrows its exception", "[io_context]") {
    io_context ctx;
    REQUIRE(ctx.sync_wait(value_after_sleep(ctx, 42)) == 42);
    REQUIRE(ctx.sync_wait(string_after_yield(ctx)) == "done");
    REQUIRE_THROWS_WITH(ctx.sync_wait(throws_after_sleep(ctx)), "sync_wait task failed");
    // Still usable afterwards.
    REQUIRE(ctx.sync_wait(value_after_sleep(ctx, 7)) == 7);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("io_context: sync_wait refuses an empty task and one that can never finish", "[io_context]") {
    io_context ctx;
    REQUIRE_THROWS_AS(ctx.sync_wait(task<int>{}), std::invalid_argument);
    REQUIRE_THROWS_AS(ctx.sync_wait(never_resumed()), std::logic_error);
    REQUIRE(ctx.sync_wait(value_after_sleep(ctx, 3)) == 3);
}

TEST_CASE("io_context: 2000 concurrent socketpair ping-pongs complete on an 8-entry ring",
          "[io_context][capacity]") {
    counted::live = 0;
    constexpr int pairs = 2000;
    constexpr int rounds = 3;
    int ping_ok = 0, pong_ok = 0;
    {
        io_context ctx(io_context::options{.entries = 8});
        REQUIRE(ctx.features().cq_entries == 32);
        for (int i = 0; i < pairs; ++i) {
            auto [a, b] = stream_socket::pair(ctx).value();
            ctx.spawn(ponger(std::move(b), rounds, &pong_ok, counted{}));
            ctx.spawn(pinger(std::move(a), rounds, &ping_ok, counted{}));
        }
        ctx.run();
        REQUIRE(ctx.outstanding_work() == 0);
    }
    REQUIRE(ping_ok == pairs);
    REQUIRE(pong_ok == pairs);
    REQUIRE(counted::live == 0);
}

TEST_CASE("io_context: 5000 concurrent sleep_for complete on an 8-entry ring", "[io_context][capacity]") {
    io_context ctx(io_context::options{.entries = 8});
    int ok = 0, canceled = 0;
    for (int i = 0; i < 5000; ++i) ctx.spawn(sleeper(ctx, std::chrono::milliseconds(i % 7), {}, &ok, &canceled));
    auto t0 = std::chrono::steady_clock::now();
    ctx.run();
    REQUIRE(std::chrono::steady_clock::now() - t0 < 60s);
    REQUIRE(ok == 5000);
    REQUIRE(canceled == 0);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("io_context: 3000 sleep_for(0ms) completing at once are all reaped", "[io_context][capacity]") {
    for (unsigned entries : {8u, 256u}) {
        io_context ctx(io_context::options{.entries = entries});
        int ok = 0, canceled = 0;
        for (int i = 0; i < 3000; ++i) ctx.spawn(sleeper(ctx, 0ms, {}, &ok, &canceled));
        ctx.run();
        REQUIRE(ok == 3000);
        REQUIRE(*ctx.native_handle()->cq.koverflow == 0);  // nothing dropped or overflowed
        REQUIRE(ctx.outstanding_work() == 0);
    }
}

TEST_CASE("io_context: destroying a context with 1000 operations in flight frees everything",
          "[io_context][lifetime]") {
    for (unsigned entries : {256u, 8u}) {  // all in flight; most still queued for the ring
        CAPTURE(entries);
        counted::live = 0;
        std::atomic<int> started{0};
        int finished = 0;
        {
            io_context ctx(io_context::options{.entries = entries});
            for (int i = 0; i < 1000; ++i) {
                auto [a, b] = stream_socket::pair(ctx).value();
                ctx.spawn(silent_reader(std::move(a), std::move(b), counted{}, &started, &finished));
            }
            while (started.load() < 1000) ctx.poll();
            ctx.poll();  // hand the SQEs to the kernel
            REQUIRE(ctx.outstanding_work() == 1000);
            REQUIRE(counted::live == 1000);
        }
        REQUIRE(finished == 0);  // nothing was resumed during teardown
        REQUIRE(counted::live == 0);
    }
}
