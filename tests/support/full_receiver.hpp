// A datagram receiver whose queue is full: the state in which an io_uring send of a
// datagram would go wrong (see detail::send_msg_op), for the datagram tests.
#pragma once

#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "cancel_support.hpp"

namespace ringsock::test {

constexpr std::uint32_t filler_value = 0xf111e4;

// One datagram as the receiver saw it.
struct seen {
    ssize_t len = 0;
    std::uint32_t value = 0;
    int fds = 0;
};

// A receiver bound to a fresh abstract name with its queue filled to the brim
// (net.unix.max_dgram_qlen) by a throwaway socket; `queued` 4-byte datagrams wait in it.
struct full_receiver {
    endpoint ep;
    datagram_socket r;
    int queued = 0;
    full_receiver(io_context& ctx, const char* tag) : ep(ringsock::test::unique_abstract(tag)) {
        auto b = datagram_socket::bind(ctx, ep);
        REQUIRE(b);
        r = std::move(*b);
        fill();
    }
    // Fills the queue again; returns how many datagrams it took.
    int fill() {
        unique_fd filler(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        REQUIRE(filler);
        int n = 0;
        while (::sendto(filler.get(), &filler_value, sizeof filler_value, MSG_DONTWAIT, ep.data(), ep.size()) == 4) ++n;
        REQUIRE(errno == EAGAIN);
        queued += n;
        return n;
    }
    // Takes every datagram now queued (closing any descriptor that came with one).
    std::vector<seen> drain() {
        std::vector<seen> out;
        for (;;) {
            std::array<std::byte, 64> buf{};
            iovec iov{buf.data(), buf.size()};
            alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * 16)]{};
            msghdr msg{};
            msg.msg_iov = &iov;
            msg.msg_iovlen = 1;
            msg.msg_control = ctrl;
            msg.msg_controllen = sizeof ctrl;
            const ssize_t n = ::recvmsg(r.native_handle(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
            if (n < 0) {
                CHECK(errno == EAGAIN);
                break;
            }
            seen s;
            s.len = n;
            if (n >= 4) std::memcpy(&s.value, buf.data(), 4);
            for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
                const std::size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (std::size_t i = 0; i < k; ++i) {
                    int fd = -1;
                    std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                    ::close(fd);
                    ++s.fds;
                }
            }
            out.push_back(s);
        }
        return out;
    }
    // Drains, and checks that exactly the filler datagrams were there.
    void expect_only_fillers(std::vector<seen> got) {
        CHECK(got.size() == static_cast<std::size_t>(queued));
        for (const auto& s : got) {
            CHECK(s.len == 4);
            CHECK(s.value == filler_value);
        }
    }
};

}  // namespace ringsock::test
