// buffered_stream: a read buffer over a ringsock stream (stream_socket, fd_stream) and
// the framed reads protocols are built from: up to a delimiter (read_until, read_line),
// exact and partial reads that drain the buffer first (read_exact, read_some), and
// frames behind a big-endian length (read_frame, and write_frame for the sender).
//
// What a framed read promises:
//  - Nothing buffered is ever lost. A frame over its limit, a time limit, a stop
//    request, an error or end of stream consume nothing: the bytes stay buffered, the
//    next read sees them, buffered() shows them, consume() skips them.
//  - Frames come back as views into the buffer, valid until the next read on this
//    buffered_stream (a read may move or grow the buffer). Copy what must live longer.
//  - The buffer is allocated at construction and grows (doubling) only when one frame
//    needs more room, never past max_capacity(). Operations draw their coroutine frame
//    from a slot kept here: in steady state a read allocates nothing.
//  - Over an fd_stream, descriptors stay with the bytes they arrived with (see take_fds).
#pragma once

#include <algorithm>
#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <sys/uio.h>

#include "buffer.hpp"
#include "detail/framing.hpp"
#include "detail/pooled_task.hpp"
#include "error.hpp"
#include "fd_passing.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "unique_fd.hpp"

namespace ringsock {

/// Errors of buffered and framed reads. They have their own category
/// ("ringsock.framing"); early end of stream is ringsock::errc::end_of_stream.
enum class framing_errc {
    /// A frame (line, delimited record, length-prefixed payload) is longer than its
    /// limit. Nothing was consumed: its bytes are still buffered.
    frame_too_long = 1,
    /// A read was started on a buffered_stream while another was still running on it.
    concurrent_read,
};

namespace detail {
class framing_category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "ringsock.framing"; }
    std::string message(int ev) const override {
        switch (static_cast<framing_errc>(ev)) {
            case framing_errc::frame_too_long: return "frame longer than its limit; its bytes are kept";
            case framing_errc::concurrent_read: return "another read is running on this buffered_stream";
        }
        return "unknown ringsock.framing error";
    }
    std::error_condition default_error_condition(int ev) const noexcept override {
        switch (static_cast<framing_errc>(ev)) {
            case framing_errc::frame_too_long: return std::errc::message_size;
            case framing_errc::concurrent_read: return std::errc::operation_in_progress;
        }
        return std::error_condition(ev, *this);
    }
};
}  // namespace detail

/// The category of framing_errc values.
inline const std::error_category& framing_category() noexcept {
    static const detail::framing_category_impl instance;
    return instance;
}

/// Makes framing_errc values usable as std::error_code (found by ADL).
inline std::error_code make_error_code(framing_errc e) noexcept { return {static_cast<int>(e), framing_category()}; }

/// A ringsock stream a buffered_stream can read from: read_some into a byte span,
/// with op_limits, yielding io_result<std::size_t>.
template <class S>
concept readable_stream = requires(S& s, std::span<std::byte> b, op_limits lim) {
    { s.read_some(b, lim).await_resume() } -> std::same_as<io_result<std::size_t>>;
};

/// A stream that receives descriptors into a queue (fd_stream).
template <class S>
concept fd_receiving_stream = readable_stream<S> && requires(S& s) {
    { s.take_fds() } -> std::same_as<std::vector<unique_fd>>;
    { s.queued_fds() } -> std::convertible_to<std::size_t>;
    { s.fd_limit() } -> std::convertible_to<std::size_t>;
};

/// A read buffer over `Stream`, which it borrows: the stream must outlive it, and
/// writes still go to the stream itself. Reads on one buffered_stream run one at a time
/// (a second one started meanwhile fails with framing_errc::concurrent_read); do not
/// read from the stream directly while the buffer is in use, or bytes come out of
/// order. Movable while no operation is running; an operation must not outlive it.
/// A frame is consumed when its read succeeds: a result thrown away (a when_any loser
/// that completed anyway) loses that frame, as it would lose a plain read's bytes.
/// Destroying a read part-way cancels it and keeps what it had buffered.
template <readable_stream Stream>
class buffered_stream : public detail::frame_slot_owner {
public:
    /// Bytes allocated up front when the constructor is given no capacity.
    static constexpr std::size_t default_capacity = 4096;
    /// Most the buffer grows to when the constructor is given no max_capacity.
    static constexpr std::size_t default_max_capacity = 64 * 1024;

    /// Allocates `capacity` bytes now; a frame that needs more makes the buffer double,
    /// up to `max_capacity` (raised to `capacity` if smaller). Throws std::bad_alloc.
    explicit buffered_stream(Stream& s, std::size_t capacity = default_capacity,
                             std::size_t max_capacity = default_max_capacity)
        : s_(&s), cap_(std::max<std::size_t>(capacity, 1)), max_cap_(std::max(max_capacity, cap_)),
          buf_(std::make_unique_for_overwrite<std::byte[]>(cap_)) {}
    /// Takes the buffer, its bytes and descriptors; only while no read is running.
    buffered_stream(buffered_stream&&) noexcept = default;
    /// As the move constructor; what this object buffered is dropped (its descriptors
    /// closed). Only while no read is running on either object.
    buffered_stream& operator=(buffered_stream&&) noexcept = default;

    /// Reads up to `delimiter` and consumes the frame and the delimiter. co_await yields
    /// io_result<std::string_view>: the frame without its delimiter. `max` limits the
    /// frame (delimiter excluded); it is lowered to what max_capacity() can hold. Errors,
    /// each consuming nothing, with the buffered bytes in partial_value():
    /// framing_errc::frame_too_long; errc::end_of_stream (an empty partial_value() means
    /// the stream ended cleanly between frames); timed_out, operation_canceled and the
    /// stream's own errors; invalid_argument for an empty delimiter or one longer than
    /// max_capacity(). `delimiter` must stay valid until the co_await completes.
    [[nodiscard]] detail::pooled_task<io_result<std::string_view>> read_until(std::string_view delimiter,
                                                                               std::size_t max, op_limits lim = {}) {
        auto slot = use_slot();
        return delimited(delimiter, max, false, std::move(lim), "read_until", "read_until: read");
    }

    /// read_until("\n") that also takes a "\r" before the "\n" as part of the line
    /// ending, so "\n" and "\r\n" lines both come back without their ending. `max`
    /// limits the line without its ending. Same errors as read_until.
    [[nodiscard]] detail::pooled_task<io_result<std::string_view>> read_line(std::size_t max, op_limits lim = {}) {
        auto slot = use_slot();
        return delimited("\n", max, true, std::move(lim), "read_line", "read_line: read");
    }

    /// A frame of a big-endian Len-byte length and that many bytes. co_await yields
    /// io_result<std::span<const std::byte>>: the payload (a view like read_until's).
    /// `max` limits the payload; it is lowered to what max_capacity() can hold after
    /// the length field. A length over it is framing_errc::frame_too_long, reported as
    /// soon as the length field is in, with nothing consumed. Other errors as read_until.
    template <std::unsigned_integral Len = std::uint32_t>
    [[nodiscard]] detail::pooled_task<io_result<std::span<const std::byte>>> read_frame(std::size_t max,
                                                                                         op_limits lim = {}) {
        auto slot = use_slot();
        return frame(sizeof(Len), &decode_length<Len>, max, std::move(lim));
    }

    /// Copies out what is buffered, up to buf's size, without any I/O; with nothing
    /// buffered it reads once (straight into `buf` when that is at least capacity(),
    /// else into the buffer, keeping what does not fit). co_await yields
    /// io_result<std::size_t>: at least one byte, 0 at end of stream. On an error the
    /// bytes the read did bring are still buffered, or, read straight into `buf`,
    /// counted in partial_value() (as the stream's read_some reports them).
    template <writable_bytes B>
    [[nodiscard]] auto read_some(B&& buf, op_limits lim = {}) {
        auto slot = use_slot();
        return some(as_writable_bytes(buf), std::move(lim));
    }
    /// Fills the whole buffer: first from buffered bytes, then from the stream (straight
    /// into `buf` while what is left is at least capacity(), else through the buffer).
    /// One time limit covers all of it. Early end of stream is errc::end_of_stream; on
    /// any error the bytes placed in `buf` are counted in partial_value() and are
    /// consumed (as with the stream's read_exact); bytes read but not placed stay buffered.
    template <writable_bytes B>
    [[nodiscard]] auto read_exact(B&& buf, op_limits lim = {}) {
        auto slot = use_slot();
        return exact(as_writable_bytes(buf), std::move(lim));
    }

    /// The bytes buffered and not yet consumed (a view, valid until the next read).
    std::string_view buffered() const noexcept {
        return {reinterpret_cast<const char*>(buf_.get()) + begin_, end_ - begin_};
    }
    /// Discards the first `n` buffered bytes (all of them if fewer), e.g. to skip a
    /// frame that was too long. Descriptors that came with them go to take_fds().
    void consume(std::size_t n) {
        n = std::min(n, end_ - begin_);
        begin_ += n;
        consumed_ += n;
        release_fds();
    }

    /// Descriptors that arrived with bytes already consumed (returned in a frame, copied
    /// out by read_some/read_exact, or skipped), oldest first; they are yours now. Called
    /// after each frame, it yields exactly the descriptors sent with that frame's bytes.
    /// Descriptors of bytes still buffered stay here, and close with this object.
    ///
    /// Which bytes a descriptor "arrived with": a receive that takes descriptors ends
    /// inside the send that carried them (the kernel stops there), so they are tied to
    /// the last byte of that receive, a byte of the sender's send_fds() buffer. A sender
    /// that passes one frame (or a part of one) per send_fds() gets them delivered with
    /// that frame.
    std::vector<unique_fd> take_fds() noexcept
        requires fd_receiving_stream<Stream>
    {
        return std::exchange(released_, {});
    }
    /// Number of descriptors tied to bytes still buffered.
    std::size_t buffered_fds() const noexcept
        requires fd_receiving_stream<Stream>
    {
        return marks_.size();
    }

    /// The stream read from.
    Stream& next_layer() noexcept { return *s_; }
    /// The buffer's current size in bytes.
    std::size_t capacity() const noexcept { return cap_; }
    /// The most the buffer may grow to; frames longer than this cannot be read.
    std::size_t max_capacity() const noexcept { return max_cap_; }

private:
    using length_decoder = std::size_t (*)(const std::byte*) noexcept;
    template <std::unsigned_integral Len>
    static std::size_t decode_length(const std::byte* p) noexcept {
        const Len v = detail::get_big_endian<Len>(p);
        if constexpr (sizeof(Len) > sizeof(std::size_t)) {
            // A length over SIZE_MAX (u64 on a 32-bit target) is over every limit anyway.
            if (v > std::numeric_limits<std::size_t>::max()) return std::numeric_limits<std::size_t>::max();
        }
        return static_cast<std::size_t>(v);
    }

    /// A descriptor tied to the stream offset of the byte it came with.
    struct fd_mark {
        std::uint64_t offset;
        unique_fd fd;
    };

    detail::pooled_task<io_result<std::string_view>> delimited(std::string_view delim, std::size_t max, bool line,
                                                               op_limits lim, const char* what, const char* what_read) {
        if (busy_) co_return {make_error_code(framing_errc::concurrent_read), what};
        if (delim.empty() || delim.size() > max_cap_) co_return {std::make_error_code(std::errc::invalid_argument), what};
        busy b(busy_);
        // Where a delimiter may end at the latest: a line may have one more byte, its '\r'.
        const std::size_t raw_max = std::min(line && max < max_cap_ ? max + 1 : max, max_cap_ - delim.size());
        const std::size_t window = raw_max + delim.size();
        detail::shared_deadline deadline(lim);
        std::size_t scanned = 0;  // no delimiter starts before this offset in the buffered bytes
        for (;;) {
            const std::string_view data = buffered();
            const std::size_t pos = data.substr(0, window).find(delim, scanned);
            if (pos != std::string_view::npos) {
                std::size_t len = pos;
                if (line && len > 0 && data[len - 1] == '\r') --len;
                if (len > max) co_return {data.substr(0, pos), make_error_code(framing_errc::frame_too_long), what};
                consume(pos + delim.size());
                co_return data.substr(0, len);
            }
            if (data.size() >= window) co_return {data, make_error_code(framing_errc::frame_too_long), what};
            scanned = data.size() >= delim.size() ? data.size() - delim.size() + 1 : 0;
            const op_limits step = deadline.next();
            auto r = co_await s_->read_some(make_room(window), step);
            const std::size_t n = commit(r);
            if (!r) co_return {buffered(), r.error(), what_read};
            if (n == 0) co_return {buffered(), make_error_code(errc::end_of_stream), what};
        }
    }

    detail::pooled_task<io_result<std::span<const std::byte>>> frame(std::size_t width, length_decoder decode,
                                                                    std::size_t max, op_limits lim) {
        static constexpr const char* what = "read_frame";
        if (busy_) co_return {make_error_code(framing_errc::concurrent_read), what};
        if (width > max_cap_) co_return {std::make_error_code(std::errc::invalid_argument), what};
        busy b(busy_);
        const std::size_t limit = std::min(max, max_cap_ - width);
        detail::shared_deadline deadline(lim);
        for (;;) {
            const std::size_t have = end_ - begin_;
            std::size_t need = width;
            if (have >= width) {
                const std::size_t len = decode(buf_.get() + begin_);
                if (len > limit) co_return {bytes(), make_error_code(framing_errc::frame_too_long), what};
                need = width + len;
                if (have >= need) {
                    std::span<const std::byte> payload(buf_.get() + begin_ + width, len);
                    consume(need);
                    co_return payload;
                }
            }
            const op_limits step = deadline.next();
            auto r = co_await s_->read_some(make_room(need), step);
            const std::size_t n = commit(r);
            if (!r) co_return {bytes(), r.error(), "read_frame: read"};
            if (n == 0) co_return {bytes(), make_error_code(errc::end_of_stream), what};
        }
    }

    detail::pooled_task<io_result<std::size_t>> some(std::span<std::byte> out, op_limits lim) {
        static constexpr const char* what = "read_some";
        if (busy_) co_return {std::size_t{0}, make_error_code(framing_errc::concurrent_read), what};
        if (out.empty()) co_return std::size_t{0};
        busy b(busy_);
        if (begin_ == end_) {
            if (out.size() >= cap_) {
                // Large reads skip the copy; the bytes are consumed at once.
                auto r = co_await s_->read_some(out, lim);
                consume_direct(r ? *r : r.partial_value());
                co_return r;
            }
            auto r = co_await s_->read_some(make_room(1), lim);
            commit(r);
            if (!r) co_return {std::size_t{0}, r.error(), what};  // any bytes stay buffered
        }
        co_return take(out);
    }

    detail::pooled_task<io_result<std::size_t>> exact(std::span<std::byte> out, op_limits lim) {
        static constexpr const char* what = "read_exact";
        if (busy_) co_return {std::size_t{0}, make_error_code(framing_errc::concurrent_read), what};
        busy b(busy_);
        detail::shared_deadline deadline(lim);
        std::size_t done = take(out);
        while (done < out.size()) {
            const std::span<std::byte> rest = out.subspan(done);
            const op_limits step = deadline.next();
            std::size_t n;
            if (rest.size() >= cap_) {
                auto r = co_await s_->read_some(rest, step);
                n = r ? *r : r.partial_value();
                consume_direct(n);
                done += n;
                if (!r) co_return {done, r.error(), "read_exact: read"};
            } else {
                auto r = co_await s_->read_some(make_room(rest.size()), step);
                n = commit(r);
                if (!r) co_return {done, r.error(), "read_exact: read"};
                done += take(rest);
            }
            if (n == 0) co_return {done, make_error_code(errc::end_of_stream), what};
        }
        co_return done;
    }

    /// Sets a flag for the life of one operation (also when its frame is destroyed).
    class busy {
    public:
        explicit busy(bool& flag) noexcept : flag_(flag) { flag_ = true; }
        busy(const busy&) = delete;
        busy& operator=(const busy&) = delete;
        ~busy() { flag_ = false; }

    private:
        bool& flag_;
    };

    std::span<const std::byte> bytes() const noexcept { return {buf_.get() + begin_, end_ - begin_}; }

    /// Copies buffered bytes into `out` and consumes them; returns the count.
    std::size_t take(std::span<std::byte> out) {
        const std::size_t n = std::min(out.size(), end_ - begin_);
        if (n > 0) std::memcpy(out.data(), buf_.get() + begin_, n);
        consume(n);
        return n;
    }

    /// Free space at the end of the buffer for the next read, when `want` bytes in all
    /// should end up buffered: moves the data to the front when the end is too short
    /// for the rest, and grows the buffer (up to max_capacity) when it is full of data.
    std::span<std::byte> make_room(std::size_t want) {
        const std::size_t have = end_ - begin_;
        if (have == 0) begin_ = end_ = 0;
        const std::size_t missing = want > have ? want - have : 1;
        if (begin_ > 0 && cap_ - end_ < missing) {
            std::memmove(buf_.get(), buf_.get() + begin_, have);
            begin_ = 0;
            end_ = have;
        }
        if (cap_ - end_ < missing && cap_ < max_cap_) {
            const std::size_t grown = std::min(max_cap_, std::max(cap_ * 2, want));
            auto bigger = std::make_unique_for_overwrite<std::byte[]>(grown);
            std::memcpy(bigger.get(), buf_.get() + begin_, have);
            buf_ = std::move(bigger);
            cap_ = grown;
            begin_ = 0;
            end_ = have;
        }
        return {buf_.get() + end_, cap_ - end_};
    }

    /// Counts the bytes a read into make_room()'s span delivered (partial_value() on an
    /// error: they are kept too) and ties the descriptors it brought to its last byte.
    /// Descriptors over the stream's fd_limit() in all are closed: errc::fds_truncated.
    std::size_t commit(io_result<std::size_t>& r) {
        const std::size_t n = r ? *r : r.partial_value();
        end_ += n;
        if constexpr (fd_receiving_stream<Stream>) {
            if (s_->queued_fds() == 0) return n;
            std::vector<unique_fd> fds = s_->take_fds();
            if (marks_.size() + released_.size() + fds.size() > s_->fd_limit()) {
                r = {n, make_error_code(errc::fds_truncated), "read: descriptors"};
                return n;  // fds close here
            }
            if (end_ == begin_) {  // no byte to tie them to (they predate this buffer)
                for (auto& fd : fds) released_.push_back(std::move(fd));
                return n;
            }
            const std::uint64_t last = consumed_ + (end_ - begin_) - 1;
            for (auto& fd : fds) marks_.push_back(fd_mark{last, std::move(fd)});
        }
        return n;
    }

    /// Bytes read straight into the caller's buffer (the buffer was empty): consumed at
    /// once, and so are the descriptors that came with them.
    void consume_direct(std::size_t n) {
        consumed_ += n;
        if constexpr (fd_receiving_stream<Stream>) {
            for (auto& fd : s_->take_fds()) released_.push_back(std::move(fd));
        }
    }

    /// Moves the descriptors of consumed bytes to released_.
    void release_fds() {
        if constexpr (fd_receiving_stream<Stream>) {
            auto it = marks_.begin();
            for (; it != marks_.end() && it->offset < consumed_; ++it) released_.push_back(std::move(it->fd));
            marks_.erase(marks_.begin(), it);
        }
    }

    Stream* s_;
    std::size_t cap_;
    std::size_t max_cap_;
    std::unique_ptr<std::byte[]> buf_;
    std::size_t begin_ = 0;  // buffered bytes are [begin_, end_)
    std::size_t end_ = 0;
    std::uint64_t consumed_ = 0;  // stream offset of buf_[begin_]
    bool busy_ = false;
    std::vector<fd_mark> marks_;        // descriptors of buffered bytes, by offset
    std::vector<unique_fd> released_;  // descriptors of consumed bytes, not yet taken
};

namespace detail {

template <class S>
concept vectored_writer = requires(S& s, std::span<const iovec> v, op_limits lim) {
    { s.write_all(v, lim).await_resume() } -> std::same_as<io_result<std::size_t>>;
};

template <std::unsigned_integral Len, class Stream>
pooled_task<io_result<std::size_t>> write_frame(Stream& s, std::span<const std::byte> payload,
                                                const borrowed_fds* fds, op_limits lim) {
    static constexpr const char* what = "write_frame";
    if (payload.size() > std::numeric_limits<Len>::max())
        co_return {std::size_t{0}, make_error_code(framing_errc::frame_too_long), what};
    std::array<std::byte, sizeof(Len)> header;
    put_big_endian<Len>(header, static_cast<Len>(payload.size()));
    if constexpr (vectored_writer<Stream>) {
        if (fds == nullptr) {
            const std::array<iovec, 2> iov{iovec{header.data(), header.size()},
                                           iovec{const_cast<std::byte*>(payload.data()), payload.size()}};
            co_return co_await s.write_all(std::span<const iovec>(iov), lim);
        }
    }
    // No vectored write on this stream (or descriptors to attach): one contiguous copy,
    // still one write, so a concurrent writer cannot land between length and payload.
    std::vector<std::byte> wire(header.size() + payload.size());
    std::memcpy(wire.data(), header.data(), header.size());
    if (!payload.empty()) std::memcpy(wire.data() + header.size(), payload.data(), payload.size());
    if (fds != nullptr) {
        if constexpr (requires { s.send_fds(wire, *fds, lim); }) co_return co_await s.send_fds(wire, *fds, lim);
    }
    co_return co_await s.write_all(wire, lim);
}

}  // namespace detail

/// Sends `payload` behind its length as a big-endian Len, in one write (vectored where
/// the stream has it: stream_socket; one copy otherwise: fd_stream). co_await yields
/// io_result<std::size_t>: bytes sent, length field included. A payload longer than
/// Len can count is framing_errc::frame_too_long (nothing sent); otherwise the stream's
/// write_all errors. `payload` must stay valid until the co_await completes.
template <std::unsigned_integral Len = std::uint32_t, class Stream, readable_bytes B>
[[nodiscard]] detail::pooled_task<io_result<std::size_t>> write_frame(Stream& s, const B& payload,
                                                                      op_limits lim = {}) {
    return detail::write_frame<Len>(s, as_bytes(payload), nullptr, std::move(lim));
}

/// write_frame with `fds` attached to the frame's first byte (fd_stream::send_fds), so
/// the receiver's buffered_stream hands them out with this frame (take_fds). `fds`
/// must stay valid until the co_await completes. Errors as fd_stream::send_fds.
template <std::unsigned_integral Len = std::uint32_t, class Stream, readable_bytes B>
    requires requires(Stream& s, std::span<const std::byte> b, borrowed_fds f) { s.send_fds(b, f); }
[[nodiscard]] detail::pooled_task<io_result<std::size_t>> write_frame(Stream& s, const B& payload,
                                                                      const borrowed_fds& fds, op_limits lim = {}) {
    return detail::write_frame<Len>(s, as_bytes(payload), &fds, std::move(lim));
}

}  // namespace ringsock

template <>
struct std::is_error_code_enum<ringsock::framing_errc> : std::true_type {};
