// ring_reader: a socket's receive direction kept armed with one multishot receive into a
// buffer_ring. Where read_some(ring) submits a request (and the kernel arms a poll) for
// every read, a reader's request stays armed across reads: each arriving chunk or
// message becomes a completion that the next receive() takes, often without a request
// of its own. For a server that reads request after request from the same connection.
#pragma once

#include <memory>
#include <stdexcept>
#include <type_traits>

#include "buffer_ring.hpp"
#include "detail/receive_engine.hpp"
#include "detail/socket_base.hpp"
#include "fd_stream.hpp"
#include "io_context.hpp"
#include "op_limits.hpp"
#include "stream_socket.hpp"

namespace ringsock {

/// Reads a socket (stream, seqpacket or datagram) into buffers of a buffer_ring through
/// one multishot receive that stays armed (IORING_RECV_MULTISHOT, Linux 6.0).
///
/// - While the reader exists it owns the socket's receive direction: any other read on
///   the socket waits until the reader is destroyed. Bytes the reader has received and
///   not yet handed out are dropped with it (their buffers go back to the ring).
/// - It receives ahead of receive() calls, up to queue_cap completions, and only while
///   the readers' queues together hold less than half the ring's buffers: then it stops
///   (the data waits in the socket, under the peer's flow control) until the caller
///   catches up, so a connection nobody is reading cannot starve the others. (What one
///   kernel wake-up receives in a batch may go past those bounds.) An idle connection
///   holds no buffer.
/// - An empty ring (ENOBUFS) is waited out as with read_some(ring); no data is lost.
/// - Closing, releasing or destroying the socket, or destroying the buffer_ring, ends the
///   reads waiting here with operation_canceled, like every other read on the socket (a
///   moved socket takes its reader along, as it does its other operations). Once the
///   socket is gone, completions not yet taken are dropped.
/// - Datagram sockets have no end of stream, and the kernel's multishot receive does not
///   notice shutdown(SHUT_RD) on one (a non-blocking datagram recv answers EAGAIN after
///   it; a single-shot read falls back to a blocking one, a multishot read cannot): end
///   a datagram reader's waits by closing the socket, destroying the reader, a stop
///   token or a time limit. Stream and seqpacket readers see shutdown as end of stream.
/// Create, use and destroy it on the loop's thread; the socket and the buffer_ring must
/// belong to the same io_context. The reader may outlive both.
class ring_reader {
public:
    /// Completions the reader keeps before it stops receiving.
    static constexpr std::size_t queue_cap = detail::receive_engine::queue_cap;

    ring_reader() noexcept = default;
    /// A reader of `sock` into `ring`. It arms nothing until the first receive(). If a
    /// read is under way on `sock` right now, every receive() fails with EBUSY. Not for
    /// an fd_stream: a multishot recv has no control buffer, so the kernel would close
    /// every descriptor that arrives (fd_stream promises never to drop one).
    template <class Socket>
        requires(std::is_base_of_v<detail::socket_base, Socket> && !std::is_base_of_v<fd_stream, Socket>)
    ring_reader(Socket& sock, buffer_ring& ring)
        : ctx_(&sock.bound_context()),
          engine_(std::make_unique<detail::receive_engine>(sock.bound_context(), sock.fd_.get(), &sock.state_,
                                                           ring.core_, !std::is_base_of_v<stream_socket, Socket>)) {}
    /// Takes over `o`'s reading; `o` is left empty (its receive() answers EBADF).
    ring_reader(ring_reader&& o) noexcept = default;
    /// Destroys this reader first (see the class comment), then takes over `o`'s. So
    /// `reader = ring_reader(sock, ring)` works for the socket `reader` was reading: the
    /// new reader, made while the old one still held the socket, takes it over.
    ring_reader& operator=(ring_reader&& o) noexcept {
        if (this != &o) {
            // Compared while the old engine still holds it, so the state is known live.
            detail::socket_state* held = engine_ ? engine_->socket_state_held() : nullptr;
            engine_ = std::move(o.engine_);
            ctx_ = o.ctx_;
            if (held && engine_ && engine_->busy() && engine_->wanted() == held) engine_->take_socket(held);
        }
        return *this;
    }

    /// The next bytes (stream: at least one; empty at end of stream) or the next message
    /// (seqpacket, datagram), in a buffer lent from the ring. co_await yields
    /// io_result<lent_buffer>. Errors: errc::message_truncated (the message was larger
    /// than a buffer; the value holds the part that fit), the socket's errors
    /// (ECONNRESET...), operation_canceled, timed_out; EBUSY (see the constructor),
    /// EBADF (a moved-from reader). Throws std::logic_error on a default-constructed one.
    [[nodiscard]] auto receive(op_limits lim = {}) {
        if (!ctx_) throw std::logic_error("ringsock: ring_reader::receive on a default-constructed reader");
        return detail::receive_wait(*ctx_, engine_.get(), lim);
    }

    /// Completions received and not yet taken by receive().
    std::size_t queued() const noexcept { return engine_ ? engine_->queued() : 0; }

private:
    io_context* ctx_ = nullptr;  // kept by a moved-from reader, whose receive() fails EBADF
    std::unique_ptr<detail::receive_engine> engine_;
};

}  // namespace ringsock
