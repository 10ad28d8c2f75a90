// Per-operation limits: a stop token and a time limit, accepted by every operation.
#pragma once

#include <chrono>
#include <optional>
#include <stop_token>
#include <utility>

namespace ringsock {

/// How an operation may be cut short. Pass a stop token, a timeout, or both:
///   co_await sock.read_some(buf, token);
///   co_await sock.read_some(buf, 10ms);
///   co_await sock.read_some(buf, {token, 10ms});
/// A stop request makes the operation finish with std::errc::operation_canceled; an
/// expired time limit with std::errc::timed_out. Bytes already transferred are reported
/// (read_some/write_some: as a success; read_exact/write_all: in partial_value()).
///
/// TRICKY: deliberately not an aggregate. g++ 12 destroys a braced aggregate temporary
/// twice when it appears inside a co_await expression (a use-after-free of the stop
/// state); a class with constructors is not affected. tests/test_op_limits.cpp pins it.
class op_limits {
public:
    op_limits() noexcept = default;
    op_limits(std::stop_token stop) noexcept : stop(std::move(stop)) {}  // NOLINT: implicit by design
    template <class Rep, class Period>
    op_limits(std::chrono::duration<Rep, Period> limit) noexcept  // NOLINT: implicit by design
        : timeout(std::chrono::duration_cast<std::chrono::nanoseconds>(limit)) {}
    template <class Rep, class Period>
    op_limits(std::stop_token stop, std::chrono::duration<Rep, Period> limit) noexcept
        : stop(std::move(stop)), timeout(std::chrono::duration_cast<std::chrono::nanoseconds>(limit)) {}

    std::stop_token stop{};
    /// Measured from the moment the operation is awaited; covers the whole operation,
    /// including the retries inside read_exact / write_all.
    std::optional<std::chrono::nanoseconds> timeout{};
};

}  // namespace ringsock
