// Hostile tests for the lean operation path (direct SQE preparation, the typed late
// list, the in-place CQ reap, the inline enter, uninitialized deadline/retry fields, and
// the shortcuts in socket destruction and moves): sockets closed, moved and destroyed
// while direct-path operations sit in the late list, the SQ or the kernel; the in-flight
// cap and a full SQ with direct and general operations mixed; a CQ overflowing. Run under
// ASan+UBSan and valgrind; every case also checks for leaked descriptors.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <liburing.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <thread>
#include <cstddef>
#include <cstring>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/leak_guard.hpp"
#include "support/turn_support.hpp"

namespace {

using namespace std::chrono_literals;
using ringsock::buffer_ring;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::lent_buffer;
using ringsock::stream_socket;
using ringsock::task;
using ringsock::unique_fd;
using ringsock::test::canceled;
using ringsock::test::raw_send_fd;
using ringsock::test::counted;
using ringsock::test::drain_fd;
using ringsock::test::fd_leak_guard;
using ringsock::test::fill_send_path;
using ringsock::test::make_pair;
using ringsock::test::pump;
using ringsock::test::raw_send;

using pair_t = std::pair<stream_socket, stream_socket>;

std::string pattern(char c, std::size_t n) { return std::string(n, c); }

/// Raises the descriptor limit to the hard limit; returns the soft limit now in force.
rlim_t raise_nofile() {
    rlimit rl{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &rl) == 0);
    rl.rlim_cur = rl.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &rl);
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &rl) == 0);
    return rl.rlim_cur;
}

/// Spawns a plain read on the first socket of each pair (counting in `done` when one
/// ends): reads that stay in flight until the pairs are destroyed.
void spawn_idle_reads(io_context& ctx, std::vector<pair_t>& pairs, int& done) {
    for (auto& q : pairs) {
        ctx.spawn([](stream_socket& s, int& count) -> task<void> {
            std::array<char, 8> buf{};
            (void)co_await s.read_some(buf);
            ++count;
        }(q.first, done));
    }
}

/// A context and two connected pairs on it, behind a descriptor-leak guard.
struct two_pairs {
    fd_leak_guard guard;
    io_context ctx;
    pair_t p = make_pair(ctx);
    pair_t q = make_pair(ctx);
};

/// Options under which a socket takes a registered slot with its first request.
io_context::options register_at_once() {
    io_context::options opts;
    opts.registered_files = 4;
    opts.register_after = 1;
    return opts;
}

/// Reads exactly `n` bytes from `s` through the ring (with or without a stop token).
task<void> ring_read_exact(stream_socket& s, std::size_t n, std::string& out, std::stop_token tok, bool use_tok) {
    std::string buf(n, '\0');
    std::span<char> sp(buf.data(), buf.size());
    // if/else, not ?: -- g++ 12 mishandles co_await in a nested conditional expression.
    bool ok = false;
    if (use_tok) ok = static_cast<bool>(co_await s.read_exact(sp, tok));
    else ok = static_cast<bool>(co_await s.read_exact(sp));
    if (ok) out += buf;
}

/// `n` connected pairs: our ends, each on the heap so a test can destroy one while the
/// rest live on, and their peers.
struct socket_pairs {
    std::vector<std::unique_ptr<stream_socket>> mine;
    std::vector<stream_socket> peers;
};
socket_pairs make_pairs(io_context& ctx, int n) {
    socket_pairs s;
    for (int i = 0; i < n; ++i) {
        auto p = make_pair(ctx);
        s.mine.push_back(std::make_unique<stream_socket>(std::move(p.first)));
        s.peers.push_back(std::move(p.second));
    }
    return s;
}

}  // namespace

// ---------------------------------------------------------------------------------
// The late list: receives queued for the end of the turn.
// ---------------------------------------------------------------------------------

TEST_CASE("lean: receives queued late are cancelled when a later coroutine of the same turn closes or destroys their sockets",
          "[lean][late]") {
    fd_leak_guard guard;
    io_context ctx;
    constexpr int n = 60;
    socket_pairs pairs = make_pairs(ctx, n);
    auto& mine = pairs.mine;
    auto& peers = pairs.peers;
    std::vector<int> resumed(n, 0);
    std::vector<std::error_code> ecs(n);
    std::vector<std::string> got(n);
    for (int i = 0; i < n; ++i) {
        ctx.spawn([](io_context& c, stream_socket& s, int& count, std::error_code& ec, std::string& out) -> task<void> {
            co_await c.yield();
            std::array<char, 32> buf{};
            auto r = co_await s.read_some(buf);  // no limit, no token: the direct path, queued late
            ++count;
            if (r) out.assign(buf.data(), *r);
            else ec = r.error();
        }(ctx, *mine[static_cast<std::size_t>(i)], resumed[static_cast<std::size_t>(i)],
                ecs[static_cast<std::size_t>(i)], got[static_cast<std::size_t>(i)]));
    }
    // Spawned last: its yield resumes after every reader's, in the same turn, while their
    // receives wait in the late list. i % 3: 0 closes, 1 destroys, 2 leaves alone.
    ctx.spawn([](io_context& c, std::vector<std::unique_ptr<stream_socket>>& socks) -> task<void> {
        co_await c.yield();
        for (std::size_t i = 0; i < socks.size(); ++i) {
            if (i % 3 == 0) socks[i]->close();
            if (i % 3 == 1) socks[i].reset();
        }
    }(ctx, mine));
    REQUIRE(pump(ctx, [&] {
        for (int i = 0; i < n; ++i)
            if (i % 3 != 2 && resumed[static_cast<std::size_t>(i)] == 0) return false;
        return true;
    }));
    for (int i = 2; i < n; i += 3) raw_send(peers[static_cast<std::size_t>(i)], "late-" + std::to_string(i));
    ctx.run();
    for (int i = 0; i < n; ++i) {
        const auto k = static_cast<std::size_t>(i);
        CHECK(resumed[k] == 1);
        if (i % 3 == 2) CHECK(got[k] == "late-" + std::to_string(i));
        else CHECK(canceled(ecs[k]));
    }
}

TEST_CASE("lean: a socket moved while its receive waits in the late list delivers the data through the new object",
          "[lean][late][move]") {
    fd_leak_guard guard;
    io_context ctx;
    auto p = make_pair(ctx);
    auto old_sock = std::make_unique<stream_socket>(std::move(p.first));
    std::unique_ptr<stream_socket> moved;
    std::string got;
    int resumed = 0;
    ctx.spawn([](io_context& c, stream_socket& s, std::string& out, int& count) -> task<void> {
        co_await c.yield();
        std::array<char, 32> buf{};
        auto r = co_await s.read_some(buf);
        ++count;
        if (r) out.assign(buf.data(), *r);
    }(ctx, *old_sock, got, resumed));
    ctx.spawn([](io_context& c, std::unique_ptr<stream_socket>& from, std::unique_ptr<stream_socket>& to) -> task<void> {
        co_await c.yield();
        to = std::make_unique<stream_socket>(std::move(*from));
        from.reset();  // the moved-from object's destructor takes the shortcut
    }(ctx, old_sock, moved));
    ctx.poll();
    ctx.poll();
    REQUIRE(moved);
    REQUIRE(resumed == 0);
    raw_send(p.second, "after the move");
    REQUIRE(pump(ctx, [&] { return resumed == 1; }));
    CHECK(got == "after the move");
    // The new object works both ways.
    auto n = ctx.sync_wait([](stream_socket& s) -> task<io_result<std::size_t>> {
        co_return co_await s.write_all(std::string_view("back"));
    }(*moved));
    REQUIRE(n);
    CHECK(drain_fd(p.second.native_handle()) == "back");
    moved.reset();
    ctx.run();
    CHECK(resumed == 1);
}

TEST_CASE("lean: moving a socket with a direct write in flight and one gated, then destroying the moved-from object, keeps byte order",
          "[lean][move]") {
    fd_leak_guard guard;
    io_context ctx;
    auto p = make_pair(ctx);
    auto a = std::make_unique<stream_socket>(std::move(p.first));
    const std::size_t filled = fill_send_path(a->native_handle());
    const std::string first = pattern('a', 100000), second = pattern('b', 100000);
    std::vector<io_result<std::size_t>> results;
    for (const std::string* s : {&first, &second}) {
        ctx.spawn([](stream_socket& sock, const std::string& data, std::vector<io_result<std::size_t>>& out) -> task<void> {
            auto r = co_await sock.write_all(data);
            out.push_back(r);
        }(*a, *s, results));
    }
    ctx.poll();
    ctx.poll();
    REQUIRE(results.empty());
    auto b = std::make_unique<stream_socket>(std::move(*a));
    a.reset();
    std::string peer;
    REQUIRE(pump(ctx, [&] {
        peer += drain_fd(p.second.native_handle());
        return results.size() == 2;
    }, 10s));
    peer += drain_fd(p.second.native_handle());
    REQUIRE(results[0]);
    REQUIRE(results[1]);
    CHECK(*results[0] == first.size());
    CHECK(*results[1] == second.size());
    CHECK(peer == pattern('f', filled) + first + second);
    b.reset();
    ctx.run();
}

// ---------------------------------------------------------------------------------
// The in-flight cap and a full SQ, with direct and general operations mixed.
// ---------------------------------------------------------------------------------

TEST_CASE("lean: on a two-entry ring, write_all with and without a stop token on one socket never interleave",
          "[lean][cap][order]") {
    fd_leak_guard guard;
    io_context::options opts;
    opts.entries = 2;
    io_context ctx(opts);
    // Idle reads on other sockets fill the in-flight cap.
    std::vector<pair_t> idle;
    for (int i = 0; i < 40; ++i) idle.push_back(make_pair(ctx));
    int idle_done = 0;
    spawn_idle_reads(ctx, idle, idle_done);
    auto p = make_pair(ctx);
    std::stop_source never;
    constexpr std::size_t len = 300000;
    const std::string chunks[4] = {pattern('a', len), pattern('b', len), pattern('c', len), pattern('d', len)};
    std::vector<char> order;
    for (int i = 0; i < 4; ++i) {
        ctx.spawn([](stream_socket& s, const std::string& data, std::stop_token tok, bool use_tok,
                     std::vector<char>& done) -> task<void> {
            std::optional<io_result<std::size_t>> r;
            if (use_tok) r.emplace(co_await s.write_all(data, tok));
            else r.emplace(co_await s.write_all(data));
            if (*r && **r == data.size()) done.push_back(data[0]);
        }(p.first, chunks[i], never.get_token(), i % 2 == 1, order));
    }
    std::string got;
    ctx.spawn([](stream_socket& s, std::string& out, std::size_t total) -> task<void> {
        std::vector<char> buf(65536);
        while (out.size() < total) {
            auto r = co_await s.read_some(std::span<char>(buf));
            if (!r || *r == 0) break;
            out.append(buf.data(), *r);
        }
    }(p.second, got, 4 * len));
    REQUIRE(pump(ctx, [&] { return got.size() == 4 * len && order.size() == 4; }, 20s));
    CHECK(order == std::vector<char>{'a', 'b', 'c', 'd'});
    CHECK(got == chunks[0] + chunks[1] + chunks[2] + chunks[3]);
    CHECK(idle_done == 0);
    idle.clear();
    ctx.run();
    CHECK(idle_done == 40);
}

TEST_CASE("lean: 400 writes started in one turn on a two-entry ring (SQ full mid-turn) all complete once, with their bytes",
          "[lean][sq_full]") {
    fd_leak_guard guard;
    io_context::options opts;
    opts.entries = 2;
    io_context ctx(opts);
    constexpr int n = 400;
    std::vector<pair_t> pairs;
    for (int i = 0; i < n; ++i) pairs.push_back(make_pair(ctx));
    std::vector<int> done(n, 0);
    std::vector<std::string> payload(n);
    for (int i = 0; i < n; ++i) {
        const auto k = static_cast<std::size_t>(i);
        payload[k] = "w" + std::to_string(i) + pattern('x', static_cast<std::size_t>(i % 7));
        ctx.spawn([](io_context& c, stream_socket& s, const std::string& data, int& count) -> task<void> {
            co_await c.yield();
            auto r = co_await s.write_all(data);
            if (r && *r == data.size()) ++count;
            else count += 100;
        }(ctx, pairs[k].first, payload[k], done[k]));
    }
    ctx.run();
    for (int i = 0; i < n; ++i) {
        const auto k = static_cast<std::size_t>(i);
        CHECK(done[k] == 1);
        CHECK(drain_fd(pairs[k].second.native_handle()) == payload[k]);
    }
}

TEST_CASE("lean: writes and reads alternating between a stop token, a time limit and neither on one socket deliver every byte in order",
          "[lean][order][stop]") {
    fd_leak_guard guard;
    io_context ctx;
    auto p = make_pair(ctx);
    std::stop_source never;
    constexpr int rounds = 300;
    std::string expect, got;
    std::vector<std::string> msgs;
    for (int i = 0; i < rounds; ++i) {
        msgs.push_back(std::string(static_cast<std::size_t>(1 + i % 50), static_cast<char>('a' + i % 26)));
        expect += msgs.back();
    }
    int writes_ok = 0;
    ctx.spawn([](stream_socket& s, const std::vector<std::string>& m, std::stop_token tok, int& ok) -> task<void> {
        for (std::size_t i = 0; i < m.size(); ++i) {
            // 0: direct; 1: stop token (general path); 3: a time limit (two SQEs, a deadline).
            // if/else, not ?: -- g++ 12 evaluates both arms of a nested conditional
            // expression holding co_await (each message was sent twice).
            std::optional<io_result<std::size_t>> r;
            if (i % 4 == 3) r.emplace(co_await s.write_all(m[i], 1h));
            else if (i % 2) r.emplace(co_await s.write_all(m[i], tok));
            else r.emplace(co_await s.write_all(m[i]));
            if (*r && **r == m[i].size()) ++ok;
        }
    }(p.first, msgs, never.get_token(), writes_ok));
    ctx.spawn([](stream_socket& s, const std::vector<std::string>& m, std::stop_token tok, std::string& out) -> task<void> {
        for (std::size_t i = 0; i < m.size(); ++i) co_await ring_read_exact(s, m[i].size(), out, tok, i % 3 == 1);
    }(p.second, msgs, never.get_token(), got));
    ctx.run();
    CHECK(writes_ok == rounds);
    CHECK(got == expect);
}

// ---------------------------------------------------------------------------------
// The CQ read in place: an overflowing completion queue.
// ---------------------------------------------------------------------------------

TEST_CASE("lean: a thousand reads completing at once overflow an 8-entry CQ and each resumes exactly once",
          "[lean][overflow]") {
    fd_leak_guard guard;
    const rlim_t lim = raise_nofile();
    const int n = lim > 2300 ? 1000 : static_cast<int>((lim - 300) / 2);
    REQUIRE(n > 100);
    io_context::options opts;
    opts.entries = 2;  // CQ of 8
    opts.registered_files = 0;
    io_context ctx(opts);
    std::vector<pair_t> pairs;
    for (int i = 0; i < n; ++i) pairs.push_back(make_pair(ctx));
    std::vector<int> resumed(static_cast<std::size_t>(n), 0);
    std::vector<std::string> got(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
        const auto k = static_cast<std::size_t>(i);
        ctx.spawn([](stream_socket& s, int& count, std::string& out) -> task<void> {
            for (int round = 0; round < 2; ++round) {
                std::array<char, 32> buf{};
                auto r = co_await s.read_some(buf);
                ++count;
                if (r) out.append(buf.data(), *r);
            }
        }(pairs[k].first, resumed[k], got[k]));
    }
    // Every read is submitted (past the cap: nothing else can run) and waits.
    for (int i = 0; i < 10; ++i) ctx.poll();
    for (int round = 0; round < 2; ++round) {
        for (int i = 0; i < n; ++i) raw_send(pairs[static_cast<std::size_t>(i)].second, "r" + std::to_string(round) + ".");
        // All completions are posted (most to the kernel's overflow list) before any reap.
        REQUIRE(ringsock::test::wait_cqes_posted(ctx, 8));
        REQUIRE(pump(ctx, [&] {
            for (int c : resumed)
                if (c < round + 1) return false;
            return true;
        }, 20s));
        for (int i = 0; i < n; ++i) REQUIRE(resumed[static_cast<std::size_t>(i)] == round + 1);
    }
    ctx.run();
    for (int i = 0; i < n; ++i) {
        const auto k = static_cast<std::size_t>(i);
        CHECK(resumed[k] == 2);
        CHECK(got[k] == "r0.r1.");
    }
}

// ---------------------------------------------------------------------------------
// Shutdown, lent buffers, a partly submitted SQ.
// ---------------------------------------------------------------------------------

TEST_CASE("lean: destroying the io_context with receives in the late list and writes in the SQ frees every frame",
          "[lean][context]") {
    fd_leak_guard guard;
    for (int variant = 0; variant < 4; ++variant) {
        io_context::options opts;
        opts.entries = variant % 2 ? 2 : 64;
        auto ctx = std::make_unique<io_context>(opts);
        for (int i = 0; i < 30; ++i) {
            auto p = make_pair(*ctx);
            ctx->spawn([](io_context& c, pair_t q, counted, int i) -> task<void> {
                auto own = std::move(q);
                co_await c.yield();
                std::array<char, 8> buf{};
                if (i % 2) (void)co_await own.first.read_some(buf);
                else (void)co_await own.first.write_all(std::string_view("written"));
                (void)co_await own.second.read_some(buf);
            }(*ctx, std::move(p), counted{}, i));
        }
        for (int k = 0; k < 1 + variant / 2; ++k) ctx->poll();
        CHECK(counted::alive == 30);
        ctx.reset();
        CHECK(counted::alive == 0);
    }
}

TEST_CASE("lean: a lent read waiting for a buffer (ring empty) ends when its socket closes, and the ring still lends",
          "[lean][buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 1, 64);
    auto p1 = make_pair(ctx);
    auto p2 = make_pair(ctx);
    std::optional<lent_buffer> held;
    raw_send(p1.second, "first");
    held.emplace(ctx.sync_wait([](stream_socket& s, buffer_ring& r) -> task<lent_buffer> {
        auto res = co_await s.read_some(r);
        REQUIRE(res);
        co_return std::move(*res);
    }(p1.first, ring)));
    CHECK(std::string(held->chars()) == "first");
    raw_send(p2.second, "starved");
    std::error_code ec;
    int resumed = 0;
    ctx.spawn([](stream_socket& s, buffer_ring& r, std::error_code& e, int& count) -> task<void> {
        auto res = co_await s.read_some(r);  // no buffer: waits (ENOBUFS)
        ++count;
        if (!res) e = res.error();
    }(p2.first, ring, ec, resumed));
    for (int i = 0; i < 10; ++i) ctx.poll();
    REQUIRE(resumed == 0);
    p2.first.close();
    REQUIRE(pump(ctx, [&] { return resumed == 1; }));
    CHECK(canceled(ec));
    held.reset();
    raw_send(p1.second, "again");
    auto again = ctx.sync_wait([](stream_socket& s, buffer_ring& r) -> task<std::string> {
        auto res = co_await s.read_some(r);
        co_return res ? std::string(res->chars()) : std::string("error");
    }(p1.first, ring));
    CHECK(again == "again");
    CHECK(ring.lent() == 0);
}

TEST_CASE("lean: an SQE left in the SQ by a submission the kernel cut short is submitted by the next enter",
          "[lean][enter]") {
    fd_leak_guard guard;
    io_context ctx;
    auto p = make_pair(ctx);
    int resumed = 0;
    std::string got;
    ctx.spawn([](io_context& c, stream_socket& s, int& count, std::string& out) -> task<void> {
        // An SQE the kernel rejects at submission (unknown opcode) stops that submission:
        // the read queued after it stays in the SQ (no IORING_SETUP_SUBMIT_ALL).
        io_uring_sqe* bad = io_uring_get_sqe(c.native_handle());
        REQUIRE(bad != nullptr);
        std::memset(bad, 0, sizeof *bad);
        bad->opcode = 0xff;
        bad->user_data = 0;  // ignored by the context
        std::array<char, 32> buf{};
        auto r = co_await s.read_some(buf);
        ++count;
        if (r) out.assign(buf.data(), *r);
    }(ctx, p.first, resumed, got));
    for (int i = 0; i < 5; ++i) ctx.poll();
    raw_send(p.second, "still submitted");
    REQUIRE(pump(ctx, [&] { return resumed == 1; }));
    CHECK(got == "still submitted");
}

// ---------------------------------------------------------------------------------
// Moves onto and of sockets whose directions are busy; registered slots.
// ---------------------------------------------------------------------------------

TEST_CASE("lean: move-assigning an idle socket onto one with a direct read in flight cancels that read and frees both directions",
          "[lean][move]") {
    two_pairs f;  // named members: clang 14 cannot capture structured bindings
    auto& ctx = f.ctx;
    auto& p = f.p;
    auto& q = f.q;
    std::error_code ec;
    int resumed = 0;
    ctx.spawn([](stream_socket& s, std::error_code& e, int& count) -> task<void> {
        std::array<char, 16> buf{};
        auto r = co_await s.read_some(buf);
        ++count;
        if (!r) e = r.error();
    }(p.first, ec, resumed));
    ctx.poll();
    ctx.poll();
    REQUIRE(resumed == 0);
    p.first = std::move(q.first);  // the source is idle: its gates are not moved
    REQUIRE(pump(ctx, [&] { return resumed == 1; }));
    CHECK(canceled(ec));
    // Both directions of the target work at once (neither left busy).
    raw_send(q.second, "to target");
    std::string got;
    auto w = ctx.sync_wait([](stream_socket& s, std::string& out) -> task<io_result<std::size_t>> {
        std::array<char, 32> buf{};
        auto r = co_await s.read_some(buf);
        if (r) out.assign(buf.data(), *r);
        co_return co_await s.write_all(std::string_view("from target"));
    }(p.first, got));
    CHECK(got == "to target");
    REQUIRE(w);
    CHECK(drain_fd(q.second.native_handle()) == "from target");
    CHECK(q.first.native_handle() < 0);
}

TEST_CASE("lean: a registered socket moved with a read in flight, its moved-from object destroyed, keeps its slot working",
          "[lean][move][registered]") {
    fd_leak_guard guard;
    io_context ctx(register_at_once());
    auto p = make_pair(ctx);
    auto a = std::make_unique<stream_socket>(std::move(p.first));
    // A few round trips so the socket takes a slot.
    for (int i = 0; i < 4; ++i) {
        auto n = ctx.sync_wait([](stream_socket& s) -> task<io_result<std::size_t>> {
            co_return co_await s.write_all(std::string_view("x"));
        }(*a));
        REQUIRE(n);
    }
    CHECK(drain_fd(p.second.native_handle()) == "xxxx");
    std::string got;
    int resumed = 0;
    ctx.spawn([](stream_socket& s, std::string& out, int& count) -> task<void> {
        std::array<char, 32> buf{};
        auto r = co_await s.read_some(buf);  // in flight on the registered slot
        ++count;
        if (r) out.assign(buf.data(), *r);
    }(*a, got, resumed));
    ctx.poll();
    ctx.poll();
    auto b = std::make_unique<stream_socket>(std::move(*a));
    a.reset();
    raw_send(p.second, "slot");
    REQUIRE(pump(ctx, [&] { return resumed == 1; }));
    CHECK(got == "slot");
    for (int i = 0; i < 3; ++i) {
        auto n = ctx.sync_wait([](stream_socket& s) -> task<io_result<std::size_t>> {
            co_return co_await s.write_all(std::string_view("y"));
        }(*b));
        REQUIRE(n);
    }
    CHECK(drain_fd(p.second.native_handle()) == "yyy");
    b.reset();
    // The descriptor is closed: the peer sees end of stream.
    std::string rest;
    CHECK(ringsock::test::wait_eof(p.second.native_handle(), rest));
    CHECK(rest.empty());
}

// ---------------------------------------------------------------------------------
// Threads: rings of a pool running direct-path operations, fed from another thread.
// ---------------------------------------------------------------------------------

TEST_CASE("lean: two pool rings ping-pong across threads with direct-path operations started by post and spawn_on",
          "[lean][threads]") {
    fd_leak_guard guard;
    constexpr int rounds = 2000;
    std::atomic<int> finished{0};
    std::atomic<int> bad{0};
    {
        ringsock::context_pool pool(2);
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
        auto pinger = [](io_context& c, int fd, std::atomic<int>& done, std::atomic<int>& errors) -> task<void> {
            stream_socket s(c, unique_fd(fd));
            std::array<char, 4> buf{};
            for (int i = 0; i < rounds; ++i) {
                auto w = co_await s.write_all(std::string_view("ping"));
                auto r = co_await s.read_exact(buf);
                if (!w || !r || std::string_view(buf.data(), 4) != "pong") ++errors;
            }
            ++done;
        };
        auto ponger = [](io_context& c, int fd, std::atomic<int>& done, std::atomic<int>& errors) -> task<void> {
            stream_socket s(c, unique_fd(fd));
            std::array<char, 4> buf{};
            for (int i = 0; i < rounds; ++i) {
                auto r = co_await s.read_exact(buf);
                if (!r || std::string_view(buf.data(), 4) != "ping") ++errors;
                auto w = co_await s.write_all(std::string_view("pong"));
                if (!w) ++errors;
            }
            ++done;
        };
        ringsock::spawn_on(pool[0], pinger(pool[0], sv[0], finished, bad));
        io_context& c1 = pool[1];
        ringsock::post(c1, [&c1, fd = sv[1], &finished, &bad, ponger] { c1.spawn(ponger(c1, fd, finished, bad)); });
        for (int i = 0; i < 20000 && finished.load() < 2; ++i) std::this_thread::sleep_for(1ms);
    }
    CHECK(finished.load() == 2);
    CHECK(bad.load() == 0);
}

// ---------------------------------------------------------------------------------
// Message, vectored and closed-socket operations on the direct path.
// ---------------------------------------------------------------------------------

TEST_CASE("lean: an fd_stream moved while its descriptor-carrying read waits in the late list queues the descriptor in the new object",
          "[lean][late][move][fds]") {
    fd_leak_guard guard;
    io_context ctx;
    auto p = ringsock::fd_stream::pair(ctx);
    REQUIRE(p);
    auto a = std::make_unique<ringsock::fd_stream>(std::move(p->first));
    ringsock::fd_stream& b = p->second;
    std::unique_ptr<ringsock::fd_stream> moved;
    std::string got;
    int resumed = 0;
    ctx.spawn([](io_context& c, ringsock::fd_stream& s, std::string& out, int& count) -> task<void> {
        co_await c.yield();
        std::array<char, 32> buf{};
        auto r = co_await s.read_some(buf);  // recv_msg_op, direct, queued late
        ++count;
        if (r) out.assign(buf.data(), *r);
    }(ctx, *a, got, resumed));
    ctx.spawn([](io_context& c, std::unique_ptr<ringsock::fd_stream>& from,
                 std::unique_ptr<ringsock::fd_stream>& to) -> task<void> {
        co_await c.yield();
        to = std::make_unique<ringsock::fd_stream>(std::move(*from));
        from.reset();
    }(ctx, a, moved));
    ctx.poll();
    ctx.poll();
    REQUIRE(moved);
    int pipefd[2];
    REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
    raw_send_fd(b.native_handle(), "with fd", pipefd[0]);
    ::close(pipefd[0]);
    REQUIRE(pump(ctx, [&] { return resumed == 1; }));
    CHECK(got == "with fd");
    REQUIRE(moved->queued_fds() == 1);
    unique_fd r = moved->take_fd();
    REQUIRE(r);
    REQUIRE(::write(pipefd[1], "z", 1) == 1);
    char z = 0;
    CHECK(::read(r.get(), &z, 1) == 1);
    CHECK(z == 'z');
    ::close(pipefd[1]);
}

TEST_CASE("lean: vectored reads queued late on sockets closed or destroyed in the same turn end cancelled, the rest get their bytes",
          "[lean][late][vectored]") {
    fd_leak_guard guard;
    io_context ctx;
    constexpr int n = 30;
    socket_pairs pairs = make_pairs(ctx, n);
    auto& mine = pairs.mine;
    auto& peers = pairs.peers;
    std::vector<int> resumed(n, 0);
    std::vector<std::error_code> ecs(n);
    std::vector<std::string> got(n);
    for (int i = 0; i < n; ++i) {
        const auto k = static_cast<std::size_t>(i);
        ctx.spawn([](io_context& c, stream_socket& s, int& count, std::error_code& ec, std::string& out) -> task<void> {
            co_await c.yield();
            std::array<char, 3> x{};
            std::array<char, 29> y{};
            const std::array<iovec, 2> iov{iovec{x.data(), x.size()}, iovec{y.data(), y.size()}};
            auto r = co_await s.read_some(std::span<const iovec>(iov));
            ++count;
            if (!r) {
                ec = r.error();
            } else {
                std::string all(x.data(), x.size());
                all.append(y.data(), y.size());
                out = all.substr(0, *r);
            }
        }(ctx, *mine[k], resumed[k], ecs[k], got[k]));
    }
    ctx.spawn([](io_context& c, std::vector<std::unique_ptr<stream_socket>>& socks) -> task<void> {
        co_await c.yield();
        for (std::size_t i = 0; i < socks.size(); ++i) {
            if (i % 3 == 0) socks[i].reset();
            if (i % 3 == 1) socks[i]->close();
        }
    }(ctx, mine));
    ctx.poll();
    ctx.poll();
    for (int i = 2; i < n; i += 3) raw_send(peers[static_cast<std::size_t>(i)], "vectored-" + std::to_string(i));
    ctx.run();
    for (int i = 0; i < n; ++i) {
        const auto k = static_cast<std::size_t>(i);
        CHECK(resumed[k] == 1);
        if (i % 3 == 2) CHECK(got[k] == "vectored-" + std::to_string(i));
        else CHECK(canceled(ecs[k]));
    }
}

TEST_CASE("lean: operations started on a closed socket, then its object destroyed in the same turn, fail without touching it",
          "[lean][late][closed]") {
    fd_leak_guard guard;
    io_context ctx;
    auto p = make_pair(ctx);
    auto a = std::make_unique<stream_socket>(std::move(p.first));
    a->close();
    std::vector<std::error_code> ecs;
    int resumed = 0;
    for (int i = 0; i < 4; ++i) {
        ctx.spawn([](io_context& c, stream_socket& s, int i, std::vector<std::error_code>& out, int& count) -> task<void> {
            co_await c.yield();
            std::array<char, 8> buf{};
            std::optional<io_result<std::size_t>> r;
            if (i % 2) r.emplace(co_await s.read_some(buf));
            else r.emplace(co_await s.write_all(std::string_view("no")));
            ++count;
            out.push_back(*r ? std::error_code{} : r->error());
        }(ctx, *a, i, ecs, resumed));
    }
    ctx.spawn([](io_context& c, std::unique_ptr<stream_socket>& s) -> task<void> {
        co_await c.yield();
        s.reset();
    }(ctx, a));
    ctx.run();
    CHECK(resumed == 4);
    REQUIRE(ecs.size() == 4);
    for (const auto& ec : ecs) CHECK(ec);
    CHECK(drain_fd(p.second.native_handle()).empty());
}

TEST_CASE("lean: a starved lent read on a socket that takes a registered slot at once resumes with its bytes when a buffer returns",
          "[lean][buffer_ring][registered]") {
    fd_leak_guard guard;
    io_context ctx(register_at_once());
    buffer_ring ring(ctx, 1, 64);
    auto p = make_pair(ctx);
    auto q = make_pair(ctx);
    auto lend = [](stream_socket& s, buffer_ring& r) -> task<io_result<lent_buffer>> { co_return co_await s.read_some(r); };
    raw_send(p.second, "held");
    std::optional<io_result<lent_buffer>> held;
    held.emplace(ctx.sync_wait(lend(p.first, ring)));
    REQUIRE(*held);
    std::vector<std::string> got;
    int resumed = 0;
    ctx.spawn([](stream_socket& s, buffer_ring& r, std::vector<std::string>& out, int& count) -> task<void> {
        for (int i = 0; i < 3; ++i) {
            auto res = co_await s.read_some(r);  // the first waits for a buffer (timeout SQE, no file)
            ++count;
            out.push_back(res ? std::string(res->chars()) : "error: " + res.error().message());
        }
    }(q.first, ring, got, resumed));
    raw_send(q.second, "one");
    for (int i = 0; i < 10; ++i) ctx.poll();
    REQUIRE(resumed == 0);
    held.reset();  // the buffer goes back: the starved read goes on
    REQUIRE(pump(ctx, [&] { return resumed == 1; }));
    raw_send(q.second, "two");
    REQUIRE(pump(ctx, [&] { return resumed == 2; }));
    raw_send(q.second, "three");
    REQUIRE(pump(ctx, [&] { return resumed == 3; }));
    CHECK(got == std::vector<std::string>{"one", "two", "three"});
    ctx.run();
}

TEST_CASE("lean: a plain read gated behind a when_any loser takes the direction when the loser is cancelled, and loses no byte",
          "[lean][when_any][order]") {
    two_pairs f;  // named members: clang 14 cannot capture structured bindings
    auto& ctx = f.ctx;
    auto& p = f.p;
    auto& q = f.q;
    for (int round = 0; round < 50; ++round) {
        std::optional<std::size_t> winner;
        std::string plain_got;
        int plain_done = 0;
        ctx.spawn([](stream_socket& a, stream_socket& c, std::optional<std::size_t>& w) -> task<void> {
            std::array<char, 8> buf1{}, buf2{};
            auto r = co_await ringsock::when_any(
                [&](std::stop_token st) -> task<io_result<std::size_t>> { co_return co_await a.read_some(buf1, st); },
                [&](std::stop_token st) -> task<io_result<std::size_t>> { co_return co_await c.read_some(buf2, st); });
            w = r.index();
        }(p.first, q.first, winner));
        // Spawned second: its read (no token, no limit) finds the direction held by the
        // when_any child and waits behind it.
        ctx.spawn([](stream_socket& a, std::string& out, int& done) -> task<void> {
            std::array<char, 16> buf{};
            auto r = co_await a.read_some(buf);
            if (r) out.assign(buf.data(), *r);
            ++done;
        }(p.first, plain_got, plain_done));
        ctx.poll();
        ctx.poll();
        raw_send(q.second, "q");
        REQUIRE(pump(ctx, [&] { return winner.has_value(); }));
        CHECK(*winner == 1);
        CHECK(plain_done == 0);
        raw_send(p.second, "p" + std::to_string(round));
        REQUIRE(pump(ctx, [&] { return plain_done == 1; }));
        CHECK(plain_got == "p" + std::to_string(round));
    }
}

TEST_CASE("lean: stop requests from another thread on token reads alternating with plain reads on one socket lose no byte",
          "[lean][threads][stop]") {
    fd_leak_guard guard;
    io_context ctx;
    auto p = make_pair(ctx);
    constexpr int rounds = 300;
    int bytes = 0, cancels = 0, errors = 0;
    for (int i = 0; i < rounds; ++i) {
        std::stop_source src;
        std::thread stopper([&src] { src.request_stop(); });
        raw_send(p.second, "x");
        ctx.sync_wait([](stream_socket& a, std::stop_token tok, int& got, int& canc, int& err) -> task<void> {
            std::array<char, 1> buf{};
            auto r = co_await a.read_some(buf, tok);  // general path, may be stopped from the other thread
            if (r && *r == 1 && buf[0] == 'x') {
                ++got;
                co_return;
            }
            if (!r && canceled(r.error())) ++canc;
            else ++err;
            auto again = co_await a.read_some(buf);  // direct path: the byte is still there
            if (again && *again == 1 && buf[0] == 'x') ++got;
            else ++err;
        }(p.first, src.get_token(), bytes, cancels, errors));
        stopper.join();
    }
    CHECK(errors == 0);
    CHECK(bytes == rounds);
    CHECK(ringsock::test::readable_bytes(p.first) == 0);
    INFO("cancelled: " << cancels);
}

TEST_CASE("lean: a socket moved while its direct read is held back by the in-flight cap, then destroyed, hands the read to the new object",
          "[lean][cap][move]") {
    fd_leak_guard guard;
    io_context::options opts;
    opts.entries = 2;  // CQ of 8: the cap
    io_context ctx(opts);
    std::vector<pair_t> idle;
    for (int i = 0; i < 8; ++i) idle.push_back(make_pair(ctx));
    auto p = make_pair(ctx);
    auto a = std::make_unique<stream_socket>(std::move(p.first));
    int idle_done = 0, resumed = 0;
    std::string got;
    // Spawned first: eight idle reads take the whole cap in the first turn...
    spawn_idle_reads(ctx, idle, idle_done);
    // ...and a ninth read waits in user space, pending behind the cap.
    ctx.spawn([](stream_socket& s, std::string& out, int& count) -> task<void> {
        std::array<char, 32> buf{};
        auto r = co_await s.read_some(buf);
        ++count;
        if (r) out.assign(buf.data(), *r);
    }(*a, got, resumed));
    // A coroutine that is always ready keeps the loop from submitting past the cap.
    bool spin = true;
    ctx.spawn([](io_context& c, bool& on) -> task<void> {
        while (on) co_await c.yield();
    }(ctx, spin));
    for (int i = 0; i < 5; ++i) ctx.poll();
    auto b = std::make_unique<stream_socket>(std::move(*a));
    a.reset();
    raw_send(p.second, "held back");
    spin = false;
    REQUIRE(pump(ctx, [&] { return resumed == 1; }));
    CHECK(got == "held back");
    CHECK(idle_done == 0);
    idle.clear();
    b.reset();
    ctx.run();
    CHECK(idle_done == 8);
}

TEST_CASE("lean: sync_wait left by an exception in the turn where its task's reads sit in the late list destroys them all",
          "[lean][late][lifetime]") {
    fd_leak_guard guard;
    io_context ctx;
    constexpr int n = 4;
    std::vector<pair_t> pairs;
    for (int i = 0; i < n; ++i) pairs.push_back(make_pair(ctx));
    auto reader = [](io_context& c, stream_socket& s, bool spawn_thrower) -> task<void> {
        // The last child queues a task that throws as soon as it starts: it runs in the
        // next turn right after the other children, whose reads are then in the late list.
        if (spawn_thrower) {
            c.spawn([]() -> task<void> {
                throw std::runtime_error("boom");
                co_return;
            }());
        }
        co_await c.yield();
        std::array<char, 8> buf{};
        (void)co_await s.read_some(buf);
    };
    auto body = [&]() -> task<void> {
        (void)co_await ringsock::when_all(reader(ctx, pairs[0].first, false), reader(ctx, pairs[1].first, false),
                                          reader(ctx, pairs[2].first, false), reader(ctx, pairs[3].first, true));
    };
    CHECK_THROWS_AS(ctx.sync_wait(body()), std::runtime_error);
    CHECK(ctx.outstanding_work() == 0);
    // No orphaned read takes these bytes.
    for (auto& q : pairs) raw_send(q.second, "k");
    for (int i = 0; i < 5; ++i) ctx.poll();
    for (auto& q : pairs) CHECK(ringsock::test::readable_bytes(q.first) == 1);
}
