// Buffers lent by the kernel: a buffer_ring is a pool of equal buffers registered with
// the io_uring as a provided buffer ring. A receive that names it (read_some(ring),
// receive(ring)) holds no buffer while it waits: the kernel picks one when data
// arrives, and the caller gets it as a lent_buffer, which goes back to the ring when
// dropped. So a thousand idle connections cost no receive memory at all, only the
// buffers of the messages being handled right now.
#pragma once

#include <liburing.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <system_error>
#include <utility>

#include "detail/errno.hpp"
#include "detail/fatal.hpp"
#include "detail/operation.hpp"
#include "io_context.hpp"
#include "io_result.hpp"

namespace ringsock {

class buffer_ring;
class ring_reader;

namespace detail {
class lent_receive_op;
struct buffer_ring_core;

/// What a buffer_ring knows of a read that names it (lent_receive_op, a ring_reader's
/// engine): it can be woken when a buffer comes back and cancelled when the ring goes.
class buffer_ring_user {
public:
    /// A buffer came back while this read waited for one.
    virtual void wake() noexcept = 0;
    /// The buffer_ring is being destroyed: end this read.
    virtual void cancel_for_close() noexcept = 0;

    buffer_ring_user* starved_next_ = nullptr;
    buffer_ring_user* starved_prev_ = nullptr;
    bool starved_ = false;
    buffer_ring_user* user_next_ = nullptr;
    buffer_ring_user* user_prev_ = nullptr;

protected:
    ~buffer_ring_user() = default;
};
}

/// One buffer of a buffer_ring, lent to the caller. Move-only; returns to its ring
/// when destroyed or reset(). Use and drop it on the ring's loop thread; it stays valid
/// after its buffer_ring is destroyed (the memory goes with the last lent buffer).
class lent_buffer {
public:
    lent_buffer() noexcept = default;
    /// Takes over `o`'s buffer; `o` becomes empty (its bytes are no longer its to show:
    /// the buffer may already be lent to another read).
    lent_buffer(lent_buffer&& o) noexcept
        : ring_(std::exchange(o.ring_, nullptr)), data_(std::exchange(o.data_, nullptr)),
          size_(std::exchange(o.size_, 0)), id_(o.id_) {}
    /// Returns this buffer to its ring, then takes over `o`'s.
    lent_buffer& operator=(lent_buffer&& o) noexcept {
        if (this != &o) {
            reset();
            ring_ = std::exchange(o.ring_, nullptr);
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
            id_ = o.id_;
        }
        return *this;
    }
    lent_buffer(const lent_buffer&) = delete;
    lent_buffer& operator=(const lent_buffer&) = delete;
    ~lent_buffer() { reset(); }

    /// The bytes received (size() of them; the buffer itself may be larger).
    std::byte* data() const noexcept { return data_; }
    /// Bytes received.
    std::size_t size() const noexcept { return size_; }
    /// No bytes: end of stream, an empty message, or a default-constructed buffer.
    bool empty() const noexcept { return size_ == 0; }
    /// The bytes received, as bytes.
    std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
    /// The bytes received, as characters (valid while the buffer is held).
    std::string_view chars() const noexcept { return {reinterpret_cast<const char*>(data_), size_}; }
    /// Drops the first `n` bytes (a parser consumed them); the buffer stays lent.
    void consume(std::size_t n) noexcept {
        if (n > size_) n = size_;
        data_ += n;
        size_ -= n;
    }
    /// Gives the buffer back to its ring now.
    inline void reset() noexcept;

private:
    friend struct detail::buffer_ring_core;
    lent_buffer(detail::buffer_ring_core* r, std::byte* d, std::size_t n, std::uint16_t id) noexcept
        : ring_(r), data_(d), size_(n), id_(id) {}
    detail::buffer_ring_core* ring_ = nullptr;
    std::byte* data_ = nullptr;
    std::size_t size_ = 0;
    std::uint16_t id_ = 0;
};

namespace detail {

/// What a buffer_ring's buffers, reads and lent buffers share. It outlives the
/// buffer_ring handle while any read still names it or any buffer is still lent, and
/// frees itself when the last one goes (so destruction order never matters).
struct buffer_ring_core {
    io_context* ctx = nullptr;
    io_uring_buf_ring* br = nullptr;
    std::byte* pool = nullptr;
    std::size_t size = 0;
    std::size_t ring_bytes = 0;
    std::size_t pool_bytes = 0;
    unsigned count = 0;
    unsigned lent = 0;
    unsigned users = 0;
    unsigned read_ahead = 0;  // lent buffers held in ring_readers' queues, not yet taken
    std::uint16_t group = 0;
    bool closed = false;  // the buffer_ring handle is gone: nothing is given back to the kernel
    buffer_ring_user* starved_head = nullptr;
    buffer_ring_user* starved_tail = nullptr;
    buffer_ring_user* users_head = nullptr;

    ~buffer_ring_core() {
        if (pool) ::munmap(pool, pool_bytes);
        if (br) ::munmap(br, ring_bytes);
    }
    std::byte* buffer(std::uint16_t id) const noexcept { return pool + std::size_t{id} * size; }
    /// The kernel picked buffer `id` for `n` bytes: it is the caller's now.
    inline lent_buffer lend(std::uint16_t id, std::size_t n) noexcept;
    /// A completion named a buffer nobody will use (end of stream, a cancelled
    /// coroutine): straight back.
    void give_back(std::uint16_t id) noexcept {
        ++lent;
        put_back(id);
    }
    inline void put_back(std::uint16_t id) noexcept;
    // Receives that found the ring empty wait here for a buffer to come back.
    inline void starve(buffer_ring_user* op) noexcept;
    inline void unstarve(buffer_ring_user* op) noexcept;
    // Every read naming the ring, so closing it can cancel them.
    inline void attach(buffer_ring_user* op) noexcept;
    inline void detach(buffer_ring_user* op) noexcept;
    void free_if_orphaned() noexcept {
        if (closed && lent == 0 && users == 0) delete this;
    }
};

}  // namespace detail

/// A pool of `count` buffers of `size` bytes each, registered with `ctx`'s ring
/// (IORING_REGISTER_PBUF_RING, Linux 5.19). Create, use and destroy it on the loop's
/// thread, before its io_context goes. Destroying it while reads still name it cancels
/// them (they end with operation_canceled, or with the data that won the race); buffers
/// still lent stay valid until dropped. So it may be destroyed before the spawned tasks
/// that read from it (which the io_context destroys last).
///
/// Exhaustion: when every buffer is lent out, a receive that finds data gets ENOBUFS
/// from the kernel without consuming anything; it then waits (under its own time limit
/// and stop token) until a buffer comes back, and tries again. No data is lost.
class buffer_ring {
public:
    /// `count` is rounded up to a power of two (at most 32768). Throws std::system_error
    /// naming the step: the mapping, or the registration (EINVAL on kernels without
    /// provided buffer rings).
    buffer_ring(io_context& ctx, unsigned count, std::size_t size) {
        if (count == 0 || count > 32768 || size == 0 || size > (std::size_t{1} << 31))
            throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                                    "buffer_ring: count must be 1..32768 and size 1..2 GiB");
        auto c = std::make_unique<detail::buffer_ring_core>();
        c->ctx = &ctx;
        c->size = size;
        c->count = 1;
        while (c->count < count) c->count <<= 1;
        c->ring_bytes = c->count * sizeof(io_uring_buf);
        void* r = ::mmap(nullptr, c->ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (r == MAP_FAILED) detail::throw_errno(errno, "buffer_ring: mmap (ring)");
        c->br = static_cast<io_uring_buf_ring*>(r);
        c->pool_bytes = c->count * size;
        void* p = ::mmap(nullptr, c->pool_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) detail::throw_errno(errno, "buffer_ring: mmap (buffers)");
        c->pool = static_cast<std::byte*>(p);
        c->group = next_group();
        io_uring_buf_reg reg{};
        reg.ring_addr = reinterpret_cast<std::uint64_t>(c->br);
        reg.ring_entries = c->count;
        reg.bgid = c->group;
        io_uring_buf_ring_init(c->br);
        if (int rc = io_uring_register_buf_ring(ctx.native_handle(), &reg, 0); rc < 0)
            detail::throw_errno(-rc, "buffer_ring: io_uring_register_buf_ring");
        for (unsigned i = 0; i < c->count; ++i)
            io_uring_buf_ring_add(c->br, c->buffer(static_cast<std::uint16_t>(i)), static_cast<unsigned>(size),
                                  static_cast<unsigned short>(i), io_uring_buf_ring_mask(c->count), static_cast<int>(i));
        io_uring_buf_ring_advance(c->br, static_cast<int>(c->count));
        core_ = c.release();
    }
    buffer_ring(const buffer_ring&) = delete;
    buffer_ring& operator=(const buffer_ring&) = delete;
    inline ~buffer_ring();

    /// Number of buffers (the requested count rounded up to a power of two).
    unsigned count() const noexcept { return core_->count; }
    /// Size of each buffer: the most one receive returns.
    std::size_t buffer_size() const noexcept { return core_->size; }
    /// Buffers handed to callers as lent_buffers right now.
    unsigned lent() const noexcept { return core_->lent; }
    /// Buffers the kernel can still pick (IORING_REGISTER_PBUF_STATUS, Linux 6.8;
    /// errors: EINVAL on older kernels). For tests and monitoring: a syscall each.
    io_result<unsigned> available() const noexcept {
        struct {
            std::uint32_t buf_group;
            std::uint32_t head;
            std::uint32_t resv[8];
        } status{core_->group, 0, {}};
        constexpr unsigned register_pbuf_status = 26;
        const long rc =
            ::syscall(__NR_io_uring_register, core_->ctx->native_handle()->ring_fd, register_pbuf_status, &status, 1);
        if (rc < 0) return {std::error_code(errno, std::generic_category()), "buffer_ring: IORING_REGISTER_PBUF_STATUS"};
        const auto tail = io_uring_smp_load_acquire(&core_->br->tail);
        return static_cast<unsigned>(static_cast<std::uint16_t>(tail - static_cast<std::uint16_t>(status.head)));
    }
    /// The buffer group id the ring is registered under (sqe->buf_group).
    std::uint16_t group() const noexcept { return core_->group; }
    /// The context whose ring the buffers are registered with.
    io_context& context() const noexcept { return *core_->ctx; }

private:
    friend class detail::lent_receive_op;
    friend class ring_reader;

    static std::uint16_t next_group() noexcept {
        static std::atomic<std::uint16_t> next{0};
        return next.fetch_add(1, std::memory_order_relaxed);
    }

    detail::buffer_ring_core* core_ = nullptr;
};

inline void lent_buffer::reset() noexcept {
    data_ = nullptr;  // the bytes go back with the buffer
    size_ = 0;
    if (detail::buffer_ring_core* r = std::exchange(ring_, nullptr)) r->put_back(id_);
}

namespace detail {
inline lent_buffer buffer_ring_core::lend(std::uint16_t id, std::size_t n) noexcept {
    ++lent;
    return lent_buffer(this, buffer(id), n, id);
}
}  // namespace detail

}  // namespace ringsock

#include "detail/lent_receive_op.hpp"
