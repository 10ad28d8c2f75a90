// Hostile tests for speculative I/O's newest rule: a send whose socket last received goes
// direct (one non-blocking syscall) when nothing else would share the next enter. They
// attack byte order and message boundaries where direct and ring sends mix on one
// socket, descriptors passed on the direct path, errors met directly (EPIPE without
// SIGPIPE, closed or released sockets, stop tokens, time limits, shutdown), and the
// condition itself: a send that would share an enter must stay on the ring.
// (No co_await inside REQUIRE/CHECK: g++ 12 evaluates it more than once.)
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <future>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/fd_count.hpp"
#include "support/leak_guard.hpp"
#include "support/submission_count.hpp"

namespace {

// Tests name each pair and bind references to its halves: clang 14 cannot capture
// structured bindings in lambdas.
using ringsock::test::make_pair;
using ringsock::test::settled_sq_tail;
using ringsock::test::sq_tail;
using namespace std::chrono_literals;
using ringsock::datagram_socket;
using ringsock::fd_stream;
using ringsock::io_context;
using ringsock::seqpacket_socket;
using ringsock::stream_socket;
using ringsock::task;
using ringsock::unique_fd;

std::vector<char> pattern(std::size_t n, unsigned seed) {
    std::vector<char> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<char>((i * 131 + seed * 7 + i / 509) & 0xff);
    return v;
}

void small_buffers(int send_fd, int recv_fd) {
    int small = 4096;
    REQUIRE(::setsockopt(send_fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    REQUIRE(::setsockopt(recv_fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
}

/// SIGPIPE back to its default (kill the process) for the scope of a test.
struct sigpipe_default {
    struct sigaction old {};
    sigpipe_default() {
        struct sigaction sa {};
        sa.sa_handler = SIG_DFL;
        ::sigemptyset(&sa.sa_mask);
        REQUIRE(::sigaction(SIGPIPE, &sa, &old) == 0);
    }
    ~sigpipe_default() { ::sigaction(SIGPIPE, &old, nullptr); }
};

ino_t inode_of(int fd) {
    struct stat st {};
    REQUIRE(::fstat(fd, &st) == 0);
    return st.st_ino;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Byte order and integrity
// ---------------------------------------------------------------------------------------

TEST_CASE("spec hostile: an answer after a receive never overtakes a time-limited write_all still on the ring",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto a_b = make_pair(ctx);
    auto& a = a_b.first;
    auto& b = a_b.second;
    small_buffers(a.native_handle(), b.native_handle());
    const auto big = pattern(512 * 1024, 1);
    std::vector<char> got(big.size() + 3);
    bool answered = false;
    auto body = [&]() -> task<void> {
        REQUIRE(::send(b.native_handle(), "q", 1, 0) == 1);
        std::array<char, 1> q{};
        auto r0 = co_await a.read_exact(q);  // the socket's last operation: a receive
        REQUIRE(r0);
        ringsock::scope s(ctx);
        auto writer = [&](std::stop_token) -> task<void> {
            auto w = co_await a.write_all(big, 10s);  // a deadline: the general ring path
            REQUIRE(w);
            CHECK(*w == big.size());
        };
        auto responder = [&](std::stop_token) -> task<void> {
            std::array<char, 1> in{};
            auto r = co_await a.read_exact(in);  // a receive while the big write is on the ring
            REQUIRE(r);
            // Last operation on `a`: this receive; the ring is otherwise idle. The send
            // must still queue behind the big write.
            auto w = co_await a.write_all(std::string_view("END"));
            REQUIRE(w);
            answered = true;
        };
        auto drain = [&](std::stop_token) -> task<void> {
            (void)co_await ringsock::sleep_for(ctx, 20ms);
            REQUIRE(::send(b.native_handle(), "r", 1, 0) == 1);
            (void)co_await ringsock::sleep_for(ctx, 20ms);
            auto r = co_await b.read_exact(got);
            REQUIRE(r);
        };
        s.spawn(writer);
        s.spawn(responder);
        s.spawn(drain);
        co_await s.join();
    };
    ctx.sync_wait(body());
    CHECK(answered);
    REQUIRE(got.size() == big.size() + 3);
    CHECK(std::equal(big.begin(), big.end(), got.begin()));
    CHECK(std::string_view(got.data() + big.size(), 3) == "END");
}

TEST_CASE("spec hostile: a write_all far larger than the socket buffer after a receive arrives whole and in order",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto a_b = make_pair(ctx);
    auto& a = a_b.first;
    auto& b = a_b.second;
    small_buffers(a.native_handle(), b.native_handle());
    std::vector<std::vector<char>> chunks;
    for (unsigned i = 0; i < 4; ++i) chunks.push_back(pattern((1u << 20) + i * 977, 10 + i));
    std::size_t total = 0;
    for (auto& c : chunks) total += c.size();
    std::vector<char> got(total);
    auto body = [&]() -> task<void> {
        ringsock::scope s(ctx);
        auto reader = [&](std::stop_token) -> task<void> {
            // Asks for each chunk, then takes it: every write_all is a send after a receive.
            std::size_t off = 0;
            for (auto& c : chunks) {
                auto w = co_await b.write_all(std::string_view("n"));
                REQUIRE(w);
                auto r = co_await b.read_exact(std::span<char>(got.data() + off, c.size()));
                REQUIRE(r);
                off += c.size();
            }
        };
        auto writer = [&](std::stop_token) -> task<void> {
            for (auto& c : chunks) {
                std::array<char, 1> n{};
                auto r = co_await a.read_exact(n);
                REQUIRE(r);
                auto w = co_await a.write_all(c);
                REQUIRE(w);
                CHECK(*w == c.size());
            }
        };
        s.spawn(reader);
        s.spawn(writer);
        co_await s.join();
    };
    ctx.sync_wait(body());
    std::size_t off = 0;
    for (auto& c : chunks) {
        CHECK(std::equal(c.begin(), c.end(), got.begin() + static_cast<std::ptrdiff_t>(off)));
        off += c.size();
    }
}

namespace {

// One request/response pair over `cli`/`srv`, `rounds` times, with sizes that vary per
// connection (some larger than the socket buffer). Both ends check every byte.
task<void> client(stream_socket& cli, unsigned id, int rounds, int& ok) {
    for (int i = 0; i < rounds; ++i) {
        const auto req = pattern(16 + (id * 37 + static_cast<unsigned>(i)) % 200, id * 1000 + static_cast<unsigned>(i));
        std::array<std::uint32_t, 1> len{static_cast<std::uint32_t>(req.size())};
        auto w1 = co_await cli.write_all(std::as_bytes(std::span(len)));
        REQUIRE(w1);
        auto w2 = co_await cli.write_all(req);
        REQUIRE(w2);
        const std::size_t resp_len = (id % 3 == 0) ? 64 * 1024 + id : 8 + id;
        std::vector<char> resp(resp_len);
        auto r = co_await cli.read_exact(resp);
        REQUIRE(r);
        const auto want = pattern(resp_len, id * 7 + static_cast<unsigned>(i) + static_cast<unsigned>(req.size()));
        REQUIRE(resp == want);
    }
    ++ok;
}

task<void> server(stream_socket& srv, unsigned id, int rounds, int& ok) {
    for (int i = 0; i < rounds; ++i) {
        std::array<std::uint32_t, 1> len{};
        auto r1 = co_await srv.read_exact(std::as_writable_bytes(std::span(len)));
        REQUIRE(r1);
        std::vector<char> req(len[0]);
        auto r2 = co_await srv.read_exact(req);
        REQUIRE(r2);
        REQUIRE(req == pattern(req.size(), id * 1000 + static_cast<unsigned>(i)));
        const std::size_t resp_len = (id % 3 == 0) ? 64 * 1024 + id : 8 + id;
        auto w = co_await srv.write_all(pattern(resp_len, id * 7 + static_cast<unsigned>(i) + len[0]));
        REQUIRE(w);
    }
    ++ok;
}

}  // namespace

TEST_CASE("spec hostile: many connections mixing directions under a tiny in-flight cap keep every byte",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context::options opts;
    opts.entries = 2;  // a small SQ and in-flight cap: operations queue in user space
    io_context ctx(opts);
    constexpr unsigned conns = 12;
    constexpr int rounds = 25;
    std::vector<std::pair<stream_socket, stream_socket>> pairs;
    for (unsigned i = 0; i < conns; ++i) {
        pairs.push_back(make_pair(ctx));
        if (i % 4 == 1) small_buffers(pairs.back().second.native_handle(), pairs.back().first.native_handle());
    }
    int ok = 0;
    auto body = [&]() -> task<void> {
        ringsock::scope s(ctx);
        for (unsigned i = 0; i < conns; ++i) {
            s.spawn(client(pairs[i].first, i, rounds, ok));
            s.spawn(server(pairs[i].second, i, rounds, ok));
        }
        co_await s.join();
    };
    ctx.sync_wait(body());
    CHECK(ok == static_cast<int>(2 * conns));
}

TEST_CASE("spec hostile: when_all over sockets answering each other in both directions keeps streams intact",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto a1_b1 = make_pair(ctx);
    auto& a1 = a1_b1.first;
    auto& b1 = a1_b1.second;
    auto a2_b2 = make_pair(ctx);
    auto& a2 = a2_b2.first;
    auto& b2 = a2_b2.second;
    auto a3_b3 = make_pair(ctx);
    auto& a3 = a3_b3.first;
    auto& b3 = a3_b3.second;
    int ok = 0;
    auto body = [&]() -> task<void> {
        (void)co_await ringsock::when_all(client(a1, 3, 40, ok), server(b1, 3, 40, ok), client(b2, 4, 40, ok),
                                          server(a2, 4, 40, ok), client(a3, 5, 40, ok), server(b3, 5, 40, ok));
    };
    ctx.sync_wait(body());
    CHECK(ok == 6);
}

// ---------------------------------------------------------------------------------------
// Message sockets and descriptors
// ---------------------------------------------------------------------------------------

TEST_CASE("spec hostile: seqpacket answers after receives keep boundaries, empty messages and order, and go direct",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto p = seqpacket_socket::pair(ctx);
    REQUIRE(p);
    auto& a = p->first;
    auto& b = p->second;
    const std::vector<std::size_t> sizes{0, 1, 0, 0, 4000, 7, 0, 100, 65000, 0};
    const unsigned before = settled_sq_tail(ctx);
    auto body = [&]() -> task<void> {
        std::array<char, 8> cmd{};
        for (std::size_t i = 0; i < sizes.size(); ++i) {
            REQUIRE(::send(b.native_handle(), "go", 2, 0) == 2);
            auto r = co_await a.receive_bytes(cmd);  // a receive on the ring
            REQUIRE(r);
            REQUIRE(*r == 2);
            const auto msg = pattern(sizes[i], static_cast<unsigned>(i));
            auto w = co_await a.send(msg);  // a lone answer: direct
            REQUIRE(w);
            CHECK(*w == sizes[i]);
        }
    };
    ctx.sync_wait(body());
    CHECK(sq_tail(ctx) - before == sizes.size());  // only the receives used the ring
    std::vector<char> in(70000);
    for (std::size_t i = 0; i < sizes.size(); ++i) {
        const ssize_t n = ::recv(b.native_handle(), in.data(), in.size(), MSG_DONTWAIT);
        REQUIRE(n == static_cast<ssize_t>(sizes[i]));
        CHECK(std::equal(in.begin(), in.begin() + n, pattern(sizes[i], static_cast<unsigned>(i)).begin()));
    }
    CHECK(::recv(b.native_handle(), in.data(), in.size(), MSG_DONTWAIT) == -1);
    CHECK(errno == EAGAIN);
}

TEST_CASE("spec hostile: datagrams sent after a receive into a full receiver queue wait on the ring, none lost or reordered",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto p = datagram_socket::pair(ctx);
    REQUIRE(p);
    auto& a = p->first;
    auto& b = p->second;
    constexpr std::uint32_t count = 200;  // far beyond net.unix.max_dgram_qlen
    std::vector<std::uint32_t> seen;
    auto body = [&]() -> task<void> {
        REQUIRE(::send(b.native_handle(), "go", 2, 0) == 2);
        std::array<char, 8> cmd{};
        auto r = co_await a.receive_bytes(cmd);
        REQUIRE(r);
        ringsock::scope s(ctx);
        auto sender = [&](std::stop_token) -> task<void> {
            for (std::uint32_t i = 0; i < count; ++i) {
                std::array<std::uint32_t, 2> m{i, ~i};
                auto w = co_await a.send(std::as_bytes(std::span(m)));
                REQUIRE(w);
                REQUIRE(*w == sizeof m);
            }
        };
        auto receiver = [&](std::stop_token) -> task<void> {
            (void)co_await ringsock::sleep_for(ctx, 30ms);  // let the queue fill and the sender hit EAGAIN
            for (std::uint32_t i = 0; i < count; ++i) {
                std::array<std::uint32_t, 2> m{};
                auto rr = co_await b.receive_bytes(std::as_writable_bytes(std::span(m)));
                REQUIRE(rr);
                REQUIRE(*rr == sizeof m);
                REQUIRE(m[1] == ~m[0]);
                seen.push_back(m[0]);
            }
        };
        s.spawn(sender);
        s.spawn(receiver);
        co_await s.join();
    };
    ctx.sync_wait(body());
    REQUIRE(seen.size() == count);
    for (std::uint32_t i = 0; i < count; ++i) CHECK(seen[i] == i);
}

TEST_CASE("spec hostile: unconnected send_to after a receive: direct when alone, errors reported, full receiver waits",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    const std::string name = "ringsock-spec-hostile-" + std::to_string(::getpid());
    auto rep = ringsock::endpoint::abstract(name);
    REQUIRE(rep);
    auto r = datagram_socket::bind(ctx, *rep);
    REQUIRE(r);
    auto s = datagram_socket::bind(ctx, ringsock::endpoint::autobind());
    REQUIRE(s);
    auto sep = s->local_endpoint();
    REQUIRE(sep);
    auto nowhere = ringsock::endpoint::abstract(name + "-nobody");
    REQUIRE(nowhere);
    constexpr std::uint32_t count = 60;
    std::vector<std::uint32_t> seen;
    unsigned ring_requests_lone = 0;
    auto body = [&]() -> task<void> {
        // A lone answer to a request goes direct.
        REQUIRE(::sendto(r->native_handle(), "hi", 2, 0, sep->data(), sep->size()) == 2);
        std::array<char, 8> in{};
        const unsigned t0 = settled_sq_tail(ctx);
        auto got = co_await s->receive_bytes(in);
        REQUIRE(got);
        auto w = co_await s->send_to(std::string_view("answer"), *rep);
        REQUIRE(w);
        CHECK(*w == 6);
        ring_requests_lone = sq_tail(ctx) - t0;
        // An error met directly is the operation's result.
        REQUIRE(::sendto(r->native_handle(), "hi", 2, 0, sep->data(), sep->size()) == 2);
        auto got2 = co_await s->receive_bytes(in);
        REQUIRE(got2);
        auto bad = co_await s->send_to(std::string_view("lost"), *nowhere);
        REQUIRE_FALSE(bad);
        CHECK(bad.error() == std::errc::connection_refused);
        // A full receiver: the sends that find no room go to the ring, in order.
        REQUIRE(::sendto(r->native_handle(), "hi", 2, 0, sep->data(), sep->size()) == 2);
        auto got3 = co_await s->receive_bytes(in);
        REQUIRE(got3);
        ringsock::scope sc(ctx);
        auto sender = [&](std::stop_token) -> task<void> {
            for (std::uint32_t i = 0; i < count; ++i) {
                std::array<std::uint32_t, 1> m{i};
                auto ww = co_await s->send_to(std::as_bytes(std::span(m)), *rep);
                REQUIRE(ww);
                CHECK(*ww == sizeof m);  // a datagram goes whole or not at all
            }
        };
        auto receiver = [&](std::stop_token) -> task<void> {
            (void)co_await ringsock::sleep_for(ctx, 30ms);
            std::array<char, 8> first{};
            auto f = co_await r->receive_bytes(first);  // "answer"
            REQUIRE(f);
            CHECK(std::string_view(first.data(), *f) == "answer");
            for (std::uint32_t i = 0; i < count; ++i) {
                std::array<std::uint32_t, 1> m{};
                auto rr = co_await r->receive_bytes(std::as_writable_bytes(std::span(m)));
                REQUIRE(rr);
                CHECK(*rr == sizeof m);  // never an empty datagram in its place
                seen.push_back(m[0]);
            }
        };
        sc.spawn(sender);
        sc.spawn(receiver);
        co_await sc.join();
    };
    ctx.sync_wait(body());
    CHECK(ring_requests_lone == 1);  // the receive; the answer went direct
    REQUIRE(seen.size() == count);
    for (std::uint32_t i = 0; i < count; ++i) CHECK(seen[i] == i);
}

TEST_CASE("spec hostile: a send_to into a full unconnected receiver while another coroutine is ready delivers the whole datagram",
          "[speculation][hostile]") {
    // With another coroutine ready, this send used to go to the ring. A receiver whose
    // queue is full (net.unix.max_dgram_qlen) makes the kernel's attempt copy the
    // payload and fail with EAGAIN; the ring's retry then sent an empty datagram and
    // reported 0 bytes (test_kernel_contract). Datagrams now only go by syscall.
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    const std::string name = "ringsock-spec-hostile-full-" + std::to_string(::getpid());
    auto rep = ringsock::endpoint::abstract(name);
    REQUIRE(rep);
    auto r = datagram_socket::bind(ctx, *rep);
    REQUIRE(r);
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    int queued = 0;
    const std::uint32_t filler = 0xfeedbeef;
    while (::sendto(s->native_handle(), &filler, sizeof filler, MSG_DONTWAIT, rep->data(), rep->size()) == 4) ++queued;
    REQUIRE(errno == EAGAIN);
    bool busy = true;
    auto spinner = [&]() -> task<void> {
        while (busy) co_await ctx.yield();
    };
    std::size_t sent = 0;
    auto sender = [&]() -> task<void> {
        const std::uint32_t v = 42;
        auto w = co_await s->send_to(std::as_bytes(std::span(&v, 1)), *rep);
        REQUIRE(w);
        sent = *w;
        busy = false;
    };
    std::vector<std::size_t> lengths;
    std::uint32_t last = 0;
    auto drainer = [&]() -> task<void> {
        (void)co_await ringsock::sleep_for(ctx, 20ms);
        for (int i = 0; i <= queued; ++i) {
            std::array<std::uint32_t, 1> m{};
            auto rr = co_await r->receive_bytes(std::as_writable_bytes(std::span(m)));
            REQUIRE(rr);
            lengths.push_back(*rr);
            last = m[0];
        }
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(spinner(), sender(), drainer()); };
    ctx.sync_wait(body());
    CHECK(sent == 4);
    REQUIRE(lengths.size() == static_cast<std::size_t>(queued) + 1);
    CHECK(lengths.back() == 4);
    CHECK(last == 42);
}

TEST_CASE("spec hostile: descriptors sent after a receive arrive once each, direct or on the ring, and none leak",
          "[speculation][hostile]") {
    const auto fds_before = ringsock::test::open_fd_count();
    {
        io_context ctx;
        auto p = fd_stream::pair(ctx);
        REQUIRE(p);
        auto& a = p->first;
        auto& b = p->second;
        small_buffers(a.native_handle(), b.native_handle());
        int pipefd[2];
        REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
        unique_fd pr(pipefd[0]), pw(pipefd[1]);
        const ino_t ino = inode_of(pr.get());
        constexpr int rounds = 30;
        const auto filler = pattern(200 * 1024, 5);
        int received = 0;
        auto body = [&]() -> task<void> {
            ringsock::scope s(ctx);
            auto sender = [&](std::stop_token) -> task<void> {
                for (int i = 0; i < rounds; ++i) {
                    std::array<char, 1> q{};
                    auto r = co_await a.read_exact(q);  // a receive first
                    REQUIRE(r);
                    // Every third round a big payload that cannot fit: part direct, rest ring.
                    std::span<const char> payload =
                        i % 3 == 2 ? std::span<const char>(filler) : std::span<const char>(filler.data(), 3);
                    const std::array<int, 2> two{pr.get(), pw.get()};
                    auto w = co_await a.send_fds(payload, two);
                    REQUIRE(w);
                    REQUIRE(*w == payload.size());
                }
            };
            auto receiver = [&](std::stop_token) -> task<void> {
                std::vector<char> in(filler.size());
                for (int i = 0; i < rounds; ++i) {
                    auto w = co_await b.write_all(std::string_view("?"));
                    REQUIRE(w);
                    const std::size_t n = i % 3 == 2 ? filler.size() : 3;
                    if (i % 3 == 2) (void)co_await ringsock::sleep_for(ctx, 2ms);  // let the sender fill up
                    auto r = co_await b.read_exact(std::span<char>(in.data(), n));
                    REQUIRE(r);
                    REQUIRE(std::equal(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(n), filler.begin()));
                    auto got = b.take_fds();
                    REQUIRE(got.size() == 2);
                    CHECK(inode_of(got[0].get()) == ino);
                    CHECK(inode_of(got[1].get()) == ino);
                    CHECK(got[0].get() != pr.get());
                    ++received;
                }
                CHECK(b.queued_fds() == 0);
            };
            s.spawn(sender);
            s.spawn(receiver);
            co_await s.join();
        };
        ctx.sync_wait(body());
        CHECK(received == rounds);
        // Seqpacket: a message with descriptors as a lone answer.
        auto q = seqpacket_socket::pair(ctx);
        REQUIRE(q);
        auto& c = q->first;
        auto& d = q->second;
        const unsigned t0 = settled_sq_tail(ctx);
        auto body2 = [&]() -> task<void> {
            std::array<char, 4> in{};
            for (int i = 0; i < 10; ++i) {
                REQUIRE(::send(d.native_handle(), "?", 1, 0) == 1);
                auto r = co_await c.receive_bytes(in);
                REQUIRE(r);
                if (i % 2) {
                    auto w = co_await c.send_fds(std::string_view(""), pr);
                    REQUIRE(w);
                } else {
                    const std::array<int, 2> two{pw.get(), pr.get()};
                    auto w = co_await c.send_fds(std::string_view("fd"), two);
                    REQUIRE(w);
                }
            }
        };
        ctx.sync_wait(body2());
        CHECK(sq_tail(ctx) - t0 == 10);  // the sends went direct
        auto body3 = [&]() -> task<void> {
            std::array<char, 4> in{};
            for (int i = 0; i < 10; ++i) {
                auto m = co_await d.receive(in);
                REQUIRE(m);
                CHECK(m->bytes == (i % 2 ? 0u : 2u));
                CHECK(m->fds.size() == (i % 2 ? 1u : 2u));
                for (auto& f : m->fds) CHECK(inode_of(f.get()) == ino);
            }
        };
        ctx.sync_wait(body3());
    }
    CHECK(ringsock::test::open_fd_count() == fds_before);
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

// A message socket receives what its peer sent before closing, then answers: the send
// must fail with `expected` (any error when nullopt).
template <class MessageSocket>
void answer_a_closed_peer(io_context& ctx, std::optional<std::errc> expected) {
    auto p = MessageSocket::pair(ctx);
    REQUIRE(p);
    auto& a = p->first;
    REQUIRE(::send(p->second.native_handle(), "x", 1, 0) == 1);
    p->second.close();
    auto body = [&]() -> task<void> {
        std::array<char, 4> in{};
        auto r = co_await a.receive_bytes(in);
        REQUIRE(r);
        auto w = co_await a.send(std::string_view("y"));
        REQUIRE_FALSE(w);
        if (expected) CHECK(w.error() == *expected);
    };
    ctx.sync_wait(body());
}

TEST_CASE("spec hostile: a send after a receive to a closed peer is an error result, never SIGPIPE",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    sigpipe_default sig;  // a SIGPIPE would kill this process
    io_context ctx;
    SECTION("stream write_all") {
        auto a_b = make_pair(ctx);
        auto& a = a_b.first;
        auto& b = a_b.second;
        REQUIRE(::send(b.native_handle(), "x", 1, 0) == 1);
        b.close();
        auto body = [&]() -> task<void> {
            std::array<char, 1> in{};
            auto r = co_await a.read_exact(in);
            REQUIRE(r);
            auto w = co_await a.write_all(std::string_view("y"));
            REQUIRE_FALSE(w);
            CHECK(w.error() == std::errc::broken_pipe);
            auto w2 = co_await a.write_some(std::string_view("y"));
            REQUIRE_FALSE(w2);
        };
        ctx.sync_wait(body());
    }
    SECTION("seqpacket send") { answer_a_closed_peer<seqpacket_socket>(ctx, std::errc::broken_pipe); }
    SECTION("fd_stream send_fds") {
        auto p = fd_stream::pair(ctx);
        REQUIRE(p);
        auto& a = p->first;
        auto& b = p->second;
        REQUIRE(::send(b.native_handle(), "x", 1, 0) == 1);
        b.close();
        int pipefd[2];
        REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
        unique_fd pr(pipefd[0]), pw(pipefd[1]);
        auto body = [&]() -> task<void> {
            std::array<char, 1> in{};
            auto r = co_await a.read_some(in);
            REQUIRE(r);
            auto w = co_await a.send_fds(std::string_view("y"), pr);
            REQUIRE_FALSE(w);
            CHECK(w.error() == std::errc::broken_pipe);
        };
        ctx.sync_wait(body());
    }
    SECTION("connected datagram send") { answer_a_closed_peer<datagram_socket>(ctx, std::nullopt); }
}

TEST_CASE("spec hostile: shutdown(send) then a send after a receive fails with EPIPE and reading still works",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    sigpipe_default sig;
    io_context ctx;
    auto a_b = make_pair(ctx);
    auto& a = a_b.first;
    auto& b = a_b.second;
    auto body = [&]() -> task<void> {
        REQUIRE(::send(b.native_handle(), "ab", 2, 0) == 2);
        std::array<char, 1> in{};
        auto r = co_await a.read_exact(in);
        REQUIRE(r);
        REQUIRE(a.shutdown());
        auto w = co_await a.write_all(std::string_view("never"));
        REQUIRE_FALSE(w);
        CHECK(w.error() == std::errc::broken_pipe);
        CHECK(w.partial_value() == 0);
        auto r2 = co_await a.read_exact(in);
        REQUIRE(r2);
        CHECK(in[0] == 'b');
        auto w2 = co_await a.write_all(std::string_view("never"));
        REQUIRE_FALSE(w2);  // still refused, and not stream_broken: nothing was sent
        CHECK(w2.error() == std::errc::broken_pipe);
    };
    ctx.sync_wait(body());
    std::array<char, 8> in{};
    CHECK(::recv(b.native_handle(), in.data(), in.size(), MSG_DONTWAIT) == 0);  // EOF, no bytes
}

TEST_CASE("spec hostile: a socket closed or released by another coroutine in the same turn is never written to",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    const bool release = GENERATE(false, true);
    auto a_a_peer = make_pair(ctx);
    auto& a = a_a_peer.first;
    auto& a_peer = a_a_peer.second;
    auto c_c_peer = make_pair(ctx);
    auto& c = c_c_peer.first;
    auto& c_peer = c_c_peer.second;
    REQUIRE(::send(a_peer.native_handle(), "A", 1, 0) == 1);
    REQUIRE(::send(c_peer.native_handle(), "C", 1, 0) == 1);
    std::vector<int> order;
    unique_fd released;
    stream_socket reuse_a, reuse_b;  // the descriptor numbers `a` had, if they are reused
    bool wrote_error = false;
    auto closer = [&]() -> task<void> {
        std::array<char, 1> in{};
        auto r = co_await c.read_exact(in);
        REQUIRE(r);
        order.push_back(1);
        if (release) released = a.release();
        else a.close();
        // Whatever takes the freed number next must not receive `a`'s answer.
        auto p = stream_socket::pair(ctx);
        REQUIRE(p);
        reuse_a = std::move(p->first);
        reuse_b = std::move(p->second);
    };
    auto answerer = [&]() -> task<void> {
        std::array<char, 1> in{};
        auto r = co_await a.read_exact(in);
        REQUIRE(r);  // completed before the close: keeps its result
        order.push_back(2);
        auto w = co_await a.write_all(std::string_view("answer"));
        wrote_error = !w;
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(closer(), answerer()); };
    ctx.sync_wait(body());
    REQUIRE(order == std::vector<int>{1, 2});  // the closer ran first in that turn
    CHECK(wrote_error);
    std::array<char, 16> in{};
    CHECK(::recv(reuse_b.native_handle(), in.data(), in.size(), MSG_DONTWAIT) == -1);
    CHECK(::recv(reuse_a.native_handle(), in.data(), in.size(), MSG_DONTWAIT) == -1);
    const ssize_t n = ::recv(a_peer.native_handle(), in.data(), in.size(), MSG_DONTWAIT);
    CHECK(n <= 0);  // EOF (closed) or nothing (released): never the answer
}

TEST_CASE("spec hostile: a send after a receive with a stop already requested sends nothing",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto a_b = make_pair(ctx);
    auto& a = a_b.first;
    auto& b = a_b.second;
    std::stop_source src;
    src.request_stop();
    const unsigned before = settled_sq_tail(ctx);
    auto body = [&]() -> task<void> {
        REQUIRE(::send(b.native_handle(), "x", 1, 0) == 1);
        std::array<char, 1> in{};
        auto r = co_await a.read_exact(in);
        REQUIRE(r);
        auto w = co_await a.write_all(std::string_view("no"), src.get_token());
        REQUIRE_FALSE(w);
        CHECK(w.error() == std::errc::operation_canceled);
        CHECK(w.partial_value() == 0);
        auto w2 = co_await a.write_some(std::string_view("no"), src.get_token());
        REQUIRE_FALSE(w2);
        // Not broken: a later plain write goes through.
        auto w3 = co_await a.write_all(std::string_view("ok"));
        REQUIRE(w3);
    };
    ctx.sync_wait(body());
    CHECK(sq_tail(ctx) - before == 1);  // the read only
    std::array<char, 8> in{};
    REQUIRE(::recv(b.native_handle(), in.data(), in.size(), MSG_DONTWAIT) == 2);
    CHECK(std::string_view(in.data(), 2) == "ok");
}

TEST_CASE("spec hostile: a time-limited write_all after a receive to a stalled peer times out part-way and breaks the stream",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto a_b = make_pair(ctx);
    auto& a = a_b.first;
    auto& b = a_b.second;
    small_buffers(a.native_handle(), b.native_handle());
    const auto big = pattern(1 << 20, 9);
    auto body = [&]() -> task<void> {
        REQUIRE(::send(b.native_handle(), "x", 1, 0) == 1);
        std::array<char, 1> in{};
        auto r = co_await a.read_exact(in);
        REQUIRE(r);
        const auto t0 = std::chrono::steady_clock::now();
        auto w = co_await a.write_all(big, 30ms);
        const auto took = std::chrono::steady_clock::now() - t0;
        REQUIRE_FALSE(w);
        CHECK(w.error() == std::errc::timed_out);
        CHECK(w.partial_value() > 0);
        CHECK(w.partial_value() < big.size());
        CHECK(took >= 25ms);
        REQUIRE(::send(b.native_handle(), "y", 1, 0) == 1);
        auto r2 = co_await a.read_exact(in);
        REQUIRE(r2);
        auto w2 = co_await a.write_all(std::string_view("more"));
        REQUIRE_FALSE(w2);
        CHECK(w2.error() == ringsock::errc::stream_broken);
    };
    ctx.sync_wait(body());
}

// ---------------------------------------------------------------------------------------
// The condition: alone in the next enter, or on the ring
// ---------------------------------------------------------------------------------------

namespace {

// A request waits on `a`; `answer` reads it and answers. `other` is started right after
// (when_all starts children in order, each until its first suspension). Returns the
// SQEs submitted by the whole run, the peer's view checked.
template <class Other>
unsigned answer_with(io_context& ctx, stream_socket& a, stream_socket& a_peer, Other& other) {
    REQUIRE(::send(a_peer.native_handle(), "req!", 4, 0) == 4);
    const unsigned before = settled_sq_tail(ctx);
    auto answer = [&]() -> task<void> {
        std::array<char, 4> in{};
        auto r = co_await a.read_exact(in);
        REQUIRE(r);
        auto w = co_await a.write_all(std::string_view("resp"));
        REQUIRE(w);
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(answer(), other()); };
    ctx.sync_wait(body());
    const unsigned submitted = sq_tail(ctx) - before;
    std::array<char, 4> got{};
    REQUIRE(::recv(a_peer.native_handle(), got.data(), got.size(), MSG_WAITALL) == 4);
    CHECK(std::string_view(got.data(), 4) == "resp");
    return submitted;
}

}  // namespace

TEST_CASE("spec hostile: an answer while another coroutine is ready to run stays on the ring",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto a_a_peer = make_pair(ctx);
    auto& a = a_a_peer.first;
    auto& a_peer = a_a_peer.second;
    // Keeps itself in the ready queue for a few turns, submitting nothing.
    auto spinner = [&]() -> task<void> {
        for (int i = 0; i < 16; ++i) co_await ctx.yield();
    };
    CHECK(answer_with(ctx, a, a_peer, spinner) == 2);  // the read and the answer
}

TEST_CASE("spec hostile: an answer while a timer's SQE waits in the SQ stays on the ring", "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto a_a_peer = make_pair(ctx);
    auto& a = a_a_peer.first;
    auto& a_peer = a_a_peer.second;
    // Resumed in the same turn as the answer (both reads completed together), it arms a
    // timer just before the answer is written.
    auto c_c_peer = make_pair(ctx);
    auto& c = c_c_peer.first;
    auto& c_peer = c_c_peer.second;
    REQUIRE(::send(c_peer.native_handle(), "c", 1, 0) == 1);
    auto sleeper = [&]() -> task<void> {
        std::array<char, 1> in{};
        auto r = co_await c.read_exact(in);
        REQUIRE(r);
        (void)co_await ringsock::sleep_for(ctx, 1ms);
    };
    // Order of resumption: the answer's read was prepared first, so it resumes first and
    // would find the SQ empty. Put the sleeper's read first instead.
    auto answer_second = [&]() -> task<void> {
        REQUIRE(::send(a_peer.native_handle(), "req!", 4, 0) == 4);
        auto answer = [&]() -> task<void> {
            std::array<char, 4> in{};
            auto r = co_await a.read_exact(in);
            REQUIRE(r);
            auto w = co_await a.write_all(std::string_view("resp"));
            REQUIRE(w);
        };
        (void)co_await ringsock::when_all(sleeper(), answer());
    };
    const unsigned before = settled_sq_tail(ctx);
    ctx.sync_wait(answer_second());
    // Two reads, the timer, the answer: four requests (three if the answer went direct).
    CHECK(sq_tail(ctx) - before == 4);
    std::array<char, 4> got{};
    REQUIRE(::recv(a_peer.native_handle(), got.data(), got.size(), MSG_WAITALL) == 4);
    CHECK(std::string_view(got.data(), 4) == "resp");
}

TEST_CASE("spec hostile: an answer right after a cancel was queued stays on the ring", "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto a_a_peer = make_pair(ctx);
    auto& a = a_a_peer.first;
    auto& a_peer = a_a_peer.second;
    auto idle_pair = make_pair(ctx);  // the peer stays open, so the read never ends
    auto& idle = idle_pair.first;
    std::stop_source src;
    bool cancelled = false;
    auto waiter = [&]() -> task<void> {
        std::array<char, 1> in{};
        auto r = co_await idle.read_some(in, src.get_token());  // in flight, never satisfied
        cancelled = !r && r.error() == std::errc::operation_canceled;
    };
    REQUIRE(::send(a_peer.native_handle(), "req!", 4, 0) == 4);
    auto answer = [&]() -> task<void> {
        std::array<char, 4> in{};
        auto r = co_await a.read_exact(in);
        REQUIRE(r);
        src.request_stop();  // an ASYNC_CANCEL goes into the SQ
        auto w = co_await a.write_all(std::string_view("resp"));
        REQUIRE(w);
    };
    const unsigned before = settled_sq_tail(ctx);
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(waiter(), answer()); };
    ctx.sync_wait(body());
    CHECK(cancelled);
    // Two reads, the cancel, the answer (three if the answer went direct).
    CHECK(sq_tail(ctx) - before == 4);
    std::array<char, 4> got{};
    REQUIRE(::recv(a_peer.native_handle(), got.data(), got.size(), MSG_WAITALL) == 4);
    CHECK(std::string_view(got.data(), 4) == "resp");
}

TEST_CASE("spec hostile: an answer started alongside a queued receive stays on the ring; alone it goes direct",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto a_a_peer = make_pair(ctx);
    auto& a = a_a_peer.first;
    auto& a_peer = a_a_peer.second;
    auto c_c_peer = make_pair(ctx);
    auto& c = c_c_peer.first;
    auto& c_peer = c_c_peer.second;
    auto nothing = [&]() -> task<void> { co_return; };
    CHECK(answer_with(ctx, a, a_peer, nothing) == 1);  // alone: only the read used the ring
    // The reader's read is prepared first, so it resumes first in the turn both reads
    // complete, and queues a second read (late list) before the answer is written.
    REQUIRE(::send(c_peer.native_handle(), "cc", 2, 0) == 2);
    auto reader = [&]() -> task<void> {
        std::array<char, 1> in{};
        auto r = co_await c.read_exact(in);
        REQUIRE(r);
        auto r2 = co_await c.read_exact(in);
        REQUIRE(r2);
    };
    REQUIRE(::send(a_peer.native_handle(), "req!", 4, 0) == 4);
    const unsigned before = settled_sq_tail(ctx);
    auto answer = [&]() -> task<void> {
        std::array<char, 4> in{};
        auto r = co_await a.read_exact(in);
        REQUIRE(r);
        auto w = co_await a.write_all(std::string_view("resp"));
        REQUIRE(w);
    };
    auto body = [&]() -> task<void> { (void)co_await ringsock::when_all(reader(), answer()); };
    ctx.sync_wait(body());
    CHECK(sq_tail(ctx) - before == 4);  // three reads and the answer
    std::array<char, 4> got{};
    REQUIRE(::recv(a_peer.native_handle(), got.data(), got.size(), MSG_WAITALL) == 4);
    CHECK(std::string_view(got.data(), 4) == "resp");
}

// ---------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------

TEST_CASE("spec hostile: a ping-pong across two pool threads (sends direct) keeps every byte",
          "[speculation][hostile]") {
    ringsock::test::fd_leak_guard guard;
    constexpr int rounds = 2000;
    std::promise<int> ping_done, pong_done;
    std::unique_ptr<stream_socket> a, b;
    auto pinger = [&]() -> task<void> {
        int ok = 0;
        for (int i = 0; i < rounds; ++i) {
            const auto m = pattern(1 + static_cast<unsigned>(i) % 300, static_cast<unsigned>(i));
            auto w = co_await a->write_all(m);
            if (!w) break;
            std::vector<char> in(m.size());
            auto r = co_await a->read_exact(in);
            if (!r) break;
            std::reverse(in.begin(), in.end());
            if (in != m) break;
            ++ok;
        }
        a.reset();
        ping_done.set_value(ok);
    };
    auto ponger = [&]() -> task<void> {
        int ok = 0;
        for (int i = 0; i < rounds; ++i) {
            std::vector<char> in(1 + static_cast<unsigned>(i) % 300);
            auto r = co_await b->read_exact(in);
            if (!r) break;
            std::reverse(in.begin(), in.end());
            auto w = co_await b->write_all(in);  // a send after a receive, alone: direct
            if (!w) break;
            ++ok;
        }
        b.reset();
        pong_done.set_value(ok);
    };
    {
        ringsock::context_pool pool(2);
        auto p = ringsock::detail::socket_pair(SOCK_STREAM);
        REQUIRE(p);
        a = std::make_unique<stream_socket>(pool[0], std::move(p->first));
        b = std::make_unique<stream_socket>(pool[1], std::move(p->second));
        ringsock::spawn_on(pool[0], pinger());
        ringsock::spawn_on(pool[1], ponger());
        auto f1 = ping_done.get_future();
        auto f2 = pong_done.get_future();
        CHECK(f1.get() == rounds);
        CHECK(f2.get() == rounds);
    }
}
