// endpoint: a Unix socket address (filesystem path, abstract name, or unnamed) with
// its exact length. A path too long for sun_path is an error, never truncated.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <string_view>
#include <system_error>

#include "io_result.hpp"

namespace ringsock {

/// A Unix socket address: a filesystem path, an abstract name (Linux) or unnamed,
/// with its exact length. A value type: copy it freely.
class endpoint {
public:
    /// Longest path or abstract name: sun_path is 108 bytes; a path needs its NUL.
    static constexpr std::size_t max_path_length = sizeof(sockaddr_un::sun_path) - 1;
    /// Longest abstract name, without its leading NUL.
    static constexpr std::size_t max_abstract_length = sizeof(sockaddr_un::sun_path) - 1;

    /// Unnamed: what an unbound or socketpair socket reports.
    endpoint() noexcept {
        // Only the family and the first name byte: sun_path past size() is never read,
        // and zeroing all 108 bytes cost a `rep stos` per received message.
        addr_.sun_family = AF_UNIX;
        addr_.sun_path[0] = '\0';
    }

    /// A filesystem path. Errors: ENAMETOOLONG over 107 bytes, EINVAL when empty or
    /// containing a NUL byte.
    static io_result<endpoint> path(std::string_view p) {
        if (p.empty()) return {std::make_error_code(std::errc::invalid_argument), "endpoint::path: empty path"};
        if (p.find('\0') != std::string_view::npos)
            return {std::make_error_code(std::errc::invalid_argument), "endpoint::path: path contains a NUL byte"};
        if (p.size() > max_path_length)
            return {std::make_error_code(std::errc::filename_too_long), "endpoint::path: longer than sun_path allows (107 bytes)"};
        endpoint e;
        std::memcpy(e.addr_.sun_path, p.data(), p.size());
        e.addr_.sun_path[p.size()] = '\0';  // counted in the length: the kernel wants it
        e.len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + p.size() + 1);
        return e;
    }

    /// An abstract name (Linux): `name` without the leading NUL; it may itself contain
    /// any bytes. The address length is exact: no padding, no trailing NUL. Abstract
    /// sockets have no file permissions: anyone in the network namespace may connect.
    static io_result<endpoint> abstract(std::string_view name) {
        if (name.size() > max_abstract_length)
            return {std::make_error_code(std::errc::filename_too_long), "endpoint::abstract: name longer than 107 bytes"};
        endpoint e;
        e.addr_.sun_path[0] = '\0';
        std::memcpy(e.addr_.sun_path + 1, name.data(), name.size());
        e.len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
        return e;
    }

    /// Asks the kernel to pick a unique abstract name on bind (autobind).
    static endpoint autobind() noexcept { return endpoint{}; }

    /// Wraps an address the kernel returned (accept, recvfrom, getsockname).
    static endpoint from_native(const sockaddr_un& sa, socklen_t len) noexcept {
        endpoint e;
        if (len > sizeof(sockaddr_un)) len = sizeof(sockaddr_un);
        std::memcpy(&e.addr_, &sa, len);
        e.len_ = len < offsetof(sockaddr_un, sun_path) ? socklen_t(offsetof(sockaddr_un, sun_path)) : len;
        e.addr_.sun_family = AF_UNIX;
        return e;
    }

    /// True for an address with no name (unbound, socketpair, autobind() before bind).
    bool is_unnamed() const noexcept { return len_ <= offsetof(sockaddr_un, sun_path); }
    /// True for an abstract name (its first byte is NUL).
    bool is_abstract() const noexcept { return !is_unnamed() && addr_.sun_path[0] == '\0'; }
    /// True for a filesystem path.
    bool is_path() const noexcept { return !is_unnamed() && addr_.sun_path[0] != '\0'; }

    /// The filesystem path (empty unless is_path()).
    std::string_view path_name() const noexcept {
        if (!is_path()) return {};
        std::size_t n = len_ - offsetof(sockaddr_un, sun_path);
        // The kernel may or may not count the trailing NUL; stop at the first one.
        return {addr_.sun_path, ::strnlen(addr_.sun_path, n)};
    }
    /// The abstract name without its leading NUL (empty unless is_abstract()).
    std::string_view abstract_name() const noexcept {
        if (!is_abstract()) return {};
        return {addr_.sun_path + 1, len_ - offsetof(sockaddr_un, sun_path) - 1};
    }

    /// For logs: the path, "@name" for abstract names (NULs shown as '@'), or "(unnamed)".
    std::string to_string() const {
        if (is_path()) return std::string(path_name());
        if (is_abstract()) {
            std::string s = "@";
            for (char c : abstract_name()) s += c == '\0' ? '@' : c;
            return s;
        }
        return "(unnamed)";
    }

    /// The address for bind(2), connect(2) and sendto(2), with size().
    const sockaddr* data() const noexcept { return reinterpret_cast<const sockaddr*>(&addr_); }
    /// The address, writable; writing it does not change size().
    sockaddr* data() noexcept { return reinterpret_cast<sockaddr*>(&addr_); }
    /// The exact address length: the family, then the name (path() counts the path's
    /// NUL; an abstract name is never padded).
    socklen_t size() const noexcept { return len_; }
    /// The sockaddr_un itself; only its first size() bytes are the address.
    const sockaddr_un& native() const noexcept { return addr_; }

    friend bool operator==(const endpoint& a, const endpoint& b) noexcept {
        return a.len_ == b.len_ &&
               std::memcmp(a.addr_.sun_path, b.addr_.sun_path, a.len_ - offsetof(sockaddr_un, sun_path)) == 0;
    }

private:
    sockaddr_un addr_;  // bytes past len_ are unspecified
    socklen_t len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path));
};

/// The address a socket is bound to (getsockname).
inline io_result<endpoint> local_endpoint(int fd) {
    sockaddr_un sa{};
    socklen_t len = sizeof sa;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) < 0)
        return {std::error_code(errno, std::generic_category()), "getsockname"};
    return endpoint::from_native(sa, len);
}

/// The address of the connected peer (getpeername).
inline io_result<endpoint> remote_endpoint(int fd) {
    sockaddr_un sa{};
    socklen_t len = sizeof sa;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&sa), &len) < 0)
        return {std::error_code(errno, std::generic_category()), "getpeername"};
    return endpoint::from_native(sa, len);
}

}  // namespace ringsock
