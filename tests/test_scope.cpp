// Tests for structured concurrency: scope (spawn, request_stop, join, exceptions, a
// thousand handlers stopped at once, destruction with live children) and the
// when_all / when_any combinators (results, fail-fast, losers cancelled and awaited,
// racing a read against a deadline or a signal).
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <signal.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/fd_count.hpp"

namespace {

using namespace std::chrono_literals;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::scope;
using ringsock::stream_socket;
using ringsock::task;
using ringsock::test::counted;
using ringsock::test::make_pair;
using ringsock::test::raw_send;

/// Reads once with the given token and records how it ended.
task<void> read_once(stream_socket& s, std::stop_token st, int& canceled, int& got_data) {
    counted c;
    std::array<std::byte, 16> buf{};
    auto r = co_await s.read_some(buf, st);
    if (r.error() == std::errc::operation_canceled) ++canceled;
    else if (r && *r > 0) ++got_data;
}

task<void> sleep_then_count(io_context& ctx, std::chrono::milliseconds d, int& finished) {
    counted c;
    auto r = co_await ringsock::sleep_for(ctx, d);
    if (r) ++finished;
}

task<void> throw_after_yield(io_context& ctx, const char* what) {
    co_await ctx.yield();
    throw std::runtime_error(what);
}

}  // namespace

TEST_CASE("scope: join resumes at once when nothing was spawned", "[scope]") {
    io_context ctx;
    bool joined = ctx.sync_wait([](io_context& c) -> task<bool> {
        scope sc(c);
        co_await sc.join();
        co_return sc.size() == 0;
    }(ctx));
    REQUIRE(joined);
}

TEST_CASE("scope: join waits until every child has finished", "[scope]") {
    io_context ctx;
    int finished = 0;
    ctx.sync_wait([](io_context& c, int& fin) -> task<void> {
        scope sc(c);
        sc.spawn(sleep_then_count(c, 5ms, fin));
        sc.spawn(sleep_then_count(c, 1ms, fin));
        sc.spawn(sleep_then_count(c, 0ms, fin));
        REQUIRE(sc.size() == 3);
        co_await sc.join();
        REQUIRE(sc.size() == 0);
        REQUIRE(fin == 3);
    }(ctx, finished));
    REQUIRE(finished == 3);
    REQUIRE(counted::alive == 0);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("scope: children start on the next loop turn, never inside spawn", "[scope]") {
    io_context ctx;
    ctx.sync_wait([](io_context& c) -> task<void> {
        scope sc(c);
        bool started = false;
        sc.spawn([&started](std::stop_token) -> task<void> {
            started = true;
            co_return;
        });
        REQUIRE_FALSE(started);
        co_await sc.join();
        REQUIRE(started);
    }(ctx));
}

TEST_CASE("scope: request_stop cancels a thousand handlers blocked in reads and join returns", "[scope]") {
    io_context ctx;
    constexpr int pairs = 500;  // both ends read: 1000 handlers, 1000 reads in flight
    std::vector<std::pair<stream_socket, stream_socket>> socks;
    socks.reserve(pairs);
    for (int i = 0; i < pairs; ++i) socks.push_back(make_pair(ctx));
    int canceled = 0, got_data = 0;
    ctx.sync_wait([](io_context& c, auto& socks, int& canceled, int& got) -> task<void> {
        scope sc(c);
        for (auto& [a, b] : socks) {
            sc.spawn(read_once(a, sc.get_token(), canceled, got));
            sc.spawn(read_once(b, sc.get_token(), canceled, got));
        }
        REQUIRE(sc.size() == 2 * pairs);
        // Let every handler start and its read reach the kernel.
        for (int i = 0; i < 3; ++i) co_await c.yield();
        REQUIRE(counted::alive == 2 * pairs);
        sc.request_stop();
        co_await sc.join();
        REQUIRE(sc.size() == 0);
    }(ctx, socks, canceled, got_data));
    REQUIRE(canceled == 2 * pairs);
    REQUIRE(got_data == 0);
    REQUIRE(counted::alive == 0);
    REQUIRE(ctx.outstanding_work() == 0);
    // No read survived its handler: bytes sent now stay in the socket.
    raw_send(socks[0].first, "x");
    REQUIRE(ringsock::test::readable_bytes(socks[0].second) == 1);
}

TEST_CASE("scope: the first exception escaping a child is rethrown by join while the others finish",
          "[scope]") {
    io_context ctx;
    int finished = 0;
    std::string caught;
    ctx.sync_wait([](io_context& c, int& fin, std::string& caught) -> task<void> {
        scope sc(c);
        sc.spawn(throw_after_yield(c, "first"));
        sc.spawn(sleep_then_count(c, 2ms, fin));
        sc.spawn([&c](std::stop_token) -> task<void> {
            co_await c.yield();
            co_await c.yield();
            throw std::runtime_error("second");
        });
        try {
            co_await sc.join();
        } catch (const std::runtime_error& e) {
            caught = e.what();
        }
        REQUIRE(sc.size() == 0);
        // Rethrown once: a second join is clean.
        co_await sc.join();
    }(ctx, finished, caught));
    REQUIRE(caught == "first");
    REQUIRE(finished == 1);
}

TEST_CASE("scope: spawn with a callable keeps its captures alive until the child ends", "[scope]") {
    io_context ctx;
    std::string seen;
    ctx.sync_wait([](io_context& c, std::string& seen) -> task<void> {
        scope sc(c);
        for (int i = 0; i < 3; ++i) {
            std::string label = "child" + std::to_string(i);  // dies at the end of this iteration
            sc.spawn([label, &c, &seen](std::stop_token) -> task<void> {
                (void)co_await ringsock::sleep_for(c, 1ms);
                seen += label + ";";
            });
        }
        co_await sc.join();
    }(ctx, seen));
    REQUIRE(seen.size() == std::string("child0;child1;child2;").size());
    REQUIRE(seen.find("child1;") != std::string::npos);
}

TEST_CASE("scope: a stop request from another thread cancels the children while the loop blocks", "[scope]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    int canceled = 0, got = 0;
    std::optional<std::thread> stopper;
    ctx.sync_wait([](io_context& c, stream_socket& a, stream_socket& b, int& canceled, int& got,
                     std::optional<std::thread>& stopper) -> task<void> {
        scope sc(c);
        sc.spawn(read_once(a, sc.get_token(), canceled, got));
        sc.spawn(read_once(b, sc.get_token(), canceled, got));
        co_await c.yield();
        stopper.emplace([&sc] {
            std::this_thread::sleep_for(5ms);
            sc.request_stop();
        });
        co_await sc.join();  // the loop blocks in io_uring_enter until the thread's request
        stopper->join();     // request_stop() must have returned before the scope dies
    }(ctx, a, b, canceled, got, stopper));
    REQUIRE(canceled == 2);
    REQUIRE(got == 0);
}

TEST_CASE("scope: a parent token stops a nested scope", "[scope]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    int canceled = 0, got = 0;
    ctx.sync_wait([](io_context& c, stream_socket& a, int& canceled, int& got) -> task<void> {
        scope outer(c);
        scope inner(c, outer.get_token());
        inner.spawn(read_once(a, inner.get_token(), canceled, got));
        co_await c.yield();
        outer.request_stop();
        REQUIRE(inner.stop_requested());
        co_await inner.join();
    }(ctx, a, canceled, got));
    REQUIRE(canceled == 1);
}

TEST_CASE("scope: destroying a scope with live children cancels and settles their operations", "[scope]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    auto [c, d] = make_pair(ctx);
    int canceled = 0, got = 0;
    {
        // (a unique_ptr, not std::optional: g++ 12 -O2 warns maybe-uninitialized there)
        auto sc = std::make_unique<scope>(ctx);
        sc->spawn(read_once(a, sc->get_token(), canceled, got));
        sc->spawn(read_once(c, sc->get_token(), canceled, got));
        ctx.poll();  // the children start and submit their reads
        ctx.poll();  // the reads reach the kernel
        sc->spawn(read_once(d, sc->get_token(), canceled, got));  // never started
        REQUIRE(counted::alive == 2);
        sc.reset();
    }
    REQUIRE(counted::alive == 0);
    REQUIRE(canceled == 0);  // nothing was resumed
    REQUIRE(ctx.outstanding_work() == 0);
    // The cancelled reads are gone from the kernel: new bytes stay queued for new reads.
    raw_send(b, "hello");
    raw_send(d, "world");
    std::array<std::byte, 16> buf{};
    auto n = ctx.sync_wait([](stream_socket& s, std::span<std::byte> buf) -> task<io_result<std::size_t>> {
        co_return co_await s.read_some(buf, 5s);
    }(a, buf));
    REQUIRE(n.value() == 5);
    REQUIRE(ringsock::test::readable_bytes(c) == 5);
}

TEST_CASE("scope: a second concurrent join is refused", "[scope]") {
    io_context ctx;
    bool refused = false;
    ctx.sync_wait([](io_context& c, bool& refused) -> task<void> {
        scope sc(c);
        sc.spawn([&c](std::stop_token st) -> task<void> { (void)co_await ringsock::sleep_for(c, 10s, st); });
        scope helpers(c);
        helpers.spawn([&sc](std::stop_token) -> task<void> { co_await sc.join(); });
        co_await c.yield();
        co_await c.yield();
        try {
            co_await sc.join();
        } catch (const std::logic_error&) {
            refused = true;
        }
        sc.request_stop();
        co_await helpers.join();
        co_await sc.join();
    }(ctx, refused));
    REQUIRE(refused);
}

// ---------------------------------------------------------------------------------
// when_all / when_any

namespace {

task<int> value_after(io_context& ctx, int v, std::chrono::milliseconds d, std::stop_token st = {}) {
    counted c;
    auto r = co_await ringsock::sleep_for(ctx, d, st);
    if (!r) co_return -1;
    co_return v;
}

}  // namespace

TEST_CASE("when_all: yields every child's result in argument order", "[scope][when_all]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    auto t = ctx.sync_wait([](io_context& c, stream_socket& a, stream_socket& b) -> task<std::tuple<int, std::monostate, std::size_t, std::size_t>> {
        std::array<std::byte, 8> buf{};
        co_return co_await ringsock::when_all(
            value_after(c, 7, 3ms),
            [&c](std::stop_token) -> task<void> { co_await c.yield(); },
            [&](std::stop_token st) -> task<std::size_t> {
                auto n = co_await a.read_some(buf, st);
                co_return n.value();
            },
            [&](std::stop_token) -> task<std::size_t> {
                raw_send(b, "abc");
                co_return 0;
            });
    }(ctx, a, b));
    REQUIRE(std::get<0>(t) == 7);
    REQUIRE(std::get<2>(t) == 3);
    REQUIRE(counted::alive == 0);
}

TEST_CASE("when_all: an exception stops the siblings and is rethrown after all have finished",
          "[scope][when_all]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    int canceled = 0, got = 0;
    std::string caught;
    ctx.sync_wait([](io_context& c, stream_socket& a, int& canceled, int& got, std::string& caught) -> task<void> {
        try {
            (void)co_await ringsock::when_all(
                [&](std::stop_token st) { return read_once(a, st, canceled, got); },
                [&c](std::stop_token) { return throw_after_yield(c, "boom"); });
        } catch (const std::runtime_error& e) {
            caught = e.what();
        }
        // The combinator resumed only after the read had been cancelled and finished.
        REQUIRE(canceled == 1);
        REQUIRE(counted::alive == 0);
    }(ctx, a, canceled, got, caught));
    REQUIRE(caught == "boom");
}

TEST_CASE("when_all: a parent token stops the children", "[scope][when_all]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    auto [c, d] = make_pair(ctx);
    int canceled = 0, got = 0;
    ctx.sync_wait([](io_context& ctx, stream_socket& a, stream_socket& c, int& canceled, int& got) -> task<void> {
        scope sc(ctx);
        sc.spawn([&](std::stop_token st) -> task<void> {
            (void)co_await ringsock::when_all(
                st, [&](std::stop_token t) { return read_once(a, t, canceled, got); },
                [&](std::stop_token t) { return read_once(c, t, canceled, got); });
        });
        co_await ctx.yield();
        co_await ctx.yield();
        sc.request_stop();
        co_await sc.join();
    }(ctx, a, c, canceled, got));
    REQUIRE(canceled == 2);
}

TEST_CASE("when_any: a read racing a deadline loses, is cancelled, and the socket still works",
          "[scope][when_any]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    for (int i = 0; i < 200; ++i) {
        int canceled = 0, got = 0;
        auto r = ctx.sync_wait([](io_context& c, stream_socket& a, int& canceled, int& got)
                                   -> task<ringsock::when_any_result<std::monostate, int>> {
            co_return co_await ringsock::when_any(
                [&](std::stop_token st) { return read_once(a, st, canceled, got); },
                [&c](std::stop_token st) { return value_after(c, 42, 1ms, st); });
        }(ctx, a, canceled, got));
        REQUIRE(r.index() == 1);
        REQUIRE(std::get<1>(r) == 42);
        REQUIRE(canceled == 1);  // resumed only after the loser finished
        REQUIRE(counted::alive == 0);
    }
    raw_send(b, "ping");
    std::array<std::byte, 8> buf{};
    auto n = ctx.sync_wait([](stream_socket& s, std::span<std::byte> buf) -> task<io_result<std::size_t>> {
        co_return co_await s.read_some(buf, 5s);
    }(a, buf));
    REQUIRE(n.value() == 4);
}

TEST_CASE("when_any: a read racing a shutdown signal: whichever happens first wins", "[scope][when_any]") {
    io_context ctx;
    ringsock::signal_set signals(ctx, {SIGUSR1});
    auto [a, b] = make_pair(ctx);
    auto race = [](stream_socket& a, ringsock::signal_set& sig)
        -> task<ringsock::when_any_result<io_result<std::size_t>, io_result<int>>> {
        std::array<std::byte, 8> buf{};
        co_return co_await ringsock::when_any(
            [&](std::stop_token st) -> task<io_result<std::size_t>> { co_return co_await a.read_some(buf, st); },
            [&](std::stop_token st) -> task<io_result<int>> { co_return co_await sig.wait(st); });
    };
    SECTION("data arrives first") {
        raw_send(b, "data");
        auto r = ctx.sync_wait(race(a, signals));
        REQUIRE(r.index() == 0);
        REQUIRE(std::get<0>(r).value() == 4);
    }
    SECTION("the signal arrives first") {
        REQUIRE(::raise(SIGUSR1) == 0);  // blocked by the signal_set: queued for its signalfd
        auto r = ctx.sync_wait(race(a, signals));
        REQUIRE(r.index() == 1);
        REQUIRE(std::get<1>(r).value() == SIGUSR1);
        // The read lost and was cancelled: a new read gets the next bytes.
        raw_send(b, "later");
        auto r2 = ctx.sync_wait(race(a, signals));
        REQUIRE(r2.index() == 0);
        REQUIRE(std::get<0>(r2).value() == 5);
    }
}

TEST_CASE("when_any: the winner's exception is rethrown after the losers were cancelled",
          "[scope][when_any]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    int canceled = 0, got = 0;
    bool caught = false;
    ctx.sync_wait([](io_context& c, stream_socket& a, int& canceled, int& got, bool& caught) -> task<void> {
        try {
            (void)co_await ringsock::when_any([&](std::stop_token st) { return read_once(a, st, canceled, got); },
                                              [&c](std::stop_token) { return throw_after_yield(c, "x"); });
        } catch (const std::runtime_error&) {
            caught = true;
        }
    }(ctx, a, canceled, got, caught));
    REQUIRE(caught);
    REQUIRE(canceled == 1);
}
