// Hostile tests for transfers that take their op_limits' stop token over (moved into
// the operation instead of copied) and for submission::prepare_direct, which no longer
// checks for a time limit itself: one op_limits lvalue shared by many operations in a
// row and at once, moved-from and temporary limits, stop sources that die first, stop
// requests from other threads in every state an operation can be in (gated, queued to
// the end of the turn, in flight, before co_await), time limits behind a busy
// direction, sockets closed under a receive queued late, and partial counts of
// write_all / read_exact cancelled midway, on stream, fd_stream, seqpacket and datagram
// sockets. Run under ASan+UBSan: a stop state released once too often shows up there.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/leak_guard.hpp"
#include "support/submission_count.hpp"
#include "support/turn_support.hpp"

namespace {

using namespace std::chrono_literals;
using ringsock::datagram_socket;
using ringsock::fd_stream;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::op_limits;
using ringsock::seqpacket_socket;
using ringsock::stream_socket;
using ringsock::task;
using ringsock::test::fd_leak_guard;
using ringsock::test::fill_send_path;
using ringsock::test::drain_fd;
using ringsock::test::make_pair;
using ringsock::test::pump;
using ringsock::test::pump_for;
using ringsock::test::raw_send;
using ringsock::test::readable_bytes;
using ringsock::test::settled_sq_tail;
using ringsock::test::sq_tail;

/// What one operation ended with.
struct slot {
    bool done = false;
    io_result<std::size_t> r;
};

enum class how { read_some, read_exact, write_some, write_all, send, receive_bytes };

// One switch over `how` for every socket type: a kind the socket lacks yields
// function_not_supported (a test mistake shows up as a failure, not a compile error).
#define RS_OP(kind, call)                                                                        \
    case how::kind:                                                                              \
        if constexpr (requires { s.call; }) out->r = co_await s.call;                           \
        else out->r = io_result<std::size_t>(std::make_error_code(std::errc::function_not_supported)); \
        break;
#define RS_ALL_OPS(...)                                                                          \
    switch (h) {                                                                                 \
        RS_OP(read_some, read_some(buf __VA_OPT__(,) __VA_ARGS__))                               \
        RS_OP(read_exact, read_exact(buf __VA_OPT__(,) __VA_ARGS__))                             \
        RS_OP(write_some, write_some(std::span<const char>(buf) __VA_OPT__(,) __VA_ARGS__))      \
        RS_OP(write_all, write_all(std::span<const char>(buf) __VA_OPT__(,) __VA_ARGS__))        \
        RS_OP(send, send(std::span<const char>(buf) __VA_OPT__(,) __VA_ARGS__))                  \
        RS_OP(receive_bytes, receive_bytes(buf __VA_OPT__(,) __VA_ARGS__))                       \
    }                                                                                            \
    out->done = true;

/// Awaits one operation on `s` with the caller's op_limits LVALUE, exactly as a user
/// writes `co_await s.read_some(buf, lim)` with a named limits object.
template <class S>
task<void> with_lvalue(S& s, how h, std::span<char> buf, op_limits& lim, slot* out) {
    RS_ALL_OPS(lim)
}

/// The same through a const lvalue.
template <class S>
task<void> with_const_lvalue(S& s, how h, std::span<char> buf, const op_limits& lim, slot* out) {
    RS_ALL_OPS(lim)
}

/// Without limits at all.
template <class S>
task<void> plain(S& s, how h, std::span<char> buf, slot* out) {
    RS_ALL_OPS()
}

/// ctx.run(), but a defect that loses a cancel or a time limit fails the test instead
/// of hanging it: after `limit` a watchdog thread stops the loop. True when run()
/// returned on its own (no work left).
bool run_within(io_context& ctx, std::chrono::milliseconds limit = std::chrono::milliseconds(10000)) {
    std::mutex mu;
    std::condition_variable cv;
    bool finished = false;
    std::thread dog([&] {
        std::unique_lock lock(mu);
        if (!cv.wait_for(lock, limit, [&] { return finished; })) ctx.stop();
    });
    struct release_dog {
        std::mutex& mu;
        std::condition_variable& cv;
        bool& finished;
        std::thread& dog;
        ~release_dog() {
            {
                std::lock_guard lock(mu);
                finished = true;
            }
            cv.notify_one();
            dog.join();
        }
    };
    {
        release_dog release{mu, cv, finished, dog};  // also when run() rethrows a task's exception
        ctx.run();
    }
    const bool stopped = ctx.stopped();
    ctx.restart();
    return !stopped;
}

task<void> stop_from_loop(std::stop_source* src) {
    src->request_stop();
    co_return;
}

task<void> stop_later(io_context& ctx, std::stop_source* src, std::chrono::milliseconds after) {
    (void)co_await ringsock::sleep_for(ctx, after);
    src->request_stop();
}

task<void> raw_send_later(io_context& ctx, const stream_socket* peer, std::string data, std::chrono::milliseconds after) {
    (void)co_await ringsock::sleep_for(ctx, after);
    raw_send(*peer, data);
}

/// Requests stop on `src` from a thread of its own, and waits for it.
void stop_from_other_thread(std::stop_source& src) {
    std::thread t([&src] { src.request_stop(); });
    t.join();
}

bool canceled(const io_result<std::size_t>& r) { return !r && r.error() == std::errc::operation_canceled; }
bool timed_out(const io_result<std::size_t>& r) { return !r && r.error() == std::errc::timed_out; }

std::string pattern(std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + i / 4096) % 26);
    return s;
}

/// The limits a GENERATE index stands for: a token alone, a token and a long time limit.
op_limits limits_for(int variant, const std::stop_source& src) {
    if (variant == 0) return op_limits(src.get_token());
    return op_limits(src.get_token(), 1h);
}

}  // namespace

// ---------------------------------------------------------------------------------
// One op_limits lvalue, many operations.
// ---------------------------------------------------------------------------------

TEST_CASE("op_limits move: one lvalue reused by 300 reads and writes in a row keeps its token and still cancels",
          "[op_limits_move]") {
    const int variant = GENERATE(0, 1);
    fd_leak_guard guard;
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    std::stop_source src;
    op_limits lim = limits_for(variant, src);
    const auto timeout_before = lim.timeout;

    int ok = 0;
    for (int i = 0; i < 300; ++i) {
        std::array<char, 1> out{static_cast<char>('a' + i % 26)};
        std::array<char, 4> in{};
        slot w, r;
        ctx.spawn(with_lvalue(peer, how::write_some, out, lim, &w));
        ctx.spawn(with_lvalue(s, i % 2 ? how::read_exact : how::read_some, std::span(in.data(), 1), lim, &r));
        REQUIRE(run_within(ctx));
        if (w.done && r.done && w.r && r.r && *w.r == 1 && *r.r == 1 && in[0] == out[0]) ++ok;
        // Every operation took the token from a copy: the user's object still has it.
        if (!lim.stop.stop_possible()) break;
    }
    REQUIRE(ok == 300);
    REQUIRE(lim.stop.stop_possible());
    REQUIRE_FALSE(lim.stop.stop_requested());
    REQUIRE(lim.timeout == timeout_before);

    // And it still reaches the next operation: a stop cancels it.
    std::array<char, 4> in{};
    slot r;
    ctx.spawn(with_lvalue(s, how::read_some, in, lim, &r));
    ctx.spawn(stop_later(ctx, &src, 10ms));
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE(run_within(ctx));
    REQUIRE(std::chrono::steady_clock::now() - t0 < 5s);
    REQUIRE(r.done);
    REQUIRE(canceled(r.r));
    REQUIRE(lim.stop.stop_possible());
    REQUIRE(lim.stop.stop_requested());
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits move: one lvalue shared at once by a read, a write, a gated read and ops on other sockets; "
          "one stop from another thread cancels them all",
          "[op_limits_move]") {
    const int variant = GENERATE(0, 1);
    const bool const_lvalue = GENERATE(false, true);
    fd_leak_guard guard;
    io_context ctx;
    auto [a, a_peer] = make_pair(ctx);
    auto [b, b_peer] = make_pair(ctx);
    auto [c, c_peer] = make_pair(ctx);
    auto [m, m_peer] = seqpacket_socket::pair(ctx).value();
    std::stop_source src;
    op_limits lim = limits_for(variant, src);

    const std::size_t filled = fill_send_path(a.native_handle());
    std::string big(64 * 1024, 'w');
    std::array<char, 8> a_in{}, a_in2{}, b_in{}, m_in{};
    std::array<char, 16> c_in{};
    raw_send(c_peer, "12345");  // read_exact gets 5 of its 16 bytes

    slot ra, wa, ra2, rb, rc, rm;
    auto go = [&](auto& sock, how h, std::span<char> buf, slot* out) {
        if (const_lvalue) ctx.spawn(with_const_lvalue(sock, h, buf, lim, out));
        else ctx.spawn(with_lvalue(sock, h, buf, lim, out));
    };
    go(a, how::read_some, a_in, &ra);
    go(a, how::write_all, std::span(big.data(), big.size()), &wa);
    go(a, how::read_some, a_in2, &ra2);  // gated behind ra
    go(b, how::read_some, b_in, &rb);
    go(c, how::read_exact, c_in, &rc);
    go(m, how::receive_bytes, m_in, &rm);
    pump_for(ctx, 30ms);
    REQUIRE_FALSE(ra.done);
    REQUIRE_FALSE(wa.done);
    REQUIRE_FALSE(ra2.done);
    REQUIRE_FALSE(rb.done);
    REQUIRE_FALSE(rc.done);
    REQUIRE_FALSE(rm.done);
    REQUIRE(lim.stop.stop_possible());

    stop_from_other_thread(src);
    REQUIRE(pump(ctx, [&] { return ra.done && wa.done && ra2.done && rb.done && rc.done && rm.done; }));
    CHECK(canceled(ra.r));
    CHECK(canceled(wa.r));
    CHECK(canceled(ra2.r));
    CHECK(canceled(rb.r));
    CHECK(canceled(rc.r));
    CHECK(rc.r.partial_value() == 5);
    CHECK(std::string_view(c_in.data(), 5) == "12345");
    CHECK(canceled(rm.r));
    // What write_all reports sent is exactly what reached the peer beyond the filler.
    const std::string got = drain_fd(a_peer.native_handle());
    CHECK(got.size() == filled + wa.r.partial_value());
    CHECK(lim.stop.stop_possible());
    CHECK(lim.stop.stop_requested());

    // Operations without limits on the same sockets are unaffected.
    raw_send(b_peer, "bee");
    slot after;
    ctx.spawn(plain(b, how::read_some, b_in, &after));
    REQUIRE(run_within(ctx));
    REQUIRE(after.r.value() == 3);
    REQUIRE(std::string_view(b_in.data(), 3) == "bee");
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits move: one lvalue shared by reads on 64 sockets; a stop from the loop cancels every one",
          "[op_limits_move]") {
    const int variant = GENERATE(0, 1);
    fd_leak_guard guard;
    io_context ctx;
    std::vector<std::pair<stream_socket, stream_socket>> pairs;
    for (int i = 0; i < 64; ++i) pairs.push_back(make_pair(ctx));
    std::stop_source src;
    op_limits lim = limits_for(variant, src);
    std::vector<std::array<char, 8>> bufs(64);
    std::vector<slot> slots(64);
    for (int i = 0; i < 64; ++i) ctx.spawn(with_lvalue(pairs[i].first, how::read_some, bufs[i], lim, &slots[i]));
    ctx.spawn(stop_later(ctx, &src, 20ms));
    REQUIRE(run_within(ctx));
    int n = 0;
    for (auto& sl : slots) n += sl.done && canceled(sl.r);
    REQUIRE(n == 64);
    REQUIRE(lim.stop.stop_possible());
    REQUIRE(ctx.outstanding_work() == 0);
}

// ---------------------------------------------------------------------------------
// Moved, temporary and orphaned limits.
// ---------------------------------------------------------------------------------

namespace {

task<void> read_moved(stream_socket& s, std::span<char> buf, op_limits& lim, slot* out) {
    out->r = co_await s.read_some(buf, std::move(lim));
    out->done = true;
}

task<void> read_braced(stream_socket& s, std::span<char> buf, std::stop_source* src, slot* out) {
    out->r = co_await s.read_some(buf, {src->get_token(), 10s});
    out->done = true;
}

task<void> write_all_braced(stream_socket& s, std::span<const char> buf, std::stop_source* src, slot* out) {
    out->r = co_await s.write_all(buf, {src->get_token(), 10s});
    out->done = true;
}

task<void> read_token_temporary(stream_socket& s, std::span<char> buf, std::stop_source* src, slot* out) {
    out->r = co_await s.read_some(buf, src->get_token());
    out->done = true;
}

task<void> read_orphan_token(stream_socket& s, std::span<char> buf, std::unique_ptr<std::stop_source>* src, slot* out) {
    out->r = co_await s.read_some(buf, (*src)->get_token());
    out->done = true;
}

task<void> braced_loop(stream_socket& s, stream_socket& peer, std::stop_source* src, int* ok) {
    std::array<char, 4> buf{};
    for (int i = 0; i < 500; ++i) {
        raw_send(peer, "q");
        auto r = co_await s.read_some(buf, {src->get_token(), 10ms});
        auto w = co_await peer.write_some(std::string_view("w"), {src->get_token(), 10ms});
        auto r2 = co_await s.read_exact(std::span(buf.data(), 1), op_limits(src->get_token()));
        if (r && *r == 1 && w && *w == 1 && r2 && *r2 == 1) ++*ok;
    }
}

}  // namespace

TEST_CASE("op_limits move: a moved op_limits, braced {token, time} temporaries and token temporaries reach the operation",
          "[op_limits_move][gcc12]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    std::array<char, 8> buf{};

    SECTION("std::move'd lvalue") {
        std::stop_source src;
        op_limits lim{src.get_token(), 1h};
        slot r;
        ctx.spawn(read_moved(s, buf, lim, &r));
        REQUIRE(ctx.poll() == 1);
        ctx.spawn(stop_later(ctx, &src, 10ms));
        REQUIRE(run_within(ctx));
        REQUIRE(canceled(r.r));
        REQUIRE(src.get_token().stop_possible());
    }
    SECTION("braced temporary inside co_await, 500 rounds, then cancelled") {
        std::stop_source src;
        int ok = 0;
        ctx.sync_wait(braced_loop(s, peer, &src, &ok));
        REQUIRE(ok == 500);
        REQUIRE_FALSE(src.stop_requested());
        REQUIRE(src.stop_possible());
        slot r;
        ctx.spawn(read_braced(s, buf, &src, &r));
        ctx.spawn(stop_later(ctx, &src, 10ms));
        REQUIRE(run_within(ctx));
        REQUIRE(canceled(r.r));
        // The socket still works for a plain read.
        raw_send(peer, "zz");
        slot rest;
        ctx.spawn(plain(s, how::read_some, buf, &rest));
        REQUIRE(run_within(ctx));
        REQUIRE(rest.r.value() == 2);
    }
    SECTION("braced temporary on a blocked write_all, cancelled from another thread") {
        std::stop_source src;
        const std::size_t filled = fill_send_path(s.native_handle());
        std::string big(32 * 1024, 'b');
        slot w;
        ctx.spawn(write_all_braced(s, big, &src, &w));
        pump_for(ctx, 20ms);
        REQUIRE_FALSE(w.done);
        stop_from_other_thread(src);
        REQUIRE(pump(ctx, [&] { return w.done; }));
        REQUIRE(canceled(w.r));
        REQUIRE(drain_fd(peer.native_handle()).size() == filled + w.r.partial_value());
    }
    SECTION("a std::stop_token temporary") {
        std::stop_source src;
        slot r;
        ctx.spawn(read_token_temporary(s, buf, &src, &r));
        REQUIRE(ctx.poll() == 1);
        stop_from_other_thread(src);
        REQUIRE(pump(ctx, [&] { return r.done; }));
        REQUIRE(canceled(r.r));
    }
    SECTION("the stop_source dies while the operation waits: the operation completes normally") {
        auto src = std::make_unique<std::stop_source>();
        slot r;
        ctx.spawn(read_orphan_token(s, buf, &src, &r));
        REQUIRE(ctx.poll() == 1);
        REQUIRE(ctx.poll() == 0);  // now in flight
        src.reset();               // the operation holds the only reference to the stop state
        pump_for(ctx, 10ms);
        REQUIRE_FALSE(r.done);
        raw_send(peer, "alive");
        REQUIRE(pump(ctx, [&] { return r.done; }));
        REQUIRE(r.r.value() == 5);
        REQUIRE(std::string_view(buf.data(), 5) == "alive");
    }
    SECTION("the stop_source dies while the operation is gated") {
        slot holder;
        std::array<char, 1> hb{};
        ctx.spawn(plain(s, how::read_some, hb, &holder));
        auto src = std::make_unique<std::stop_source>();
        slot r;
        ctx.spawn(read_orphan_token(s, buf, &src, &r));
        pump_for(ctx, 5ms);
        src.reset();
        raw_send(peer, "12");
        REQUIRE(pump(ctx, [&] { return holder.done && r.done; }));
        REQUIRE(holder.r.value() == 1);
        REQUIRE(hb[0] == '1');
        REQUIRE(r.r.value() == 1);
        REQUIRE(buf[0] == '2');
    }
    REQUIRE(ctx.outstanding_work() == 0);
}

// ---------------------------------------------------------------------------------
// Stop requests in every state.
// ---------------------------------------------------------------------------------

TEST_CASE("op_limits move: a stop from another thread cancels a read gated behind another read, not the holder",
          "[op_limits_move]") {
    const int variant = GENERATE(0, 1);
    fd_leak_guard guard;
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    std::stop_source src;
    op_limits lim = limits_for(variant, src);
    std::array<char, 1> hb{};
    std::array<char, 8> gb{};
    slot holder, gated;
    ctx.spawn(plain(s, how::read_some, hb, &holder));
    ctx.spawn(with_lvalue(s, how::read_some, gb, lim, &gated));
    pump_for(ctx, 10ms);
    REQUIRE_FALSE(holder.done);
    REQUIRE_FALSE(gated.done);
    stop_from_other_thread(src);
    REQUIRE(pump(ctx, [&] { return gated.done; }));
    REQUIRE(canceled(gated.r));
    REQUIRE_FALSE(holder.done);
    raw_send(peer, "hi");
    REQUIRE(pump(ctx, [&] { return holder.done; }));
    REQUIRE(holder.r.value() == 1);
    REQUIRE(hb[0] == 'h');
    REQUIRE(readable_bytes(s) == 1);  // the cancelled read never took the rest
    REQUIRE(lim.stop.stop_possible());
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits move: a stop from another thread cancels a write gated behind a blocked write_all; "
          "none of its bytes reach the peer",
          "[op_limits_move]") {
    const int variant = GENERATE(0, 1);
    fd_leak_guard guard;
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    std::stop_source src;
    op_limits lim = limits_for(variant, src);
    const std::size_t filled = fill_send_path(s.native_handle());
    std::string hold(20000, 'h');
    std::string gate(20000, 'g');
    slot holder, gated;
    ctx.spawn(plain(s, how::write_all, std::span(hold.data(), hold.size()), &holder));
    ctx.spawn(with_lvalue(s, how::write_all, std::span(gate.data(), gate.size()), lim, &gated));
    pump_for(ctx, 10ms);
    REQUIRE_FALSE(holder.done);
    REQUIRE_FALSE(gated.done);
    stop_from_other_thread(src);
    REQUIRE(pump(ctx, [&] { return gated.done; }));
    REQUIRE(canceled(gated.r));
    REQUIRE(gated.r.partial_value() == 0);
    // Let the holder finish: drain the peer until it is done.
    std::string got;
    const int peer_fd = peer.native_handle();  // clang 14 cannot capture a structured binding
    REQUIRE(pump(ctx, [&] {
        got += drain_fd(peer_fd);
        return holder.done;
    }));
    got += drain_fd(peer_fd);
    REQUIRE(holder.r.value() == hold.size());
    REQUIRE(got.size() == filled + hold.size());
    REQUIRE(got.find('g') == std::string::npos);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits move: a stop while the receive is queued to the end of the turn cancels it unsubmitted",
          "[op_limits_move]") {
    const int variant = GENERATE(0, 1, 2);  // token; token + time limit; token, stopped from the loop thread
    fd_leak_guard guard;
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    std::stop_source src;
    op_limits lim = limits_for(variant == 1 ? 1 : 0, src);
    std::array<char, 8> buf{};
    slot r;
    const unsigned tail0 = settled_sq_tail(ctx);
    ctx.spawn(with_lvalue(s, how::read_some, buf, lim, &r));
    if (variant == 2) {
        // Spawned second: runs in the same turn, right after the read was queued late.
        ctx.spawn(stop_from_loop(&src));
        REQUIRE(ctx.poll() == 2);
    } else {
        REQUIRE(ctx.poll() == 1);
        // The read is in the late list: its SQE is not even prepared.
        REQUIRE(sq_tail(ctx) == tail0);
        REQUIRE_FALSE(r.done);
        stop_from_other_thread(src);
    }
    // Data that the read must not take: it was never submitted.
    raw_send(peer, "data");
    REQUIRE(pump(ctx, [&] { return r.done; }));
    REQUIRE(canceled(r.r));
    REQUIRE(r.r.partial_value() == 0);
    REQUIRE(readable_bytes(s) == 4);
    REQUIRE(lim.stop.stop_possible());
    // The next read, without limits, gets the data.
    slot next;
    ctx.spawn(plain(s, how::read_some, buf, &next));
    REQUIRE(run_within(ctx));
    REQUIRE(next.r.value() == 4);
    REQUIRE(std::string_view(buf.data(), 4) == "data");
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits move: a stop from another thread cancels a receive in flight; the data sent after stays",
          "[op_limits_move]") {
    const int variant = GENERATE(0, 1);
    fd_leak_guard guard;
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    std::stop_source src;
    op_limits lim = limits_for(variant, src);
    std::array<char, 8> buf{};
    slot r;
    const unsigned tail0 = settled_sq_tail(ctx);
    ctx.spawn(with_lvalue(s, how::read_some, buf, lim, &r));
    REQUIRE(ctx.poll() == 1);
    REQUIRE(ctx.poll() == 0);
    REQUIRE(sq_tail(ctx) > tail0);  // submitted now
    REQUIRE_FALSE(r.done);
    stop_from_other_thread(src);
    REQUIRE(pump(ctx, [&] { return r.done; }));
    REQUIRE(canceled(r.r));
    raw_send(peer, "after");
    REQUIRE(readable_bytes(s) == 5);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits move: a token stopped before co_await completes every kind at once and submits nothing",
          "[op_limits_move]") {
    const int variant = GENERATE(0, 1);
    fd_leak_guard guard;
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    auto [m, m_peer] = seqpacket_socket::pair(ctx).value();
    auto [f, f_peer] = fd_stream::pair(ctx).value();
    std::stop_source src;
    op_limits lim = limits_for(variant, src);
    src.request_stop();
    raw_send(peer, "kept");
    REQUIRE(::send(m_peer.native_handle(), "msg", 3, 0) == 3);
    std::string out = "payload";
    std::array<char, 8> buf{};

    const unsigned tail0 = settled_sq_tail(ctx);
    std::vector<slot> slots(8);
    ctx.spawn(with_lvalue(s, how::read_some, buf, lim, &slots[0]));
    ctx.spawn(with_lvalue(s, how::read_exact, std::span(buf.data(), 4), lim, &slots[1]));
    ctx.spawn(with_lvalue(s, how::write_some, std::span(out.data(), out.size()), lim, &slots[2]));
    ctx.spawn(with_lvalue(s, how::write_all, std::span(out.data(), out.size()), lim, &slots[3]));
    ctx.spawn(with_lvalue(m, how::send, std::span(out.data(), out.size()), lim, &slots[4]));
    ctx.spawn(with_lvalue(m, how::receive_bytes, buf, lim, &slots[5]));
    ctx.spawn(with_lvalue(f, how::write_some, std::span(out.data(), out.size()), lim, &slots[6]));
    ctx.spawn(with_lvalue(f, how::write_all, std::span(out.data(), out.size()), lim, &slots[7]));
    REQUIRE(ctx.poll() == 8);
    for (auto& sl : slots) {
        CHECK(sl.done);
        CHECK(canceled(sl.r));
        CHECK(sl.r.partial_value() == 0);
    }
    REQUIRE(sq_tail(ctx) == tail0);
    REQUIRE(readable_bytes(s) == 4);
    REQUIRE(drain_fd(peer.native_handle()).empty());
    REQUIRE(drain_fd(f_peer.native_handle()).empty());
    REQUIRE(drain_fd(m_peer.native_handle()).empty());
    char mb[8];
    REQUIRE(::recv(m.native_handle(), mb, sizeof mb, MSG_DONTWAIT) == 3);
    REQUIRE(lim.stop.stop_possible());
    REQUIRE(buf == std::array<char, 8>{});
    REQUIRE(ctx.outstanding_work() == 0);
}

// ---------------------------------------------------------------------------------
// Time limits behind a busy direction and on receives.
// ---------------------------------------------------------------------------------

TEST_CASE("op_limits move: a time limit on a read gated behind another read fires; the next read without limits "
          "does not time out",
          "[op_limits_move]") {
    const bool with_token = GENERATE(false, true);
    fd_leak_guard guard;
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    std::stop_source src;
    op_limits lim = with_token ? op_limits(src.get_token(), 30ms) : op_limits(30ms);
    std::array<char, 1> hb{}, nb{};
    std::array<char, 8> gb{};
    slot holder, gated, next;
    ctx.spawn(plain(s, how::read_some, hb, &holder));
    ctx.spawn(with_lvalue(s, how::read_some, gb, lim, &gated));
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE(pump(ctx, [&] { return gated.done; }));
    const auto waited = std::chrono::steady_clock::now() - t0;
    REQUIRE(timed_out(gated.r));
    REQUIRE(waited >= 25ms);
    REQUIRE(waited < 2s);
    REQUIRE_FALSE(holder.done);
    // Right after: one without limits, gated behind the same holder.
    ctx.spawn(plain(s, how::read_some, nb, &next));
    pump_for(ctx, 100ms);  // well past the other's time limit
    REQUIRE_FALSE(next.done);
    raw_send(peer, "12");
    REQUIRE(pump(ctx, [&] { return holder.done && next.done; }));
    REQUIRE(holder.r.value() == 1);
    REQUIRE(next.r.value() == 1);
    REQUIRE(hb[0] == '1');
    REQUIRE(nb[0] == '2');
    REQUIRE(lim.timeout == std::chrono::nanoseconds(30ms));
    REQUIRE(lim.stop.stop_possible() == with_token);
    REQUIRE_FALSE(src.stop_requested());
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits move: a time limit on a write gated behind a blocked write_all fires; nothing of it is sent",
          "[op_limits_move]") {
    const bool with_token = GENERATE(false, true);
    fd_leak_guard guard;
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    std::stop_source src;
    op_limits lim = with_token ? op_limits(src.get_token(), 30ms) : op_limits(30ms);
    const std::size_t filled = fill_send_path(s.native_handle());
    std::string hold(20000, 'h');
    std::string timed(5000, 't');
    std::string last(3000, 'l');
    slot holder, gated, after;
    ctx.spawn(plain(s, how::write_all, std::span(hold.data(), hold.size()), &holder));
    ctx.spawn(with_lvalue(s, how::write_some, std::span(timed.data(), timed.size()), lim, &gated));
    REQUIRE(pump(ctx, [&] { return gated.done; }));
    REQUIRE(timed_out(gated.r));
    REQUIRE(gated.r.partial_value() == 0);
    REQUIRE_FALSE(holder.done);
    ctx.spawn(plain(s, how::write_all, std::span(last.data(), last.size()), &after));
    pump_for(ctx, 60ms);
    REQUIRE_FALSE(after.done);
    std::string got;
    const int peer_fd = peer.native_handle();  // clang 14 cannot capture a structured binding
    REQUIRE(pump(ctx, [&] {
        got += drain_fd(peer_fd);
        return holder.done && after.done;
    }));
    got += drain_fd(peer_fd);
    REQUIRE(holder.r.value() == hold.size());
    REQUIRE(after.r.value() == last.size());
    REQUIRE(got.size() == filled + hold.size() + last.size());
    REQUIRE(got.find('t') == std::string::npos);
    REQUIRE(got.substr(filled) == hold + last);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits move: receives alternate between a time limit that fires and none at all", "[op_limits_move]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    std::stop_source src;
    op_limits timed{src.get_token(), 5ms};
    op_limits due = 0ms;  // already due
    std::array<char, 8> buf{};
    int timeouts = 0, reads = 0;
    for (int i = 0; i < 20; ++i) {
        slot t, n;
        ctx.spawn(with_lvalue(s, how::read_some, buf, i % 2 ? due : timed, &t));
        REQUIRE(run_within(ctx));
        timeouts += t.done && timed_out(t.r);
        // Right after, a read without limits while the data comes later than the
        // previous limit would have fired.
        ctx.spawn(plain(s, how::read_some, buf, &n));
        ctx.spawn(raw_send_later(ctx, &peer, "x", 20ms));
        REQUIRE(run_within(ctx));
        reads += n.done && n.r && *n.r == 1;
    }
    REQUIRE(timeouts == 20);
    REQUIRE(reads == 20);
    REQUIRE(timed.stop.stop_possible());
    REQUIRE(ctx.outstanding_work() == 0);
}

// ---------------------------------------------------------------------------------
// Receives queued late whose socket goes away before the end of the turn.
// ---------------------------------------------------------------------------------

namespace {

enum class gone { close, destroy, move_assign, release };

task<void> take_socket_away(io_context& ctx, std::unique_ptr<stream_socket>* s, gone g, const slot* reader,
                            bool* reader_was_pending, std::optional<std::pair<stream_socket, stream_socket>>* fresh,
                            ringsock::unique_fd* released) {
    *reader_was_pending = !reader->done;
    switch (g) {
        case gone::close: (*s)->close(); break;
        case gone::destroy: s->reset(); break;
        case gone::move_assign: {
            auto [x, y] = make_pair(ctx);
            **s = std::move(x);  // closes the old socket first
            break;
        }
        case gone::release: *released = (*s)->release(); break;
    }
    // A new pair right away: with luck it reuses the closed descriptor's number.
    fresh->emplace(make_pair(ctx));
    raw_send((*fresh)->second, "z");
    co_return;
}

}  // namespace

TEST_CASE("op_limits move: a receive queued late whose socket is closed, destroyed, replaced or released in the "
          "same turn ends cancelled and touches nothing",
          "[op_limits_move]") {
    const int lim_kind = GENERATE(0, 1, 2, 3);  // none; token; token + time limit; time limit
    const gone g = GENERATE(gone::close, gone::destroy, gone::move_assign, gone::release);
    fd_leak_guard guard;
    io_context ctx;
    auto [s0, peer] = make_pair(ctx);
    auto s = std::make_unique<stream_socket>(std::move(s0));
    std::stop_source src;
    op_limits lim;
    if (lim_kind == 1) lim = op_limits(src.get_token());
    if (lim_kind == 2) lim = op_limits(src.get_token(), 1h);
    if (lim_kind == 3) lim = op_limits(1h);
    std::array<char, 8> buf{};
    slot r;
    bool pending = false;
    std::optional<std::pair<stream_socket, stream_socket>> fresh;
    ringsock::unique_fd released;
    ctx.spawn(with_lvalue(*s, how::read_some, buf, lim, &r));
    ctx.spawn(take_socket_away(ctx, &s, g, &r, &pending, &fresh, &released));
    REQUIRE(ctx.poll() == 2);
    REQUIRE(pending);
    // Whatever the new socket's peer sent is still there, and (release) so is what the
    // old peer sends now to the descriptor that changed hands.
    if (g == gone::release) raw_send(peer, "old");
    REQUIRE(pump(ctx, [&] { return r.done; }));
    REQUIRE(canceled(r.r));
    REQUIRE(r.r.partial_value() == 0);
    REQUIRE(buf == std::array<char, 8>{});
    REQUIRE(readable_bytes(fresh->first) == 1);
    if (g == gone::release) {
        char rb[8];
        REQUIRE(::recv(released.get(), rb, sizeof rb, MSG_DONTWAIT) == 3);
    }
    REQUIRE(run_within(ctx));
    REQUIRE(ctx.outstanding_work() == 0);
}

namespace {

task<void> move_socket_away(std::unique_ptr<stream_socket>* s, std::unique_ptr<stream_socket>* to) {
    *to = std::make_unique<stream_socket>(std::move(**s));
    s->reset();
    co_return;
}

}  // namespace

TEST_CASE("op_limits move: a receive queued late follows its socket moved in the same turn, and its token still works",
          "[op_limits_move]") {
    const bool stop_it = GENERATE(false, true);
    fd_leak_guard guard;
    io_context ctx;
    auto [s0, peer] = make_pair(ctx);
    auto s = std::make_unique<stream_socket>(std::move(s0));
    std::unique_ptr<stream_socket> moved;
    std::stop_source src;
    op_limits lim{src.get_token()};
    std::array<char, 8> buf{};
    slot r;
    ctx.spawn(with_lvalue(*s, how::read_some, buf, lim, &r));
    ctx.spawn(move_socket_away(&s, &moved));
    REQUIRE(ctx.poll() == 2);
    REQUIRE_FALSE(r.done);
    if (stop_it) {
        stop_from_other_thread(src);
        REQUIRE(pump(ctx, [&] { return r.done; }));
        REQUIRE(canceled(r.r));
    } else {
        raw_send(peer, "moved");
        REQUIRE(pump(ctx, [&] { return r.done; }));
        REQUIRE(r.r.value() == 5);
        REQUIRE(std::string_view(buf.data(), 5) == "moved");
    }
    REQUIRE(ctx.outstanding_work() == 0);
}

// ---------------------------------------------------------------------------------
// Partial counts of whole transfers cancelled midway.
// ---------------------------------------------------------------------------------

namespace {

struct stream_progress {
    std::string got;
    bool writer_done = false;
};

/// Reads `peer` in small pieces; past `threshold` bytes, requests stop (from the loop,
/// or lets another thread see it through `seen`), then waits for the writer to end and
/// takes what is left without the ring.
template <class S>
task<void> slow_reader(io_context& ctx, S& peer, std::size_t threshold, std::stop_source* src, bool stop_here,
                       std::atomic<std::size_t>* seen, const slot* writer, stream_progress* p) {
    std::array<char, 4096> buf{};
    while (p->got.size() < threshold && !writer->done) {
        auto r = co_await peer.read_some(buf);
        if (!r || *r == 0) break;
        p->got.append(buf.data(), *r);
        seen->store(p->got.size(), std::memory_order_release);
    }
    if (stop_here) src->request_stop();
    while (!writer->done) {
        // Keep the pipe moving so a write_all that has not seen the stop yet can advance.
        p->got += drain_fd(peer.native_handle());
        co_await ctx.yield();
    }
    p->got += drain_fd(peer.native_handle());
    p->writer_done = true;
}

/// write_all of `size` bytes on `s` with a token, into a slow reader on `peer` over small
/// socket buffers, stopped once the reader has `threshold` bytes (from the loop or from
/// another thread): the count it reports must be exactly what the peer got.
template <class S>
void write_all_cancelled_midway(io_context& ctx, S& s, S& peer, std::size_t size, std::size_t threshold,
                                int variant, bool from_other_thread, std::stop_source& src) {
    int small = 4096;
    REQUIRE(::setsockopt(s.native_handle(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    REQUIRE(::setsockopt(peer.native_handle(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    op_limits lim = limits_for(variant, src);
    std::string payload = pattern(size);
    slot w;
    stream_progress p;
    std::atomic<std::size_t> seen{0};
    std::atomic<bool> give_up{false};
    ctx.spawn(with_lvalue(s, how::write_all, std::span(payload.data(), payload.size()), lim, &w));
    ctx.spawn(slow_reader(ctx, peer, threshold, &src, !from_other_thread, &seen, &w, &p));
    std::thread stopper;
    if (from_other_thread) {
        stopper = std::thread([&] {
            while (seen.load(std::memory_order_acquire) < threshold && !give_up.load()) std::this_thread::yield();
            src.request_stop();
        });
    }
    const bool finished = pump(ctx, [&] { return p.writer_done; }, 20000ms);
    if (stopper.joinable()) {
        give_up = true;
        stopper.join();
    }
    REQUIRE(finished);
    REQUIRE(w.done);
    REQUIRE(canceled(w.r));
    INFO("partial " << w.r.partial_value() << ", peer got " << p.got.size());
    REQUIRE(w.r.partial_value() >= threshold);
    REQUIRE(w.r.partial_value() < payload.size());
    REQUIRE(p.got.size() == w.r.partial_value());
    REQUIRE(p.got == payload.substr(0, p.got.size()));
    REQUIRE(lim.stop.stop_possible());
}

}  // namespace

TEST_CASE("op_limits move: write_all with a token over many partial chunks, cancelled midway, reports exactly what "
          "the peer got",
          "[op_limits_move]") {
    const int variant = GENERATE(0, 1);
    const bool from_other_thread = GENERATE(false, true);
    fd_leak_guard guard;
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    std::stop_source src;
    write_all_cancelled_midway(ctx, s, peer, 8 * 1024 * 1024, 256 * 1024, variant, from_other_thread, src);
    // A write_all cut short leaves the stream broken.
    slot again;
    std::string ten(10, 'x');
    ctx.spawn(plain(s, how::write_all, std::span(ten.data(), ten.size()), &again));
    REQUIRE(run_within(ctx));
    REQUIRE_FALSE(again.r.has_value());
    REQUIRE(again.r.error() == ringsock::errc::stream_broken);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits move: fd_stream write_all with a token, cancelled midway, reports exactly what the peer got",
          "[op_limits_move]") {
    const int variant = GENERATE(0, 1);
    const bool from_other_thread = GENERATE(false, true);
    fd_leak_guard guard;
    io_context ctx;
    auto [f, f_peer] = fd_stream::pair(ctx).value();
    std::stop_source src;
    write_all_cancelled_midway(ctx, f, f_peer, 4 * 1024 * 1024, 128 * 1024, variant, from_other_thread, src);
    REQUIRE(ctx.outstanding_work() == 0);
}

namespace {

/// Writes `data` to `peer` in `pieces` write_all calls a little apart, then marks done.
task<void> paced_writer(io_context& ctx, stream_socket& peer, const std::string* data, int pieces, bool* done) {
    const std::size_t step = data->size() / static_cast<std::size_t>(pieces);
    for (int i = 0; i < pieces; ++i) {
        const std::size_t from = step * static_cast<std::size_t>(i);
        const std::size_t n = i + 1 == pieces ? data->size() - from : step;
        (void)co_await peer.write_all(std::string_view(data->data() + from, n));
        (void)co_await ringsock::sleep_for(ctx, 2ms);
    }
    *done = true;
}

}  // namespace

TEST_CASE("op_limits move: read_exact with a token over many chunks, cancelled midway, reports exactly what it took",
          "[op_limits_move]") {
    const int variant = GENERATE(0, 1);
    const bool from_other_thread = GENERATE(false, true);
    fd_leak_guard guard;
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    int small = 4096;
    REQUIRE(::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    std::stop_source src;
    op_limits lim = limits_for(variant, src);
    const std::string sent = pattern(300000);
    std::vector<char> buf(1024 * 1024, '\0');
    slot r;
    bool writer_done = false;
    ctx.spawn(with_lvalue(s, how::read_exact, std::span(buf.data(), buf.size()), lim, &r));
    ctx.spawn(paced_writer(ctx, peer, &sent, 30, &writer_done));
    REQUIRE(pump(ctx, [&] { return writer_done; }, 10000ms));
    REQUIRE_FALSE(r.done);
    if (from_other_thread) stop_from_other_thread(src);
    else ctx.spawn(stop_from_loop(&src));
    REQUIRE(pump(ctx, [&] { return r.done; }));
    REQUIRE(canceled(r.r));
    const std::size_t took = r.r.partial_value();
    const std::string rest = drain_fd(s.native_handle());
    INFO("took " << took << ", left " << rest.size());
    REQUIRE(took + rest.size() == sent.size());
    REQUIRE(std::string_view(buf.data(), took) == std::string_view(sent).substr(0, took));
    REQUIRE(rest == sent.substr(took));
    REQUIRE(lim.stop.stop_possible());
    REQUIRE(ctx.outstanding_work() == 0);
}

namespace {

/// Takes whatever reaches `peer` without the ring, a turn at a time, until the writer
/// has ended; then the rest.
task<void> raw_drainer(io_context& ctx, const stream_socket& peer, const slot* writer, stream_progress* p) {
    while (!writer->done) {
        p->got += drain_fd(peer.native_handle());
        co_await ctx.yield();
    }
    p->got += drain_fd(peer.native_handle());
    p->writer_done = true;
}

}  // namespace

TEST_CASE("op_limits move: write_all whose time limit expires over many partial chunks reports exactly what the "
          "peer got",
          "[op_limits_move]") {
    const bool with_token = GENERATE(false, true);
    fd_leak_guard guard;
    std::string payload = pattern(32 * 1024 * 1024);
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    int small = 4096;
    REQUIRE(::setsockopt(s.native_handle(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    REQUIRE(::setsockopt(peer.native_handle(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    std::stop_source src;
    op_limits lim = with_token ? op_limits(src.get_token(), 40ms) : op_limits(40ms);
    slot w;
    stream_progress p;
    ctx.spawn(with_lvalue(s, how::write_all, std::span(payload.data(), payload.size()), lim, &w));
    ctx.spawn(raw_drainer(ctx, peer, &w, &p));
    REQUIRE(pump(ctx, [&] { return p.writer_done; }, 20000ms));
    REQUIRE(timed_out(w.r));
    INFO("partial " << w.r.partial_value() << ", peer got " << p.got.size());
    REQUIRE(w.r.partial_value() > 0);
    REQUIRE(w.r.partial_value() < payload.size());
    REQUIRE(p.got.size() == w.r.partial_value());
    REQUIRE(p.got == payload.substr(0, p.got.size()));
    REQUIRE_FALSE(src.stop_requested());
    REQUIRE(lim.stop.stop_possible() == with_token);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits move: read_exact whose time limit expires while the data trickles in reports exactly what it "
          "took",
          "[op_limits_move]") {
    const bool with_token = GENERATE(false, true);
    fd_leak_guard guard;
    const std::string sent = pattern(300000);
    std::vector<char> buf(1024 * 1024, '\0');
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    int small = 4096;
    REQUIRE(::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    std::stop_source src;
    op_limits lim = with_token ? op_limits(src.get_token(), 30ms) : op_limits(30ms);
    slot r;
    bool writer_done = false;
    ctx.spawn(with_lvalue(s, how::read_exact, std::span(buf.data(), buf.size()), lim, &r));
    ctx.spawn(paced_writer(ctx, peer, &sent, 30, &writer_done));
    REQUIRE(pump(ctx, [&] { return r.done; }, 10000ms));
    REQUIRE(timed_out(r.r));
    const std::size_t took = r.r.partial_value();
    // Nothing reads s any more: take the rest without the ring, or the writer blocks.
    std::string rest;
    const int s_fd = s.native_handle();  // clang 14 cannot capture a structured binding
    REQUIRE(pump(ctx, [&] {
        rest += drain_fd(s_fd);
        return writer_done;
    }, 10000ms));
    rest += drain_fd(s_fd);
    INFO("took " << took << ", left " << rest.size());
    REQUIRE(took > 0);
    REQUIRE(took + rest.size() == sent.size());
    REQUIRE(std::string_view(buf.data(), took) == std::string_view(sent).substr(0, took));
    REQUIRE(rest == sent.substr(took));
    REQUIRE(ctx.outstanding_work() == 0);
}

// ---------------------------------------------------------------------------------
// Message sockets.
// ---------------------------------------------------------------------------------

TEST_CASE("op_limits move: seqpacket send and receive_bytes share one lvalue; a stop cancels both, whole messages "
          "only",
          "[op_limits_move]") {
    const int variant = GENERATE(0, 1);
    fd_leak_guard guard;
    io_context ctx;
    auto [m, m_peer] = seqpacket_socket::pair(ctx).value();
    std::stop_source src;
    op_limits lim = limits_for(variant, src);

    // Messages in a row with the same lvalue.
    int ok = 0;
    for (int i = 0; i < 100; ++i) {
        std::string msg = "msg" + std::to_string(i);
        std::array<char, 16> in{};
        slot w, r;
        ctx.spawn(with_lvalue(m, how::send, std::span(msg.data(), msg.size()), lim, &w));
        ctx.spawn(with_lvalue(m_peer, how::receive_bytes, in, lim, &r));
        REQUIRE(run_within(ctx));
        ok += w.r && r.r && *r.r == msg.size() && std::string_view(in.data(), *r.r) == msg;
    }
    REQUIRE(ok == 100);
    REQUIRE(lim.stop.stop_possible());

    // Fill m's path with 100-byte messages, then a send and two receives wait.
    int small = 4096;
    REQUIRE(::setsockopt(m.native_handle(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    int fillers = 0;
    std::string filler(100, 'f');
    while (::send(m.native_handle(), filler.data(), filler.size(), MSG_DONTWAIT) == 100) ++fillers;
    REQUIRE(fillers > 0);
    std::string blocked(100, 'g');
    std::array<char, 16> in1{}, in2{};
    slot w, r1, r2;
    ctx.spawn(with_lvalue(m, how::send, std::span(blocked.data(), blocked.size()), lim, &w));
    ctx.spawn(with_lvalue(m, how::receive_bytes, in1, lim, &r1));
    ctx.spawn(with_lvalue(m, how::receive_bytes, in2, lim, &r2));  // gated
    pump_for(ctx, 20ms);
    REQUIRE_FALSE(w.done);
    REQUIRE_FALSE(r1.done);
    REQUIRE_FALSE(r2.done);
    stop_from_other_thread(src);
    REQUIRE(pump(ctx, [&] { return w.done && r1.done && r2.done; }));
    CHECK(canceled(w.r));
    CHECK(canceled(r1.r));
    CHECK(canceled(r2.r));
    // The peer holds the fillers and nothing else.
    int got = 0, others = 0;
    char mb[256];
    for (;;) {
        const ssize_t n = ::recv(m_peer.native_handle(), mb, sizeof mb, MSG_DONTWAIT);
        if (n < 0) break;
        if (n == 100 && mb[0] == 'f') ++got;
        else ++others;
    }
    REQUIRE(got == fillers);
    REQUIRE(others == 0);
    // A receive without limits afterwards gets the next message whole.
    REQUIRE(::send(m_peer.native_handle(), "m1", 2, 0) == 2);
    slot after;
    ctx.spawn(plain(m, how::receive_bytes, in1, &after));
    REQUIRE(run_within(ctx));
    REQUIRE(after.r.value() == 2);
    REQUIRE(std::string_view(in1.data(), 2) == "m1");
    REQUIRE(ctx.outstanding_work() == 0);
}

namespace {

task<void> send_msg_later(io_context& ctx, int fd, std::string msg, std::chrono::milliseconds after) {
    (void)co_await ringsock::sleep_for(ctx, after);
    (void)::send(fd, msg.data(), msg.size(), 0);
}

}  // namespace

TEST_CASE("op_limits move: receive_bytes with a time limit times out, the next one without limits does not",
          "[op_limits_move]") {
    const bool datagram = GENERATE(false, true);
    fd_leak_guard guard;
    io_context ctx;
    std::stop_source src;
    op_limits lim{src.get_token(), 10ms};
    auto run_on = [&](auto& a, auto& b) {
        std::array<char, 16> in{};
        int ok = 0;
        for (int i = 0; i < 10; ++i) {
            slot t, n;
            ctx.spawn(with_lvalue(a, how::receive_bytes, in, lim, &t));
            if (!run_within(ctx)) return -1;
            ok += timed_out(t.r);
            ctx.spawn(plain(a, how::receive_bytes, in, &n));
            ctx.spawn(send_msg_later(ctx, b.native_handle(), "late", 30ms));
            if (!run_within(ctx)) return -1;
            ok += n.r && *n.r == 4 && std::string_view(in.data(), 4) == "late";
        }
        return ok;
    };
    if (datagram) {
        auto [a, b] = datagram_socket::pair(ctx).value();
        REQUIRE(run_on(a, b) == 20);
    } else {
        auto [a, b] = seqpacket_socket::pair(ctx).value();
        REQUIRE(run_on(a, b) == 20);
    }
    REQUIRE(lim.stop.stop_possible());
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits move: datagram send to a full peer and receive_bytes with one lvalue; a stop cancels both",
          "[op_limits_move]") {
    const int variant = GENERATE(0, 1);
    fd_leak_guard guard;
    io_context ctx;
    auto [a, b] = datagram_socket::pair(ctx).value();
    std::stop_source src;
    op_limits lim = limits_for(variant, src);
    int fillers = 0;
    const std::uint32_t fv = 0xf111e4;
    while (::send(a.native_handle(), &fv, sizeof fv, MSG_DONTWAIT) == 4) ++fillers;
    REQUIRE(fillers > 0);
    std::array<char, 4> gv{'g', 'g', 'g', 'g'};
    std::array<char, 16> in{};
    slot w, r;
    ctx.spawn(with_lvalue(a, how::send, gv, lim, &w));
    ctx.spawn(with_lvalue(a, how::receive_bytes, in, lim, &r));
    pump_for(ctx, 20ms);
    REQUIRE_FALSE(w.done);
    REQUIRE_FALSE(r.done);
    stop_from_other_thread(src);
    REQUIRE(pump(ctx, [&] { return w.done && r.done; }));
    CHECK(canceled(w.r));
    CHECK(canceled(r.r));
    int got = 0, others = 0;
    for (;;) {
        std::uint32_t v = 0;
        const ssize_t n = ::recv(b.native_handle(), &v, sizeof v, MSG_DONTWAIT);
        if (n < 0) break;
        if (n == 4 && v == fv) ++got;
        else ++others;
    }
    REQUIRE(got == fillers);
    REQUIRE(others == 0);
    REQUIRE(lim.stop.stop_possible());
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("op_limits move: one const lvalue read by operations on four loops in four threads; one stop cancels all",
          "[op_limits_move][race]") {
    const int variant = GENERATE(0, 1);
    fd_leak_guard guard;
    std::stop_source src;
    const op_limits lim = limits_for(variant, src);
    constexpr int loops = 4, per_loop = 8;
    std::atomic<int> waiting{0};
    std::array<int, loops> canceled_n{};
    std::array<bool, loops> ran_out{};
    std::vector<std::thread> threads;
    for (int t = 0; t < loops; ++t) {
        threads.emplace_back([&, t] {
            io_context ctx;
            std::vector<std::pair<stream_socket, stream_socket>> pairs;
            for (int i = 0; i < per_loop; ++i) pairs.emplace_back(stream_socket::pair(ctx).value());
            std::vector<std::array<char, 8>> bufs(per_loop);
            std::vector<slot> slots(per_loop);
            for (int i = 0; i < per_loop; ++i)
                ctx.spawn(with_const_lvalue(pairs[i].first, i % 2 ? how::read_exact : how::read_some, bufs[i], lim,
                                            &slots[i]));
            ctx.poll();
            ctx.poll();
            waiting.fetch_add(1);
            ran_out[t] = run_within(ctx);
            for (auto& sl : slots) canceled_n[t] += sl.done && canceled(sl.r);
        });
    }
    const auto t0 = std::chrono::steady_clock::now();
    while (waiting.load() < loops && std::chrono::steady_clock::now() - t0 < 5s) std::this_thread::yield();
    std::this_thread::sleep_for(5ms);
    src.request_stop();
    for (auto& th : threads) th.join();
    for (int t = 0; t < loops; ++t) {
        CHECK(ran_out[t]);
        CHECK(canceled_n[t] == per_loop);
    }
    REQUIRE(lim.stop.stop_possible());
    REQUIRE(lim.stop.stop_requested());
}

// ---------------------------------------------------------------------------------
// Races: stop requests from another thread at random moments of an operation's life.
// ---------------------------------------------------------------------------------

TEST_CASE("op_limits move: 300 stop requests from another thread at random moments always cancel, never time out",
          "[op_limits_move][race]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [s, peer] = make_pair(ctx);
    auto [w, w_peer] = make_pair(ctx);
    auto [m, m_peer] = seqpacket_socket::pair(ctx).value();
    (void)fill_send_path(w.native_handle());
    std::mt19937 rng(12345);
    std::uniform_int_distribution<int> delay_us(0, 400);
    std::string big(16 * 1024, 'x');
    int canceled_n = 0;
    for (int i = 0; i < 300; ++i) {
        std::stop_source src;
        // A long time limit as a watchdog: a lost cancel shows up as timed_out, not a hang.
        op_limits lim{src.get_token(), 5s};
        std::array<char, 8> buf{};
        slot r;
        switch (i % 3) {
            case 0: ctx.spawn(with_lvalue(s, how::read_some, buf, lim, &r)); break;
            case 1: ctx.spawn(with_lvalue(w, how::write_some, std::span(big.data(), big.size()), lim, &r)); break;
            case 2: ctx.spawn(with_lvalue(m, how::receive_bytes, buf, lim, &r)); break;
        }
        const int d = delay_us(rng);
        std::thread t([&src, d] {
            std::this_thread::sleep_for(std::chrono::microseconds(d));
            src.request_stop();
        });
        const bool ran_out = run_within(ctx);
        t.join();
        REQUIRE(ran_out);
        if (r.done && canceled(r.r) && r.r.partial_value() == 0) ++canceled_n;
        else FAIL_CHECK("iteration " << i << ": " << r.r.error().message());
        REQUIRE(lim.stop.stop_possible());
    }
    REQUIRE(canceled_n == 300);
    REQUIRE(readable_bytes(s) == 0);
    REQUIRE(ctx.outstanding_work() == 0);
}
