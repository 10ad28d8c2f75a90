// Hostile tests: what a careless or adversarial user does to sockets, operations and
// the loop (destroying, moving and closing sockets while their operations are in every
// state, stop requests from other threads, odd time limits, connection floods), checked
// for memory safety (run under ASan+UBSan and TSan), real results and no leaked fds.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/fd_count.hpp"
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

std::pair<fd_stream, fd_stream> make_fd_pair(io_context& ctx) {
    auto p = fd_stream::pair(ctx);
    REQUIRE(p);
    return std::move(*p);
}

/// Sends `data` with `fd` attached (SCM_RIGHTS), outside the ring.
void raw_send_fd(int sock, const std::string& data, int fd) {
    msghdr msg{};
    iovec iov{const_cast<char*>(data.data()), data.size()};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))]{};
    msg.msg_control = ctrl;
    msg.msg_controllen = sizeof ctrl;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    REQUIRE(::sendmsg(sock, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(data.size()));
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
