// Helpers shared by the cancellation, timeout, scope and lifetime tests: socket pairs,
// synchronous peer I/O that bypasses the ring, and a counter proving frames are destroyed.
#pragma once

#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace ringsock::test {

inline std::pair<stream_socket, stream_socket> make_pair(io_context& ctx) {
    auto p = stream_socket::pair(ctx);
    REQUIRE(p);
    return std::move(*p);
}

/// Writes `s` with a plain blocking send, outside the ring.
inline void raw_send(const stream_socket& s, const std::string& data) {
    auto n = ::send(s.native_handle(), data.data(), data.size(), MSG_NOSIGNAL);
    REQUIRE(n == static_cast<ssize_t>(data.size()));
}

/// Sends `data` with `fd` attached (SCM_RIGHTS), outside the ring.
inline void raw_send_fd(int sock, const std::string& data, int fd) {
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

/// Bytes queued for reading on `s` (FIONREAD), without consuming them.
inline std::size_t readable_bytes(const stream_socket& s) {
    int n = 0;
    REQUIRE(::ioctl(s.native_handle(), FIONREAD, &n) == 0);
    return static_cast<std::size_t>(n);
}

/// Reads whatever is queued on `s` without blocking, outside the ring.
inline std::string raw_drain(const stream_socket& s) {
    std::string out;
    char buf[65536];
    for (;;) {
        auto n = ::recv(s.native_handle(), buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) break;
        out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
}

/// A fresh abstract name for this process, so parallel runs never collide.
inline endpoint unique_abstract(const std::string& tag) {
    static int serial = 0;
    auto ep = endpoint::abstract("ringsock-test-" + tag + "-" + std::to_string(::getpid()) + "-" +
                                 std::to_string(++serial));
    REQUIRE(ep);
    return *ep;
}

/// A listening socket that nobody accepts on (no acceptor, whose multishot accept would
/// drain the backlog), for tests that need connects to wait.
inline unique_fd raw_listener(const endpoint& ep, int backlog) {
    unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd);
    REQUIRE(::bind(fd.get(), ep.data(), ep.size()) == 0);
    REQUIRE(::listen(fd.get(), backlog) == 0);
    return fd;
}

/// A client connected to `ep` with a plain blocking connect (the backlog must have room).
inline unique_fd raw_connect(const endpoint& ep) {
    unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd);
    REQUIRE(::connect(fd.get(), ep.data(), ep.size()) == 0);
    return fd;
}

/// Connects non-blocking clients to `ep` until the listener's backlog is full (EAGAIN),
/// so the next blocking connect waits. Returns the clients (keep them open).
inline std::vector<unique_fd> fill_backlog(const endpoint& ep) {
    std::vector<unique_fd> clients;
    for (int i = 0; i < 4096; ++i) {
        unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        REQUIRE(fd);
        if (::connect(fd.get(), ep.data(), ep.size()) < 0) {
            REQUIRE(errno == EAGAIN);
            return clients;
        }
        clients.push_back(std::move(fd));
    }
    FAIL("the backlog never filled");
    return clients;
}

/// Counts live instances, so a test can prove coroutine frames were destroyed.
struct counted {
    static inline int alive = 0;
    counted() noexcept { ++alive; }
    counted(const counted&) noexcept { ++alive; }
    counted& operator=(const counted&) = default;
    ~counted() { --alive; }
};

}  // namespace ringsock::test
