// Hostile tests for the ring-per-thread pool, post()/spawn_on(), hand_off()/serve() and
// buffer_ring: storms while the pool stops, posts that post or stop, posts from loops
// that then stop running, pool teardown with every kind of operation in flight,
// exceptions on several rings, lent buffers abused, a one-buffer ring shared by a
// hundred readers, starved reads cancelled at every moment, and a short soak through
// serve() with random sizes, disconnects and cancellations, byte-exact by checksum.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <random>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/leak_guard.hpp"

namespace {

using namespace std::chrono_literals;
using namespace ringsock;
using ringsock::test::fd_leak_guard;
using ringsock::test::make_pair;
using ringsock::test::raw_send;

// Polls `pred` until it holds or `limit` passes (a hang fails a CHECK, not the run).
bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds limit = 20s) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > until) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

// Live instances across threads (posted functions and frames are dropped on any ring).
struct alive {
    static inline std::atomic<int> count{0};
    alive() noexcept { count.fetch_add(1); }
    alive(const alive&) noexcept { count.fetch_add(1); }
    alive(alive&&) noexcept { count.fetch_add(1); }
    ~alive() { count.fetch_sub(1); }
};

// CPU time this thread has used.
std::chrono::microseconds thread_cpu() {
    rusage ru{};
    ::getrusage(RUSAGE_THREAD, &ru);
    return std::chrono::seconds(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           std::chrono::microseconds(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

}  // namespace

// ---------------------------------------------------------------------------------
// post / spawn_on / context_pool

TEST_CASE("hostile post: a chain of posts to the posting ring itself runs every link", "[pool][post]") {
    fd_leak_guard guard;
    context_pool pool(2);
    std::atomic<int> links{0};
    std::function<void()> link = [&] {
        if (links.fetch_add(1) + 1 < 50) post(pool[0], link);
    };
    post(pool[0], link);  // from this plain thread; every later link from ring 0 itself
    CHECK(eventually([&] { return links.load() == 50; }, 10s));
    pool.stop();
    pool.join();
    CHECK(links.load() == 50);
}

TEST_CASE("hostile post: a posted function posted by its own ring can stop the pool", "[pool][post]") {
    fd_leak_guard guard;
    context_pool pool(2);
    post(pool[0], [&] { post(pool[0], [&] { post(pool[0], [&] { pool.stop(); }); }); });
    CHECK(eventually([&] { return pool.stopping(); }, 10s));
    auto joined = std::async(std::launch::async, [&] { pool.join(); });
    const bool ended = joined.wait_for(10s) == std::future_status::ready;
    CHECK(ended);
    if (!ended) pool[0].stop();  // unstick the ring so the test can end
    joined.get();
}

TEST_CASE("hostile post: a post made by a loop that then stops running still wakes the target", "[pool][post]") {
    fd_leak_guard guard;
    context_pool pool(1);
    io_context mine;
    std::promise<void> ran;
    auto poster = [&]() -> task<void> {
        post(pool[0], [&] { ran.set_value(); });  // the wake rides this loop's next enter...
        co_return;                                 // ...but sync_wait returns right away
    };
    mine.sync_wait(poster());
    auto f = ran.get_future();
    CHECK(f.wait_for(10s) == std::future_status::ready);
    pool.stop();
    pool.join();
}

TEST_CASE("hostile post: plain threads posting and spawning while the pool stops, and after", "[pool][post]") {
    fd_leak_guard guard;
    alive::count = 0;
    std::atomic<long> ran{0};
    {
        context_pool pool(2);
        std::atomic<bool> quit{false};
        std::vector<std::thread> senders;
        for (int t = 0; t < 4; ++t)
            senders.emplace_back([&, t] {
                auto child = [](io_context& ctx, std::atomic<long>& n, alive) -> task<void> {
                    co_await ctx.yield();
                    n.fetch_add(1);
                };
                for (long i = 0; !quit.load(); ++i) {
                    io_context& target = pool[static_cast<std::size_t>((i + t) % 2)];
                    if (i % 3 == 0) spawn_on(target, child(target, ran, alive{}));
                    else post(target, [&ran, a = alive{}] { ran.fetch_add(1); });
                }
            });
        CHECK(eventually([&] { return ran.load() > 2000; }));
        pool.stop();
        pool.join();
        std::this_thread::sleep_for(20ms);  // the senders keep posting to the stopped pool
        quit = true;
        for (auto& s : senders) s.join();
    }
    CHECK(alive::count.load() == 0);  // every posted function and frame ran or was dropped
}

// ---------------------------------------------------------------------------------
// buffer_ring

TEST_CASE("hostile buffer_ring: a starved read on a registered socket waits without spinning", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context::options opts;
    opts.register_after = 1;  // every socket takes a registered-file slot at once
    io_context ctx(opts);
    buffer_ring ring(ctx, 1, 64);
    auto [a, b] = make_pair(ctx);
    auto [c, d] = make_pair(ctx);
    raw_send(b, "held");
    std::string got;
    std::chrono::microseconds cpu{};
    auto run = [&]() -> task<void> {
        for (int i = 0; i < 3; ++i) (void)co_await c.write_some(std::string_view("x"));  // c registered
        auto held = co_await a.read_some(ring);
        REQUIRE(held);
        raw_send(d, "waits");
        auto reader = [&]() -> task<void> {
            auto r = co_await c.read_some(ring, 10s);  // starves until `held` goes back
            if (r) got = std::string(r->chars());
        };
        auto release = [&]() -> task<void> {
            const auto t0 = thread_cpu();
            (void)co_await sleep_for(ctx, 300ms);
            cpu = thread_cpu() - t0;
            held->reset();
        };
        co_await when_all(reader(), release());
    };
    ctx.sync_wait(run());
    CHECK(got == "waits");
    CHECK(cpu < 150ms);  // waiting, not retrying in a loop
    CHECK(ring.lent() == 0);
}

TEST_CASE("hostile pool: exceptions from posted functions and spawned tasks on every ring at once", "[pool]") {
    fd_leak_guard guard;
    alive::count = 0;
    {
        context_pool pool(2);
        std::atomic<int> armed{0};
        std::promise<void> go;
        auto fire = go.get_future().share();
        auto thrower = [](std::shared_future<void> f, alive) -> task<void> {
            f.wait();
            throw std::runtime_error("task");
            co_return;
        };
        for (std::size_t r = 0; r < 2; ++r) {
            post(pool[r], [&armed, fire] {
                armed.fetch_add(1);
                fire.wait();
                throw std::runtime_error("posted");
            });
            spawn_on(pool[r], thrower(fire, alive{}));
            for (int i = 0; i < 20; ++i) post(pool[r], [a = alive{}] {});
        }
        CHECK(eventually([&] { return armed.load() == 2; }));
        go.set_value();
        CHECK(eventually([&] { return pool.stopping(); }));
        bool threw = false;
        try {
            pool.join();
        } catch (const std::runtime_error& e) {
            threw = std::string(e.what()) == "posted" || std::string(e.what()) == "task";
        }
        CHECK(threw);
    }
    CHECK(alive::count.load() == 0);
}

TEST_CASE("hostile pool: destroyed with reads, full-backlog connects, timers and starved lent reads on every ring", "[pool]") {
    fd_leak_guard guard;
    alive::count = 0;
    const endpoint ep = ringsock::test::unique_abstract("hostile-backlog");
    unique_fd listener = ringsock::test::raw_listener(ep, 1);
    auto backlog = ringsock::test::fill_backlog(ep);
    {
        context_pool pool(2);
        std::atomic<int> armed{0};
        auto owner = [](io_context& ctx, endpoint ep, std::atomic<int>& armed, alive) -> task<void> {
            // Owns the ring and the sockets; spawned first, so destroyed after its readers.
            buffer_ring ring(ctx, 1, 64);
            std::vector<std::pair<stream_socket, stream_socket>> pairs;
            for (int i = 0; i < 12; ++i) {
                auto p = stream_socket::pair(ctx);
                if (!p) co_return;
                pairs.push_back(std::move(*p));
                (void)::send(pairs.back().second.native_handle(), "data", 4, MSG_NOSIGNAL);
            }
            auto lent_reader = [](stream_socket& s, buffer_ring& ring, std::atomic<int>& armed, alive) -> task<void> {
                armed.fetch_add(1);
                auto r = co_await s.read_some(ring);  // the first keeps the only buffer...
                (void)co_await sleep_for(s.context(), 1h);  // ...the others starve
                (void)r;
            };
            auto plain_reader = [](stream_socket& s, std::atomic<int>& armed, alive) -> task<void> {
                std::array<char, 16> buf{};
                armed.fetch_add(1);
                (void)co_await s.read_some(buf);
            };
            auto connector = [](io_context& ctx, endpoint ep, std::atomic<int>& armed, alive) -> task<void> {
                armed.fetch_add(1);
                (void)co_await stream_socket::connect(ctx, ep);  // waits on a full backlog
            };
            auto sleeper = [](io_context& ctx, std::atomic<int>& armed, alive) -> task<void> {
                armed.fetch_add(1);
                (void)co_await sleep_for(ctx, 1h);
            };
            for (std::size_t i = 0; i < 6; ++i) ctx.spawn(lent_reader(pairs[i].first, ring, armed, alive{}));
            for (std::size_t i = 6; i < 12; ++i) ctx.spawn(plain_reader(pairs[i].second, armed, alive{}));  // never written
            for (int i = 0; i < 4; ++i) ctx.spawn(connector(ctx, ep, armed, alive{}));
            for (int i = 0; i < 4; ++i) ctx.spawn(sleeper(ctx, armed, alive{}));
            armed.fetch_add(1);
            (void)co_await sleep_for(ctx, 1h);
        };
        for (std::size_t r = 0; r < 2; ++r) spawn_on(pool[r], owner(pool[r], ep, armed, alive{}));
        CHECK(eventually([&] { return armed.load() == 2 * 21; }));
        std::this_thread::sleep_for(50ms);  // let the starved reads go round their wait
    }  // no stop(): the destructor does it all
    CHECK(alive::count.load() == 0);
}

TEST_CASE("hostile hand_off: serve() racing clients that close at once and the pool stopping", "[pool][hand_off]") {
    fd_leak_guard guard;
    alive::count = 0;
    for (int round = 0; round < 3; ++round) {
        const endpoint ep = ringsock::test::unique_abstract("hostile-race");
        auto pool = std::make_unique<context_pool>(2);
        std::atomic<int> handled{0};
        auto handler = [&handled, a = alive{}](stream_socket s) -> task<void> {
            std::array<char, 64> buf{};
            handled.fetch_add(1);
            for (;;) {
                auto n = co_await s.read_some(buf, 5s);
                if (!n || *n == 0) break;
                auto w = co_await s.write_all(std::span(buf.data(), *n));
                if (!w) break;
            }
        };
        // The listener lives in a task on ring 0, so the pool's teardown ends it there.
        auto server = [](io_context& ctx, endpoint ep, context_pool& pool, decltype(handler) h,
                         std::promise<bool>& up) -> task<void> {
            auto l = acceptor::listen(ctx, ep);
            up.set_value(l.has_value());
            if (l) co_await serve(*l, pool, h, distribution::least_loaded);
        };
        std::promise<bool> listening;
        spawn_on((*pool)[0], server((*pool)[0], ep, *pool, handler, listening));
        REQUIRE(listening.get_future().get());
        std::atomic<bool> quit{false};
        std::vector<std::thread> clients;
        for (int t = 0; t < 3; ++t)
            clients.emplace_back([&, t] {
                for (int i = 0; !quit.load() && i < 2000; ++i) {
                    unique_fd c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
                    if (!c || ::connect(c.get(), ep.data(), ep.size()) != 0) continue;  // refused once it stops
                    if ((i + t) % 2) (void)::send(c.get(), "ping", 4, MSG_NOSIGNAL);
                }
            });
        CHECK(eventually([&] { return handled.load() > 100; }));
        if (round == 0) {
            pool->stop();  // the target rings shut down under the hand-offs
            pool->join();
        }
        if (round == 1) post((*pool)[1], [p = pool.get()] { p->stop(); });  // a ring stops its own pool
        quit = true;
        for (auto& c : clients) c.join();
        pool.reset();  // round 2: destroyed while serving
    }
    CHECK(alive::count.load() == 0);
}
