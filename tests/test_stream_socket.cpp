// Integration tests for stream_socket over real kernel sockets: single-buffer and
// vectored reads and writes, half-close, early end of stream, a peer that vanishes
// mid-write (EPIPE, never SIGPIPE), short writes, write ordering, zero-length buffers,
// close() with reads in flight, and a thousand connections through one acceptor.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "support/fd_count.hpp"

namespace {

using namespace std::chrono_literals;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::stream_socket;
using ringsock::task;

/// Deterministic bytes that differ from position to position, so a lost, duplicated or
/// reordered chunk shows up as a mismatch.
std::vector<std::byte> pattern(std::size_t n, std::uint32_t seed) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i) {
        auto x = static_cast<std::uint32_t>(i) * 2654435761u + seed * 40503u;
        v[i] = static_cast<std::byte>((x >> 24) ^ (i >> 16));
    }
    return v;
}

/// Offset of the first difference, or SIZE_MAX when equal (sizes included).
std::size_t first_mismatch(std::span<const std::byte> a, std::span<const std::byte> b) {
    std::size_t n = std::min(a.size(), b.size());
    for (std::size_t i = 0; i < n; ++i)
        if (a[i] != b[i]) return i;
    return a.size() == b.size() ? SIZE_MAX : n;
}

std::span<const std::byte> bytes_of(std::string_view s) { return ringsock::as_bytes(s); }

std::string to_string(std::span<const std::byte> b) {
    return {reinterpret_cast<const char*>(b.data()), b.size()};
}

void set_sndbuf(const stream_socket& s, int size) {
    REQUIRE(::setsockopt(s.native_handle(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size) == 0);
}

std::pair<stream_socket, stream_socket> make_pair(io_context& ctx) {
    auto p = stream_socket::pair(ctx);
    REQUIRE(p);
    return std::move(*p);
}

// Spawned helpers take everything by reference from a frame that outlives them.

task<void> read_into(stream_socket& s, std::span<std::byte> buf, io_result<std::size_t>& out, bool& done) {
    out = co_await s.read_some(buf);
    done = true;
}

task<void> write_all_into(stream_socket& s, std::span<const std::byte> data, io_result<std::size_t>& out,
                          bool& done) {
    out = co_await s.write_all(data);
    done = true;
}

/// Reads `want` bytes in small chunks, pausing now and then, appending to `out`.
task<void> slow_reader(io_context& ctx, stream_socket& s, std::size_t want, std::vector<std::byte>& out,
                       std::error_code& err, bool& done) {
    std::array<std::byte, 3000> chunk{};
    std::size_t reads = 0;
    while (out.size() < want) {
        auto n = co_await s.read_some(chunk);
        if (!n) {
            err = n.error();
            break;
        }
        if (*n == 0) break;
        out.insert(out.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(*n));
        if (++reads % 32 == 0) (void)co_await ringsock::sleep_for(ctx, 1ms);
    }
    done = true;
}

task<void> wait_for(io_context& ctx, const bool& flag) {
    while (!flag) (void)co_await ringsock::sleep_for(ctx, 1ms);
}

}  // namespace

TEST_CASE("stream_socket: write_some and read_some move bytes both ways", "[stream_socket]") {
    io_context ctx;
    auto pair_ab = make_pair(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    ctx.sync_wait([&]() -> task<void> {
        auto w = co_await a.write_some(bytes_of("hello"));
        REQUIRE(w);
        CHECK(*w == 5);
        std::array<std::byte, 64> buf{};
        auto r = co_await b.read_some(buf);
        REQUIRE(r);
        CHECK(to_string(std::span(buf).first(*r)) == "hello");

        auto w2 = co_await b.write_some(bytes_of("world!"));
        REQUIRE(w2);
        CHECK(*w2 == 6);
        std::string s(16, '\0');
        auto r2 = co_await a.read_some(s);
        REQUIRE(r2);
        CHECK(s.substr(0, *r2) == "world!");
    }());
}

TEST_CASE("stream_socket: write_all and read_exact transfer 1 MiB intact", "[stream_socket]") {
    io_context ctx;
    auto pair_ab = make_pair(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    auto data = pattern(1 << 20, 7);
    std::vector<std::byte> got(data.size());
    ctx.sync_wait([&]() -> task<void> {
        io_result<std::size_t> wr;
        bool wdone = false;
        ctx.spawn(write_all_into(a, data, wr, wdone));
        auto r = co_await b.read_exact(got);
        REQUIRE(r);
        CHECK(*r == data.size());
        co_await wait_for(ctx, wdone);
        REQUIRE(wr);
        CHECK(*wr == data.size());
    }());
    CHECK(first_mismatch(got, data) == SIZE_MAX);
}

TEST_CASE("stream_socket: vectored write_all and read_exact scatter and gather", "[stream_socket]") {
    io_context ctx;
    auto pair_ab = make_pair(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    auto data = pattern(300'000, 3);
    // Split the source unevenly, with an empty entry in the middle, and more than the
    // eight entries the operation keeps inline.
    std::vector<iovec> out;
    std::size_t cuts[] = {0, 1, 1, 4096, 5000, 70'000, 70'001, 123'456, 200'000, 250'000, 299'999, 300'000};
    for (std::size_t i = 0; i + 1 < std::size(cuts); ++i)
        out.push_back({data.data() + cuts[i], cuts[i + 1] - cuts[i]});
    REQUIRE(out.size() > 8);

    std::vector<std::byte> first(100'000), second(150'000), third(50'000);
    std::array<iovec, 3> in{{{first.data(), first.size()}, {second.data(), second.size()},
                             {third.data(), third.size()}}};
    ctx.sync_wait([&]() -> task<void> {
        io_result<std::size_t> wr;
        bool wdone = false;
        auto writer = [&]() -> task<void> {
            wr = co_await a.write_all(std::span<const iovec>(out));
            wdone = true;
        };
        ctx.spawn(writer());
        auto r = co_await b.read_exact(std::span<const iovec>(in));
        REQUIRE(r);
        CHECK(*r == data.size());
        co_await wait_for(ctx, wdone);
        REQUIRE(wr);
        CHECK(*wr == data.size());
    }());
    std::vector<std::byte> joined(first);
    joined.insert(joined.end(), second.begin(), second.end());
    joined.insert(joined.end(), third.begin(), third.end());
    CHECK(first_mismatch(joined, data) == SIZE_MAX);
}

TEST_CASE("stream_socket: vectored write_some and read_some", "[stream_socket]") {
    io_context ctx;
    auto pair_ab = make_pair(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    ctx.sync_wait([&]() -> task<void> {
        std::string h = "head-", m = "", t = "tail";
        std::array<iovec, 3> out{{{h.data(), h.size()}, {m.data(), m.size()}, {t.data(), t.size()}}};
        auto w = co_await a.write_some(std::span<const iovec>(out));
        REQUIRE(w);
        CHECK(*w == 9);

        std::string x(3, '\0'), y(32, '\0');
        std::array<iovec, 2> in{{{x.data(), x.size()}, {y.data(), y.size()}}};
        auto r = co_await b.read_some(std::span<const iovec>(in));
        REQUIRE(r);
        CHECK(*r == 9);
        CHECK(x == "hea");
        CHECK(y.substr(0, 6) == "d-tail");
    }());
}

TEST_CASE("stream_socket: read_some returns 0 after peer shutdown while the other direction still works",
          "[stream_socket]") {
    io_context ctx;
    auto pair_ab = make_pair(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    ctx.sync_wait([&]() -> task<void> {
        auto sent1 = co_await a.write_all(bytes_of("last words"));
        REQUIRE(sent1);
        REQUIRE(a.shutdown(ringsock::shutdown_how::send));

        std::string buf(64, '\0');
        auto r = co_await b.read_exact(std::span(buf).first(10));
        REQUIRE(r);
        CHECK(buf.substr(0, 10) == "last words");
        auto eof = co_await b.read_some(buf);
        REQUIRE(eof);
        CHECK(*eof == 0);
        // End of stream is sticky.
        auto eof2 = co_await b.read_some(buf);
        REQUIRE(eof2);
        CHECK(*eof2 == 0);

        // b -> a is still open.
        auto w = co_await b.write_all(bytes_of("reply"));
        REQUIRE(w);
        CHECK(*w == 5);
        auto back = co_await a.read_exact(std::span(buf).first(5));
        REQUIRE(back);
        CHECK(buf.substr(0, 5) == "reply");
    }());
}

TEST_CASE("stream_socket: read_exact reports end_of_stream with the bytes that arrived", "[stream_socket]") {
    io_context ctx;
    auto pair_ab = make_pair(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    ctx.sync_wait([&]() -> task<void> {
        auto sent2 = co_await a.write_all(bytes_of("0123456789"));
        REQUIRE(sent2);
        REQUIRE(a.shutdown(ringsock::shutdown_how::send));
        std::string buf(100, '\0');
        auto r = co_await b.read_exact(buf);
        REQUIRE_FALSE(r);
        CHECK(r.error() == ringsock::errc::end_of_stream);
        CHECK(r.partial_value() == 10);
        CHECK(buf.substr(0, 10) == "0123456789");
        CHECK_THROWS_AS(r.value(), std::system_error);

        // Same through the vectored variant, on a fresh pair.
        auto [c, d] = make_pair(ctx);
        auto sent3 = co_await c.write_all(bytes_of("abc"));
        REQUIRE(sent3);
        c.close();
        std::string x(2, '\0'), y(10, '\0');
        std::array<iovec, 2> in{{{x.data(), x.size()}, {y.data(), y.size()}}};
        auto rv = co_await d.read_exact(std::span<const iovec>(in));
        REQUIRE_FALSE(rv);
        CHECK(rv.error() == ringsock::errc::end_of_stream);
        CHECK(rv.partial_value() == 3);
        CHECK(x == "ab");
        CHECK(y[0] == 'c');
    }());
}

TEST_CASE("stream_socket: a peer that closes mid-write gives EPIPE with the partial count, never SIGPIPE",
          "[stream_socket]") {
    io_context ctx;
    auto pair_wr = make_pair(ctx); auto& w = pair_wr.first; auto& r = pair_wr.second;  // clang 14: lambdas cannot capture structured bindings
    set_sndbuf(w, 4096);
    auto data = pattern(4 << 20, 11);
    ctx.sync_wait([&]() -> task<void> {
        // The peer reads a little, then goes away with unread data in its queue.
        auto peer = [&]() -> task<void> {
            std::vector<std::byte> sink(64 * 1024);
            auto got = co_await r.read_exact(sink);
            CHECK(got);
            r.close();
        };
        ctx.spawn(peer());
        auto res = co_await w.write_all(data);
        REQUIRE_FALSE(res);
        INFO("error: " << res.error().message());
        CHECK((res.error() == std::errc::broken_pipe || res.error() == std::errc::connection_reset));
        CHECK(res.partial_value() >= 64 * 1024);
        CHECK(res.partial_value() < data.size());

        // The stream position is unknown now: every later write refuses.
        auto again = co_await w.write_all(bytes_of("more"));
        REQUIRE_FALSE(again);
        CHECK(again.error() == ringsock::errc::stream_broken);
        auto some = co_await w.write_some(bytes_of("x"));
        REQUIRE_FALSE(some);
        CHECK(some.error() == ringsock::errc::stream_broken);
        std::string v = "vec";
        std::array<iovec, 1> iov{{{v.data(), v.size()}}};
        auto vec = co_await w.write_all(std::span<const iovec>(iov));
        REQUIRE_FALSE(vec);
        CHECK(vec.error() == ringsock::errc::stream_broken);
    }());
}

TEST_CASE("stream_socket: writing to a closed peer gives EPIPE without SIGPIPE", "[stream_socket]") {
    io_context ctx;
    auto pair_ab = make_pair(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    b.close();
    ctx.sync_wait([&]() -> task<void> {
        auto w = co_await a.write_some(bytes_of("x"));
        REQUIRE_FALSE(w);
        CHECK(w.error() == std::errc::broken_pipe);
        std::string s = "y";
        std::array<iovec, 1> iov{{{s.data(), s.size()}}};
        auto v = co_await a.write_all(std::span<const iovec>(iov));
        REQUIRE_FALSE(v);
        CHECK(v.error() == std::errc::broken_pipe);
        CHECK(v.partial_value() == 0);
        // Nothing was sent, so the stream is not "broken": the error stays EPIPE.
        auto w2 = co_await a.write_all(bytes_of("z"));
        REQUIRE_FALSE(w2);
        CHECK(w2.error() == std::errc::broken_pipe);
    }());
}

TEST_CASE("stream_socket: short writes into a small send buffer still deliver 4 MiB intact to a slow reader",
          "[stream_socket]") {
    io_context ctx;
    auto pair_wr = make_pair(ctx); auto& w = pair_wr.first; auto& r = pair_wr.second;  // clang 14: lambdas cannot capture structured bindings
    set_sndbuf(w, 4096);
    auto data = pattern(4 << 20, 42);
    std::vector<std::byte> got;
    got.reserve(data.size());
    ctx.sync_wait([&]() -> task<void> {
        // With the buffer this small, one send cannot take 1 MiB.
        auto first = co_await w.write_some(std::span(data).first(1 << 20));
        REQUIRE(first);
        CHECK(*first > 0);
        CHECK(*first < (1u << 20));

        std::error_code rerr;
        bool rdone = false;
        ctx.spawn(slow_reader(ctx, r, data.size(), got, rerr, rdone));
        auto rest = co_await w.write_all(std::span(data).subspan(*first));
        REQUIRE(rest);
        CHECK(*rest == data.size() - *first);
        co_await wait_for(ctx, rdone);
        CHECK_FALSE(rerr);
    }());
    REQUIRE(got.size() == data.size());
    CHECK(first_mismatch(got, data) == SIZE_MAX);
}

TEST_CASE("stream_socket: two concurrent write_all calls never interleave", "[stream_socket]") {
    io_context ctx;
    auto pair_wr = make_pair(ctx); auto& w = pair_wr.first; auto& r = pair_wr.second;  // clang 14: lambdas cannot capture structured bindings
    set_sndbuf(w, 4096);
    constexpr std::size_t mib = 1 << 20;
    auto da = pattern(mib, 1);
    auto db = pattern(mib, 2);
    std::vector<std::byte> got;
    ctx.sync_wait([&]() -> task<void> {
        io_result<std::size_t> ra, rb;
        bool adone = false, bdone = false, rdone = false;
        std::error_code rerr;
        ctx.spawn(write_all_into(w, da, ra, adone));
        ctx.spawn(write_all_into(w, db, rb, bdone));
        ctx.spawn(slow_reader(ctx, r, 2 * mib, got, rerr, rdone));
        co_await wait_for(ctx, adone);
        co_await wait_for(ctx, bdone);
        co_await wait_for(ctx, rdone);
        REQUIRE(ra);
        REQUIRE(rb);
        CHECK(*ra == mib);
        CHECK(*rb == mib);
        CHECK_FALSE(rerr);
    }());
    REQUIRE(got.size() == 2 * mib);
    auto head = std::span<const std::byte>(got).first(mib);
    auto tail = std::span<const std::byte>(got).subspan(mib);
    bool a_then_b = first_mismatch(head, da) == SIZE_MAX && first_mismatch(tail, db) == SIZE_MAX;
    bool b_then_a = first_mismatch(head, db) == SIZE_MAX && first_mismatch(tail, da) == SIZE_MAX;
    CHECK((a_then_b || b_then_a));
}

TEST_CASE("stream_socket: zero-length buffers complete at once and are not end of stream", "[stream_socket]") {
    io_context ctx;
    auto pair_ab = make_pair(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    ctx.sync_wait([&]() -> task<void> {
        std::span<std::byte> empty;
        std::span<const std::byte> cempty;
        auto r0 = co_await b.read_some(empty);
        REQUIRE(r0);
        CHECK(*r0 == 0);
        auto r1 = co_await b.read_exact(empty);
        REQUIRE(r1);
        CHECK(*r1 == 0);
        auto w0 = co_await a.write_some(cempty);
        REQUIRE(w0);
        CHECK(*w0 == 0);
        auto w1 = co_await a.write_all(cempty);
        REQUIRE(w1);
        CHECK(*w1 == 0);
        std::span<const iovec> no_iov;
        auto v0 = co_await b.read_some(no_iov);
        REQUIRE(v0);
        CHECK(*v0 == 0);
        auto v1 = co_await a.write_all(no_iov);
        REQUIRE(v1);
        CHECK(*v1 == 0);
        std::array<iovec, 2> empties{{{nullptr, 0}, {nullptr, 0}}};
        auto v2 = co_await a.write_some(std::span<const iovec>(empties));
        REQUIRE(v2);
        CHECK(*v2 == 0);

        // The stream still carries data afterwards, and nothing spurious was sent.
        auto sent4 = co_await a.write_all(bytes_of("ok"));
        REQUIRE(sent4);
        std::string pad(1, '\0'), buf(8, '\0');
        // A leading empty entry must not be read as end of stream.
        std::array<iovec, 2> in{{{pad.data(), 0}, {buf.data(), buf.size()}}};
        auto r = co_await b.read_some(std::span<const iovec>(in));
        REQUIRE(r);
        CHECK(*r == 2);
        CHECK(buf.substr(0, 2) == "ok");
    }());
}

TEST_CASE("stream_socket: close() cancels reads in flight and queued with operation_canceled",
          "[stream_socket]") {
    io_context ctx;
    auto pair_ab = make_pair(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    ctx.sync_wait([&]() -> task<void> {
        std::array<std::byte, 16> buf1{}, buf2{};
        io_result<std::size_t> r1, r2;
        bool d1 = false, d2 = false;
        ctx.spawn(read_into(a, buf1, r1, d1));
        ctx.spawn(read_into(a, buf2, r2, d2));  // queued behind the first
        // Let both start: the first reaches the kernel, the second waits its turn.
        for (int i = 0; i < 3; ++i) co_await ctx.yield();
        (void)co_await ringsock::sleep_for(ctx, 5ms);
        CHECK_FALSE(d1);
        CHECK_FALSE(d2);
        a.close();
        CHECK_FALSE(a.is_open());
        co_await wait_for(ctx, d1);
        co_await wait_for(ctx, d2);
        REQUIRE_FALSE(r1);
        CHECK(r1.error() == std::errc::operation_canceled);
        REQUIRE_FALSE(r2);
        CHECK(r2.error() == std::errc::operation_canceled);

        // The peer sees the close as end of stream.
        std::array<std::byte, 4> tmp{};
        auto eof = co_await b.read_some(tmp);
        REQUIRE(eof);
        CHECK(*eof == 0);
    }());
}

TEST_CASE("stream_socket: a thousand concurrent connections through one acceptor all echo correctly",
          "[stream_socket][acceptor]") {
    rlimit old{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &old) == 0);
    rlimit raised = old;
    raised.rlim_cur = raised.rlim_max;
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &raised) == 0);
    constexpr std::size_t n = 1000;
    if (raised.rlim_cur < 2 * n + 64) {
        WARN("RLIMIT_NOFILE hard limit too low for this test: " << raised.rlim_cur);
        ::setrlimit(RLIMIT_NOFILE, &old);
        return;
    }
    const std::size_t baseline = ringsock::test::open_fd_count();
    constexpr std::size_t msg_size = 1000;

    std::size_t clients_ok = 0, clients_failed = 0, servers_done = 0, server_errors = 0;
    std::vector<std::string> failures;
    {
        io_context ctx;
        auto ep = ringsock::endpoint::abstract("ringsock-test-thousand-" + std::to_string(::getpid()));
        REQUIRE(ep);
        auto acc = ringsock::acceptor::listen(ctx, *ep);
        REQUIRE(acc);

        auto echo = [&](stream_socket s) -> task<void> {
            std::vector<std::byte> buf(msg_size);
            auto r = co_await s.read_exact(buf);
            if (!r) {
                ++server_errors;
            } else {
                auto w = co_await s.write_all(buf);
                if (!w) ++server_errors;
            }
            // Wait for the client to finish so its close is observed.
            std::array<std::byte, 1> one{};
            auto eof = co_await s.read_some(one);
            if (!eof || *eof != 0) ++server_errors;
            ++servers_done;
        };
        auto server = [&]() -> task<void> {
            for (std::size_t i = 0; i < n; ++i) {
                auto c = co_await acc->accept();
                if (!c) {
                    failures.push_back("accept: " + c.error().message());
                    co_return;
                }
                ctx.spawn(echo(std::move(*c)));
            }
        };
        auto client = [&](std::size_t id) -> task<void> {
            auto msg = pattern(msg_size, static_cast<std::uint32_t>(id));
            auto c = co_await stream_socket::connect(ctx, *ep);
            if (!c) {
                ++clients_failed;
                failures.push_back("connect: " + c.error().message());
                co_return;
            }
            std::vector<std::byte> back(msg_size);
            auto w = co_await c->write_all(msg);
            auto r = co_await c->read_exact(back);
            if (w && r && first_mismatch(back, msg) == SIZE_MAX) {
                ++clients_ok;
            } else {
                ++clients_failed;
                failures.push_back("client " + std::to_string(id) + ": " +
                                   (w ? r.error().message() : w.error().message()));
            }
        };
        ctx.sync_wait([&]() -> task<void> {
            ctx.spawn(server());
            for (std::size_t i = 0; i < n; ++i) ctx.spawn(client(i));
            auto deadline = std::chrono::steady_clock::now() + 120s;
            while ((clients_ok + clients_failed < n || servers_done < clients_ok) &&
                   std::chrono::steady_clock::now() < deadline && failures.empty())
                (void)co_await ringsock::sleep_for(ctx, 5ms);
        }());
        for (std::size_t i = 0; i < failures.size() && i < 5; ++i) UNSCOPED_INFO(failures[i]);
    }
    CHECK(failures.empty());
    CHECK(clients_ok == n);
    CHECK(clients_failed == 0);
    CHECK(servers_done == n);
    CHECK(server_errors == 0);
    CHECK(ringsock::test::open_fd_count() == baseline);
    ::setrlimit(RLIMIT_NOFILE, &old);
}

TEST_CASE("stream_socket: more waiting reads than the completion queue holds do not stall the loop",
          "[stream_socket][acceptor]") {
    // A ring with a 32-entry CQ, and 200 clients that all wait in read_exact for a
    // greeting the server sends only after accepting every one of them: the reads alone
    // exceed the in-flight cap, so the server's writes must still get through.
    io_context::options opts;
    opts.entries = 8;
    io_context ctx(opts);
    REQUIRE(ctx.features().cq_entries < 200);
    constexpr std::uint32_t n = 200;
    auto ep = ringsock::endpoint::abstract("ringsock-test-overcap-" + std::to_string(::getpid()));
    REQUIRE(ep);
    auto acc = ringsock::acceptor::listen(ctx, *ep);
    REQUIRE(acc);

    // If the loop does stall, nothing on it can time out: a watchdog thread shuts the
    // clients' sockets down after 30 s so their reads end and the test fails instead of
    // hanging.
    std::mutex mu;
    std::condition_variable cv;
    bool finished = false;
    std::vector<int> client_fds;
    std::thread watchdog([&] {
        std::unique_lock lock(mu);
        if (!cv.wait_for(lock, 30s, [&] { return finished; }))
            for (int fd : client_fds) ::shutdown(fd, SHUT_RDWR);
    });

    std::uint32_t greeted = 0, failed = 0;
    bool server_done = false;
    std::vector<stream_socket> accepted;
    auto server = [&]() -> task<void> {
        for (std::uint32_t i = 0; i < n; ++i) {
            auto c = co_await acc->accept();
            if (!c) break;
            accepted.push_back(std::move(*c));
        }
        for (auto& s : accepted) {
            std::uint32_t hello = 0x600dF00D;
            auto w = co_await s.write_all(std::span(reinterpret_cast<const std::byte*>(&hello), sizeof hello));
            if (!w) ++failed;
        }
        server_done = true;
    };
    auto client = [&]() -> task<void> {
        auto c = co_await stream_socket::connect(ctx, *ep);
        if (!c) {
            ++failed;
            co_return;
        }
        {
            std::lock_guard lock(mu);
            client_fds.push_back(c->native_handle());
        }
        std::uint32_t hello = 0;
        auto r = co_await c->read_exact(std::span(reinterpret_cast<std::byte*>(&hello), sizeof hello));
        if (r && hello == 0x600dF00D) ++greeted;
        else ++failed;
    };
    ctx.sync_wait([&]() -> task<void> {
        ctx.spawn(server());
        for (std::uint32_t i = 0; i < n; ++i) ctx.spawn(client());
        while (greeted + failed < n || (!server_done && failed == 0))
            (void)co_await ringsock::sleep_for(ctx, 5ms);
    }());
    {
        std::lock_guard lock(mu);
        finished = true;
        client_fds.clear();
    }
    cv.notify_all();
    watchdog.join();
    CHECK(greeted == n);
    CHECK(failed == 0);
}
