// An owning file descriptor: closed exactly once, movable, never copied.
#pragma once

#include <unistd.h>

#include <utility>

namespace ringsock {

/// Owns one descriptor and closes it on destruction. -1 means empty.
class unique_fd {
public:
    /// Empty (-1).
    unique_fd() noexcept = default;
    /// Takes ownership of `fd` (-1, or any negative value, for empty).
    explicit unique_fd(int fd) noexcept : fd_(fd) {}
    /// Takes `other`'s descriptor, leaving it empty.
    unique_fd(unique_fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    /// Closes the current descriptor (if any) and takes `other`'s, leaving it empty.
    unique_fd& operator=(unique_fd&& other) noexcept {
        if (this != &other) reset(std::exchange(other.fd_, -1));
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() { reset(); }

    /// The descriptor, still owned (-1 when empty).
    int get() const noexcept { return fd_; }
    /// True when it holds a descriptor.
    bool valid() const noexcept { return fd_ >= 0; }
    /// valid().
    explicit operator bool() const noexcept { return valid(); }
    /// Gives up ownership without closing.
    [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }
    /// Closes the current descriptor (if any) and takes `fd`.
    void reset(int fd = -1) noexcept {
        int old = std::exchange(fd_, fd);
        // close() on Linux releases the descriptor even when it reports EINTR: never retry.
        if (old >= 0) ::close(old);
    }

private:
    int fd_ = -1;
};

}  // namespace ringsock
