// sendmsg / recvmsg operations that carry control messages: descriptors out, and
// descriptors and credentials in. Used by fd_stream, seqpacket_socket and
// datagram_socket. The msghdr, iovec, control buffer and address live in the awaiter.
#pragma once

#include <liburing.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "../endpoint.hpp"
#include "../error.hpp"
#include "../fd_passing.hpp"
#include "../io_context.hpp"
#include "../io_result.hpp"
#include "../unique_fd.hpp"
#include "cmsg.hpp"
#include "operation.hpp"
#include "transfer_ops.hpp"

namespace ringsock::detail {

/// IORING_OP_SENDMSG (always MSG_NOSIGNAL) with an optional SCM_RIGHTS message and an
/// optional destination. `stream`: sends the whole buffer, looping over short sends,
/// with the descriptors attached to the first chunk. `message`: one message, whole.
/// `datagram`: one message on a datagram socket, only ever sent by a direct
/// non-blocking send/sendto/sendmsg(2); the ring just waits for room.
///
/// KERNEL: an io_uring SEND/SENDMSG of a datagram that finds the receiver's queue full
/// (a receiver not connected back to this socket: send_to, or a one-way connect()) has
/// already copied the payload when it sees EAGAIN; its retry then sends an EMPTY
/// datagram and reports 0 (Linux 6.18, also with IOSQE_ASYNC or POLL_FIRST;
/// test_kernel_contract.cpp). The wait is a POLL_ADD(POLLOUT) (a connected socket's
/// poll watches its peer's queue); a send_to whose syscall still finds no room then
/// waits on TIMEOUTs backing off from 50 us to 5 ms (a socket's poll cannot see the
/// queue of a send_to's receiver).
class send_msg_op final : public operation {
public:
    enum class kind : unsigned char { stream, message, datagram };

    send_msg_op(io_context& ctx, int fd, socket_state* st, std::span<const std::byte> data, const borrowed_fds& fds,
                const endpoint* dest, kind k, const char* what, const op_limits& lim) noexcept
        : operation(ctx, lim), fd_(fd), buf_(data.data()), kind_(k), what_(what) {
        attach(st, &st->send_gate);
        tally_.total = data.size();
        tally_.sends = true;
        tally_.whole = k == kind::stream;
        if (fds.size() > scm_max_fd) {
            early_ = make_error_code(errc::too_many_fds);
            return;
        }
        int tmp[scm_max_fd];
        for (std::size_t i = 0; i < fds.size(); ++i) {
            tmp[i] = fds[i];
            if (tmp[i] < 0) {
                early_ = std::make_error_code(std::errc::bad_file_descriptor);
                return;
            }
        }
        rights_.build(tmp, fds.size());
        if (k == kind::stream && tally_.total == 0 && fds.size() > 0) {
            // A stream has no empty messages: the descriptors need a byte to ride on.
            early_ = std::make_error_code(std::errc::invalid_argument);
            return;
        }
        if (dest) {
            dest_ = *dest;
            has_dest_ = true;
        }
        // One message is one request: past what one request carries it could only go
        // out cut short.
        if (k != kind::stream && tally_.total > max_chunk) early_ = std::make_error_code(std::errc::message_size);
    }

    // TRICKY: the kernel reads msg_, iov_, rights_ and dest_: settle before they go.
    ~send_msg_op() { settle(); }

    bool await_ready() noexcept {
        if (kind_ == kind::stream && socket()->write_broken && !early_) early_ = make_error_code(errc::stream_broken);
        if (early_ || (kind_ == kind::stream && tally_.total == 0)) {
            state_ = op_state::done;
            return true;
        }
        if (operation::await_ready()) return true;
        if (kind_ == kind::datagram) return send_datagram_now();
        return try_now();
    }
    void await_suspend(std::coroutine_handle<> h) { suspend_direct<send_msg_op>(h); }

    void prepare(io_uring_sqe* sqe) noexcept override {
        if (kind_ == kind::datagram) {
            if (backoff_ns_ == 0) {
                io_uring_prep_poll_add(sqe, fd_, POLLOUT);
            } else {
                wait_ = __kernel_timespec{0, backoff_ns_};
                io_uring_prep_timeout(sqe, &wait_, 0, 0);
            }
            return;
        }
        if (plain()) {
            // Nothing but bytes: a plain SEND is the same request, without the msghdr
            // copy-in SENDMSG costs the kernel on every call.
            io_uring_prep_send(sqe, fd_, buf_ + tally_.done, chunk(), MSG_NOSIGNAL);
            return;
        }
        build_msg();
        io_uring_prep_sendmsg(sqe, fd_, &msg_, MSG_NOSIGNAL);
    }

    bool on_complete() noexcept override {
        if (kind_ == kind::datagram) return datagram_wait_done();
        if (kind_ == kind::message) return true;
        if (tally_.add(res_, *this)) {
            ctx_->submit(this);
            return false;
        }
        return true;
    }

    io_result<std::size_t> await_resume() noexcept {
        finish_wait();
        if (early_) return {0, early_, what_};
        if (kind_ != kind::stream) {
            if (res_ >= 0) return static_cast<std::size_t>(res_);
            return {0, result_error(), what_};
        }
        if (tally_.total == 0) return std::size_t{0};
        return tally_.result(*this, res_, what_);
    }

private:
    bool plain() const noexcept { return (tally_.done != 0 || rights_.size() == 0) && !has_dest_; }
    std::size_t chunk() const noexcept { return std::min(tally_.total - tally_.done, max_chunk); }
    void build_msg() noexcept {
        msg_ = msghdr{};
        iov_.iov_base = const_cast<std::byte*>(buf_ + tally_.done);
        iov_.iov_len = chunk();
        msg_.msg_iov = &iov_;
        msg_.msg_iovlen = 1;
        if (tally_.done == 0) {
            msg_.msg_control = rights_.data();
            msg_.msg_controllen = rights_.size();
        }
        if (has_dest_) {
            msg_.msg_name = const_cast<sockaddr*>(dest_.data());
            msg_.msg_namelen = dest_.size();
        }
    }
    /// A datagram's first attempt, unless a send queued before it still holds the
    /// direction (it then tries when its wait, prepared on its turn, ends).
    bool send_datagram_now() noexcept {
        socket()->same_direction_as_last(true);  // keeps the receive side's run tracking true
        if (gate_->busy || socket()->closed || !ctx_->take_direct() || !attempt_datagram()) return false;
        state_ = op_state::done;
        return true;
    }
    /// One non-blocking send: true when the datagram went or failed for good (res_).
    bool attempt_datagram() noexcept {
        constexpr int flags = MSG_DONTWAIT | MSG_NOSIGNAL;
        ssize_t r;
        // send and sendto spare the kernel the msghdr copy-in sendmsg costs.
        if (rights_.size() != 0) {
            build_msg();
            r = ::sendmsg(fd_, &msg_, flags);
        } else if (has_dest_) {
            r = ::sendto(fd_, buf_, tally_.total, flags, dest_.data(), dest_.size());
        } else {
            r = ::send(fd_, buf_, tally_.total, flags);
        }
        if (r >= 0) {
            res_ = static_cast<int>(r);
            return true;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return false;
        res_ = -errno;
        return true;
    }
    /// A wait for room ended (poll fired, timer expired, or cut short): try again.
    bool datagram_wait_done() noexcept {
        if (interrupted() || socket_gone()) {
            res_ = -ECANCELED;
            return true;
        }
        if (res_ < 0 && res_ != -ETIME) return true;  // the poll failed: the send ends with it
        if (attempt_datagram()) return true;
        // Still no room though the poll said so. A connected socket's poll sees its
        // peer's queue, so another sender took the room: poll again (a bounded number of
        // times, in case a poll keeps promising room the send cannot get). A send_to's
        // receiver is invisible to poll: wait on a timer, longer each time.
        if (!has_dest_ && ++lost_polls_ < max_lost_polls) {
            backoff_ns_ = 0;
            sqe_without_file_ = false;
        } else {
            backoff_ns_ = backoff_ns_ == 0 ? first_backoff_ns : std::min(backoff_ns_ * 2, max_backoff_ns);
            sqe_without_file_ = true;  // a TIMEOUT names no file (see lent_receive_op)
        }
        ctx_->submit(this);
        return false;
    }
    static constexpr long long first_backoff_ns = 50'000;
    static constexpr long long max_backoff_ns = 5'000'000;
    static constexpr unsigned max_lost_polls = 64;

    /// Speculative I/O, as transfer_op::try_now.
    bool try_now() noexcept {
        if (!may_try_now(true)) return false;
        ssize_t r;
        if (plain()) {
            r = ::send(fd_, buf_ + tally_.done, chunk(), MSG_DONTWAIT | MSG_NOSIGNAL);
        } else {
            build_msg();
            r = ::sendmsg(fd_, &msg_, MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        if (!took_now(r, true)) return false;
        // A partial stream send continues on the ring, without the descriptors that went
        // with the first chunk.
        if (kind_ == kind::stream && tally_.add(res_, *this)) return false;
        state_ = op_state::done;
        return true;
    }

    int fd_;
    const std::byte* buf_;
    transfer_tally tally_;
    kind kind_;
    bool has_dest_ = false;
    const char* what_;
    std::error_code early_{};
    rights_message rights_;
    endpoint dest_;
    iovec iov_{};
    msghdr msg_{};
    long long backoff_ns_ = 0;  // a datagram's wait: 0 polls, else this long a TIMEOUT
    unsigned lost_polls_ = 0;   // polls that promised room a datagram then did not get
    __kernel_timespec wait_{};
};

/// IORING_OP_RECVMSG with MSG_CMSG_CLOEXEC and a control buffer for 253 descriptors
/// plus credentials. Descriptors are owned (wrapped) when the completion is reaped,
/// before the coroutine resumes, so they are closed if it never does.
///  - stream_some / stream_exact / stream_receive: fd_stream reads; descriptors go to
///    the socket's queue (stream_receive hands the queue over in its result).
///  - message: one whole datagram / seqpacket message; truncation is an error.
class recv_msg_op final : public operation {
public:
    enum class kind : unsigned char { stream_some, stream_exact, stream_receive, message };

    recv_msg_op(io_context& ctx, int fd, socket_state* st, std::span<std::byte> buf, kind k,
                std::size_t max_fds, bool want_sender, const char* what, op_limits&& lim) noexcept
        : operation(ctx, std::move(lim)), fd_(fd), buf_(buf.data()), len_(buf.size()),
          max_fds_(std::min(max_fds, scm_max_fd)), kind_(k), want_sender_(want_sender), what_(what) {
        attach(st, &st->recv_gate);
        tally_.total = len_;
        tally_.whole = k == kind::stream_exact;
    }
    // TRICKY: settle while this is still a recv_msg_op: if the receive completes during
    // the cancel, on_complete (ours, not the base's) takes the descriptors, and the
    // members destroyed after this body close them. The base destructor would be too late.
    ~recv_msg_op() { settle(); }

    bool await_ready() noexcept {
        if (kind_ != kind::message && len_ == 0) {
            state_ = op_state::done;  // nothing to read: never mistake it for end of stream
            return true;
        }
        if (operation::await_ready()) return true;
        return try_now();
    }
    void await_suspend(std::coroutine_handle<> h) { suspend_direct<recv_msg_op>(h); }

    void prepare(io_uring_sqe* sqe) noexcept override {
        io_uring_prep_recvmsg(sqe, fd_, &msg_, static_cast<unsigned>(build_msg()));
    }

    /// Fills msg_ for the next receive; returns the recvmsg flags.
    int build_msg() noexcept {
        msg_ = msghdr{};
        iov_.iov_base = buf_ + tally_.done;
        iov_.iov_len = std::min(len_ - tally_.done, max_chunk);
        msg_.msg_iov = &iov_;
        msg_.msg_iovlen = 1;
        msg_.msg_control = ctrl_.data();
        msg_.msg_controllen = control_length_for(max_fds_);
        if (want_sender_) {
            addr_ = sockaddr_un{};
            msg_.msg_name = &addr_;
            msg_.msg_namelen = sizeof addr_;
        }
        // On message sockets MSG_TRUNC makes the result the message's full length.
        return MSG_CMSG_CLOEXEC | (kind_ == kind::message ? MSG_TRUNC : 0);
    }

    /// Speculative I/O, as transfer_op::try_now. Not for read_exact, whose loop may
    /// need to resubmit from on_complete (only legal once suspended).
    bool try_now() noexcept {
        if (kind_ == kind::stream_exact || !may_try_now(false)) return false;
        const int flags = build_msg();
        ssize_t r = ::recvmsg(fd_, &msg_, flags | MSG_DONTWAIT);
        if (!took_now(r, false)) return false;
        (void)on_complete();  // never resubmits for these kinds: takes the descriptors
        state_ = op_state::done;
        return true;
    }

    bool on_complete() noexcept override {
        if (res_ < 0) return true;
        // Own whatever arrived before anything else happens.
        std::size_t clen = std::min<std::size_t>(msg_.msg_controllen, ctrl_.size());
        if (msg_.msg_control == nullptr) clen = 0;
        if (kind_ == kind::message && clen == 0 && !(msg_.msg_flags & MSG_CTRUNC)) [[likely]] {
            // The common message: no control data, so nothing to own or parse.
            flags_ |= msg_.msg_flags & ~MSG_CMSG_CLOEXEC;
            full_ = static_cast<std::size_t>(res_);
            if (want_sender_) take_sender();
            return true;
        }
        // Stream reads parse into the queue's scratch vector: no allocation per read.
        fd_queue* queue = kind_ == kind::message || !socket() ? nullptr : socket()->fds;
        parsed_control c = parse_control({ctrl_.data(), clen}, msg_.msg_flags, max_fds_,
                                         queue ? std::move(queue->scratch) : std::vector<unique_fd>{});
        // FACTS 5: io_uring leaves MSG_CMSG_CLOEXEC in msg_flags; test bits, never compare to 0.
        flags_ |= msg_.msg_flags & ~MSG_CMSG_CLOEXEC;
        if (c.error && !fd_error_) fd_error_ = c.error;
        if (kind_ == kind::message) {
            full_ = static_cast<std::size_t>(res_);
            received_message& m = taken();
            m.fds = std::move(c.fds);
            m.sender_credentials = c.creds;
            m.sender_pidfd = std::move(c.pidfd);
            if (want_sender_) take_sender();
            return true;
        }
        bool more = tally_.add(res_, *this);
        if (!queue) return true;  // the socket is gone: descriptors that came are closed
        if (!c.fds.empty()) {
            std::error_code ec;
            if (queue->fds.size() + c.fds.size() > queue->limit) {
                ec = make_error_code(errc::fds_truncated);  // over the socket's limit
            } else {
                try {
                    queue->fds.reserve(queue->fds.size() + c.fds.size());
                } catch (...) {
                    ec = std::make_error_code(std::errc::not_enough_memory);
                }
            }
            if (!ec && kind_ == kind::stream_receive) {
                // receive() returns this read's descriptors itself: they stay in the
                // operation, so they are not lost if the socket dies before it resumes.
                try {
                    taken().fds.reserve(taken().fds.size() + c.fds.size());
                } catch (...) {
                    ec = std::make_error_code(std::errc::not_enough_memory);
                }
                if (!ec) {
                    for (auto& f : c.fds) taken().fds.push_back(std::move(f));  // room reserved
                    c.fds.clear();
                }
            }
            if (ec) {
                c.fds.clear();  // closes them
                if (!fd_error_) fd_error_ = ec;
            } else {
                for (auto& f : c.fds) queue->fds.push_back(std::move(f));  // room reserved: no throw
            }
        }
        c.fds.clear();
        queue->scratch = std::move(c.fds);
        if (more && !fd_error_) {
            ctx_->submit(this);
            return false;
        }
        return true;
    }

    /// fd_stream::read_some / read_exact.
    io_result<std::size_t> resume_bytes() noexcept {
        finish_wait();
        if (len_ == 0) return std::size_t{0};
        return tally_.result(*this, res_, what_, fd_error_.get());
    }

    /// fd_stream::receive and the message sockets' receives.
    io_result<received_message> resume_message() noexcept {
        finish_wait();
        if (kind_ == kind::message && !taken_ && res_ >= 0 && !fd_error_ && !(flags_ & MSG_TRUNC) && full_ <= len_)
            [[likely]] return plain_message();
        received_message& m = taken();  // moved out once, straight into the result
        m.flags = flags_;
        if (kind_ == kind::message) {
            if (res_ < 0) return {std::move(m), result_error(), what_};
            m.bytes = std::min(full_, len_);
            m.full_size = full_;
            if (fd_error_) return {std::move(m), fd_error_.get(), what_};
            if ((flags_ & MSG_TRUNC) || full_ > len_)
                return {std::move(m), make_error_code(errc::message_truncated), what_};
            return std::move(m);
        }
        // stream_receive: the bytes of this read and every descriptor queued so far.
        m.bytes = tally_.done;
        m.full_size = tally_.done;
        if (socket() && socket()->fds && !socket()->fds->fds.empty()) {
            // Older descriptors queued by read_some come first, then this read's own.
            auto& queued = socket()->fds->fds;
            bool room = true;
            try {
                queued.reserve(queued.size() + m.fds.size());
            } catch (...) {
                room = false;  // no memory to merge: hand over this read's own; the rest stay queued
            }
            if (room) {
                for (auto& f : m.fds) queued.push_back(std::move(f));  // reserved: no throw
                m.fds = std::move(queued);
                queued.clear();
            }
        }
        if (len_ != 0 && res_ < 0 && tally_.done == 0) return {std::move(m), result_error(), what_};
        if (fd_error_) return {std::move(m), fd_error_.get(), what_};
        return std::move(m);
    }

private:
    void take_sender() noexcept {
        taken().sender = endpoint::from_native(addr_, std::min<socklen_t>(msg_.msg_namelen, sizeof addr_));
    }
    /// What on_complete took that goes to the caller (descriptors, credentials, the
    /// sender), made on first use.
    received_message& taken() noexcept {
        if (!taken_) taken_.emplace();
        return *taken_;
    }
    /// A whole message that brought nothing else: built in the result itself.
    io_result<received_message> plain_message() const noexcept {
        io_result<received_message> out;
        received_message& m = out.partial_value();
        m.bytes = full_;
        m.full_size = full_;
        m.flags = flags_;
        return out;
    }

    int fd_;
    std::byte* buf_;
    std::size_t len_;
    transfer_tally tally_;
    std::size_t full_ = 0;
    std::size_t max_fds_;
    kind kind_;
    bool want_sender_;
    int flags_ = 0;
    const char* what_;
    // Not a std::error_code: constructing one calls system_category(), per receive.
    stored_error fd_error_{};
    // Empty for the common message, so that it costs no construction, move or
    // destruction of a received_message beside the one returned.
    std::optional<received_message> taken_;
    iovec iov_{};
    msghdr msg_{};
    sockaddr_un addr_;  // zeroed by prepare() when the sender is wanted, else unused
    control_buffer<control_capacity> ctrl_;
};

/// The awaiter users see for byte reads on an fd_stream.
class stream_read_awaiter {
public:
    template <class... A>
    explicit stream_read_awaiter(A&&... a) noexcept : op_(std::forward<A>(a)...) {}
    bool await_ready() noexcept { return op_.await_ready(); }
    void await_suspend(std::coroutine_handle<> h) { op_.await_suspend(h); }
    io_result<std::size_t> await_resume() noexcept { return op_.resume_bytes(); }

private:
    recv_msg_op op_;
};

/// The awaiter users see for receives that yield a received_message.
class message_awaiter {
public:
    template <class... A>
    explicit message_awaiter(A&&... a) noexcept : op_(std::forward<A>(a)...) {}
    bool await_ready() noexcept { return op_.await_ready(); }
    void await_suspend(std::coroutine_handle<> h) { op_.await_suspend(h); }
    io_result<received_message> await_resume() noexcept { return op_.resume_message(); }

private:
    recv_msg_op op_;
};

}  // namespace ringsock::detail
