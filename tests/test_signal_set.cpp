// Integration tests for signal_set (signals read from a signalfd through the ring) and
// the timers in timer.hpp: real signals raised at this process, merging, cancellation,
// a signal_set in a forked child, and sleeps that end on time or on a stop request.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <set>
#include <stop_token>
#include <system_error>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::signal_set;
using ringsock::task;

/// Signals stay blocked after a signal_set is gone (by design), so a signal one test
/// leaves pending would surface in the next. This drains SIGUSR1/SIGUSR2 before and
/// after each test.
class drain_usr_signals {
public:
    drain_usr_signals() { drain(); }
    drain_usr_signals(const drain_usr_signals&) = delete;
    drain_usr_signals& operator=(const drain_usr_signals&) = delete;
    ~drain_usr_signals() { drain(); }

private:
    static void drain() {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        sigaddset(&set, SIGUSR2);
        // Only signals that are blocked can be pending; sigtimedwait takes them.
        sigset_t blocked;
        ::pthread_sigmask(SIG_BLOCK, nullptr, &blocked);
        if (!sigismember(&blocked, SIGUSR1) || !sigismember(&blocked, SIGUSR2)) return;
        timespec zero{0, 0};
        while (::sigtimedwait(&set, nullptr, &zero) > 0) {
        }
    }
};

io_result<int> wait_now(io_context& ctx, signal_set& s, ringsock::op_limits lim = {}) {
    return ctx.sync_wait([&]() -> task<io_result<int>> { co_return co_await s.wait(lim); }());
}

}  // namespace

TEST_CASE("signal_set: raise(SIGUSR1) makes wait() yield SIGUSR1", "[signal_set]") {
    drain_usr_signals guard;
    io_context ctx;
    signal_set sigs(ctx, {SIGUSR1, SIGUSR2});
    CHECK(sigismember(&sigs.mask(), SIGUSR1) == 1);
    CHECK(sigismember(&sigs.mask(), SIGTERM) == 0);
    REQUIRE(::raise(SIGUSR1) == 0);
    auto s = wait_now(ctx, sigs);
    REQUIRE(s);
    CHECK(*s == SIGUSR1);
}

TEST_CASE("signal_set: kill(getpid(), SIGUSR2) makes wait() yield SIGUSR2", "[signal_set]") {
    drain_usr_signals guard;
    io_context ctx;
    signal_set sigs(ctx, {SIGUSR1, SIGUSR2});
    REQUIRE(::kill(::getpid(), SIGUSR2) == 0);
    auto s = wait_now(ctx, sigs);
    REQUIRE(s);
    CHECK(*s == SIGUSR2);
}

TEST_CASE("signal_set: a signal arriving while wait() is in flight wakes it", "[signal_set]") {
    drain_usr_signals guard;
    io_context ctx;
    signal_set sigs(ctx, {SIGUSR1, SIGUSR2});

    SECTION("raised from the loop") {
        auto s = ctx.sync_wait([&]() -> task<io_result<int>> {
            auto raiser = [&]() -> task<void> {
                (void)co_await ringsock::sleep_for(ctx, 10ms);
                ::raise(SIGUSR1);
            };
            ctx.spawn(raiser());
            co_return co_await sigs.wait(5s);
        }());
        REQUIRE(s);
        CHECK(*s == SIGUSR1);
    }
    SECTION("sent from another thread") {
        // The thread inherits the blocked mask, so the signal can only reach the signalfd.
        std::thread t([] {
            std::this_thread::sleep_for(10ms);
            ::kill(::getpid(), SIGUSR2);
        });
        auto s = wait_now(ctx, sigs, 5s);
        t.join();
        REQUIRE(s);
        CHECK(*s == SIGUSR2);
    }
}

TEST_CASE("signal_set: two raises of the same signal before a wait merge into one", "[signal_set]") {
    drain_usr_signals guard;
    io_context ctx;
    signal_set sigs(ctx, {SIGUSR1});
    REQUIRE(::raise(SIGUSR1) == 0);
    REQUIRE(::raise(SIGUSR1) == 0);
    auto first = wait_now(ctx, sigs);
    REQUIRE(first);
    CHECK(*first == SIGUSR1);
    auto second = wait_now(ctx, sigs, 50ms);
    REQUIRE_FALSE(second);
    CHECK(second.error() == std::errc::timed_out);
}

TEST_CASE("signal_set: two different pending signals are both delivered", "[signal_set]") {
    drain_usr_signals guard;
    io_context ctx;
    signal_set sigs(ctx, {SIGUSR1, SIGUSR2});
    REQUIRE(::raise(SIGUSR2) == 0);
    REQUIRE(::raise(SIGUSR1) == 0);
    std::set<int> got;
    for (int i = 0; i < 2; ++i) {
        auto s = wait_now(ctx, sigs, 5s);
        REQUIRE(s);
        got.insert(*s);
    }
    CHECK(got == std::set<int>{SIGUSR1, SIGUSR2});
}

TEST_CASE("signal_set: wait() with a stop token cancelled gives operation_canceled", "[signal_set]") {
    drain_usr_signals guard;
    io_context ctx;
    signal_set sigs(ctx, {SIGUSR1});

    SECTION("stopped while waiting") {
        std::stop_source src;
        auto s = ctx.sync_wait([&]() -> task<io_result<int>> {
            auto stopper = [&]() -> task<void> {
                (void)co_await ringsock::sleep_for(ctx, 10ms);
                src.request_stop();
            };
            ctx.spawn(stopper());
            co_return co_await sigs.wait(src.get_token());
        }());
        REQUIRE_FALSE(s);
        CHECK(s.error() == std::errc::operation_canceled);
    }
    SECTION("stopped before waiting") {
        std::stop_source src;
        src.request_stop();
        auto s = wait_now(ctx, sigs, src.get_token());
        REQUIRE_FALSE(s);
        CHECK(s.error() == std::errc::operation_canceled);
    }
    // The cancelled wait consumed nothing: a later signal still arrives.
    REQUIRE(::raise(SIGUSR1) == 0);
    auto s = wait_now(ctx, sigs, 5s);
    REQUIRE(s);
    CHECK(*s == SIGUSR1);
}

TEST_CASE("signal_set: the signals stay blocked after the set is destroyed", "[signal_set]") {
    drain_usr_signals guard;
    io_context ctx;
    { signal_set sigs(ctx, {SIGUSR2}); }
    sigset_t now;
    REQUIRE(::pthread_sigmask(SIG_BLOCK, nullptr, &now) == 0);
    CHECK(sigismember(&now, SIGUSR2) == 1);
    // A late signal is left pending instead of killing the process.
    REQUIRE(::raise(SIGUSR2) == 0);
    sigset_t pending;
    REQUIRE(::sigpending(&pending) == 0);
    CHECK(sigismember(&pending, SIGUSR2) == 1);
}

TEST_CASE("signal_set: an invalid signal number throws std::system_error", "[signal_set]") {
    io_context ctx;
    CHECK_THROWS_AS(signal_set(ctx, {1000}), std::system_error);
}

TEST_CASE("signal_set: a signal_set works in a forked child", "[signal_set]") {
    drain_usr_signals guard;
    int ready[2];
    REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        // Child: its own ring and signalfd. Exit status = the signal it saw (or 100+).
        ::close(ready[0]);
        int code = 100;
        try {
            io_context ctx;
            signal_set sigs(ctx, {SIGUSR1});
            char one = 1;
            if (::write(ready[1], &one, 1) != 1) ::_exit(101);
            auto s = wait_now(ctx, sigs, 10s);
            code = s ? *s : 102;
        } catch (...) {
            code = 103;
        }
        ::_exit(code);
    }
    ::close(ready[1]);
    pollfd pfd{ready[0], POLLIN, 0};
    bool child_ready = ::poll(&pfd, 1, 10'000) == 1;
    char byte = 0;
    child_ready = child_ready && ::read(ready[0], &byte, 1) == 1;
    ::close(ready[0]);
    CHECK(child_ready);
    ::kill(pid, child_ready ? SIGUSR1 : SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == SIGUSR1);
}

// ---------------------------------------------------------------------------------
// timer.hpp

TEST_CASE("timer: sleep_for completes successfully and shorter sleeps finish first", "[timer]") {
    io_context ctx;
    std::vector<int> order;
    auto start = std::chrono::steady_clock::now();
    ctx.sync_wait([&]() -> task<void> {
        bool long_done = false, short_done = false;
        auto sleeper = [&](std::chrono::milliseconds d, int id, bool& done) -> task<void> {
            auto r = co_await ringsock::sleep_for(ctx, d);
            CHECK(r);
            order.push_back(id);
            done = true;
        };
        ctx.spawn(sleeper(300ms, 2, long_done));
        ctx.spawn(sleeper(5ms, 1, short_done));
        while (!long_done || !short_done) (void)co_await ringsock::sleep_for(ctx, 1ms);
    }());
    CHECK(order == std::vector<int>{1, 2});
    CHECK(std::chrono::steady_clock::now() - start < 5s);
}

TEST_CASE("timer: sleep_until a time in the past and a zero sleep complete at once", "[timer]") {
    io_context ctx;
    ctx.sync_wait([&]() -> task<void> {
        auto a = co_await ringsock::sleep_until(ctx, std::chrono::steady_clock::now() - 1s);
        CHECK(a);
        auto b = co_await ringsock::sleep_for(ctx, 0ms);
        CHECK(b);
        auto c = co_await ringsock::sleep_for(ctx, -5ms);
        CHECK(c);
        auto d = co_await ringsock::sleep_until(ctx, std::chrono::steady_clock::now() + 5ms);
        CHECK(d);
    }());
}

TEST_CASE("timer: a stop request ends a sleep with operation_canceled", "[timer]") {
    io_context ctx;
    auto start = std::chrono::steady_clock::now();
    std::stop_source src;
    auto r = ctx.sync_wait([&]() -> task<io_result<void>> {
        auto stopper = [&]() -> task<void> {
            (void)co_await ringsock::sleep_for(ctx, 10ms);
            src.request_stop();
        };
        ctx.spawn(stopper());
        co_return co_await ringsock::sleep_for(ctx, 30s, src.get_token());
    }());
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::operation_canceled);
    CHECK(std::chrono::steady_clock::now() - start < 5s);

    // From another thread too.
    std::stop_source src2;
    std::thread t([&] {
        std::this_thread::sleep_for(10ms);
        src2.request_stop();
    });
    auto r2 = ctx.sync_wait([&]() -> task<io_result<void>> {
        co_return co_await ringsock::sleep_until(ctx, std::chrono::steady_clock::now() + 30s, src2.get_token());
    }());
    t.join();
    REQUIRE_FALSE(r2);
    CHECK(r2.error() == std::errc::operation_canceled);
    CHECK(std::chrono::steady_clock::now() - start < 10s);
}
