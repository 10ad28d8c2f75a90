// stream_socket: a connected SOCK_STREAM Unix socket with co_await-able reads and
// writes. Sends are IORING_OP_SEND with MSG_NOSIGNAL, so a closed peer gives EPIPE and
// never SIGPIPE; short reads and writes are looped by read_exact / write_all.
#pragma once

#include <fcntl.h>
#include <liburing.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <span>
#include <utility>

#include "buffer.hpp"
#include "buffer_ring.hpp"
#include "detail/errno.hpp"
#include "detail/socket_base.hpp"
#include "detail/transfer_ops.hpp"
#include "endpoint.hpp"
#include "io_context.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "unique_fd.hpp"

namespace ringsock {

class stream_socket;

namespace detail {

/// Creates a SOCK_CLOEXEC socket and connects it. A Unix connect to a listener with room
/// in its backlog completes at once, so it is tried directly first, on a socket created
/// O_NONBLOCK so that a full backlog answers EAGAIN instead of blocking the thread; the
/// socket then turns blocking, as every ringsock socket is (io_uring supplies the
/// waiting). On EAGAIN it connects with IORING_OP_CONNECT, which waits on an io-wq
/// thread until the server accepts; a stop request or time limit interrupts it (-EINTR).
template <class Socket, int Type>
class connect_op final : public operation {
public:
    connect_op(io_context& ctx, const endpoint& ep, const op_limits& lim) noexcept
        : operation(ctx, lim), ep_(ep) {
        fd_.reset(::socket(AF_UNIX, Type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (!fd_) create_errno_ = errno;
    }
    // TRICKY: the kernel uses fd_ and ep_ until the connect completes: settle first.
    ~connect_op() { settle(); }
    bool await_ready() noexcept {
        if (create_errno_ != 0) {
            res_ = -create_errno_;
            state_ = op_state::done;
            return true;
        }
        if (operation::await_ready()) return true;
        int err = EAGAIN;  // out of this turn's direct budget: the ring, as for a full backlog
        if (ctx_->take_direct()) err = ::connect(fd_.get(), ep_.data(), ep_.size()) == 0 ? 0 : errno;
        if (err != 0 && err != EAGAIN && err != EINTR) return done(-err);  // refused, missing...
        // Blocking from here on; IORING_OP_CONNECT on an O_NONBLOCK socket would not wait.
        if (::fcntl(fd_.get(), F_SETFL, 0) != 0) {
            setup_failed_ = true;
            return done(-errno);
        }
        if (err != 0) return false;  // a full backlog: wait on the ring
        return done(0);
    }
    void prepare(io_uring_sqe* sqe) noexcept override {
        io_uring_prep_connect(sqe, fd_.get(), ep_.data(), ep_.size());
    }
    io_result<Socket> await_resume() noexcept {
        finish_wait();
        if (res_ < 0) return {result_error(), create_errno_ ? "connect: socket" : setup_failed_ ? "connect: fcntl" : "connect"};
        return Socket(ctx_->owner(), std::move(fd_));
    }

private:
    bool done(int res) noexcept {
        res_ = res;
        state_ = op_state::done;
        return true;
    }
    endpoint ep_;
    unique_fd fd_;
    int create_errno_ = 0;
    bool setup_failed_ = false;
};

}  // namespace detail

/// A connected stream socket. Not copyable; movable (operations in flight follow it).
/// At most one read and one write run at a time: further ones queue in order, each
/// under its own time limit while it waits. Closing or destroying it ends every
/// operation on it with operation_canceled; none of them touches it again.
class stream_socket : public detail::socket_base {
public:
    stream_socket() noexcept = default;
    /// Adopts `fd`, a connected AF_UNIX stream socket, for use on `ctx`.
    stream_socket(io_context& ctx, unique_fd fd) noexcept : socket_base(ctx, std::move(fd)) {}

    /// A connected pair (socketpair). Errors: EMFILE, ENFILE.
    static io_result<std::pair<stream_socket, stream_socket>> pair(io_context& ctx) {
        auto p = detail::socket_pair(SOCK_STREAM);
        if (!p) return {p.error(), p.what()};
        return std::pair{stream_socket(ctx, std::move(p->first)), stream_socket(ctx, std::move(p->second))};
    }

    /// Connects to `ep`. co_await yields io_result<stream_socket>.
    /// Errors: ECONNREFUSED (nobody listens), ENOENT, EACCES, timed_out, operation_canceled.
    [[nodiscard]] static auto connect(io_context& ctx, const endpoint& ep, op_limits lim = {}) {
        return detail::connect_op<stream_socket, SOCK_STREAM>(ctx, ep, lim);
    }

    /// Receives at least one byte; 0 means the peer shut down its sending side.
    /// A plain recv: descriptors sent with the bytes (SCM_RIGHTS) are discarded by the
    /// kernel. To receive descriptors on a stream use fd_stream (fd_stream.hpp).
    template <writable_bytes B>
    [[nodiscard]] auto read_some(B&& buf, op_limits lim = {}) {
        auto s = as_writable_bytes(buf);
        return op(s.data(), s.size(), detail::transfer_op::kind::recv_some, std::move(lim));
    }
    /// Receives at least one byte into a buffer the kernel picks from `ring` when data
    /// arrives: while it waits, this read holds no buffer. co_await yields
    /// io_result<lent_buffer>; an empty one means the peer shut down its sending side.
    /// Keep the lent_buffer only as long as needed: it returns to the ring when dropped.
    [[nodiscard]] auto read_some(buffer_ring& ring, op_limits lim = {}) {
        return detail::lent_receive_op(bound_context(), fd_.get(), &state_, ring, false, "read_some", lim);
    }
    /// Fills the whole buffer. Early end of stream is errc::end_of_stream; the bytes that
    /// did arrive are in partial_value().
    template <writable_bytes B>
    [[nodiscard]] auto read_exact(B&& buf, op_limits lim = {}) {
        auto s = as_writable_bytes(buf);
        return op(s.data(), s.size(), detail::transfer_op::kind::recv_exact, std::move(lim));
    }
    /// Sends at least one byte (fewer than asked if the socket buffer is full).
    template <readable_bytes B>
    [[nodiscard]] auto write_some(const B& buf, op_limits lim = {}) {
        auto s = as_bytes(buf);
        return op(const_cast<std::byte*>(s.data()), s.size(), detail::transfer_op::kind::send_some, std::move(lim));
    }
    /// Sends the whole buffer, looping over short writes. If it fails part-way the count
    /// sent is in partial_value() and later writes fail with errc::stream_broken.
    template <readable_bytes B>
    [[nodiscard]] auto write_all(const B& buf, op_limits lim = {}) {
        auto s = as_bytes(buf);
        return op(const_cast<std::byte*>(s.data()), s.size(), detail::transfer_op::kind::send_all, std::move(lim));
    }

    /// Vectored variants (recvmsg/sendmsg). The iovec array is copied; the buffers it
    /// points to must outlive the operation.
    [[nodiscard]] auto read_some(std::span<const iovec> iov, op_limits lim = {}) {
        return vop(iov, detail::vectored_op::kind::recv_some, lim);
    }
    /// Vectored read_exact: fills every buffer of `iov`, in order.
    [[nodiscard]] auto read_exact(std::span<const iovec> iov, op_limits lim = {}) {
        return vop(iov, detail::vectored_op::kind::recv_exact, lim);
    }
    /// Vectored write_some: sends at least one byte from `iov`, in order.
    [[nodiscard]] auto write_some(std::span<const iovec> iov, op_limits lim = {}) {
        return vop(iov, detail::vectored_op::kind::send_some, lim);
    }
    /// Vectored write_all: sends every buffer of `iov`; errors as write_all.
    [[nodiscard]] auto write_all(std::span<const iovec> iov, op_limits lim = {}) {
        return vop(iov, detail::vectored_op::kind::send_all, lim);
    }

private:
    detail::transfer_op op(std::byte* p, std::size_t n, detail::transfer_op::kind k, op_limits&& lim) {
        return detail::transfer_op(bound_context(), fd_.get(), &state_, p, n, k, std::move(lim));
    }
    detail::vectored_op vop(std::span<const iovec> iov, detail::vectored_op::kind k, const op_limits& lim) {
        return detail::vectored_op(bound_context(), fd_.get(), &state_, iov, k, lim);
    }
};

}  // namespace ringsock
