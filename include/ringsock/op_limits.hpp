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
    /// The longest time limit kept: anything longer (std::chrono::seconds::max(), 300
    /// years, +infinity) means "no limit in practice" and arms no timer at all.
    static constexpr std::chrono::nanoseconds no_limit{std::chrono::nanoseconds::max().count() / 2};

    /// No stop token, no time limit.
    op_limits() noexcept = default;
    /// Ends the operation with operation_canceled when `stop` is requested.
    op_limits(std::stop_token stop) noexcept : stop(std::move(stop)) {}  // NOLINT: implicit by design
    /// Ends the operation with timed_out after `limit` (clamped by saturate()).
    template <class Rep, class Period>
    op_limits(std::chrono::duration<Rep, Period> limit) noexcept  // NOLINT: implicit by design
        : timeout(saturate(limit)) {}
    /// Both: whichever comes first ends the operation.
    template <class Rep, class Period>
    op_limits(std::stop_token stop, std::chrono::duration<Rep, Period> limit) noexcept
        : stop(std::move(stop)), timeout(saturate(limit)) {}

    /// `d` in nanoseconds without overflow: at most no_limit, and zero for a negative
    /// (already due) duration. A NaN counts as no limit.
    template <class Rep, class Period>
    static constexpr std::chrono::nanoseconds saturate(std::chrono::duration<Rep, Period> d) noexcept {
        // TRICKY: compare in long double first; duration_cast of seconds::max() to
        // nanoseconds overflows (undefined behaviour) and wrapped into the past.
        const std::chrono::duration<long double, std::nano> wide = d;
        if (!(wide < std::chrono::duration<long double, std::nano>(no_limit))) return no_limit;
        if (wide.count() <= 0) return std::chrono::nanoseconds{0};
        return std::chrono::duration_cast<std::chrono::nanoseconds>(d);
    }

    /// A stop request on it ends the operation with operation_canceled; it may come
    /// from any thread. Empty (the default): no stop.
    std::stop_token stop{};
    /// Measured from the moment the operation is awaited; covers the whole operation,
    /// including the time it waits behind other operations on the same socket and the
    /// retries inside read_exact / write_all. Zero or negative: already due.
    std::optional<std::chrono::nanoseconds> timeout{};
};

}  // namespace ringsock
