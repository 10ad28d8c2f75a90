// Error codes that no errno describes: truncation, early end of stream, socket-file
// conflicts. They live in ringsock's own std::error_category.
#pragma once

#include <string>
#include <system_error>

namespace ringsock {

enum class errc {
    /// A message was longer than the receive buffer; the rest was discarded by the kernel.
    message_truncated = 1,
    /// Descriptors were sent but the control buffer could not hold them all; the ones
    /// that did arrive were closed (MSG_CTRUNC).
    fds_truncated,
    /// read_exact reached end of stream before the buffer was full.
    end_of_stream,
    /// The socket path exists and is not a socket; it was left untouched.
    path_not_a_socket,
    /// An earlier write failed part-way, so the stream's position is unknown.
    stream_broken,
    /// More descriptors than one message may carry (253).
    too_many_fds,
};

namespace detail {
class error_category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "ringsock"; }
    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
            case errc::message_truncated: return "message truncated: larger than the receive buffer";
            case errc::fds_truncated: return "received descriptors truncated (MSG_CTRUNC); the partial set was closed";
            case errc::end_of_stream: return "end of stream before the requested bytes arrived";
            case errc::path_not_a_socket: return "socket path exists and is not a socket";
            case errc::stream_broken: return "stream broken by an earlier failed write";
            case errc::too_many_fds: return "too many descriptors for one message (at most 253)";
        }
        return "unknown ringsock error";
    }
    std::error_condition default_error_condition(int ev) const noexcept override {
        switch (static_cast<errc>(ev)) {
            case errc::path_not_a_socket: return std::errc::file_exists;
            case errc::too_many_fds: return std::errc::argument_list_too_long;
            default: return std::error_condition(ev, *this);
        }
    }
};
}  // namespace detail

/// The category of ringsock::errc values.
inline const std::error_category& error_category() noexcept {
    static const detail::error_category_impl instance;
    return instance;
}

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), error_category()};
}

}  // namespace ringsock

template <>
struct std::is_error_code_enum<ringsock::errc> : std::true_type {};
