// seqpacket_socket: a connected SOCK_SEQPACKET Unix socket. Like a stream it is
// connected and reliable, but it keeps message boundaries: each send is one message,
// each receive returns exactly one, and a message too big for the buffer is reported
// (errc::message_truncated), never silently cut. Messages may carry descriptors.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <utility>

#include "buffer.hpp"
#include "credentials.hpp"
#include "detail/message_ops.hpp"
#include "endpoint.hpp"
#include "fd_passing.hpp"
#include "io_context.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "stream_socket.hpp"
#include "unique_fd.hpp"

namespace ringsock {

/// A connected seqpacket socket. Not copyable; movable only while no operation is in
/// flight on it. At most one send and one receive run at a time; further ones queue.
class seqpacket_socket {
public:
    seqpacket_socket() noexcept = default;
    seqpacket_socket(io_context& ctx, unique_fd fd) noexcept : ctx_(&ctx), fd_(std::move(fd)) {}
    seqpacket_socket(seqpacket_socket&& o) noexcept
        : ctx_(o.ctx_), fd_(std::move(o.fd_)), state_(std::move(o.state_)) {}
    seqpacket_socket& operator=(seqpacket_socket&& o) noexcept {
        if (this != &o) {
            close();
            ctx_ = o.ctx_;
            fd_ = std::move(o.fd_);
            state_.take(o.state_);
        }
        return *this;
    }

    /// A connected pair (socketpair). Errors: EMFILE, ENFILE.
    static io_result<std::pair<seqpacket_socket, seqpacket_socket>> pair(io_context& ctx) {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
            return {detail::last_error(), "socketpair"};
        return std::pair{seqpacket_socket(ctx, unique_fd(sv[0])), seqpacket_socket(ctx, unique_fd(sv[1]))};
    }

    /// Connects to a seqpacket_acceptor at `ep`. co_await yields io_result<seqpacket_socket>.
    /// Errors: ECONNREFUSED (nobody listens, or the listener is not seqpacket), ENOENT,
    /// EACCES, timed_out, operation_canceled.
    [[nodiscard]] static auto connect(io_context& ctx, const endpoint& ep, op_limits lim = {}) {
        return detail::connect_op<seqpacket_socket, SOCK_SEQPACKET>(ctx, ep, lim);
    }

    /// Sends `buf` as one message. co_await yields io_result<std::size_t> (all of it).
    /// Errors: EMSGSIZE (larger than the socket's send buffer), EPIPE (peer closed).
    template <readable_bytes B>
    [[nodiscard]] auto send(const B& buf, op_limits lim = {}) {
        auto bytes = as_bytes(buf);
        return detail::transfer_op(*ctx_, fd_.get(), &state_, const_cast<std::byte*>(bytes.data()), bytes.size(),
                                   detail::transfer_op::kind::send_message, lim);
    }
    /// Sends `buf` as one message carrying `fds` (which stay ours). An empty message
    /// may carry descriptors. Errors (nothing sent): errc::too_many_fds (over 253), EBADF.
    template <readable_bytes B>
    [[nodiscard]] auto send_fds(const B& buf, borrowed_fds fds, op_limits lim = {}) {
        return detail::send_msg_op(*ctx_, fd_.get(), &state_, as_bytes(buf), fds, nullptr,
                                   detail::send_msg_op::kind::message, "send", lim);
    }

    /// Receives one message into `buf`. co_await yields io_result<received_message>:
    /// bytes, descriptors, credentials (with pass_credentials). bytes == 0 without
    /// descriptors means the peer closed (or sent an empty message: seqpacket cannot tell
    /// them apart). Errors:
    ///  - errc::message_truncated: the message was longer than `buf`; the part that fit
    ///    is in partial_value() (full_size tells the real length); the rest is gone.
    ///  - errc::fds_truncated: more than `max_fds` descriptors came (or MSG_CTRUNC); all
    ///    of them were closed; the bytes are in partial_value().
    template <writable_bytes B>
    [[nodiscard]] auto receive(B&& buf, op_limits lim = {}) {
        return receive(std::forward<B>(buf), max_fds_per_message, lim);
    }
    /// receive() accepting at most `max_fds` descriptors per message: the control
    /// buffer is sized for it, so the kernel does not even install the surplus.
    template <writable_bytes B>
    [[nodiscard]] auto receive(B&& buf, std::size_t max_fds, op_limits lim = {}) {
        return detail::message_awaiter(*ctx_, fd_.get(), &state_, as_writable_bytes(buf),
                                       detail::recv_msg_op::kind::message, nullptr, max_fds, false, "receive", lim);
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

    /// Shuts down one or both directions (synchronous: it never blocks).
    io_result<void> shutdown(shutdown_how how = shutdown_how::send) noexcept {
        if (::shutdown(fd_.get(), static_cast<int>(how)) < 0) return {detail::last_error(), "shutdown"};
        return {};
    }
    /// Cancels operations in flight and closes the socket. Keep the object alive until
    /// the cancelled operations have resumed (with operation_canceled).
    void close() noexcept { detail::close_socket(ctx_, fd_, state_); }

    bool is_open() const noexcept { return fd_.valid(); }
    int native_handle() const noexcept { return fd_.get(); }
    io_context& context() const noexcept { return *ctx_; }
    /// Gives up the descriptor; the socket becomes closed.
    unique_fd release() noexcept { return detail::release_socket(fd_, state_); }

    io_result<endpoint> local_endpoint() const { return ringsock::local_endpoint(fd_.get()); }
    io_result<endpoint> remote_endpoint() const { return ringsock::remote_endpoint(fd_.get()); }

private:
    io_context* ctx_ = nullptr;
    unique_fd fd_;
    detail::socket_state state_;
};

}  // namespace ringsock
