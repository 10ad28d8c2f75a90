// Tests for ringsock::timer: waits end when the expiry passes, with operation_canceled
// after cancel() or the timer's destruction; moving the expiry while a wait is in
// progress moves that wait (later costs no SQE, earlier cancels and resubmits); races
// of cancel and re-arm against the kernel; 10,000 timers firing in order; and the idle
// timeout pattern (a per-connection timer reset on each read closes exactly the idle
// connections). Every case checks that no descriptor leaked and no work is left.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <stop_token>
#include <system_error>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/leak_guard.hpp"
#include "support/turn_support.hpp"

namespace {

using namespace std::chrono_literals;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::scope;
using ringsock::stream_socket;
using ringsock::task;
using ringsock::timer;
using ringsock::test::canceled;
using ringsock::test::fd_leak_guard;
using ringsock::test::timed_out;

using clock_type = std::chrono::steady_clock;

/// How one wait ended, and when.
struct outcome {
    bool finished = false;
    std::error_code ec;
    clock_type::time_point at{};
};

task<void> wait_on(timer& t, ringsock::op_limits lim, outcome& out) {
    auto r = co_await t.wait(lim);
    out.ec = r.error();
    out.at = clock_type::now();
    out.finished = true;
}

/// SQEs the context has taken from its ring so far.
unsigned sqes_used(io_context& ctx) { return ctx.native_handle()->sq.sqe_tail; }

}  // namespace

TEST_CASE("timer: a wait ends when the expiry passes, at once if it already has", "[timer]") {
    fd_leak_guard guard;
    io_context ctx;
    ctx.sync_wait([](io_context& ctx) -> task<void> {
        timer t(ctx);
        t.expires_after(20ms);
        auto t0 = clock_type::now();
        auto r = co_await t.wait();
        CHECK(r);
        CHECK(clock_type::now() - t0 >= 19ms);
        // Past expiries, including the extremes: no SQE, no suspension.
        for (auto tp : {clock_type::now() - 1s, clock_type::time_point::min(), clock_type::time_point{}}) {
            t.expires_at(tp);
            const unsigned before = sqes_used(ctx);
            auto p = co_await t.wait();
            CHECK(p);
            CHECK(sqes_used(ctx) == before);
        }
        t.expires_after(-5s);
        auto n = co_await t.wait();
        CHECK(n);
        // A coarse time_point::max() means never; the wait's own limit ends it.
        t.expires_at(std::chrono::time_point<clock_type, std::chrono::hours>::max());
        CHECK(t.expiry() > clock_type::now() + std::chrono::hours(24 * 365 * 100));
        auto lim = co_await t.wait(5ms);
        CHECK(timed_out(lim.error()));
        CHECK(std::string(lim.what()) == "timer::wait");
    }(ctx));
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("timer: cancel() ends waits in progress with operation_canceled, at every moment", "[timer]") {
    fd_leak_guard guard;
    io_context ctx;
    ctx.sync_wait([](io_context& ctx) -> task<void> {
        timer t(ctx);
        t.expires_after(1h);
        for (int i = 0; i < 1000; ++i) {
            outcome a, b;
            scope sc(ctx);
            sc.spawn(wait_on(t, {}, a));
            sc.spawn(wait_on(t, 1h, b));  // with a link timeout beside it
            // 1: queued for submission; 2: SQEs in the SQ; 3+: armed in the kernel.
            for (int k = 0; k < 1 + i % 4; ++k) co_await ctx.yield();
            CHECK(t.cancel() == 2);
            co_await sc.join();
            CHECK(canceled(a.ec));
            CHECK(canceled(b.ec));
        }
        // cancel(), then a move into the past before the kernel answers: the cancel wins.
        outcome c;
        {
            scope sc(ctx);
            sc.spawn(wait_on(t, {}, c));
            for (int k = 0; k < 3; ++k) co_await ctx.yield();
            CHECK(t.cancel() == 1);
            t.expires_at(clock_type::now() - 1s);
            co_await sc.join();
        }
        CHECK(canceled(c.ec));
        // Cancel before any wait: nothing to cancel; the next wait still expires.
        CHECK(t.cancel() == 0);
        t.expires_after(10ms);
        CHECK(t.cancel() == 0);
        auto r = co_await t.wait();
        CHECK(r);
    }(ctx));
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("timer: cancel racing the expiry either cancels or reports the expiry, never both", "[timer]") {
    fd_leak_guard guard;
    io_context ctx;
    int fired = 0, cancelled = 0;
    ctx.sync_wait([](io_context& ctx, int& fired, int& cancelled) -> task<void> {
        timer t(ctx);
        for (int i = 0; i < 500; ++i) {
            outcome o;
            t.expires_after(std::chrono::microseconds(i % 40 * 10));
            scope sc(ctx);
            sc.spawn(wait_on(t, {}, o));
            for (int k = 0; k < 1 + i % 3; ++k) co_await ctx.yield();
            (void)t.cancel();
            co_await sc.join();
            REQUIRE(o.finished);
            if (!o.ec) ++fired;
            else if (canceled(o.ec)) ++cancelled;
            else FAIL("unexpected " << o.ec.message());
        }
    }(ctx, fired, cancelled));
    CHECK(fired + cancelled == 500);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("timer: moving the expiry moves the wait in progress", "[timer]") {
    fd_leak_guard guard;
    io_context ctx;
    SECTION("later: the wait follows, re-armed once the old expiry comes") {
        outcome o;
        unsigned used = 0;
        const auto t0 = clock_type::now();
        clock_type::time_point last_reset{};
        ctx.sync_wait([](io_context& ctx, outcome& o, unsigned& used, clock_type::time_point& last) -> task<void> {
            timer t(ctx);
            t.expires_after(30ms);
            scope sc(ctx);
            sc.spawn(wait_on(t, {}, o));
            co_await ctx.yield();
            const unsigned before = sqes_used(ctx);
            for (int i = 0; i < 60; ++i) {
                (void)co_await ringsock::sleep_for(ctx, 1ms);
                t.expires_after(30ms);  // an idle timeout reset on every read
                last = clock_type::now();
                REQUIRE_FALSE(o.finished);
            }
            co_await sc.join();
            // 60 sleeps take 60 SQEs; the 60 resets only a few re-arms.
            used = sqes_used(ctx) - before - 60;
        }(ctx, o, used, last_reset));
        CHECK(!o.ec);
        CHECK(o.at - last_reset >= 29ms);
        CHECK(o.at - t0 >= 89ms);
        CHECK(used <= 6);
    }
    SECTION("earlier, many times, then into the past") {
        ctx.sync_wait([](io_context& ctx) -> task<void> {
            timer t(ctx);
            t.expires_after(1h);
            outcome o;
            scope sc(ctx);
            sc.spawn(wait_on(t, {}, o));
            for (int i = 0; i < 1000; ++i) {
                // Alternately far and near; never due while we look.
                if (i % 2) t.expires_after(std::chrono::minutes(10 + i));
                else t.expires_after(std::chrono::seconds(30 + i));
                if (i % 3 == 0) co_await ctx.yield();
                REQUIRE_FALSE(o.finished);
            }
            t.expires_after(15ms);
            const auto t0 = clock_type::now();
            co_await sc.join();
            CHECK(!o.ec);
            CHECK(o.at - t0 >= 14ms);
            CHECK(o.at - t0 < 2s);
            // Into the past while waiting: ends at once with success.
            t.expires_after(1h);
            outcome p;
            scope sc2(ctx);
            sc2.spawn(wait_on(t, {}, p));
            co_await ctx.yield();
            co_await ctx.yield();
            t.expires_at(clock_type::now() - 1s);
            const auto t1 = clock_type::now();
            co_await sc2.join();
            CHECK(!p.ec);
            CHECK(p.at - t1 < 1s);
        }(ctx));
    }
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("timer: a stop request, or the timer's destruction, ends a wait mid-move", "[timer]") {
    fd_leak_guard guard;
    io_context ctx;
    ctx.sync_wait([](io_context& ctx) -> task<void> {
        for (int i = 0; i < 300; ++i) {
            std::optional<timer> t(std::in_place, ctx);
            t->expires_after(1h);
            outcome o;
            std::stop_source src;
            scope sc(ctx);
            sc.spawn(wait_on(*t, src.get_token(), o));
            for (int k = 0; k < 1 + i % 3; ++k) co_await ctx.yield();
            t->expires_after(30min);  // earlier: a cancel-and-resubmit is under way
            if (i % 2) src.request_stop();
            else t.reset();
            co_await sc.join();
            CHECK(canceled(o.ec));
        }
    }(ctx));
    // The waiting coroutine destroyed instead: the wait is settled with its frame.
    timer t(ctx);
    t.expires_after(1h);
    for (int i = 0; i < 100; ++i) {
        outcome o;
        std::optional<task<void>> w;
        w.emplace(wait_on(t, {}, o));
        w->handle().resume();
        for (int k = 0; k < i % 3; ++k) ctx.poll();
        if (i % 2) t.expires_after(std::chrono::minutes(1 + i));  // earlier: a cancel under way
        w.reset();
        CHECK_FALSE(o.finished);
        CHECK(t.cancel() == 0);  // it left the timer
    }
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("timer: 10,000 timers with shuffled expiries fire in order", "[timer]") {
    fd_leak_guard guard;
    io_context ctx;
    constexpr int n = 10'000;
    std::vector<int> order;
    order.reserve(n);
    ctx.sync_wait([](io_context& ctx, std::vector<int>& order) -> task<void> {
        std::vector<std::unique_ptr<timer>> timers;
        const auto base = clock_type::now() + 100ms;
        scope sc(ctx);
        for (int i = 0; i < n; ++i) {
            const int rank = static_cast<int>((static_cast<long long>(i) * 7919) % n);  // a permutation
            timers.push_back(std::make_unique<timer>(ctx));
            timers.back()->expires_at(base + std::chrono::microseconds(20 * rank));
            sc.spawn([](timer& t, int rank, std::vector<int>& order) -> task<void> {
                auto r = co_await t.wait();
                REQUIRE(r);
                order.push_back(rank);
            }(*timers.back(), rank, order));
        }
        co_await sc.join();
    }(ctx, order));
    REQUIRE(order.size() == n);
    int inversions = 0;
    for (std::size_t i = 1; i < order.size(); ++i) inversions += order[i] < order[i - 1];
    CHECK(inversions == 0);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("timer: an idle timeout reset on each read closes exactly the idle connections", "[timer]") {
    fd_leak_guard guard;
    io_context ctx;
    constexpr int conns = 16;
    std::array<bool, conns> closed_idle{};
    ctx.sync_wait([](io_context& ctx, std::array<bool, conns>& closed_idle) -> task<void> {
        // The server side of each connection: read, and reset the idle timer per read.
        auto serve = [](io_context& ctx, stream_socket s, bool& closed_idle) -> task<void> {
            timer idle(ctx);
            idle.expires_after(100ms);
            scope watch(ctx);
            watch.spawn([&](std::stop_token st) -> task<void> {
                if (co_await idle.wait(st)) {
                    closed_idle = true;
                    s.close();  // the read below ends with operation_canceled
                }
            });
            std::array<char, 64> buf{};
            for (;;) {
                auto r = co_await s.read_some(buf);
                if (!r || *r == 0) break;
                idle.expires_after(100ms);
            }
            watch.request_stop();
            co_await watch.join();
        };
        // Even clients talk every 10 ms for 400 ms, then hang up; odd ones never talk.
        auto client = [](io_context& ctx, stream_socket s, bool talk) -> task<void> {
            for (int i = 0; talk && i < 40; ++i) {
                (void)co_await ringsock::sleep_for(ctx, 10ms);
                auto w = co_await s.write_all(std::string_view("k"));
                REQUIRE(w);
            }
            if (!talk) (void)co_await ringsock::sleep_for(ctx, 400ms);
        };
        scope sc(ctx);
        for (int i = 0; i < conns; ++i) {
            auto p = stream_socket::pair(ctx);
            REQUIRE(p);
            sc.spawn(serve(ctx, std::move(p->first), closed_idle[i]));
            sc.spawn(client(ctx, std::move(p->second), i % 2 == 0));
        }
        co_await sc.join();
    }(ctx, closed_idle));
    for (int i = 0; i < conns; ++i) {
        INFO("connection " << i);
        CHECK(closed_idle[i] == (i % 2 == 1));
    }
    REQUIRE(ctx.outstanding_work() == 0);
}
