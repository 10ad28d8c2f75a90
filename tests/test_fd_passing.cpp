// Descriptor passing (SCM_RIGHTS) between two real processes and within one: counts up
// to the kernel's limit, the 254 refusal, truncation without leaks, close-on-exec,
// cancellation, frames destroyed with an unconsumed result, and the fd_stream queue.
#include <catch2/catch.hpp>

#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include <ringsock/ringsock.hpp>

#include "support/fd_count.hpp"
#include "support/fork_child.hpp"
#include "support/raw_fds.hpp"
#include "support/turn_support.hpp"

using namespace std::chrono_literals;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::received_message;
using ringsock::task;
using ringsock::unique_fd;
using ringsock::test::child_process;
using ringsock::test::has_cloexec;
using ringsock::test::pipe_at_eof;
using ringsock::test::pipe_fds;
using ringsock::test::raw_pair;
using ringsock::test::raw_send_fds;
using ringsock::test::stop_when_consumed;
using ringsock::test::numbered_eventfds;
using ringsock::test::eventfd_value;

namespace {

const char* type_name(int type) {
    return type == SOCK_STREAM ? "stream" : type == SOCK_SEQPACKET ? "seqpacket" : "dgram";
}

/// Receives one message on a socket of any of the three types, the way an application
/// would: fd_stream for streams (descriptors from its queue), receive() for the others.
task<io_result<received_message>> receive_one(io_context& ctx, int type, unique_fd fd, std::span<char> buf,
                                              std::size_t max_fds, ringsock::op_limits lim = {}) {
    if (type == SOCK_STREAM) {
        ringsock::fd_stream s(ctx, std::move(fd));
        s.set_fd_limit(max_fds);
        co_return co_await s.receive(buf, lim);
    }
    if (type == SOCK_SEQPACKET) {
        ringsock::seqpacket_socket s(ctx, std::move(fd));
        co_return co_await s.receive(buf, max_fds, lim);
    }
    ringsock::datagram_socket s(ctx, std::move(fd));
    co_return co_await s.receive(buf, max_fds, lim);
}

/// Receives a message whose descriptors `max_fds` 0 refuses, then a plain one. The
/// sender runs now (the messages wait queued) or, with `waiting`, once the receive waits.
template <class Socket, class Sender>
task<void> receive_refused_then_plain(io_context& ctx, Socket& s, std::span<char> buf, bool waiting, Sender& sender) {
    if (waiting) ringsock::post(ctx, sender);
    else sender();
    auto r = co_await s.receive(buf, 0);
    REQUIRE_FALSE(r);
    CHECK(r.error() == ringsock::errc::fds_truncated);
    CHECK(r.partial_value().bytes == 4);
    CHECK(r.partial_value().fds.empty());
    auto next = co_await s.receive(buf, 0);
    REQUIRE(next);
    CHECK(next->bytes == 4);
    CHECK(next->flags == 0);
    CHECK(std::string_view(buf.data(), 4) == "next");
}

}  // namespace

TEST_CASE("fd_passing: 1, 2, 3 and 253 descriptors from a forked child arrive in order, owned and close-on-exec, on stream, seqpacket and dgram",
          "[fd_passing]") {
    const int type = GENERATE(SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM);
    const std::size_t count = GENERATE(1u, 2u, 3u, 253u);
    const bool child_uses_ringsock = GENERATE(false, true);
    CAPTURE(type_name(type), count, child_uses_ringsock);

    raw_pair sp(type);
    child_process child([&] {
        sp.a.reset();
        auto fds = numbered_eventfds(count);
        std::vector<int> raw;
        for (auto& f : fds) raw.push_back(f.get());
        if (!child_uses_ringsock) return raw_send_fds(sp.b.get(), "fds!", raw.data(), raw.size()) ? 0 : 1;
        // The child's own loop, created after fork.
        io_context cctx;
        auto send = [&]() -> task<int> {
            io_result<std::size_t> r;
            if (type == SOCK_STREAM) {
                ringsock::fd_stream s(cctx, std::move(sp.b));
                r = co_await s.send_fds(std::string_view("fds!"), raw);
            } else if (type == SOCK_SEQPACKET) {
                ringsock::seqpacket_socket s(cctx, std::move(sp.b));
                r = co_await s.send_fds(std::string_view("fds!"), fds);
            } else {
                ringsock::datagram_socket s(cctx, std::move(sp.b));
                r = co_await s.send_fds(std::string_view("fds!"), raw);
            }
            co_return r && *r == 4 ? 0 : 2;
        };
        return cctx.sync_wait(send());
    });
    sp.b.reset();
    REQUIRE(child.wait() == 0);

    io_context ctx;
    std::array<char, 16> buf{};
    auto r = ctx.sync_wait(receive_one(ctx, type, std::move(sp.a), buf, ringsock::max_fds_per_message));
    REQUIRE(r.has_value());
    CHECK(r->bytes == 4);
    CHECK(std::string_view(buf.data(), 4) == "fds!");
    CHECK((r->flags & MSG_CTRUNC) == 0);
    REQUIRE(r->fds.size() == count);
    for (std::size_t i = 0; i < count; ++i) {
        CHECK(has_cloexec(r->fds[i].get()));
        CHECK(eventfd_value(r->fds[i].get()) == i + 1);
    }
}

TEST_CASE("fd_passing: 254 descriptors are refused with too_many_fds before anything is sent", "[fd_passing]") {
    const int type = GENERATE(SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM);
    CAPTURE(type_name(type));
    io_context ctx;
    raw_pair sp(type);
    pipe_fds p;
    std::vector<int> many(254, p.w.get());  // one descriptor 254 times is still 254
    // The sender is used through a borrowed descriptor, so sp.a stays open.
    auto borrowed = [](unique_fd& fd) { return unique_fd(::dup(fd.get())); };
    auto send = [&]() -> task<io_result<std::size_t>> {
        if (type == SOCK_STREAM) {
            ringsock::fd_stream s(ctx, borrowed(sp.a));
            co_return co_await s.send_fds(std::string_view("x"), many);
        }
        if (type == SOCK_SEQPACKET) {
            ringsock::seqpacket_socket s(ctx, borrowed(sp.a));
            co_return co_await s.send_fds(std::string_view("x"), many);
        }
        ringsock::datagram_socket s(ctx, borrowed(sp.a));
        co_return co_await s.send_fds(std::string_view("x"), many);
    };
    auto r = ctx.sync_wait(send());
    REQUIRE_FALSE(r);
    CHECK(r.error() == ringsock::errc::too_many_fds);
    CHECK(r.error() == std::errc::argument_list_too_long);
    CHECK(r.partial_value() == 0);
    char c;
    CHECK(::recv(sp.b.get(), &c, 1, MSG_DONTWAIT) == -1);
    CHECK(errno == EAGAIN);

    // 253 of them is fine.
    many.resize(253);
    r = ctx.sync_wait(send());
    REQUIRE(r);
    CHECK(*r == 1);
    CHECK(::recv(sp.b.get(), &c, 1, MSG_DONTWAIT) == 1);
}

TEST_CASE("fd_passing: a receiver that accepts fewer descriptors than were sent keeps the data, closes the partial set and reports fds_truncated",
          "[fd_passing]") {
    const int type = GENERATE(SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM);
    const std::size_t count = GENERATE(3u, 253u);
    CAPTURE(type_name(type), count);

    raw_pair sp(type);
    // Pipes whose write ends travel: the read end shows EOF only once every copy of the
    // write end is closed, the ones this process received included.
    std::vector<pipe_fds> pipes(count);
    child_process child([&] {
        std::vector<int> w;
        for (auto& p : pipes) w.push_back(p.w.get());
        return raw_send_fds(sp.b.get(), "data", w.data(), w.size()) ? 0 : 1;
    });
    for (auto& p : pipes) p.w.reset();
    sp.b.reset();
    REQUIRE(child.wait() == 0);

    io_context ctx;
    std::array<char, 16> buf{};
    auto r = ctx.sync_wait(receive_one(ctx, type, std::move(sp.a), buf, 1));
    REQUIRE_FALSE(r);
    CHECK(r.error() == ringsock::errc::fds_truncated);
    CHECK(r.error().message().find("truncated") != std::string::npos);
    CHECK(r.partial_value().bytes == 4);
    CHECK(std::string_view(buf.data(), 4) == "data");
    CHECK(r.partial_value().fds.empty());
    if (count == 253 && type != SOCK_STREAM) CHECK((r.partial_value().flags & MSG_CTRUNC) != 0);
    for (auto& p : pipes) CHECK(pipe_at_eof(p.r.get()));
}

TEST_CASE("fd_passing: a message receive that takes no descriptors reports fds_truncated when some were sent, and the next plain message arrives clean",
          "[fd_passing]") {
    // The receive takes a shortcut for a message that arrived without control data;
    // descriptors that did arrive must never take it (they would stay installed).
    const int type = GENERATE(SOCK_SEQPACKET, SOCK_DGRAM);
    const bool waiting = GENERATE(false, true);  // the receive waits on the ring, or the message is queued
    CAPTURE(type_name(type), waiting);
    const std::size_t fds_before = ringsock::test::open_fd_count();
    {
        raw_pair sp(type);
        std::array<pipe_fds, 2> pipes;
        io_context ctx;
        std::array<char, 16> buf{};
        auto sender = [&]() {
            const int w[2] = {pipes[0].w.get(), pipes[1].w.get()};
            REQUIRE(raw_send_fds(sp.b.get(), "data", w, 2));
            REQUIRE(::send(sp.b.get(), "next", 4, MSG_NOSIGNAL) == 4);
            for (auto& p : pipes) p.w.reset();  // only the copies in flight remain
        };
        auto body = [&]() -> task<void> {
            if (type == SOCK_SEQPACKET) {
                ringsock::seqpacket_socket s(ctx, std::move(sp.a));
                co_await receive_refused_then_plain(ctx, s, buf, waiting, sender);
            } else {
                ringsock::datagram_socket s(ctx, std::move(sp.a));
                co_await receive_refused_then_plain(ctx, s, buf, waiting, sender);
            }
        };
        auto t = body();
        ctx.sync_wait(std::move(t));
        // The descriptors that did not fit were never installed: the write ends are gone.
        for (auto& p : pipes) CHECK(pipe_at_eof(p.r.get()));
    }
    CHECK(ringsock::test::open_fd_count() == fds_before);
}

TEST_CASE("fd_passing: a cancelled or timed-out receive leaks nothing, and descriptors sent afterwards are never installed",
          "[fd_passing]") {
    const int type = GENERATE(SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM);
    const bool by_timeout = GENERATE(false, true);
    CAPTURE(type_name(type), by_timeout);
    pipe_fds p;
    {
        io_context ctx;
        raw_pair sp(type);
        std::stop_source stop;
        auto canceller = [&]() -> task<void> {
            co_await ctx.yield();
            stop.request_stop();
        };
        auto run = [&]() -> task<io_result<received_message>> {
            if (!by_timeout) ctx.spawn(canceller());
            std::array<char, 8> buf{};
            ringsock::op_limits lim = by_timeout ? ringsock::op_limits(20ms) : ringsock::op_limits(stop.get_token());
            co_return co_await receive_one(ctx, type, std::move(sp.a), buf, 253, lim);
        };
        auto r = ctx.sync_wait(run());
        REQUIRE_FALSE(r);
        CHECK(r.error() == (by_timeout ? std::errc::timed_out : std::errc::operation_canceled));
        CHECK(r.partial_value().fds.empty());
        // The receiving socket is gone: a late sender's descriptors are dropped by the
        // kernel, not installed here.
        const int w = p.w.get();
        bool sent = raw_send_fds(sp.b.get(), "late", &w, 1);
        CHECK_FALSE(sent);  // no receiver any more (EPIPE / ECONNREFUSED)
    }
    p.w.reset();
    CHECK(pipe_at_eof(p.r.get()));
}

namespace {

// The receiver of the "completed but never resumed" test: it must not get past its
// co_await, and it owns its socket (destroyed with the frame).
task<void> receive_never_resumed(io_context& ctx, int type, unique_fd fd, bool& resumed) {
    std::array<char, 16> buf{};
    if (type == SOCK_STREAM) {
        ringsock::fd_stream s(ctx, std::move(fd));
        auto r = co_await s.read_some(buf);
        resumed = true;
        (void)r;
    } else {
        ringsock::seqpacket_socket s(ctx, std::move(fd));
        auto r = co_await s.receive(buf);
        resumed = true;
        (void)r;
    }
}

}  // namespace

TEST_CASE("fd_passing: destroying a frame whose receive completed but was never resumed closes the received descriptors",
          "[fd_passing]") {
    const int type = GENERATE(SOCK_STREAM, SOCK_SEQPACKET);
    CAPTURE(type_name(type));
    pipe_fds p;
    raw_pair sp(type);
    const int w = p.w.get();
    REQUIRE(raw_send_fds(sp.b.get(), "hello", &w, 1));
    p.w.reset();  // the only copy of the write end is now in flight
    bool resumed = false, consumed = false;
    {
        io_context ctx;
        // Before the receive is submitted, FIONREAD on the receiving end shows the bytes.
        const int receiving = sp.a.get();
        ctx.spawn(stop_when_consumed(ctx, receiving, consumed));
        ctx.spawn(receive_never_resumed(ctx, type, std::move(sp.a), resumed));
        ctx.run();
        CHECK(consumed);
        CHECK_FALSE(resumed);
        // Destroying the context destroys the spawned frames; the receive's result dies.
    }
    CHECK_FALSE(resumed);
    CHECK(pipe_at_eof(p.r.get()));
}

TEST_CASE("fd_passing: fd_stream plain reads keep arriving descriptors in the socket's queue, in order", "[fd_passing]") {
    io_context ctx;
    auto pr = ringsock::fd_stream::pair(ctx);
    REQUIRE(pr);
    auto& a = pr->first; auto& b = pr->second;  // clang 14: lambdas cannot capture structured bindings
    auto fds = numbered_eventfds(3);
    auto run = [&]() -> task<void> {
        auto s1 = co_await a.send_fds(std::string_view("ab"), fds[0]);
        REQUIRE(s1);
        const std::vector<int> two{fds[1].get(), fds[2].get()};
        auto s2 = co_await a.send_fds(std::string_view("cd"), two);
        REQUIRE(s2);
        std::array<char, 4> buf{};
        auto r = co_await b.read_exact(buf);  // two recvmsgs: a stream read stops at descriptors
        REQUIRE(r);
        CHECK(std::string_view(buf.data(), 4) == "abcd");
        CHECK(b.queued_fds() == 3);
        for (std::uint64_t i = 1; i <= 3; ++i) {
            unique_fd fd = b.take_fd();
            REQUIRE(fd.valid());
            CHECK(eventfd_value(fd.get()) == i);
        }
        CHECK_FALSE(b.take_fd().valid());
        // receive() hands over the queue together with the bytes.
        auto s3 = co_await a.send_fds(std::string_view("e"), fds[0]);
        REQUIRE(s3);
        auto m = co_await b.receive(buf);
        REQUIRE(m);
        CHECK(m->bytes == 1);
        REQUIRE(m->fds.size() == 1);
        CHECK(b.queued_fds() == 0);
    };
    ctx.sync_wait(run());
}

TEST_CASE("fd_passing: a stream_socket's plain read makes the kernel drop descriptors, which is why fd_stream exists",
          "[fd_passing]") {
    io_context ctx;
    auto pr = ringsock::stream_socket::pair(ctx);
    REQUIRE(pr);
    pipe_fds p;
    const int w = p.w.get();
    REQUIRE(raw_send_fds(pr->first.native_handle(), "z", &w, 1));
    p.w.reset();
    auto run = [&]() -> task<std::size_t> {
        std::array<char, 4> buf{};
        auto r = co_await pr->second.read_some(buf);
        co_return r.value();
    };
    CHECK(ctx.sync_wait(run()) == 1);
    CHECK(pipe_at_eof(p.r.get()));  // the descriptor was discarded, never installed
}

TEST_CASE("fd_passing: fd_stream over its descriptor limit closes that read's descriptors and reports fds_truncated, keeping the bytes",
          "[fd_passing]") {
    io_context ctx;
    auto pr = ringsock::fd_stream::pair(ctx);
    REQUIRE(pr);
    auto& a = pr->first; auto& b = pr->second;  // clang 14: lambdas cannot capture structured bindings
    b.set_fd_limit(2);
    pipe_fds p1, p2, p3;
    auto run = [&]() -> task<void> {
        auto s1 = co_await a.send_fds(std::string_view("one"), p1.w);
        REQUIRE(s1);
        std::array<char, 8> buf{};
        auto r1 = co_await b.read_some(buf);
        REQUIRE(r1.value() == 3);
        CHECK(b.queued_fds() == 1);
        const std::array<int, 2> two{p2.w.get(), p3.w.get()};
        auto s2 = co_await a.send_fds(std::string_view("two"), two);
        REQUIRE(s2);
        auto r = co_await b.read_some(buf);
        REQUIRE_FALSE(r);
        CHECK(r.error() == ringsock::errc::fds_truncated);
        CHECK(r.partial_value() == 3);
        CHECK(std::string_view(buf.data(), 3) == "two");
        CHECK(b.queued_fds() == 1);  // the earlier one is kept
    };
    ctx.sync_wait(run());
    p2.w.reset();
    p3.w.reset();
    CHECK(pipe_at_eof(p2.r.get()));
    CHECK(pipe_at_eof(p3.r.get()));
    p1.w.reset();
    CHECK_FALSE(pipe_at_eof(p1.r.get()));  // still queued in b
    b.take_fds();
    CHECK(pipe_at_eof(p1.r.get()));
}

TEST_CASE("fd_passing: send_fds on a stream needs at least one data byte, and a negative descriptor is EBADF; nothing is sent",
          "[fd_passing]") {
    io_context ctx;
    auto pr = ringsock::fd_stream::pair(ctx);
    REQUIRE(pr);
    pipe_fds p;
    auto run = [&]() -> task<void> {
        auto r = co_await pr->first.send_fds(std::string_view(""), p.w);
        REQUIRE_FALSE(r);
        CHECK(r.error() == std::errc::invalid_argument);
        const std::array<int, 2> bad{p.w.get(), -1};
        auto r2 = co_await pr->first.send_fds(std::string_view("x"), bad);
        REQUIRE_FALSE(r2);
        CHECK(r2.error() == std::errc::bad_file_descriptor);
    };
    ctx.sync_wait(run());
    char c;
    CHECK(::recv(pr->second.native_handle(), &c, 1, MSG_DONTWAIT) == -1);
}

TEST_CASE("fd_passing: an io_uring descriptor cannot be sent (EINVAL), and nothing arrives", "[fd_passing]") {
    io_context ctx;
    auto pr = ringsock::seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    const int ring_fd = ctx.native_handle()->ring_fd;
    auto run = [&]() -> task<io_result<std::size_t>> {
        const std::array<int, 1> ring{ring_fd};
        co_return co_await pr->first.send_fds(std::string_view("ring"), ring);
    };
    auto r = ctx.sync_wait(run());
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::invalid_argument);
    char c;
    CHECK(::recv(pr->second.native_handle(), &c, 1, MSG_DONTWAIT) == -1);
}

TEST_CASE("fd_passing: 253 descriptors still all arrive beside SCM_CREDENTIALS and SCM_PIDFD in the same control buffer",
          "[fd_passing]") {
    io_context ctx;
    auto pr = ringsock::datagram_socket::pair(ctx);
    REQUIRE(pr);
    REQUIRE(ringsock::pass_credentials(pr->second));
    const bool pidfds = static_cast<bool>(ringsock::pass_pidfd(pr->second));
    auto fds = numbered_eventfds(253);
    auto run = [&]() -> task<io_result<received_message>> {
        auto s = co_await pr->first.send_fds(std::string_view("full"), fds);
        REQUIRE(s);
        std::array<char, 8> buf{};
        co_return co_await pr->second.receive(buf);
    };
    auto r = ctx.sync_wait(run());
    REQUIRE(r);
    CHECK(r->fds.size() == 253);
    CHECK((r->flags & MSG_CTRUNC) == 0);
    REQUIRE(r->sender_credentials);
    CHECK(r->sender_credentials->pid == ::getpid());
    if (pidfds) CHECK(r->sender_pidfd.valid());
    for (std::size_t i = 0; i < r->fds.size(); ++i) CHECK(eventfd_value(r->fds[i].get()) == i + 1);
}
