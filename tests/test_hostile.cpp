// Hostile tests: what a careless or adversarial user does to sockets, operations and
// the loop (destroying, moving and closing sockets while their operations are in every
// state, stop requests from other threads, odd time limits, connection floods), checked
// for memory safety (run under ASan+UBSan and TSan), real results and no leaked fds.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <sys/socket.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstring>

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <optional>
#include <stop_token>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/fd_count.hpp"
#include "support/fork_child.hpp"
#include "support/leak_guard.hpp"

namespace {

using namespace std::chrono_literals;
using ringsock::fd_stream;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::stream_socket;
using ringsock::task;
using ringsock::unique_fd;
using ringsock::test::fd_leak_guard;
using ringsock::test::make_pair;
using ringsock::test::raw_send;
using ringsock::test::raw_send_fd;

std::pair<fd_stream, fd_stream> make_fd_pair(io_context& ctx) {
    auto p = fd_stream::pair(ctx);
    REQUIRE(p);
    return std::move(*p);
}

}  // namespace

// ---------------------------------------------------------------------------------
// Lifetime: an operation that left its socket's queue before resuming.
// ---------------------------------------------------------------------------------

TEST_CASE("hostile: a gated fd_stream receive cancelled by its stop token survives its socket's destruction",
          "[hostile][lifetime]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [a0, b] = make_fd_pair(ctx);
    auto a = std::make_unique<fd_stream>(std::move(a0));
    std::stop_source src;
    std::error_code holder_ec, gated_ec;
    bool holder_done = false, gated_done = false;

    // Holds the receive direction: in flight, nothing arrives.
    ctx.spawn([](fd_stream& s, std::error_code& ec, bool& done) -> task<void> {
        std::array<std::byte, 16> buf{};
        auto r = co_await s.read_some(buf);
        ec = r.error();
        done = true;
    }(*a, holder_ec, holder_done));
    // Waits behind it, with a stop token.
    ctx.spawn([](fd_stream& s, std::stop_token tok, std::error_code& ec, bool& done) -> task<void> {
        std::array<std::byte, 16> buf{};
        auto r = co_await s.receive(buf, tok);
        ec = r.error();
        done = true;
    }(*a, src.get_token(), gated_ec, gated_done));
    // In one turn: stop the gated receive (it leaves the gate's queue, ready to resume
    // cancelled) and destroy the socket before that receive resumes.
    ctx.spawn([](io_context& c, std::stop_source& s, std::unique_ptr<fd_stream>& sock) -> task<void> {
        co_await c.yield();
        s.request_stop();
        sock.reset();
    }(ctx, src, a));
    ctx.run();
    REQUIRE(holder_done);
    REQUIRE(gated_done);
    CHECK(holder_ec == std::errc::operation_canceled);
    CHECK(gated_ec == std::errc::operation_canceled);
}

TEST_CASE("hostile: a gated fd_stream receive whose zero time limit expired survives its socket's destruction",
          "[hostile][lifetime]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [a0, b] = make_fd_pair(ctx);
    auto a = std::make_unique<fd_stream>(std::move(a0));
    std::error_code holder_ec, gated_ec;
    bool holder_done = false, gated_done = false;

    ctx.spawn([](fd_stream& s, std::error_code& ec, bool& done) -> task<void> {
        std::array<std::byte, 16> buf{};
        auto r = co_await s.read_some(buf);
        ec = r.error();
        done = true;
    }(*a, holder_ec, holder_done));
    // The destroyer yields first, so it is ahead of the gated receive in the ready queue
    // of the turn in which the loop expires that receive's deadline.
    ctx.spawn([](io_context& c, std::unique_ptr<fd_stream>& sock) -> task<void> {
        co_await c.yield();
        sock.reset();
    }(ctx, a));
    ctx.spawn([](fd_stream& s, std::error_code& ec, bool& done) -> task<void> {
        std::array<std::byte, 16> buf{};
        auto r = co_await s.receive(buf, 0ns);
        ec = r.error();
        done = true;
    }(*a, gated_ec, gated_done));
    ctx.run();
    REQUIRE(holder_done);
    REQUIRE(gated_done);
    CHECK(holder_ec == std::errc::operation_canceled);
    CHECK(gated_ec == std::errc::timed_out);
}

// ---------------------------------------------------------------------------------
// Lifetime: completed-not-resumed, mass detaching, moving, move-assigning, release().
// ---------------------------------------------------------------------------------

namespace {

/// Reads `n` bytes with read_exact; records the text or the error.
task<void> read_n(stream_socket& s, std::size_t n, ringsock::op_limits lim, std::string& out, std::error_code& ec,
                  int& done) {
    std::string buf(n, '\0');
    auto r = co_await s.read_exact(std::as_writable_bytes(std::span(buf)), lim);
    ec = r.error();
    if (r) out = buf;
    ++done;
}

void set_small_buffers(int fd) {
    int v = 4096;
    REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v) == 0);
    REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v) == 0);
}

}  // namespace

TEST_CASE("hostile: a read that completed keeps its result when an earlier coroutine of the same turn destroys its socket",
          "[hostile][lifetime]") {
    fd_leak_guard guard;
    io_context ctx;
    for (int i = 0; i < 200; ++i) {
        auto [a0, b] = make_pair(ctx);
        auto [c, d] = make_pair(ctx);
        auto a = std::make_unique<stream_socket>(std::move(a0));
        raw_send(d, "x");
        raw_send(b, "hello");
        std::vector<int> order;
        std::string got;
        std::error_code ec;
        // The destroyer's receive is submitted first, so its completion comes first and
        // it resumes first in the turn in which both reads completed.
        ctx.spawn([](stream_socket& s, std::unique_ptr<stream_socket>& victim, std::vector<int>& ord) -> task<void> {
            std::array<std::byte, 1> buf{};
            (void)co_await s.read_some(buf);
            ord.push_back(1);
            victim.reset();
        }(c, a, order));
        ctx.spawn([](stream_socket& s, std::string& out, std::error_code& e, std::vector<int>& ord) -> task<void> {
            std::array<char, 16> buf{};
            auto r = co_await s.read_some(buf);
            ord.push_back(2);
            e = r.error();
            if (r) out.assign(buf.data(), *r);
        }(*a, got, ec, order));
        ctx.run();
        REQUIRE(order.size() == 2);
        CHECK(order[0] == 1);  // the scenario really happened in this order
        CHECK_FALSE(ec);
        CHECK(got == "hello");
        REQUIRE(ctx.outstanding_work() == 0);
    }
}

TEST_CASE("hostile: destroying a socket with 100 timed writes gated behind a blocked write cancels them all at once",
          "[hostile][lifetime]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [a0, b] = make_pair(ctx);
    set_small_buffers(a0.native_handle());
    set_small_buffers(b.native_handle());
    auto a = std::make_unique<stream_socket>(std::move(a0));
    std::vector<char> big(4 << 20, 'B');
    std::string small(100, 's');
    int canceled = 0, other = 0;
    std::size_t holder_partial = 0;
    std::error_code holder_ec;
    ctx.spawn([](stream_socket& s, std::vector<char>& data, std::error_code& ec, std::size_t& partial) -> task<void> {
        auto r = co_await s.write_all(data);
        ec = r.error();
        partial = r.partial_value();
    }(*a, big, holder_ec, holder_partial));
    for (int i = 0; i < 100; ++i) {
        ctx.spawn([](stream_socket& s, std::string& data, int i, int& canc, int& oth) -> task<void> {
            auto r = co_await s.write_all(data, std::chrono::seconds(10) + std::chrono::milliseconds(i));
            if (r.error() == std::errc::operation_canceled) ++canc;
            else ++oth;
        }(*a, small, i, canceled, other));
    }
    ctx.spawn([](io_context& c, std::unique_ptr<stream_socket>& victim) -> task<void> {
        for (int k = 0; k < 3; ++k) co_await c.yield();
        victim.reset();
    }(ctx, a));
    auto t0 = std::chrono::steady_clock::now();
    ctx.run();
    auto elapsed = std::chrono::steady_clock::now() - t0;
    CHECK(elapsed < 5s);
    CHECK(canceled == 100);
    CHECK(other == 0);
    CHECK(holder_ec == std::errc::operation_canceled);
    CHECK(holder_partial > 0);
    CHECK(holder_partial < big.size());
}

TEST_CASE("hostile: moving a socket with a read in flight and timed reads gated, then destroying the moved-from one",
          "[hostile][lifetime][move]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [a0, b] = make_pair(ctx);
    auto a = std::make_unique<stream_socket>(std::move(a0));
    std::unique_ptr<stream_socket> moved;
    std::array<std::string, 5> out;
    std::array<std::error_code, 5> ec;
    int done = 0;
    ctx.spawn(read_n(*a, 1, {}, out[0], ec[0], done));
    for (int i = 1; i < 5; ++i) ctx.spawn(read_n(*a, 1, std::chrono::seconds(10), out[i], ec[i], done));
    ctx.spawn([](io_context& c, std::unique_ptr<stream_socket>& from, std::unique_ptr<stream_socket>& to,
                 stream_socket& peer) -> task<void> {
        for (int k = 0; k < 3; ++k) co_await c.yield();
        to = std::make_unique<stream_socket>(std::move(*from));
        from.reset();
        raw_send(peer, "wxy");
        // Three reads get a byte each; the fourth gated one is cancelled by close().
        while (true) {
            co_await c.yield();
            if (ringsock::test::readable_bytes(*to) == 0) break;
        }
        for (int k = 0; k < 5; ++k) co_await c.yield();
        to->close();
    }(ctx, a, moved, b));
    auto t0 = std::chrono::steady_clock::now();
    ctx.run();
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
    REQUIRE(done == 5);
    CHECK(out[0] == "w");
    CHECK(out[1] == "x");
    CHECK(out[2] == "y");
    CHECK(ec[3] == std::errc::operation_canceled);
    CHECK(ec[4] == std::errc::operation_canceled);
}

TEST_CASE("hostile: move-assigning onto an open socket with its own operations cancels those and keeps the moved ones",
          "[hostile][lifetime][move]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [x0, xpeer] = make_pair(ctx);
    auto [y0, ypeer] = make_pair(ctx);
    auto x = std::make_unique<stream_socket>(std::move(x0));
    auto y = std::make_unique<stream_socket>(std::move(y0));
    std::array<std::string, 4> out;
    std::array<std::error_code, 4> ec;
    int done = 0;
    ctx.spawn(read_n(*x, 1, {}, out[0], ec[0], done));
    ctx.spawn(read_n(*x, 1, 10s, out[1], ec[1], done));
    ctx.spawn(read_n(*y, 1, {}, out[2], ec[2], done));
    ctx.spawn(read_n(*y, 1, 10s, out[3], ec[3], done));
    ctx.spawn([](io_context& c, std::unique_ptr<stream_socket>& to, std::unique_ptr<stream_socket>& from,
                 stream_socket& peer) -> task<void> {
        for (int k = 0; k < 3; ++k) co_await c.yield();
        *to = std::move(*from);
        from.reset();
        raw_send(peer, "pq");
    }(ctx, x, y, ypeer));
    auto t0 = std::chrono::steady_clock::now();
    ctx.run();
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
    REQUIRE(done == 4);
    CHECK(ec[0] == std::errc::operation_canceled);
    CHECK(ec[1] == std::errc::operation_canceled);
    CHECK(out[2] == "p");
    CHECK(out[3] == "q");
    // x's old descriptor was closed: its peer sees end of stream.
    char ch;
    CHECK(::recv(xpeer.native_handle(), &ch, 1, MSG_DONTWAIT) == 0);
}

TEST_CASE("hostile: release() with a read in flight and one gated leaves the descriptor usable and no orphan read",
          "[hostile][lifetime]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    std::array<std::string, 2> out;
    std::array<std::error_code, 2> ec;
    int done = 0;
    unique_fd released;
    ctx.spawn(read_n(a, 1, {}, out[0], ec[0], done));
    ctx.spawn(read_n(a, 1, 10s, out[1], ec[1], done));
    ctx.spawn([](io_context& c, stream_socket& s, unique_fd& fd) -> task<void> {
        for (int k = 0; k < 3; ++k) co_await c.yield();
        fd = s.release();
    }(ctx, a, released));
    ctx.run();
    REQUIRE(done == 2);
    CHECK(ec[0] == std::errc::operation_canceled);
    CHECK(ec[1] == std::errc::operation_canceled);
    REQUIRE(released);
    CHECK_FALSE(a.is_open());
    raw_send(b, "zz");
    char buf[4];
    CHECK(::recv(released.get(), buf, sizeof buf, MSG_DONTWAIT) == 2);
}

TEST_CASE("hostile: an fd_stream moved while a receive carrying a descriptor is in flight queues it in the new object",
          "[hostile][lifetime][move][fd]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [s0, peer] = make_fd_pair(ctx);
    auto s = std::make_unique<fd_stream>(std::move(s0));
    std::unique_ptr<fd_stream> moved;
    int pipefd[2];
    REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
    std::size_t got_bytes = 0;
    std::error_code ec;
    ctx.spawn([](fd_stream& sock, std::size_t& n, std::error_code& e) -> task<void> {
        std::array<char, 16> buf{};
        auto r = co_await sock.read_some(buf);
        e = r.error();
        n = r.partial_value();
    }(*s, got_bytes, ec));
    ctx.spawn([](io_context& c, std::unique_ptr<fd_stream>& from, std::unique_ptr<fd_stream>& to, fd_stream& p,
                 int fd) -> task<void> {
        for (int k = 0; k < 3; ++k) co_await c.yield();
        to = std::make_unique<fd_stream>(std::move(*from));
        from.reset();
        raw_send_fd(p.native_handle(), "abc", fd);
    }(ctx, s, moved, peer, pipefd[0]));
    ctx.run();
    ::close(pipefd[0]);
    CHECK_FALSE(ec);
    CHECK(got_bytes == 3);
    REQUIRE(moved);
    CHECK(moved->queued_fds() == 1);
    moved.reset();  // closes the queued descriptor
    ::close(pipefd[1]);
}

// ---------------------------------------------------------------------------------
// Write failures.
// ---------------------------------------------------------------------------------

TEST_CASE("hostile: write_all stopped by its time limit mid-transfer breaks the stream for the next write",
          "[hostile][deadline]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    set_small_buffers(a.native_handle());
    set_small_buffers(b.native_handle());
    std::vector<char> big(1 << 20, 'x');
    auto [first, second] = ctx.sync_wait([](stream_socket& s, std::vector<char>& data)
                                             -> task<std::pair<io_result<std::size_t>, io_result<std::size_t>>> {
        auto r1 = co_await s.write_all(data, 100ms);
        auto r2 = co_await s.write_some(std::string_view("y"));
        co_return std::pair{std::move(r1), std::move(r2)};
    }(a, big));
    CHECK(first.error() == std::errc::timed_out);
    CHECK(first.partial_value() > 0);
    CHECK(first.partial_value() < big.size());
    CHECK(second.error() == ringsock::errc::stream_broken);
}

TEST_CASE("hostile: no write kind raises SIGPIPE on a closed peer", "[hostile][sigpipe]") {
    fd_leak_guard guard;
    io_context ctx;
    {
        auto [a, b] = make_pair(ctx);
        b.close();
        std::string data(100000, 'd');
        std::array<iovec, 2> iov{iovec{data.data(), 10}, iovec{data.data(), data.size()}};
        auto r = ctx.sync_wait([](stream_socket& s, std::string& d, std::array<iovec, 2>& v) -> task<int> {
            int errors = 0;
            if (!co_await s.write_some(d)) ++errors;
            if (!co_await s.write_all(d)) ++errors;
            if (!co_await s.write_all(std::span<const iovec>(v))) ++errors;
            co_return errors;
        }(a, data, iov));
        CHECK(r == 3);
    }
    {
        auto [a, b] = make_fd_pair(ctx);
        b.close();
        int pipefd[2];
        REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
        std::array<int, 1> fds{pipefd[0]};
        auto r = ctx.sync_wait([](fd_stream& s, std::array<int, 1>& f) -> task<io_result<std::size_t>> {
            co_return co_await s.send_fds(std::string_view("x"), f);
        }(a, fds));
        CHECK(r.error() == std::errc::broken_pipe);
        ::close(pipefd[0]);
        ::close(pipefd[1]);
    }
}

// ---------------------------------------------------------------------------------
// Deadlines.
// ---------------------------------------------------------------------------------

TEST_CASE("hostile: 2000 reads gated on one socket with distinct short time limits each time out, never early",
          "[hostile][deadline]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    constexpr int n = 2000;
    std::vector<std::chrono::nanoseconds> limit(n), took(n);
    std::vector<std::error_code> ec(n);
    int finished = 0;
    std::error_code holder_ec;
    ctx.spawn([](stream_socket& s, std::error_code& e) -> task<void> {
        std::array<std::byte, 1> buf{};
        e = (co_await s.read_some(buf)).error();
    }(a, holder_ec));
    for (int i = 0; i < n; ++i) {
        // 1 ms to ~200 ms, interleaved so the list is not in deadline order.
        limit[i] = 1ms + std::chrono::microseconds(((i * 7919) % n) * 100);
        ctx.spawn([](stream_socket& s, std::chrono::nanoseconds lim, std::chrono::nanoseconds& t, std::error_code& e,
                     int& fin) -> task<void> {
            std::array<std::byte, 1> buf{};
            auto t0 = std::chrono::steady_clock::now();
            auto r = co_await s.read_some(buf, lim);
            t = std::chrono::steady_clock::now() - t0;
            e = r.error();
            ++fin;
        }(a, limit[i], took[i], ec[i], finished));
    }
    ctx.spawn([](io_context& c, int& fin, stream_socket& s) -> task<void> {
        while (fin < n) (void)co_await ringsock::sleep_for(c, 10ms);
        s.close();
    }(ctx, finished, a));
    auto t0 = std::chrono::steady_clock::now();
    ctx.run();
    CHECK(std::chrono::steady_clock::now() - t0 < 20s);
    CHECK(holder_ec == std::errc::operation_canceled);
    int early = 0, wrong = 0, late = 0;
    for (int i = 0; i < n; ++i) {
        if (ec[i] != std::errc::timed_out) ++wrong;
        if (took[i] < limit[i]) ++early;
        if (took[i] > limit[i] + 3s) ++late;
    }
    CHECK(wrong == 0);
    CHECK(early == 0);
    CHECK(late == 0);
}

namespace {

/// One read with `lim`, in flight (holder) or gated behind a read that gets the first
/// byte; the peer sends two bytes after 150 ms.
template <class Limit>
std::pair<std::error_code, std::error_code> read_with_odd_limit(Limit lim) {
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    std::error_code in_flight, gated;
    std::string o1, o2, o3;
    std::error_code e3;
    int done = 0;
    ctx.spawn(read_n(a, 1, ringsock::op_limits(lim), o1, in_flight, done));
    ctx.spawn(read_n(a, 1, ringsock::op_limits(lim), o2, gated, done));
    ctx.spawn([](io_context& c, stream_socket& peer, stream_socket& s) -> task<void> {
        (void)co_await ringsock::sleep_for(c, 150ms);
        raw_send(peer, "12");
        (void)co_await ringsock::sleep_for(c, 100ms);
        s.close();
    }(ctx, b, a));
    ctx.run();
    return {in_flight, gated};
}

}  // namespace

TEST_CASE("hostile: odd time limits: already due ones time out, unrepresentable ones mean no limit",
          "[hostile][deadline]") {
    fd_leak_guard guard;
    using dd = std::chrono::duration<double>;
    const double inf = std::numeric_limits<double>::infinity();
    const double nan = std::numeric_limits<double>::quiet_NaN();
    auto due = [](auto lim) {
        auto [f, g] = read_with_odd_limit(lim);
        CHECK(f == std::errc::timed_out);
        CHECK(g == std::errc::timed_out);
    };
    auto none = [](auto lim) {
        auto [f, g] = read_with_odd_limit(lim);
        CHECK_FALSE(f);
        CHECK_FALSE(g);
    };
    SECTION("zero") { due(0ns); }
    SECTION("negative") { due(-1s); }
    SECTION("one nanosecond") { due(1ns); }
    SECTION("nanoseconds::min") { due(std::chrono::nanoseconds::min()); }
    SECTION("hours::min") { due(std::chrono::hours::min()); }
    SECTION("-infinity") { due(dd(-inf)); }
    SECTION("hours::max") { none(std::chrono::hours::max()); }
    SECTION("seconds::max") { none(std::chrono::seconds::max()); }
    SECTION("nanoseconds::max") { none(std::chrono::nanoseconds::max()); }
    SECTION("+infinity") { none(dd(inf)); }
    SECTION("NaN") { none(dd(nan)); }
    SECTION("1e300 s") { none(dd(1e300)); }
    SECTION("100 years") { none(std::chrono::hours(24 * 365 * 100)); }
    SECTION("float max") { none(std::chrono::duration<float>(std::numeric_limits<float>::max())); }
}

TEST_CASE("hostile: a loop whose only timers are deadlines of gated operations still wakes and returns",
          "[hostile][deadline]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    std::string o1, o2;
    std::error_code e1, e2;
    int done = 0;
    ctx.spawn(read_n(a, 1, {}, o1, e1, done));     // in flight forever
    ctx.spawn(read_n(a, 1, 50ms, o2, e2, done));   // gated, 50 ms
    auto t0 = std::chrono::steady_clock::now();
    // Once both reads wait, run_one blocks until something resumes: only the gated
    // read's deadline can do that (a hang here is the bug).
    while (done == 0) REQUIRE(ctx.run_one());
    CHECK(std::chrono::steady_clock::now() - t0 < 3s);
    CHECK(done == 1);
    CHECK(e2 == std::errc::timed_out);
    a.close();
    ctx.run();
    CHECK(done == 2);
    CHECK(e1 == std::errc::operation_canceled);
}

TEST_CASE("hostile: a gated read whose time limit runs out as it is handed the socket never loses a byte",
          "[hostile][deadline]") {
    fd_leak_guard guard;
    io_context ctx;
    int got_by_gated = 0, timed_out = 0, left_in_socket = 0;
    for (int i = 0; i < 300; ++i) {
        auto [a, b] = make_pair(ctx);
        std::string o1, o2;
        std::error_code e1, e2;
        int done = 0;
        const auto lim = std::chrono::microseconds(2000 + (i % 30) * 100);
        ctx.spawn(read_n(a, 1, {}, o1, e1, done));
        ctx.spawn(read_n(a, 1, lim, o2, e2, done));
        ctx.spawn([](io_context& c, stream_socket& peer) -> task<void> {
            (void)co_await ringsock::sleep_for(c, 3ms);
            raw_send(peer, "12");
        }(ctx, b));
        ctx.run();
        REQUIRE(done == 2);
        REQUIRE_FALSE(e1);
        REQUIRE(o1 == "1");
        if (!e2) {
            REQUIRE(o2 == "2");
            ++got_by_gated;
        } else {
            REQUIRE(e2 == std::errc::timed_out);
            ++timed_out;
            // The byte the timed-out read did not take is still there.
            REQUIRE(ringsock::test::readable_bytes(a) == 1);
            ++left_in_socket;
        }
    }
    INFO("gated got it " << got_by_gated << ", timed out " << timed_out);
    CHECK(got_by_gated + timed_out == 300);
    CHECK(left_in_socket == timed_out);
}

// ---------------------------------------------------------------------------------
// Accept floods, closed and destroyed acceptors.
// ---------------------------------------------------------------------------------

TEST_CASE("hostile: 5000 connections against 40 accept loops with 1 ms time limits: none is lost or leaked",
          "[hostile][accept][flood]") {
    fd_leak_guard guard;
    io_context ctx;
    auto ep = ringsock::test::unique_abstract("flood");
    auto acc = ringsock::acceptor::listen(ctx, ep);
    REQUIRE(acc);
    constexpr int n = 5000;
    std::atomic<int> connected{0};
    std::atomic<bool> stop_clients{false};
    std::vector<unique_fd> clients;
    clients.reserve(n);
    std::thread connector([&] {
        for (int i = 0; i < n; ++i) {
            unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
            if (!fd) break;
            if (::connect(fd.get(), ep.data(), ep.size()) != 0) break;
            clients.push_back(std::move(fd));
            connected.fetch_add(1, std::memory_order_relaxed);
            if (i % 97 == 0) std::this_thread::sleep_for(200us);
        }
        while (!stop_clients.load()) std::this_thread::sleep_for(1ms);
    });
    int accepted = 0, timeouts = 0, errors = 0;
    std::vector<stream_socket> conns;
    conns.reserve(n);
    for (int w = 0; w < 40; ++w) {
        ctx.spawn([](ringsock::acceptor& a, int& acc_n, int& to, int& err, std::vector<stream_socket>& keep) -> task<void> {
            auto deadline = std::chrono::steady_clock::now() + 60s;
            while (acc_n < n && std::chrono::steady_clock::now() < deadline) {
                auto r = co_await a.accept(1ms);
                if (r) {
                    ++acc_n;
                    keep.push_back(std::move(*r));
                } else if (r.error() == std::errc::timed_out) {
                    ++to;
                } else {
                    ++err;
                }
            }
        }(*acc, accepted, timeouts, errors, conns));
    }
    ctx.run();
    stop_clients = true;
    connector.join();
    INFO("connected " << connected.load() << ", accepted " << accepted << ", timeouts " << timeouts);
    CHECK(connected.load() == n);
    CHECK(accepted == n);
    CHECK(errors == 0);
    CHECK(timeouts > 0);
    // Every accepted socket is the peer of one client: its client sees EOF once it closes.
    conns.clear();
    acc->close();
    clients.clear();
}

TEST_CASE("hostile: accept after close, and an acceptor destroyed with timed and untimed waiters",
          "[hostile][accept]") {
    fd_leak_guard guard;
    io_context ctx;
    auto ep = ringsock::test::unique_abstract("closed");
    auto acc0 = ringsock::acceptor::listen(ctx, ep);
    REQUIRE(acc0);
    auto acc = std::make_unique<ringsock::acceptor>(std::move(*acc0));
    std::vector<std::error_code> ec(6);
    int done = 0;
    for (int i = 0; i < 6; ++i) {
        ctx.spawn([](ringsock::acceptor& a, int i, std::error_code& e, int& d) -> task<void> {
            ringsock::op_limits lim;
            if (i % 2) lim = ringsock::op_limits(10s);
            auto r = co_await a.accept(lim);
            e = r.error();
            ++d;
        }(*acc, i, ec[i], done));
    }
    // A connection waits in the backlog when the acceptor goes: closed with it.
    unique_fd client;
    ctx.spawn([](io_context& c, std::unique_ptr<ringsock::acceptor>& a) -> task<void> {
        for (int k = 0; k < 3; ++k) co_await c.yield();
        a.reset();
    }(ctx, acc));
    ctx.run();
    CHECK(done == 6);
    for (auto& e : ec) CHECK(e == std::errc::operation_canceled);
    // accept() on a closed acceptor fails at once.
    auto acc2 = ringsock::acceptor::listen(ctx, ringsock::test::unique_abstract("closed2"));
    REQUIRE(acc2);
    acc2->close();
    auto r = ctx.sync_wait([](ringsock::acceptor& a) -> task<std::error_code> {
        co_return (co_await a.accept(1s)).error();
    }(*acc2));
    CHECK(r == std::errc::bad_file_descriptor);
}

TEST_CASE("hostile: connections queued in the accept engine are closed when the acceptor closes", "[hostile][accept]") {
    fd_leak_guard guard;
    io_context ctx;
    auto ep = ringsock::test::unique_abstract("queued");
    auto acc = ringsock::acceptor::listen(ctx, ep);
    REQUIRE(acc);
    std::vector<unique_fd> clients;
    for (int i = 0; i < 200; ++i) clients.push_back(ringsock::test::raw_connect(ep));
    // One accept arms the multishot request; it takes up to the engine's cap (64).
    auto first = ctx.sync_wait([](ringsock::acceptor& a) -> task<io_result<stream_socket>> {
        co_return co_await a.accept(1s);
    }(*acc));
    REQUIRE(first);
    for (int k = 0; k < 10; ++k) ctx.poll();
    acc->close();
    // Every client sees its connection closed (EOF or ECONNRESET), not left hanging.
    int hung = 0;
    for (auto& c : clients) {
        pollfd p{c.get(), POLLIN | POLLRDHUP, 0};
        if (::poll(&p, 1, 1000) != 1) ++hung;
    }
    CHECK(hung == 1);  // only the one we accepted and still hold
}

// ---------------------------------------------------------------------------------
// io_context destroyed with operations in every state.
// ---------------------------------------------------------------------------------

TEST_CASE("hostile: destroying the io_context with spawned operations gated, pending, in flight and ready",
          "[hostile][lifetime][context]") {
    fd_leak_guard guard;
    for (int variant = 0; variant < 16; ++variant) {
        io_context::options opts;
        opts.entries = variant % 2 ? 2 : 4;  // tiny: some operations wait for SQ room
        auto ctx = std::make_unique<io_context>(opts);
        struct shared {
            std::optional<stream_socket> a, b, c, d;
            std::optional<fd_stream> f, g;
        };
        auto st = std::make_shared<shared>();
        {
            auto p = make_pair(*ctx);
            st->a.emplace(std::move(p.first));
            st->b.emplace(std::move(p.second));
            auto q = make_pair(*ctx);
            st->c.emplace(std::move(q.first));
            st->d.emplace(std::move(q.second));
            auto r = make_fd_pair(*ctx);
            st->f.emplace(std::move(r.first));
            st->g.emplace(std::move(r.second));
        }
        set_small_buffers(st->a->native_handle());
        set_small_buffers(st->b->native_handle());
        shared* raw = st.get();
        // variant & 4: the sockets live in a spawned frame and die with the context,
        // destroyed before (& 8: after) the frames of the operations on them.
        auto owner = [](std::shared_ptr<shared> s, io_context& c) -> task<void> {
            auto own = std::move(s);
            (void)co_await ringsock::sleep_for(c, 1h);
        };
        if ((variant & 4) && (variant & 8)) ctx->spawn(owner(std::move(st), *ctx));
        std::vector<char> big(1 << 20, 'b');
        for (int i = 0; i < 6; ++i) {
            ctx->spawn([](shared* s, std::vector<char>& data, int i) -> task<void> {
                std::array<std::byte, 8> buf{};
                switch (i) {
                    case 0: (void)co_await s->a->write_all(data); break;             // in flight, blocked
                    case 1: (void)co_await s->a->write_all(data, 1h); break;         // gated, timed
                    case 2: (void)co_await s->c->read_some(buf, 1h); break;          // ready (data sent)
                    case 3: (void)co_await s->c->read_some(buf); break;              // gated / ready
                    case 4: (void)co_await s->f->receive(buf, 1h); break;            // fds in flight
                    case 5: (void)co_await s->f->read_some(buf); break;              // gated
                }
            }(raw, big, i));
        }
        if ((variant & 4) && !(variant & 8)) ctx->spawn(owner(std::move(st), *ctx));
        ::send(raw->d->native_handle(), "abcd", 4, MSG_NOSIGNAL);
        int pipefd[2];
        REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
        raw_send_fd(raw->g->native_handle(), "z", pipefd[0]);
        ::close(pipefd[0]);
        ::close(pipefd[1]);
        for (int k = 0; k < (variant >> 1 & 1) + 1; ++k) ctx->run_one();
        st.reset();  // !(variant & 4): the sockets go first, the frames stay suspended
        ctx.reset();
    }
}

// ---------------------------------------------------------------------------------
// Stop requests from other threads.
// ---------------------------------------------------------------------------------

TEST_CASE("hostile: stop requests from another thread race completion, close, destruction and time limits",
          "[hostile][thread]") {
    fd_leak_guard guard;
    io_context ctx;
    constexpr int rounds = 3000;
    int data = 0, canceled = 0, timed = 0, other = 0;
    for (int i = 0; i < rounds; ++i) {
        auto [a0, b] = make_pair(ctx);
        auto a = std::make_unique<stream_socket>(std::move(a0));
        std::stop_source src;
        const int action = i % 4;
        const auto delay = std::chrono::microseconds((i * 37) % 200);
        std::thread stopper([&src, delay] {
            std::this_thread::sleep_for(delay);
            src.request_stop();
        });
        std::array<std::error_code, 2> ec;
        int done = 0;
        for (int k = 0; k < 2; ++k) {
            ctx.spawn([](stream_socket& s, std::stop_token tok, std::chrono::microseconds lim, std::error_code& e,
                         int& d) -> task<void> {
                std::array<std::byte, 4> buf{};
                ringsock::op_limits l(tok, lim);
                auto r = co_await s.read_some(buf, l);
                e = r.error();
                ++d;
            }(*a, src.get_token(), std::chrono::microseconds(50 + (i * 13) % 150), ec[k], done));
        }
        ctx.spawn([](io_context& c, std::unique_ptr<stream_socket>& s, stream_socket& peer, int act,
                     std::chrono::microseconds dl) -> task<void> {
            co_await c.yield();
            auto until = std::chrono::steady_clock::now() + dl;
            while (std::chrono::steady_clock::now() < until) co_await c.yield();
            if (act == 0) raw_send(peer, "ab");
            else if (act == 1) s->close();
            else if (act == 2) s.reset();
        }(ctx, a, b, action, delay));
        ctx.run();
        stopper.join();
        REQUIRE(done == 2);
        for (auto& e : ec) {
            if (!e) ++data;
            else if (e == std::errc::operation_canceled) ++canceled;
            else if (e == std::errc::timed_out) ++timed;
            else ++other;
        }
        REQUIRE(ctx.outstanding_work() == 0);
    }
    INFO("data " << data << " canceled " << canceled << " timed out " << timed);
    CHECK(other == 0);
}
TEST_CASE("hostile: with a one-entry submission queue a timed read still runs (needs two SQEs)",
          "[hostile][deadline][sq]") {
    fd_leak_guard guard;
    io_context::options opts;
    opts.entries = 1;
    io_context ctx(opts);
    auto [a, b] = make_pair(ctx);
    raw_send(b, "q");
    auto t0 = std::chrono::steady_clock::now();
    auto r = ctx.sync_wait([](stream_socket& s) -> task<std::error_code> {
        std::array<std::byte, 4> buf{};
        co_return (co_await s.read_some(buf, 2s)).error();
    }(a));
    // The byte is there at once: the read must not sit in the pending queue until its
    // time limit expires.
    CHECK_FALSE(r);
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);
}


// ---------------------------------------------------------------------------------
// Running out of descriptors; abandoned waits.
// ---------------------------------------------------------------------------------

TEST_CASE("hostile: accept under EMFILE reports the error, and every connection is accepted once descriptors are back",
          "[hostile][accept][emfile]") {
    fd_leak_guard guard;
    io_context ctx;
    auto ep = ringsock::test::unique_abstract("emfile");
    auto acc = ringsock::acceptor::listen(ctx, ep);
    REQUIRE(acc);
    std::vector<unique_fd> clients;
    for (int i = 0; i < 20; ++i) clients.push_back(ringsock::test::raw_connect(ep));
    rlimit old{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &old) == 0);
    // Room for exactly three more descriptors.
    rlimit tight = old;
    tight.rlim_cur = ringsock::test::open_fd_count() + 3;
    int accepted = 0, emfile = 0, other = 0;
    std::vector<stream_socket> conns;
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &tight) == 0);
    ctx.sync_wait([](ringsock::acceptor& a, int& acc_n, int& em, int& oth, std::vector<stream_socket>& keep,
                     rlimit restore) -> task<void> {
        for (int tries = 0; tries < 200 && acc_n < 20; ++tries) {
            auto r = co_await a.accept(500ms);
            if (r) {
                ++acc_n;
                keep.push_back(std::move(*r));
            } else if (r.error() == std::errc::too_many_files_open) {
                // Out of descriptors: give them back and retry, as the docs advise.
                if (++em == 1) ::setrlimit(RLIMIT_NOFILE, &restore);
            } else {
                ++oth;
            }
        }
    }(*acc, accepted, emfile, other, conns, old));
    ::setrlimit(RLIMIT_NOFILE, &old);
    INFO("accepted " << accepted << ", EMFILE " << emfile << ", other " << other);
    CHECK(emfile >= 1);
    CHECK(accepted == 20);
    CHECK(other == 0);
}

TEST_CASE("hostile: sync_wait left by a spawned task's exception destroys its task with operations in flight and gated",
          "[hostile][lifetime]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [a, b] = make_pair(ctx);
    ctx.spawn([](io_context& c) -> task<void> {
        (void)co_await ringsock::sleep_for(c, 20ms);
        throw std::runtime_error("boom");
    }(ctx));
    auto body = [](stream_socket& s) -> task<void> {
        std::string o1, o2;
        std::error_code e1, e2;
        int done = 0;
        auto r1 = read_n(s, 1, {}, o1, e1, done);
        auto r2 = read_n(s, 1, 10s, o2, e2, done);
        // Both reads run inside this frame: one in flight, one gated.
        co_await ringsock::when_all(std::move(r1), std::move(r2));
    };
    CHECK_THROWS_AS(ctx.sync_wait(body(a)), std::runtime_error);
    CHECK(ctx.outstanding_work() == 0);
    // No orphaned read took this byte.
    raw_send(b, "k");
    CHECK(ringsock::test::readable_bytes(a) == 1);
}

TEST_CASE("hostile: destroying the io_context while a write_all is part-way leaves no operation behind in its socket's gate",
          "[hostile][lifetime][context]") {
    fd_leak_guard guard;
    for (int round = 0; round < 20; ++round) {
        auto ctx = std::make_unique<io_context>();
        auto p = make_pair(*ctx);
        set_small_buffers(p.first.native_handle());
        set_small_buffers(p.second.native_handle());
        auto pair = std::make_shared<std::pair<stream_socket, stream_socket>>(std::move(p));
        std::vector<char> big(1 << 20, 'w');
        bool wrote_some = false;
        // The owner of the sockets is spawned first, so the loop destroys its frame last
        // (newest first): after the frame of the write that is still in flight.
        ctx->spawn([](std::shared_ptr<std::pair<stream_socket, stream_socket>> s, io_context& c) -> task<void> {
            auto own = std::move(s);
            (void)co_await ringsock::sleep_for(c, 1h);
        }(pair, *ctx));
        ctx->spawn([](stream_socket& s, std::vector<char>& data) -> task<void> {
            (void)co_await s.write_all(data);  // the peer never reads: blocks part-way
        }(pair->first, big));
        auto* raw = pair.get();
        pair.reset();
        for (int k = 0; k < 5; ++k) ctx->poll();
        int queued = 0;
        REQUIRE(::ioctl(raw->second.native_handle(), FIONREAD, &queued) == 0);
        wrote_some = queued > 0;
        REQUIRE(wrote_some);  // the write is part-way: some bytes sent, the rest pending
        // The drain cancels the write; its partial result must not make it resubmit and
        // leave itself (state idle) as its socket's send-gate holder.
        ctx.reset();
    }
}
TEST_CASE("hostile: destroying a signal_set ends a wait that is in flight on it", "[hostile][signal]") {
    fd_leak_guard guard;
    io_context ctx;
    auto sigs = std::make_unique<ringsock::signal_set>(ctx, std::initializer_list<int>{SIGUSR2});
    std::error_code ec;
    bool resumed = false, watchdog_fired = false;
    ctx.spawn([](ringsock::signal_set& s, std::error_code& e, bool& r) -> task<void> {
        auto res = co_await s.wait();
        e = res.error();
        r = true;
    }(*sigs, ec, resumed));
    ctx.spawn([](io_context& c, std::unique_ptr<ringsock::signal_set>& s) -> task<void> {
        for (int k = 0; k < 3; ++k) co_await c.yield();
        s.reset();
    }(ctx, sigs));
    std::stop_source watchdog_stop;
    ctx.spawn([](io_context& c, bool& fired, bool& r, std::stop_token tok) -> task<void> {
        (void)co_await ringsock::sleep_for(c, 2s, tok);
        if (!r) {
            fired = true;
            c.stop();
        }
    }(ctx, watchdog_fired, resumed, watchdog_stop.get_token()));
    ctx.spawn([](io_context& c, bool& r, std::stop_source& w) -> task<void> {
        while (!r) {
            (void)co_await ringsock::sleep_for(c, 10ms);
            if (c.stopped()) co_return;
        }
        w.request_stop();
    }(ctx, resumed, watchdog_stop));
    ctx.run();
    CHECK_FALSE(watchdog_fired);
    CHECK(resumed);
    if (!resumed) {
        // Let the abandoned wait end so the context can go: deliver the signal it waits for.
        ctx.restart();
        ::kill(::getpid(), SIGUSR2);
        ctx.run();
    }
}

TEST_CASE("hostile: an fd_stream receive that completed keeps its descriptors when its socket is destroyed before it resumes",
          "[hostile][lifetime][fd]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [a0, b] = make_fd_pair(ctx);
    auto [c, d] = make_fd_pair(ctx);
    auto a = std::make_unique<fd_stream>(std::move(a0));
    int pipefd[2];
    REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
    REQUIRE(::send(d.native_handle(), "x", 1, MSG_NOSIGNAL) == 1);
    raw_send_fd(b.native_handle(), "hello", pipefd[0]);
    ::close(pipefd[0]);
    std::vector<int> order;
    std::size_t bytes = 0, nfds = 0;
    std::error_code ec;
    // Both are recvmsg requests, submitted in spawn order: the destroyer's completes first.
    ctx.spawn([](fd_stream& s, std::unique_ptr<fd_stream>& victim, std::vector<int>& ord) -> task<void> {
        std::array<std::byte, 1> buf{};
        (void)co_await s.read_some(buf);
        ord.push_back(1);
        victim.reset();
    }(c, a, order));
    ctx.spawn([](fd_stream& s, std::size_t& n, std::size_t& f, std::error_code& e, std::vector<int>& ord) -> task<void> {
        std::array<char, 16> buf{};
        auto r = co_await s.receive(buf);
        ord.push_back(2);
        e = r.error();
        n = r.partial_value().bytes;
        f = r.partial_value().fds.size();
    }(*a, bytes, nfds, ec, order));
    ctx.run();
    ::close(pipefd[1]);
    REQUIRE(order.size() == 2);
    CHECK(order[0] == 1);
    CHECK_FALSE(ec);
    CHECK(bytes == 5);
    // "One that already completed keeps its result": the descriptor came with these bytes.
    CHECK(nfds == 1);
}


TEST_CASE("hostile: reading from a default-constructed socket fails cleanly instead of crashing",
          "[hostile][careless]") {
    // In a child: the failure mode may be a crash.
    ringsock::test::child_process child([] {
        io_context ctx;
        stream_socket never_opened;
        try {
            auto r = ctx.sync_wait([](stream_socket& s) -> task<std::error_code> {
                std::array<std::byte, 4> buf{};
                co_return (co_await s.read_some(buf, 100ms)).error();
            }(never_opened));
            return r ? 0 : 1;  // 0: an error was reported
        } catch (const std::logic_error& e) {
            // Or the misuse is named in an exception.
            return std::string_view(e.what()).find("default-constructed") != std::string_view::npos ? 0 : 1;
        }
    });
    CHECK(child.wait() == 0);  // -1: killed by a signal (null io_context dereference)
}
