// Speculative I/O: a run of operations in one direction on a socket, with nothing else
// ready to run, is served by a direct non-blocking syscall instead of a ring round.
// So is a send after a receive when nothing else would share its enter. These tests
// pin that it happens, that every fallback to the ring keeps the bytes right (EAGAIN,
// partial writes, queued operations, truncation), and that a receive after a send, or
// a send that would share an enter, keeps using the ring.
// (No co_await inside REQUIRE: g++ 12 evaluates it more than once.)
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/fd_count.hpp"
#include "support/submission_count.hpp"

namespace {

// Tests name each pair and bind references to its halves: clang 14 cannot capture
// structured bindings in lambdas.
using ringsock::test::make_pair;
using ringsock::test::settled_sq_tail;
using ringsock::test::sq_tail;
using namespace std::chrono_literals;
using ringsock::datagram_socket;
using ringsock::io_context;
using ringsock::stream_socket;
using ringsock::task;

}  // namespace

TEST_CASE("speculation: a writer loop's sends bypass the ring once it is a run", "[speculation]") {
    const auto fds = ringsock::test::open_fd_count();
    {
        io_context ctx;
        auto a_b = make_pair(ctx);
        auto& a = a_b.first;
        auto& b = a_b.second;
        ctx.sync_wait([](stream_socket& a) -> task<void> {
            for (int i = 0; i < 3; ++i) {
                auto r = co_await a.write_all(std::string_view("abcd"));
                REQUIRE(r);
            }
        }(a));
        const unsigned before = sq_tail(ctx);
        ctx.sync_wait([](stream_socket& a) -> task<void> {
            for (int i = 0; i < 100; ++i) {
                auto r = co_await a.write_all(std::string_view("abcd"));
                REQUIRE(r);
            }
        }(a));
        CHECK(sq_tail(ctx) == before);  // no SQE for 100 sends that found room
        std::string got(412, '\0');
        REQUIRE(::recv(b.native_handle(), got.data(), got.size(), MSG_WAITALL) == 412);
        std::string want;
        for (int i = 0; i < 103; ++i) want += "abcd";
        CHECK(got == want);
    }
    CHECK(ringsock::test::open_fd_count() == fds);
}

TEST_CASE("speculation: in a lone ping-pong each send goes direct and each receive to the ring", "[speculation]") {
    io_context ctx;
    auto a_b = make_pair(ctx);
    auto& a = a_b.first;
    auto& b = a_b.second;
    const unsigned before = settled_sq_tail(ctx);
    ctx.sync_wait([](stream_socket& a, stream_socket& b) -> task<void> {
        std::array<char, 4> in{};
        for (int i = 0; i < 50; ++i) {
            {
                auto r_1 = co_await a.write_all(std::string_view("ping"));
                REQUIRE(r_1);
            }
            {
                auto r_2 = co_await b.read_exact(in);
                REQUIRE(r_2);
            }
            REQUIRE(std::string_view(in.data(), 4) == "ping");
            {
                auto r_3 = co_await b.write_all(std::string_view("pong"));
                REQUIRE(r_3);
            }
            {
                auto r_4 = co_await a.read_exact(in);
                REQUIRE(r_4);
            }
            REQUIRE(std::string_view(in.data(), 4) == "pong");
        }
    }(a, b));
    // A receive after a send rarely finds data (here it would, but the rule does not
    // look): 100 ring requests. A send after a receive, with nothing else for the next
    // enter, would pay a ring round of its own: it goes direct.
    const unsigned ring_requests = sq_tail(ctx) - before;
    CHECK(ring_requests == 100);
}

namespace {

// One coroutine reads a request on `a`, then answers it; meanwhile another coroutine
// (when `busy`) has queued a receive for the same enter. Returns the SQEs submitted.
unsigned answer_after_read(bool busy) {
    io_context ctx;
    auto ap = make_pair(ctx);
    auto cp = make_pair(ctx);
    auto ep = make_pair(ctx);
    auto& a = ap.first;
    auto& a_peer = ap.second;
    auto& c = cp.first;
    auto& c_peer = cp.second;
    auto& e = ep.first;
    auto& e_peer = ep.second;
    REQUIRE(::send(a_peer.native_handle(), "req!", 4, 0) == 4);
    REQUIRE(::send(c_peer.native_handle(), "c...", 4, 0) == 4);
    REQUIRE(::send(e_peer.native_handle(), "e...", 4, 0) == 4);
    const unsigned before = settled_sq_tail(ctx);
    auto answer = [&]() -> task<void> {
        std::array<char, 4> in{};
        auto r = co_await a.read_exact(in);
        REQUIRE(r);
        auto w = co_await a.write_all(std::string_view("resp"));
        REQUIRE(w);
    };
    // Resumed first (its receive went first), it queues a receive on `e` before the
    // answer is written: the answer then rides that enter instead of a syscall.
    auto other = [&]() -> task<void> {
        std::array<char, 4> in{};
        auto r = co_await c.read_exact(in);
        REQUIRE(r);
        auto r2 = co_await e.read_exact(in);
        REQUIRE(r2);
    };
    if (busy) {
        ctx.sync_wait([&]() -> task<void> { (void)co_await ringsock::when_all(other(), answer()); }());
    } else {
        ctx.sync_wait(answer());
    }
    const unsigned submitted = sq_tail(ctx) - before;
    std::array<char, 4> got{};
    REQUIRE(::recv(a_peer.native_handle(), got.data(), got.size(), MSG_WAITALL) == 4);
    CHECK(std::string_view(got.data(), 4) == "resp");
    return submitted;
}

}  // namespace

TEST_CASE("speculation: a send after a receive goes direct only when nothing else would share its enter",
          "[speculation]") {
    const auto fds = ringsock::test::open_fd_count();
    CHECK(answer_after_read(false) == 1);  // the read on the ring, the answer direct
    CHECK(answer_after_read(true) == 4);   // three reads and the answer, in shared enters
    CHECK(ringsock::test::open_fd_count() == fds);
}

TEST_CASE("speculation: a write_all larger than the socket buffer sends part directly and the rest on the ring",
          "[speculation]") {
    const auto fds = ringsock::test::open_fd_count();
    {
        io_context ctx;
        auto a_b = make_pair(ctx);
        auto& a = a_b.first;
        auto& b = a_b.second;
        int small = 4096;
        REQUIRE(::setsockopt(a.native_handle(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
        std::vector<std::uint8_t> data(1 << 20);
        for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 7 + i / 251);
        std::vector<std::uint8_t> got(data.size());
        ctx.sync_wait([](stream_socket& a, stream_socket& b, std::vector<std::uint8_t>& data,
                         std::vector<std::uint8_t>& got) -> task<void> {
            auto first = co_await a.write_all(std::string_view("x"));  // start a run of sends
            REQUIRE(first);
            std::array<char, 1> one{};
            {
                auto r_5 = co_await b.read_exact(one);
                REQUIRE(r_5);
            }
            ringsock::scope s(a.context());
            s.spawn([&](std::stop_token) -> task<void> {
            auto r = co_await b.read_exact(got);
            REQUIRE(r);
        });
            auto w = co_await a.write_all(data);
            REQUIRE(w);
            CHECK(*w == data.size());
            co_await s.join();
        }(a, b, data, got));
        CHECK(got == data);
    }
    CHECK(ringsock::test::open_fd_count() == fds);
}

TEST_CASE("speculation: a reader loop gets data that is already there, then waits on the ring for the rest",
          "[speculation]") {
    io_context ctx;
    auto a_b = make_pair(ctx);
    auto& a = a_b.first;
    auto& b = a_b.second;
    ctx.sync_wait([](stream_socket& a, stream_socket& b) -> task<void> {
        std::array<char, 3> in{};
        REQUIRE(::send(a.native_handle(), "abcdef", 6, 0) == 6);
        {
            auto r_6 = co_await b.read_exact(in);
            REQUIRE(r_6);
        }
        CHECK(std::string_view(in.data(), 3) == "abc");
        {
            auto r_7 = co_await b.read_exact(in);
            REQUIRE(r_7);
        }
        CHECK(std::string_view(in.data(), 3) == "def");
        // Nothing there now: the attempt misses and the ring waits for the peer.
        ringsock::scope s(a.context());
        s.spawn([&](std::stop_token) -> task<void> {
            (void)co_await ringsock::sleep_for(a.context(), 20ms);
            {
                auto r_8 = co_await a.write_all(std::string_view("ghi"));
                REQUIRE(r_8);
            }
        });
        {
            auto r_9 = co_await b.read_exact(in);
            REQUIRE(r_9);
        }
        CHECK(std::string_view(in.data(), 3) == "ghi");
        REQUIRE(a.shutdown());
        auto eof = co_await b.read_some(in);
        REQUIRE(eof);
        CHECK(*eof == 0);  // end of stream, found directly
        co_await s.join();
    }(a, b));
}

TEST_CASE("speculation: a direct attempt never overtakes an operation queued on the same direction",
          "[speculation]") {
    io_context ctx;
    auto a_b = make_pair(ctx);
    auto& a = a_b.first;
    auto& b = a_b.second;
    int small = 4096;
    REQUIRE(::setsockopt(a.native_handle(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    std::vector<char> big(256 * 1024, 'B');
    std::string got;
    ctx.sync_wait([](stream_socket& a, stream_socket& b, std::vector<char>& big, std::string& got) -> task<void> {
        {
            auto r_10 = co_await a.write_all(std::string_view("1"));
            REQUIRE(r_10);
        }
        ringsock::scope s(a.context());
        // The big write blocks on the ring; the small one queues behind it and must not
        // jump ahead through a direct send.
        s.spawn([&](std::stop_token) -> task<void> {
            auto r = co_await a.write_all(big);
            REQUIRE(r);
        });
        s.spawn([&](std::stop_token) -> task<void> {
            auto r = co_await a.write_all(std::string_view("END"));
            REQUIRE(r);
        });
        s.spawn([&](std::stop_token) -> task<void> {
            std::vector<char> in(big.size() + 4);
            {
                auto r_11 = co_await b.read_exact(in);
                REQUIRE(r_11);
            }
            got.assign(in.begin(), in.end());
        });
        co_await s.join();
    }(a, b, big, got));
    REQUIRE(got.size() == big.size() + 4);
    CHECK(got.front() == '1');
    CHECK(got.substr(1, 3) == "BBB");
    CHECK(got.substr(got.size() - 3) == "END");
}

TEST_CASE("speculation: a datagram longer than the buffer read directly is reported truncated", "[speculation]") {
    const auto fds = ringsock::test::open_fd_count();
    {
        io_context ctx;
        auto p = datagram_socket::pair(ctx);
        REQUIRE(p);
        auto& [a, b] = *p;
        ctx.sync_wait([](datagram_socket& a, datagram_socket& b) -> task<void> {
            std::array<char, 4> in{};
            for (int i = 0; i < 3; ++i) {
                {
                    auto r_12 = co_await a.send(std::string_view("0123456789"));
                    REQUIRE(r_12);
                }
                auto r = co_await b.receive_bytes(in);
                REQUIRE_FALSE(r);
                CHECK(r.error() == ringsock::errc::message_truncated);
                CHECK(r.partial_value() == 4);
            }
            // A run of receives: the later ones are direct, with the same result.
            for (int i = 0; i < 3; ++i) {
                auto r = co_await a.send(std::string_view("abcdefgh"));
                REQUIRE(r);
            }
            for (int i = 0; i < 3; ++i) {
                auto r = co_await b.receive_bytes(in);
                CHECK(r.error() == ringsock::errc::message_truncated);
                CHECK(std::string_view(in.data(), 4) == "abcd");
            }
        }(a, b));
    }
    CHECK(ringsock::test::open_fd_count() == fds);
}

// A coroutine whose every operation completes at once by a direct syscall never
// suspends; without a per-turn budget it would starve timers and other coroutines.
// Runs `round` until a 1 ms timer fires or `cap` rounds pass: the rounds it ran.
template <class Round>
int rounds_before_a_timer(io_context& ctx, int cap, Round& round) {
    bool timer_fired = false;
    int rounds = 0;
    auto busy = [&]() -> task<void> {
        while (!timer_fired && rounds < cap) {
            co_await round();
            ++rounds;
        }
    };
    auto timer = [&]() -> task<void> {
        auto slept = co_await ringsock::sleep_for(ctx, 1ms);
        REQUIRE(slept);
        timer_fired = true;
    };
    ctx.sync_wait([&]() -> task<void> { (void)co_await ringsock::when_all(timer(), busy()); }());
    CHECK(timer_fired);
    return rounds;
}

TEST_CASE("speculation: a loop whose sends and receives all complete at once still lets a timer and other coroutines run",
          "[speculation]") {
    io_context ctx;
    auto a_b = make_pair(ctx);
    auto& a = a_b.first;
    auto& b = a_b.second;
    auto round = [&]() -> task<void> {
        std::array<char, 1> in{};
        auto w = co_await a.write_all(std::string_view("x"));
        REQUIRE(w);
        auto r = co_await b.read_exact(in);  // the byte is there: a direct recv
        REQUIRE(r);
    };
    constexpr int cap = 200'000;  // a loop that never yields ends here
    CHECK(rounds_before_a_timer(ctx, cap, round) < cap);
}

TEST_CASE("speculation: a loop of connects and accepts that all complete at once still lets a timer run",
          "[speculation]") {
    io_context ctx;
    auto ep = ringsock::test::unique_abstract("fair-accept");
    auto acc = ringsock::acceptor::listen(ctx, ep);
    REQUIRE(acc);
    auto round = [&]() -> task<void> {
        auto c = co_await stream_socket::connect(ctx, ep);
        REQUIRE(c);
        auto s = co_await acc->accept();
        REQUIRE(s);
    };
    constexpr int cap = 20'000;
    CHECK(rounds_before_a_timer(ctx, cap, round) < cap);
}
