// Helpers for tests that drive the loop turn by turn and put operations into exact
// states: run turns until a condition holds (with a bound, so a defect fails instead of
// hanging), fill a socket's send path so sends block, wait for CQEs to be posted
// without letting the library reap them, and check what a peer received.
#pragma once

#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <liburing.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <thread>

namespace ringsock::test {

using clock_type = std::chrono::steady_clock;

inline long long ms_since(clock_type::time_point t0) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0).count();
}

/// Runs non-blocking loop turns (1 ms apart) until `done()` or `limit` passed. Returns
/// whether `done()` became true. Never blocks forever, so a defect fails the test.
inline bool pump(io_context& ctx, const std::function<bool()>& done,
                 std::chrono::milliseconds limit = std::chrono::milliseconds(3000)) {
    const auto t0 = clock_type::now();
    for (;;) {
        ctx.poll();
        if (done()) return true;
        if (clock_type::now() - t0 > limit) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

/// Runs turns for `d` regardless.
inline void pump_for(io_context& ctx, std::chrono::milliseconds d) {
    (void)pump(ctx, [] { return false; }, d);
}

/// Shrinks `fd`'s send buffer and fills the path to its peer with raw non-blocking
/// sends of 'f' until EAGAIN, so the next send through the ring waits. Returns the
/// number of bytes queued.
inline std::size_t fill_send_path(int fd, int sndbuf = 4096) {
    (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    char chunk[256];
    for (char& c : chunk) c = 'f';
    std::size_t total = 0;
    for (int i = 0; i < 1'000'000; ++i) {
        ssize_t n = ::send(fd, chunk, sizeof chunk, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            REQUIRE((errno == EAGAIN || errno == EWOULDBLOCK));
            return total;
        }
        total += static_cast<std::size_t>(n);
    }
    FAIL("the send path never filled");
    return total;
}

/// Everything queued on `fd` right now (raw, non-blocking). Descriptors riding on the
/// bytes are discarded by the kernel (plain recv).
inline std::string drain_fd(int fd) {
    std::string out;
    char buf[65536];
    for (;;) {
        ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) break;
        out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
}

/// Waits up to `limit` for `fd` to report end of stream (recv returns 0), draining
/// whatever bytes come first into `got`. False on timeout.
inline bool wait_eof(int fd, std::string& got, std::chrono::milliseconds limit = std::chrono::milliseconds(2000)) {
    const auto t0 = clock_type::now();
    char buf[65536];
    while (clock_type::now() - t0 < limit) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 10) <= 0) continue;
        ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0) return true;
        if (n > 0) got.append(buf, static_cast<std::size_t>(n));
        else if (errno != EAGAIN && errno != EWOULDBLOCK) return true;  // ECONNRESET also ends it
    }
    return false;
}

/// Runs the ring's task-work so completions are posted to the CQ, without the library
/// reaping them, until at least `n` CQEs wait there (or `limit` passed).
inline bool wait_cqes_posted(io_context& ctx, unsigned n,
                             std::chrono::milliseconds limit = std::chrono::milliseconds(2000)) {
    const auto t0 = clock_type::now();
    io_uring* ring = ctx.native_handle();
    for (;;) {
        (void)io_uring_get_events(ring);
        if (io_uring_cq_ready(ring) >= n) return true;
        if (clock_type::now() - t0 > limit) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

/// True when every byte of `s` is one a test sends: lowercase letters (never the
/// scribble pattern of freed memory).
inline bool only_real_bytes(const std::string& s) {
    for (unsigned char c : s) {
        if (c < 'a' || c > 'z') return false;
    }
    return true;
}

inline bool canceled(const std::error_code& ec) { return ec == std::errc::operation_canceled; }
inline bool timed_out(const std::error_code& ec) { return ec == std::errc::timed_out; }

/// Stops the loop in the turn where a receive's completion has been reaped (its data
/// has left the socket) but before the receiver runs: spawned before the receive, it
/// sits ahead of it in the ready list. Sets `consumed` when that happened.
inline task<void> stop_when_consumed(io_context& ctx, int receiving_fd, bool& consumed) {
    for (int i = 0; i < 1000; ++i) {
        co_await ctx.yield();
        int pending = -1;
        if (::ioctl(receiving_fd, FIONREAD, &pending) == 0 && pending == 0) {
            consumed = true;
            ctx.stop();
            co_return;
        }
    }
}

}  // namespace ringsock::test
