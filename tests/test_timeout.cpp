// Tests for time limits: per-operation timeouts (linked timeouts with an absolute
// deadline) on reads, writes, accept and connect, reported as timed_out and never as
// operation_canceled; a timeout never leaves an operation half-alive (the socket works
// afterwards and no byte is lost); a stop token and a timeout together; and sleep_for.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <sys/socket.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <stop_token>
#include <string>
#include <system_error>
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
using ringsock::test::make_pair;
using ringsock::test::raw_drain;
using ringsock::test::raw_send;
using ringsock::test::readable_bytes;

bool timed_out(const std::error_code& ec) { return ec == std::errc::timed_out; }

using clock_type = std::chrono::steady_clock;

}  // namespace

TEST_CASE("timeout: read_some with 10 ms on a silent peer ends with timed_out", "[timeout]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    auto start = clock_type::now();
    auto r = ctx.sync_wait([](stream_socket& a) -> task<io_result<std::size_t>> {
        std::array<std::byte, 16> buf{};
        co_return co_await a.read_some(buf, 10ms);
    }(a));
    REQUIRE(timed_out(r.error()));
    REQUIRE_FALSE(r.error() == std::errc::operation_canceled);
    REQUIRE(clock_type::now() - start < 5s);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("timeout: after a timeout the socket still works and the next bytes go to the next read",
          "[timeout]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    ctx.sync_wait([](stream_socket& a, stream_socket& b) -> task<void> {
        std::array<std::byte, 16> buf{};
        for (int i = 0; i < 20; ++i) {
            auto r = co_await a.read_some(buf, 1ms);
            REQUIRE(timed_out(r.error()));
        }
        // No timed-out read is still armed: this byte reaches the new read.
        raw_send(b, "hello");
        auto r = co_await a.read_some(buf, 5s);
        REQUIRE(r.value() == 5);
        REQUIRE(readable_bytes(a) == 0);
    }(a, b));
}

TEST_CASE("timeout: a read that completes before its deadline returns its data", "[timeout]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    raw_send(b, "abc");
    auto r = ctx.sync_wait([](stream_socket& a) -> task<io_result<std::size_t>> {
        std::array<std::byte, 16> buf{};
        co_return co_await a.read_some(buf, 10s);
    }(a));
    REQUIRE(r.value() == 3);
}

TEST_CASE("timeout: short timeouts racing arriving data never lose a byte", "[timeout]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    constexpr int rounds = 2000;
    std::size_t received = 0;
    int timeouts = 0;
    ctx.sync_wait([](io_context& ctx, stream_socket& a, stream_socket& b, std::size_t& received,
                     int& timeouts) -> task<void> {
        std::array<std::byte, 16> buf{};
        for (int i = 0; i < rounds; ++i) {
            scope sc(ctx);
            sc.spawn([&](std::stop_token) -> task<void> {
                auto r = co_await a.read_some(buf, std::chrono::microseconds(i % 50));
                if (r) received += *r;
                else if (timed_out(r.error())) ++timeouts;
                else FAIL_CHECK("unexpected error " << r.error().message());
            });
            if (i % 2) co_await ctx.yield();
            raw_send(b, "k");
            co_await sc.join();
            received += raw_drain(a).size();  // a read that timed out left the byte here
        }
    }(ctx, a, b, received, timeouts));
    REQUIRE(received == rounds);
    REQUIRE(timeouts < rounds);
}

TEST_CASE("timeout: a deadline covers the whole write_all and reports the bytes sent", "[timeout]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    int small = 16 * 1024;
    REQUIRE(::setsockopt(a.native_handle(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    std::vector<std::byte> data(8 << 20, std::byte{1});
    auto r = ctx.sync_wait([](stream_socket& a, std::span<const std::byte> d) -> task<io_result<std::size_t>> {
        co_return co_await a.write_all(d, 20ms);
    }(a, data));
    REQUIRE(timed_out(r.error()));
    REQUIRE(r.partial_value() > 0);
    REQUIRE(raw_drain(b).size() == r.partial_value());
    auto again = ctx.sync_wait([](stream_socket& a) -> task<io_result<std::size_t>> {
        co_return co_await a.write_all(std::string_view("x"), 1s);
    }(a));
    REQUIRE(again.error() == ringsock::errc::stream_broken);
}

TEST_CASE("timeout: with a token and a timeout, whichever comes first decides the error", "[timeout]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    std::error_code by_stop, by_time;
    ctx.sync_wait([](io_context& ctx, stream_socket& a, std::error_code& by_stop, std::error_code& by_time)
                      -> task<void> {
        std::array<std::byte, 16> buf{};
        {
            scope sc(ctx);
            sc.spawn([&](std::stop_token st) -> task<void> {
                by_stop = (co_await a.read_some(buf, {st, 10s})).error();
            });
            co_await ctx.yield();
            co_await ctx.yield();
            sc.request_stop();
            co_await sc.join();
        }
        std::stop_source never;
        by_time = (co_await a.read_some(buf, {never.get_token(), 5ms})).error();
    }(ctx, a, by_stop, by_time));
    REQUIRE(by_stop == std::errc::operation_canceled);
    REQUIRE(timed_out(by_time));
}

TEST_CASE("timeout: accept with a timeout and no client ends with timed_out; the acceptor still accepts",
          "[timeout]") {
    io_context ctx;
    auto ep = ringsock::test::unique_abstract("acceptto");
    auto acc = ringsock::acceptor::listen(ctx, ep);
    REQUIRE(acc);
    ctx.sync_wait([](ringsock::acceptor& acc, const ringsock::endpoint& ep) -> task<void> {
        auto r = co_await acc.accept(10ms);
        REQUIRE(timed_out(r.error()));
        auto c1 = ringsock::test::raw_connect(ep);
        auto c2 = ringsock::test::raw_connect(ep);
        auto conn = co_await acc.accept(5s);
        REQUIRE(conn);
        auto conn2 = co_await acc.accept();  // the multishot path works too
        REQUIRE(conn2);
    }(*acc, ep));
}

TEST_CASE("timeout: connect to a full backlog ends with timed_out and leaks nothing", "[timeout]") {
    io_context ctx;
    auto ep = ringsock::test::unique_abstract("connectto");
    auto listener = ringsock::test::raw_listener(ep, 0);
    auto queued = ringsock::test::fill_backlog(ep);
    std::size_t fds_before = ringsock::test::open_fd_count();
    auto start = clock_type::now();
    for (int i = 0; i < 20; ++i) {
        auto r = ctx.sync_wait([](io_context& ctx, const ringsock::endpoint& ep) -> task<io_result<stream_socket>> {
            co_return co_await stream_socket::connect(ctx, ep, 10ms);
        }(ctx, ep));
        INFO(r.error().message());
        REQUIRE(timed_out(r.error()));
    }
    REQUIRE(clock_type::now() - start < 10s);
    REQUIRE(ringsock::test::open_fd_count() == fds_before);
}

TEST_CASE("timeout: sleep_for waits and returns success; a zero sleep completes", "[timeout]") {
    io_context ctx;
    auto start = clock_type::now();
    ctx.sync_wait([](io_context& ctx) -> task<void> {
        REQUIRE(co_await ringsock::sleep_for(ctx, 10ms));
        REQUIRE(co_await ringsock::sleep_for(ctx, 0ms));
        REQUIRE(co_await ringsock::sleep_until(ctx, clock_type::now() + 1ms));
    }(ctx));
    REQUIRE(clock_type::now() - start < 5s);
}

TEST_CASE("timeout: waiting for a signal with a timeout ends with timed_out", "[timeout]") {
    io_context ctx;
    ringsock::signal_set signals(ctx, {SIGUSR2});
    auto r = ctx.sync_wait([](ringsock::signal_set& s) -> task<io_result<int>> { co_return co_await s.wait(5ms); }(signals));
    REQUIRE(timed_out(r.error()));
}
