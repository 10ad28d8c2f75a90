// Descriptor passing (SCM_RIGHTS): the descriptors an operation sends, and what a
// receive delivers. Received descriptors are always owned (unique_fd) and close-on-exec.
//
// Which socket does what:
//  - seqpacket_socket, datagram_socket: send_fds() / receive() per message; the
//    descriptors of a message come back in received_message::fds.
//  - fd_stream: a stream socket whose every read keeps the descriptors that arrive,
//    in a per-socket queue (take_fd / take_fds). stream_socket reads with a plain recv,
//    which makes the kernel discard (close) any descriptors sent to it: use stream_socket
//    where no descriptors are wanted, fd_stream where they are.
#pragma once

#include <sys/socket.h>

#include <concepts>
#include <cstddef>
#include <initializer_list>
#include <optional>
#include <ranges>
#include <span>
#include <type_traits>
#include <vector>

#include "credentials.hpp"
#include "endpoint.hpp"
#include "unique_fd.hpp"

namespace ringsock {

/// The most descriptors one message may carry (the kernel's SCM_MAX_FD). Sending more
/// fails with errc::too_many_fds before anything is sent.
inline constexpr std::size_t max_fds_per_message = 253;

/// Descriptors to send, borrowed: the caller keeps them open and owns them. They are
/// copied into the operation when it is created, so the list itself need not outlive
/// the co_await. Built from a unique_fd, a contiguous range of int or unique_fd
/// (std::array, std::vector, std::span), or {a, b, c}. g++ 12 cannot compile a braced
/// list inside a co_await expression: there, name the list first
/// (`std::array<int, 2> fds{a, b}; co_await s.send_fds(buf, fds);`).
class borrowed_fds {
public:
    borrowed_fds() noexcept = default;
    /// One descriptor (an empty unique_fd gives -1, which the send rejects with EBADF).
    borrowed_fds(const unique_fd& fd) noexcept : ints_(&fd_one_, 1), fd_one_(fd.get()) {}  // NOLINT: implicit
    /// `{a, b, c}`: a view of the list, which lives only until the end of the full
    /// expression; use it directly in the send call.
    borrowed_fds(std::initializer_list<int> fds) noexcept : ints_(fds.begin(), fds.size()) {}
    /// A view of a contiguous range of int; the range must outlive this object.
    template <std::ranges::contiguous_range R>
        requires std::same_as<std::remove_cv_t<std::ranges::range_value_t<R>>, int>
    borrowed_fds(const R& fds) noexcept : ints_(std::ranges::data(fds), std::ranges::size(fds)) {}  // NOLINT
    /// A view of a contiguous range of unique_fd, which keep owning their descriptors;
    /// the range must outlive this object.
    template <std::ranges::contiguous_range R>
        requires std::same_as<std::remove_cv_t<std::ranges::range_value_t<R>>, unique_fd>
    borrowed_fds(const R& fds) noexcept : owned_(std::ranges::data(fds), std::ranges::size(fds)) {}  // NOLINT
    /// Copies the view (a single descriptor is copied itself, not pointed to).
    borrowed_fds(const borrowed_fds& o) noexcept : ints_(o.ints_), owned_(o.owned_), fd_one_(o.fd_one_) {
        if (o.ints_.data() == &o.fd_one_) ints_ = {&fd_one_, 1};
    }
    borrowed_fds& operator=(const borrowed_fds&) = delete;

    /// Number of descriptors.
    std::size_t size() const noexcept { return owned_.empty() ? ints_.size() : owned_.size(); }
    /// True when there are no descriptors to send.
    bool empty() const noexcept { return size() == 0; }
    /// The i-th descriptor, still the caller's. Precondition: i < size().
    int operator[](std::size_t i) const noexcept { return owned_.empty() ? ints_[i] : owned_[i].get(); }

private:
    std::span<const int> ints_;
    std::span<const unique_fd> owned_;
    int fd_one_ = -1;
};

/// What one receive delivered. On an error that still consumed data (truncation) the
/// io_result's partial_value() holds this, with the bytes that fit.
struct received_message {
    /// Data bytes placed in the caller's buffer.
    std::size_t bytes = 0;
    /// Datagram and seqpacket: the whole message's length, larger than `bytes` when
    /// the buffer was too small (errc::message_truncated). Streams: equal to `bytes`.
    std::size_t full_size = 0;
    /// SCM_RIGHTS descriptors in the order sent, owned, close-on-exec. Empty after
    /// errc::fds_truncated (the ones that did arrive were closed).
    std::vector<unique_fd> fds;
    /// The sender's pid/uid/gid as the kernel saw them when it sent this message
    /// (SCM_CREDENTIALS). Present when the receiver enabled pass_credentials().
    std::optional<credentials> sender_credentials;
    /// A pidfd of the sending process (SCM_PIDFD), when pass_pidfd() is enabled.
    unique_fd sender_pidfd;
    /// datagram_socket::receive_from: the sender's address; unnamed when the sender
    /// was not bound (or for other receives).
    endpoint sender;
    /// recvmsg's msg_flags, e.g. MSG_TRUNC, MSG_CTRUNC (MSG_CMSG_CLOEXEC removed).
    int flags = 0;
};

}  // namespace ringsock
