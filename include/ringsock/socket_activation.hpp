// Socket activation and readiness notification for services started by systemd (or
// systemd-socket-activate), without libsystemd: take the listening sockets a service
// manager handed over (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES; descriptors from 3) and
// tell it when the service is ready (NOTIFY_SOCKET, "READY=1", sent with a ringsock
// datagram_socket).
#pragma once

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdlib>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "datagram_socket.hpp"
#include "detail/errno.hpp"
#include "endpoint.hpp"
#include "io_context.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "task.hpp"
#include "unique_fd.hpp"

namespace ringsock {

/// The first descriptor a service manager passes (SD_LISTEN_FDS_START).
inline constexpr int listen_fds_start = 3;

/// One socket handed over by the service manager.
struct activated_socket {
    /// Owned: closing it (or destroying this) closes the socket. FD_CLOEXEC is set.
    unique_fd fd;
    /// Its LISTEN_FDNAMES entry (systemd's FileDescriptorName=), "unknown" when unnamed.
    std::string name;
    /// AF_UNIX, unless activation_options::unix_only was turned off.
    int family = AF_UNIX;
    /// SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM.
    int type = 0;
    /// SO_ACCEPTCONN: a stream or seqpacket socket that listen() was called on.
    bool listening = false;
};

/// Which inherited sockets take_activated_sockets() accepts, and whether it clears
/// the environment.
struct activation_options {
    /// Remove LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES from the environment (in every
    /// case, as sd_listen_fds(1) does), so child processes do not inherit them.
    bool unset_environment = true;
    /// Accept connected stream/seqpacket sockets (systemd's Accept=yes); otherwise a
    /// stream or seqpacket socket must be listening.
    bool allow_connected = false;
    /// Reject sockets of other families (AF_INET, ...).
    bool unix_only = true;
};

namespace detail {

/// A strict non-negative decimal: digits only, no sign, no spaces, no overflow.
inline bool parse_decimal(std::string_view s, long long& out) noexcept {
    if (s.empty() || s.size() > 18) return false;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
    }
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc{} && p == s.data() + s.size();
}

inline int sockopt_int(int fd, int opt, int& value) noexcept {
    socklen_t len = sizeof value;
    return ::getsockopt(fd, SOL_SOCKET, opt, &value, &len);
}

}  // namespace detail

/// Takes the sockets passed by a service manager: checks that LISTEN_PID is this
/// process, reads LISTEN_FDS and LISTEN_FDNAMES, checks each descriptor (a socket,
/// AF_UNIX, stream/seqpacket/dgram, listening unless it is a datagram socket), sets
/// FD_CLOEXEC and returns them as owned descriptors in order (fd 3, 4, ...).
///
/// Returns an empty vector when the variables are absent or name another process.
/// All or nothing: if any descriptor fails a check, the result is an error
/// (ENOTSOCK, EAFNOSUPPORT, EINVAL for a stream socket that is not listening, EBADF for
/// a descriptor that is not open, EINVAL for malformed variables) and no descriptor is
/// taken, closed or modified: the environment may describe them wrongly, and closing
/// one could close a descriptor this process opened itself. Exit, or close them
/// yourself.
///
/// Call it early in main(), before starting threads: it reads and unsets environment
/// variables, which is not thread-safe. Sockets taken here are never unlinked by
/// ringsock: hand a listening one to acceptor::adopt(), which leaves its file alone
/// (the service manager owns it).
inline io_result<std::vector<activated_socket>> take_activated_sockets(const activation_options& opts = {}) {
    struct env_cleanup {
        bool on;
        ~env_cleanup() {
            if (!on) return;
            ::unsetenv("LISTEN_PID");
            ::unsetenv("LISTEN_FDS");
            ::unsetenv("LISTEN_FDNAMES");
        }
    } cleanup{opts.unset_environment};
    using result = io_result<std::vector<activated_socket>>;
    auto invalid = [](const char* what) {
        return result(std::make_error_code(std::errc::invalid_argument), what);
    };

    const char* pid_s = std::getenv("LISTEN_PID");
    if (pid_s == nullptr) return std::vector<activated_socket>{};
    long long pid = 0;
    if (!detail::parse_decimal(pid_s, pid) || pid <= 0) return invalid("socket activation: malformed LISTEN_PID");
    if (pid != static_cast<long long>(::getpid())) return std::vector<activated_socket>{};  // not for us

    const char* fds_s = std::getenv("LISTEN_FDS");
    if (fds_s == nullptr) return std::vector<activated_socket>{};
    long long n = 0;
    if (!detail::parse_decimal(fds_s, n) || n > INT_MAX - listen_fds_start)
        return invalid("socket activation: malformed LISTEN_FDS");

    std::vector<std::string> names;
    if (const char* names_s = std::getenv("LISTEN_FDNAMES")) {
        std::string_view rest(names_s);
        for (;;) {
            auto colon = rest.find(':');
            names.emplace_back(rest.substr(0, colon));
            if (colon == std::string_view::npos) break;
            rest.remove_prefix(colon + 1);
        }
        if (n == 0 && names.size() == 1 && names[0].empty()) names.clear();
        if (static_cast<long long>(names.size()) != n)
            return invalid("socket activation: LISTEN_FDNAMES does not name LISTEN_FDS descriptors");
    } else {
        names.assign(static_cast<std::size_t>(n), "unknown");
    }

    // Check everything before touching anything.
    std::vector<activated_socket> out(static_cast<std::size_t>(n));
    for (int i = 0; i < static_cast<int>(n); ++i) {
        int fd = listen_fds_start + i;
        auto& s = out[static_cast<std::size_t>(i)];
        if (::fcntl(fd, F_GETFD) < 0)
            return result(detail::last_error(), "socket activation: a LISTEN_FDS descriptor is not open");
        if (detail::sockopt_int(fd, SO_DOMAIN, s.family) < 0)
            return result(detail::last_error(), "socket activation: a LISTEN_FDS descriptor is not a socket");
        if (opts.unix_only && s.family != AF_UNIX)
            return result(std::make_error_code(std::errc::address_family_not_supported),
                          "socket activation: a LISTEN_FDS descriptor is not an AF_UNIX socket");
        if (detail::sockopt_int(fd, SO_TYPE, s.type) < 0)
            return result(detail::last_error(), "socket activation: getsockopt(SO_TYPE)");
        if (s.type != SOCK_STREAM && s.type != SOCK_SEQPACKET && s.type != SOCK_DGRAM)
            return result(std::make_error_code(std::errc::wrong_protocol_type),
                          "socket activation: a LISTEN_FDS socket is not stream, seqpacket or dgram");
        int acceptconn = 0;
        if (detail::sockopt_int(fd, SO_ACCEPTCONN, acceptconn) < 0)
            return result(detail::last_error(), "socket activation: getsockopt(SO_ACCEPTCONN)");
        s.listening = acceptconn != 0;
        if (s.type != SOCK_DGRAM && !s.listening && !opts.allow_connected)
            return invalid("socket activation: a LISTEN_FDS stream socket is not listening");
        s.name = std::move(names[static_cast<std::size_t>(i)]);
    }
    for (int i = 0; i < static_cast<int>(n); ++i) {
        int fd = listen_fds_start + i;
        int flags = ::fcntl(fd, F_GETFD);
        if (flags >= 0 && !(flags & FD_CLOEXEC)) ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
        out[static_cast<std::size_t>(i)].fd.reset(fd);
    }
    return out;
}

/// The service manager's notification socket from NOTIFY_SOCKET: a path, or an
/// abstract name written "@name". Yields an unnamed endpoint when the variable is
/// not set. Errors: EAFNOSUPPORT for other forms (e.g. "vsock:..."), EINVAL when empty,
/// ENAMETOOLONG.
inline io_result<endpoint> notify_endpoint() {
    const char* e = std::getenv("NOTIFY_SOCKET");
    if (e == nullptr) return endpoint{};
    std::string_view s(e);
    if (s.empty()) return {std::make_error_code(std::errc::invalid_argument), "NOTIFY_SOCKET: empty"};
    if (s[0] == '@') return endpoint::abstract(s.substr(1));
    if (s[0] == '/') return endpoint::path(s);
    return {std::make_error_code(std::errc::address_family_not_supported),
            "NOTIFY_SOCKET: only paths and @abstract names are supported"};
}

/// Sends `state` ("READY=1", "STATUS=...", "STOPPING=1"; several assignments separated
/// by newlines) to the service manager as one datagram, through a ringsock
/// datagram_socket on `ctx`: what sd_notify(0, state) does. co_await yields
/// io_result<bool>: false, having done nothing, when NOTIFY_SOCKET is not set.
/// A manager that does not read makes the send wait: pass a time limit.
/// Errors: those of notify_endpoint(), ECONNREFUSED/ENOENT (nobody listens there),
/// EACCES, timed_out, operation_canceled.
[[nodiscard]] inline task<io_result<bool>> notify(io_context& ctx, std::string state, op_limits lim = {}) {
    auto ep = notify_endpoint();
    if (!ep) co_return io_result<bool>(ep.error(), ep.what());
    if (ep->is_unnamed()) co_return false;
    auto sock = datagram_socket::open(ctx);
    if (!sock) co_return io_result<bool>(sock.error(), sock.what());
    auto sent = co_await sock->send_to(state, *ep, lim);
    if (!sent) co_return io_result<bool>(sent.error(), "notify: send_to NOTIFY_SOCKET");
    co_return true;
}

/// Tells the service manager that start-up is complete ("READY=1"): co_await it once
/// the sockets are listening. Yields false when NOTIFY_SOCKET is not set.
[[nodiscard]] inline task<io_result<bool>> notify_ready(io_context& ctx, op_limits lim = {}) {
    return notify(ctx, "READY=1", std::move(lim));
}

/// The same without an io_context, for code that has no loop running (yet): a plain
/// sendto() with MSG_DONTWAIT, so a manager whose queue is full gives EAGAIN instead
/// of blocking.
inline io_result<bool> notify(std::string_view state) {
    auto ep = notify_endpoint();
    if (!ep) return {ep.error(), ep.what()};
    if (ep->is_unnamed()) return false;
    unique_fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!fd) return {detail::last_error(), "notify: socket"};
    if (::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL | MSG_DONTWAIT, ep->data(), ep->size()) < 0)
        return {detail::last_error(), "notify: sendto NOTIFY_SOCKET"};
    return true;
}
inline io_result<bool> notify_ready() { return notify(std::string_view("READY=1")); }

}  // namespace ringsock
