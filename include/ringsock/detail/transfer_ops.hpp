// Send and receive operations on connected sockets: one buffer or an iovec array,
// once ("some") or looping until the whole buffer is done ("all"/"exact").
#pragma once

#include <liburing.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <span>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../io_context.hpp"
#include "../io_result.hpp"
#include "../unique_fd.hpp"
#include "operation.hpp"

namespace ringsock::detail {

/// What operations share with the socket they act on. Lives in the socket object,
/// which must not move or die while operations are in flight.
struct socket_state {
    op_gate send_gate;
    op_gate recv_gate;
    bool write_broken = false;
    bool closed = false;  // set by close(): never resubmit on a descriptor number that may be reused
    registered_file file;

    socket_state() noexcept = default;
    /// For a socket's move constructor/assignment: the gates stay (no operation may be
    /// in flight during a move), the rest follows the descriptor.
    socket_state(socket_state&& o) noexcept
        : write_broken(std::exchange(o.write_broken, false)), closed(std::exchange(o.closed, false)),
          file(std::move(o.file)) {}
    void take(socket_state& o) noexcept {
        write_broken = std::exchange(o.write_broken, false);
        closed = std::exchange(o.closed, false);
        file = std::move(o.file);
    }

    /// Cancels queued (not yet submitted) operations of both directions.
    void cancel_queued(io_context& ctx) noexcept {
        for (op_gate* g : {&send_gate, &recv_gate}) {
            while (auto* r = g->waiters.front()) ctx.request_cancel(static_cast<operation*>(r));
        }
    }
};

/// Closes a socket: queued operations are cancelled, in-flight ones get an
/// ASYNC_CANCEL by descriptor (or by registered slot), the slot is given back, then
/// the descriptor is closed.
inline void close_socket(io_context* ctx, unique_fd& fd, socket_state& st) noexcept {
    if (!fd) return;
    st.closed = true;
    if (ctx) st.cancel_queued(*ctx);
    if (ctx && (st.send_gate.busy || st.recv_gate.busy)) {
        if (io_uring_sqe* sqe = io_uring_get_sqe(ctx->native_handle())) {
            if (st.file.slot >= 0)
                io_uring_prep_cancel_fd(sqe, st.file.slot, IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_FD_FIXED);
            else
                io_uring_prep_cancel_fd(sqe, fd.get(), IORING_ASYNC_CANCEL_ALL);
            sqe->user_data = 0;
            sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
            io_uring_submit(ctx->native_handle());
        }
    }
    st.file.close();
    fd.reset();
}

/// Gives up a socket's descriptor (release()): its registered slot goes first.
inline unique_fd release_socket(unique_fd& fd, socket_state& st) noexcept {
    st.file.close();
    return std::move(fd);
}

/// The kernel's per-call limit is INT_MAX; stay well below it and loop.
inline constexpr std::size_t max_chunk = std::size_t{1} << 30;

/// One buffer: IORING_OP_SEND (always MSG_NOSIGNAL) or IORING_OP_RECV. The message
/// kinds move one whole seqpacket/datagram message: empty ones included, and a
/// message longer than the buffer is reported (MSG_TRUNC makes RECV return its length).
class transfer_op final : public operation {
public:
    enum class kind : unsigned char { recv_some, recv_exact, send_some, send_all, recv_message, send_message };

    transfer_op(io_context& ctx, int fd, socket_state* st, std::byte* buf, std::size_t len, kind k,
                const op_limits& lim) noexcept
        : operation(ctx, lim), fd_(fd), st_(st), buf_(buf), len_(len), kind_(k) {
        gate_ = is_send() ? &st->send_gate : &st->recv_gate;
        file_ = &st->file;
        submit_late_ = !is_send();
    }

    bool await_ready() noexcept {
        if (is_send() && st_->write_broken) {
            broken_ = true;
            state_ = op_state::done;
            return true;
        }
        if (len_ == 0 && !is_message()) {
            state_ = op_state::done;  // nothing to do: never mistake it for end of stream
            return true;
        }
        return operation::await_ready();
    }

    void prepare(io_uring_sqe* sqe) noexcept override {
        std::size_t n = std::min(len_ - done_, max_chunk);
        if (is_message()) {
            // No msghdr: the cheapest request the kernel has for one message. Descriptors
            // a peer attaches are released by the kernel, never installed here.
            if (kind_ == kind::send_message) io_uring_prep_send(sqe, fd_, buf_, len_, MSG_NOSIGNAL);
            else io_uring_prep_recv(sqe, fd_, buf_, len_, MSG_TRUNC);
            return;
        }
        if (is_send()) {
            // MSG_WAITALL (stream sockets) makes io_uring retry a short send itself
            // instead of posting a CQE per chunk; a cancel still reports the partial
            // count, and on_complete loops regardless.
            io_uring_prep_send(sqe, fd_, buf_ + done_, n, MSG_NOSIGNAL | (kind_ == kind::send_all ? MSG_WAITALL : 0));
        } else {
            // MSG_WAITALL only saves round trips; on_complete loops regardless.
            io_uring_prep_recv(sqe, fd_, buf_ + done_, n, kind_ == kind::recv_exact ? MSG_WAITALL : 0);
        }
    }

    bool on_complete() noexcept override {
        if (res_ > 0) {
            done_ += static_cast<std::size_t>(res_);
            bool loops = kind_ == kind::recv_exact || kind_ == kind::send_all;
            if (loops && done_ < len_ && !interrupted() && !st_->closed) {
                ctx_->submit(this);
                return false;
            }
        }
        return true;
    }

    io_result<std::size_t> await_resume() noexcept {
        finish_wait();
        if (broken_) return {0, make_error_code(errc::stream_broken), what()};
        if (is_message()) {
            if (res_ < 0) return {0, result_error(), what()};
            // RECV with MSG_TRUNC returns the message's real length: the rest is gone.
            if (done_ > len_) return {len_, make_error_code(errc::message_truncated), what()};
            return done_;
        }
        if (len_ == 0) return std::size_t{0};
        bool loops = kind_ == kind::recv_exact || kind_ == kind::send_all;
        if (!loops) {
            if (res_ >= 0) return done_;
            return {0, result_error(), what()};
        }
        if (done_ == len_) return done_;
        std::error_code ec;
        if (res_ == 0) ec = make_error_code(errc::end_of_stream);
        else if (res_ < 0) ec = result_error();
        else ec = std::make_error_code(timed_out() ? std::errc::timed_out : std::errc::operation_canceled);
        // A write that stopped part-way leaves the peer with a partial message.
        if (kind_ == kind::send_all && done_ > 0) st_->write_broken = true;
        return {done_, ec, what()};
    }

private:
    bool is_send() const noexcept {
        return kind_ == kind::send_some || kind_ == kind::send_all || kind_ == kind::send_message;
    }
    bool is_message() const noexcept { return kind_ == kind::recv_message || kind_ == kind::send_message; }
    const char* what() const noexcept {
        switch (kind_) {
            case kind::recv_some: return "read_some";
            case kind::recv_exact: return "read_exact";
            case kind::send_some: return "write_some";
            case kind::send_all: return "write_all";
            case kind::recv_message: return "receive_bytes";
            case kind::send_message: return "send";
        }
        return "transfer";
    }

    int fd_;
    socket_state* st_;
    std::byte* buf_;
    std::size_t len_;
    std::size_t done_ = 0;
    kind kind_;
    bool broken_ = false;
};

/// Scatter/gather: IORING_OP_SENDMSG / RECVMSG over an iovec array that the operation
/// copies (inline up to 8 entries), so partial transfers can advance it.
class vectored_op final : public operation {
public:
    enum class kind : unsigned char { recv_some, recv_exact, send_some, send_all };

    vectored_op(io_context& ctx, int fd, socket_state* st, std::span<const iovec> iov, kind k,
                const op_limits& lim)
        : operation(ctx, lim), fd_(fd), st_(st), kind_(k) {
        gate_ = is_send() ? &st->send_gate : &st->recv_gate;
        file_ = &st->file;
        submit_late_ = !is_send();
        if (iov.size() <= inline_.size()) {
            std::copy(iov.begin(), iov.end(), inline_.begin());
            iov_ = inline_.data();
        } else {
            heap_.assign(iov.begin(), iov.end());
            iov_ = heap_.data();
        }
        count_ = iov.size();
        for (const iovec& v : iov) total_ += v.iov_len;
        // Skip leading empty entries so a zero-length first buffer is not read as EOF.
        while (count_ > 0 && iov_->iov_len == 0) {
            ++iov_;
            --count_;
        }
    }

    bool await_ready() noexcept {
        if (is_send() && st_->write_broken) {
            broken_ = true;
            state_ = op_state::done;
            return true;
        }
        if (total_ == 0) {
            state_ = op_state::done;
            return true;
        }
        return operation::await_ready();
    }

    void prepare(io_uring_sqe* sqe) noexcept override {
        msg_ = msghdr{};
        msg_.msg_iov = iov_;
        msg_.msg_iovlen = std::min<std::size_t>(count_, IOV_MAX);
        if (is_send()) io_uring_prep_sendmsg(sqe, fd_, &msg_, MSG_NOSIGNAL);
        else io_uring_prep_recvmsg(sqe, fd_, &msg_, kind_ == kind::recv_exact ? MSG_WAITALL : 0);
    }

    bool on_complete() noexcept override {
        if (res_ > 0) {
            done_ += static_cast<std::size_t>(res_);
            advance(static_cast<std::size_t>(res_));
            bool loops = kind_ == kind::recv_exact || kind_ == kind::send_all;
            if (loops && done_ < total_ && !interrupted() && !st_->closed) {
                ctx_->submit(this);
                return false;
            }
        }
        return true;
    }

    io_result<std::size_t> await_resume() noexcept {
        finish_wait();
        const char* what = is_send() ? "write (vectored)" : "read (vectored)";
        if (broken_) return {0, make_error_code(errc::stream_broken), what};
        if (total_ == 0) return std::size_t{0};
        bool loops = kind_ == kind::recv_exact || kind_ == kind::send_all;
        if (!loops) {
            if (res_ >= 0) return done_;
            return {0, result_error(), what};
        }
        if (done_ == total_) return done_;
        std::error_code ec;
        if (res_ == 0) ec = make_error_code(errc::end_of_stream);
        else if (res_ < 0) ec = result_error();
        else ec = std::make_error_code(timed_out() ? std::errc::timed_out : std::errc::operation_canceled);
        if (kind_ == kind::send_all && done_ > 0) st_->write_broken = true;
        return {done_, ec, what};
    }

private:
    bool is_send() const noexcept { return kind_ == kind::send_some || kind_ == kind::send_all; }
    void advance(std::size_t n) noexcept {
        while (n > 0 && count_ > 0) {
            std::size_t step = std::min(n, iov_->iov_len);
            iov_->iov_base = static_cast<char*>(iov_->iov_base) + step;
            iov_->iov_len -= step;
            n -= step;
            if (iov_->iov_len == 0) {
                ++iov_;
                --count_;
            }
        }
        while (count_ > 0 && iov_->iov_len == 0) {
            ++iov_;
            --count_;
        }
    }

    int fd_;
    socket_state* st_;
    kind kind_;
    bool broken_ = false;
    std::array<iovec, 8> inline_{};
    std::vector<iovec> heap_;
    iovec* iov_ = nullptr;
    std::size_t count_ = 0;
    std::size_t total_ = 0;
    std::size_t done_ = 0;
    msghdr msg_{};
};

}  // namespace ringsock::detail
