// fd_stream: a connected stream socket that carries descriptors (SCM_RIGHTS) and never
// loses them. Every read is a recvmsg with a control buffer; descriptors that arrive
// with the bytes go into this socket's queue, in arrival order, until taken.
//
// Why a queue: on a stream, descriptors are attached to bytes, but the reader's buffer
// boundaries are its own, so "the descriptors of this read" means little; and a plain
// recv (stream_socket::read_some) makes the kernel close them silently (FACTS 4). An
// fd_stream has no read that can drop a descriptor: read_some, read_exact and receive
// all queue them. The application takes them when its protocol says so, e.g. after
// reading the line that announced them.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "buffer.hpp"
#include "credentials.hpp"
#include "detail/message_ops.hpp"
#include "detail/transfer_ops.hpp"
#include "endpoint.hpp"
#include "fd_passing.hpp"
#include "io_context.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "stream_socket.hpp"
#include "unique_fd.hpp"

namespace ringsock {

/// A connected stream socket that can send and receive descriptors. Not copyable;
/// movable (operations in flight follow it). At most one read and one write
/// run at a time; further ones queue in order. close() and release() leave queued
/// descriptors in place until taken; destroying it closes the socket and every
/// descriptor still queued.
class fd_stream : public detail::socket_base {
public:
    /// Queued descriptors allowed by default before reads report errc::fds_truncated.
    static constexpr std::size_t default_fd_limit = 1024;

    fd_stream() noexcept { state_.set_fd_queue(&queue_); }
    /// Adopts `fd`, a connected AF_UNIX stream socket, for use on `ctx`.
    fd_stream(io_context& ctx, unique_fd fd) noexcept : socket_base(ctx, std::move(fd)) { state_.set_fd_queue(&queue_); }
    /// Takes over a connected stream socket (e.g. one from acceptor::accept()).
    explicit fd_stream(stream_socket&& s) noexcept : socket_base(s.context(), s.release()) {
        state_.set_fd_queue(&queue_);
    }
    /// Takes over the socket, its operations in flight and its queued descriptors.
    fd_stream(fd_stream&& o) noexcept : socket_base(std::move(o)), queue_(std::move(o.queue_)) {
        state_.set_fd_queue(&queue_);
    }
    /// Closes this socket first (see close()) and closes the descriptors still queued
    /// on it, then takes over `o`'s socket, operations and queue.
    fd_stream& operator=(fd_stream&& o) noexcept {
        if (this != &o) {
            socket_base::operator=(std::move(o));
            queue_ = std::move(o.queue_);
        }
        return *this;
    }
    // TRICKY: close before queue_ dies, so no operation still reaches it.
    ~fd_stream() { close(); }

    /// A connected pair (socketpair). Errors: EMFILE, ENFILE.
    static io_result<std::pair<fd_stream, fd_stream>> pair(io_context& ctx) {
        auto p = detail::socket_pair(SOCK_STREAM);
        if (!p) return {p.error(), p.what()};
        return std::pair{fd_stream(ctx, std::move(p->first)), fd_stream(ctx, std::move(p->second))};
    }

    /// Connects to `ep`. co_await yields io_result<fd_stream>.
    /// Errors: ECONNREFUSED (nobody listens), ENOENT, EACCES, timed_out, operation_canceled.
    [[nodiscard]] static auto connect(io_context& ctx, const endpoint& ep, op_limits lim = {}) {
        return detail::connect_op<fd_stream, SOCK_STREAM>(ctx, ep, lim);
    }

    /// Receives at least one byte (0: the peer shut down its sending side). Descriptors
    /// that came with the bytes are queued. If they would take the queue over
    /// fd_limit(), or did not all arrive (MSG_CTRUNC), they are closed and the result is
    /// errc::fds_truncated, with the bytes read in partial_value().
    template <writable_bytes B>
    [[nodiscard]] auto read_some(B&& buf, op_limits lim = {}) {
        return read(as_writable_bytes(buf), detail::recv_msg_op::kind::stream_some, "read_some", std::move(lim));
    }
    /// Fills the whole buffer, queueing descriptors on the way. Early end of stream is
    /// errc::end_of_stream; the bytes that did arrive are in partial_value().
    template <writable_bytes B>
    [[nodiscard]] auto read_exact(B&& buf, op_limits lim = {}) {
        return read(as_writable_bytes(buf), detail::recv_msg_op::kind::stream_exact, "read_exact", std::move(lim));
    }
    /// read_some that also hands over the queue: co_await yields
    /// io_result<received_message> whose `fds` are all descriptors received so far and
    /// not yet taken (including ones from earlier reads), oldest first.
    template <writable_bytes B>
    [[nodiscard]] auto receive(B&& buf, op_limits lim = {}) {
        auto s = as_writable_bytes(buf);
        return detail::message_awaiter(bound_context(), fd_.get(), &state_, s, detail::recv_msg_op::kind::stream_receive,
                                       detail::scm_max_fd, false, "receive", std::move(lim));
    }

    /// Sends at least one byte (fewer than asked if the socket buffer is full).
    template <readable_bytes B>
    [[nodiscard]] auto write_some(const B& buf, op_limits lim = {}) {
        auto s = as_bytes(buf);
        return detail::transfer_op(bound_context(), fd_.get(), &state_, const_cast<std::byte*>(s.data()), s.size(),
                                   detail::transfer_op::kind::send_some, std::move(lim));
    }
    /// Sends the whole buffer. If it fails part-way the count sent is in
    /// partial_value() and later writes fail with errc::stream_broken.
    template <readable_bytes B>
    [[nodiscard]] auto write_all(const B& buf, op_limits lim = {}) {
        auto s = as_bytes(buf);
        return detail::transfer_op(bound_context(), fd_.get(), &state_, const_cast<std::byte*>(s.data()), s.size(),
                                   detail::transfer_op::kind::send_all, std::move(lim));
    }
    /// Sends the whole buffer with `fds` attached to its first byte; the peer's kernel
    /// delivers them with the read that consumes that byte. The descriptors stay ours.
    /// Errors (nothing sent): errc::too_many_fds (over 253), invalid_argument (empty
    /// buffer: descriptors need at least one byte), EBADF; EINVAL for an io_uring fd.
    /// A failure part-way is reported like write_all.
    template <readable_bytes B>
    [[nodiscard]] auto send_fds(const B& buf, borrowed_fds fds, op_limits lim = {}) {
        return detail::send_msg_op(bound_context(), fd_.get(), &state_, as_bytes(buf), fds, nullptr,
                                   detail::send_msg_op::kind::stream, "send_fds", lim);
    }

    /// The oldest queued descriptor, or an empty unique_fd.
    unique_fd take_fd() noexcept {
        if (queue_.fds.empty()) return {};
        unique_fd fd = std::move(queue_.fds.front());
        queue_.fds.erase(queue_.fds.begin());
        return fd;
    }
    /// Every queued descriptor, oldest first; the queue is left empty.
    std::vector<unique_fd> take_fds() noexcept { return std::exchange(queue_.fds, {}); }
    /// Number of descriptors received and not yet taken.
    std::size_t queued_fds() const noexcept { return queue_.fds.size(); }
    /// How many descriptors may wait in the queue (default 1024). A read that brings
    /// more closes all of that read's descriptors and reports errc::fds_truncated, so a
    /// peer cannot fill this process's descriptor table. 0: accept none.
    void set_fd_limit(std::size_t n) noexcept { queue_.limit = n; }
    /// The limit set by set_fd_limit() (default 1024).
    std::size_t fd_limit() const noexcept { return queue_.limit; }

private:
    detail::stream_read_awaiter read(std::span<std::byte> s, detail::recv_msg_op::kind k, const char* what,
                                     op_limits&& lim) {
        return detail::stream_read_awaiter(bound_context(), fd_.get(), &state_, s, k, detail::scm_max_fd, false, what,
                                           std::move(lim));
    }

    detail::fd_queue queue_{{}, default_fd_limit, {}};
};

}  // namespace ringsock
