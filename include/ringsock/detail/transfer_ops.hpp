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
#include "socket_state.hpp"
#include "speculation.hpp"

namespace ringsock::detail {

/// Closes a socket: every operation that refers to it is detached and cancelled
/// through the context's queue (socket_state::detach_all), the registered slot is
/// given back, then the descriptor is closed. Also what destroying a socket does.
inline void close_socket(io_context* ctx, unique_fd& fd, socket_state& st) noexcept {
    // TRICKY: an operation's SQE may still sit in the SQ, naming the descriptor (or its
    // registered slot). Hand it to the kernel first, so it takes its own reference to
    // the file: closed afterwards, the number could already belong to another file.
    if (ctx && st.detach_all(core(*ctx))) core(*ctx).flush();
    if (!fd) return;
    st.closed = true;
    st.file.close();
    fd.reset();
}

/// Gives up a socket's descriptor (release()): operations still on it are cancelled
/// and detached, and its registered slot goes first.
inline unique_fd release_socket(io_context* ctx, unique_fd& fd, socket_state& st) noexcept {
    if (ctx && st.detach_all(core(*ctx))) core(*ctx).flush();  // before the slot goes (close_socket)
    st.file.close();
    return std::move(fd);
}

/// The kernel's per-call limit is INT_MAX; stay well below it and loop.
inline constexpr std::size_t max_chunk = std::size_t{1} << 30;

/// The byte count every stream transfer keeps, written once for all of them: how much
/// is done, whether to go on after a short transfer, and the result the caller sees.
/// "Whole" transfers (read_exact, write_all) loop; the others return after one.
struct transfer_tally {
    std::size_t total = 0;
    std::size_t done = 0;
    bool whole = false;
    bool sends = false;

    /// Adds one completion's result; true when the operation must resubmit itself
    /// for the rest (never after a cancel, an expired deadline or a closed socket).
    bool add(int res, const operation& op) noexcept {
        if (res <= 0) return false;
        done += static_cast<std::size_t>(res);
        const socket_state* st = op.socket();
        return whole && done < total && !op.interrupted() && st && !st->closed;
    }

    /// The result for the caller. `last` is the final completion's result; `extra`
    /// an error found on the way (e.g. descriptors truncated) that wins over success.
    io_result<std::size_t> result(const operation& op, int last, const char* what,
                                  std::error_code extra = {}) const noexcept {
        if (!whole) {
            if (last < 0 && done == 0) return {0, op.result_error(), what};
            if (extra) return {done, extra, what};
            return done;
        }
        if (done == total && !extra) return done;
        std::error_code ec = extra;
        if (!ec) {
            if (last == 0) ec = make_error_code(errc::end_of_stream);
            else if (last < 0) ec = op.result_error();
            else ec = std::make_error_code(op.timed_out() ? std::errc::timed_out : std::errc::operation_canceled);
        }
        // A write that stopped part-way leaves the peer with a partial message.
        if (sends && done > 0) {
            if (socket_state* st = op.socket()) st->write_broken = true;
        }
        return {done, ec, what};
    }
};

/// One buffer: IORING_OP_SEND (always MSG_NOSIGNAL) or IORING_OP_RECV. The message
/// kinds move one whole seqpacket/datagram message: empty ones included, and a
/// message longer than the buffer is reported (MSG_TRUNC makes RECV return its length).
class transfer_op final : public operation {
public:
    // Bits: 1 sends, 2 whole (loops to the end), 4 one message.
    enum class kind : unsigned char {
        recv_some = 0, recv_exact = 2, send_some = 1, send_all = 3, recv_message = 4, send_message = 5
    };

    transfer_op(io_context& ctx, int fd, socket_state* st, std::byte* buf, std::size_t len, kind k,
                op_limits&& lim) noexcept
        : operation(ctx, std::move(lim)), fd_(fd), buf_(buf), kind_(k) {
        tally_.total = len;
        tally_.sends = is_send();
        tally_.whole = k == kind::recv_exact || k == kind::send_all;
        attach(st, is_send() ? &st->send_gate : &st->recv_gate);
        submit_late_ = !is_send();
    }
    ~transfer_op() { settle(); }

    [[gnu::always_inline]] bool await_ready() noexcept {
        if (is_send() && socket()->write_broken) [[unlikely]] {
            broken_ = true;
            res_ = -EPIPE;  // keeps await_resume's fast path to one sign test
            state_ = op_state::done;
            return true;
        }
        if (tally_.total == 0 && !is_message()) {
            state_ = op_state::done;  // nothing to do: never mistake it for end of stream
            return true;
        }
        if (operation::await_ready()) [[unlikely]] return true;
        return try_now();
    }

    /// The common case inline: no time limit, the direction free.
    [[gnu::always_inline]] void await_suspend(std::coroutine_handle<> h) { suspend_direct<transfer_op>(h); }

    void prepare(io_uring_sqe* sqe) noexcept override {
        // A message goes whole (its tally never advances); a stream transfer sends or
        // receives its next chunk.
        const std::size_t n = std::min(tally_.total - tally_.done, max_chunk);
        io_uring_prep_rw(is_send() ? IORING_OP_SEND : IORING_OP_RECV, sqe, fd_, buf_ + tally_.done,
                         static_cast<unsigned>(n), 0);
        sqe->msg_flags = msg_flags(kind_);
    }

    bool on_complete() noexcept override {
        if (is_message()) return true;
        if (tally_.add(res_, *this)) {
            ctx_->submit(this);
            return false;
        }
        return true;
    }

    [[gnu::always_inline]] io_result<std::size_t> await_resume() noexcept {
        finish_wait();
        // The common case first, inline: the whole (or some) transfer went through.
        // (A broken write has a negative res_, a message sets bit 4 of its kind.)
        if (res_ >= 0 && !is_message() && (!tally_.whole || tally_.done == tally_.total)) [[likely]]
            return tally_.done;
        return slow_result();
    }
    /// await_resume of a whole message (send, receive_bytes): its size, inline. Only
    /// message_transfer calls it, so the stream coroutines' code stays as it is.
    [[gnu::always_inline]] io_result<std::size_t> resume_message() noexcept {
        finish_wait();
        // A send's size, or a received message that fit (a longer one was truncated).
        if (res_ >= 0 && static_cast<std::size_t>(res_) <= tally_.total) [[likely]]
            return static_cast<std::size_t>(res_);
        return slow_result();
    }

private:
    /// Speculative I/O: when this operation would be alone in the next enter (nothing
    /// else will run before it) and its direction is free, one non-blocking syscall
    /// costs less than a ring round (SQE, enter, CQE, resume). EAGAIN falls back to the
    /// ring; a direction whose attempts keep failing backs off (speculation.hpp).
    [[gnu::always_inline]] bool try_now() noexcept {
        return at_speculative_point(*socket(), is_send()) && try_now_in_run();
    }
    bool try_now_in_run() noexcept {
        if (!may_try_now_in_run(is_send())) return false;
        const std::size_t n = std::min(tally_.total - tally_.done, max_chunk);
        std::byte* p = buf_ + tally_.done;
        ssize_t r;
        if (is_send()) r = ::send(fd_, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        else r = ::recv(fd_, p, n, MSG_DONTWAIT | (kind_ == kind::recv_message ? MSG_TRUNC : 0));
        if (!took_now(r, is_send())) return false;
        // A partial write_all / read_exact continues on the ring from where it is.
        if (!is_message() && tally_.add(res_, *this)) return false;
        state_ = op_state::done;
        return true;
    }

    [[gnu::noinline]] io_result<std::size_t> slow_result() noexcept {
        if (broken_) return {0, make_error_code(errc::stream_broken), what()};
        if (is_message()) {
            if (res_ < 0) return {0, result_error(), what()};
            // RECV with MSG_TRUNC returns the message's real length: the rest is gone.
            const auto full = static_cast<std::size_t>(res_);
            if (full > tally_.total) return {tally_.total, make_error_code(errc::message_truncated), what()};
            return full;
        }
        if (tally_.total == 0) return std::size_t{0};
        return tally_.result(*this, res_, what());
    }

    bool is_send() const noexcept { return (static_cast<unsigned>(kind_) & 1) != 0; }
    static constexpr unsigned msg_flags(kind k) noexcept {
        switch (k) {
            // MSG_WAITALL on a stream send makes io_uring retry a short send itself
            // instead of posting a CQE per chunk; a cancel still reports the partial
            // count, and the tally loops regardless.
            case kind::send_all: return MSG_NOSIGNAL | MSG_WAITALL;
            case kind::send_some:
            case kind::send_message: return MSG_NOSIGNAL;
            // On a receive, MSG_WAITALL only saves round trips; the tally loops regardless.
            case kind::recv_exact: return MSG_WAITALL;
            // No msghdr for a message: the cheapest request the kernel has for one.
            // Descriptors a peer attaches are released by the kernel, never installed
            // here. MSG_TRUNC makes RECV return the message's real length.
            case kind::recv_message: return MSG_TRUNC;
            case kind::recv_some: break;
        }
        return 0;
    }
    bool is_message() const noexcept { return (static_cast<unsigned>(kind_) & 4) != 0; }
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
    std::byte* buf_;
    transfer_tally tally_;
    kind kind_;
    bool broken_ = false;
};

/// The awaiter of a whole-message send or receive_bytes on a message socket.
class message_transfer {
public:
    template <class... A>
    explicit message_transfer(A&&... a) noexcept : op_(std::forward<A>(a)...) {}
    bool await_ready() noexcept { return op_.await_ready(); }
    void await_suspend(std::coroutine_handle<> h) { op_.await_suspend(h); }
    io_result<std::size_t> await_resume() noexcept { return op_.resume_message(); }

private:
    transfer_op op_;
};

/// Scatter/gather: IORING_OP_SENDMSG / RECVMSG over an iovec array that the operation
/// copies (inline up to 8 entries), so partial transfers can advance it.
class vectored_op final : public operation {
public:
    enum class kind : unsigned char { recv_some, recv_exact, send_some, send_all };

    vectored_op(io_context& ctx, int fd, socket_state* st, std::span<const iovec> iov, kind k,
                const op_limits& lim)
        : operation(ctx, lim), fd_(fd), kind_(k) {
        tally_.sends = is_send();
        tally_.whole = k == kind::recv_exact || k == kind::send_all;
        attach(st, is_send() ? &st->send_gate : &st->recv_gate);
        submit_late_ = !is_send();
        if (iov.size() <= inline_.size()) {
            std::copy(iov.begin(), iov.end(), inline_.begin());
            iov_ = inline_.data();
        } else {
            heap_.assign(iov.begin(), iov.end());
            iov_ = heap_.data();
        }
        count_ = iov.size();
        for (const iovec& v : iov) tally_.total += v.iov_len;
        skip_empty();  // so a zero-length first buffer is not read as end of stream
    }
    // TRICKY: the kernel reads heap_ (more than 8 iovecs) and msg_: settle before they go.
    ~vectored_op() { settle(); }

    bool await_ready() noexcept {
        if (is_send() && socket()->write_broken) {
            broken_ = true;
            state_ = op_state::done;
            return true;
        }
        if (tally_.total == 0) {
            state_ = op_state::done;
            return true;
        }
        return operation::await_ready();
    }
    void await_suspend(std::coroutine_handle<> h) { suspend_direct<vectored_op>(h); }

    void prepare(io_uring_sqe* sqe) noexcept override {
        msg_ = msghdr{};
        msg_.msg_iov = iov_;
        msg_.msg_iovlen = std::min<std::size_t>(count_, IOV_MAX);
        if (is_send()) io_uring_prep_sendmsg(sqe, fd_, &msg_, MSG_NOSIGNAL);
        else io_uring_prep_recvmsg(sqe, fd_, &msg_, kind_ == kind::recv_exact ? MSG_WAITALL : 0);
    }

    bool on_complete() noexcept override {
        if (res_ > 0) advance(static_cast<std::size_t>(res_));
        if (tally_.add(res_, *this)) {
            ctx_->submit(this);
            return false;
        }
        return true;
    }

    io_result<std::size_t> await_resume() noexcept {
        finish_wait();
        const char* what = is_send() ? "write (vectored)" : "read (vectored)";
        if (broken_) return {0, make_error_code(errc::stream_broken), what};
        if (tally_.total == 0) return std::size_t{0};
        return tally_.result(*this, res_, what);
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
        skip_empty();
    }
    void skip_empty() noexcept {
        while (count_ > 0 && iov_->iov_len == 0) {
            ++iov_;
            --count_;
        }
    }

    int fd_;
    kind kind_;
    bool broken_ = false;
    transfer_tally tally_;
    std::array<iovec, 8> inline_{};
    std::vector<iovec> heap_;
    iovec* iov_ = nullptr;
    std::size_t count_ = 0;
    msghdr msg_{};
};

}  // namespace ringsock::detail
