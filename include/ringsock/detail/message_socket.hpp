// What seqpacket_socket and datagram_socket share: whole messages out (send, send_fds)
// and in (receive with descriptors and credentials, receive_bytes without), on the
// connected peer. The derived classes add connecting, binding and addressed sends.
#pragma once

#include <cstddef>
#include <span>
#include <utility>

#include "../buffer.hpp"
#include "../buffer_ring.hpp"
#include "../fd_passing.hpp"
#include "../op_limits.hpp"
#include "message_ops.hpp"
#include "socket_base.hpp"
#include "transfer_ops.hpp"

namespace ringsock::detail {

class message_socket_base : public socket_base {
public:
    /// Sends `buf` as one message. co_await yields io_result<std::size_t> (all of it).
    /// Errors: EMSGSIZE (larger than the socket's send buffer), EPIPE / ECONNREFUSED
    /// (the peer went away), ENOTCONN (a datagram socket with no peer).
    template <readable_bytes B>
    [[nodiscard]] auto send(const B& buf, op_limits lim = {}) {
        auto bytes = as_bytes(buf);
        return message_transfer(bound_context(), fd_.get(), &state_, const_cast<std::byte*>(bytes.data()), bytes.size(),
                                transfer_op::kind::send_message, std::move(lim));
    }
    /// Sends `buf` as one message carrying `fds` (which stay ours). An empty message
    /// may carry descriptors. Errors (nothing sent): errc::too_many_fds (over 253), EBADF.
    template <readable_bytes B>
    [[nodiscard]] auto send_fds(const B& buf, borrowed_fds fds, op_limits lim = {}) {
        return send_msg_op(bound_context(), fd_.get(), &state_, as_bytes(buf), fds, nullptr, send_msg_op::kind::message, "send",
                           lim);
    }

    /// Receives one message into `buf`. co_await yields io_result<received_message>:
    /// bytes, descriptors, credentials (with pass_credentials). Errors:
    ///  - errc::message_truncated: the message was longer than `buf`; the part that fit
    ///    is in partial_value() (full_size tells the real length); the rest is gone.
    ///  - errc::fds_truncated: more than `max_fds` descriptors came (or MSG_CTRUNC); all
    ///    of them were closed; the bytes are in partial_value().
    template <writable_bytes B>
    [[nodiscard]] auto receive(B&& buf, op_limits lim = {}) {
        return recv(as_writable_bytes(buf), max_fds_per_message, false, "receive", std::move(lim));
    }
    /// receive() accepting at most `max_fds` descriptors per message: the control
    /// buffer is sized for it, so the kernel does not even install the surplus.
    template <writable_bytes B>
    [[nodiscard]] auto receive(B&& buf, std::size_t max_fds, op_limits lim = {}) {
        return recv(as_writable_bytes(buf), max_fds, false, "receive", std::move(lim));
    }

    /// Receives one message into a buffer the kernel picks from `ring` when it arrives:
    /// while it waits, this receive holds no buffer. co_await yields
    /// io_result<lent_buffer> (bytes only: attached descriptors are released by the
    /// kernel). Errors: errc::message_truncated (longer than the ring's buffers; the
    /// part that fit is in partial_value(), the rest is gone).
    [[nodiscard]] auto receive(buffer_ring& ring, op_limits lim = {}) {
        return lent_receive_op(bound_context(), fd_.get(), &state_, ring, true, "receive", lim);
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
        return message_transfer(bound_context(), fd_.get(), &state_, bytes.data(), bytes.size(),
                                transfer_op::kind::recv_message, std::move(lim));
    }

protected:
    using socket_base::socket_base;

    message_awaiter recv(std::span<std::byte> s, std::size_t max_fds, bool sender, const char* what,
                         op_limits&& lim) {
        return message_awaiter(bound_context(), fd_.get(), &state_, s, recv_msg_op::kind::message, max_fds, sender,
                               what, std::move(lim));
    }
};

}  // namespace ringsock::detail
