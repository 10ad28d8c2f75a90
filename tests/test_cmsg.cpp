// The control-message parser (detail/cmsg.hpp) on hand-built buffers: it must own
// every descriptor it sees, skip what it does not know, and close everything when the
// kernel says the buffer was truncated or the buffer is malformed.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include <ringsock/detail/cmsg.hpp>

#include "support/fd_count.hpp"

using ringsock::detail::parse_control;
using ringsock::detail::parsed_control;

namespace {

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }

/// Builds a control buffer the way the kernel lays it out.
struct control_builder {
    alignas(cmsghdr) std::byte buf[4096]{};
    std::size_t len = 0;

    control_builder& add(int level, int type, const void* data, std::size_t n) {
        cmsghdr h{};
        h.cmsg_level = level;
        h.cmsg_type = type;
        h.cmsg_len = CMSG_LEN(n);
        std::memcpy(buf + len, &h, sizeof h);
        std::memcpy(buf + len + CMSG_LEN(0), data, n);
        len += CMSG_SPACE(n);
        return *this;
    }
    control_builder& rights(std::vector<int> fds) {
        return add(SOL_SOCKET, SCM_RIGHTS, fds.data(), fds.size() * sizeof(int));
    }
    std::span<const std::byte> span() const { return {buf, len}; }
};

/// `n` fresh descriptors (dups of /dev/null), owned by the caller until handed over.
std::vector<int> fresh_fds(std::size_t n) {
    std::vector<int> v;
    for (std::size_t i = 0; i < n; ++i) v.push_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    return v;
}

}  // namespace

TEST_CASE("cmsg: an empty control buffer yields no descriptors and no error", "[cmsg]") {
    parsed_control c = parse_control({}, 0);
    CHECK(c.fds.empty());
    CHECK_FALSE(c.creds.has_value());
    CHECK_FALSE(c.pidfd.valid());
    CHECK_FALSE(c.error);
    CHECK_FALSE(c.malformed);
}

TEST_CASE("cmsg: SCM_RIGHTS descriptors are wrapped in order and closed with the result", "[cmsg]") {
    auto fds = fresh_fds(3);
    control_builder b;
    b.rights(fds);
    {
        parsed_control c = parse_control(b.span(), 0);
        REQUIRE_FALSE(c.error);
        REQUIRE(c.fds.size() == 3);
        for (std::size_t i = 0; i < 3; ++i) CHECK(c.fds[i].get() == fds[i]);
        for (int fd : fds) CHECK(is_open(fd));
    }
    for (int fd : fds) CHECK_FALSE(is_open(fd));
}

TEST_CASE("cmsg: unknown control messages before, between and after SCM_RIGHTS are skipped", "[cmsg]") {
    auto fds = fresh_fds(3);
    control_builder b;
    const int inq = 1234;
    const char blob[7] = "abcdef";
    b.add(SOL_SOCKET, 0x41 /* SCM_INQ-like */, &inq, sizeof inq)
        .rights({fds[0]})
        .add(42 /* another level */, SCM_RIGHTS, blob, sizeof blob)  // not SOL_SOCKET: not descriptors
        .rights({fds[1], fds[2]})
        .add(SOL_SOCKET, 999, blob, 3);
    parsed_control c = parse_control(b.span(), 0);
    REQUIRE_FALSE(c.error);
    CHECK(c.unknown == 3);
    REQUIRE(c.fds.size() == 3);
    CHECK(c.fds[0].get() == fds[0]);
    CHECK(c.fds[1].get() == fds[1]);
    CHECK(c.fds[2].get() == fds[2]);
}

TEST_CASE("cmsg: SCM_CREDENTIALS and SCM_PIDFD are collected beside the descriptors", "[cmsg]") {
    auto fds = fresh_fds(2);
    ucred u{1234, 1000, 100};
    control_builder b;
    b.add(SOL_SOCKET, SCM_CREDENTIALS, &u, sizeof u).add(SOL_SOCKET, SCM_PIDFD, &fds[1], sizeof(int)).rights({fds[0]});
    parsed_control c = parse_control(b.span(), 0);
    REQUIRE_FALSE(c.error);
    REQUIRE(c.creds.has_value());
    CHECK(c.creds->pid == 1234);
    CHECK(c.creds->uid == 1000u);
    CHECK(c.creds->gid == 100u);
    CHECK(c.pidfd.get() == fds[1]);
    REQUIRE(c.fds.size() == 1);
    CHECK(c.fds[0].get() == fds[0]);
}

TEST_CASE("cmsg: MSG_CTRUNC closes every descriptor that did arrive and reports fds_truncated", "[cmsg]") {
    auto fds = fresh_fds(3);
    ucred u{77, 1, 2};
    control_builder b;
    b.add(SOL_SOCKET, SCM_CREDENTIALS, &u, sizeof u).add(SOL_SOCKET, SCM_PIDFD, &fds[2], sizeof(int));
    b.rights({fds[0], fds[1]});
    parsed_control c = parse_control(b.span(), MSG_CTRUNC | MSG_CMSG_CLOEXEC);
    CHECK(c.error == ringsock::errc::fds_truncated);
    CHECK(c.fds.empty());
    CHECK_FALSE(c.pidfd.valid());
    for (int fd : fds) CHECK_FALSE(is_open(fd));
    // Credentials are data, not resources: they survive.
    REQUIRE(c.creds.has_value());
    CHECK(c.creds->pid == 77);
}

TEST_CASE("cmsg: more descriptors than max_fds closes them all and reports fds_truncated", "[cmsg]") {
    auto fds = fresh_fds(3);
    control_builder b;
    b.rights(fds);
    parsed_control c = parse_control(b.span(), 0, 2);
    CHECK(c.error == ringsock::errc::fds_truncated);
    CHECK(c.fds.empty());
    for (int fd : fds) CHECK_FALSE(is_open(fd));
}

TEST_CASE("cmsg: a cmsg_len shorter than the header stops the walk and closes what was taken", "[cmsg]") {
    auto fds = fresh_fds(1);
    control_builder b;
    b.rights(fds);
    cmsghdr bad{};
    bad.cmsg_len = 3;  // malformed
    bad.cmsg_level = SOL_SOCKET;
    bad.cmsg_type = SCM_RIGHTS;
    std::memcpy(b.buf + b.len, &bad, sizeof bad);
    b.len += sizeof bad + 8;
    parsed_control c = parse_control(b.span(), 0);
    CHECK(c.malformed);
    CHECK(c.error == std::errc::protocol_error);
    CHECK(c.fds.empty());
    CHECK_FALSE(is_open(fds[0]));
}

TEST_CASE("cmsg: a cmsg_len running past the buffer owns the descriptors inside it and reports malformed", "[cmsg]") {
    auto fds = fresh_fds(2);
    control_builder b;
    b.rights(fds);
    // Claim 10 descriptors where the buffer holds 2.
    cmsghdr h{};
    std::memcpy(&h, b.buf, sizeof h);
    h.cmsg_len = CMSG_LEN(10 * sizeof(int));
    std::memcpy(b.buf, &h, sizeof h);
    b.len = CMSG_LEN(2 * sizeof(int));
    parsed_control c = parse_control(b.span(), 0);
    CHECK(c.malformed);
    CHECK(c.error == std::errc::protocol_error);
    CHECK(c.fds.empty());
    for (int fd : fds) CHECK_FALSE(is_open(fd));  // closed, not leaked
}

TEST_CASE("cmsg: a buffer shorter than one header is ignored", "[cmsg]") {
    control_builder b;
    b.len = sizeof(cmsghdr) - 1;
    std::memset(b.buf, 0xff, b.len);
    parsed_control c = parse_control(b.span(), 0);
    CHECK_FALSE(c.error);
    CHECK(c.fds.empty());
}

TEST_CASE("cmsg: negative descriptor values and short credentials are not taken", "[cmsg]") {
    control_builder b;
    const int junk[2] = {-1, -5};
    const char tiny[4] = {1, 2, 3, 4};
    b.add(SOL_SOCKET, SCM_RIGHTS, junk, sizeof junk).add(SOL_SOCKET, SCM_CREDENTIALS, tiny, sizeof tiny);
    parsed_control c = parse_control(b.span(), 0);
    CHECK_FALSE(c.error);
    CHECK(c.fds.empty());
    CHECK_FALSE(c.creds.has_value());
}

TEST_CASE("cmsg: rights_message builds one SCM_RIGHTS message the parser reads back", "[cmsg]") {
    ringsock::detail::rights_message m;
    const int fds[3] = {10, 11, 12};
    REQUIRE(m.build(fds, 3));
    CHECK(m.size() == CMSG_SPACE(3 * sizeof(int)));
    std::vector<int> seen;
    bool ok = ringsock::detail::for_each_cmsg(
        std::span<const std::byte>(static_cast<const std::byte*>(m.data()), m.size()),
        [&](int level, int type, std::span<const std::byte> p) {
            CHECK(level == SOL_SOCKET);
            CHECK(type == SCM_RIGHTS);
            for (std::size_t i = 0; i < p.size(); i += sizeof(int)) {
                int v;
                std::memcpy(&v, p.data() + i, sizeof v);
                seen.push_back(v);
            }
        });
    CHECK(ok);
    CHECK(seen == std::vector<int>{10, 11, 12});

    std::vector<int> many(254, 3);
    CHECK_FALSE(m.build(many.data(), many.size()));
    REQUIRE(m.build(many.data(), 253));
    CHECK(m.size() == CMSG_SPACE(253 * sizeof(int)));
    REQUIRE(m.build(nullptr, 0));
    CHECK(m.data() == nullptr);
    CHECK(m.size() == 0);
}

TEST_CASE("cmsg: the receive control buffer holds 253 descriptors plus credentials, a pidfd and SCM_INQ", "[cmsg]") {
    using namespace ringsock::detail;
    STATIC_REQUIRE(control_capacity >= CMSG_SPACE(253 * sizeof(int)) + CMSG_SPACE(sizeof(ucred)) +
                                           2 * CMSG_SPACE(sizeof(int)));
    STATIC_REQUIRE(control_length_for(253) == control_capacity);
    STATIC_REQUIRE(control_length_for(1000) == control_capacity);
    STATIC_REQUIRE(control_length_for(1) < control_capacity);
}
