// Registered files: the ring's table of socket slots. A socket takes a slot once it
// has made `register_after` requests; its requests then carry IOSQE_FIXED_FILE and the
// kernel skips the descriptor lookup and reference count on each of them. Short-lived
// connections never pay the two extra syscalls (register, unregister).
#pragma once

#include <liburing.h>
#include <sys/resource.h>

#include <utility>
#include <vector>

namespace ringsock::detail {

class file_table;

/// A socket's slot. The table holds a reference to the socket, so the slot must be
/// given back before the descriptor is closed (close(), release() and the destructor
/// do): otherwise the peer would never see EOF.
struct registered_file {
    static constexpr int unregistered = -1;  // not registered (yet)
    static constexpr int never = -2;         // registration failed: plain descriptor
    static constexpr int closed = -3;        // the socket is closed: no further request

    file_table* table = nullptr;  // set while slot >= 0
    int slot = unregistered;
    unsigned uses = 0;  // requests so far, while unregistered

    registered_file() noexcept = default;
    registered_file(registered_file&& o) noexcept { take(o); }
    registered_file& operator=(registered_file&& o) noexcept {
        if (this != &o) {
            if (slot >= 0) release();
            take(o);
        }
        return *this;
    }
    ~registered_file() {
        if (slot >= 0) release();
    }

    bool is_closed() const noexcept { return slot == closed; }
    /// Gives the slot back: the kernel drops its reference to the socket. Synchronous.
    void release() noexcept;
    /// release(), and refuse every later request (the descriptor number may be reused).
    void close() noexcept {
        release();
        slot = closed;
    }

private:
    void take(registered_file& o) noexcept;  // tells the table where the slot's owner now lives
};

class file_table {
public:
    /// Registers a sparse table of `wanted` slots (capped at RLIMIT_NOFILE, which the
    /// kernel enforces). Returns the size; 0 when off or refused.
    unsigned open(io_uring* ring, unsigned wanted, unsigned register_after) {
        ring_ = ring;
        if (wanted == 0) return 0;
        rlimit lim{};
        unsigned n = wanted;
        if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < n)
            n = static_cast<unsigned>(lim.rlim_cur);
        if (n == 0 || io_uring_register_files_sparse(ring, n) != 0) return 0;
        free_.reserve(n);  // capacity = the table size: never reallocates
        owners_.assign(n, nullptr);
        for (unsigned i = n; i-- > 0;) free_.push_back(static_cast<int>(i));
        register_after_ = register_after;
        return n;
    }
    file_table() = default;
    file_table(const file_table&) = delete;
    file_table& operator=(const file_table&) = delete;
    /// A table destroyed before its sockets (a misuse) leaves them unregistered instead
    /// of pointing at a dead table.
    ~file_table() {
        for (auto* f : owners_) {
            if (f) {
                f->table = nullptr;
                f->slot = registered_file::never;
            }
        }
    }

    /// Makes `sqe` (whose fd is the socket's descriptor) use the socket's slot,
    /// registering it first once the socket has made enough requests.
    void use(registered_file& f, io_uring_sqe* sqe) noexcept {
        if (f.slot >= 0) [[likely]] {
            sqe->fd = f.slot;
            sqe->flags |= IOSQE_FIXED_FILE;
            return;
        }
        use_unregistered(f, sqe);
    }

    [[gnu::noinline]] void use_unregistered(registered_file& f, io_uring_sqe* sqe) noexcept {
        if (f.slot != registered_file::unregistered || ++f.uses < register_after_ || free_.empty()) return;
        int fd = sqe->fd;
        int slot = free_.back();
        if (io_uring_register_files_update(ring_, static_cast<unsigned>(slot), &fd, 1) != 1) {
            f.slot = registered_file::never;
            return;
        }
        free_.pop_back();
        owners_[static_cast<unsigned>(slot)] = &f;
        f.slot = slot;
        f.table = this;
        sqe->fd = f.slot;
        sqe->flags |= IOSQE_FIXED_FILE;
    }

    void release(int slot) noexcept {
        int none = -1;
        owners_[static_cast<unsigned>(slot)] = nullptr;
        // Only fails for arguments we never pass; the slot is not reused if it does.
        if (io_uring_register_files_update(ring_, static_cast<unsigned>(slot), &none, 1) == 1) free_.push_back(slot);
    }
    void moved(int slot, registered_file* f) noexcept { owners_[static_cast<unsigned>(slot)] = f; }

private:
    io_uring* ring_ = nullptr;
    std::vector<int> free_;
    std::vector<registered_file*> owners_;  // who holds each slot
    unsigned register_after_ = 0;
};

inline void registered_file::take(registered_file& o) noexcept {
    table = std::exchange(o.table, nullptr);
    slot = std::exchange(o.slot, unregistered);
    uses = std::exchange(o.uses, 0);
    if (slot >= 0) table->moved(slot, this);
}

inline void registered_file::release() noexcept {
    if (slot >= 0) table->release(slot);
    table = nullptr;
    slot = unregistered;
    uses = 0;
}

}  // namespace ringsock::detail
