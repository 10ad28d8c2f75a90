// Binding a Unix socket to a filesystem path safely: the mode holds from the first
// instant, a stale socket file is replaced, a live server's socket and anything that is
// not a socket are left alone, and on close only our own node is removed.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <string>
#include <string_view>
#include <system_error>

#include "../endpoint.hpp"
#include "../error.hpp"
#include "../io_result.hpp"
#include "../unique_fd.hpp"
#include "errno.hpp"

namespace ringsock::detail {

/// The node a socket was bound to, so close() can remove exactly that node.
struct bound_path {
    std::string path;  // absolute when the caller gave a relative path
    dev_t dev = 0;
    ino_t ino = 0;
    bool owned = false;

    /// Removes the socket file if it is still the node we created.
    void remove() noexcept {
        if (!owned) return;
        owned = false;
        struct stat st {};
        if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev && st.st_ino == ino)
            ::unlink(path.c_str());
    }
};

struct bind_options {
    mode_t mode = 0600;
    bool replace_stale = true;
};

// fchmodat2 (Linux 6.6); Debian 12's headers lack the number (the same on every arch).
#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452
#endif

/// Sets the mode of the socket file bind() created at `path`, which lstat() right after
/// bind() found to be node `dev`/`ino`. Never follows a symlink and never changes any
/// other node: the path is opened with O_PATH|O_NOFOLLOW, the opened node must be a
/// socket with that dev/ino owned by our euid, and the mode is changed through that
/// descriptor (via /proc/self/fd/N; without /proc, fchmodat2(AT_EMPTY_PATH)).
/// Errors: errc::path_not_a_socket (the path now names a symlink or another file type),
/// std::errc::file_exists (another socket replaced ours), else the failing call's errno.
/// dev/ino come from an lstat() just after bind(); a socket swapped in before that
/// lstat would be recorded instead, which is why the owner must also be our euid:
/// another user's socket is never changed.
inline io_result<void> set_mode_of_created_node(const std::string& path, dev_t dev, ino_t ino, mode_t mode) noexcept {
    unique_fd node(::open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!node) return {last_error(), "bind: open(O_PATH|O_NOFOLLOW) of the socket file to set its mode"};
    struct stat st {};
    if (::fstat(node.get(), &st) < 0) return {last_error(), "bind: fstat of the socket file to set its mode"};
    if (!S_ISSOCK(st.st_mode))
        return {make_error_code(errc::path_not_a_socket),
                "bind: the socket file was replaced by something that is not a socket before its mode was set"};
    if (st.st_dev != dev || st.st_ino != ino || st.st_uid != ::geteuid())
        return {std::make_error_code(std::errc::file_exists),
                "bind: the socket file was replaced by another socket before its mode was set"};
    // fchmod() on an O_PATH descriptor fails with EBADF; the /proc magic link reaches
    // exactly the node the descriptor holds, whatever the path names by now.
    std::string self = "/proc/self/fd/" + std::to_string(node.get());
    if (::fchmodat(AT_FDCWD, self.c_str(), mode & 07777, 0) == 0) return {};
    if (errno != ENOENT) return {last_error(), "bind: fchmodat(/proc/self/fd/N) to set the socket file's mode"};
    if (::syscall(SYS_fchmodat2, node.get(), "", mode & 07777, AT_EMPTY_PATH) == 0) return {};
    return {last_error(), "bind: fchmodat2(AT_EMPTY_PATH) to set the socket file's mode (no /proc)"};
}

/// Whether process `pid` (in our pid namespace) has ended: no such process, or a
/// zombie (state Z or X in /proc/<pid>/stat) whose descriptors are already closed.
/// False whenever that cannot be established.
inline bool process_has_ended(pid_t pid) noexcept {
    if (pid <= 0) return false;
    std::string stat_path = "/proc/" + std::to_string(pid) + "/stat";
    unique_fd f(::open(stat_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!f) {
        if (errno == ENOENT && ::access("/proc/self/stat", F_OK) == 0) return true;
        return ::kill(pid, 0) < 0 && errno == ESRCH;  // no /proc: zombies count as alive
    }
    char buf[512];
    ssize_t n = ::read(f.get(), buf, sizeof buf - 1);
    if (n <= 0) return n == 0 || errno == ESRCH;  // read fails with ESRCH once it is reaped
    std::string_view text(buf, static_cast<std::size_t>(n));
    // "pid (comm) S ...": comm may itself contain ") ", so take the last one.
    auto close_paren = text.rfind(')');
    if (close_paren == std::string_view::npos || close_paren + 2 >= text.size()) return false;
    char state = text[close_paren + 2];
    return state == 'Z' || state == 'X';
}

/// Whether a server answers at `ep`: a connect that succeeds (or finds the backlog
/// full: EAGAIN) means live; ECONNREFUSED means a stale file nobody listens on.
///
/// TRICKY: io_uring tears a killed process's ring down in a kernel worker, so for a
/// few milliseconds after SIGKILL the dead server's listening socket still accepts
/// connections. A connected stream/seqpacket probe's SO_PEERCRED names the process
/// that called listen(). If it has ended (or is a zombie), the socket is probably
/// dying; but a live process may hold it too (a daemon whose parent exited after
/// listen()), so we never conclude "stale" from the pid alone: we wait, at most
/// `dying_grace`, for the listener to hang up our queued probe connection (it does
/// when the socket is finally closed), then probe again; only ECONNREFUSED is stale.
/// A listener we cannot judge (pid 0: another pid namespace; datagram sockets, which
/// have no peer credentials; a recycled pid, which looks alive) is live. Residual
/// cost: a live listener whose creator has exited makes us wait `dying_grace` before
/// EADDRINUSE; a dying listener with a full backlog still reads as live.
inline bool socket_is_live(const endpoint& ep, int type,
                           std::chrono::milliseconds dying_grace = std::chrono::seconds(2)) noexcept {
    const auto deadline = std::chrono::steady_clock::now() + dying_grace;
    for (int round = 0; round < 64; ++round) {
        unique_fd probe(::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (!probe) return true;  // cannot tell: assume live, never delete
        if (::connect(probe.get(), ep.data(), ep.size()) < 0) return errno != ECONNREFUSED;
        if (type == SOCK_DGRAM) return true;
        ucred u{};
        socklen_t len = sizeof u;
        if (::getsockopt(probe.get(), SOL_SOCKET, SO_PEERCRED, &u, &len) < 0) return true;
        if (u.pid <= 0 || !process_has_ended(u.pid)) return true;
        // Its creator is gone: wait for the socket to close and hang our probe up. A
        // live holder never does that, though it may accept and close our probe.
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        pollfd p{probe.get(), POLLRDHUP, 0};
        int r;
        do {
            r = ::poll(&p, 1, static_cast<int>(std::max<std::chrono::milliseconds::rep>(left.count(), 0)));
        } while (r < 0 && errno == EINTR);
        if (r <= 0) return true;  // still there after the grace period: treat as live
    }
    return true;
}

/// Creates a socket of `type` bound to `ep` with SOCK_CLOEXEC. For paths, applies
/// `opts.mode` before bind and records the node in `bound`.
inline io_result<unique_fd> bind_socket(int type, const endpoint& ep, const bind_options& opts, bound_path& bound) {
    unique_fd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    if (!fd) return {last_error(), "bind: socket"};
    if (!ep.is_path()) {
        if (::bind(fd.get(), ep.data(), ep.size()) < 0) return {last_error(), "bind"};
        return fd;
    }
    // The kernel creates the file from the socket inode's mode (minus umask): set it
    // first, so there is no instant where the file is wider than requested.
    if (::fchmod(fd.get(), opts.mode & 07777) < 0) return {last_error(), "bind: fchmod"};
    std::string path(ep.path_name());
    if (::bind(fd.get(), ep.data(), ep.size()) < 0) {
        if (errno != EADDRINUSE) return {last_error(), "bind"};
        struct stat st {};
        if (::lstat(path.c_str(), &st) < 0) return {std::make_error_code(std::errc::address_in_use), "bind"};
        if (!S_ISSOCK(st.st_mode)) return {make_error_code(errc::path_not_a_socket), "bind"};
        if (!opts.replace_stale || socket_is_live(ep, type))
            return {std::make_error_code(std::errc::address_in_use), "bind: a server is listening on this path"};
        // Stale: remove it, but only if it is still the node we examined.
        struct stat again {};
        if (::lstat(path.c_str(), &again) == 0 && again.st_dev == st.st_dev && again.st_ino == st.st_ino)
            ::unlink(path.c_str());
        if (::bind(fd.get(), ep.data(), ep.size()) < 0) return {last_error(), "bind (after removing a stale socket)"};
    }
    // Record our node at once: everything after this (the mode, close()) acts only on it.
    struct stat st {};
    if (::lstat(path.c_str(), &st) < 0) return {last_error(), "bind: lstat of the new socket file"};
    if (!S_ISSOCK(st.st_mode))
        return {make_error_code(errc::path_not_a_socket), "bind: the new socket file was replaced at once"};
    bound.path = path;
    bound.dev = st.st_dev;
    bound.ino = st.st_ino;
    bound.owned = true;
    // The umask may have narrowed the mode; widening it to exactly what was asked for
    // is safe now (the window had fewer permissions, never more), if done on our node.
    if ((st.st_mode & 07777) != (opts.mode & 07777)) {
        if (auto r = set_mode_of_created_node(path, st.st_dev, st.st_ino, opts.mode); !r) {
            bound.remove();  // unlinks the path only if it still names our socket
            return {r.error(), r.what()};  // and fd closes here
        }
    }
    if (!path.empty() && path[0] != '/') {
        char cwd[PATH_MAX];
        if (::getcwd(cwd, sizeof cwd)) path = std::string(cwd) + "/" + path;
    }
    bound.path = std::move(path);
    return fd;
}

}  // namespace ringsock::detail
