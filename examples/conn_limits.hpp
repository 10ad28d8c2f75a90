// conn_limits.hpp: the connection limits the example servers share (issue 13).
//
//  - An idle deadline per connection, on a ringsock::timer that the handler resets on
//    activity; when it expires the connection's reads and writes are cancelled.
//  - A cap on connections per process (counted atomically across rings, from accept()
//    until the handler is gone). A connection that arrives at the cap makes its ring
//    close the connection that has been quiet longest (an idle or half-sent client), so
//    a flood of idle or incomplete clients cannot deny service to a normal one.
//  - An accept loop that backs off on EMFILE/ENFILE and keeps serving the connections it
//    has, and hands every connection to a ring picked by the caller.
//
// The default cap is the descriptor limit (RLIMIT_NOFILE) minus a reserve for the
// server's own descriptors, so the cap is reached (and old connections shed) before
// accept() runs out of descriptors.
#pragma once

#include <ringsock/ringsock.hpp>

#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <future>
#include <initializer_list>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <utility>
#include <vector>

namespace limits {

using namespace std::chrono_literals;

/// Descriptors kept free for everything that is not a counted connection: rings,
/// signalfd, listener, stdio, files a request opens, connections being closed to make
/// room, and the acceptor's own queue (its multishot accept takes up to 64 connections
/// from the backlog before accept() hands them out, ringsock::detail::accept_engine).
constexpr long descriptor_reserve = 160;

/// RLIMIT_NOFILE minus the reserve (at least 1; 65536 when unlimited).
inline long default_max_connections() {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return 65536;
    return std::clamp(static_cast<long>(rl.rlim_cur) - descriptor_reserve, 1L, 1L << 20);
}

/// Per process, shared by every ring.
struct process_limits {
    long max_connections = default_max_connections();
    std::chrono::milliseconds idle_timeout = 60s;
    std::atomic<long> live{0};    // accepted and not yet gone (handed-off ones included)
    std::atomic<long> active{0};  // admitted and not yet stopped (what the cap counts)
    std::atomic<long> shed{0};    // closed to make room for a newer connection
};

/// The listen backlog the servers ask for. Small on purpose: the acceptor's multishot
/// ACCEPT takes every connection waiting in the backlog into the descriptor table as
/// soon as it is armed, however slowly accept() is called (its 64-entry queue only
/// stops it after the fact), so the backlog bounds that burst. Clients beyond it wait
/// in connect() (or get EAGAIN) until the server has made room.
constexpr int listen_backlog = 64;

/// The accept loop waits while this many connections beyond the cap are still open
/// (being closed to make room, or handed to a ring that has not started them yet), so
/// the rings catch up instead of accept() running into EMFILE.
constexpr long accept_overshoot = 32;

/// One unit of process_limits::live, held from accept() until the handler's frame goes
/// (also when a hand-off is dropped unstarted at shutdown).
class ticket {
public:
    explicit ticket(process_limits& l) noexcept : l_(&l) { l_->live.fetch_add(1, std::memory_order_relaxed); }
    ticket(ticket&& o) noexcept : l_(std::exchange(o.l_, nullptr)) {}
    ticket(const ticket&) = delete;
    ticket& operator=(const ticket&) = delete;
    ticket& operator=(ticket&&) = delete;
    ~ticket() {
        if (l_) l_->live.fetch_sub(1, std::memory_order_relaxed);
    }

private:
    process_limits* l_;
};

class connection;

/// The live connections of one ring, least recently active first. Only ever used on
/// that ring's thread.
class ring_connections {
public:
    ring_connections(ringsock::io_context& ctx, process_limits& l) noexcept : ctx_(&ctx), limits_(&l) {}
    ring_connections(const ring_connections&) = delete;
    ring_connections& operator=(const ring_connections&) = delete;

    ringsock::io_context& context() const noexcept { return *ctx_; }
    process_limits& limits() const noexcept { return *limits_; }
    std::size_t size() const noexcept { return size_; }
    bool stopping() const noexcept { return stopping_; }

    /// Cancels every connection's I/O; connections that start later end at once.
    inline void stop_all() noexcept;
    /// Closes the least recently active connection other than `except`; false if none.
    inline bool shed_oldest(const connection* except) noexcept;

private:
    friend class connection;
    ringsock::io_context* ctx_;
    process_limits* limits_;
    connection* head_ = nullptr;  // least recently active
    connection* tail_ = nullptr;
    std::size_t size_ = 0;
    bool stopping_ = false;
};

/// One connection's place in its ring's list, its idle timer and the stop source its
/// I/O uses. Lives in the connection handler's frame, on the ring's thread.
class connection {
public:
    /// Joins the ring's list. At the cap, sheds the ring's longest-quiet connection; if
    /// there is none (or the ring is stopping), admitted() is false: close at once.
    explicit connection(ring_connections& r) : ring_(&r), idle_(r.context()) {
        link_back();
        const long before = r.limits().active.fetch_add(1, std::memory_order_relaxed);
        if (r.stopping()) admitted_ = false;
        else if (before >= r.limits().max_connections) admitted_ = r.shed_oldest(this);
        if (!admitted_) stop();
    }
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    ~connection() { stop(); }

    bool admitted() const noexcept { return admitted_; }
    /// The token for this connection's I/O: stopped on idle timeout, shedding, shutdown.
    std::stop_token token() const noexcept { return stop_.get_token(); }
    /// The token for writes that must finish at shutdown (a response): stopped when the
    /// idle deadline passes or the connection is shed, not by stop_all(). Once stopped
    /// it stays stopped.
    std::stop_token deadline_token() const noexcept { return deadline_.get_token(); }
    /// Activity: the idle deadline starts again and the connection goes to the back of
    /// the shedding order.
    void touch() noexcept {
        idle_.expires_after(ring_->limits().idle_timeout);
        if (linked_ && ring_->tail_ != this) {
            unlink();
            link_back();
        }
    }
    /// Why the I/O was stopped (false, false: shutdown or not stopped).
    bool idle_expired() const noexcept { return expired_; }
    bool was_shed() const noexcept { return shed_; }
    ringsock::io_context& context() const noexcept { return ring_->context(); }

    /// Runs `body` (this connection's handler) with the idle watchdog beside it: when
    /// the timer expires, the connection's I/O is cancelled. Returns when `body` has.
    ringsock::task<void> run(ringsock::task<void> body) {
        touch();
        ringsock::scope dog(context());
        dog.spawn([this](std::stop_token st) -> ringsock::task<void> {
            if (co_await idle_.wait(st)) {
                expired_ = true;
                deadline_.request_stop();
                stop();
            }
        });
        co_await std::move(body);
        dog.request_stop();
        co_await dog.join();
    }

private:
    friend class ring_connections;
    void stop() noexcept {
        if (!linked_) return;  // already stopped
        unlink();
        ring_->limits().active.fetch_sub(1, std::memory_order_relaxed);
        stop_.request_stop();
    }
    void link_back() noexcept {
        prev_ = ring_->tail_;
        next_ = nullptr;
        (prev_ ? prev_->next_ : ring_->head_) = this;
        ring_->tail_ = this;
        ++ring_->size_;
        linked_ = true;
    }
    void unlink() noexcept {
        if (!linked_) return;
        (prev_ ? prev_->next_ : ring_->head_) = next_;
        (next_ ? next_->prev_ : ring_->tail_) = prev_;
        prev_ = next_ = nullptr;
        --ring_->size_;
        linked_ = false;
    }

    ring_connections* ring_;
    ringsock::timer idle_;
    std::stop_source stop_;
    std::stop_source deadline_;
    connection* prev_ = nullptr;
    connection* next_ = nullptr;
    bool linked_ = false;
    bool admitted_ = true;
    bool expired_ = false;
    bool shed_ = false;
};

inline void ring_connections::stop_all() noexcept {
    stopping_ = true;
    while (head_) head_->stop();
}

inline bool ring_connections::shed_oldest(const connection* except) noexcept {
    for (connection* c = head_; c; c = c->next_) {
        if (c == except) continue;
        c->shed_ = true;
        c->deadline_.request_stop();
        c->stop();
        limits_->shed.fetch_add(1, std::memory_order_relaxed);
        return true;
    }
    return false;
}

/// Accepts until `stop` or the listener closes. Each connection counts against `lim`
/// from here on, goes to the ring `pick()` returns, and runs `handler(stream_socket,
/// ticket)` there. Out of descriptors it backs off (1 ms doubling to 50 ms, logged once
/// per episode) and the connections it has keep being served.
template <class Pick, class Handler>
ringsock::task<void> accept_loop(ringsock::acceptor& acc, process_limits& lim, Pick pick, Handler handler,
                                 std::stop_token stop, const char* name) {
    auto backoff = 1ms;
    bool starved = false;
    for (;;) {
        while (lim.live.load(std::memory_order_relaxed) >= lim.max_connections + accept_overshoot) {
            if (!co_await ringsock::sleep_for(acc.context(), 1ms, stop)) co_return;
        }
        auto conn = co_await acc.accept(stop);
        if (conn) {
            if (starved) std::fprintf(stderr, "%s: accepting again\n", name);
            starved = false;
            backoff = 1ms;
            ringsock::io_context& target = pick();
            ringsock::hand_off(std::move(*conn), target,
                               [handler, t = ticket(lim)](ringsock::stream_socket s) mutable {
                                   return handler(std::move(s), std::move(t));
                               });
            continue;
        }
        const std::error_code ec = conn.error();
        if (ec == std::errc::operation_canceled || ec == std::errc::bad_file_descriptor) co_return;
        if (ec == std::errc::too_many_files_open || ec == std::errc::too_many_files_open_in_system) {
            if (!starved)
                std::fprintf(stderr, "%s: accept: %s; backing off (%ld connections)\n", name, ec.message().c_str(),
                             lim.live.load(std::memory_order_relaxed));
            starved = true;
            if (!co_await ringsock::sleep_for(acc.context(), backoff, stop)) co_return;
            backoff = std::min(backoff * 2, std::chrono::milliseconds(50));
            continue;
        }
        if (ec == std::errc::connection_aborted) continue;
        std::fprintf(stderr, "%s: accept: %s\n", name, ec.message().c_str());
        co_return;
    }
}

/// Parses a positive count or number of seconds; false if `s` is not one.
inline bool parse_positive(const char* s, double& out) {
    char* end = nullptr;
    const double v = std::strtod(s, &end);
    if (end == s || *end != '\0' || !(v > 0) || v > 1e12) return false;
    out = v;
    return true;
}

/// A server's per-ring state on a context_pool: each ring's connection list and, if
/// asked for, its buffer_ring, created and destroyed on that ring's own thread.
/// Construct it from a thread outside the pool; call close() there too, once every
/// connection is gone and before the pool stops.
class ring_set {
public:
    /// Blocks until every ring has its slot. `buffers` == 0: no buffer_ring. Throws
    /// what a ring threw (then no slot is left).
    ring_set(ringsock::context_pool& pool, process_limits& lim, unsigned buffers = 0, std::size_t buffer_size = 0)
        : pool_(&pool), slots_(pool.size()) {
        try {
            on_each([&](std::size_t i) {
                slots_[i].conns.emplace(pool[i], lim);
                if (buffers) slots_[i].buffers.emplace(pool[i], buffers, buffer_size);
            });
        } catch (...) {
            close();
            throw;
        }
    }
    ring_set(const ring_set&) = delete;
    ring_set& operator=(const ring_set&) = delete;

    /// The slot of `ctx`, one of the pool's rings; use it on that ring's thread.
    ring_connections& connections(const ringsock::io_context& ctx) { return *slots_[pool_->index_of(ctx)].conns; }
    ringsock::buffer_ring& buffers(const ringsock::io_context& ctx) { return *slots_[pool_->index_of(ctx)].buffers; }

    /// Cancels every connection on every ring (from any thread; runs on the rings).
    void stop_all() {
        for (std::size_t i = 0; i < slots_.size(); ++i)
            ringsock::post((*pool_)[i], [this, i] { slots_[i].conns->stop_all(); });
    }
    /// Destroys every slot on its ring and waits for that (blocking: not on a ring).
    void close() {
        on_each([&](std::size_t i) {
            slots_[i].buffers.reset();
            slots_[i].conns.reset();
        });
    }

private:
    struct slot {
        std::optional<ring_connections> conns;
        std::optional<ringsock::buffer_ring> buffers;
    };
    template <class F>
    void on_each(F fn) {
        std::latch done(static_cast<std::ptrdiff_t>(slots_.size()));
        std::mutex mu;
        std::exception_ptr error;
        for (std::size_t i = 0; i < slots_.size(); ++i) {
            ringsock::post((*pool_)[i], [&, i] {
                try {
                    fn(i);
                } catch (...) {
                    std::lock_guard lock(mu);
                    if (!error) error = std::current_exception();
                }
                done.count_down();
            });
        }
        done.wait();
        if (error) std::rethrow_exception(error);
    }

    ringsock::context_pool* pool_;
    std::vector<slot> slots_;
};

/// Blocks `signals` in the calling thread, so threads started later inherit the mask and
/// none is delivered the default way before a signal_set takes them.
inline void block_signals(std::initializer_list<int> signals) {
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : signals) sigaddset(&mask, s);
    ::pthread_sigmask(SIG_BLOCK, &mask, nullptr);
}

/// Runs `start(result)` (a task that sets the std::promise<int> it is given) on ring 0,
/// waits for the exit code, then destroys the per-ring state on its rings and stops the
/// pool. Rethrows what the task set as its exception (after the same cleanup).
template <class Start>
int run_server(ringsock::context_pool& pool, ring_set& rings, Start start) {
    std::promise<int> result;
    auto code = result.get_future();
    ringsock::spawn_on(pool[0], start(result));
    int rc = 1;
    try {
        rc = code.get();
    } catch (...) {
        rings.close();
        throw;
    }
    rings.close();  // every connection is gone: the buffer rings can go, each on its ring
    pool.stop();
    pool.join();
    return rc;
}

}  // namespace limits
