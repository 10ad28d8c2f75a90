// Control messages (cmsg): building an SCM_RIGHTS message for sending, and taking
// ownership of everything a recvmsg delivered. The parser walks every control message
// by its cmsg_len, wraps each descriptor the moment it is seen, skips messages it does
// not know, and on MSG_CTRUNC (or any malformed input) closes every descriptor.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstddef>
#include <cstring>
#include <new>
#include <optional>
#include <span>
#include <system_error>
#include <utility>
#include <vector>

#include "../credentials.hpp"
#include "../error.hpp"
#include "../unique_fd.hpp"

// Linux 6.5 added SCM_PIDFD (a pidfd of the sender per message, with SO_PASSPIDFD);
// Debian 12's headers (6.1) lack it.
#ifndef SCM_PIDFD
#define SCM_PIDFD 0x04
#endif

namespace ringsock::detail {

/// SCM_MAX_FD: the kernel's limit of descriptors in one message.
inline constexpr std::size_t scm_max_fd = 253;

/// Room for 253 descriptors plus SCM_CREDENTIALS, SCM_PIDFD, an unrequested SCM_INQ
/// (kernels 6.17 to early 6.18.y, FACTS 6) and slack for anything else the kernel adds.
inline constexpr std::size_t control_capacity =
    CMSG_SPACE(sizeof(int) * scm_max_fd) + CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int)) /* pidfd */ +
    CMSG_SPACE(sizeof(int)) /* SCM_INQ */ + 64;

/// The bytes of a control buffer, aligned for cmsghdr.
template <std::size_t N>
struct alignas(cmsghdr) control_buffer {
    std::byte bytes[N];
    std::byte* data() noexcept { return bytes; }
    static constexpr std::size_t size() noexcept { return N; }
};

/// Control-buffer length that receives at most about `max_fds` descriptors (the
/// alignment slack and room for credentials may let a few more in; the parser then
/// enforces `max_fds` exactly).
constexpr std::size_t control_length_for(std::size_t max_fds) noexcept {
    if (max_fds > scm_max_fd) max_fds = scm_max_fd;
    return CMSG_SPACE(sizeof(int) * max_fds) + (control_capacity - CMSG_SPACE(sizeof(int) * scm_max_fd));
}

/// Calls f(level, type, payload) for each control message in `control`, in order.
/// Returns false if the buffer is malformed: a cmsg_len shorter than the header, or
/// longer than the bytes left (the payload is then cut at the end of the buffer and the
/// walk stops). Never reads outside `control`; the buffer need not be aligned.
template <class F>
bool for_each_cmsg(std::span<const std::byte> control, F&& f) {
    constexpr std::size_t header = CMSG_LEN(0);  // sizeof(cmsghdr), aligned
    std::size_t off = 0;
    while (control.size() - off >= sizeof(cmsghdr)) {
        cmsghdr h;
        std::memcpy(&h, control.data() + off, sizeof h);
        std::size_t left = control.size() - off;
        if (h.cmsg_len < header) return false;
        bool overrun = h.cmsg_len > left;
        std::size_t len = overrun ? left : static_cast<std::size_t>(h.cmsg_len);
        f(h.cmsg_level, h.cmsg_type, control.subspan(off + header, len - header));
        if (overrun) return false;
        std::size_t step = CMSG_ALIGN(len);
        if (step >= left) break;
        off += step;
    }
    return true;
}

/// Everything a recvmsg delivered in its control buffer, owned. `Fd` is unique_fd in
/// the library; the fuzz target substitutes a type that records closes instead.
template <class Fd>
struct basic_control {
    std::vector<Fd> fds;                     // SCM_RIGHTS, in order
    std::optional<credentials> creds;        // SCM_CREDENTIALS
    Fd pidfd{};                              // SCM_PIDFD
    std::size_t unknown = 0;                 // control messages skipped
    bool malformed = false;
    std::error_code error{};                 // fds_truncated, protocol_error, not_enough_memory
};
using parsed_control = basic_control<unique_fd>;

/// Takes ownership of the descriptors in `control` (the first msg_controllen bytes of
/// a recvmsg's control buffer) and collects credentials. `msg_flags` is the recvmsg's
/// msg_flags. Every descriptor is closed, and `error` set, when:
///  - MSG_CTRUNC is set (fds_truncated): some descriptors never arrived;
///  - more than `max_fds` arrived (fds_truncated);
///  - the buffer is malformed (protocol_error; only possible for a kernel bug);
///  - memory for the vector cannot be had (not_enough_memory).
/// Credentials survive these errors (they are plain data). Never throws. `reuse`, if
/// given, becomes the result's (cleared) fds vector, so its capacity saves allocating.
template <class Fd = unique_fd>
basic_control<Fd> parse_control(std::span<const std::byte> control, int msg_flags,
                                std::size_t max_fds = scm_max_fd, std::vector<Fd>&& reuse = {}) noexcept {
    basic_control<Fd> out;
    out.fds = std::move(reuse);
    out.fds.clear();
    // The common case, no control message at all: nothing to own, count or parse.
    if (control.empty() && !(msg_flags & MSG_CTRUNC)) return out;
    // Count first, so one allocation suffices and wrapping can never fail half-way.
    std::size_t count = 0;
    out.malformed = !for_each_cmsg(control, [&](int level, int type, std::span<const std::byte> p) {
        if (level == SOL_SOCKET && type == SCM_RIGHTS) count += p.size() / sizeof(int);
    });
    bool have_room = true;
    try {
        out.fds.reserve(count);
    } catch (...) {
        have_room = false;
    }
    // Wrap every descriptor at once, whatever else goes wrong, so each is closed once.
    // TRICKY: reads go through memcpy: the payload of a fuzzed buffer may be unaligned.
    for_each_cmsg(control, [&](int level, int type, std::span<const std::byte> p) {
        if (level == SOL_SOCKET && type == SCM_RIGHTS) {
            for (std::size_t i = 0; i + sizeof(int) <= p.size(); i += sizeof(int)) {
                int fd;
                std::memcpy(&fd, p.data() + i, sizeof fd);
                if (fd < 0) continue;
                if (have_room) out.fds.emplace_back(fd);
                else Fd closing{fd};  // no room to keep it: close it now
            }
        } else if (level == SOL_SOCKET && type == SCM_PIDFD && p.size() >= sizeof(int)) {
            int fd;
            std::memcpy(&fd, p.data(), sizeof fd);
            if (fd >= 0) {
                Fd owned{fd};
                if (!out.pidfd.valid()) out.pidfd = std::move(owned);  // a second one is closed
            }
        } else if (level == SOL_SOCKET && type == SCM_CREDENTIALS && p.size() >= sizeof(ucred)) {
            ucred u;
            std::memcpy(&u, p.data(), sizeof u);
            out.creds = credentials{u.pid, u.uid, u.gid};
        } else {
            ++out.unknown;  // e.g. SCM_INQ, SCM_SECURITY: nothing to own
        }
    });
    std::error_code ec;
    if (!have_room) ec = std::make_error_code(std::errc::not_enough_memory);
    else if (out.malformed) ec = std::make_error_code(std::errc::protocol_error);
    else if ((msg_flags & MSG_CTRUNC) || out.fds.size() > max_fds) ec = make_error_code(errc::fds_truncated);
    if (ec) {
        out.fds.clear();  // closes them
        out.pidfd = Fd{};
        out.error = ec;
    }
    return out;
}

/// An SCM_RIGHTS control message for sending up to 253 descriptors, built in place.
class rights_message {
public:
    /// Copies `fds` into the message. Returns false (and builds nothing) for more than
    /// 253 descriptors.
    bool build(const int* fds, std::size_t n) noexcept {
        if (n > scm_max_fd) return false;
        len_ = 0;
        if (n == 0) return true;
        cmsghdr h{};
        h.cmsg_level = SOL_SOCKET;
        h.cmsg_type = SCM_RIGHTS;
        h.cmsg_len = CMSG_LEN(sizeof(int) * n);
        std::memcpy(buf_.data(), &h, sizeof h);
        std::memcpy(buf_.data() + CMSG_LEN(0), fds, sizeof(int) * n);
        len_ = CMSG_SPACE(sizeof(int) * n);
        return true;
    }
    void* data() noexcept { return len_ ? buf_.data() : nullptr; }
    std::size_t size() const noexcept { return len_; }

private:
    control_buffer<CMSG_SPACE(sizeof(int) * scm_max_fd)> buf_;
    std::size_t len_ = 0;
};

}  // namespace ringsock::detail
