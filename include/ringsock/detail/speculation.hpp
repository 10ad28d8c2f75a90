// Whether a direct non-blocking syscall is worth trying before going to the ring, per
// socket direction. A hit (the data or the room was there) keeps trying; each miss
// (EAGAIN) doubles how many operations skip the attempt, up to 64, so a direction
// that never has data ready wastes at most one syscall in 65 operations.
#pragma once

#include <cstdint>

namespace ringsock::detail {

class speculation {
public:
    bool worth_trying() noexcept {
        if (skip_ == 0) return true;
        --skip_;
        return false;
    }
    void hit() noexcept { backoff_ = 0; }
    void missed() noexcept {
        backoff_ = static_cast<std::uint8_t>(backoff_ >= 32 ? 64 : backoff_ * 2 + 1);
        skip_ = backoff_;
    }

private:
    std::uint8_t backoff_ = 0;
    std::uint8_t skip_ = 0;
};

}  // namespace ringsock::detail
