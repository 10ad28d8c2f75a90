// Tests for buffers lent by the kernel (buffer_ring, read_some(ring), receive(ring)):
// idle reads hold no buffer, exhaustion waits without losing or reordering data and
// resumes when a buffer comes back, time limits / stop tokens / close reach a starved
// read, a completed read abandoned by its coroutine gives its buffer back, message
// sockets report truncation, and the ring may be destroyed before the reads that name
// it and the buffers it lent (they end cancelled or stay valid).
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <array>
#include <chrono>
#include <cstring>
#include <stop_token>
#include <string>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/fork_child.hpp"
#include "support/leak_guard.hpp"

namespace {

using namespace std::chrono_literals;
using namespace ringsock;
using ringsock::test::fd_leak_guard;
using ringsock::test::make_pair;
using ringsock::test::raw_send;

// A read as a task, for when_all.
task<io_result<lent_buffer>> read_task(stream_socket& s, buffer_ring& ring, op_limits lim = {}) {
    co_return co_await s.read_some(ring, lim);
}

}  // namespace

TEST_CASE("buffer_ring: a hundred idle reads hold no buffer; data takes one, dropping returns it", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 8, 4096);
    CHECK(ring.count() == 8);
    std::vector<std::pair<stream_socket, stream_socket>> pairs;
    for (int i = 0; i < 100; ++i) pairs.push_back(make_pair(ctx));
    int done = 0;
    std::string got;
    auto reader = [&](stream_socket& s, int i) -> task<void> {
        auto r = co_await s.read_some(ring);
        if (r && i == 42) got = std::string(r->chars());
        ++done;
    };
    for (int i = 0; i < 100; ++i) ctx.spawn(reader(pairs[static_cast<std::size_t>(i)].first, i));
    for (int i = 0; i < 5; ++i) ctx.poll();
    CHECK(done == 0);
    CHECK(ring.lent() == 0);  // a hundred armed reads, no buffer taken
    raw_send(pairs[42].second, "hello lent");
    while (done == 0) ctx.run_one();
    CHECK(got == "hello lent");
    CHECK(ring.lent() == 0);  // the reader dropped its buffer
    pairs.clear();            // the other 99 reads end cancelled
    ctx.run();
    CHECK(done == 100);
    CHECK(ring.lent() == 0);
}

TEST_CASE("buffer_ring: an exhausted ring makes reads wait, loses no byte, and resumes them as buffers return", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 2, 64);
    constexpr int n = 6;
    std::vector<std::pair<stream_socket, stream_socket>> pairs;
    for (int i = 0; i < n; ++i) pairs.push_back(make_pair(ctx));
    std::vector<lent_buffer> held;  // the first reads keep their buffers
    std::vector<std::string> got(n);
    int done = 0;
    auto reader = [&](stream_socket& s, int i) -> task<void> {
        auto r = co_await s.read_some(ring, 5s);
        if (!r) {
            got[static_cast<std::size_t>(i)] = std::string("error: ") + r.error().message();
        } else {
            got[static_cast<std::size_t>(i)] = std::string(r->chars());
            held.push_back(std::move(*r));
        }
        ++done;
    };
    for (int i = 0; i < n; ++i) {
        raw_send(pairs[static_cast<std::size_t>(i)].second, "message-" + std::to_string(i));
        ctx.spawn(reader(pairs[static_cast<std::size_t>(i)].first, i));
    }
    while (done < 2) ctx.run_one();
    for (int i = 0; i < 10; ++i) ctx.poll();
    CHECK(done == 2);  // the rest wait for a buffer
    CHECK(ring.lent() == 2);
    // Give buffers back one at a time: each wakes one starved read.
    while (done < n) {
        const int before = done;
        held.erase(held.begin());
        const auto t0 = std::chrono::steady_clock::now();
        while (done == before) ctx.run_one();
        CHECK(std::chrono::steady_clock::now() - t0 < 1s);
    }
    for (int i = 0; i < n; ++i) CHECK(got[static_cast<std::size_t>(i)] == "message-" + std::to_string(i));
    held.clear();
    CHECK(ring.lent() == 0);
}

TEST_CASE("buffer_ring: a starved read ends by its time limit or stop token, and its bytes stay in the socket", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 1, 64);
    auto pab = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
    auto& a = pab.first;
    auto& b = pab.second;
    auto pcd = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
    auto& c = pcd.first;
    auto& d = pcd.second;
    auto pef = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
    auto& e = pef.first;
    auto& f = pef.second;
    raw_send(b, "first");
    raw_send(d, "second");
    raw_send(f, "third");
    std::stop_source stop;
    auto run = [&]() -> task<void> {
        auto first = co_await a.read_some(ring);
        REQUIRE(first);
        auto second = co_await c.read_some(ring, 50ms);  // no buffer comes back in time
        CHECK(second.error() == std::errc::timed_out);
        auto cancel_soon = [&]() -> task<void> {
            (void)co_await sleep_for(ctx, 20ms);
            stop.request_stop();
        };
        auto [third, ignored] = co_await when_all(read_task(e, ring, op_limits(stop.get_token())), cancel_soon());
        CHECK(third.error() == std::errc::operation_canceled);
        (void)ignored;
    };
    ctx.sync_wait(run());
    CHECK(ringsock::test::raw_drain(c) == "second");
    CHECK(ringsock::test::raw_drain(e) == "third");
    CHECK(ring.lent() == 0);
}

TEST_CASE("buffer_ring: closing the socket of a starved read cancels it", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 1, 64);
    auto pab = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
    auto& a = pab.first;
    auto& b = pab.second;
    auto pcd = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
    auto& c = pcd.first;
    auto& d = pcd.second;
    raw_send(b, "x");
    raw_send(d, "y");
    auto run = [&]() -> task<void> {
        auto first = co_await a.read_some(ring);
        REQUIRE(first);
        auto closer = [&]() -> task<void> {
            (void)co_await sleep_for(ctx, 20ms);
            c.close();
        };
        auto [second, ignored] = co_await when_all(read_task(c, ring), closer());
        CHECK(second.error() == std::errc::operation_canceled);
        (void)ignored;
    };
    ctx.sync_wait(run());
    CHECK(ring.lent() == 0);
}

TEST_CASE("buffer_ring: a read whose coroutine is destroyed after the kernel filled a buffer gives it back", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
    auto& a = pab.first;
    auto& b = pab.second;
    auto pcd = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
    auto& c = pcd.first;
    auto& d = pcd.second;
    int resumed = 0;
    auto reader = [&](stream_socket& s) -> task<void> {
        auto r = co_await s.read_some(ring);
        if (r) ++resumed;
    };
    ctx.spawn(reader(a));
    ctx.spawn(reader(c));
    for (int i = 0; i < 3; ++i) ctx.poll();  // both armed
    raw_send(b, "one");
    raw_send(d, "two");
    // One turn reaps both completions; run_one resumes only the first.
    ctx.run_one();
    CHECK(resumed == 1);
    CHECK(ring.lent() == 0);
    auto before = ring.available();
    REQUIRE(before);
    CHECK(*before == 3);  // 4, minus the two the kernel filled, plus the one dropped
    ringsock::detail::core(ctx).shut_down();  // destroys the unresumed frame
    auto after = ring.available();
    REQUIRE(after);
    CHECK(*after == 4);
}

TEST_CASE("buffer_ring: seqpacket and datagram receives get whole messages and report truncation", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 16);
    auto sp = seqpacket_socket::pair(ctx);
    REQUIRE(sp);
    auto dg = datagram_socket::pair(ctx);
    REQUIRE(dg);
    auto run = [&]() -> task<void> {
        auto s1 = co_await sp->second.send(std::string_view("one message"));
        REQUIRE(s1);
        auto r1 = co_await sp->first.receive(ring);
        REQUIRE(r1);
        CHECK(r1->chars() == "one message");
        auto s2 = co_await sp->second.send(std::string_view("a message longer than sixteen"));
        REQUIRE(s2);
        auto r2 = co_await sp->first.receive(ring);
        CHECK(r2.error() == errc::message_truncated);
        CHECK(r2.partial_value().chars() == "a message longer");
        auto s3 = co_await dg->second.send(std::string_view("datagram"));
        REQUIRE(s3);
        auto r3 = co_await dg->first.receive(ring);
        REQUIRE(r3);
        CHECK(r3->chars() == "datagram");
    };
    ctx.sync_wait(run());
    CHECK(ring.lent() == 0);
}

TEST_CASE("buffer_ring: end of stream returns an empty lent buffer and takes none", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 2, 64);
    auto pab = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
    auto& a = pab.first;
    auto& b = pab.second;
    b.close();
    auto run = [&]() -> task<void> {
        auto r = co_await a.read_some(ring);
        REQUIRE(r);
        CHECK(r->empty());
    };
    ctx.sync_wait(run());
    CHECK(ring.lent() == 0);
}

TEST_CASE("buffer_ring: a byte-exact stream through a small ring arrives whole and in order", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 256);
    auto pab = make_pair(ctx);  // named: clang 14 cannot capture structured bindings
    auto& a = pab.first;
    auto& b = pab.second;
    std::string sent(1 << 20, '\0');
    for (std::size_t i = 0; i < sent.size(); ++i) sent[i] = static_cast<char>((i * 131) ^ (i >> 9));
    std::string got;
    auto writer = [&]() -> task<void> {
        auto w = co_await b.write_all(sent);
        REQUIRE(w);
        (void)b.shutdown();
    };
    auto reader = [&]() -> task<void> {
        for (;;) {
            auto r = co_await a.read_some(ring);
            REQUIRE(r);
            if (r->empty()) break;
            got.append(r->chars());
        }
    };
    ctx.spawn(writer());
    ctx.sync_wait(reader());
    CHECK(got.size() == sent.size());
    CHECK(got == sent);
    CHECK(ring.lent() == 0);
}

TEST_CASE("buffer_ring: a buffer lent before the ring was destroyed stays valid until dropped", "[buffer_ring]") {
    fd_leak_guard guard;
    io_context ctx;
    auto p = stream_socket::pair(ctx);
    REQUIRE(p);
    auto ring = std::make_unique<buffer_ring>(ctx, 2, 64);
    ringsock::test::raw_send(p->second, "kept");
    lent_buffer kept;
    auto run = [&]() -> task<void> {
        auto r = co_await p->first.read_some(*ring);
        if (r) kept = std::move(*r);
    };
    ctx.sync_wait(run());
    ring.reset();  // the memory stays with `kept`
    CHECK(kept.chars() == "kept");
    kept.reset();  // the last user: the buffers are unmapped now (ASan would see a leak otherwise)
    CHECK(kept.empty());
}

TEST_CASE("buffer_ring: destroying the ring cancels reads that name it, even spawned ones that outlive it", "[buffer_ring]") {
    fd_leak_guard guard;
    int cancelled = 0;
    {
        io_context ctx;
        auto p = stream_socket::pair(ctx);
        REQUIRE(p);
        auto q = stream_socket::pair(ctx);
        REQUIRE(q);
        // Outlives the inner block: the coroutines resume after the ring is gone and still
        // read the lambda's captures.
        auto reader = [&cancelled](stream_socket& s, buffer_ring& ring) -> task<void> {
            auto r = co_await s.read_some(ring);  // `ring` is not touched after this
            if (!r && r.error() == std::errc::operation_canceled) ++cancelled;
        };
        {
            buffer_ring ring(ctx, 8, 4096);
            ctx.spawn(reader(p->first, ring));  // armed, then orphaned by the ring's destruction
            ctx.spawn(reader(q->first, ring));
            for (int i = 0; i < 3; ++i) ctx.poll();
        }  // ~buffer_ring: both reads cancelled, the core waits for them
        ctx.run();  // they resume with operation_canceled
        CHECK(cancelled == 2);
        // A read started after the ring was destroyed cannot name it: scope rules forbid it.
    }
    {
        // The helper's reproducer: the spawned reader is destroyed by ~io_context, after the ring.
        io_context ctx;
        buffer_ring ring(ctx, 8, 4096);
        auto p = stream_socket::pair(ctx);
        REQUIRE(p);
        auto reader = [&]() -> task<void> { (void)co_await p->first.read_some(ring); };
        ctx.spawn(reader());
        ctx.poll();
    }  // no abort: the reader's frame goes with the context, freeing the core last
}
