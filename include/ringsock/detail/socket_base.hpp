// What every socket that carries data holds and does the same way: its context, its
// descriptor and the state its operations share, moves, close(), release() and the
// accessors. stream_socket, fd_stream, seqpacket_socket and datagram_socket derive
// from it and add their operations.
#pragma once

#include <sys/socket.h>

#include <stdexcept>
#include <utility>

#include "../endpoint.hpp"
#include "../io_context.hpp"
#include "../io_result.hpp"
#include "../unique_fd.hpp"
#include "errno.hpp"
#include "transfer_ops.hpp"

namespace ringsock {

class ring_reader;

enum class shutdown_how { receive = SHUT_RD, send = SHUT_WR, both = SHUT_RDWR };

namespace detail {

/// A connected pair of `type` (socketpair), close-on-exec. Errors: EMFILE, ENFILE.
inline io_result<std::pair<unique_fd, unique_fd>> socket_pair(int type) {
    int sv[2];
    if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) < 0) return {last_error(), "socketpair"};
    return std::pair{unique_fd(sv[0]), unique_fd(sv[1])};
}

class socket_base {
public:
    /// Shuts down one or both directions (synchronous: it never blocks).
    io_result<void> shutdown(shutdown_how how = shutdown_how::send) noexcept {
        if (::shutdown(fd_.get(), static_cast<int>(how)) < 0) return {last_error(), "shutdown"};
        return {};
    }

    /// Closes the socket. Operations queued on it, and the one in flight on each
    /// direction, resume with operation_canceled (one that already completed keeps its
    /// result); none of them touches the socket again. Destroying the socket does the same.
    void close() noexcept { close_socket(ctx_, fd_, state_); }

    bool is_open() const noexcept { return fd_.valid(); }
    int native_handle() const noexcept { return fd_.get(); }
    io_context& context() const noexcept { return *ctx_; }
    /// Gives up the descriptor; the socket becomes closed. Operations still on it are
    /// cancelled as by close(), but the descriptor stays open and becomes the caller's.
    unique_fd release() noexcept { return release_socket(ctx_, fd_, state_); }

    io_result<endpoint> local_endpoint() const { return ringsock::local_endpoint(fd_.get()); }
    io_result<endpoint> remote_endpoint() const { return ringsock::remote_endpoint(fd_.get()); }

protected:
    friend class ringsock::ring_reader;  // keeps the socket's receive direction armed

    /// The context operations run on. A socket that never had one (default-constructed)
    /// cannot start an operation: that is a programming error, reported by name.
    io_context& bound_context() const {
        if (!ctx_) throw std::logic_error("ringsock: operation on a socket with no io_context (default-constructed)");
        return *ctx_;
    }

    socket_base() noexcept = default;
    socket_base(io_context& ctx, unique_fd fd) noexcept : ctx_(&ctx), fd_(std::move(fd)) {}
    // Operations queued or in flight follow the socket to its new place.
    socket_base(socket_base&& o) noexcept : ctx_(o.ctx_), fd_(std::move(o.fd_)), state_(std::move(o.state_)) {}
    socket_base& operator=(socket_base&& o) noexcept {
        if (this != &o) {
            close();
            ctx_ = o.ctx_;
            fd_ = std::move(o.fd_);
            state_.take(o.state_);
        }
        return *this;
    }
    // Like close(): no operation may outlive the socket it points into. A moved-from or
    // closed socket has neither a descriptor nor operations: nothing to do.
    ~socket_base() {
        if (fd_.valid() || state_.in_use()) close();
    }

    io_context* ctx_ = nullptr;
    unique_fd fd_;
    socket_state state_;
};

}  // namespace detail
}  // namespace ringsock
