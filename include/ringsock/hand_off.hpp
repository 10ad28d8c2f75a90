// Moving connections between rings: hand_off() moves one socket to another io_context
// and starts its handler there; serve() accepts on one ring and spreads the
// connections over a context_pool. A socket moves as a plain descriptor: the source
// releases it, the target adopts it (and registers it in its own file table once it
// is busy enough, see io_context::options::register_after).
#pragma once

#include <atomic>
#include <chrono>
#include <concepts>
#include <stop_token>
#include <system_error>
#include <utility>

#include "context_pool.hpp"
#include "io_context.hpp"
#include "post.hpp"
#include "task.hpp"
#include "timer.hpp"
#include "unique_fd.hpp"

namespace ringsock {

/// A socket type that can be rebuilt on another context from its descriptor.
template <class S>
concept movable_socket = std::constructible_from<S, io_context&, unique_fd> && requires(S s) {
    { s.release() } -> std::same_as<unique_fd>;
    { s.context() } -> std::same_as<io_context&>;
};

namespace detail {

/// Counts a connection against its ring for context_pool::least_loaded() while alive.
class load_ticket {
public:
    explicit load_ticket(std::atomic<long>* c) noexcept : c_(c) {
        if (c_) c_->fetch_add(1, std::memory_order_relaxed);
    }
    load_ticket(load_ticket&& o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
    load_ticket(const load_ticket&) = delete;
    load_ticket& operator=(const load_ticket&) = delete;
    load_ticket& operator=(load_ticket&&) = delete;
    ~load_ticket() {
        if (c_) c_->fetch_sub(1, std::memory_order_relaxed);
    }

private:
    std::atomic<long>* c_;
};

// The frame is made on the handing thread and first resumed on the target's: every
// argument is owned by value, so a frame destroyed unstarted closes the descriptor.
template <class Socket, class Handler>
task<void> adopt(io_context& target, unique_fd fd, Handler handler, [[maybe_unused]] load_ticket ticket) {
    co_await handler(Socket(target, std::move(fd)));
}

}  // namespace detail

/// Moves `s` to `target` and runs `handler(Socket)` (returning task<void>) there,
/// detached. Safe from `s`'s loop thread. An operation still on `s` ends with
/// operation_canceled (as by release()), so hand off a socket that is idle. If the
/// target shuts down before starting the handler, the socket is closed. `load`, if
/// given, counts the connection while its handler runs (context_pool::least_loaded).
template <movable_socket Socket, class Handler>
void hand_off(Socket&& s, io_context& target, Handler handler, std::atomic<long>* load = nullptr) {
    if (&s.context() == &target && target.on_loop_thread()) {
        target.spawn(detail::adopt<Socket>(target, s.release(), std::move(handler), detail::load_ticket(load)));
        return;
    }
    spawn_on(target, detail::adopt<Socket>(target, s.release(), std::move(handler), detail::load_ticket(load)));
}

/// How serve() picks the ring for each connection.
enum class distribution {
    round_robin,   ///< the rings in turn
    least_loaded,  ///< the ring with the fewest live connections from this pool
};

/// Accepts on `listener` (which lives on one of `pool`'s rings; run serve() there) and
/// hands each connection to a ring of the pool, where `handler(Socket)` runs. Returns
/// when the listener is closed or `stop` is requested. Out of descriptors
/// (EMFILE/ENFILE) it backs off, 1 ms doubling up to 100 ms, and keeps serving the
/// connections it has; ECONNABORTED (a client that gave up in the backlog) is skipped.
/// Any other accept error is thrown as std::system_error.
template <class Acceptor, class Handler>
task<void> serve(Acceptor& listener, context_pool& pool, Handler handler,
                 distribution how = distribution::round_robin, std::stop_token stop = {}) {
    auto backoff = std::chrono::milliseconds(1);
    for (;;) {
        auto conn = co_await listener.accept(op_limits(stop));
        if (!conn) {
            const std::error_code ec = conn.error();
            if (ec == std::errc::operation_canceled || ec == std::errc::bad_file_descriptor) co_return;
            if (ec == std::errc::too_many_files_open || ec == std::errc::too_many_files_open_in_system) {
                auto slept = co_await sleep_for(listener.context(), backoff, stop);
                if (!slept) co_return;
                backoff = std::min(backoff * 2, std::chrono::milliseconds(100));
                continue;
            }
            if (ec == std::errc::connection_aborted) continue;
            throw std::system_error(ec, std::string("ringsock::serve: ") + conn.what());
        }
        backoff = std::chrono::milliseconds(1);
        io_context& target = how == distribution::least_loaded ? pool.least_loaded() : pool.next();
        hand_off(std::move(*conn), target, handler, pool.load_counter(target));
    }
}

}  // namespace ringsock
