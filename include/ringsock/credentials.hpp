// Who is on the other end: the peer's pid/uid/gid (SO_PEERCRED), a pidfd for a
// race-free process identity (SO_PEERPIDFD), and per-message credentials for receivers
// (SO_PASSCRED / SO_PASSPIDFD). These are plain socket options: they never block, so
// they are synchronous calls, not io_uring operations.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cerrno>
#include <concepts>
#include <system_error>

#include "io_result.hpp"
#include "unique_fd.hpp"

// Linux 6.5; Debian 12's headers (6.1) lack them.
#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace ringsock {

/// A process's identity as the kernel recorded it.
struct credentials {
    /// Process id; 0 when the process is outside the caller's pid namespace.
    pid_t pid = 0;
    /// User id, mapped into the caller's user namespace.
    uid_t uid = static_cast<uid_t>(-1);
    /// Group id, mapped into the caller's user namespace.
    gid_t gid = static_cast<gid_t>(-1);
};

/// Anything with native_handle(): stream_socket, fd_stream, seqpacket_socket, ...
template <class S>
concept native_socket = requires(const S& s) {
    { s.native_handle() } -> std::convertible_to<int>;
};

namespace detail {

/// Classifies what SO_PEERCRED returned. A socket without a peer reports uid (uid_t)-1
/// (the kernel's overflow-free "no credentials"); pid 0 with a real uid is a peer whose
/// process is outside the caller's pid namespace, and is a valid answer.
inline io_result<credentials> credentials_from_ucred(const ucred& u) noexcept {
    if (u.uid == static_cast<uid_t>(-1)) return {std::make_error_code(std::errc::not_connected), "peer_credentials"};
    return credentials{u.pid, u.uid, u.gid};
}

}  // namespace detail

/// The peer's pid, uid and gid (SO_PEERCRED) as they were when the connection was made
/// (connect(), accept() or socketpair()); a peer that later changes uid or execs is
/// not reflected, and its pid may by now belong to another process: use peer_pidfd()
/// for an identity that cannot be recycled. Only connected stream and seqpacket sockets
/// and socketpairs have peer credentials; others give std::errc::not_connected.
/// pid 0 is a valid answer, not an error: the peer's process is not visible in the
/// caller's pid namespace (a server in a container, a client on the host). uid and gid
/// are still real (mapped into the caller's user namespace). Decide on uid/gid; never
/// treat pid 0 as "no peer".
inline io_result<credentials> peer_credentials(int fd) {
    ucred u{};
    socklen_t len = sizeof u;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &u, &len) < 0)
        return {std::error_code(errno, std::generic_category()), "peer_credentials"};
    return detail::credentials_from_ucred(u);
}
template <native_socket S>
io_result<credentials> peer_credentials(const S& sock) {
    return peer_credentials(sock.native_handle());
}

/// A pidfd (close-on-exec) for the peer process (SO_PEERPIDFD, Linux 6.5), the
/// race-free way to signal or watch it. Errors: std::errc::not_supported (the kernel
/// lacks SO_PEERPIDFD; there is deliberately no fallback to pidfd_open(pid), which
/// could name a recycled pid), std::errc::no_such_process (the peer is gone),
/// std::errc::not_connected (no peer).
/// A peer outside the caller's pid namespace (peer_credentials() reports pid 0) still
/// gets a pidfd: it identifies that process (poll it for exit, pidfd_send_signal) even
/// where its pid cannot be named.
inline io_result<unique_fd> peer_pidfd(int fd) {
    int pidfd = -1;
    socklen_t len = sizeof pidfd;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0) {
        int err = errno;
        if (err == ENOPROTOOPT) return {std::make_error_code(std::errc::not_supported), "peer_pidfd: SO_PEERPIDFD"};
        if (err == EINVAL || err == ESRCH) return {std::make_error_code(std::errc::no_such_process), "peer_pidfd"};
        if (err == ENODATA) return {std::make_error_code(std::errc::not_connected), "peer_pidfd"};
        return {std::error_code(err, std::generic_category()), "peer_pidfd"};
    }
    return unique_fd(pidfd);
}
template <native_socket S>
io_result<unique_fd> peer_pidfd(const S& sock) {
    return peer_pidfd(sock.native_handle());
}

/// Asks the kernel to attach the sender's credentials to every message this socket
/// receives (SO_PASSCRED): they appear in received_message::credentials. The sender
/// does nothing; the kernel fills in its real pid, uid and gid. Meant for datagram
/// and seqpacket receivers, where each message may come from another process.
inline io_result<void> pass_credentials(int fd, bool on = true) {
    int v = on ? 1 : 0;
    if (::setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &v, sizeof v) < 0)
        return {std::error_code(errno, std::generic_category()), "pass_credentials: SO_PASSCRED"};
    return {};
}
template <native_socket S>
io_result<void> pass_credentials(const S& sock, bool on = true) {
    return pass_credentials(sock.native_handle(), on);
}

/// Like pass_credentials, but a pidfd of the sender arrives with every message
/// (SO_PASSPIDFD, Linux 6.5): received_message::sender_pidfd. std::errc::not_supported
/// on older kernels.
inline io_result<void> pass_pidfd(int fd, bool on = true) {
    int v = on ? 1 : 0;
    if (::setsockopt(fd, SOL_SOCKET, SO_PASSPIDFD, &v, sizeof v) < 0) {
        if (errno == ENOPROTOOPT) return {std::make_error_code(std::errc::not_supported), "pass_pidfd: SO_PASSPIDFD"};
        return {std::error_code(errno, std::generic_category()), "pass_pidfd: SO_PASSPIDFD"};
    }
    return {};
}
template <native_socket S>
io_result<void> pass_pidfd(const S& sock, bool on = true) {
    return pass_pidfd(sock.native_handle(), on);
}

}  // namespace ringsock
