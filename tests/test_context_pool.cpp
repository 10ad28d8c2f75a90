// Tests for the ring-per-thread pool: post() and spawn_on() from any thread (storms
// between rings and from plain threads, order, exactly-once), shutdown with operations
// in flight on every ring, exceptions reaching join(), posts to a stopping pool, and
// spreading accepted connections over the rings with serve() / hand_off(), including
// hand-offs that race the client's close.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/leak_guard.hpp"

namespace {

using namespace std::chrono_literals;
using namespace ringsock;
using ringsock::test::fd_leak_guard;

// Polls `pred` until it holds or 10 s pass (a hang fails the CHECK instead of the run).
bool eventually(const std::function<bool()>& pred) {
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > until) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

// Counts live instances across threads (frames on different rings make and drop them).
struct alive_count {
    static inline std::atomic<int> alive{0};
    alive_count() noexcept { alive.fetch_add(1); }
    alive_count(const alive_count&) noexcept { alive.fetch_add(1); }
    ~alive_count() { alive.fetch_sub(1); }
};

// A listener on ring 0 of `pool` serving with serve(): made on that ring's thread, and
// closed there by stop() (before the pool stops).
template <class Handler>
struct pool_listener {
    context_pool& pool;
    std::unique_ptr<acceptor> listener;

    pool_listener(context_pool& p, const endpoint& ep, Handler handler, distribution how = distribution::round_robin)
        : pool(p) {
        std::promise<void> listening;
        post(pool[0], [&] {
            auto a = acceptor::listen(pool[0], ep);
            if (a) listener = std::make_unique<acceptor>(std::move(*a));
            if (listener) pool[0].spawn(serve(*listener, pool, handler, how));
            listening.set_value();
        });
        listening.get_future().get();
    }
    void stop() {
        std::promise<void> closed;
        post(pool[0], [&] {
            listener.reset();
            closed.set_value();
        });
        closed.get_future().get();
    }
};

}  // namespace

TEST_CASE("pool: every ring runs on its own thread and the kernel has MSG_RING for waking them", "[pool]") {
    fd_leak_guard guard;
    context_pool pool(2);
    REQUIRE(pool.size() == 2);
    std::promise<std::thread::id> a, b;
    post(pool[0], [&] { a.set_value(std::this_thread::get_id()); });
    post(pool[1], [&] { b.set_value(std::this_thread::get_id()); });
    const auto ta = a.get_future().get();
    const auto tb = b.get_future().get();
    CHECK(ta != tb);
    CHECK(ta != std::this_thread::get_id());
    CHECK(pool[0].features().msg_ring);
    pool.stop();
    pool.join();
}

TEST_CASE("pool: posts from one thread run in order and exactly once", "[pool]") {
    fd_leak_guard guard;
    context_pool pool(2);
    constexpr int n = 20000;
    std::vector<int> seen;  // touched only on ring 0's thread
    std::atomic<bool> done{false};
    for (int i = 0; i < n; ++i) post(pool[0], [&seen, i] { seen.push_back(i); });
    post(pool[0], [&] { done = true; });
    CHECK(eventually([&] { return done.load(); }));
    pool.stop();
    pool.join();
    REQUIRE(seen.size() == n);
    bool in_order = true;
    for (int i = 0; i < n; ++i) in_order = in_order && seen[static_cast<std::size_t>(i)] == i;
    CHECK(in_order);
}

TEST_CASE("pool: a storm of posts between rings and from plain threads loses nothing", "[pool]") {
    fd_leak_guard guard;
    // Both wake paths: MSG_RING (from the rings and ringless from plain threads), and the
    // eventfd that kernels without MSG_RING use.
    const bool use_msg_ring = GENERATE(true, false);
    io_context::options opts;
    opts.msg_ring = use_msg_ring;
    context_pool pool(2, opts);
    CHECK(pool[0].features().msg_ring == use_msg_ring);
    constexpr int per_sender = 20000;
    std::atomic<long> ran{0};
    // Each ring posts to the other (MSG_RING through its own ring), while two plain
    // threads post to both (ringless MSG_RING or eventfd).
    for (std::size_t r = 0; r < 2; ++r) {
        post(pool[r], [&pool, &ran, r] {
            for (int i = 0; i < per_sender; ++i) post(pool[1 - r], [&ran] { ran.fetch_add(1); });
        });
    }
    std::vector<std::thread> senders;
    for (int t = 0; t < 2; ++t)
        senders.emplace_back([&pool, &ran, t] {
            for (int i = 0; i < per_sender; ++i) post(pool[static_cast<std::size_t>((i + t) % 2)], [&ran] { ran.fetch_add(1); });
        });
    for (auto& s : senders) s.join();
    CHECK(eventually([&] { return ran.load() == 4L * per_sender; }));
    pool.stop();
    pool.join();
    CHECK(ran.load() == 4L * per_sender);
}

TEST_CASE("pool: spawn_on from another ring starts the task on the target's thread", "[pool]") {
    fd_leak_guard guard;
    context_pool pool(2);
    std::promise<bool> result;
    auto child = [](io_context& here, std::promise<bool>& out) -> task<void> {
        auto slept = co_await sleep_for(here, 1ms);
        out.set_value(slept.has_value() && here.on_loop_thread());
    };
    post(pool[0], [&] { spawn_on(pool[1], child(pool[1], result)); });
    CHECK(result.get_future().get());
    pool.stop();
    pool.join();
}

TEST_CASE("pool: shutting down with reads, timers and connects in flight on every ring leaks nothing", "[pool]") {
    fd_leak_guard guard;
    alive_count::alive = 0;
    {
        context_pool pool(2);
        std::atomic<int> started{0};
        auto reader = [](io_context& ctx, std::atomic<int>& st) -> task<void> {
            alive_count c;
            auto p = stream_socket::pair(ctx);
            if (!p) co_return;
            std::array<char, 64> buf{};
            st.fetch_add(1);
            (void)co_await p->first.read_some(buf);  // never answered
        };
        auto sleeper = [](io_context& ctx, std::atomic<int>& st) -> task<void> {
            alive_count c;
            st.fetch_add(1);
            (void)co_await sleep_for(ctx, 1h);
        };
        for (std::size_t r = 0; r < pool.size(); ++r)
            for (int i = 0; i < 50; ++i) {
                spawn_on(pool[r], reader(pool[r], started));
                spawn_on(pool[r], sleeper(pool[r], started));
            }
        CHECK(eventually([&] { return started.load() == 200; }));
        CHECK(alive_count::alive == 200);
        pool.stop();
        pool.join();
    }
    CHECK(alive_count::alive == 0);  // every frame destroyed, none resumed
}

TEST_CASE("pool: an exception escaping a task on one ring stops the pool and reaches join()", "[pool]") {
    fd_leak_guard guard;
    context_pool pool(2);
    auto thrower = []() -> task<void> {
        throw std::runtime_error("boom from ring 1");
        co_return;
    };
    spawn_on(pool[1], thrower());
    CHECK(eventually([&] { return pool.stopping(); }));
    CHECK_THROWS_WITH(pool.join(), "boom from ring 1");
}

TEST_CASE("pool: work posted to a stopping pool is destroyed without running", "[pool]") {
    fd_leak_guard guard;
    alive_count::alive = 0;
    std::atomic<int> ran{0};
    {
        context_pool pool(1);
        // Block the ring so the posts below wait in its inbox while it stops.
        std::promise<void> release;
        auto released = release.get_future().share();
        post(pool[0], [released] { released.wait(); });
        for (int i = 0; i < 100; ++i) post(pool[0], [&ran, c = std::make_shared<alive_count>()] { ran.fetch_add(1); });
        pool.stop();
        release.set_value();
        pool.join();
        // Stop makes the loop return at the end of the current resumption; the posts taken in
        // the same turn may still run: none ran twice, and every node was freed either way.
        CHECK(ran.load() <= 100);
    }
    CHECK(alive_count::alive == 0);
}

TEST_CASE("pool: serve() spreads connections round robin over the rings", "[pool][hand_off]") {
    fd_leak_guard guard;
    const endpoint ep = ringsock::test::unique_abstract("pool-serve");
    context_pool pool(2);
    std::atomic<int> on_ring[2] = {0, 0};
    auto handler = [&pool, &on_ring](stream_socket s) -> task<void> {
        const std::size_t i = pool.index_of(s.context());
        if (i < 2 && s.context().on_loop_thread()) on_ring[i].fetch_add(1);
        std::array<char, 16> buf{};
        for (;;) {
            auto n = co_await s.read_some(buf);
            if (!n || *n == 0) co_return;
            auto w = co_await s.write_all(std::span(buf.data(), *n));
            if (!w) co_return;
        }
    };
    pool_listener served(pool, ep, handler);
    REQUIRE(served.listener);
    std::vector<unique_fd> clients;
    for (int i = 0; i < 64; ++i) {
        clients.push_back(ringsock::test::raw_connect(ep));
        REQUIRE(clients.back().valid());
        char c = 'x';
        REQUIRE(::send(clients.back().get(), &c, 1, MSG_NOSIGNAL) == 1);
        char back = 0;
        REQUIRE(::recv(clients.back().get(), &back, 1, 0) == 1);  // echoed by its ring
        CHECK(back == 'x');
    }
    CHECK(on_ring[0].load() == 32);
    CHECK(on_ring[1].load() == 32);
    CHECK(eventually([&] { return pool.load(0) == 32 && pool.load(1) == 32; }));
    clients.clear();
    CHECK(eventually([&] { return pool.load(0) == 0 && pool.load(1) == 0; }));
    served.stop();
    pool.stop();
    pool.join();
}

TEST_CASE("pool: least_loaded sends new connections to the ring holding fewer", "[pool][hand_off]") {
    fd_leak_guard guard;
    const endpoint ep = ringsock::test::unique_abstract("pool-least");
    context_pool pool(2);
    auto handler = [](stream_socket s) -> task<void> {
        std::array<char, 16> buf{};
        auto n = co_await s.read_some(buf);  // until the client closes
        (void)n;
    };
    pool_listener served(pool, ep, handler, distribution::least_loaded);
    REQUIRE(served.listener);
    std::vector<unique_fd> clients;
    for (int i = 0; i < 10; ++i) {
        clients.push_back(ringsock::test::raw_connect(ep));
        CHECK(eventually([&] { return pool.load(0) + pool.load(1) == i + 1; }));
    }
    CHECK(pool.load(0) == 5);
    CHECK(pool.load(1) == 5);
    // Close the five of ring 0 (they were every second connection, starting with the
    // first): the next five all go to ring 0.
    for (int i = 0; i < 10; i += 2) clients[static_cast<std::size_t>(i)].reset();
    CHECK(eventually([&] { return pool.load(0) + pool.load(1) == 5; }));
    CHECK(pool.load(0) == 0);
    for (int i = 0; i < 5; ++i) {
        clients.push_back(ringsock::test::raw_connect(ep));
        CHECK(eventually([&] { return pool.load(0) + pool.load(1) == 6 + i; }));
    }
    CHECK(pool.load(0) == 5);  // all five new ones went to the emptied ring
    CHECK(pool.load(1) == 5);
    clients.clear();
    served.stop();
    pool.stop();
    pool.join();
}

TEST_CASE("pool: hand-offs racing the client's close neither leak nor hang", "[pool][hand_off]") {
    fd_leak_guard guard;
    const endpoint ep = ringsock::test::unique_abstract("pool-race");
    context_pool pool(2);
    std::atomic<int> finished{0};
    auto handler = [&finished](stream_socket s) -> task<void> {
        std::array<char, 256> buf{};
        for (;;) {
            auto n = co_await s.read_some(buf);
            if (!n || *n == 0) break;
            auto w = co_await s.write_all(std::span(buf.data(), *n));
            if (!w) break;
        }
        finished.fetch_add(1);
    };
    pool_listener served(pool, ep, handler);
    REQUIRE(served.listener);
    constexpr int rounds = 500;
    for (int i = 0; i < rounds; ++i) {
        unique_fd c = ringsock::test::raw_connect(ep);
        REQUIRE(c.valid());
        if (i % 3 == 1) (void)::send(c.get(), "abc", 3, MSG_NOSIGNAL);
        if (i % 3 == 2) ::shutdown(c.get(), SHUT_WR);
        // and close at once: the server side may still be on its way to its ring
    }
    CHECK(eventually([&] { return finished.load() == rounds; }));
    CHECK(eventually([&] { return pool.load(0) == 0 && pool.load(1) == 0; }));
    served.stop();
    pool.stop();
    pool.join();
}

TEST_CASE("post: a plain io_context run by another thread takes posts from this one", "[post]") {
    fd_leak_guard guard;
    std::promise<io_context*> made;
    std::atomic<bool> quit{false};
    std::atomic<int> ran{0};
    std::thread loop([&] {
        io_context ctx;
        made.set_value(&ctx);
        auto keep = [](io_context& c, std::atomic<bool>& q) -> task<void> {
            while (!q.load()) (void)co_await sleep_for(c, 1ms);
        };
        ctx.sync_wait(keep(ctx, quit));
    });
    io_context* ctx = made.get_future().get();
    for (int i = 0; i < 1000; ++i) post(*ctx, [&ran] { ran.fetch_add(1); });
    CHECK(eventually([&] { return ran.load() == 1000; }));
    post(*ctx, [&quit] { quit = true; });
    loop.join();
}
