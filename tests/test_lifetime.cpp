// Tests for lifetime safety: destroying a task, a scope, a when_any or a whole io_context
// while operations are in flight never lets the kernel keep an operation that points
// into freed memory (proved by the next bytes reaching a new read instead of an orphan),
// never leaks a descriptor produced by a completion that arrives late (accepted
// sockets), and leaves no work behind. Run under ASan+UBSan in CI.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <sys/socket.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <optional>
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
using ringsock::test::raw_drain;
using ringsock::test::raw_send;
using ringsock::test::readable_bytes;

/// Reads into a buffer that lives in its own frame; sets `resumed` if it ever resumes.
task<void> read_into_frame(stream_socket& s, ringsock::op_limits lim, bool& resumed) {
    counted c;
    std::array<std::byte, 256> buf{};
    (void)co_await s.read_some(buf, lim);
    resumed = true;
}

task<void> accept_one(ringsock::acceptor& acc, ringsock::op_limits lim, bool& resumed) {
    counted c;
    auto conn = co_await acc.accept(lim);
    resumed = true;
}

/// Starts a lazy task by hand (outside any loop turn), as an executor would.
void start(task<void>& t) { t.handle().resume(); }

}  // namespace

TEST_CASE("lifetime: destroying a task with a read queued or in flight settles the read first", "[lifetime]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    for (int i = 0; i < 3000; ++i) {
        bool resumed = false;
        std::optional<task<void>> t;
        // Half with a time limit: then a linked timeout is in flight too.
        if (i % 2) t.emplace(read_into_frame(a, {}, resumed));
        else t.emplace(read_into_frame(a, 1h, resumed));
        start(*t);
        // 0: queued for submission; 1: SQE submitted; 2: poll armed in the kernel.
        for (int k = 0; k < i % 3; ++k) ctx.poll();
        t.reset();
        REQUIRE_FALSE(resumed);
        REQUIRE(counted::alive == 0);
        REQUIRE(ctx.outstanding_work() == 0);
    }
    // No orphaned read consumes this: it is still queued in the socket.
    raw_send(b, "q");
    REQUIRE(readable_bytes(a) == 1);
}

TEST_CASE("lifetime: an accept that completed but never resumed closes its descriptor when destroyed",
          "[lifetime]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    constexpr int rounds = 300;
    std::array<int, 2> unresumed{};  // [multishot accept, single-shot accept with a time limit]
    std::size_t fds_before = ringsock::test::open_fd_count();
    ctx.sync_wait([](io_context& ctx, stream_socket& a, stream_socket& b, std::array<int, 2>& unresumed)
                      -> task<void> {
        std::array<std::byte, 8> buf{};
        for (int i = 0; i < rounds; ++i) {
            // A fresh acceptor each round, so no connection waits in an earlier one's queue.
            auto ep = ringsock::test::unique_abstract("lateaccept");
            auto acc = ringsock::acceptor::listen(ctx, ep);
            REQUIRE(acc);
            bool resumed = false;
            bool timed = i % 2 == 1;
            task<void> t = accept_one(*acc, timed ? ringsock::op_limits(10s) : ringsock::op_limits(), resumed);
            start(t);
            co_await ctx.yield();
            co_await ctx.yield();  // the accept waits in the kernel
            auto client = ringsock::test::raw_connect(ep);
            raw_send(b, "d");
            // This read finds its byte at once and completes during the submit, ahead of
            // the accept's completion: both are reaped in one turn and this frame runs
            // first, so the accept has its descriptor but has not resumed.
            auto n = co_await a.read_some(buf);
            REQUIRE(n.value() == 1);
            if (!resumed) ++unresumed[timed];
            t = task<void>{};  // destroys the frame: the accepted descriptor must be closed
            REQUIRE(counted::alive == 0);
        }
    }(ctx, a, b, unresumed));
    INFO("destroyed after completion, before resumption: " << unresumed[0] << " + " << unresumed[1]);
    REQUIRE(unresumed[0] > 0);
    REQUIRE(unresumed[1] > 0);
    REQUIRE(ringsock::test::open_fd_count() == fds_before);
}

TEST_CASE("lifetime: destroying an io_context with a thousand operations in flight frees everything",
          "[lifetime]") {
    std::size_t fds_before = ringsock::test::open_fd_count();
    {
        io_context ctx;
        // Each task owns a socket pair and reads both ends at once: 1000 reads in flight,
        // half of them with linked timeouts (more CQEs than the in-flight cap).
        auto handler = [](io_context& ctx, bool timed) -> task<void> {
            counted c;
            auto pair_xy = make_pair(ctx); auto& x = pair_xy.first; auto& y = pair_xy.second;  // clang 14: lambdas cannot capture structured bindings
            std::array<std::byte, 64> bx{}, by{};
            (void)co_await ringsock::when_all(
                [&](std::stop_token st) -> task<void> {
                    if (timed) (void)co_await x.read_some(bx, {st, 1h});
                    else (void)co_await x.read_some(bx, st);
                },
                [&](std::stop_token st) -> task<void> { (void)co_await y.read_some(by, st); });
            FAIL_CHECK("a handler resumed although nothing was sent");
        };
        for (int i = 0; i < 500; ++i) ctx.spawn(handler(ctx, i % 2 == 1));
        for (int i = 0; i < 4; ++i) ctx.poll();
        REQUIRE(counted::alive == 500);
        REQUIRE(ctx.outstanding_work() == 1000);
    }  // ~io_context: cancels all, reaps every completion, destroys the frames
    REQUIRE(counted::alive == 0);
    REQUIRE(ringsock::test::open_fd_count() == fds_before);
}

TEST_CASE("lifetime: an io_context destroyed with connections accepted but not reaped closes them",
          "[lifetime]") {
    std::size_t fds_before = ringsock::test::open_fd_count();
    {
        auto ep = ringsock::test::unique_abstract("ctxaccept");
        io_context ctx;
        std::vector<ringsock::unique_fd> clients;
        ctx.spawn([](io_context& ctx, ringsock::endpoint ep) -> task<void> {
            auto acc = ringsock::acceptor::listen(ctx, ep);
            REQUIRE(acc);
            bool r1 = false, r2 = false;
            (void)co_await ringsock::when_all(accept_one(*acc, {}, r1), accept_one(*acc, 1h, r2));
        }(ctx, ep));
        for (int i = 0; i < 3; ++i) ctx.poll();
        REQUIRE(counted::alive == 2);
        // Completions with fresh descriptors are now due; the loop never runs again.
        for (int i = 0; i < 4; ++i) clients.push_back(ringsock::test::raw_connect(ep));
    }
    REQUIRE(counted::alive == 0);
    REQUIRE(ringsock::test::open_fd_count() == fds_before);
}

TEST_CASE("lifetime: destroying a scope with a thousand reads in flight leaves every socket usable",
          "[lifetime]") {
    io_context ctx;
    std::vector<std::pair<stream_socket, stream_socket>> socks;
    socks.reserve(500);
    for (int i = 0; i < 500; ++i) socks.push_back(make_pair(ctx));
    std::vector<char> resumed(1000, 0);
    {
        scope sc(ctx);
        for (std::size_t i = 0; i < socks.size(); ++i) {
            auto& x = socks[i].first; auto& y = socks[i].second;  // clang 14: lambdas cannot capture structured bindings
            sc.spawn([&x, flag = &resumed[2 * i]](std::stop_token st) -> task<void> {
                bool r = false;
                co_await read_into_frame(x, st, r);
                *flag = 1;
            });
            sc.spawn([&y, flag = &resumed[2 * i + 1]](std::stop_token st) -> task<void> {
                bool r = false;
                co_await read_into_frame(y, {st, 1h}, r);
                *flag = 1;
            });
        }
        for (int i = 0; i < 4; ++i) ctx.poll();
        REQUIRE(counted::alive == 1000);
    }  // ~scope: stop, then destroy every child, settling its read
    REQUIRE(counted::alive == 0);
    REQUIRE(ctx.outstanding_work() == 0);
    std::size_t queued = 0;
    for (auto& [x, y] : socks) {
        raw_send(y, "1");
        raw_send(x, "22");
        queued += readable_bytes(x) + readable_bytes(y);
    }
    REQUIRE(queued == 3 * socks.size());  // no orphaned read took any of them
    for (char r : resumed) REQUIRE(r == 0);
}

TEST_CASE("lifetime: destroying a when_any mid-race settles every child", "[lifetime]") {
    io_context ctx;
    auto pair_ab = make_pair(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    for (int i = 0; i < 500; ++i) {
        bool r1 = false;
        auto race = ringsock::when_any([&](std::stop_token st) { return read_into_frame(a, st, r1); },
                                       [&ctx](std::stop_token st) -> task<void> {
                                           counted c;
                                           (void)co_await ringsock::sleep_for(ctx, 1h, st);
                                       });
        race.handle().resume();
        for (int k = 0; k < i % 3; ++k) ctx.poll();
        REQUIRE(counted::alive == 2);
        race = {};
        REQUIRE(counted::alive == 0);
        REQUIRE(ctx.outstanding_work() == 0);
    }
    raw_send(b, "w");
    REQUIRE(readable_bytes(a) == 1);
}

TEST_CASE("lifetime: a stop request from another thread racing the frame's destruction is harmless",
          "[lifetime]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    for (int i = 0; i < 500; ++i) {
        std::stop_source src;
        bool resumed = false;
        std::optional<task<void>> t(read_into_frame(a, src.get_token(), resumed));
        start(*t);
        ctx.poll();
        ctx.poll();
        std::thread stopper([&src] { src.request_stop(); });
        if (i % 2) ctx.poll();  // sometimes the posted cancel is processed first
        t.reset();              // waits for a callback running on the other thread
        stopper.join();
        ctx.poll();  // a cancel posted after the destruction must have been withdrawn
        REQUIRE(ctx.outstanding_work() == 0);
    }
    raw_send(b, "s");
    REQUIRE(readable_bytes(a) == 1);
}

TEST_CASE("lifetime: destroying a frame queued to resume after yield() gives its work back", "[lifetime]") {
    io_context ctx;
    bool resumed = false;
    task<void> t = [](io_context& ctx, bool& resumed) -> task<void> {
        co_await ctx.yield();
        resumed = true;
    }(ctx, resumed);
    start(t);
    REQUIRE(ctx.outstanding_work() == 1);
    t = task<void>{};  // queued in the ready list, never resumed
    REQUIRE(ctx.outstanding_work() == 0);
    REQUIRE(ctx.run() == 0);  // returns at once instead of waiting for work that is gone
    REQUIRE_FALSE(resumed);
}
