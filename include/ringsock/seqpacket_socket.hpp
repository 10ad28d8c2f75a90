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
#include "detail/message_socket.hpp"
#include "endpoint.hpp"
#include "fd_passing.hpp"
#include "io_context.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "stream_socket.hpp"
#include "unique_fd.hpp"

namespace ringsock {

/// A connected seqpacket socket. Not copyable; movable (operations in flight follow
/// it). At most one send and one receive run at a time; further ones queue.
/// A receive of 0 bytes without descriptors means the peer closed (or sent an empty
/// message: seqpacket cannot tell them apart).
class seqpacket_socket : public detail::message_socket_base {
public:
    seqpacket_socket() noexcept = default;
    /// Adopts `fd`, a connected AF_UNIX seqpacket socket, for use on `ctx`.
    seqpacket_socket(io_context& ctx, unique_fd fd) noexcept : message_socket_base(ctx, std::move(fd)) {}

    /// A connected pair (socketpair). Errors: EMFILE, ENFILE.
    static io_result<std::pair<seqpacket_socket, seqpacket_socket>> pair(io_context& ctx) {
        auto p = detail::socket_pair(SOCK_SEQPACKET);
        if (!p) return {p.error(), p.what()};
        return std::pair{seqpacket_socket(ctx, std::move(p->first)), seqpacket_socket(ctx, std::move(p->second))};
    }

    /// Connects to a seqpacket_acceptor at `ep`. co_await yields io_result<seqpacket_socket>.
    /// Errors: ECONNREFUSED (nobody listens, or the listener is not seqpacket), ENOENT,
    /// EACCES, timed_out, operation_canceled.
    [[nodiscard]] static auto connect(io_context& ctx, const endpoint& ep, op_limits lim = {}) {
        return detail::connect_op<seqpacket_socket, SOCK_SEQPACKET>(ctx, ep, lim);
    }
};

}  // namespace ringsock
