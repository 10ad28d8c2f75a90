// datagram_socket: a SOCK_DGRAM Unix socket. Each send is one datagram, each receive
// returns exactly one with its sender's address; a datagram too big for the buffer is
// reported (errc::message_truncated), never silently cut. Datagrams may carry
// descriptors, and with pass_credentials() the kernel tells the receiver which process
// sent each one. Binding to a path follows the listener's socket-file rules.
#pragma once

#include <sys/socket.h>
#include <sys/stat.h>

#include <cstddef>
#include <utility>

#include "buffer.hpp"
#include "credentials.hpp"
#include "detail/message_ops.hpp"
#include "detail/message_socket.hpp"
#include "detail/socket_file.hpp"
#include "endpoint.hpp"
#include "fd_passing.hpp"
#include "io_context.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "unique_fd.hpp"

namespace ringsock {

/// How datagram_socket::bind() creates and later removes its socket file.
struct datagram_options {
    /// Mode of the socket file from the moment it exists. Senders need write permission:
    /// 0600 admits only the owner, 0666 everyone (like /dev/log).
    mode_t mode = 0600;
    /// Replace a socket file nobody is bound to (a crashed server's). A live socket is
    /// never touched, nor is anything that is not a socket.
    bool replace_stale = true;
    /// Remove the socket file on close (only if it is still the node we created).
    bool remove_on_close = true;
};

/// A datagram socket: bound (a server), unbound (a client), connected or not. Not
/// copyable; movable (operations in flight follow it). At most one send and
/// one receive run at a time; further ones queue in order. A full receiver makes a
/// send wait (never EAGAIN): give it a time limit if that matters.
class datagram_socket : public detail::message_socket_base {
public:
    datagram_socket() noexcept = default;
    /// Adopts `fd`, an AF_UNIX datagram socket, for use on `ctx`. Its socket file, if
    /// any, is never removed by this object.
    datagram_socket(io_context& ctx, unique_fd fd) noexcept : message_socket_base(ctx, std::move(fd)) {}
    /// Takes over the socket, its operations in flight and its socket file.
    datagram_socket(datagram_socket&& o) noexcept : message_socket_base(std::move(o)), bound_(std::move(o.bound_)) {
        o.bound_.owned = false;
    }
    /// Closes this socket first (see close()), then takes over `o`'s.
    datagram_socket& operator=(datagram_socket&& o) noexcept {
        if (this != &o) {
            close();  // ours: the file first
            message_socket_base::operator=(std::move(o));
            bound_ = std::move(o.bound_);
            o.bound_.owned = false;
        }
        return *this;
    }
    ~datagram_socket() { bound_.remove(); }

    /// An unbound socket, for sending (receivers see an unnamed sender) or connect().
    static io_result<datagram_socket> open(io_context& ctx) {
        unique_fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        if (!fd) return {detail::last_error(), "datagram_socket::open: socket"};
        return datagram_socket(ctx, std::move(fd));
    }

    /// A socket bound to `ep` (a path, an abstract name, or endpoint::autobind()).
    /// Errors: EADDRINUSE (a live socket owns the path), errc::path_not_a_socket (the
    /// path is something else; left untouched), ENAMETOOLONG, EACCES, ENOENT.
    static io_result<datagram_socket> bind(io_context& ctx, const endpoint& ep, datagram_options opts = {}) {
        datagram_socket s;
        auto fd = detail::bind_socket(SOCK_DGRAM, ep, {opts.mode, opts.replace_stale}, s.bound_);
        if (!fd) return {fd.error(), fd.what()};
        if (!opts.remove_on_close) s.bound_.owned = false;
        s.ctx_ = &ctx;
        s.fd_ = std::move(*fd);
        return s;
    }

    /// A connected pair (socketpair). Errors: EMFILE, ENFILE.
    static io_result<std::pair<datagram_socket, datagram_socket>> pair(io_context& ctx) {
        auto p = detail::socket_pair(SOCK_DGRAM);
        if (!p) return {p.error(), p.what()};
        return std::pair{datagram_socket(ctx, std::move(p->first)), datagram_socket(ctx, std::move(p->second))};
    }

    /// Sets the default destination, and accepts datagrams only from it. Synchronous:
    /// a datagram connect never waits. Errors: ECONNREFUSED (nobody bound there, or not
    /// a datagram socket), ENOENT, EACCES.
    io_result<void> connect(const endpoint& ep) noexcept {
        if (::connect(fd_.get(), ep.data(), ep.size()) < 0) return {detail::last_error(), "datagram_socket::connect"};
        return {};
    }

    /// Sends `buf` as one datagram to the connected peer. co_await yields
    /// io_result<std::size_t> (all of it). A full receiver makes it wait, never EAGAIN
    /// and never a lost or emptied datagram: the datagram is only ever sent by a direct
    /// syscall (see detail::send_msg_op for the kernel behaviour this avoids). Errors:
    /// EMSGSIZE, ECONNREFUSED (the peer went away), ENOTCONN (no peer).
    template <readable_bytes B>
    [[nodiscard]] auto send(const B& buf, op_limits lim = {}) {
        return send_fds(buf, borrowed_fds{}, lim);
    }
    /// send() with `fds` attached (they stay ours). An empty datagram may carry
    /// descriptors. Errors (nothing sent): errc::too_many_fds (over 253), EBADF.
    template <readable_bytes B>
    [[nodiscard]] auto send_fds(const B& buf, borrowed_fds fds, op_limits lim = {}) {
        return detail::send_msg_op(bound_context(), fd_.get(), &state_, as_bytes(buf), fds, nullptr,
                                   detail::send_msg_op::kind::datagram, "send", lim);
    }

    /// Sends one datagram to `to`, waiting for room as send() does. Errors: ECONNREFUSED (nobody bound there, or not a
    /// datagram socket), ENOENT, EACCES, EMSGSIZE.
    template <readable_bytes B>
    [[nodiscard]] auto send_to(const B& buf, const endpoint& to, op_limits lim = {}) {
        return send_fds_to(buf, borrowed_fds{}, to, lim);
    }
    /// send_fds to `to`.
    template <readable_bytes B>
    [[nodiscard]] auto send_fds_to(const B& buf, borrowed_fds fds, const endpoint& to, op_limits lim = {}) {
        return detail::send_msg_op(bound_context(), fd_.get(), &state_, as_bytes(buf), fds, &to,
                                   detail::send_msg_op::kind::datagram, "send_to", lim);
    }

    /// receive() that also reports the sender's address in received_message::sender:
    /// unnamed when the sender is not bound (e.g. logger(1), or a datagram_socket::open()).
    template <writable_bytes B>
    [[nodiscard]] auto receive_from(B&& buf, op_limits lim = {}) {
        return recv(as_writable_bytes(buf), max_fds_per_message, true, "receive_from", std::move(lim));
    }
    /// receive_from() accepting at most `max_fds` descriptors per message, as
    /// receive(buf, max_fds).
    template <writable_bytes B>
    [[nodiscard]] auto receive_from(B&& buf, std::size_t max_fds, op_limits lim = {}) {
        return recv(as_writable_bytes(buf), max_fds, true, "receive_from", std::move(lim));
    }

    /// Closes the socket (its operations end with operation_canceled, as in
    /// stream_socket::close()) and removes its socket file if bind() created it and it
    /// is still ours.
    void close() noexcept {
        bound_.remove();  // the name first, so a successor's socket is never unlinked
        message_socket_base::close();
    }

    /// Gives up the descriptor; the socket becomes closed and its file is no longer
    /// removed by this object.
    unique_fd release() noexcept {
        bound_.owned = false;
        return message_socket_base::release();
    }

private:
    detail::bound_path bound_;
};

}  // namespace ringsock
