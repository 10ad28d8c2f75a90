// Tests for op_limits: stop tokens and time limits on operations, and the regression
// test for g++ 12 destroying braced temporaries inside co_await twice (run it under
// ASan: a double destruction of the stop token shows up as a use-after-free there).
#include <catch2/catch.hpp>

#include <ringsock/datagram_socket.hpp>
#include <ringsock/fd_stream.hpp>
#include <ringsock/io_context.hpp>
#include <ringsock/op_limits.hpp>
#include <ringsock/seqpacket_socket.hpp>
#include <ringsock/stream_socket.hpp>
#include <ringsock/task.hpp>
#include <ringsock/timer.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <span>
#include <stop_token>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>

#include "support/leak_guard.hpp"

namespace {

using namespace std::chrono_literals;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::op_limits;
using ringsock::stream_socket;
using ringsock::task;

// The g++ 12 workaround depends on op_limits not being an aggregate.
static_assert(!std::is_aggregate_v<op_limits>);
static_assert(std::is_convertible_v<std::stop_token, op_limits>);
static_assert(std::is_convertible_v<std::chrono::milliseconds, op_limits>);

/// Writes a few bytes on `s` with a plain syscall (tiny: never blocks).
bool put(const stream_socket& s, std::string_view bytes) {
    return ::write(s.native_handle(), bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size());
}

struct loop_counts {
    int reads_ok = 0;
    int sleeps_ok = 0;
    int timeouts = 0;
};

// TRICKY: the braced `{source.get_token(), 1s}` and `source.get_token()` temporaries
// below are the point of these loops: written exactly as users write them, inside the
// co_await expression. g++ 12 destroyed such temporaries twice when op_limits was an
// aggregate, dropping the stop state's reference count to zero early.
task<void> thousand_reads_and_sleeps(io_context& ctx, stream_socket& s, stream_socket& peer,
                                     std::stop_source& source, loop_counts* out) {
    std::array<char, 8> buf{};
    for (int i = 0; i < 1000; ++i) {
        if (!put(peer, "x")) co_return;
        auto r = co_await s.read_some(buf, {source.get_token(), 1s});
        if (r && *r == 1 && buf[0] == 'x') ++out->reads_ok;
        auto z = co_await ringsock::sleep_for(ctx, 0ms, source.get_token());
        if (z) ++out->sleeps_ok;
    }
}

task<void> token_only_and_timeout_only(stream_socket& s, stream_socket& peer, std::stop_source& source,
                                       loop_counts* out) {
    std::array<char, 2> buf{};
    for (int i = 0; i < 1000; ++i) {
        if (!put(peer, "ab")) co_return;
        auto r1 = co_await s.read_some(std::span(buf.data(), 1), source.get_token());
        auto r2 = co_await s.read_some(std::span(buf.data() + 1, 1), 1s);
        if (r1 && r2 && *r1 == 1 && *r2 == 1 && buf[0] == 'a' && buf[1] == 'b') ++out->reads_ok;
    }
}

task<void> hundred_timed_out_reads(stream_socket& s, std::stop_source& source, loop_counts* out) {
    std::array<char, 8> buf{};
    for (int i = 0; i < 100; ++i) {
        auto r = co_await s.read_some(buf, {source.get_token(), 1ms});
        if (!r && r.error() == std::errc::timed_out) ++out->timeouts;
    }
}

task<io_result<std::size_t>> read_with(stream_socket& s, std::span<char> buf, op_limits lim) {
    co_return co_await s.read_some(buf, std::move(lim));
}

task<io_result<void>> sleep_with(io_context& ctx, std::chrono::nanoseconds d, std::stop_token tok) {
    co_return co_await ringsock::sleep_for(ctx, d, std::move(tok));
}

task<void> read_into(stream_socket& s, std::span<char> buf, op_limits lim, io_result<std::size_t>* out) {
    *out = co_await s.read_some(buf, std::move(lim));
}

task<void> sleep_into(io_context& ctx, std::chrono::nanoseconds d, std::stop_token tok, io_result<void>* out) {
    *out = co_await ringsock::sleep_for(ctx, d, std::move(tok));
}

task<void> stop_later(io_context& ctx, std::stop_source* source, std::chrono::milliseconds after) {
    (void)co_await ringsock::sleep_for(ctx, after);
    source->request_stop();
}

task<void> write_later(io_context& ctx, stream_socket& peer, std::chrono::milliseconds after) {
    (void)co_await ringsock::sleep_for(ctx, after);
    (void)co_await peer.write_all(std::string_view("late"));
}

task<void> send_later(io_context& ctx, int fd, std::chrono::milliseconds after) {
    (void)co_await ringsock::sleep_for(ctx, after);
    for (int i = 0; i < 2; ++i) (void)::send(fd, "late", 4, MSG_NOSIGNAL);
}

/// What a named op_limits went through on receives that return a received_message.
struct named_limits_run {
    int received = 0;          // receives that got their message
    bool token_kept = false;   // the named limits still held their token after each
    std::error_code waiting;   // the receive that waited when the stop came
    std::error_code after;     // a receive with the same limits after the stop
};

/// Receives with ONE named op_limits, as users write `co_await s.receive(buf, lim)`:
/// three messages that are there, then one that waits until `source` is stopped, then
/// one more after. `Receive` is the call: receive(), receive_from() or fd_stream's.
template <class Socket, class Peer, class Receive>
task<void> receive_with_named_limits(io_context& ctx, Socket& s, Peer& peer, std::stop_source& source,
                                     Receive receive, named_limits_run* out) {
    std::array<char, 8> buf{};
    op_limits lim{source.get_token()};
    out->token_kept = true;
    for (int i = 0; i < 3; ++i) {
        if (::send(peer.native_handle(), "m", 1, MSG_NOSIGNAL) != 1) co_return;
        auto r = co_await receive(s, buf, lim);
        if (r && r->bytes == 1 && buf[0] == 'm') ++out->received;
        out->token_kept = out->token_kept && lim.stop.stop_possible();
    }
    ctx.spawn(stop_later(ctx, &source, 5ms));
    // Should the stop be lost, these messages end both waits (a failure, not a hang).
    ctx.spawn(send_later(ctx, peer.native_handle(), 100ms));
    auto w = co_await receive(s, buf, lim);
    out->waiting = w.error();
    auto a = co_await receive(s, buf, lim);
    out->after = a.error();
}

}  // namespace

TEST_CASE("op_limits: constructors set the stop token, the time limit, or both", "[op_limits]") {
    const ringsock::test::fd_leak_guard no_leak;
    op_limits none;
    REQUIRE_FALSE(none.stop.stop_possible());
    REQUIRE_FALSE(none.timeout.has_value());

    std::stop_source source;
    op_limits tok = source.get_token();
    REQUIRE(tok.stop.stop_possible());
    REQUIRE_FALSE(tok.timeout.has_value());

    op_limits dur = 250ms;
    REQUIRE_FALSE(dur.stop.stop_possible());
    REQUIRE(dur.timeout == std::chrono::nanoseconds(250'000'000));

    op_limits both{source.get_token(), 2s};
    REQUIRE(both.stop.stop_possible());
    REQUIRE(both.timeout == std::chrono::nanoseconds(2'000'000'000));
    REQUIRE_FALSE(source.stop_requested());
}

TEST_CASE("op_limits: 1000 co_awaits with temporary {token, timeout} limits leave the source intact",
          "[op_limits][gcc12]") {
    const ringsock::test::fd_leak_guard no_leak;
    io_context ctx;
    auto [s, peer] = stream_socket::pair(ctx).value();
    std::stop_source source;
    loop_counts counts;
    ctx.sync_wait(thousand_reads_and_sleeps(ctx, s, peer, source, &counts));
    REQUIRE(counts.reads_ok == 1000);
    REQUIRE(counts.sleeps_ok == 1000);
    REQUIRE_FALSE(source.stop_requested());
    REQUIRE(source.stop_possible());
    REQUIRE(source.get_token().stop_possible());
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits: 1000 co_awaits with a temporary token or a duration alone", "[op_limits][gcc12]") {
    const ringsock::test::fd_leak_guard no_leak;
    io_context ctx;
    auto [s, peer] = stream_socket::pair(ctx).value();
    std::stop_source source;
    loop_counts counts;
    ctx.sync_wait(token_only_and_timeout_only(s, peer, source, &counts));
    REQUIRE(counts.reads_ok == 1000);
    REQUIRE_FALSE(source.stop_requested());
    REQUIRE(source.stop_possible());
}

TEST_CASE("op_limits: temporary limits on reads that time out leave the source intact", "[op_limits][gcc12]") {
    const ringsock::test::fd_leak_guard no_leak;
    io_context ctx;
    auto [s, peer] = stream_socket::pair(ctx).value();
    std::stop_source source;
    loop_counts counts;
    ctx.sync_wait(hundred_timed_out_reads(s, source, &counts));
    REQUIRE(counts.timeouts == 100);
    REQUIRE_FALSE(source.stop_requested());
    // The socket is still fine afterwards.
    REQUIRE(put(peer, "ok"));
    std::array<char, 2> buf{};
    auto r = ctx.sync_wait(read_with(s, buf, 5s));
    REQUIRE(r.value() == 2);
    REQUIRE(std::string_view(buf.data(), 2) == "ok");
}

TEST_CASE("op_limits: a token stopped before the call completes at once without submitting",
          "[op_limits]") {
    const ringsock::test::fd_leak_guard no_leak;
    io_context ctx;
    auto [s, peer] = stream_socket::pair(ctx).value();
    std::stop_source source;
    source.request_stop();

    // Data is waiting, yet the read must not take it: nothing was submitted.
    REQUIRE(put(peer, "kept"));
    std::array<char, 4> buf{};
    auto r = ctx.sync_wait(read_with(s, buf, source.get_token()));
    REQUIRE_FALSE(r.has_value());
    REQUIRE(r.error() == std::errc::operation_canceled);
    REQUIRE(r.partial_value() == 0);
    REQUIRE(buf == std::array<char, 4>{});

    auto r2 = ctx.sync_wait(read_with(s, buf, {source.get_token(), 1h}));
    REQUIRE(r2.error() == std::errc::operation_canceled);

    // An hour-long sleep returns at once.
    auto t0 = std::chrono::steady_clock::now();
    auto z = ctx.sync_wait(sleep_with(ctx, 1h, source.get_token()));
    REQUIRE(z.error() == std::errc::operation_canceled);
    REQUIRE(std::chrono::steady_clock::now() - t0 < 5s);

    // The data is still there for a read without limits.
    auto r3 = ctx.sync_wait(read_with(s, buf, {}));
    REQUIRE(r3.value() == 4);
    REQUIRE(std::string_view(buf.data(), 4) == "kept");
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits: a time limit on a silent read gives timed_out", "[op_limits]") {
    const ringsock::test::fd_leak_guard no_leak;
    io_context ctx;
    auto [s, peer] = stream_socket::pair(ctx).value();
    std::array<char, 4> buf{};

    auto r = ctx.sync_wait(read_with(s, buf, 20ms));
    REQUIRE_FALSE(r.has_value());
    REQUIRE(r.error() == std::errc::timed_out);
    REQUIRE_THROWS_WITH(r.value(), Catch::Contains("read_some"));

    std::stop_source source;
    auto r2 = ctx.sync_wait(read_with(s, buf, {source.get_token(), 20ms}));
    REQUIRE(r2.error() == std::errc::timed_out);
    REQUIRE_FALSE(source.stop_requested());
}

TEST_CASE("op_limits: a stop request from the loop thread mid-flight gives operation_canceled",
          "[op_limits]") {
    const ringsock::test::fd_leak_guard no_leak;
    io_context ctx;
    auto [s, peer] = stream_socket::pair(ctx).value();
    std::array<char, 4> buf{};

    SECTION("a read") {
        std::stop_source source;
        io_result<std::size_t> r;
        ctx.spawn(read_into(s, buf, source.get_token(), &r));
        ctx.spawn(stop_later(ctx, &source, 10ms));
        ctx.run();
        REQUIRE_FALSE(r.has_value());
        REQUIRE(r.error() == std::errc::operation_canceled);
    }
    SECTION("a read that also has a long time limit") {
        std::stop_source source;
        io_result<std::size_t> r;
        ctx.spawn(read_into(s, buf, {source.get_token(), 1h}, &r));
        ctx.spawn(stop_later(ctx, &source, 10ms));
        auto t0 = std::chrono::steady_clock::now();
        ctx.run();
        REQUIRE(std::chrono::steady_clock::now() - t0 < 5s);
        REQUIRE(r.error() == std::errc::operation_canceled);
    }
    SECTION("a sleep") {
        std::stop_source source;
        io_result<void> z;
        ctx.spawn(sleep_into(ctx, 1h, source.get_token(), &z));
        ctx.spawn(stop_later(ctx, &source, 10ms));
        ctx.run();
        REQUIRE(z.error() == std::errc::operation_canceled);
    }
    // The socket still works after a cancelled read.
    REQUIRE(put(peer, "next"));
    auto r = ctx.sync_wait(read_with(s, buf, 5s));
    REQUIRE(r.value() == 4);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits: a stop request from another thread cancels an operation in flight", "[op_limits]") {
    const ringsock::test::fd_leak_guard no_leak;
    io_context ctx;
    auto [s, peer] = stream_socket::pair(ctx).value();
    std::array<char, 4> buf{};
    std::stop_source source;
    io_result<std::size_t> r;
    ctx.spawn(read_into(s, buf, source.get_token(), &r));
    REQUIRE(ctx.poll() == 1);  // the read is now waiting
    std::thread other([&] {
        std::this_thread::sleep_for(10ms);
        source.request_stop();
    });
    ctx.run();
    other.join();
    REQUIRE(r.error() == std::errc::operation_canceled);
}

TEST_CASE("op_limits: a read that has data returns it even with a long time limit", "[op_limits]") {
    const ringsock::test::fd_leak_guard no_leak;
    io_context ctx;
    auto [s, peer] = stream_socket::pair(ctx).value();
    std::array<char, 8> buf{};
    std::stop_source source;

    SECTION("data already there") {
        REQUIRE(put(peer, "early"));
        auto r = ctx.sync_wait(read_with(s, buf, {source.get_token(), 10s}));
        REQUIRE(r.value() == 5);
        REQUIRE(std::string_view(buf.data(), 5) == "early");
    }
    SECTION("data arriving while the read waits") {
        io_result<std::size_t> r;
        ctx.spawn(read_into(s, buf, {source.get_token(), 10s}, &r));
        ctx.spawn(write_later(ctx, peer, 10ms));
        auto t0 = std::chrono::steady_clock::now();
        ctx.run();
        REQUIRE(std::chrono::steady_clock::now() - t0 < 5s);  // well before the limit
        REQUIRE(r.value() == 4);
        REQUIRE(std::string_view(buf.data(), 4) == "late");
    }
    SECTION("a sleep shorter than its stop token's use") {
        auto z = ctx.sync_wait(sleep_with(ctx, 1ms, source.get_token()));
        REQUIRE(z.has_value());
    }
    REQUIRE_FALSE(source.stop_requested());
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits: a named op_limits shared by message receives keeps its token; a stop cancels the waiting receive and the next",
          "[op_limits]") {
    const ringsock::test::fd_leak_guard no_leak;
    io_context ctx;
    std::stop_source source;
    named_limits_run run;
    SECTION("seqpacket receive") {
        auto [s, peer] = ringsock::seqpacket_socket::pair(ctx).value();
        auto call = [](auto& sock, std::span<char> b, op_limits& l) { return sock.receive(b, l); };
        ctx.spawn(receive_with_named_limits(ctx, s, peer, source, call, &run));
        ctx.run();
    }
    SECTION("datagram receive_from") {
        auto [s, peer] = ringsock::datagram_socket::pair(ctx).value();
        auto call = [](auto& sock, std::span<char> b, op_limits& l) { return sock.receive_from(b, l); };
        ctx.spawn(receive_with_named_limits(ctx, s, peer, source, call, &run));
        ctx.run();
    }
    SECTION("fd_stream receive") {
        auto [s, peer] = ringsock::fd_stream::pair(ctx).value();
        auto call = [](auto& sock, std::span<char> b, op_limits& l) { return sock.receive(b, l); };
        ctx.spawn(receive_with_named_limits(ctx, s, peer, source, call, &run));
        ctx.run();
    }
    CHECK(run.received == 3);
    CHECK(run.token_kept);
    CHECK(run.waiting == std::errc::operation_canceled);
    CHECK(run.after == std::errc::operation_canceled);
}
