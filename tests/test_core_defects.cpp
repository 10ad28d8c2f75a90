// One test per defect fixed by "Core v2" (cca767d). Each fails, crashes or runs into
// its time bound on the code before it (b2124d9) and passes on the fixed core. The
// program runs under a scribbling allocator, so memory the kernel reads after it was
// freed shows up as bytes no test ever sends.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <system_error>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/leak_guard.hpp"
#include "support/scribble_alloc.hpp"
#include "support/turn_support.hpp"

namespace {

using namespace std::chrono_literals;
using ringsock::io_context;
using ringsock::scope;
using ringsock::stream_socket;
using ringsock::task;
using ringsock::test::canceled;
using ringsock::test::clock_type;
using ringsock::test::fd_leak_guard;
using ringsock::test::make_pair;
using ringsock::test::ms_since;
using ringsock::test::pump;
using ringsock::test::raw_send;
using ringsock::test::timed_out;

/// How one operation ended, as seen by the coroutine that awaited it.
struct outcome {
    bool done = false;
    std::error_code ec;
    std::size_t value = 0;
    long long ms = -1;  // from the co_await to its resumption
};

template <class R>
void record(outcome& o, R& r, clock_type::time_point t0) {
    o.ec = r.error();
    if constexpr (requires { *r + 0; }) o.value = r.partial_value();
    o.ms = ms_since(t0);
    o.done = true;
}

std::string letters(std::size_t n) {
    std::string s(n, 'a');
    for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + i % 26);
    return s;
}

}  // namespace

TEST_CASE("core defects: the kernel never reads an iovec array or a connect's state after its frame is freed",
          "[core_defects]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    const std::string real = letters(9 * 8);

    SECTION("a scope destroyed in the turn its child prepared a 9-iovec write_all") {
        for (int round = 0; round < 20; ++round) {
            std::optional<scope> sc(std::in_place, ctx);
            bool child_resumed = false;
            bool destroyer_ran = false;
            sc->spawn([&](std::stop_token) -> task<void> {
                // The data and the iovecs live in this frame; 9 > 8 inline entries, so
                // the operation copies the iovecs into a heap array.
                std::array<char, 9 * 8> data{};
                for (std::size_t i = 0; i < data.size(); ++i) data[i] = real[i];
                std::array<iovec, 9> iov{};
                for (std::size_t i = 0; i < 9; ++i) iov[i] = {data.data() + 8 * i, 8};
                (void)co_await a.write_all(std::span<const iovec>(iov));
                child_resumed = true;
            });
            // Runs later in the same turn: the child's SENDMSG is prepared, not submitted.
            scope other(ctx);
            other.spawn([&](std::stop_token) -> task<void> {
                CHECK(io_uring_sq_ready(ctx.native_handle()) > 0);
                sc.reset();
                destroyer_ran = true;
                co_return;
            });
            REQUIRE(pump(ctx, [&] { return destroyer_ran && other.size() == 0; }));
            CHECK_FALSE(child_resumed);
            const std::string got = ringsock::test::drain_fd(b.native_handle());
            INFO("round " << round << ": the peer received " << got.size() << " bytes");
            CHECK((got.empty() || got == real));
            CHECK(ringsock::test::only_real_bytes(got));
        }
        CHECK(ringsock::test::scribbled_blocks() > 0);
    }

    SECTION("a frame destroyed while its connect to a full backlog is prepared but not submitted") {
        auto ep = ringsock::test::unique_abstract("defect-connect");
        auto listener = ringsock::test::raw_listener(ep, 1);
        REQUIRE(::fcntl(listener.get(), F_SETFL, O_NONBLOCK) == 0);
        for (int round = 0; round < 20; ++round) {
            // A listener with room takes the connect directly; a full one puts it on the ring.
            auto fillers = ringsock::test::fill_backlog(ep);
            REQUIRE_FALSE(fillers.empty());
            bool resumed = false;
            auto t = [](io_context& c, const ringsock::endpoint& e, bool& r) -> task<void> {
                auto s = co_await stream_socket::connect(c, e);
                r = true;
            }(ctx, ep, resumed);
            t.handle().resume();  // outside a turn: the CONNECT SQE waits in the SQ
            REQUIRE(io_uring_sq_ready(ctx.native_handle()) > 0);
            t = task<void>{};  // destroy the frame
            CHECK_FALSE(resumed);
            CHECK(ctx.outstanding_work() == 0);
            fillers.clear();
            // Whatever reached the listener is a real connection, closed by now.
            for (;;) {
                int c = ::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (c < 0) break;
                char x;
                CHECK(::recv(c, &x, 1, 0) == 0);  // EOF: the connect's socket was closed
                ::close(c);
            }
        }
        // The ring still works afterwards.
        raw_send(b, "z");
        std::array<char, 4> buf{};
        auto r = ctx.sync_wait([](stream_socket& s, std::array<char, 4>& bb) -> task<ringsock::io_result<std::size_t>> {
            co_return co_await s.read_some(bb, 2s);
        }(a, buf));
        CHECK(r.value() == 1);
    }
}

TEST_CASE("core defects: a time limit runs while the operation waits its turn behind another", "[core_defects]") {
    fd_leak_guard guard;
    io_context ctx;
    std::stop_source cleanup;
    outcome first, second;

    SECTION("write_all(200ms) behind a write_all that blocks forever ends with timed_out") {
        auto pair_ab = make_pair(ctx); auto& a = pair_ab.first;  // clang 14: lambdas cannot capture structured bindings
        ringsock::test::fill_send_path(a.native_handle());
        std::vector<char> big(4 << 20, 'q');
        const std::string small = "small";
        {
            scope sc(ctx);
            sc.spawn([&](std::stop_token) -> task<void> {
                auto t0 = clock_type::now();
                auto r = co_await a.write_all(big, cleanup.get_token());
                record(first, r, t0);
            });
            sc.spawn([&](std::stop_token) -> task<void> {
                auto t0 = clock_type::now();
                auto r = co_await a.write_all(small, 200ms);
                record(second, r, t0);
            });
            bool finished = pump(ctx, [&] { return second.done; }, 3000ms);
            CHECK(finished);
            CHECK_FALSE(first.done);
            cleanup.request_stop();
            REQUIRE(pump(ctx, [&] { return first.done && second.done; }));
        }
        INFO("the gated write_all ended after " << second.ms << " ms with " << second.ec.message());
        CHECK(timed_out(second.ec));
        CHECK(second.ms < 1000);
        CHECK(canceled(first.ec));
    }

    SECTION("a stop request ends a gated write with operation_canceled") {
        auto pair_ab = make_pair(ctx); auto& a = pair_ab.first;  // clang 14: lambdas cannot capture structured bindings
        ringsock::test::fill_send_path(a.native_handle());
        std::vector<char> big(1 << 20, 'q');
        std::stop_source stop_second;
        {
            scope sc(ctx);
            sc.spawn([&](std::stop_token) -> task<void> {
                auto t0 = clock_type::now();
                auto r = co_await a.write_all(big, cleanup.get_token());
                record(first, r, t0);
            });
            sc.spawn([&](std::stop_token) -> task<void> {
                auto t0 = clock_type::now();
                auto r = co_await a.write_some(std::string("x"), stop_second.get_token());
                record(second, r, t0);
            });
            ringsock::test::pump_for(ctx, 20ms);
            REQUIRE_FALSE(second.done);
            stop_second.request_stop();
            CHECK(pump(ctx, [&] { return second.done; }, 2000ms));
            CHECK_FALSE(first.done);
            cleanup.request_stop();
            REQUIRE(pump(ctx, [&] { return first.done && second.done; }));
        }
        CHECK(canceled(second.ec));
    }

    SECTION("a datagram send(200ms) behind a send blocked on a full receiver ends with timed_out") {
        auto p = ringsock::datagram_socket::pair(ctx);
        REQUIRE(p);
        auto& a = p->first;  // clang 14: lambdas cannot capture structured bindings
        // Fill the receiver's queue with raw datagrams until the kernel says EAGAIN.
        const std::string msg = "datagram";
        for (int i = 0; i < 100000; ++i) {
            if (::send(a.native_handle(), msg.data(), msg.size(), MSG_DONTWAIT) < 0) {
                REQUIRE(errno == EAGAIN);
                break;
            }
        }
        {
            scope sc(ctx);
            sc.spawn([&](std::stop_token) -> task<void> {
                auto t0 = clock_type::now();
                auto r = co_await a.send(msg, cleanup.get_token());
                record(first, r, t0);
            });
            sc.spawn([&](std::stop_token) -> task<void> {
                auto t0 = clock_type::now();
                auto r = co_await a.send(msg, 200ms);
                record(second, r, t0);
            });
            bool finished = pump(ctx, [&] { return second.done; }, 3000ms);
            CHECK(finished);
            CHECK_FALSE(first.done);  // the first send really blocks
            cleanup.request_stop();
            REQUIRE(pump(ctx, [&] { return first.done && second.done; }));
        }
        INFO("the gated send ended after " << second.ms << " ms with " << second.ec.message());
        CHECK(timed_out(second.ec));
        CHECK(second.ms < 1000);
    }
}

TEST_CASE("core defects: a timed accept returns a connection as soon as it arrives", "[core_defects]") {
    fd_leak_guard guard;
    io_context ctx;
    auto ep = ringsock::test::unique_abstract("defect-accept");
    auto acc = ringsock::acceptor::listen(ctx, ep);
    REQUIRE(acc);
    const bool arm_first = GENERATE(false, true);
    INFO((arm_first ? "after an untimed accept armed the multishot" : "as the first accept"));
    std::vector<ringsock::unique_fd> clients;
    if (arm_first) {
        auto r = ctx.sync_wait([](ringsock::acceptor& ac, const ringsock::endpoint& e,
                                  std::vector<ringsock::unique_fd>& cl) -> task<bool> {
            cl.push_back(ringsock::test::raw_connect(e));
            auto s = co_await ac.accept();
            co_return static_cast<bool>(s);
        }(*acc, ep, clients));
        REQUIRE(r);
    }
    outcome got;
    {
        scope sc(ctx);
        sc.spawn([&](std::stop_token) -> task<void> {
            auto t0 = clock_type::now();
            auto r = co_await acc->accept(3s);
            record(got, r, t0);
        });
        sc.spawn([&](std::stop_token) -> task<void> {
            (void)co_await ringsock::sleep_for(ctx, 90ms);
            clients.push_back(ringsock::test::raw_connect(ep));
        });
        REQUIRE(pump(ctx, [&] { return got.done && sc.size() == 0; }, 5000ms));
    }
    INFO("accept(3s) returned after " << got.ms << " ms with " << got.ec.message());
    CHECK_FALSE(got.ec);
    CHECK(got.ms < 1000);
}

TEST_CASE("core defects: closing or destroying a socket cancels its operations even when the SQ is full",
          "[core_defects]") {
    fd_leak_guard guard;

    SECTION("close() in a turn whose writes filled the SQ") {
        io_context::options o;
        o.entries = 8;
        io_context ctx(o);
        const unsigned sq = ctx.features().sq_entries;
        auto pair_ab = make_pair(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
        std::vector<std::pair<stream_socket, stream_socket>> others;
        for (unsigned i = 0; i < sq; ++i) others.push_back(make_pair(ctx));
        outcome rd;
        bool sq_was_full = false;
        {
            scope sc(ctx);
            sc.spawn([&](std::stop_token) -> task<void> {
                std::array<char, 16> buf{};
                auto t0 = clock_type::now();
                auto r = co_await a.read_some(buf);
                record(rd, r, t0);
            });
            ringsock::test::pump_for(ctx, 10ms);  // the read is in flight
            REQUIRE_FALSE(rd.done);
            // One turn: sq writes fill the SQ, then the closer runs.
            for (unsigned i = 0; i < sq; ++i) {
                sc.spawn([&, i](std::stop_token) -> task<void> {
                    (void)co_await others[i].first.write_some(std::string("w"));
                });
            }
            sc.spawn([&](std::stop_token) -> task<void> {
                sq_was_full = io_uring_sq_space_left(ctx.native_handle()) == 0;
                a.close();
                co_return;
            });
            CHECK(pump(ctx, [&] { return rd.done; }, 3000ms));
            std::string junk;
            CHECK(ringsock::test::wait_eof(b.native_handle(), junk));
            if (!rd.done) {
                b.close();  // let the orphaned read finish, so the test can end
            }
            REQUIRE(pump(ctx, [&] { return sc.size() == 0; }));
        }
        CHECK(sq_was_full);
        CHECK(canceled(rd.ec));
    }

    SECTION("destroying a socket with a read in flight and a write gated") {
        io_context ctx;
        std::optional<stream_socket> a;
        stream_socket b;
        {
            auto p = make_pair(ctx);
            a.emplace(std::move(p.first));
            b = std::move(p.second);
        }
        ringsock::test::fill_send_path(a->native_handle());
        std::vector<char> big(1 << 20, 'q');
        outcome rd, w1, w2;
        {
            scope sc(ctx);
            sc.spawn([&](std::stop_token) -> task<void> {
                std::array<char, 16> buf{};
                auto t0 = clock_type::now();
                auto r = co_await a->read_some(buf);
                record(rd, r, t0);
            });
            sc.spawn([&](std::stop_token) -> task<void> {
                auto t0 = clock_type::now();
                auto r = co_await a->write_all(big);
                record(w1, r, t0);
            });
            sc.spawn([&](std::stop_token) -> task<void> {
                auto t0 = clock_type::now();
                auto r = co_await a->write_some(std::string("gated"));
                record(w2, r, t0);
            });
            ringsock::test::pump_for(ctx, 20ms);
            REQUIRE_FALSE(rd.done);
            REQUIRE_FALSE(w1.done);
            REQUIRE_FALSE(w2.done);
            a.reset();  // the object, not close()
            CHECK(pump(ctx, [&] { return rd.done && w1.done && w2.done; }, 3000ms));
            std::string got;
            CHECK(ringsock::test::wait_eof(b.native_handle(), got));
            CHECK(ringsock::test::only_real_bytes(got));
            if (!(rd.done && w1.done && w2.done)) b.close();
            REQUIRE(pump(ctx, [&] { return sc.size() == 0; }));
        }
        CHECK(canceled(rd.ec));
        CHECK(canceled(w1.ec));
        CHECK(canceled(w2.ec));
    }

    SECTION("moving a socket while a read is in flight") {
        io_context ctx;
        auto p = make_pair(ctx);
        auto a = std::make_unique<stream_socket>(std::move(p.first));
        stream_socket b = std::move(p.second);
        outcome rd, rd2;
        std::array<char, 16> buf{};
        std::optional<stream_socket> moved;
        {
            scope sc(ctx);
            sc.spawn([&](std::stop_token) -> task<void> {
                auto t0 = clock_type::now();
                auto r = co_await a->read_some(buf, 5s);
                record(rd, r, t0);
            });
            ringsock::test::pump_for(ctx, 10ms);
            REQUIRE_FALSE(rd.done);
            moved.emplace(std::move(*a));
            a.reset();  // the moved-from object is freed (and scribbled)
            raw_send(b, "moved");
            CHECK(pump(ctx, [&] { return rd.done; }, 3000ms));
            // The direction is free again on the new object: a second read works.
            sc.spawn([&](std::stop_token) -> task<void> {
                std::array<char, 16> buf2{};
                auto t0 = clock_type::now();
                auto r = co_await moved->read_some(buf2, 5s);
                record(rd2, r, t0);
                if (r && *r == 5) CHECK(std::string(buf2.data(), 5) == "again");
            });
            ringsock::test::pump_for(ctx, 5ms);
            raw_send(b, "again");
            CHECK(pump(ctx, [&] { return rd2.done; }, 3000ms));
            if (!rd.done || !rd2.done) moved->close();
            REQUIRE(pump(ctx, [&] { return sc.size() == 0; }));
        }
        CHECK_FALSE(rd.ec);
        CHECK(rd.value == 5);
        CHECK(std::string(buf.data(), 5) == "moved");
        CHECK_FALSE(rd2.ec);
        CHECK(rd2.value == 5);
    }
}

TEST_CASE("core defects: huge time limits mean no limit, and zero or negative ones are due at once",
          "[core_defects]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings

    auto read_with = [&](ringsock::op_limits lim, const char* what) {
        INFO(what);
        outcome rd;
        std::array<char, 8> buf{};
        scope sc(ctx);
        sc.spawn([&](std::stop_token) -> task<void> {
            auto t0 = clock_type::now();
            auto r = co_await a.read_some(buf, lim);
            record(rd, r, t0);
        });
        ringsock::test::pump_for(ctx, 100ms);
        CHECK_FALSE(rd.done);  // still waiting
        raw_send(b, "k");
        CHECK(pump(ctx, [&] { return rd.done; }, 2000ms));
        if (!rd.done) (void)a.shutdown(ringsock::shutdown_how::receive);
        REQUIRE(pump(ctx, [&] { return sc.size() == 0; }));
        CHECK_FALSE(rd.ec);
        CHECK(rd.value == 1);
        (void)ringsock::test::drain_fd(a.native_handle());
    };

    SECTION("seconds::max()") { read_with(std::chrono::seconds::max(), "read_some(buf, seconds::max())"); }
    SECTION("300 years") { read_with(std::chrono::years(300), "read_some(buf, 300 years)"); }
    SECTION("hours::max() with a stop token") {
        std::stop_source src;
        read_with(ringsock::op_limits(src.get_token(), std::chrono::hours::max()), "read_some(buf, {token, hours::max()})");
    }

    SECTION("sleep_for(hours::max()) sleeps until stopped") {
        std::stop_source src;
        outcome sl;
        scope sc(ctx);
        sc.spawn([&](std::stop_token) -> task<void> {
            auto t0 = clock_type::now();
            auto r = co_await ringsock::sleep_for(ctx, std::chrono::hours::max(), src.get_token());
            sl.ec = r.error();
            sl.ms = ms_since(t0);
            sl.done = true;
        });
        ringsock::test::pump_for(ctx, 50ms);
        CHECK_FALSE(sl.done);
        src.request_stop();
        CHECK(pump(ctx, [&] { return sl.done; }, 2000ms));
        REQUIRE(pump(ctx, [&] { return sc.size() == 0; }));
        CHECK(canceled(sl.ec));
    }

    SECTION("zero and negative limits time out at once") {
        for (auto lim : {std::chrono::milliseconds(0), std::chrono::milliseconds(-1000)}) {
            INFO("limit " << lim.count() << " ms");
            outcome rd;
            std::array<char, 8> buf{};
            scope sc(ctx);
            sc.spawn([&](std::stop_token) -> task<void> {
                auto t0 = clock_type::now();
                auto r = co_await a.read_some(buf, lim);
                record(rd, r, t0);
            });
            CHECK(pump(ctx, [&] { return rd.done; }, 2000ms));
            if (!rd.done) (void)a.shutdown(ringsock::shutdown_how::receive);
            REQUIRE(pump(ctx, [&] { return sc.size() == 0; }));
            INFO("ended after " << rd.ms << " ms with " << rd.ec.message());
            CHECK(timed_out(rd.ec));
            CHECK(rd.ms < 500);
        }
    }
}

TEST_CASE("core defects: a ring that fails under the loop aborts loudly naming the call", "[core_defects]") {
    fd_leak_guard guard;
    int err_pipe[2];
    REQUIRE(::pipe2(err_pipe, O_CLOEXEC) == 0);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        // The child: no Catch2 here. Its own ring, a read in flight, then the ring fd
        // replaced by /dev/null behind the library's back.
        ::dup2(err_pipe[1], 2);
        // Catch2's fatal-signal handlers are inherited: the abort must stay an abort.
        for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGILL, SIGFPE}) ::signal(sig, SIG_DFL);
        int rc = 10;
        {
            io_context ctx;
            auto p = stream_socket::pair(ctx);
            if (!p) ::_exit(11);
            auto& a = p->first; auto& b = p->second;  // clang 14: lambdas cannot capture structured bindings
            std::array<char, 8> buf{};
            bool done = false;
            scope sc(ctx);
            sc.spawn([&](std::stop_token) -> task<void> {
                (void)co_await a.read_some(buf);
                done = true;
            });
            for (int i = 0; i < 5; ++i) ctx.poll();
            if (done) ::_exit(12);
            io_uring* ring = ctx.native_handle();
            (void)io_uring_unregister_ring_fd(ring);
            int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
            ::dup2(devnull, ring->ring_fd);
            (void)::send(b.native_handle(), "x", 1, MSG_NOSIGNAL);
            const auto t0 = clock_type::now();
            while (ms_since(t0) < 3000) ctx.poll();  // must abort in here
            rc = done ? 13 : 14;                     // still alive: the failure went unnoticed
        }
        ::_exit(rc);
    }
    ::close(err_pipe[1]);
    int status = 0;
    const auto t0 = clock_type::now();
    pid_t w = 0;
    while ((w = ::waitpid(pid, &status, WNOHANG)) == 0 && ms_since(t0) < 10000) ::usleep(5000);
    if (w == 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
    }
    std::string err;
    char buf[4096];
    for (ssize_t n; (n = ::read(err_pipe[0], buf, sizeof buf)) > 0;) err.append(buf, static_cast<std::size_t>(n));
    ::close(err_pipe[0]);
    INFO("child status " << status << (WIFEXITED(status) ? " exit " : " signal ")
                         << (WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status)) << "; stderr: " << err);
    CHECK(w != 0);
    CHECK(WIFSIGNALED(status));
    CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT));
    CHECK(err.find("ringsock: fatal") != std::string::npos);
    CHECK(err.find("io_uring_enter") != std::string::npos);
}
