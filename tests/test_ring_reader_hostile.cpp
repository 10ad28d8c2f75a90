// Hostile tests for ring_reader (one multishot receive kept armed into a buffer_ring):
// the reader, its socket, its buffer_ring and its io_context destroyed, closed, moved or
// released in every state (waiting, queued, starved); floods through a slow reader
// (queue cap: cancel and re-arm) and through readers sharing a tiny ring; message
// boundaries, empty messages, truncation, EOF and resets; plain reads mixed with a
// reader; time limits and stop tokens (from another thread too) racing data. Every case
// checks for leaked descriptors and that every lent buffer came back.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/leak_guard.hpp"

namespace {

using namespace std::chrono_literals;
using namespace ringsock;
using ringsock::test::fd_leak_guard;
using ringsock::test::make_pair;
using ringsock::test::raw_send;

// tag followed by i, built by appending: g++ 12 at -O3 warns falsely (-Wrestrict)
// on a one-character literal + std::string.
std::string tagged(char tag, std::size_t i) {
    std::string s(1, tag);
    s += std::to_string(i);
    return s;
}

task<io_result<lent_buffer>> take(ring_reader& r, op_limits lim = {}) { co_return co_await r.receive(lim); }

// A plain read into a caller's buffer, as a string ("" at end of stream, "!err" on error).
task<std::string> plain_read(stream_socket& s, op_limits lim = {}) {
    char buf[256];
    auto n = co_await s.read_some(buf, lim);
    if (!n) co_return "!" + n.error().message();
    co_return std::string(buf, *n);
}

void send_on(int fd, const std::string& s) {
    REQUIRE(::send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size()));
}

void spin(io_context& ctx, int turns = 4) {
    for (int i = 0; i < turns; ++i) ctx.poll();
}

task<void> nap(io_context& ctx, std::chrono::milliseconds d) { (void)co_await sleep_for(ctx, d); }

// Runs the loop with some work in it for `d`: a loop with nothing to resume does not
// reap, so an armed reader with nobody waiting collects its completions only now.
void pump(io_context& ctx, std::chrono::milliseconds d = 5ms) { ctx.sync_wait(nap(ctx, d)); }

// Byte i of a deterministic stream.
char pattern(std::size_t i) { return static_cast<char>('a' + (i * 7 + (i >> 9)) % 26); }

}  // namespace

// ---------------------------------------------------------------- lifetimes

TEST_CASE("ring_reader: destroying the reader ends a waiting receive with operation_canceled and frees the direction",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    auto reader = std::make_unique<ring_reader>(a, ring);
    std::optional<io_result<lent_buffer>> got;
    auto waiter = [&]() -> task<void> { got = co_await reader->receive(); };
    ctx.spawn(waiter());
    spin(ctx);
    CHECK(!got);
    reader.reset();
    ctx.run();
    REQUIRE(got);
    CHECK(got->error() == std::errc::operation_canceled);
    CHECK(ring.lent() == 0);
    raw_send(b, "after");
    auto r = ctx.sync_wait(plain_read(a));
    CHECK(r == "after");
}

TEST_CASE("ring_reader: the first of several waiters destroys the reader when it resumes; the others end cleanly",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 8, 64);
    auto sp = seqpacket_socket::pair(ctx);
    REQUIRE(sp);
    auto reader = std::make_unique<ring_reader>(sp->first, ring);
    std::vector<std::string> got;
    auto w = [&](bool destroyer) -> task<void> {
        auto r = co_await reader->receive(2s);
        got.push_back(r ? std::string(r->chars()) : "!" + r.error().message());
        if (destroyer) reader.reset();
    };
    ctx.spawn(w(true));
    ctx.spawn(w(false));
    ctx.spawn(w(false));
    ctx.spawn(w(false));
    spin(ctx);
    send_on(sp->second.native_handle(), "m1");
    send_on(sp->second.native_handle(), "m2");
    ctx.run();
    REQUIRE(got.size() == 4);
    CHECK(got[0] == "m1");
    // The others got a message handed before the reader went, or operation_canceled.
    for (std::size_t i = 1; i < got.size(); ++i) CHECK((got[i] == "m2" || got[i][0] == '!'));
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: destroying the reader with queued completions gives every buffer back",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 8, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    {
        ring_reader reader(a, ring);
        raw_send(b, "first");
        auto r = ctx.sync_wait(take(reader));  // arms the multishot
        REQUIRE(r);
        CHECK(r->chars() == "first");
        for (int i = 0; i < 3; ++i) {
            raw_send(b, tagged('q', i));
            pump(ctx);
        }
        CHECK(reader.queued() == 3);
        CHECK(ring.lent() == 4);  // `r` and the three queued
        r = {};
    }
    CHECK(ring.lent() == 0);
    auto avail = ring.available();
    if (avail) CHECK(*avail == ring.count());
}

TEST_CASE("ring_reader: closing the socket ends a waiting receive and every later one with operation_canceled",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader reader(a, ring);
    std::optional<io_result<lent_buffer>> got;
    auto waiter = [&]() -> task<void> { got = co_await reader.receive(); };
    ctx.spawn(waiter());
    spin(ctx);
    a.close();
    raw_send(b, "late");  // nobody may read this into a buffer any more
    ctx.run();
    REQUIRE(got);
    CHECK(got->error() == std::errc::operation_canceled);
    auto again = ctx.sync_wait(take(reader));
    CHECK(again.error() == std::errc::operation_canceled);
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: closing the socket drops queued completions: receive reports operation_canceled and their buffers go back",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader reader(a, ring);
    raw_send(b, "x");
    auto r = ctx.sync_wait(take(reader));
    REQUIRE(r);
    r = {};
    raw_send(b, "y");
    raw_send(b, "z");
    pump(ctx);
    raw_send(b, "w");
    pump(ctx);
    CHECK(reader.queued() == 2);
    CHECK(ring.lent() == 2);
    a.close();
    auto again = ctx.sync_wait(take(reader));
    CHECK(again.error() == std::errc::operation_canceled);
    // Those completions can never be handed out now: a reader kept alive (in a
    // connection object, say) must not keep a shared ring's buffers with them.
    CHECK(reader.queued() == 0);
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: destroying the socket while a receive waits ends it; the reader outlives the socket",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = std::make_unique<std::pair<stream_socket, stream_socket>>(make_pair(ctx));
    ring_reader reader(pab->first, ring);
    std::optional<io_result<lent_buffer>> got;
    auto waiter = [&]() -> task<void> { got = co_await reader.receive(100ms); };
    ctx.spawn(waiter());
    spin(ctx);
    pab.reset();
    ctx.run();
    REQUIRE(got);
    CHECK(got->error() == std::errc::operation_canceled);
    auto again = ctx.sync_wait(take(reader));
    CHECK(again.error() == std::errc::operation_canceled);
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: a socket closed while armed, its descriptor number and file slot reused: the old reader never reads the new socket",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context::options opts{};
    opts.register_after = 1;  // the socket takes a registered-file slot at once
    io_context ctx(opts);
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    for (int i = 0; i < 3; ++i) {  // some plain reads first (slot registration)
        raw_send(b, "p");
        auto p = ctx.sync_wait(plain_read(a));
        CHECK(p == "p");
    }
    ring_reader reader(a, ring);
    raw_send(b, "r");
    auto r = ctx.sync_wait(take(reader));
    REQUIRE(r);
    r = {};
    std::optional<io_result<lent_buffer>> waiting;
    auto t = [&]() -> task<void> { waiting = co_await reader.receive(); };
    ctx.spawn(t());
    spin(ctx);
    const int old_fd = a.native_handle();
    a.close();
    auto pcd = make_pair(ctx);  // likely the same descriptor number and slot
    auto& c = pcd.first;
    auto& d = pcd.second;
    INFO("old fd " << old_fd << ", new fds " << c.native_handle() << " " << d.native_handle());
    raw_send(d, "for c");
    ctx.run();
    REQUIRE(waiting);
    CHECK(waiting->error() == std::errc::operation_canceled);
    auto again = ctx.sync_wait(take(reader, 50ms));
    CHECK(again.error() == std::errc::operation_canceled);
    auto got = ctx.sync_wait(plain_read(c, 1s));
    CHECK(got == "for c");
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: a moved socket takes the armed reader along: a waiting receive gets data sent after the move",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& b = pab.second;
    auto a = std::make_unique<stream_socket>(std::move(pab.first));
    ring_reader reader(*a, ring);
    std::optional<io_result<lent_buffer>> got;
    auto waiter = [&]() -> task<void> { got = co_await reader.receive(2s); };
    ctx.spawn(waiter());
    spin(ctx);
    auto moved = std::make_unique<stream_socket>(std::move(*a));
    a.reset();  // the moved-from shell goes
    raw_send(b, "moved");
    ctx.run();
    REQUIRE(got);
    REQUIRE(got->has_value());
    CHECK((*got)->chars() == "moved");
    got.reset();
    moved.reset();  // now the socket is gone
    auto again = ctx.sync_wait(take(reader));
    CHECK(again.error() == std::errc::operation_canceled);
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: release() while armed cancels the receive and leaves later bytes in the released descriptor",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader reader(a, ring);
    std::optional<io_result<lent_buffer>> got;
    auto waiter = [&]() -> task<void> { got = co_await reader.receive(); };
    ctx.spawn(waiter());
    spin(ctx);
    unique_fd fd = a.release();
    REQUIRE(fd);
    ctx.run();
    REQUIRE(got);
    CHECK(got->error() == std::errc::operation_canceled);
    raw_send(b, "mine");
    auto again = ctx.sync_wait(take(reader, 50ms));
    CHECK(!again);
    char buf[16];
    auto n = ::recv(fd.get(), buf, sizeof buf, MSG_DONTWAIT);
    REQUIRE(n == 4);
    CHECK(std::string(buf, 4) == "mine");
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: a starved reader (ring empty) ends its receive by time limit; the bytes wait for a later receive",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 1, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader reader(a, ring);
    raw_send(b, "held");
    auto first = ctx.sync_wait(take(reader));
    REQUIRE(first);
    CHECK(ring.lent() == 1);  // the only buffer
    raw_send(b, "waits");
    auto second = ctx.sync_wait(take(reader, 60ms));  // ENOBUFS: TIMEOUT waits, then the limit
    CHECK(second.error() == std::errc::timed_out);
    first = {};  // the buffer comes back
    auto third = ctx.sync_wait(take(reader, 2s));
    REQUIRE(third);
    CHECK(third->chars() == "waits");
    third = {};
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: closing the socket, destroying the reader or the ring while starved ends the wait",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    auto ring = std::make_unique<buffer_ring>(ctx, 1, 64);
    int which = GENERATE(0, 1, 2);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    auto reader = std::make_unique<ring_reader>(a, *ring);
    raw_send(b, "held");
    auto first = ctx.sync_wait(take(*reader));
    REQUIRE(first);
    raw_send(b, "starves");
    std::optional<io_result<lent_buffer>> got;
    auto waiter = [&]() -> task<void> { got = co_await reader->receive(5s); };
    ctx.spawn(waiter());
    spin(ctx, 6);
    CHECK(!got);
    auto t0 = std::chrono::steady_clock::now();
    if (which == 0) a.close();
    if (which == 1) reader.reset();
    if (which == 2) ring.reset();
    ctx.run();
    CHECK(std::chrono::steady_clock::now() - t0 < 2s);
    REQUIRE(got);
    CHECK(got->error() == std::errc::operation_canceled);
    first = {};
    got.reset();
    reader.reset();
    if (ring) CHECK(ring->lent() == 0);
}

TEST_CASE("ring_reader: the buffer_ring destroyed before the reader and before its lent buffers",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    auto ring = std::make_unique<buffer_ring>(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader reader(a, *ring);
    raw_send(b, "kept");
    auto kept = ctx.sync_wait(take(reader));
    REQUIRE(kept);
    raw_send(b, "queued");
    pump(ctx);
    CHECK(reader.queued() == 1);
    std::optional<io_result<lent_buffer>> got;
    ring.reset();
    CHECK(kept->chars() == "kept");
    // The queued completion won before the ring went: it is still handed out.
    auto q = ctx.sync_wait(take(reader));
    REQUIRE(q);
    CHECK(q->chars() == "queued");
    // Nothing more can be received into a ring that is gone.
    auto after = ctx.sync_wait(take(reader, 1s));
    CHECK(after.error() == std::errc::operation_canceled);
    q = {};
    kept = {};
}

TEST_CASE("ring_reader: destroying the io_context with readers armed in spawned tasks", "[ring_reader_hostile]") {
    fd_leak_guard guard;
    SECTION("socket, ring and reader all live in the spawned frames") {
        auto ctx = std::make_unique<io_context>();
        std::vector<unique_fd> peers;
        for (int i = 0; i < 4; ++i) {
            auto p = stream_socket::pair(*ctx);
            REQUIRE(p);
            peers.push_back(p->second.release());
            auto t = [](io_context& c, stream_socket s, int i) -> task<void> {
                buffer_ring ring(c, 2, 32);
                ring_reader reader(s, ring);
                std::vector<lent_buffer> held;
                for (;;) {
                    auto r = co_await reader.receive();
                    if (!r || r->empty()) co_return;
                    if (i % 2 == 0) held.push_back(std::move(*r));  // starve some of them
                }
            };
            ctx->spawn(t(*ctx, std::move(p->first), i));
        }
        spin(*ctx);
        for (auto& fd : peers)
            for (int k = 0; k < 5; ++k) send_on(fd.get(), "data" + std::to_string(k));
        spin(*ctx, 8);
        ctx.reset();
    }
    SECTION("sockets and ring outlive the tasks; the ring goes before the context") {
        auto ctx = std::make_unique<io_context>();
        auto ring = std::make_unique<buffer_ring>(*ctx, 2, 32);
        std::vector<std::pair<stream_socket, stream_socket>> pairs;
        for (int i = 0; i < 3; ++i) pairs.push_back(make_pair(*ctx));
        for (auto& p : pairs) {
            auto t = [](stream_socket& s, buffer_ring& r) -> task<void> {
                ring_reader reader(s, r);
                for (;;) {
                    auto got = co_await reader.receive();
                    if (!got) co_return;
                }
            };
            ctx->spawn(t(p.first, *ring));
            raw_send(p.second, "zz");
        }
        spin(*ctx, 6);
        ring.reset();   // the readers' engines keep the core alive
        pairs.clear();  // the sockets go; readers live on in the frames
        ctx.reset();    // frames destroyed: the readers detach, the core is freed last
    }
}

TEST_CASE("ring_reader: destroying the io_context when one spawned task owns the reader and another waits on it",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    const bool owner_first = GENERATE(true, false);
    auto ctx = std::make_unique<io_context>();
    auto ring = std::make_unique<buffer_ring>(*ctx, 4, 32);
    auto pab = std::make_unique<std::pair<stream_socket, stream_socket>>(make_pair(*ctx));
    ring_reader* shared = nullptr;
    bool waiter_resumed = false;
    auto owner = [&]() -> task<void> {
        ring_reader r(pab->first, *ring);
        shared = &r;
        (void)co_await sleep_for(*ctx, 1h);
    };
    auto waiter = [&]() -> task<void> {
        while (!shared) co_await ctx->yield();
        (void)co_await shared->receive();
        waiter_resumed = true;
    };
    if (owner_first) {
        ctx->spawn(owner());
        ctx->spawn(waiter());
    } else {
        ctx->spawn(waiter());
        ctx->spawn(owner());
    }
    spin(*ctx, 6);
    raw_send(pab->second, "in flight");  // armed: the kernel may take it into a buffer
    ring.reset();  // the engine keeps the ring's core
    pab.reset();   // the socket goes: the reader in the frame is cancelled
    ctx.reset();   // both frames destroyed, in either order; nothing resumes
    CHECK_FALSE(waiter_resumed);
}

TEST_CASE("ring_reader: move-assigning over an armed reader cancels its waiter; the moved-from reader fails EBADF",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    auto pcd = make_pair(ctx);
    auto& c = pcd.first;
    auto& d = pcd.second;
    ring_reader r1(a, ring);
    ring_reader r2(c, ring);
    std::optional<io_result<lent_buffer>> got;
    auto waiter = [&]() -> task<void> { got = co_await r1.receive(); };
    ctx.spawn(waiter());
    spin(ctx);
    r1 = std::move(r2);
    ctx.run();
    REQUIRE(got);
    CHECK(got->error() == std::errc::operation_canceled);
    raw_send(d, "from c");
    auto r = ctx.sync_wait(take(r1));
    REQUIRE(r);
    CHECK(r->chars() == "from c");
    auto moved_from = ctx.sync_wait(take(r2));
    CHECK(moved_from.error() == std::errc::bad_file_descriptor);
    ring_reader& alias = r1;
    r1 = std::move(alias);  // self-move: harmless
    raw_send(d, "still");
    r = ctx.sync_wait(take(r1));
    REQUIRE(r);
    CHECK(r->chars() == "still");
    r = {};
    // a's direction is free again after its reader went
    raw_send(b, "plain");
    auto p = ctx.sync_wait(plain_read(a));
    CHECK(p == "plain");
    CHECK(ring.lent() == 0);
    ring_reader empty;
    CHECK_THROWS_AS(empty.receive(), std::logic_error);
}

TEST_CASE("ring_reader: assigning a fresh reader for the same socket over the old one reads the socket",
          "[ring_reader_hostile]") {
    // `reader = ring_reader(sock, ring)` builds the new reader while the old one still
    // holds the socket's receive direction: the new one is made "busy" and fails EBUSY for
    // its whole life, although the old one is gone a moment later.
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader reader(a, ring);
    raw_send(b, "one");
    auto r = ctx.sync_wait(take(reader));
    REQUIRE(r);
    r = {};
    reader = ring_reader(a, ring);
    raw_send(b, "two");
    auto r2 = ctx.sync_wait(take(reader, 1s));
    CHECK(r2.has_value());
}

TEST_CASE("ring_reader: resetting a reader first, then making a new one for the same socket, works",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader reader(a, ring);
    raw_send(b, "one");
    auto r = ctx.sync_wait(take(reader));
    REQUIRE(r);
    r = {};
    reader = ring_reader();
    reader = ring_reader(a, ring);
    raw_send(b, "two");
    auto r2 = ctx.sync_wait(take(reader, 1s));
    REQUIRE(r2);
    CHECK(r2->chars() == "two");
    r2 = {};
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: a coroutine destroyed after the engine handed it a buffer, before it resumed, gives it back",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto sp = seqpacket_socket::pair(ctx);
    REQUIRE(sp);
    ring_reader reader(sp->first, ring);
    int resumed = 0;
    auto t = [&]() -> task<void> {
        auto r = co_await reader.receive();
        if (r) ++resumed;
    };
    ctx.spawn(t());
    ctx.spawn(t());
    spin(ctx);
    send_on(sp->second.native_handle(), "one");
    send_on(sp->second.native_handle(), "two");
    // One turn reaps both completions: both waiters are handed a buffer; resume only one.
    ctx.run_one();
    CHECK(resumed == 1);
    CHECK(ring.lent() == 1);  // the second waiter's, not yet resumed
    ringsock::detail::core(ctx).shut_down();  // destroys the unresumed frame
    CHECK(ring.lent() == 0);
    auto avail = ring.available();
    if (avail) CHECK(*avail == ring.count());
}

// ---------------------------------------------------------------- data integrity

TEST_CASE("ring_reader: a flood of small writes through a slow reader arrives whole and in order (queue cap path)",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 64, 32);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    constexpr std::size_t total = 300'000;
    const int wfd = b.native_handle();
    std::thread writer([wfd] {
        std::mt19937 rng(7);
        std::string chunk;
        std::size_t i = 0;
        while (i < total) {
            std::size_t n = std::min<std::size_t>(1 + rng() % 24, total - i);
            chunk.clear();
            for (std::size_t k = 0; k < n; ++k) chunk.push_back(pattern(i + k));
            std::size_t off = 0;
            while (off < n) {
                auto w = ::send(wfd, chunk.data() + off, n - off, MSG_NOSIGNAL);
                if (w <= 0) return;
                off += static_cast<std::size_t>(w);
            }
            i += n;
        }
        ::shutdown(wfd, SHUT_WR);
    });
    ring_reader reader(a, ring);
    std::size_t got = 0;
    bool in_order = true;
    std::size_t max_queued = 0;
    int completions = 0;
    auto consume = [&]() -> task<void> {
        for (;;) {
            auto r = co_await reader.receive(10s);
            if (!r) {
                FAIL("receive failed: " << r.error().message());
                co_return;
            }
            if (r->empty()) co_return;
            ++completions;
            for (char ch : r->chars()) {
                if (ch != pattern(got)) in_order = false;
                ++got;
            }
            max_queued = std::max(max_queued, reader.queued());
            if (completions % 3 == 0) {
                for (int k = 0; k < 4; ++k) co_await ctx.yield();  // slow
            }
        }
    };
    ctx.sync_wait(consume());
    writer.join();
    CHECK(got == total);
    CHECK(in_order);
    CHECK(ring.lent() == 0);
    INFO("max queued " << max_queued);
    CHECK(max_queued <= ring.count());
}

TEST_CASE("ring_reader: a reader that stops reading stops at the queue cap; the rest waits in the socket, in order",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 64, 16);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader reader(a, ring);
    raw_send(b, "m000");
    auto r = ctx.sync_wait(take(reader));
    REQUIRE(r);
    std::string all = std::string(r->chars());
    r = {};
    constexpr int n = 60;
    for (int i = 1; i < n; ++i) {
        char m[16];
        std::snprintf(m, sizeof m, "m%03d", i);
        raw_send(b, m);
        pump(ctx, 1ms);
    }
    pump(ctx);
    INFO("queued " << reader.queued() << " lent " << ring.lent());
    CHECK(reader.queued() >= ring_reader::queue_cap);
    CHECK(reader.queued() <= ring_reader::queue_cap + 2);
    CHECK(ringsock::test::readable_bytes(a) > 0);  // the rest is under the peer's flow control
    (void)b.shutdown();
    auto drain = [&]() -> task<void> {
        for (;;) {
            auto x = co_await reader.receive(2s);
            REQUIRE(x);
            if (x->empty()) co_return;
            all.append(x->chars());
        }
    };
    ctx.sync_wait(drain());
    std::string want;
    for (int i = 0; i < n; ++i) {
        char m[16];
        std::snprintf(m, sizeof m, "m%03d", i);
        want += m;
    }
    CHECK(all == want);
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: several readers sharing a tiny ring all get every byte; none starves for good",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 2, 16);
    constexpr int readers = 5;
    constexpr std::size_t per = 20'000;
    std::vector<std::pair<stream_socket, stream_socket>> pairs;
    for (int i = 0; i < readers; ++i) pairs.push_back(make_pair(ctx));
    std::vector<std::thread> writers;
    for (auto& p : pairs) {
        const int wfd = p.second.native_handle();
        writers.emplace_back([wfd] {
            std::mt19937 rng(static_cast<unsigned>(wfd));
            std::string all;
            for (std::size_t i = 0; i < per; ++i) all.push_back(pattern(i));
            std::size_t off = 0;
            while (off < per) {
                std::size_t n = std::min<std::size_t>(1 + rng() % 40, per - off);
                auto w = ::send(wfd, all.data() + off, n, MSG_NOSIGNAL);
                if (w <= 0) return;
                off += static_cast<std::size_t>(w);
            }
            ::shutdown(wfd, SHUT_WR);
        });
    }
    std::vector<std::size_t> got(readers, 0);
    std::vector<bool> ok(readers, true);
    int finished = 0;
    auto consume = [&](stream_socket& s, int i) -> task<void> {
        ring_reader reader(s, ring);
        auto idx = static_cast<std::size_t>(i);
        for (;;) {
            auto r = co_await reader.receive(10s);
            if (!r) {
                ok[idx] = false;
                break;
            }
            if (r->empty()) break;
            for (char ch : r->chars()) {
                if (ch != pattern(got[idx])) ok[idx] = false;
                ++got[idx];
            }
            if (i == 0) co_await ctx.yield();  // one slow reader
        }
        ++finished;
    };
    for (int i = 0; i < readers; ++i) ctx.spawn(consume(pairs[static_cast<std::size_t>(i)].first, i));
    ctx.run();
    for (auto& w : writers) w.join();
    CHECK(finished == readers);
    for (int i = 0; i < readers; ++i) {
        INFO("reader " << i);
        CHECK(ok[static_cast<std::size_t>(i)]);
        CHECK(got[static_cast<std::size_t>(i)] == per);
    }
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: many readers on a context with a tiny completion queue (overflow) lose no byte",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context::options opts{};
    opts.entries = 2;  // CQ of 8: thirty-two armed multishot receives overflow it
    opts.defer_taskrun = GENERATE(true, false);
    io_context ctx(opts);
    buffer_ring ring(ctx, 512, 16);
    constexpr int readers = 32;
    constexpr std::size_t per = 4000;
    std::vector<std::pair<stream_socket, stream_socket>> pairs;
    for (int i = 0; i < readers; ++i) pairs.push_back(make_pair(ctx));
    std::vector<std::size_t> got(readers, 0);
    std::vector<bool> ok(readers, true);
    int finished = 0;
    auto consume = [&](stream_socket& s, std::size_t i) -> task<void> {
        ring_reader reader(s, ring);
        for (;;) {
            auto r = co_await reader.receive(10s);
            if (!r) {
                ok[i] = false;
                break;
            }
            if (r->empty()) break;
            for (char ch : r->chars()) {
                if (ch != pattern(got[i])) ok[i] = false;
                ++got[i];
            }
            if (i % 4 == 0) co_await ctx.yield();
        }
        ++finished;
    };
    for (std::size_t i = 0; i < pairs.size(); ++i) ctx.spawn(consume(pairs[i].first, i));
    spin(ctx);
    std::vector<int> fds;
    for (auto& p : pairs) fds.push_back(p.second.native_handle());
    std::thread writer([fds] {
        std::mt19937 rng(21);
        std::vector<std::size_t> off(fds.size(), 0);
        std::string chunk;
        for (bool more = true; more;) {
            more = false;
            for (std::size_t k = 0; k < fds.size(); ++k) {
                if (off[k] == per) continue;
                std::size_t n = std::min<std::size_t>(1 + rng() % 20, per - off[k]);
                chunk.clear();
                for (std::size_t j = 0; j < n; ++j) chunk.push_back(pattern(off[k] + j));
                auto w = ::send(fds[k], chunk.data(), n, MSG_NOSIGNAL);
                if (w <= 0) return;
                off[k] += static_cast<std::size_t>(w);
                if (off[k] == per) ::shutdown(fds[k], SHUT_WR);
                more = true;
            }
        }
    });
    ctx.run();
    writer.join();
    CHECK(finished == readers);
    for (std::size_t i = 0; i < got.size(); ++i) {
        INFO("reader " << i);
        CHECK(ok[i]);
        CHECK(got[i] == per);
    }
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: a reader whose queue holds a shared ring's every buffer does not starve another socket for good",
          "[ring_reader_hostile]") {
    // One coroutine reads A, then B (a request/response protocol over two sockets). B's
    // reader, armed by an earlier receive, reads ahead: its queue takes every buffer of the
    // small shared ring while nobody reads B. A's receive then waits for a buffer that only
    // a B receive would free: stuck until its time limit.
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 16);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& a_peer = pab.second;
    auto pcd = make_pair(ctx);
    auto& b = pcd.first;
    auto& b_peer = pcd.second;
    ring_reader ra(a, ring);
    ring_reader rb(b, ring);
    raw_send(b_peer, "b0");
    auto first = ctx.sync_wait(take(rb));
    REQUIRE(first);
    first = {};
    for (int i = 1; i <= 6; ++i) {
        raw_send(b_peer, tagged('b', i));
        pump(ctx, 1ms);
    }
    INFO("rb queued " << rb.queued() << ", ring lent " << ring.lent());
    raw_send(a_peer, "a0");
    auto got_a = ctx.sync_wait(take(ra, 300ms));
    CHECK(got_a.has_value());
    got_a = {};
    auto drain_b = [&]() -> task<void> {
        while (rb.queued() > 0) (void)co_await rb.receive();
    };
    ctx.sync_wait(drain_b());
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: seqpacket keeps message boundaries, hands out empty messages and reports truncation",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 16);
    auto sp = seqpacket_socket::pair(ctx);
    REQUIRE(sp);
    ring_reader reader(sp->first, ring);
    const int peer = sp->second.native_handle();
    send_on(peer, "one");
    send_on(peer, "two");
    REQUIRE(::send(peer, "", 0, MSG_NOSIGNAL) == 0);
    send_on(peer, "a message longer than sixteen");
    send_on(peer, "after");
    auto run = [&]() -> task<void> {
        auto m1 = co_await reader.receive(2s);
        REQUIRE(m1);
        CHECK(m1->chars() == "one");
        auto m2 = co_await reader.receive(2s);
        REQUIRE(m2);
        CHECK(m2->chars() == "two");
        auto m3 = co_await reader.receive(2s);
        REQUIRE(m3);
        CHECK(m3->empty());
        auto m4 = co_await reader.receive(2s);
        CHECK(m4.error() == errc::message_truncated);
        CHECK(m4.partial_value().chars() == "a message longer");
        auto m5 = co_await reader.receive(2s);
        REQUIRE(m5);
        CHECK(m5->chars() == "after");
        m1 = {};  // (end of stream needs a free buffer: see the exhausted-ring case)
        m2 = {};
        m4 = {};
        m5 = {};
        sp->second.close();
        auto eof1 = co_await reader.receive(2s);
        REQUIRE(eof1);
        CHECK(eof1->empty());
        auto eof2 = co_await reader.receive(2s);
        REQUIRE(eof2);
        CHECK(eof2->empty());
    };
    ctx.sync_wait(run());
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: datagrams keep boundaries, empty datagrams arrive, truncation keeps the part that fit",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 2, 8);
    auto dg = datagram_socket::pair(ctx);
    REQUIRE(dg);
    ring_reader reader(dg->first, ring);
    const int peer = dg->second.native_handle();
    std::vector<std::string> sent = {"d1", "", "0123456789abc", "", "last"};
    for (auto& s : sent) REQUIRE(::send(peer, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size()));
    auto run = [&]() -> task<void> {
        for (auto& s : sent) {
            auto m = co_await reader.receive(2s);
            if (s.size() > 8) {
                CHECK(m.error() == errc::message_truncated);
                CHECK(m.partial_value().chars() == s.substr(0, 8));
            } else {
                REQUIRE(m);
                CHECK(m->chars() == s);
            }
        }
        auto none = co_await reader.receive(30ms);
        CHECK(none.error() == std::errc::timed_out);
    };
    ctx.sync_wait(run());
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: end of stream is reported again on every receive, taking no buffer", "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 2, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader reader(a, ring);
    raw_send(b, "tail");
    b.close();
    auto run = [&]() -> task<void> {
        auto d = co_await reader.receive(2s);
        REQUIRE(d);
        CHECK(d->chars() == "tail");
        d = {};
        for (int i = 0; i < 5; ++i) {
            auto e = co_await reader.receive(2s);
            REQUIRE(e);
            CHECK(e->empty());
            CHECK(ring.lent() == 0);
        }
    };
    ctx.sync_wait(run());
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: end of stream is not seen while the ring is exhausted; it comes once a buffer returns",
          "[ring_reader_hostile]") {
    // The kernel picks the buffer before it looks at the socket: with none left it answers
    // ENOBUFS even for a read that would return 0. Same as read_some(ring).
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 1, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader reader(a, ring);
    raw_send(b, "all");
    auto held = ctx.sync_wait(take(reader));
    REQUIRE(held);
    b.close();
    auto starved = ctx.sync_wait(take(reader, 50ms));
    CHECK(starved.error() == std::errc::timed_out);
    held = {};
    auto eof = ctx.sync_wait(take(reader, 2s));
    REQUIRE(eof);
    CHECK(eof->empty());
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: a connection reset is reported as ECONNRESET, then the reader does not hang",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 2, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader reader(a, ring);
    raw_send(a, "unread by b");  // b closes with this unread: a sees ECONNRESET
    auto run = [&]() -> task<void> {
        auto waiter = [&]() -> task<io_result<lent_buffer>> { co_return co_await reader.receive(2s); };
        auto closer = [&]() -> task<void> {
            co_await ctx.yield();
            b.close();
        };
        auto [r, ignored] = co_await when_all(waiter(), closer());
        (void)ignored;
        CHECK(r.error() == std::errc::connection_reset);
        auto next = co_await reader.receive(1s);
        CHECK((next.has_value() ? next->empty() : next.error() != std::errc::timed_out));
    };
    ctx.sync_wait(run());
    CHECK(ring.lent() == 0);
}

// ---------------------------------------------------------------- mixing

TEST_CASE("ring_reader: a plain read started while a reader exists waits for it to go, then gets the bytes that follow",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    auto reader = std::make_unique<ring_reader>(a, ring);
    raw_send(b, "reader's");
    auto r = ctx.sync_wait(take(*reader));
    REQUIRE(r);
    CHECK(r->chars() == "reader's");
    r = {};
    std::optional<std::string> plain;
    auto t = [&]() -> task<void> { plain = co_await plain_read(a); };
    ctx.spawn(t());
    spin(ctx);
    CHECK(!plain);  // behind the reader
    reader.reset();
    raw_send(b, "plain's");
    ctx.run();
    REQUIRE(plain);
    CHECK(*plain == "plain's");
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: after a reader stopped at its queue cap goes, a plain read gets the very next message",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 64, 16);
    auto sp = seqpacket_socket::pair(ctx);
    REQUIRE(sp);
    const int peer = sp->second.native_handle();
    auto reader = std::make_unique<ring_reader>(sp->first, ring);
    auto msg = [](int i) {
        char m[16];
        std::snprintf(m, sizeof m, "m%03d", i);
        return std::string(m);
    };
    send_on(peer, msg(0));
    auto first = ctx.sync_wait(take(*reader));
    REQUIRE(first);
    CHECK(first->chars() == msg(0));
    first = {};
    constexpr int n = 40;
    for (int i = 1; i < n; ++i) {
        send_on(peer, msg(i));
        pump(ctx, 1ms);
    }
    pump(ctx);
    REQUIRE(reader->queued() >= ring_reader::queue_cap);
    REQUIRE(reader->queued() < static_cast<std::size_t>(n - 1));
    // Take exactly what is queued (no receive arms the request again), then drop the reader.
    int last = 0;
    auto drain = [&]() -> task<void> {
        while (reader->queued() > 0) {
            auto x = co_await reader->receive();
            REQUIRE(x);
            ++last;
            CHECK(x->chars() == msg(last));
        }
    };
    ctx.sync_wait(drain());
    reader.reset();
    char buf[32];
    auto plain = [&]() -> task<io_result<std::size_t>> { co_return co_await sp->first.receive_bytes(buf, 2s); };
    auto next = ctx.sync_wait(plain());
    REQUIRE(next);
    CHECK(std::string(buf, *next) == msg(last + 1));
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: several coroutines waiting on one reader get the messages in the order they waited",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 8, 16);
    auto sp = seqpacket_socket::pair(ctx);
    REQUIRE(sp);
    ring_reader reader(sp->first, ring);
    std::vector<std::string> got(6);
    auto w = [&](std::size_t i) -> task<void> {
        auto r = co_await reader.receive(2s);
        if (r) got[i] = std::string(r->chars());
        else got[i] = "!" + r.error().message();
    };
    for (std::size_t i = 0; i < got.size(); ++i) ctx.spawn(w(i));
    spin(ctx);
    for (std::size_t i = 0; i < got.size(); ++i) send_on(sp->second.native_handle(), tagged('w', i));
    ctx.run();
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == tagged('w', i));
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: a reader made while a plain read is in flight fails EBUSY; the read is unharmed",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    std::optional<std::string> plain;
    auto t = [&]() -> task<void> { plain = co_await plain_read(a); };
    ctx.spawn(t());
    spin(ctx);
    ring_reader reader(a, ring);
    auto r = ctx.sync_wait(take(reader));
    CHECK(r.error() == std::errc::device_or_resource_busy);
    raw_send(b, "plain");
    ctx.run();
    REQUIRE(plain);
    CHECK(*plain == "plain");
    auto again = ctx.sync_wait(take(reader));
    CHECK(again.error() == std::errc::device_or_resource_busy);
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: a second reader on the same socket fails EBUSY; the first keeps every byte",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader first(a, ring);
    ring_reader second(a, ring);
    raw_send(b, "bytes");
    auto r2 = ctx.sync_wait(take(second));
    CHECK(r2.error() == std::errc::device_or_resource_busy);
    auto r1 = ctx.sync_wait(take(first));
    REQUIRE(r1);
    CHECK(r1->chars() == "bytes");
}

TEST_CASE("ring_reader: cannot be made on an fd_stream, whose reads must never drop a descriptor",
          "[ring_reader_hostile]") {
    // A multishot recv has no control buffer: the kernel would close every descriptor that
    // arrives, breaking fd_stream's promise (and the engine would treat it as a message
    // socket, passing MSG_TRUNC on a stream).
    CHECK_FALSE(std::is_constructible_v<ring_reader, fd_stream&, buffer_ring&>);
    CHECK(std::is_constructible_v<ring_reader, stream_socket&, buffer_ring&>);
    CHECK(std::is_constructible_v<ring_reader, seqpacket_socket&, buffer_ring&>);
    CHECK(std::is_constructible_v<ring_reader, datagram_socket&, buffer_ring&>);
}

TEST_CASE("ring_reader: a reader on an already closed or released socket fails, arming nothing",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    a.close();
    ring_reader r1(a, ring);
    auto x = ctx.sync_wait(take(r1, 200ms));
    CHECK(!x);
    CHECK(x.error() != std::errc::timed_out);
    unique_fd kept = b.release();
    ring_reader r2(b, ring);
    auto y = ctx.sync_wait(take(r2, 200ms));
    CHECK(!y);
    CHECK(y.error() != std::errc::timed_out);
    CHECK(ring.lent() == 0);
}

// ---------------------------------------------------------------- time limits and stop tokens

TEST_CASE("ring_reader: time limits and stop tokens end waits without losing the bytes that come later",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader reader(a, ring);
    auto t1 = ctx.sync_wait(take(reader, 20ms));
    CHECK(t1.error() == std::errc::timed_out);
    std::stop_source stopped;
    stopped.request_stop();
    auto t2 = ctx.sync_wait(take(reader, op_limits(stopped.get_token())));
    CHECK(t2.error() == std::errc::operation_canceled);
    std::stop_source later;
    std::thread stopper([&later] {
        std::this_thread::sleep_for(30ms);
        later.request_stop();
    });
    auto t3 = ctx.sync_wait(take(reader, op_limits(later.get_token(), 5s)));
    stopper.join();
    CHECK(t3.error() == std::errc::operation_canceled);
    raw_send(b, "kept");
    auto t4 = ctx.sync_wait(take(reader, 2s));
    REQUIRE(t4);
    CHECK(t4->chars() == "kept");
    t4 = {};
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: a time limit that expired while data arrived in the same turn: the data waits for the next receive",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    ring_reader reader(a, ring);
    std::optional<io_result<lent_buffer>> first;
    auto t = [&]() -> task<void> { first = co_await reader.receive(20ms); };
    ctx.spawn(t());
    spin(ctx);  // armed
    raw_send(b, "same turn");
    std::this_thread::sleep_for(40ms);  // the loop is not running: deadline passed, data ready
    ctx.run();
    REQUIRE(first);
    if (first->has_value()) {
        CHECK((*first)->chars() == "same turn");  // the data won: fine too
    } else {
        CHECK(first->error() == std::errc::timed_out);
        auto second = ctx.sync_wait(take(reader, 1s));
        REQUIRE(second);
        CHECK(second->chars() == "same turn");
    }
    first.reset();
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: a datagram peer going away is reported once; later receives wait (no spin)",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 64);
    auto dg = datagram_socket::pair(ctx);
    REQUIRE(dg);
    ring_reader reader(dg->first, ring);
    send_on(dg->second.native_handle(), "last words");
    dg->second.close();
    auto m = ctx.sync_wait(take(reader, 1s));
    REQUIRE(m);
    CHECK(m->chars() == "last words");
    m = {};
    auto next = ctx.sync_wait(take(reader, 100ms));
    CHECK(!next);
    auto after = ctx.sync_wait(take(reader, 50ms));
    CHECK(after.error() == std::errc::timed_out);
    CHECK(ring.lent() == 0);
}

namespace {

// A thread sending pattern(0..total) to `wfd` in random chunks of 1..30 bytes, pausing
// up to `max_pause_us` before one chunk in `pause_one_in`, then shutting down its side.
std::thread trickle_writer(int wfd, std::size_t total, unsigned seed, unsigned pause_one_in, unsigned max_pause_us) {
    return std::thread([=] {
        std::mt19937 rng(seed);
        std::string all;
        for (std::size_t i = 0; i < total; ++i) all.push_back(pattern(i));
        std::size_t off = 0;
        while (off < total) {
            std::size_t n = std::min<std::size_t>(1 + rng() % 30, total - off);
            auto w = ::send(wfd, all.data() + off, n, MSG_NOSIGNAL);
            if (w <= 0) return;
            off += static_cast<std::size_t>(w);
            if (rng() % pause_one_in == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % max_pause_us));
        }
        ::shutdown(wfd, SHUT_WR);
    });
}

}  // namespace

TEST_CASE("ring_reader: time limits expiring as data arrives lose no byte and reorder nothing", "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 8, 32);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    constexpr std::size_t total = 40'000;
    const int wfd = b.native_handle();
    std::thread writer = trickle_writer(wfd, total, 11, 4, 300);
    ring_reader reader(a, ring);
    std::size_t got = 0;
    bool in_order = true;
    int timeouts = 0;
    auto consume = [&]() -> task<void> {
        std::mt19937 rng(3);
        auto deadline = std::chrono::steady_clock::now() + 20s;
        while (std::chrono::steady_clock::now() < deadline) {
            auto r = co_await reader.receive(std::chrono::microseconds(20 + rng() % 400));
            if (!r) {
                if (r.error() == std::errc::timed_out) {
                    ++timeouts;
                    continue;
                }
                FAIL("receive: " << r.error().message());
            }
            if (r->empty()) co_return;
            for (char ch : r->chars()) {
                if (ch != pattern(got)) in_order = false;
                ++got;
            }
        }
    };
    ctx.sync_wait(consume());
    writer.join();
    INFO("timeouts " << timeouts);
    CHECK(got == total);
    CHECK(in_order);
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: a receive never takes queued data while an earlier completion is still on its way to its waiter",
          "[ring_reader_hostile]") {
    // W1 and W2 wait; W2 is stopped in one turn (it is ready, not resumed). The next turn
    // reaps X and Y: X goes to W1 (ready after W2), Y is queued. W2 resumes first and
    // receives again: it must not take Y before W1 has seen X (with plain reads the first
    // read keeps the direction until it resumes).
    // (With DEFER_TASKRUN, the default: completions arrive only when the loop enters.)
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 4, 16);
    auto sp = seqpacket_socket::pair(ctx);
    REQUIRE(sp);
    ring_reader reader(sp->first, ring);
    std::stop_source stop;
    std::vector<std::string> seen;  // data, in the order coroutines saw it
    auto w1 = [&]() -> task<void> {
        auto r = co_await reader.receive(2s);
        seen.push_back(r ? std::string(r->chars()) : "!" + r.error().message());
    };
    auto w2 = [&]() -> task<void> {
        auto first = co_await reader.receive(stop.get_token());
        if (first) seen.push_back(std::string(first->chars()));
        auto r = co_await reader.receive(2s);
        seen.push_back(r ? std::string(r->chars()) : "!" + r.error().message());
    };
    auto c = [&]() -> task<void> {
        stop.request_stop();                 // W2 ready now
        (void)co_await sleep_for(ctx, 1ms);  // an SQE waiting: the next turn enters and reaps
    };
    ctx.spawn(w1());
    ctx.spawn(w2());
    spin(ctx);
    send_on(sp->second.native_handle(), "X");
    send_on(sp->second.native_handle(), "Y");
    ctx.spawn(c());
    ctx.run();
    REQUIRE(seen.size() == 2);
    CHECK(seen[0] == "X");
    CHECK(seen[1] == "Y");
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: eight coroutines receiving with random time limits see the stream in order",
          "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 8, 32);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    constexpr std::size_t total = 30'000;
    const int wfd = b.native_handle();
    std::thread writer = trickle_writer(wfd, total, 17, 3, 200);
    ring_reader reader(a, ring);
    std::string got;
    bool eof = false;
    int errors = 0;
    auto consume = [&](unsigned seed) -> task<void> {
        std::mt19937 rng(seed);
        auto deadline = std::chrono::steady_clock::now() + 20s;
        while (!eof && std::chrono::steady_clock::now() < deadline) {
            auto r = co_await reader.receive(std::chrono::microseconds(10 + rng() % 500));
            if (!r) {
                if (r.error() != std::errc::timed_out) ++errors;
                continue;
            }
            if (r->empty()) {
                eof = true;
                break;
            }
            got.append(r->chars());
        }
    };
    for (unsigned i = 0; i < 8; ++i) ctx.spawn(consume(i));
    ctx.run();
    writer.join();
    CHECK(errors == 0);
    CHECK(eof);
    REQUIRE(got.size() == total);
    bool in_order = true;
    for (std::size_t i = 0; i < total; ++i)
        if (got[i] != pattern(i)) in_order = false;
    CHECK(in_order);
    CHECK(ring.lent() == 0);
}

TEST_CASE("ring_reader: stop requests from another thread racing data lose no byte", "[ring_reader_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    buffer_ring ring(ctx, 8, 32);
    auto pab = make_pair(ctx);
    auto& a = pab.first;
    auto& b = pab.second;
    constexpr std::size_t total = 40'000;
    constexpr int nsources = 4000;
    std::vector<std::stop_source> sources(nsources);
    const int wfd = b.native_handle();
    std::atomic<bool> done{false};
    std::thread writer = trickle_writer(wfd, total, 5, 4, 200);
    std::thread stopper([&sources, &done] {
        std::mt19937 rng(9);
        for (auto& s : sources) {
            if (done.load()) return;
            std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
            s.request_stop();
        }
    });
    ring_reader reader(a, ring);
    std::size_t got = 0;
    bool in_order = true;
    int cancels = 0;
    auto consume = [&]() -> task<void> {
        std::size_t idx = 0;
        auto deadline = std::chrono::steady_clock::now() + 20s;
        while (std::chrono::steady_clock::now() < deadline) {
            while (idx < sources.size() && sources[idx].stop_requested()) ++idx;
            op_limits lim = idx < sources.size() ? op_limits(sources[idx].get_token()) : op_limits(1s);
            auto r = co_await reader.receive(lim);
            if (!r) {
                if (r.error() == std::errc::operation_canceled) {
                    ++cancels;
                    continue;
                }
                FAIL("receive: " << r.error().message());
            }
            if (r->empty()) co_return;
            for (char ch : r->chars()) {
                if (ch != pattern(got)) in_order = false;
                ++got;
            }
        }
    };
    ctx.sync_wait(consume());
    done = true;
    writer.join();
    stopper.join();
    INFO("cancels " << cancels);
    CHECK(got == total);
    CHECK(in_order);
    CHECK(ring.lent() == 0);
}
