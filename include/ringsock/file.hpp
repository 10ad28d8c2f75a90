// Files on the ring: open beneath a directory (openat2 with RESOLVE_* flags), statx,
// positional reads and writes, and close, all co_await-able with stop tokens and time
// limits like the socket operations. Free functions take raw descriptors; the `file`
// class owns one and cancels its operations when it is closed or destroyed.
//
//   auto dir = co_await ringsock::file::open(ctx, AT_FDCWD, "/srv/data", {O_PATH | O_DIRECTORY, 0, 0});
//   auto f = co_await dir->open_at("user/report.txt", ringsock::beneath(O_RDONLY), 2s);
//   if (!f) ...  // EXDEV / ELOOP: the path tried to leave /srv/data
//   std::array<char, 4096> buf;
//   auto n = co_await f->read_some_at(buf, 0);
#pragma once

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>

#include "buffer.hpp"
#include "detail/file_ops.hpp"
#include "io_context.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "unique_fd.hpp"

namespace ringsock {

/// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS: the path must stay
/// inside the directory it is resolved from, lexically and through every link. The
/// kernel refuses "..", absolute paths (EXDEV) and any symlink or /proc magic link
/// (ELOOP) on the way; checked at each step, so a rename race cannot escape either.
inline constexpr std::uint64_t resolve_beneath_strict = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;

/// An open_how for opening strictly beneath a directory (resolve_beneath_strict).
/// `mode` only matters with O_CREAT or O_TMPFILE (openat2 rejects it otherwise).
inline constexpr open_how beneath(int flags, mode_t mode = 0) noexcept {
    return open_how{static_cast<std::uint64_t>(flags), static_cast<std::uint64_t>(mode), resolve_beneath_strict};
}

/// Opens `path` relative to `dirfd` (or AT_FDCWD) with openat2(2) semantics: `how`
/// gives flags, mode and RESOLVE_* flags; O_CLOEXEC is always added. co_await yields
/// io_result<unique_fd>. `path` must stay valid until the co_await completes.
///
/// The open runs on an io-wq thread, exactly as openat2(2) would (a FIFO waits for
/// its peer, blocking only that thread, never the loop); with O_NONBLOCK in the flags
/// it is first tried inline. A stop request or time limit interrupts a waiting open
/// (operation_canceled / timed_out). A descriptor that did arrive is always returned,
/// even if the stop came first; if the coroutine is destroyed instead, it is closed.
/// Errors: ENOENT, EACCES, EXDEV/ELOOP (resolve flags refused the path), EINVAL
/// (unknown flag, or a mode without O_CREAT), ENXIO, EMFILE.
[[nodiscard]] inline auto open_at(io_context& ctx, int dirfd, const char* path, const open_how& how,
                                  op_limits lim = {}) {
    return detail::open_op<unique_fd>(ctx, dirfd, path, how, lim);
}
/// open_at with a std::string path (it must outlive the co_await).
[[nodiscard]] inline auto open_at(io_context& ctx, int dirfd, const std::string& path, const open_how& how,
                                  op_limits lim = {}) {
    return detail::open_op<unique_fd>(ctx, dirfd, path.c_str(), how, lim);
}

/// statx(2) of `path` relative to `dirfd`; with AT_EMPTY_PATH in `flags` and an empty
/// path, of `dirfd` itself. co_await yields io_result<struct statx>; `mask` says which
/// fields to fill (stx_mask tells which the file system did). `path` must stay valid
/// until the co_await completes.
[[nodiscard]] inline auto stat_at(io_context& ctx, int dirfd, const char* path, int flags = 0,
                                  op_limits lim = {}, unsigned mask = STATX_BASIC_STATS) {
    return detail::statx_op(ctx, dirfd, path, flags, mask, lim);
}

/// One positional read of up to buf.size() bytes at `offset` (the file position is not
/// used or moved). co_await yields io_result<std::size_t>: fewer bytes than asked means
/// end of file came first (0: `offset` is at or past it), or a pipe/device returned less.
template <writable_bytes B>
[[nodiscard]] auto read_some_at(io_context& ctx, int fd, B&& buf, std::uint64_t offset, op_limits lim = {}) {
    auto s = as_writable_bytes(buf);
    return detail::rw_at_op(ctx, fd, s.data(), s.size(), offset, detail::rw_at_op::kind::read_some, lim);
}
/// Fills the whole buffer from `offset`, looping over short reads. End of file first is
/// errc::end_of_stream, with the bytes read in partial_value().
template <writable_bytes B>
[[nodiscard]] auto read_exact_at(io_context& ctx, int fd, B&& buf, std::uint64_t offset, op_limits lim = {}) {
    auto s = as_writable_bytes(buf);
    return detail::rw_at_op(ctx, fd, s.data(), s.size(), offset, detail::rw_at_op::kind::read_exact, lim);
}
/// One positional write at `offset`; may write fewer bytes than given (the count).
template <readable_bytes B>
[[nodiscard]] auto write_some_at(io_context& ctx, int fd, const B& buf, std::uint64_t offset, op_limits lim = {}) {
    auto s = as_bytes(buf);
    return detail::rw_at_op(ctx, fd, const_cast<std::byte*>(s.data()), s.size(), offset,
                            detail::rw_at_op::kind::write_some, lim);
}
/// Writes the whole buffer at `offset`, looping over short writes. On an error part-way
/// (ENOSPC, a stop, a time limit) the count written is in partial_value().
template <readable_bytes B>
[[nodiscard]] auto write_all_at(io_context& ctx, int fd, const B& buf, std::uint64_t offset, op_limits lim = {}) {
    auto s = as_bytes(buf);
    return detail::rw_at_op(ctx, fd, const_cast<std::byte*>(s.data()), s.size(), offset,
                            detail::rw_at_op::kind::write_all, lim);
}

/// Closes `fd` with IORING_OP_CLOSE (useful when close may block: a flush to a network
/// file system runs on io-wq, not on the loop). The descriptor is released in every
/// case, even when a stop or time limit ends the operation first (then with a plain
/// close(2)). co_await yields io_result<void>; errors are close(2)'s (EIO, EINTR).
[[nodiscard]] inline auto close_async(io_context& ctx, unique_fd fd, op_limits lim = {}) {
    return detail::close_op(ctx, std::move(fd), lim);
}

/// An open file (or directory) on an io_context: owns its descriptor. Not copyable;
/// movable (operations in flight follow it). Operations may run concurrently (they
/// are positional, so they never share a file offset). Closing or destroying it ends
/// every operation started through it with operation_canceled; an operation already
/// complete keeps its result; none of them touches the descriptor again.
class file {
public:
    file() noexcept = default;
    /// Takes ownership of `fd`.
    file(io_context& ctx, unique_fd fd) noexcept : ctx_(&ctx), fd_(std::move(fd)) {}
    /// Takes over the descriptor and the operations in flight on it.
    file(file&& o) noexcept : ctx_(o.ctx_), fd_(std::move(o.fd_)) { ops_.take(o.ops_); }
    /// Closes this file first (see close()), then takes over `o`'s.
    file& operator=(file&& o) noexcept {
        if (this != &o) {
            close();
            ctx_ = o.ctx_;
            fd_ = std::move(o.fd_);
            ops_.take(o.ops_);
        }
        return *this;
    }
    file(const file&) = delete;
    file& operator=(const file&) = delete;
    /// Like close().
    ~file() { close(); }

    /// open_at() yielding io_result<file>.
    [[nodiscard]] static auto open(io_context& ctx, int dirfd, const char* path, const open_how& how,
                                   op_limits lim = {}) {
        return detail::open_op<file>(ctx, dirfd, path, how, lim);
    }
    /// open() with a std::string path (it must outlive the co_await).
    [[nodiscard]] static auto open(io_context& ctx, int dirfd, const std::string& path, const open_how& how,
                                   op_limits lim = {}) {
        return detail::open_op<file>(ctx, dirfd, path.c_str(), how, lim);
    }
    /// Opens `path` relative to this directory (see open_at); with beneath(flags) it
    /// cannot leave it. co_await yields io_result<file>.
    [[nodiscard]] auto open_at(const char* path, const open_how& how, op_limits lim = {}) {
        return detail::open_op<file>(bound(), fd_.get(), path, how, lim, &ops_);
    }
    /// open_at() with a std::string path (it must outlive the co_await).
    [[nodiscard]] auto open_at(const std::string& path, const open_how& how, op_limits lim = {}) {
        return open_at(path.c_str(), how, lim);
    }
    /// statx of this file. co_await yields io_result<struct statx>.
    [[nodiscard]] auto stat(op_limits lim = {}, unsigned mask = STATX_BASIC_STATS) {
        return detail::statx_op(bound(), fd_.get(), "", AT_EMPTY_PATH, mask, lim, &ops_);
    }
    /// statx of `path` relative to this directory (flags: AT_SYMLINK_NOFOLLOW, ...).
    [[nodiscard]] auto stat_at(const char* path, int flags = 0, op_limits lim = {},
                               unsigned mask = STATX_BASIC_STATS) {
        return detail::statx_op(bound(), fd_.get(), path, flags, mask, lim, &ops_);
    }

    /// See ringsock::read_some_at.
    template <writable_bytes B>
    [[nodiscard]] auto read_some_at(B&& buf, std::uint64_t offset, op_limits lim = {}) {
        auto s = as_writable_bytes(buf);
        return rw(s.data(), s.size(), offset, detail::rw_at_op::kind::read_some, lim);
    }
    /// See ringsock::read_exact_at.
    template <writable_bytes B>
    [[nodiscard]] auto read_exact_at(B&& buf, std::uint64_t offset, op_limits lim = {}) {
        auto s = as_writable_bytes(buf);
        return rw(s.data(), s.size(), offset, detail::rw_at_op::kind::read_exact, lim);
    }
    /// See ringsock::write_some_at.
    template <readable_bytes B>
    [[nodiscard]] auto write_some_at(const B& buf, std::uint64_t offset, op_limits lim = {}) {
        auto s = as_bytes(buf);
        return rw(const_cast<std::byte*>(s.data()), s.size(), offset, detail::rw_at_op::kind::write_some, lim);
    }
    /// See ringsock::write_all_at.
    template <readable_bytes B>
    [[nodiscard]] auto write_all_at(const B& buf, std::uint64_t offset, op_limits lim = {}) {
        auto s = as_bytes(buf);
        return rw(const_cast<std::byte*>(s.data()), s.size(), offset, detail::rw_at_op::kind::write_all, lim);
    }

    /// Closes now (close(2)): operations started through this file end with
    /// operation_canceled first (their SQEs are handed to the kernel before the number
    /// is freed). Idempotent.
    void close() noexcept {
        detach();
        fd_.reset();
    }
    /// Closes through the ring (see close_async); operations end as with close().
    /// co_await yields io_result<void>; closing a closed file yields EBADF.
    [[nodiscard]] auto close_async(op_limits lim = {}) {
        detach();
        return detail::close_op(bound(), std::move(fd_), lim);
    }
    /// Gives up the descriptor, which stays open and becomes the caller's; operations
    /// started through this file end as with close().
    unique_fd release() noexcept {
        detach();
        return std::move(fd_);
    }

    /// True while the file owns a descriptor (not closed, released or moved from).
    bool is_open() const noexcept { return fd_.valid(); }
    /// The descriptor (-1 when closed); still owned by the file.
    int native_handle() const noexcept { return fd_.get(); }
    /// Precondition: the file was given a context (not default-constructed).
    io_context& context() const noexcept { return *ctx_; }

private:
    io_context& bound() const {
        if (!ctx_) throw std::logic_error("ringsock: operation on a file with no io_context (default-constructed)");
        return *ctx_;
    }
    detail::rw_at_op rw(std::byte* p, std::size_t n, std::uint64_t offset, detail::rw_at_op::kind k,
                        const op_limits& lim) {
        return detail::rw_at_op(bound(), fd_.get(), p, n, offset, k, lim, &ops_);
    }
    void detach() noexcept {
        // TRICKY: an operation's SQE may still be in the SQ naming this descriptor: hand
        // it to the kernel (which then holds its own reference) before the number goes.
        if (ctx_ && ops_.detach_all(detail::core(*ctx_))) detail::core(*ctx_).flush();
    }

    io_context* ctx_ = nullptr;
    unique_fd fd_;
    detail::file_op_list ops_;
};

}  // namespace ringsock
