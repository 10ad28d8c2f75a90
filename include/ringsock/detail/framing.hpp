// Machinery of buffered_stream.hpp: big-endian length fields, and one time limit
// shared by the several reads one framed read may take.
#pragma once

#include <chrono>
#include <concepts>
#include <cstddef>
#include <optional>
#include <span>
#include <stop_token>
#include <utility>

#include "../op_limits.hpp"

namespace ringsock::detail {

/// `v` as sizeof(Len) bytes, most significant first.
template <std::unsigned_integral Len>
void put_big_endian(std::span<std::byte, sizeof(Len)> out, Len v) noexcept {
    for (std::size_t i = sizeof(Len); i-- > 0;) {
        out[i] = static_cast<std::byte>(v & 0xffu);
        v = static_cast<Len>(v >> 8);
    }
}

/// The value of sizeof(Len) bytes, most significant first.
template <std::unsigned_integral Len>
Len get_big_endian(const std::byte* in) noexcept {
    Len v = 0;
    for (std::size_t i = 0; i < sizeof(Len); ++i) v = static_cast<Len>((v << 8) | static_cast<Len>(in[i]));
    return v;
}

/// The op_limits of one framed read turned into the limits of each read it makes: the
/// same stop token, and what is left of the time limit measured from the start.
class shared_deadline {
public:
    explicit shared_deadline(const op_limits& lim) : stop_(lim.stop) {
        if (lim.timeout && *lim.timeout < op_limits::no_limit)
            until_ = std::chrono::steady_clock::now() + *lim.timeout;
    }
    /// The limits for the next read. An expired deadline gives a zero (already due)
    /// time limit, so the read reports timed_out the way the stream reports it.
    op_limits next() const {
        if (!until_) return op_limits(stop_);
        return op_limits(stop_, *until_ - std::chrono::steady_clock::now());
    }

private:
    std::stop_token stop_;
    std::optional<std::chrono::steady_clock::time_point> until_;
};

}  // namespace ringsock::detail
