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
#include "detail/socket_file.hpp"
#include "endpoint.hpp"
#include "fd_passing.hpp"
#include "io_context.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "unique_fd.hpp"

namespace ringsock {

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
/// copyable; movable only while no operation is in flight on it. At most one send and
/// one receive run at a time; further ones queue in order.
class datagram_socket {
public:
    datagram_socket() noexcept = default;
    datagram_socket(io_context& ctx, unique_fd fd) noexcept : ctx_(&ctx), fd_(std::move(fd)) {}
    datagram_socket(datagram_socket&& o) noexcept
        : ctx_(o.ctx_), fd_(std::move(o.fd_)), state_(std::move(o.state_)), bound_(std::move(o.bound_)) {
        o.bound_.owned = false;
    }
    datagram_socket& operator=(datagram_socket&& o) noexcept {
        if (this != &o) {
            close();
            ctx_ = o.ctx_;
            fd_ = std::move(o.fd_);
            state_.take(o.state_);
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
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) < 0) return {detail::last_error(), "socketpair"};
        return std::pair{datagram_socket(ctx, unique_fd(sv[0])), datagram_socket(ctx, unique_fd(sv[1]))};
    }

    /// Sets the default destination, and accepts datagrams only from it. Synchronous:
    /// a datagram connect never waits. Errors: ECONNREFUSED (nobody bound there, or not
    /// a datagram socket), ENOENT, EACCES.
    io_result<void> connect(const endpoint& ep) noexcept {
        if (::connect(fd_.get(), ep.data(), ep.size()) < 0) return {detail::last_error(), "datagram_socket::connect"};
        return {};
    }

    /// Sends one datagram to the connected peer. co_await yields io_result<std::size_t>.
    /// Errors: EMSGSIZE (too large), ENOTCONN, ECONNREFUSED (the peer went away). A full
    /// receiver makes the send wait (never EAGAIN): give it a time limit if that matters.
    template <readable_bytes B>
    [[nodiscard]] auto send(const B& buf, op_limits lim = {}) {
        auto bytes = as_bytes(buf);
        return detail::transfer_op(*ctx_, fd_.get(), &state_, const_cast<std::byte*>(bytes.data()), bytes.size(),
                                   detail::transfer_op::kind::send_message, lim);
    }
    /// Sends one datagram to `to`. Errors: ECONNREFUSED (nobody bound there, or not a
    /// datagram socket), ENOENT, EACCES, EMSGSIZE.
    template <readable_bytes B>
    [[nodiscard]] auto send_to(const B& buf, const endpoint& to, op_limits lim = {}) {
        return send_fds_to(buf, borrowed_fds{}, to, lim);
    }
    /// Sends one datagram carrying `fds` (which stay ours) to the connected peer.
    /// Errors (nothing sent): errc::too_many_fds (over 253), EBADF.
    template <readable_bytes B>
    [[nodiscard]] auto send_fds(const B& buf, borrowed_fds fds, op_limits lim = {}) {
        return detail::send_msg_op(*ctx_, fd_.get(), &state_, as_bytes(buf), fds, nullptr,
                                   detail::send_msg_op::kind::message, "send", lim);
    }
    /// send_fds to `to`.
    template <readable_bytes B>
    [[nodiscard]] auto send_fds_to(const B& buf, borrowed_fds fds, const endpoint& to, op_limits lim = {}) {
        return detail::send_msg_op(*ctx_, fd_.get(), &state_, as_bytes(buf), fds, &to,
                                   detail::send_msg_op::kind::message, "send_to", lim);
    }

    /// Receives one datagram. co_await yields io_result<received_message> with bytes,
    /// descriptors and (with pass_credentials) the sender's credentials. Errors:
    ///  - errc::message_truncated: longer than `buf`; the part that fit is in
    ///    partial_value() (full_size is the real length); the rest is gone.
    ///  - errc::fds_truncated: more than `max_fds` descriptors came (or MSG_CTRUNC); all
    ///    of them were closed; the bytes are in partial_value().
    template <writable_bytes B>
    [[nodiscard]] auto receive(B&& buf, op_limits lim = {}) {
        return recv(as_writable_bytes(buf), max_fds_per_message, false, "receive", lim);
    }
    template <writable_bytes B>
    [[nodiscard]] auto receive(B&& buf, std::size_t max_fds, op_limits lim = {}) {
        return recv(as_writable_bytes(buf), max_fds, false, "receive", lim);
    }
    /// receive() that also reports the sender's address in received_message::sender:
    /// unnamed when the sender is not bound (e.g. logger(1), or a datagram_socket::open()).
    template <writable_bytes B>
    [[nodiscard]] auto receive_from(B&& buf, op_limits lim = {}) {
        return recv(as_writable_bytes(buf), max_fds_per_message, true, "receive_from", lim);
    }
    template <writable_bytes B>
    [[nodiscard]] auto receive_from(B&& buf, std::size_t max_fds, op_limits lim = {}) {
        return recv(as_writable_bytes(buf), max_fds, true, "receive_from", lim);
    }

    /// Receives one message's bytes and nothing else: co_await yields
    /// io_result<std::size_t>. A plain recv, cheaper than receive() (no msghdr, no
    /// control buffer): for protocols that never pass descriptors. Descriptors or
    /// credentials attached to the message are released by the kernel, never
    /// installed in this process. Errors: errc::message_truncated (the message was
    /// longer than `buf`; partial_value() bytes were kept, the rest is gone).
    template <writable_bytes B>
    [[nodiscard]] auto receive_bytes(B&& buf, op_limits lim = {}) {
        auto bytes = as_writable_bytes(buf);
        return detail::transfer_op(*ctx_, fd_.get(), &state_, bytes.data(), bytes.size(),
                                   detail::transfer_op::kind::recv_message, lim);
    }

    /// Cancels operations in flight, closes the socket, and removes its socket file if
    /// bind() created it and it is still ours. Keep the object alive until the cancelled
    /// operations have resumed (with operation_canceled).
    void close() noexcept {
        bound_.remove();  // the name first, so a successor's socket is never unlinked
        detail::close_socket(ctx_, fd_, state_);
    }

    bool is_open() const noexcept { return fd_.valid(); }
    int native_handle() const noexcept { return fd_.get(); }
    io_context& context() const noexcept { return *ctx_; }
    /// Gives up the descriptor; the socket becomes closed and its file is no longer
    /// removed by this object.
    unique_fd release() noexcept {
        bound_.owned = false;
        return detail::release_socket(fd_, state_);
    }

    io_result<endpoint> local_endpoint() const { return ringsock::local_endpoint(fd_.get()); }
    io_result<endpoint> remote_endpoint() const { return ringsock::remote_endpoint(fd_.get()); }

private:
    detail::message_awaiter recv(std::span<std::byte> s, std::size_t max_fds, bool sender, const char* what,
                                 const op_limits& lim) noexcept {
        return detail::message_awaiter(*ctx_, fd_.get(), &state_, s, detail::recv_msg_op::kind::message, nullptr,
                                       max_fds, sender, what, lim);
    }

    io_context* ctx_ = nullptr;
    unique_fd fd_;
    detail::socket_state state_;
    detail::bound_path bound_;
};

}  // namespace ringsock
