// Tests for stop-token cancellation at each moment it can strike: before submission
// (already stopped), while in flight, and after the completion arrived but before the
// coroutine resumed; cancel racing completion; stop requests from another thread while
// the loop blocks; write_all cut short; operations queued behind a busy direction; and
// accept, connect and sleep_for. The invariants: the coroutine resumes only after the
// kernel is done, a real result always wins over a late stop, and no byte is ever lost.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <sys/socket.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <optional>
#include <random>
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
using ringsock::test::make_pair;
using ringsock::test::raw_drain;
using ringsock::test::raw_send;
using ringsock::test::readable_bytes;

bool canceled(const std::error_code& ec) { return ec == std::errc::operation_canceled; }

/// How one read ended.
struct read_outcome {
    bool finished = false;
    bool was_canceled = false;
    std::size_t bytes = 0;
    std::error_code other;
};

task<void> read_with(stream_socket& s, std::stop_token st, read_outcome& out) {
    std::array<std::byte, 64> buf{};
    auto r = co_await s.read_some(buf, st);
    if (r) out.bytes = *r;
    else if (canceled(r.error())) out.was_canceled = true;
    else out.other = r.error();
    out.finished = true;
}

}  // namespace

TEST_CASE("cancellation: a token already stopped completes every operation at once without an SQE",
          "[cancellation]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    auto ep = ringsock::test::unique_abstract("prestopped");
    auto acc = ringsock::acceptor::listen(ctx, ep);
    REQUIRE(acc);
    ringsock::signal_set signals(ctx, {SIGUSR2});
    std::stop_source src;
    src.request_stop();
    int canceled_count = 0;
    ctx.sync_wait([](io_context& ctx, stream_socket& a, ringsock::acceptor& acc, ringsock::signal_set& sig,
                     const ringsock::endpoint& ep, std::stop_token st, int& n) -> task<void> {
        io_uring* ring = ctx.native_handle();
        std::array<std::byte, 8> buf{};
        for (int i = 0; i < 2000; ++i) {
            unsigned tail = ring->sq.sqe_tail;
            std::size_t work = ctx.outstanding_work();
            n += canceled((co_await a.read_some(buf, st)).error());
            n += canceled((co_await a.read_exact(buf, st)).error());
            n += canceled((co_await a.write_some(buf, st)).error());
            n += canceled((co_await a.write_all(buf, st)).error());
            n += canceled((co_await ringsock::sleep_for(ctx, 1h, st)).error());
            n += canceled((co_await sig.wait(st)).error());
            n += canceled((co_await acc.accept(st)).error());
            n += canceled((co_await acc.accept({st, 1h})).error());
            n += canceled((co_await stream_socket::connect(ctx, ep, st)).error());
            // Nothing was queued, nothing is waited for: no suspension happened.
            REQUIRE(ring->sq.sqe_tail == tail);
            REQUIRE(ctx.outstanding_work() == work);
        }
    }(ctx, a, *acc, signals, ep, src.get_token(), canceled_count));
    REQUIRE(canceled_count == 9 * 2000);
    // The stream is not broken: no write was attempted.
    raw_send(b, "ok");
    REQUIRE(readable_bytes(a) == 2);
}

TEST_CASE("cancellation: a stop request while a read is queued or in flight ends it with operation_canceled",
          "[cancellation]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    int canceled_count = 0;
    ctx.sync_wait([](io_context& ctx, stream_socket& a, int& n) -> task<void> {
        for (int i = 0; i < 3000; ++i) {
            read_outcome out;
            scope sc(ctx);
            sc.spawn(read_with(a, sc.get_token(), out));
            // 1: the read is queued for this turn's submission; 2: its SQE just went in;
            // 3+: it waits in the kernel (poll armed).
            for (int k = 0; k < 1 + i % 4; ++k) co_await ctx.yield();
            sc.request_stop();
            co_await sc.join();
            REQUIRE(out.finished);
            n += out.was_canceled;
        }
    }(ctx, a, canceled_count));
    REQUIRE(canceled_count == 3000);
    // None of those reads survived: a byte sent now is still there for the next one.
    raw_send(b, "z");
    REQUIRE(readable_bytes(a) == 1);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("cancellation: a completion that arrived before the stop request wins over it", "[cancellation]") {
    io_context ctx;
    auto [a1, b1] = make_pair(ctx);
    auto [a2, b2] = make_pair(ctx);
    constexpr int rounds = 2000;
    int real_after_stop = 0;  // stop requested after completion, before resume: real result kept
    int lost = 0;
    ctx.sync_wait([](io_context& ctx, stream_socket& a1, stream_socket& b1, stream_socket& a2,
                     stream_socket& b2, int& real_after_stop, int& lost) -> task<void> {
        for (int i = 0; i < rounds; ++i) {
            std::stop_source s1, s2;
            read_outcome o1, o2;
            scope sc(ctx);
            // Whichever reader resumes first asks the other to stop. Both completions are
            // reaped in the same loop turn, so the other has its result but has not run.
            auto reader = [&ctx](stream_socket& s, std::stop_source& mine, std::stop_source& other,
                                 read_outcome& out, read_outcome& other_out) -> task<void> {
                std::array<std::byte, 64> buf{};
                auto r = co_await s.read_some(buf, mine.get_token());
                if (r) out.bytes = *r;
                else out.was_canceled = canceled(r.error());
                out.finished = true;
                if (!other_out.finished) other.request_stop();
                (void)ctx;
            };
            sc.spawn(reader(a1, s1, s2, o1, o2));
            sc.spawn(reader(a2, s2, s1, o2, o1));
            co_await ctx.yield();
            co_await ctx.yield();  // both reads are in the kernel
            raw_send(b1, "1");
            raw_send(b2, "22");
            co_await sc.join();
            REQUIRE(o1.finished);
            REQUIRE(o2.finished);
            // Neither read may report cancellation while its byte count is lost.
            for (auto* o : {&o1, &o2}) {
                if (o->was_canceled) ++lost;
            }
            if (o1.bytes == 1 && o2.bytes == 2 && (s1.stop_requested() || s2.stop_requested())) ++real_after_stop;
            // Whatever was not read is still queued; clear it for the next round.
            (void)raw_drain(a1);
            (void)raw_drain(a2);
        }
    }(ctx, a1, b1, a2, b2, real_after_stop, lost));
    REQUIRE(lost == 0);
    REQUIRE(real_after_stop == rounds);
}

TEST_CASE("cancellation: a stop racing a completion never loses a byte", "[cancellation]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    constexpr int rounds = 4000;
    std::size_t received = 0;
    int canceled_count = 0, completed = 0;
    ctx.sync_wait([](io_context& ctx, stream_socket& a, stream_socket& b, std::size_t& received, int& nc,
                     int& nd) -> task<void> {
        for (int i = 0; i < rounds; ++i) {
            read_outcome out;
            scope sc(ctx);
            sc.spawn(read_with(a, sc.get_token(), out));
            for (int k = 0; k < 1 + i % 3; ++k) co_await ctx.yield();
            // The byte and the cancel reach the kernel in the same enter.
            if (i % 2 == 0) {
                raw_send(b, "x");
                sc.request_stop();
            } else {
                sc.request_stop();
                raw_send(b, "x");
            }
            co_await sc.join();
            REQUIRE(out.finished);
            REQUIRE(!out.other);
            if (out.was_canceled) {
                ++nc;
                REQUIRE(raw_drain(a) == "x");  // the cancelled read did not consume it
                ++received;
            } else {
                ++nd;
                REQUIRE(out.bytes == 1);
                received += out.bytes;
            }
        }
    }(ctx, a, b, received, canceled_count, completed));
    REQUIRE(received == rounds);
    REQUIRE(canceled_count + completed == rounds);
}

TEST_CASE("cancellation: a stop request from another thread cancels a read while the loop blocks",
          "[cancellation]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    constexpr int rounds = 400;
    std::size_t received = 0;
    int canceled_count = 0;
    ctx.sync_wait([](io_context& ctx, stream_socket& a, stream_socket& b, std::size_t& received,
                     int& nc) -> task<void> {
        std::mt19937 rng(12345);
        for (int i = 0; i < rounds; ++i) {
            read_outcome out;
            scope sc(ctx);
            sc.spawn(read_with(a, sc.get_token(), out));
            co_await ctx.yield();
            co_await ctx.yield();
            auto delay = std::chrono::microseconds(rng() % 200);
            bool also_send = i % 3 == 0;  // then the data races the stop
            int peer = b.native_handle();
            std::thread stopper([&sc, delay, also_send, peer] {
                std::this_thread::sleep_for(delay);
                if (also_send) (void)::send(peer, "y", 1, MSG_NOSIGNAL);
                sc.request_stop();
            });
            co_await sc.join();  // blocks in io_uring_enter until the thread acts
            stopper.join();
            REQUIRE(out.finished);
            REQUIRE(!out.other);
            if (out.was_canceled) ++nc;
            received += out.bytes + raw_drain(a).size();
        }
    }(ctx, a, b, received, canceled_count));
    REQUIRE(received == (rounds + 2) / 3);  // every byte sent arrived exactly once
    REQUIRE(canceled_count >= rounds - (rounds + 2) / 3);
}

TEST_CASE("cancellation: write_all stopped part-way reports the bytes sent and breaks the stream",
          "[cancellation]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    int small = 16 * 1024;
    REQUIRE(::setsockopt(a.native_handle(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    std::vector<std::byte> data(8 << 20, std::byte{0x5a});
    io_result<std::size_t> res;
    ctx.sync_wait([](io_context& ctx, stream_socket& a, std::span<const std::byte> data,
                     io_result<std::size_t>& res) -> task<void> {
        scope sc(ctx);
        sc.spawn([&](std::stop_token st) -> task<void> { res = co_await a.write_all(data, st); });
        for (int k = 0; k < 4; ++k) co_await ctx.yield();
        (void)co_await ringsock::sleep_for(ctx, 2ms);  // the send is blocked on a full buffer
        sc.request_stop();
        co_await sc.join();
    }(ctx, a, data, res));
    REQUIRE(canceled(res.error()));
    std::size_t sent = res.partial_value();
    REQUIRE(sent > 0);
    REQUIRE(sent < data.size());
    // The count is exact: the peer finds precisely that many bytes.
    REQUIRE(raw_drain(b).size() == sent);
    // The stream position is unknown to the peer's protocol: later writes refuse.
    auto again = ctx.sync_wait([](stream_socket& a) -> task<io_result<std::size_t>> {
        co_return co_await a.write_some(std::string_view("more"));
    }(a));
    REQUIRE(again.error() == ringsock::errc::stream_broken);
}

TEST_CASE("cancellation: a read queued behind a busy direction is cancelled without disturbing the first",
          "[cancellation]") {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    read_outcome first, second;
    ctx.sync_wait([](io_context& ctx, stream_socket& a, stream_socket& b, read_outcome& first,
                     read_outcome& second) -> task<void> {
        scope plain(ctx), stoppable(ctx);
        plain.spawn(read_with(a, {}, first));
        co_await ctx.yield();
        stoppable.spawn(read_with(a, stoppable.get_token(), second));  // waits for the first
        co_await ctx.yield();
        co_await ctx.yield();
        stoppable.request_stop();
        co_await stoppable.join();
        REQUIRE(second.was_canceled);
        REQUIRE_FALSE(first.finished);
        raw_send(b, "abc");
        co_await plain.join();
    }(ctx, a, b, first, second));
    REQUIRE(first.bytes == 3);
}

TEST_CASE("cancellation: accept, sleep_for and a connect to a full backlog end on a stop request",
          "[cancellation]") {
    io_context ctx;
    auto ep = ringsock::test::unique_abstract("stopaccept");
    ringsock::listen_options opts;
    opts.backlog = 0;
    auto acc = ringsock::acceptor::listen(ctx, ep, opts);
    REQUIRE(acc);
    std::error_code accept_ec, accept_limited_ec, connect_ec, sleep_ec;
    ctx.sync_wait([](io_context& ctx, ringsock::acceptor& acc, const ringsock::endpoint& ep, std::error_code& a1,
                     std::error_code& a2, std::error_code& s) -> task<void> {
        {
            scope sc(ctx);
            sc.spawn([&](std::stop_token st) -> task<void> { a1 = (co_await acc.accept(st)).error(); });
            sc.spawn([&](std::stop_token st) -> task<void> { a2 = (co_await acc.accept({st, 1h})).error(); });
            sc.spawn([&](std::stop_token st) -> task<void> { s = (co_await ringsock::sleep_for(ctx, 1h, st)).error(); });
            (void)co_await ringsock::sleep_for(ctx, 2ms);
            sc.request_stop();
            co_await sc.join();
        }
        // The acceptor still works after a cancelled accept.
        auto client = ringsock::test::fill_backlog(ep);
        REQUIRE(!client.empty());
        auto conn = co_await acc.accept(5s);
        REQUIRE(conn);
    }(ctx, *acc, ep, accept_ec, accept_limited_ec, sleep_ec));
    // A listener nobody accepts on, with its backlog full: a blocking connect waits (on
    // an io-wq thread) until the stop request interrupts it.
    auto ep2 = ringsock::test::unique_abstract("stopconnect");
    auto listener = ringsock::test::raw_listener(ep2, 0);
    auto queued = ringsock::test::fill_backlog(ep2);
    ctx.sync_wait([](io_context& ctx, const ringsock::endpoint& ep, std::error_code& c) -> task<void> {
        scope sc(ctx);
        sc.spawn([&](std::stop_token st) -> task<void> { c = (co_await stream_socket::connect(ctx, ep, st)).error(); });
        (void)co_await ringsock::sleep_for(ctx, 5ms);
        sc.request_stop();
        co_await sc.join();
    }(ctx, ep2, connect_ec));
    REQUIRE(canceled(accept_ec));
    REQUIRE(canceled(accept_limited_ec));
    REQUIRE(canceled(sleep_ec));
    INFO(connect_ec.message());
    REQUIRE(canceled(connect_ec));
}
