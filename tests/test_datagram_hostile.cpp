// Hostile tests of datagram sends that wait for a full receiver (send_msg_op's
// kind::datagram): the datagram is only ever sent by a direct non-blocking syscall, the
// ring only waits (a POLL_ADD, then TIMEOUTs backing off). Stops, deadlines, close,
// release, abandoned frames and context teardown must end a wait with nothing sent,
// then or later; many waiting senders must each deliver exactly once, whole.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <ringsock/ringsock.hpp>

#include "support/cancel_support.hpp"
#include "support/fd_count.hpp"
#include "support/full_receiver.hpp"
#include "support/leak_guard.hpp"

using namespace std::chrono_literals;
using ringsock::datagram_socket;
using ringsock::endpoint;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::task;
using ringsock::unique_fd;
using ringsock::test::filler_value;
using ringsock::test::full_receiver;
using ringsock::test::seen;

namespace {

// Any hang kills the test binary instead of blocking CI (SIGALRM's default action).
struct hang_guard {
    explicit hang_guard(unsigned seconds = 60) { ::alarm(seconds); }
    ~hang_guard() { ::alarm(0); }
    hang_guard(const hang_guard&) = delete;
    hang_guard& operator=(const hang_guard&) = delete;
};

// A SIGPIPE kills the process (so a send without MSG_NOSIGNAL cannot go unnoticed).
struct sigpipe_kills {
    struct sigaction old {};
    sigpipe_kills() {
        struct sigaction sa {};
        sa.sa_handler = SIG_DFL;
        ::sigemptyset(&sa.sa_mask);
        ::sigaction(SIGPIPE, &sa, &old);
    }
    ~sigpipe_kills() { ::sigaction(SIGPIPE, &old, nullptr); }
    sigpipe_kills(const sigpipe_kills&) = delete;
    sigpipe_kills& operator=(const sigpipe_kills&) = delete;
};

std::span<const std::byte> bytes_of(const std::uint32_t& v) { return std::as_bytes(std::span(&v, 1)); }

task<void> pause(io_context& ctx, std::chrono::milliseconds d) {
    auto s = co_await ringsock::sleep_for(ctx, d);
    REQUIRE(s);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Stops and deadlines while waiting: in the POLL (one-way connect) and in the TIMEOUT
// backoff (send_to)
// ---------------------------------------------------------------------------------------

TEST_CASE("datagram hostile: a stop while a one-way connected send waits in its poll ends it cancelled, nothing sent then or later",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "stop-poll");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    REQUIRE(s->connect(full.ep));
    std::stop_source src;
    io_result<std::size_t> sent{0};
    auto sender = [&]() -> task<void> {
        const std::uint32_t v = 7;
        sent = co_await s->send(bytes_of(v), src.get_token());
    };
    auto stopper = [&]() -> task<void> {
        co_await pause(ctx, 20ms);
        src.request_stop();
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(sender(), stopper()); };
    ctx.sync_wait(body());
    REQUIRE_FALSE(sent);
    CHECK(sent.error() == std::errc::operation_canceled);
    CHECK(sent.partial_value() == 0);
    full.expect_only_fillers(full.drain());
    auto later = [&]() -> task<void> { co_await pause(ctx, 30ms); };
    ctx.sync_wait(later());
    CHECK(full.drain().empty());
    // The socket still works.
    auto again = [&]() -> task<void> {
        const std::uint32_t v = 8;
        auto w = co_await s->send(bytes_of(v));
        REQUIRE(w);
        CHECK(*w == 4);
    };
    ctx.sync_wait(again());
    auto got = full.drain();
    REQUIRE(got.size() == 1);
    CHECK(got[0].value == 8);
}

TEST_CASE("datagram hostile: a stop while a send_to waits in its timer backoff ends it cancelled, nothing sent then or later",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "stop-timer");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    for (auto wait : {1ms, 30ms}) {  // early in the backoff, then at its 5 ms ceiling
        std::stop_source src;
        io_result<std::size_t> sent{0};
        auto sender = [&]() -> task<void> {
            const std::uint32_t v = 7;
            sent = co_await s->send_to(bytes_of(v), full.ep, src.get_token());
        };
        auto stopper = [&]() -> task<void> {
            co_await pause(ctx, wait);
            src.request_stop();
        };
        auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(sender(), stopper()); };
        ctx.sync_wait(body());
        REQUIRE_FALSE(sent);
        CHECK(sent.error() == std::errc::operation_canceled);
        CHECK(sent.partial_value() == 0);
    }
    full.expect_only_fillers(full.drain());
    auto later = [&]() -> task<void> { co_await pause(ctx, 30ms); };
    ctx.sync_wait(later());
    CHECK(full.drain().empty());
}

TEST_CASE("datagram hostile: a stop requested from another thread while a send_to waits ends it cancelled, nothing sent",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "stop-thread");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    std::stop_source src;
    std::thread stopper([&] {
        std::this_thread::sleep_for(25ms);
        src.request_stop();
    });
    io_result<std::size_t> sent{0};
    auto sender = [&]() -> task<void> {
        const std::uint32_t v = 7;
        sent = co_await s->send_to(bytes_of(v), full.ep, src.get_token());
    };
    ctx.sync_wait(sender());
    stopper.join();
    REQUIRE_FALSE(sent);
    CHECK(sent.error() == std::errc::operation_canceled);
    full.expect_only_fillers(full.drain());
    auto later = [&]() -> task<void> { co_await pause(ctx, 30ms); };
    ctx.sync_wait(later());
    CHECK(full.drain().empty());
}

TEST_CASE("datagram hostile: a deadline expiring while a one-way connected send waits in its poll ends it timed_out, nothing sent then or later",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "deadline-poll");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    REQUIRE(s->connect(full.ep));
    auto run = [&]() -> task<void> {
        const std::uint32_t v = 7;
        auto w = co_await s->send(bytes_of(v), 25ms);
        REQUIRE_FALSE(w);
        CHECK(w.error() == std::errc::timed_out);
        CHECK(w.partial_value() == 0);
    };
    ctx.sync_wait(run());
    full.expect_only_fillers(full.drain());
    auto later = [&]() -> task<void> { co_await pause(ctx, 30ms); };
    ctx.sync_wait(later());
    CHECK(full.drain().empty());
}

TEST_CASE("datagram hostile: a send_to with a long deadline whose receiver makes room in time succeeds whole (the deadline survives the timer backoff)",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "deadline-ok");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    REQUIRE(s->connect(full.ep));  // and a one-way connected send
    auto c = datagram_socket::open(ctx);
    REQUIRE(c);
    std::stop_source never;
    io_result<std::size_t> a{0}, b{0};
    auto send_to = [&]() -> task<void> {
        const std::uint32_t v = 11;
        a = co_await c->send_to(bytes_of(v), full.ep, {never.get_token(), 10s});
    };
    auto send_conn = [&]() -> task<void> {
        const std::uint32_t v = 12;
        b = co_await s->send(bytes_of(v), {never.get_token(), 10s});
    };
    std::vector<seen> got;
    auto drainer = [&]() -> task<void> {
        co_await pause(ctx, 30ms);  // both wait by now; the send_to well into its backoff
        got = full.drain();
        for (int i = 0; i < 400 && got.size() < static_cast<std::size_t>(full.queued) + 2; ++i) {
            co_await pause(ctx, 5ms);
            auto more = full.drain();
            got.insert(got.end(), more.begin(), more.end());
        }
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(send_to(), send_conn(), drainer()); };
    ctx.sync_wait(body());
    REQUIRE(a);
    CHECK(*a == 4);
    REQUIRE(b);
    CHECK(*b == 4);
    REQUIRE(got.size() == static_cast<std::size_t>(full.queued) + 2);
    std::multiset<std::uint32_t> values;
    for (const auto& g : got) {
        CHECK(g.len == 4);
        values.insert(g.value);
    }
    CHECK(values.count(11) == 1);
    CHECK(values.count(12) == 1);
}

TEST_CASE("datagram hostile: a deadline expiring while a send waits gated behind another waiting send ends it timed_out, nothing of it sent",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "deadline-gated");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    std::stop_source src;
    io_result<std::size_t> first{0}, second{0};
    auto a = [&]() -> task<void> {
        const std::uint32_t v = 1;
        first = co_await s->send_to(bytes_of(v), full.ep, src.get_token());
    };
    auto b = [&]() -> task<void> {
        const std::uint32_t v = 2;
        second = co_await s->send_to(bytes_of(v), full.ep, 20ms);
    };
    auto stopper = [&]() -> task<void> {
        co_await pause(ctx, 40ms);
        src.request_stop();
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(a(), b(), stopper()); };
    ctx.sync_wait(body());
    REQUIRE_FALSE(first);
    CHECK(first.error() == std::errc::operation_canceled);
    REQUIRE_FALSE(second);
    CHECK(second.error() == std::errc::timed_out);
    full.expect_only_fillers(full.drain());
    auto later = [&]() -> task<void> { co_await pause(ctx, 30ms); };
    ctx.sync_wait(later());
    CHECK(full.drain().empty());
}

// ---------------------------------------------------------------------------------------
// Abandoned frames and teardown
// ---------------------------------------------------------------------------------------

TEST_CASE("datagram hostile: a scope destroyed while its children's sends wait (poll and timer) frees them and nothing is sent later",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "scope");
    auto conn = datagram_socket::open(ctx);
    REQUIRE(conn);
    REQUIRE(conn->connect(full.ep));
    auto unconn = datagram_socket::open(ctx);
    REQUIRE(unconn);
    int finished = 0;
    {
        ringsock::scope sc(ctx);
        sc.spawn([&](std::stop_token) -> task<void> {
            auto payload = std::make_unique<std::uint32_t>(21);  // heap memory the send points into
            auto w = co_await conn->send(std::as_bytes(std::span(payload.get(), 1)));
            (void)w;
            ++finished;
        });
        sc.spawn([&](std::stop_token) -> task<void> {
            auto payload = std::make_unique<std::uint32_t>(22);
            auto w = co_await unconn->send_to(std::as_bytes(std::span(payload.get(), 1)), full.ep);
            (void)w;
            ++finished;
        });
        auto wait = [&]() -> task<void> { co_await pause(ctx, 30ms); };
        ctx.sync_wait(wait());
        CHECK(sc.size() == 2);
    }  // destroyed without join: the frames (and the payloads) go now
    CHECK(finished == 0);
    full.expect_only_fillers(full.drain());  // room now: a wait left behind would send
    auto later = [&]() -> task<void> { co_await pause(ctx, 30ms); };
    ctx.sync_wait(later());
    CHECK(full.drain().empty());
}

TEST_CASE("datagram hostile: a scope stopped while its children's sends wait ends each with operation_canceled and nothing sent",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "scope-stop");
    auto conn = datagram_socket::open(ctx);
    REQUIRE(conn);
    REQUIRE(conn->connect(full.ep));
    auto unconn = datagram_socket::open(ctx);
    REQUIRE(unconn);
    int cancelled = 0;
    auto body = [&]() -> task<void> {
        ringsock::scope sc(ctx);
        sc.spawn([&](std::stop_token st) -> task<void> {
            const std::uint32_t v = 31;
            auto w = co_await conn->send(bytes_of(v), st);
            if (!w && w.error() == std::errc::operation_canceled && w.partial_value() == 0) ++cancelled;
        });
        for (int i = 0; i < 3; ++i) {  // three queue on one socket: one waits, two are gated
            sc.spawn([&, i](std::stop_token st) -> task<void> {
                const std::uint32_t v = 32 + static_cast<std::uint32_t>(i);
                auto w = co_await unconn->send_to(bytes_of(v), full.ep, st);
                if (!w && w.error() == std::errc::operation_canceled && w.partial_value() == 0) ++cancelled;
            });
        }
        co_await pause(ctx, 30ms);
        sc.request_stop();
        co_await sc.join();
    };
    ctx.sync_wait(body());
    CHECK(cancelled == 4);
    full.expect_only_fillers(full.drain());
    auto later = [&]() -> task<void> { co_await pause(ctx, 30ms); };
    ctx.sync_wait(later());
    CHECK(full.drain().empty());
}

TEST_CASE("datagram hostile: destroying the io_context while spawned sends wait (poll and timer) frees their frames, leaks nothing and sends nothing",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context rctx;  // only owns the receiver
    full_receiver full(rctx, "ctx-gone");
    int finished = 0;
    int destroyed = 0;
    struct on_destroy {
        int* n;
        ~on_destroy() { ++*n; }
    };
    {
        io_context ctx;
        auto conn = datagram_socket::open(ctx);
        REQUIRE(conn);
        REQUIRE(conn->connect(full.ep));
        auto unconn = datagram_socket::open(ctx);
        REQUIRE(unconn);
        auto s1 = [&]() -> task<void> {
            on_destroy d{&destroyed};
            const std::uint32_t v = 41;
            auto w = co_await conn->send(bytes_of(v));
            (void)w;
            ++finished;
        };
        auto s2 = [&]() -> task<void> {
            on_destroy d{&destroyed};
            const std::uint32_t v = 42;
            auto w = co_await unconn->send_to(bytes_of(v), full.ep);
            (void)w;
            ++finished;
        };
        ctx.spawn(s1());
        ctx.spawn(s2());
        auto wait = [&]() -> task<void> { co_await pause(ctx, 30ms); };
        ctx.sync_wait(wait());
        // Room appears and the backoff timer expires before the context goes: its
        // completion is then reaped by the teardown itself.
        full.expect_only_fillers(full.drain());
        full.queued = 0;
        std::this_thread::sleep_for(15ms);
    }  // the sockets first, then the context with the tasks
    CHECK(finished == 0);
    CHECK(destroyed == 2);
    auto later = [&]() -> task<void> { co_await pause(rctx, 30ms); };
    rctx.sync_wait(later());
    CHECK(full.drain().empty());
}

TEST_CASE("datagram hostile: destroying the io_context first while spawned sends wait, sockets still open, sends nothing",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context rctx;
    full_receiver full(rctx, "ctx-first");
    int finished = 0;
    {
        auto ctx = std::make_unique<io_context>();
        auto conn = datagram_socket::open(*ctx);
        REQUIRE(conn);
        REQUIRE(conn->connect(full.ep));
        auto unconn = datagram_socket::open(*ctx);
        REQUIRE(unconn);
        auto s1 = [&]() -> task<void> {
            const std::uint32_t v = 51;
            auto w = co_await conn->send(bytes_of(v));
            (void)w;
            ++finished;
        };
        auto s2 = [&]() -> task<void> {
            const std::uint32_t v = 52;
            auto w = co_await unconn->send_to(bytes_of(v), full.ep);
            (void)w;
            ++finished;
        };
        ctx->spawn(s1());
        ctx->spawn(s2());
        auto wait = [&]() -> task<void> { co_await pause(*ctx, 30ms); };
        ctx->sync_wait(wait());
        full.expect_only_fillers(full.drain());
        full.queued = 0;
        std::this_thread::sleep_for(15ms);  // the poll fired, the timer expired: both unreaped
        conn->release().reset();  // the sockets must not outlive their context's operations
        unconn->release().reset();
        ctx.reset();
    }
    CHECK(finished == 0);
    auto later = [&]() -> task<void> { co_await pause(rctx, 30ms); };
    rctx.sync_wait(later());
    CHECK(full.drain().empty());
}

// ---------------------------------------------------------------------------------------
// Close, release, move, shutdown while waiting
// ---------------------------------------------------------------------------------------

TEST_CASE("datagram hostile: release() while a send_to waits in its timer backoff ends it cancelled; the released descriptor works and nothing was sent",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "release");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    unique_fd released;
    io_result<std::size_t> sent{0};
    auto sender = [&]() -> task<void> {
        const std::uint32_t v = 61;
        sent = co_await s->send_to(bytes_of(v), full.ep);
    };
    auto releaser = [&]() -> task<void> {
        co_await pause(ctx, 25ms);
        released = s->release();
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(sender(), releaser()); };
    ctx.sync_wait(body());
    REQUIRE_FALSE(sent);
    CHECK(sent.error() == std::errc::operation_canceled);
    REQUIRE(released);
    full.expect_only_fillers(full.drain());
    auto later = [&]() -> task<void> { co_await pause(ctx, 30ms); };
    ctx.sync_wait(later());
    CHECK(full.drain().empty());
    const std::uint32_t v = 62;
    CHECK(::sendto(released.get(), &v, sizeof v, MSG_DONTWAIT, full.ep.data(), full.ep.size()) == 4);
    auto got = full.drain();
    REQUIRE(got.size() == 1);
    CHECK(got[0].value == 62);
}

TEST_CASE("datagram hostile: close() of a one-way connected socket while its send waits in the poll ends it cancelled and sends nothing",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "close-poll");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    REQUIRE(s->connect(full.ep));
    io_result<std::size_t> sent{0}, gated{0};
    auto sender = [&]() -> task<void> {
        const std::uint32_t v = 71;
        sent = co_await s->send(bytes_of(v));
    };
    auto second = [&]() -> task<void> {
        const std::uint32_t v = 72;
        gated = co_await s->send(bytes_of(v));
    };
    auto closer = [&]() -> task<void> {
        co_await pause(ctx, 20ms);
        s->close();
        // The descriptor number is free again: a new socket may take it at once.
        auto reuse = datagram_socket::open(ctx);
        REQUIRE(reuse);
        REQUIRE(reuse->connect(full.ep));
        co_await pause(ctx, 20ms);
        full.expect_only_fillers(full.drain());
        co_await pause(ctx, 20ms);
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(sender(), second(), closer()); };
    ctx.sync_wait(body());
    REQUIRE_FALSE(sent);
    CHECK(sent.error() == std::errc::operation_canceled);
    REQUIRE_FALSE(gated);
    CHECK(gated.error() == std::errc::operation_canceled);
    CHECK(full.drain().empty());
}

TEST_CASE("datagram hostile: a socket moved while its send_to waits still delivers the datagram once room appears",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "move");
    auto opened = datagram_socket::open(ctx);
    REQUIRE(opened);
    auto s = std::make_unique<datagram_socket>(std::move(*opened));
    std::unique_ptr<datagram_socket> moved;
    io_result<std::size_t> sent{0};
    auto sender = [&]() -> task<void> {
        const std::uint32_t v = 81;
        sent = co_await s->send_to(bytes_of(v), full.ep);
    };
    std::vector<seen> got;
    auto mover = [&]() -> task<void> {
        co_await pause(ctx, 20ms);
        moved = std::make_unique<datagram_socket>(std::move(*s));
        s.reset();
        co_await pause(ctx, 10ms);
        got = full.drain();
        for (int i = 0; i < 400 && got.size() <= static_cast<std::size_t>(full.queued); ++i) {
            co_await pause(ctx, 5ms);
            auto more = full.drain();
            got.insert(got.end(), more.begin(), more.end());
        }
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(sender(), mover()); };
    ctx.sync_wait(body());
    REQUIRE(sent);
    CHECK(*sent == 4);
    REQUIRE(got.size() == static_cast<std::size_t>(full.queued) + 1);
    CHECK(got.back().len == 4);
    CHECK(got.back().value == 81);
}

TEST_CASE("datagram hostile: shutdown(send) while a send waits ends it with EPIPE, no SIGPIPE, nothing sent",
          "[datagram][hostile]") {
    hang_guard hang;
    sigpipe_kills pipe_kills;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "shutdown");
    auto conn = datagram_socket::open(ctx);
    REQUIRE(conn);
    REQUIRE(conn->connect(full.ep));
    auto unconn = datagram_socket::open(ctx);
    REQUIRE(unconn);
    io_result<std::size_t> a{0}, b{0};
    auto s1 = [&]() -> task<void> {
        const std::uint32_t v = 91;
        a = co_await conn->send(bytes_of(v), 5s);
    };
    auto s2 = [&]() -> task<void> {
        const std::uint32_t v = 92;
        b = co_await unconn->send_to(bytes_of(v), full.ep, 5s);
    };
    auto shut = [&]() -> task<void> {
        co_await pause(ctx, 20ms);
        REQUIRE(conn->shutdown(ringsock::shutdown_how::send));
        REQUIRE(unconn->shutdown(ringsock::shutdown_how::send));
        co_await pause(ctx, 5ms);
        full.expect_only_fillers(full.drain());  // room: the next attempt finds the shutdown
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(s1(), s2(), shut()); };
    ctx.sync_wait(body());
    REQUIRE_FALSE(a);
    CHECK(a.error() == std::errc::broken_pipe);
    REQUIRE_FALSE(b);
    CHECK(b.error() == std::errc::broken_pipe);
    CHECK(full.drain().empty());
}

// ---------------------------------------------------------------------------------------
// The receiver goes away
// ---------------------------------------------------------------------------------------

TEST_CASE("datagram hostile: send_fds to a full receiver that then closes fails, leaks no descriptor, raises no SIGPIPE",
          "[datagram][hostile]") {
    hang_guard hang;
    sigpipe_kills pipe_kills;
    const auto fds_before = ringsock::test::open_fd_count();
    {
        io_context ctx;
        auto full = std::make_unique<full_receiver>(ctx, "fds-gone");
        auto conn = datagram_socket::open(ctx);
        REQUIRE(conn);
        REQUIRE(conn->connect(full->ep));
        auto unconn = datagram_socket::open(ctx);
        REQUIRE(unconn);
        int p[2];
        REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
        unique_fd rd(p[0]), wr(p[1]);
        const endpoint ep = full->ep;
        io_result<std::size_t> a{0}, b{0}, c{0};
        auto s1 = [&]() -> task<void> {
            const std::uint32_t v = 101;
            std::array<int, 2> fds{rd.get(), wr.get()};
            a = co_await conn->send_fds(bytes_of(v), fds, 5s);
        };
        auto s2 = [&]() -> task<void> {
            const std::uint32_t v = 102;
            std::array<int, 2> fds{rd.get(), wr.get()};
            b = co_await unconn->send_fds_to(bytes_of(v), fds, ep, 5s);
        };
        auto s3 = [&]() -> task<void> {  // gated behind s2 on the same socket
            std::array<int, 1> fds{wr.get()};
            c = co_await unconn->send_fds_to(std::span<const std::byte>{}, fds, ep, 5s);
        };
        auto closer = [&]() -> task<void> {
            co_await pause(ctx, 20ms);
            full.reset();  // closes the receiver with its queue (the kernel frees the rest)
        };
        auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(s1(), s2(), s3(), closer()); };
        ctx.sync_wait(body());
        REQUIRE_FALSE(a);
        CHECK(a.error() == std::errc::connection_refused);
        REQUIRE_FALSE(b);
        CHECK(b.error() == std::errc::connection_refused);
        REQUIRE_FALSE(c);
        CHECK(c.error() == std::errc::connection_refused);
        // The pipe's write end has no copy anywhere else: closing ours gives EOF.
        wr.reset();
        char ch = 0;
        CHECK(::read(rd.get(), &ch, 1) == 0);
    }
    CHECK(ringsock::test::open_fd_count() == fds_before);
}

TEST_CASE("datagram hostile: a receiver bound to a path, closed and unlinked while senders wait, fails them (no hang) and they send nothing",
          "[datagram][hostile]") {
    hang_guard hang;
    sigpipe_kills pipe_kills;
    ringsock::test::fd_leak_guard guard;
    char tmpl[] = "/tmp/ringsock-dghostile-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    const std::string dir = tmpl;
    const std::string path = dir + "/r.sock";
    {
        io_context ctx;
        auto ep = endpoint::path(path);
        REQUIRE(ep);
        auto bound = datagram_socket::bind(ctx, *ep);
        REQUIRE(bound);
        auto r = std::make_unique<datagram_socket>(std::move(*bound));
        {
            unique_fd filler(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
            const std::uint32_t v = filler_value;
            while (::sendto(filler.get(), &v, sizeof v, MSG_DONTWAIT, ep->data(), ep->size()) == 4) {
            }
            REQUIRE(errno == EAGAIN);
        }
        constexpr int senders = 8;
        std::vector<datagram_socket> socks;
        for (int i = 0; i < senders; ++i) {
            auto s = datagram_socket::open(ctx);
            REQUIRE(s);
            if (i % 2 == 1) REQUIRE(s->connect(*ep));
            socks.push_back(std::move(*s));
        }
        std::vector<io_result<std::size_t>> results(senders, io_result<std::size_t>{0});
        auto one = [&](int i) -> task<void> {
            const std::uint32_t v = 200 + static_cast<std::uint32_t>(i);
            if (i % 2 == 1) results[static_cast<std::size_t>(i)] = co_await socks[static_cast<std::size_t>(i)].send(bytes_of(v));
            else results[static_cast<std::size_t>(i)] = co_await socks[static_cast<std::size_t>(i)].send_to(bytes_of(v), *ep);
        };
        auto closer = [&]() -> task<void> {
            co_await pause(ctx, 20ms);
            r.reset();  // closes and unlinks the socket file
        };
        auto body = [&]() -> task<void> {
            ringsock::scope sc(ctx);
            for (int i = 0; i < senders; ++i) sc.spawn(one(i));
            sc.spawn(closer());
            co_await sc.join();
        };
        ctx.sync_wait(body());
        struct stat st {};
        CHECK(::stat(path.c_str(), &st) == -1);
        for (int i = 0; i < senders; ++i) {
            const auto& res = results[static_cast<std::size_t>(i)];
            REQUIRE_FALSE(res);
            if (i % 2 == 1) CHECK(res.error() == std::errc::connection_refused);
            else CHECK((res.error() == std::errc::no_such_file_or_directory || res.error() == std::errc::connection_refused));
        }
    }
    ::rmdir(dir.c_str());
}

// ---------------------------------------------------------------------------------------
// Many senders
// ---------------------------------------------------------------------------------------

TEST_CASE("datagram hostile: 50 sockets send_to one full receiver that drains slowly: every datagram arrives once, whole, and every send succeeds",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "fifty");
    constexpr int senders = 50;
    std::vector<datagram_socket> socks;
    for (int i = 0; i < senders; ++i) {
        auto s = datagram_socket::open(ctx);
        REQUIRE(s);
        if (i % 5 == 0) REQUIRE(s->connect(full.ep));  // a few one-way connected (poll) too
        socks.push_back(std::move(*s));
    }
    std::vector<io_result<std::size_t>> results(senders, io_result<std::size_t>{0});
    std::vector<std::uint32_t> received;
    std::vector<std::size_t> lengths;
    const std::size_t expected = static_cast<std::size_t>(full.queued) + senders;
    auto one = [&](int i) -> task<void> {
        // 8 bytes: the id twice, so a torn or emptied datagram shows.
        const std::array<std::uint32_t, 2> v{1000u + static_cast<std::uint32_t>(i), ~(1000u + static_cast<std::uint32_t>(i))};
        auto& s = socks[static_cast<std::size_t>(i)];
        if (i % 5 == 0) results[static_cast<std::size_t>(i)] = co_await s.send(std::as_bytes(std::span(v)));
        else results[static_cast<std::size_t>(i)] = co_await s.send_to(std::as_bytes(std::span(v)), full.ep);
    };
    auto receiver = [&]() -> task<void> {
        co_await pause(ctx, 20ms);
        while (received.size() < expected) {
            std::array<std::uint32_t, 4> m{};
            auto got = co_await full.r.receive(std::as_writable_bytes(std::span(m)), 10s);
            REQUIRE(got);
            lengths.push_back(got->bytes);
            if (got->bytes == 4) {
                CHECK(m[0] == filler_value);
                received.push_back(filler_value);
            } else {
                CHECK(got->bytes == 8);
                CHECK(m[1] == ~m[0]);
                received.push_back(m[0]);
            }
            if (received.size() % 3 == 0) co_await pause(ctx, 1ms);  // slow
        }
    };
    auto body = [&]() -> task<void> {
        ringsock::scope sc(ctx);
        for (int i = 0; i < senders; ++i) sc.spawn(one(i));
        sc.spawn(receiver());
        co_await sc.join();
    };
    ctx.sync_wait(body());
    for (int i = 0; i < senders; ++i) {
        const auto& r = results[static_cast<std::size_t>(i)];
        REQUIRE(r);
        CHECK(*r == 8);
    }
    std::multiset<std::uint32_t> ids(received.begin(), received.end());
    CHECK(ids.count(filler_value) == static_cast<std::size_t>(full.queued));
    for (int i = 0; i < senders; ++i) CHECK(ids.count(1000u + static_cast<std::uint32_t>(i)) == 1);
    for (auto n : lengths) CHECK(n != 0);
    CHECK(full.drain().empty());
}

TEST_CASE("datagram hostile: 50 send_to calls queued on one socket to a full receiver arrive once each, in order",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "fifty-one");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    constexpr int senders = 50;
    std::vector<io_result<std::size_t>> results(senders, io_result<std::size_t>{0});
    std::vector<std::uint32_t> order;
    auto one = [&](int i) -> task<void> {
        const std::uint32_t v = 3000u + static_cast<std::uint32_t>(i);
        results[static_cast<std::size_t>(i)] = co_await s->send_to(bytes_of(v), full.ep);
    };
    auto receiver = [&]() -> task<void> {
        co_await pause(ctx, 20ms);
        while (order.size() < static_cast<std::size_t>(full.queued + senders)) {
            std::array<std::uint32_t, 2> m{};
            auto got = co_await full.r.receive(std::as_writable_bytes(std::span(m)), 10s);
            REQUIRE(got);
            CHECK(got->bytes == 4);
            order.push_back(m[0]);
            if (order.size() % 4 == 0) co_await pause(ctx, 1ms);
        }
    };
    auto body = [&]() -> task<void> {
        ringsock::scope sc(ctx);
        for (int i = 0; i < senders; ++i) sc.spawn(one(i));
        sc.spawn(receiver());
        co_await sc.join();
    };
    ctx.sync_wait(body());
    for (const auto& r : results) {
        REQUIRE(r);
        CHECK(*r == 4);
    }
    std::vector<std::uint32_t> ours;
    for (auto v : order)
        if (v != filler_value) ours.push_back(v);
    REQUIRE(ours.size() == static_cast<std::size_t>(senders));
    for (int i = 0; i < senders; ++i) CHECK(ours[static_cast<std::size_t>(i)] == 3000u + static_cast<std::uint32_t>(i));
}

TEST_CASE("datagram hostile: seqpacket and stream traffic on the same context keeps flowing while datagram sends wait, and the waits still end",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "mixed");
    auto conn = datagram_socket::open(ctx);
    REQUIRE(conn);
    REQUIRE(conn->connect(full.ep));
    auto unconn = datagram_socket::open(ctx);
    REQUIRE(unconn);
    auto sp = ringsock::seqpacket_socket::pair(ctx);
    REQUIRE(sp);
    auto& sa = sp->first;
    auto& sb = sp->second;
    auto st = ringsock::stream_socket::pair(ctx);
    REQUIRE(st);
    auto& ta = st->first;
    auto& tb = st->second;
    constexpr int rounds = 300;
    int seq_ok = 0, stream_ok = 0;
    io_result<std::size_t> a{0}, b{0};
    bool dgram_done = false;
    auto d1 = [&]() -> task<void> {
        const std::uint32_t v = 111;
        a = co_await conn->send(bytes_of(v), 10s);
    };
    auto d2 = [&]() -> task<void> {
        const std::uint32_t v = 112;
        b = co_await unconn->send_to(bytes_of(v), full.ep, 10s);
    };
    auto seq_ping = [&]() -> task<void> {
        for (int i = 0; i < rounds; ++i) {
            const std::uint32_t v = static_cast<std::uint32_t>(i);
            auto w = co_await sa.send(bytes_of(v), 10s);
            REQUIRE(w);
            std::array<std::uint32_t, 1> in{};
            auto r = co_await sa.receive_bytes(std::as_writable_bytes(std::span(in)), 10s);
            REQUIRE(r);
            if (in[0] == v + 1) ++seq_ok;
        }
    };
    auto seq_pong = [&]() -> task<void> {
        for (int i = 0; i < rounds; ++i) {
            std::array<std::uint32_t, 1> in{};
            auto r = co_await sb.receive_bytes(std::as_writable_bytes(std::span(in)), 10s);
            REQUIRE(r);
            const std::uint32_t v = in[0] + 1;
            auto w = co_await sb.send(bytes_of(v), 10s);
            REQUIRE(w);
        }
    };
    auto stream_ping = [&]() -> task<void> {
        for (int i = 0; i < rounds; ++i) {
            const std::uint32_t v = static_cast<std::uint32_t>(i);
            auto w = co_await ta.write_all(bytes_of(v), 10s);
            REQUIRE(w);
            std::array<std::uint32_t, 1> in{};
            auto r = co_await ta.read_exact(std::as_writable_bytes(std::span(in)), 10s);
            REQUIRE(r);
            if (in[0] == v * 2) ++stream_ok;
        }
    };
    auto stream_pong = [&]() -> task<void> {
        for (int i = 0; i < rounds; ++i) {
            std::array<std::uint32_t, 1> in{};
            auto r = co_await tb.read_exact(std::as_writable_bytes(std::span(in)), 10s);
            REQUIRE(r);
            const std::uint32_t v = in[0] * 2;
            auto w = co_await tb.write_all(bytes_of(v), 10s);
            REQUIRE(w);
        }
    };
    std::vector<seen> got;
    auto drainer = [&]() -> task<void> {
        // Room only once the other traffic is done: the sends waited all along.
        while (seq_ok + stream_ok < 2 * rounds) co_await pause(ctx, 2ms);
        got = full.drain();
        for (int i = 0; i < 400 && got.size() < static_cast<std::size_t>(full.queued) + 2; ++i) {
            co_await pause(ctx, 5ms);
            auto more = full.drain();
            got.insert(got.end(), more.begin(), more.end());
        }
        dgram_done = true;
    };
    auto body = [&]() -> task<void> {
        (void)co_await ringsock::when_all(d1(), d2(), seq_ping(), seq_pong(), stream_ping(), stream_pong(), drainer());
    };
    ctx.sync_wait(body());
    CHECK(seq_ok == rounds);
    CHECK(stream_ok == rounds);
    CHECK(dgram_done);
    REQUIRE(a);
    REQUIRE(b);
    REQUIRE(got.size() == static_cast<std::size_t>(full.queued) + 2);
    std::multiset<std::uint32_t> values;
    for (const auto& g : got) {
        CHECK(g.len == 4);
        values.insert(g.value);
    }
    CHECK(values.count(111) == 1);
    CHECK(values.count(112) == 1);
}

// ---------------------------------------------------------------------------------------
// Socket pairs, sizes, empty datagrams
// ---------------------------------------------------------------------------------------

TEST_CASE("datagram hostile: a datagram pair sent into until full, then drained, delivers every datagram whole and in order",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto p = datagram_socket::pair(ctx);
    REQUIRE(p);
    auto& a = p->first;
    auto& b = p->second;
    constexpr int count = 3000;  // far more than the send buffer holds
    int sent_ok = 0;
    std::vector<std::uint32_t> got;
    auto sender = [&]() -> task<void> {
        for (int i = 0; i < count; ++i) {
            std::array<std::uint32_t, 64> m{};
            m.fill(static_cast<std::uint32_t>(i));
            auto w = co_await a.send(std::as_bytes(std::span(m)), 10s);
            REQUIRE(w);
            REQUIRE(*w == sizeof m);
            ++sent_ok;
        }
    };
    auto receiver = [&]() -> task<void> {
        co_await pause(ctx, 30ms);  // the sender is stuck by now
        CHECK(sent_ok < count);
        while (got.size() < static_cast<std::size_t>(count)) {
            std::array<std::uint32_t, 65> m{};
            auto r = co_await b.receive(std::as_writable_bytes(std::span(m)), 10s);
            REQUIRE(r);
            REQUIRE(r->bytes == 64 * sizeof(std::uint32_t));
            for (int k = 1; k < 64; ++k) CHECK(m[static_cast<std::size_t>(k)] == m[0]);
            got.push_back(m[0]);
        }
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(sender(), receiver()); };
    ctx.sync_wait(body());
    CHECK(sent_ok == count);
    REQUIRE(got.size() == static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) CHECK(got[static_cast<std::size_t>(i)] == static_cast<std::uint32_t>(i));
}

TEST_CASE("datagram hostile: a datagram larger than the send buffer fails with EMSGSIZE at once, even to a full receiver, and sends nothing",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "emsgsize");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    int sndbuf = 0;
    socklen_t len = sizeof sndbuf;
    REQUIRE(::getsockopt(s->native_handle(), SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) == 0);
    const std::vector<std::byte> huge(static_cast<std::size_t>(sndbuf) + 4096);
    auto run = [&]() -> task<void> {
        auto w = co_await s->send_to(huge, full.ep, 5s);
        REQUIRE_FALSE(w);
        CHECK(w.error() == std::errc::message_size);
        CHECK(w.partial_value() == 0);
        REQUIRE(s->connect(full.ep));
        auto w2 = co_await s->send(huge, 5s);
        REQUIRE_FALSE(w2);
        CHECK(w2.error() == std::errc::message_size);
    };
    ctx.sync_wait(run());
    full.expect_only_fillers(full.drain());
}

TEST_CASE("datagram hostile: a datagram larger than the receiver's buffer arrives whole to the kernel and is reported truncated, not cut silently",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "trunc");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    const std::vector<std::byte> big(1000, std::byte{0x5a});
    io_result<std::size_t> sent{0};
    auto sender = [&]() -> task<void> { sent = co_await s->send_to(big, full.ep, 5s); };
    std::vector<std::size_t> lengths;
    bool truncated = false;
    auto receiver = [&]() -> task<void> {
        co_await pause(ctx, 15ms);
        for (int i = 0; i <= full.queued; ++i) {
            std::array<std::byte, 16> m{};
            auto r = co_await full.r.receive(m, 5s);
            if (r) {
                lengths.push_back(r->bytes);
            } else {
                truncated = r.error() == ringsock::errc::message_truncated;
                lengths.push_back(r.partial_value().bytes);
            }
        }
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(sender(), receiver()); };
    ctx.sync_wait(body());
    REQUIRE(sent);
    CHECK(*sent == big.size());
    CHECK(truncated);
    CHECK(lengths.size() == static_cast<std::size_t>(full.queued) + 1);
}

TEST_CASE("datagram hostile: empty datagrams, with and without descriptors, wait for a full receiver and arrive as exactly that",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "empty");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    auto c = datagram_socket::open(ctx);
    REQUIRE(c);
    REQUIRE(c->connect(full.ep));
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    unique_fd rd(p[0]), wr(p[1]);
    io_result<std::size_t> a{1}, b{1}, d{1};
    auto s1 = [&]() -> task<void> { a = co_await s->send_to(std::span<const std::byte>{}, full.ep, 5s); };
    auto s2 = [&]() -> task<void> {
        std::array<int, 1> fds{wr.get()};
        b = co_await s->send_fds_to(std::span<const std::byte>{}, fds, full.ep, 5s);
    };
    auto s3 = [&]() -> task<void> {
        std::array<int, 1> fds{rd.get()};
        d = co_await c->send_fds(std::span<const std::byte>{}, fds, 5s);
    };
    std::vector<seen> got;
    auto drainer = [&]() -> task<void> {
        co_await pause(ctx, 20ms);
        got = full.drain();
        for (int i = 0; i < 400 && got.size() < static_cast<std::size_t>(full.queued) + 3; ++i) {
            co_await pause(ctx, 5ms);
            auto more = full.drain();
            got.insert(got.end(), more.begin(), more.end());
        }
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(s1(), s2(), s3(), drainer()); };
    ctx.sync_wait(body());
    REQUIRE(a);
    CHECK(*a == 0);
    REQUIRE(b);
    CHECK(*b == 0);
    REQUIRE(d);
    CHECK(*d == 0);
    REQUIRE(got.size() == static_cast<std::size_t>(full.queued) + 3);
    int empties = 0, with_fd = 0;
    for (const auto& g : got) {
        if (g.len == 0) {
            ++empties;
            if (g.fds == 1) ++with_fd;
        } else {
            CHECK(g.value == filler_value);
        }
    }
    CHECK(empties == 3);
    CHECK(with_fd == 2);
}

TEST_CASE("datagram hostile: a send_to that waited in the timer backoff gets its room back promptly enough to finish within a generous bound",
          "[datagram][hostile]") {
    // Hang guard, not a timing assertion: a backoff that never re-arms would hang here.
    hang_guard hang(30);
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "rearm");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    int delivered = 0;
    auto run = [&]() -> task<void> {
        for (int round = 0; round < 20; ++round) {
            std::optional<io_result<std::size_t>> w;
            auto send = [&]() -> task<void> {
                const std::uint32_t v = 500u + static_cast<std::uint32_t>(round);
                w = co_await s->send_to(bytes_of(v), full.ep, 5s);
            };
            auto room = [&]() -> task<void> {
                co_await pause(ctx, std::chrono::milliseconds(round % 7));
                std::uint32_t x = 0;
                CHECK(::recv(full.r.native_handle(), &x, sizeof x, MSG_DONTWAIT) == 4);
            };
            (void)co_await ringsock::when_all(send(), room());
            REQUIRE(w);
            REQUIRE(*w);
            ++delivered;
            // Full again for the next round.
            CHECK(full.fill() == 0);
        }
    };
    ctx.sync_wait(run());
    CHECK(delivered == 20);
}

// ---------------------------------------------------------------------------------------
// The result tells the truth: success if and only if the datagram arrived
// ---------------------------------------------------------------------------------------

TEST_CASE("datagram hostile: a stop, close or deadline in the same turn the receiver makes room sends nothing and says so",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "same-turn");
    for (int how = 0; how < 6; ++how) {
        const bool connected = how % 2 == 1;
        auto opened = datagram_socket::open(ctx);
        REQUIRE(opened);
        auto s = std::make_unique<datagram_socket>(std::move(*opened));
        if (connected) REQUIRE(s->connect(full.ep));
        std::stop_source src;
        io_result<std::size_t> sent{0};
        auto sender = [&]() -> task<void> {
            const std::uint32_t v = 600u + static_cast<std::uint32_t>(how);
            if (how / 2 == 2) {
                if (connected) sent = co_await s->send(bytes_of(v), 25ms);
                else sent = co_await s->send_to(bytes_of(v), full.ep, 25ms);
            } else {
                if (connected) sent = co_await s->send(bytes_of(v), src.get_token());
                else sent = co_await s->send_to(bytes_of(v), full.ep, src.get_token());
            }
        };
        auto actor = [&]() -> task<void> {
            co_await pause(ctx, 24ms);
            // Room, then at once (no turn between) the end of the wait.
            full.expect_only_fillers(full.drain());
            full.queued = 0;
            if (how / 2 == 0) src.request_stop();
            else if (how / 2 == 1) s->close();
            else std::this_thread::sleep_for(3ms);  // the deadline passes before the next turn
        };
        auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(sender(), actor()); };
        ctx.sync_wait(body());
        auto later = [&]() -> task<void> { co_await pause(ctx, 20ms); };
        ctx.sync_wait(later());
        const auto got = full.drain();
        INFO("how " << how << " result " << (sent ? "ok" : sent.error().message()));
        if (how / 2 == 2) {
            // The deadline and the room race: either is fine, but the result must match.
            CHECK(got.size() == (sent ? 1u : 0u));
            if (!sent) CHECK(sent.error() == std::errc::timed_out);
        } else {
            REQUIRE_FALSE(sent);
            CHECK(sent.error() == std::errc::operation_canceled);
            CHECK(got.empty());
        }
        full.queued = full.fill();
    }
}

TEST_CASE("datagram hostile: stops and room from other threads at varying moments: a send succeeds exactly when its datagram arrives",
          "[datagram][hostile]") {
    hang_guard hang(120);
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "truth");
    auto conn = datagram_socket::open(ctx);
    REQUIRE(conn);
    REQUIRE(conn->connect(full.ep));
    auto unconn = datagram_socket::open(ctx);
    REQUIRE(unconn);
    const int rfd = full.r.native_handle();
    int delivered_ok = 0, cancelled_ok = 0;
    for (int round = 0; round < 60; ++round) {
        std::stop_source src;
        const auto stop_after = std::chrono::microseconds(100 + (round * 137) % 3000);
        const auto room_after = std::chrono::microseconds(100 + (round * 251) % 3000);
        std::thread stopper([&] {
            std::this_thread::sleep_for(stop_after);
            src.request_stop();
        });
        std::thread roomer([&] {
            std::this_thread::sleep_for(room_after);
            std::uint32_t x = 0;
            (void)::recv(rfd, &x, sizeof x, MSG_DONTWAIT);  // one datagram of room
        });
        io_result<std::size_t> sent{0};
        const std::uint32_t v = 700u + static_cast<std::uint32_t>(round);
        auto sender = [&]() -> task<void> {
            if (round % 2 == 1) sent = co_await conn->send(bytes_of(v), src.get_token());
            else sent = co_await unconn->send_to(bytes_of(v), full.ep, src.get_token());
        };
        ctx.sync_wait(sender());
        stopper.join();
        roomer.join();
        auto later = [&]() -> task<void> { co_await pause(ctx, 8ms); };
        ctx.sync_wait(later());
        const auto got = full.drain();
        int ours = 0;
        for (const auto& g : got) {
            CHECK(g.len == 4);
            if (g.value == v) ++ours;
            else CHECK(g.value == filler_value);
        }
        INFO("round " << round);
        if (sent) {
            CHECK(*sent == 4);
            CHECK(ours == 1);
            ++delivered_ok;
        } else {
            CHECK(sent.error() == std::errc::operation_canceled);
            CHECK(ours == 0);
            ++cancelled_ok;
        }
        full.queued = 0;
        full.fill();
    }
    CHECK(delivered_ok + cancelled_ok == 60);
}

TEST_CASE("datagram hostile: a send_to losing a when_any race to a timer is cancelled and sends nothing, then or later",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "when-any");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    auto c = datagram_socket::open(ctx);
    REQUIRE(c);
    REQUIRE(c->connect(full.ep));
    std::size_t winner = 99, winner2 = 99;
    auto run = [&]() -> task<void> {
        auto send = [&](std::stop_token st) -> task<bool> {
            const std::uint32_t v = 801;
            auto w = co_await s->send_to(bytes_of(v), full.ep, st);
            co_return static_cast<bool>(w);
        };
        auto timer = [&](std::stop_token st) -> task<bool> {
            auto t = co_await ringsock::sleep_for(ctx, 15ms, st);
            co_return static_cast<bool>(t);
        };
        auto r = co_await ringsock::when_any([&](std::stop_token st) { return send(st); },
                                             [&](std::stop_token st) { return timer(st); });
        winner = r.index();
        auto send2 = [&](std::stop_token st) -> task<bool> {
            const std::uint32_t v = 802;
            auto w = co_await c->send(bytes_of(v), st);
            co_return static_cast<bool>(w);
        };
        auto r2 = co_await ringsock::when_any([&](std::stop_token st) { return send2(st); },
                                              [&](std::stop_token st) { return timer(st); });
        winner2 = r2.index();
    };
    ctx.sync_wait(run());
    CHECK(winner == 1);
    CHECK(winner2 == 1);
    full.expect_only_fillers(full.drain());
    auto later = [&]() -> task<void> { co_await pause(ctx, 30ms); };
    ctx.sync_wait(later());
    CHECK(full.drain().empty());
}

// ---------------------------------------------------------------------------------------
// Odd set-ups
// ---------------------------------------------------------------------------------------

TEST_CASE("datagram hostile: a bound socket send_to itself with its own queue full waits until its own receive makes room",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    full_receiver full(ctx, "self");
    io_result<std::size_t> sent{0};
    std::vector<std::uint32_t> got;
    auto sender = [&]() -> task<void> {
        const std::uint32_t v = 901;
        sent = co_await full.r.send_to(bytes_of(v), full.ep, 10s);
    };
    auto receiver = [&]() -> task<void> {
        co_await pause(ctx, 15ms);
        for (int i = 0; i <= full.queued; ++i) {
            std::array<std::uint32_t, 2> m{};
            auto r = co_await full.r.receive(std::as_writable_bytes(std::span(m)), 10s);
            REQUIRE(r);
            CHECK(r->bytes == 4);
            got.push_back(m[0]);
        }
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(sender(), receiver()); };
    ctx.sync_wait(body());
    REQUIRE(sent);
    REQUIRE(got.size() == static_cast<std::size_t>(full.queued) + 1);
    CHECK(got.back() == 901);
}

TEST_CASE("datagram hostile: with a two-entry SQ, many waiting sends with deadlines and stops all end correctly",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context::options opts;
    opts.entries = 2;
    io_context ctx(opts);
    full_receiver full(ctx, "tiny-sq");
    constexpr int senders = 30;
    std::vector<datagram_socket> socks;
    for (int i = 0; i < senders; ++i) {
        auto s = datagram_socket::open(ctx);
        REQUIRE(s);
        if (i % 3 == 0) REQUIRE(s->connect(full.ep));
        socks.push_back(std::move(*s));
    }
    std::stop_source src;
    std::vector<io_result<std::size_t>> results(senders, io_result<std::size_t>{0});
    auto one = [&](int i) -> task<void> {
        const std::uint32_t v = 1100u + static_cast<std::uint32_t>(i);
        auto& s = socks[static_cast<std::size_t>(i)];
        ringsock::op_limits lim;
        if (i % 4 == 0) lim = ringsock::op_limits(20ms);          // times out
        else if (i % 4 == 1) lim = ringsock::op_limits(src.get_token());  // stopped
        else lim = ringsock::op_limits(src.get_token(), 10s);      // stopped too
        if (i % 3 == 0) results[static_cast<std::size_t>(i)] = co_await s.send(bytes_of(v), lim);
        else results[static_cast<std::size_t>(i)] = co_await s.send_to(bytes_of(v), full.ep, lim);
    };
    auto stopper = [&]() -> task<void> {
        co_await pause(ctx, 40ms);
        src.request_stop();
    };
    auto body = [&]() -> task<void> {
        ringsock::scope sc(ctx);
        for (int i = 0; i < senders; ++i) sc.spawn(one(i));
        sc.spawn(stopper());
        co_await sc.join();
    };
    ctx.sync_wait(body());
    for (int i = 0; i < senders; ++i) {
        const auto& r = results[static_cast<std::size_t>(i)];
        INFO("sender " << i);
        REQUIRE_FALSE(r);
        CHECK(r.error() == (i % 4 == 0 ? std::errc::timed_out : std::errc::operation_canceled));
    }
    full.expect_only_fillers(full.drain());
    auto later = [&]() -> task<void> { co_await pause(ctx, 30ms); };
    ctx.sync_wait(later());
    CHECK(full.drain().empty());
}

TEST_CASE("datagram hostile: a context_pool destroyed while its tasks' sends wait frees the frames and sends nothing",
          "[datagram][hostile]") {
    hang_guard hang;
    ringsock::test::fd_leak_guard guard;
    io_context rctx;
    full_receiver full(rctx, "pool");
    std::atomic<int> waiting{0}, finished{0};
    {
        ringsock::context_pool pool(2);
        for (std::size_t k = 0; k < 2; ++k) {
            auto& ctx = pool[k];
            const endpoint ep = full.ep;
            for (int i = 0; i < 3; ++i) {
                auto t = [](io_context& c, endpoint to, int idx, std::atomic<int>& w, std::atomic<int>& f) -> task<void> {
                    auto s = datagram_socket::open(c);  // owned by the frame
                    if (!s) co_return;
                    if (idx % 2 == 1 && !s->connect(to)) co_return;
                    const std::uint32_t v = 1200u + static_cast<std::uint32_t>(idx);
                    w.fetch_add(1);
                    auto r = idx % 2 == 1 ? co_await s->send(bytes_of(v)) : co_await s->send_to(bytes_of(v), to);
                    (void)r;
                    f.fetch_add(1);
                };
                ringsock::spawn_on(ctx, t(ctx, ep, i, waiting, finished));
            }
        }
        for (int i = 0; i < 400 && waiting.load() < 6; ++i) std::this_thread::sleep_for(1ms);
        std::this_thread::sleep_for(20ms);
        CHECK(waiting.load() == 6);
    }
    CHECK(finished.load() == 0);
    full.expect_only_fillers(full.drain());
    auto later = [&]() -> task<void> { co_await pause(rctx, 30ms); };
    rctx.sync_wait(later());
    CHECK(full.drain().empty());
}

TEST_CASE("datagram hostile: a datagram pair whose peer closes while sends wait for room ends them with an error, no hang, no SIGPIPE",
          "[datagram][hostile]") {
    hang_guard hang;
    sigpipe_kills pipe_kills;
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto p = datagram_socket::pair(ctx);
    REQUIRE(p);
    auto a = std::make_unique<datagram_socket>(std::move(p->first));
    auto b = std::make_unique<datagram_socket>(std::move(p->second));
    int sent_ok = 0;
    io_result<std::size_t> last{0}, queued_behind{0};
    auto sender = [&]() -> task<void> {
        std::array<std::byte, 512> m{};
        for (;;) {
            auto w = co_await a->send(m, 10s);
            if (!w) {
                last = w;
                co_return;
            }
            ++sent_ok;
        }
    };
    auto second = [&]() -> task<void> {
        co_await pause(ctx, 5ms);  // queued behind the waiting send
        const std::uint32_t v = 1;
        queued_behind = co_await a->send(bytes_of(v), 10s);
    };
    auto closer = [&]() -> task<void> {
        co_await pause(ctx, 20ms);
        b.reset();
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(sender(), second(), closer()); };
    ctx.sync_wait(body());
    CHECK(sent_ok > 0);
    REQUIRE_FALSE(last);
    CHECK(last.error() == std::errc::connection_refused);
    REQUIRE_FALSE(queued_behind);
    // The kernel reports the dead peer once (ECONNREFUSED) and disconnects: later sends
    // find no peer at all.
    CHECK(queued_behind.error() == std::errc::not_connected);
}
