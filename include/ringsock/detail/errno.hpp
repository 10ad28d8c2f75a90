// The one place where a negative errno from a CQE or a syscall becomes a std::error_code.
#pragma once

#include <cerrno>
#include <system_error>

namespace ringsock::detail {

/// `res` is a CQE result: negative errno on failure.
inline std::error_code cqe_error(int res) noexcept {
    return res < 0 ? std::error_code(-res, std::generic_category()) : std::error_code{};
}

/// The current errno, after a failed syscall.
inline std::error_code last_error() noexcept { return {errno, std::generic_category()}; }

/// Throws std::system_error naming `what`, for setup that cannot continue.
[[noreturn]] inline void throw_errno(int err, const char* what) {
    throw std::system_error(err, std::generic_category(), what);
}

}  // namespace ringsock::detail
