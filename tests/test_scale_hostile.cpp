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
    auto pab = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
    auto& a = pab.first;
    auto& b = pab.second;
    auto pcd = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
    auto& c = pcd.first;
    auto& d = pcd.second;
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

namespace {

std::uint32_t fnv(std::string_view s, std::uint32_t h = 2166136261u) {
    for (unsigned char c : s) h = (h ^ c) * 16777619u;
    return h;
}

std::string random_bytes(std::mt19937& rng, std::size_t n) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng());
    return s;
}

}  // namespace

TEST_CASE("hostile buffer_ring: a lent_buffer kept across co_awaits and moved and reset twice", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 2, 64);
    auto pab = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
    auto& a = pab.first;
    auto& b = pab.second;
    auto run = [&]() -> task<void> {
        raw_send(b, "kept");
        auto r = co_await a.read_some(ring);
        REQUIRE(r);
        lent_buffer held = std::move(*r);
        (void)co_await sleep_for(ctx, 5ms);
        co_await ctx.yield();
        lent_buffer moved(std::move(held));
        CHECK(held.empty());
        held.reset();  // moved-from: nothing to give back
        CHECK(moved.chars() == "kept");
        CHECK(ring.lent() == 1);
        moved.consume(2);
        lent_buffer assigned;
        assigned = std::move(moved);
        lent_buffer& alias = assigned;
        assigned = std::move(alias);  // self-move keeps it
        CHECK(assigned.chars() == "pt");
        assigned.reset();
        assigned.reset();
        CHECK(ring.lent() == 0);
    };
    ctx.sync_wait(run());
    auto avail = ring.available();
    REQUIRE(avail);
    CHECK(*avail == 2);
}

TEST_CASE("hostile buffer_ring: one buffer and a hundred readers: byte-exact, and the ring comes back full", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 1, 512);
    constexpr int n = 100;
    std::vector<std::pair<stream_socket, stream_socket>> pairs;
    for (int i = 0; i < n; ++i) pairs.push_back(make_pair(ctx));
    std::mt19937 rng(7);
    std::vector<std::string> sent(n), got(n), why(n);
    for (int i = 0; i < n; ++i) sent[static_cast<std::size_t>(i)] = random_bytes(rng, 1 + rng() % 3000);
    int done = 0;
    auto writer = [&](int i) -> task<void> {
        auto& s = pairs[static_cast<std::size_t>(i)].second;
        auto w = co_await s.write_all(sent[static_cast<std::size_t>(i)]);
        (void)w;
        (void)s.shutdown();
    };
    auto reader = [&](int i) -> task<void> {
        for (;;) {
            auto r = co_await pairs[static_cast<std::size_t>(i)].first.read_some(ring, 30s);
            if (!r) {
                why[static_cast<std::size_t>(i)] = r.error().message();
                break;
            }
            if (r->empty()) break;
            lent_buffer keep = std::move(*r);
            if (i % 3 == 0) co_await ctx.yield();  // hold the only buffer across a turn
            got[static_cast<std::size_t>(i)].append(keep.chars());
        }
        ++done;
    };
    for (int i = 0; i < n; ++i) {
        ctx.spawn(reader(i));
        ctx.spawn(writer(i));
    }
    while (done < n) ctx.run_one();
    for (int i = 0; i < n; ++i) {
        const auto& g = got[static_cast<std::size_t>(i)];
        const auto& w = sent[static_cast<std::size_t>(i)];
        std::size_t at = 0;
        while (at < g.size() && at < w.size() && g[at] == w[at]) ++at;
        INFO("reader " << i << " got " << g.size() << " of " << w.size() << " bytes, first difference at " << at << " ended by '" << why[static_cast<std::size_t>(i)] << "'");
        CHECK(fnv(g) == fnv(w));
    }
    CHECK(ring.lent() == 0);
    auto avail = ring.available();
    REQUIRE(avail);
    CHECK(*avail == 1);
}

TEST_CASE("hostile buffer_ring: a starved read cancelled at every moment gives the ring back full", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 1, 64);
    for (int how = 0; how < 4; ++how) {
        for (int when = 0; when < 8; ++when) {
            DYNAMIC_SECTION("h" << how << "w" << when) {
                auto pab = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
                auto& a = pab.first;
                auto& b = pab.second;
                auto pcd = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
                auto& c = pcd.first;
                auto& d = pcd.second;
                raw_send(b, "held");
                raw_send(d, "starved");
                std::stop_source stop;
                std::string outcome;
                auto victim = [&]() -> task<void> {
                    op_limits lim = how == 1 ? op_limits(std::chrono::milliseconds(when * 7)) : op_limits(stop.get_token());
                    auto r = co_await c.read_some(ring, lim);
                    outcome = r ? std::string(r->chars()) : r.error().message();
                };
                auto killer = [&]() -> task<void> {
                    for (int i = 0; i < when; ++i) co_await ctx.yield();
                    if (when >= 4) (void)co_await sleep_for(ctx, std::chrono::milliseconds(5 * (when - 3)));
                    if (how == 0) stop.request_stop();
                    if (how == 2) c.close();
                    if (how == 1) (void)co_await sleep_for(ctx, 100ms);
                };
                auto run = [&]() -> task<void> {
                    auto held = co_await a.read_some(ring);
                    REQUIRE(held);
                    if (how == 3) {
                        // The coroutine destroyed while starved: spawned, then the context shut down below.
                        ctx.spawn(victim());
                        for (int i = 0; i < when; ++i) co_await ctx.yield();
                        co_return;
                    }
                    co_await when_all(victim(), killer());
                };
                ctx.sync_wait(run());
                if (how == 3) {
                    c.close();  // ends the spawned read
                    ctx.run();
                }
                CHECK(ring.lent() == 0);
                auto avail = ring.available();
                REQUIRE(avail);
                CHECK(*avail == 1);
                CHECK(outcome != "starved");  // it never got the buffer
            }
        }
    }
}

TEST_CASE("hostile buffer_ring: lent stream reads racing the peer's close", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 2, 128);
    std::mt19937 rng(11);
    for (int round = 0; round < 200; ++round) {
        auto pab = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
        auto& a = pab.first;
        auto& b = pab.second;
        const std::string msg = random_bytes(rng, rng() % 400);
        std::string got;
        bool ended = false;
        auto reader = [&]() -> task<void> {
            for (;;) {
                auto r = co_await a.read_some(ring, 10s);
                if (!r) break;
                if (r->empty()) {
                    ended = true;
                    break;
                }
                got.append(r->chars());
            }
        };
        auto closer = [&]() -> task<void> {
            if (round % 2) co_await ctx.yield();
            (void)::send(b.native_handle(), msg.data(), msg.size(), MSG_NOSIGNAL);
            b.close();
            co_return;
        };
        ctx.sync_wait(when_all(reader(), closer()));
        CHECK(ended);
        CHECK(fnv(got) == fnv(msg));
    }
    CHECK(ring.lent() == 0);
    auto avail = ring.available();
    REQUIRE(avail);
    CHECK(*avail == 2);
}

TEST_CASE("hostile buffer_ring: a datagram flood into a small ring loses no accepted message", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 2, 256);
    auto dg = datagram_socket::pair(ctx);
    REQUIRE(dg);
    constexpr int n = 3000;
    std::uint32_t sent_sum = 0, got_sum = 0;
    int got = 0;
    auto sender = [&]() -> task<void> {
        for (int i = 0; i < n; ++i) {
            const std::string m = "dgram-" + std::to_string(i) + std::string(static_cast<std::size_t>(i % 200), 'x');
            sent_sum += fnv(m);
            auto s = co_await dg->second.send(m);
            REQUIRE(s);
        }
    };
    auto receiver = [&]() -> task<void> {
        std::vector<lent_buffer> keep;
        while (got < n) {
            auto r = co_await dg->first.receive(ring, 10s);
            REQUIRE(r);
            got_sum += fnv(r->chars());
            ++got;
            keep.push_back(std::move(*r));
            if (keep.size() == 2 || got % 5 == 0) {
                co_await ctx.yield();  // the ring stays empty for a turn
                keep.clear();
            }
        }
    };
    ctx.sync_wait(when_all(sender(), receiver()));
    CHECK(got == n);
    CHECK(got_sum == sent_sum);
    CHECK(ring.lent() == 0);
}

TEST_CASE("hostile soak: 2000 connections through serve() on a 2-ring pool with lent buffers", "[pool][soak]") {
    fd_leak_guard guard;
    const endpoint ep = ringsock::test::unique_abstract("hostile-soak");
    std::atomic<long> verified{0}, cut{0};
    {
        context_pool pool(2);
        // One buffer_ring per ring, owned by a task spawned first (destroyed after the handlers).
        std::array<buffer_ring*, 2> rings{};
        std::promise<void> made[2];
        auto keeper = [](io_context& ctx, buffer_ring*& out, std::promise<void>& ready) -> task<void> {
            buffer_ring ring(ctx, 4, 1024);
            out = &ring;
            ready.set_value();
            (void)co_await sleep_for(ctx, 1h);  // until the pool goes
        };
        for (std::size_t r = 0; r < 2; ++r) spawn_on(pool[r], keeper(pool[r], rings[r], made[r]));
        for (auto& m : made) m.get_future().get();
        // Protocol: u32 length, then that many bytes; the server answers u32 FNV checksum
        // and echoes the bytes. Lengths with the top bit set ask the server to wait for a
        // payload that never comes: its 50 ms time limit cuts the connection.
        auto handler = [&pool, &rings](stream_socket s) -> task<void> {
            buffer_ring& ring = *rings[pool.index_of(s.context())];
            for (;;) {
                std::uint32_t len = 0;
                auto h = co_await s.read_exact(std::span(reinterpret_cast<char*>(&len), 4), 10s);
                if (!h) co_return;
                const bool slow = len & 0x8000'0000u;
                len &= 0x7fff'ffffu;
                std::uint32_t sum = 2166136261u;
                std::string echo;
                while (echo.size() < len) {
                    auto r = co_await s.read_some(ring, slow ? op_limits(50ms) : op_limits(10s));
                    if (!r || r->empty()) co_return;  // cut, or the client went away
                    lent_buffer b = std::move(*r);
                    echo.append(b.chars());
                }
                sum = fnv(echo, sum);
                auto w1 = co_await s.write_all(std::span(reinterpret_cast<const char*>(&sum), 4));
                if (!w1) co_return;
                auto w2 = co_await s.write_all(echo);
                if (!w2) co_return;
            }
        };
        auto server = [](io_context& ctx, endpoint ep, context_pool& pool, decltype(handler) h,
                         std::promise<bool>& up) -> task<void> {
            auto l = acceptor::listen(ctx, ep, {.backlog = 512});
            up.set_value(l.has_value());
            if (l) co_await serve(*l, pool, h);
        };
        std::promise<bool> listening;
        spawn_on(pool[0], server(pool[0], ep, pool, handler, listening));
        REQUIRE(listening.get_future().get());
        std::vector<std::thread> clients;
        std::atomic<int> bad{0};
        for (int t = 0; t < 4; ++t)
            clients.emplace_back([&, t] {
                std::mt19937 rng(static_cast<unsigned>(100 + t));
                for (int i = 0; i < 500; ++i) {
                    unique_fd c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
                    if (!c || ::connect(c.get(), ep.data(), ep.size()) != 0) {
                        bad.fetch_add(1);
                        continue;
                    }
                    timeval tv{20, 0};
                    ::setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
                    const int messages = static_cast<int>(rng() % 4);
                    for (int m = 0; m < messages; ++m) {
                        const unsigned mode = rng() % 10;
                        const std::string body = random_bytes(rng, rng() % 6000);
                        std::uint32_t len = static_cast<std::uint32_t>(body.size());
                        if (mode == 0) {  // disconnect mid-message
                            (void)::send(c.get(), &len, 4, MSG_NOSIGNAL);
                            (void)::send(c.get(), body.data(), body.size() / 2, MSG_NOSIGNAL);
                            cut.fetch_add(1);
                            break;
                        }
                        if (mode == 1) {  // server-side time limit cuts it
                            len |= 0x8000'0000u;
                            (void)::send(c.get(), &len, 4, MSG_NOSIGNAL);
                            char x = 0;
                            if (::recv(c.get(), &x, 1, 0) != 0) bad.fetch_add(1);  // closed by the server
                            cut.fetch_add(1);
                            break;
                        }
                        std::string frame(reinterpret_cast<const char*>(&len), 4);
                        frame += body;
                        if (::send(c.get(), frame.data(), frame.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(frame.size())) {
                            bad.fetch_add(1);
                            break;
                        }
                        std::string back(4 + body.size(), '\0');
                        std::size_t have = 0;
                        while (have < back.size()) {
                            auto n = ::recv(c.get(), back.data() + have, back.size() - have, 0);
                            if (n <= 0) break;
                            have += static_cast<std::size_t>(n);
                        }
                        std::uint32_t sum = 0;
                        std::memcpy(&sum, back.data(), 4);
                        if (have != back.size() || sum != fnv(body) || back.compare(4, body.size(), body) != 0) {
                            bad.fetch_add(1);
                            break;
                        }
                        verified.fetch_add(1);
                    }
                }
            });
        for (auto& c : clients) c.join();
        CHECK(bad.load() == 0);
        CHECK(eventually([&] { return pool.load(0) == 0 && pool.load(1) == 0; }));
    }  // the pool's teardown ends serve(), the keepers and their rings
    CHECK(verified.load() > 500);
    CHECK(cut.load() > 50);
}
