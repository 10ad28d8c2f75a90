// Raw socket pairs, pipes and SCM_RIGHTS sends as another program would make them, for
// tests of what ringsock receives.
#pragma once

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include <ringsock/unique_fd.hpp>

namespace ringsock::test {

/// socketpair(AF_UNIX, type) as two owned descriptors.
struct raw_pair {
    unique_fd a, b;
    explicit raw_pair(int type) {
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) == 0);
        a.reset(sv[0]);
        b.reset(sv[1]);
    }
};

/// A pipe: the read end shows EOF once every copy of the write end is closed.
struct pipe_fds {
    unique_fd r, w;
    pipe_fds() {
        int p[2];
        REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
        r.reset(p[0]);
        w.reset(p[1]);
    }
};

/// Raw sendmsg with SCM_RIGHTS, as another program (or a forked child) would do it.
inline bool raw_send_fds(int sock, std::string_view data, const int* fds, std::size_t n) {
    alignas(cmsghdr) char ctrl[CMSG_SPACE(253 * sizeof(int))] = {};
    iovec iov{const_cast<char*>(data.data()), data.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (n > 0) {
        msg.msg_control = ctrl;
        msg.msg_controllen = CMSG_SPACE(n * sizeof(int));
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(n * sizeof(int));
        std::memcpy(CMSG_DATA(c), fds, n * sizeof(int));
    }
    return ::sendmsg(sock, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(data.size());
}

/// `n` eventfds whose counters are 1..n, so the receiver can tell them apart.
inline std::vector<unique_fd> numbered_eventfds(std::size_t n) {
    std::vector<unique_fd> v;
    for (std::size_t i = 0; i < n; ++i) v.emplace_back(::eventfd(static_cast<unsigned>(i + 1), EFD_CLOEXEC));
    return v;
}

/// An eventfd's counter (0 on error).
inline std::uint64_t eventfd_value(int fd) {
    std::uint64_t v = 0;
    if (::read(fd, &v, sizeof v) != sizeof v) return 0;
    return v;
}

}  // namespace ringsock::test
