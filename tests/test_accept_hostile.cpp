// Hostile tests for the acceptor's direct accept4 path (accept_engine::try_now): out of
// descriptors, order among waiters and queued connections, a direct hit that cancels the
// armed multishot request, close right after such a cancel, time limits and stop tokens
// racing connections, seqpacket listeners, adopted listeners shared with another process,
// clients that give up at once, and floods of connects.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>
#include <ringsock/seqpacket_acceptor.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "support/fd_count.hpp"
#include "support/fork_child.hpp"

namespace {

using namespace std::chrono_literals;
using ringsock::acceptor;
using ringsock::endpoint;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::seqpacket_acceptor;
using ringsock::seqpacket_socket;
using ringsock::stream_socket;
using ringsock::task;
using ringsock::unique_fd;

endpoint unique_name(const std::string& what) {
    static int counter = 0;
    auto ep = endpoint::abstract("ringsock-acc-hostile-" + what + "-" + std::to_string(::getpid()) + "-" +
                                 std::to_string(++counter));
    REQUIRE(ep);
    return *ep;
}

/// A blocking client connected with plain syscalls, having sent its id.
unique_fd connect_with_id(const endpoint& ep, std::uint32_t id, int type = SOCK_STREAM) {
    unique_fd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    REQUIRE(fd);
    REQUIRE(::connect(fd.get(), ep.data(), ep.size()) == 0);
    REQUIRE(::send(fd.get(), &id, sizeof id, MSG_NOSIGNAL) == sizeof id);
    return fd;
}

/// The id a client sent, read with a plain (bounded) blocking read; ~0u on failure.
std::uint32_t read_id(int fd) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return ~0u;
    std::uint32_t id = ~0u;
    if (::recv(fd, &id, sizeof id, MSG_DONTWAIT) != sizeof id) return ~0u;
    return id;
}

/// Lowers RLIMIT_NOFILE for one test and restores it.
class nofile_guard {
public:
    explicit nofile_guard(rlim_t soft) {
        REQUIRE(::getrlimit(RLIMIT_NOFILE, &old_) == 0);
        rlimit now = old_;
        now.rlim_cur = soft;
        REQUIRE(::setrlimit(RLIMIT_NOFILE, &now) == 0);
    }
    nofile_guard(const nofile_guard&) = delete;
    nofile_guard& operator=(const nofile_guard&) = delete;
    ~nofile_guard() { ::setrlimit(RLIMIT_NOFILE, &old_); }

private:
    rlimit old_{};
};

/// Fills every descriptor number below the soft limit with dups of stdin's /dev/null.
std::vector<unique_fd> exhaust_descriptors() {
    std::vector<unique_fd> fill;
    for (;;) {
        int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            REQUIRE(errno == EMFILE);
            break;
        }
        fill.emplace_back(fd);
    }
    return fill;
}

/// CPU time this process used so far.
std::chrono::microseconds cpu_time() {
    rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    return std::chrono::seconds(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           std::chrono::microseconds(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}


// An accept() that finds the backlog empty, so the multishot request is armed, answered
// by a client (id `id`, kept in `clients`) that connects `delay` later.
io_result<stream_socket> accept_armed(io_context& ctx, acceptor& acc, const endpoint& ep,
                                      std::vector<unique_fd>& clients, std::uint32_t id,
                                      std::chrono::milliseconds delay, std::chrono::seconds limit) {
    auto connect_soon = [&]() -> task<void> {
        (void)co_await ringsock::sleep_for(ctx, delay);
        clients.push_back(connect_with_id(ep, id));
    };
    auto accept_one = [&]() -> task<io_result<stream_socket>> { co_return co_await acc.accept(limit); };
    return ctx.sync_wait([&]() -> task<io_result<stream_socket>> {
        auto [s, ignored] = co_await ringsock::when_all(accept_one(), connect_soon());
        (void)ignored;
        co_return std::move(s);
    }());
}

}  // namespace

TEST_CASE("accept hostile: out of descriptors, accept() fails EMFILE naming accept (direct and through the ring), "
          "the connection stays in the backlog and is taken once descriptors are free",
          "[acceptor][accept_hostile]") {
    io_context ctx;
    auto ep = unique_name("emfile");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    unique_fd client;
    // Recorded while out of descriptors, checked afterwards: Catch2 and UBSan's vptr
    // check (it probes memory through a pipe) need descriptors of their own.
    std::vector<int> ring_errors, direct_errors;
    std::vector<std::string> whats;
    std::chrono::microseconds idle_cpu{};
    {
        nofile_guard lim(ringsock::test::open_fd_count() + 8);
        // The multishot request is prepared from here on (the kernel reads RLIMIT_NOFILE
        // when it prepares it). Misses make the direct attempt back off: after these,
        // the next three accepts skip it and wait on the ring (speculation.hpp).
        auto one = [&](std::vector<int>& errs, std::chrono::milliseconds limit) -> task<void> {
            auto r = co_await acc->accept(limit);
            errs.push_back(r ? 0 : r.error().value());
            if (!r) whats.emplace_back(r.what());
        };
        std::vector<int> warm;
        ctx.sync_wait([&]() -> task<void> {
            auto [a, b] = co_await ringsock::when_all(one(warm, 1ms), one(warm, 1ms));  // miss: skip 1
            (void)a;
            (void)b;
            (void)co_await ringsock::sleep_for(ctx, 1ms);
            co_await one(warm, 1ms);  // skipped
            co_await one(warm, 1ms);  // miss: skip 3
        }());
        REQUIRE(warm.size() == 4);
        for (int e : warm) CHECK(e == ETIMEDOUT);
        whats.clear();
        client = connect_with_id(ep, 7);
        auto fill = exhaust_descriptors();
        ctx.sync_wait([&]() -> task<void> {
            // Two waiters on the ring at once: each gets the error, none hangs.
            auto [a, b] = co_await ringsock::when_all(one(ring_errors, 1s), one(ring_errors, 1s));
            (void)a;
            (void)b;
            co_await one(ring_errors, 1s);
            co_await one(ring_errors, 1s);
            for (int i = 0; i < 4; ++i) co_await one(direct_errors, 1s);
        }());
        // Nothing keeps the loop busy while out of descriptors.
        const auto cpu0 = cpu_time();
        ctx.sync_wait([&]() -> task<void> { (void)co_await ringsock::sleep_for(ctx, 50ms); }());
        idle_cpu = cpu_time() - cpu0;
    }
    CHECK(ring_errors == std::vector<int>(4, EMFILE));
    CHECK(direct_errors == std::vector<int>(4, EMFILE));
    CHECK(whats.size() == 8);
    for (const auto& w : whats) CHECK(w.find("accept") != std::string::npos);
    CHECK(idle_cpu < 25ms);
    auto s = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(2s); }());
    REQUIRE(s);
    CHECK(read_id(s->native_handle()) == 7);
}

TEST_CASE("accept hostile: accepts waiting in the ring get connections in the order they started waiting, and a "
          "new accept() never jumps ahead of them or of queued connections",
          "[acceptor][accept_hostile]") {
    io_context ctx;
    auto ep = unique_name("fifo");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    std::vector<std::pair<int, std::uint32_t>> got;  // (waiter, client id)
    auto waiter = [&](int who) -> task<void> {
        auto s = co_await acc->accept(5s);
        REQUIRE(s);
        got.emplace_back(who, read_id(s->native_handle()));
    };
    std::vector<unique_fd> clients;
    // Three waiters suspend on an empty backlog.
    for (int w = 0; w < 3; ++w) ctx.spawn(waiter(w));
    ctx.poll();
    REQUIRE(got.empty());
    // Five connections land in the backlog before the loop runs again, then a fourth
    // accept() comes along: it must not take client 0 directly.
    for (std::uint32_t i = 0; i < 5; ++i) clients.push_back(connect_with_id(ep, i));
    ctx.spawn(waiter(3));
    while (got.size() < 4) ctx.run_one();
    REQUIRE(got.size() == 4);
    // They may resume in any order (one that finds a queued connection resumes at
    // once), but each got the connection its place in line gives it.
    for (const auto& [who, id] : got) CHECK(id == static_cast<std::uint32_t>(who));
    // Client 4 is now queued in the engine (or still in the backlog); client 5 connects
    // after it: the next accepts get 4, then 5.
    ctx.sync_wait([&]() -> task<void> { (void)co_await ringsock::sleep_for(ctx, 5ms); }());
    clients.push_back(connect_with_id(ep, 5));
    for (std::uint32_t want = 4; want <= 5; ++want) {
        auto s = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(2s); }());
        REQUIRE(s);
        CHECK(read_id(s->native_handle()) == want);
    }
}

TEST_CASE("accept hostile: a direct hit that cancels the armed multishot request, with more connections in the "
          "backlog, loses none and hands none out twice, in order",
          "[acceptor][accept_hostile]") {
    for (int rep = 0; rep < 20; ++rep) {
        io_context ctx;
        auto ep = unique_name("hitcancel");
        auto acc = acceptor::listen(ctx, ep);
        REQUIRE(acc);
        std::vector<unique_fd> clients;
        std::uint32_t next_id = 0;
        // Arm the multishot request: an accept that finds nothing, then a client.
        auto first = accept_armed(ctx, *acc, ep, clients, next_id++, 1ms, 5s);
        REQUIRE(first);
        CHECK(read_id(first->native_handle()) == 0);
        // That accept's miss made the next one skip the direct attempt: spend it on an
        // accept that finds nothing (the request stays armed), so the next one tries.
        auto skip = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(1ms); }());
        REQUIRE_FALSE(skip);
        // The request stays armed and idle. Clients queue in the backlog; the multishot
        // request has not run yet (task-work runs only in the next enter).
        const int k = 3 + rep % 5;
        for (int i = 0; i < k; ++i) clients.push_back(connect_with_id(ep, next_id++));
        std::vector<std::uint32_t> ids;
        // A direct accept now hits and cancels the request; then interleave loop turns.
        ctx.sync_wait([&]() -> task<void> {
            for (int i = 0; i < k; ++i) {
                auto s = co_await acc->accept(2s);
                REQUIRE(s);
                ids.push_back(read_id(s->native_handle()));
                if (i % 2 == rep % 2) (void)co_await ringsock::sleep_for(ctx, 0ms);
                if (i == 1) clients.push_back(connect_with_id(ep, next_id++));
            }
            auto s = co_await acc->accept(2s);
            REQUIRE(s);
            ids.push_back(read_id(s->native_handle()));
        }());
        REQUIRE(ids.size() == static_cast<std::size_t>(k + 1));
        for (std::size_t i = 0; i < ids.size(); ++i) CHECK(ids[i] == i + 1);
        // Nothing left over: the next accept times out.
        auto none = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(10ms); }());
        CHECK_FALSE(none);
    }
}

TEST_CASE("accept hostile: close() or destruction right after a direct hit cancelled the multishot request leaks "
          "nothing, hangs nothing, and the remaining clients see the connection end",
          "[acceptor][accept_hostile]") {
    for (int variant = 0; variant < 4; ++variant) {
        io_context ctx;
        auto ep = unique_name("hitclose");
        std::vector<unique_fd> clients;
        {
            auto acc = acceptor::listen(ctx, ep);
            REQUIRE(acc);
            auto first = accept_armed(ctx, *acc, ep, clients, 0, 1ms, 5s);
            REQUIRE(first);
            auto skip = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(1ms); }());
            REQUIRE_FALSE(skip);
            for (std::uint32_t i = 1; i <= 4; ++i) clients.push_back(connect_with_id(ep, i));
            auto hit = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(); }());
            REQUIRE(hit);
            CHECK(read_id(hit->native_handle()) == 1);
            if (variant == 1) ctx.poll();  // the cancel goes out, the request's end may be reaped
            if (variant == 2) {
                // A waiter arrives while the cancel is in flight, then the acceptor closes.
                bool done = false;
                auto w = [&]() -> task<void> {
                    auto r = co_await acc->accept();
                    (void)r;
                    done = true;
                };
                ctx.spawn(w());
                ctx.poll();
                acc->close();
                while (!done) ctx.run_one();
            } else if (variant == 3) {
                acceptor moved = std::move(*acc);
                moved.close();
            } else if (variant == 0) {
                acc->close();
            }  // variant 1: only the destructor
        }
        // Every client not handed out sees its connection end (EOF or reset), never hangs.
        for (std::size_t i = 2; i < clients.size(); ++i) {
            pollfd p{clients[i].get(), POLLIN, 0};
            // A client still in the backlog of a closed listener is reset too.
            REQUIRE(::poll(&p, 1, 2000) == 1);
            char buf[8];
            ssize_t n = ::recv(clients[i].get(), buf, sizeof buf, MSG_DONTWAIT);
            CHECK(n <= 0);
        }
    }
}

TEST_CASE("accept hostile: accepts with a time limit or a stop token racing connections lose no connection",
          "[acceptor][accept_hostile]") {
    io_context ctx;
    auto ep = unique_name("race");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    constexpr std::uint32_t n = 400;
    std::vector<unique_fd> clients;
    std::set<std::uint32_t> seen;
    std::uint32_t dups = 0;
    ctx.sync_wait([&]() -> task<void> {
        std::uint32_t next = 0;
        for (std::uint32_t round = 0; next < n; ++round) {
            if (round % 3 != 2) clients.push_back(connect_with_id(ep, next++));
            io_result<stream_socket> s;
            switch (round % 4) {
                case 0: s = co_await acc->accept(0ms); break;
                case 1: s = co_await acc->accept(1us); break;
                case 2: {
                    std::stop_source src;
                    auto stopper = [&]() -> task<void> {
                        (void)co_await ringsock::sleep_for(ctx, 0ms);
                        src.request_stop();
                    };
                    auto [r, ignored] = co_await ringsock::when_all(
                        [&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(src.get_token()); }(),
                        stopper());
                    (void)ignored;
                    s = std::move(r);
                    break;
                }
                default: {
                    std::stop_source src;
                    src.request_stop();
                    s = co_await acc->accept(src.get_token());
                    break;
                }
            }
            if (s) {
                if (!seen.insert(read_id(s->native_handle())).second) ++dups;
            }
        }
        // Whatever was not taken in the race is still there.
        while (seen.size() < n) {
            auto s = co_await acc->accept(1s);
            if (!s) break;
            if (!seen.insert(read_id(s->native_handle())).second) ++dups;
        }
    }());
    CHECK(dups == 0);
    CHECK(seen.size() == n);
    CHECK(seen.count(~0u) == 0);
}

TEST_CASE("accept hostile: seqpacket_acceptor takes waiting connections directly, cancels its armed request on a "
          "hit, and hands out every client once, in order",
          "[seqpacket][accept_hostile]") {
    io_context ctx;
    auto ep = unique_name("seqpacket");
    auto acc = seqpacket_acceptor::listen(ctx, ep);
    REQUIRE(acc);
    CHECK((::fcntl(acc->native_handle(), F_GETFL) & O_NONBLOCK) != 0);
    constexpr std::uint32_t n = 200;
    std::vector<unique_fd> clients;
    std::vector<std::uint32_t> order;
    auto connect_later = [&](int k) -> task<void> {
        (void)co_await ringsock::sleep_for(ctx, 100us);
        for (int i = 0; i < k; ++i) {
            const auto id = static_cast<std::uint32_t>(clients.size());
            clients.push_back(connect_with_id(ep, id, SOCK_SEQPACKET));
        }
    };
    auto accept_one = [&]() -> task<void> {
        auto s = co_await acc->accept(5s);
        REQUIRE(s);
        order.push_back(read_id(s->native_handle()));
    };
    ctx.sync_wait([&]() -> task<void> {
        while (order.size() < n) {
            switch (order.size() % 4) {
                case 0: {
                    const auto id = static_cast<std::uint32_t>(clients.size());
                    clients.push_back(connect_with_id(ep, id, SOCK_SEQPACKET));
                    co_await accept_one();
                    break;
                }
                case 1: {
                    auto [a, b] = co_await ringsock::when_all(accept_one(), connect_later(3));
                    (void)a;
                    (void)b;
                    break;
                }
                default:
                    co_await accept_one();
                    break;
            }
        }
    }());
    // Clients beyond n may have connected: drain them so no connection is left behind.
    while (order.size() < clients.size()) {
        auto s = ctx.sync_wait([&]() -> task<io_result<seqpacket_socket>> { co_return co_await acc->accept(1s); }());
        REQUIRE(s);
        order.push_back(read_id(s->native_handle()));
    }
    for (std::size_t i = 0; i < order.size(); ++i) CHECK(order[i] == i);
}

TEST_CASE("accept hostile: an adopted non-blocking listener shared with a forked process that also accepts splits "
          "the connections, loses none and hangs none",
          "[acceptor][accept_hostile][fork]") {
    auto ep = unique_name("shared");
    unique_fd lfd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    REQUIRE(lfd);
    REQUIRE(::bind(lfd.get(), ep.data(), ep.size()) == 0);
    REQUIRE(::listen(lfd.get(), 64) == 0);
    int stop_pipe[2];
    REQUIRE(::pipe2(stop_pipe, O_CLOEXEC) == 0);
    unique_fd stop_r(stop_pipe[0]), stop_w(stop_pipe[1]);
    const int lraw = lfd.get(), sraw = stop_r.get(), wraw = stop_w.get();
    ringsock::test::child_process child([lraw, sraw, wraw]() -> int {
        ::close(wraw);  // only the parent's copy may keep the pipe open
        // Raw poll + accept4 loop; answers 'c' to each client.
        for (;;) {
            pollfd p[2] = {{lraw, POLLIN, 0}, {sraw, POLLIN, 0}};
            if (::poll(p, 2, 10000) <= 0) return 2;
            if (p[1].revents) return 0;
            int c = ::accept4(lraw, nullptr, nullptr, SOCK_CLOEXEC);
            if (c < 0) {
                if (errno == EAGAIN) continue;
                return 3;
            }
            std::uint32_t id;
            pollfd q{c, POLLIN, 0};
            if (::poll(&q, 1, 5000) == 1) (void)::recv(c, &id, sizeof id, 0);
            (void)::send(c, "c", 1, MSG_NOSIGNAL);
            ::close(c);
        }
    });
    stop_r.reset();
    io_context ctx;
    auto acc = acceptor::adopt(ctx, std::move(lfd));
    constexpr int n = 300;
    std::atomic<bool> clients_done{false};
    int by_parent = 0, by_child = 0, lost = 0;
    std::thread clients([&] {
        for (int i = 0; i < n; ++i) {
            unique_fd c = connect_with_id(ep, static_cast<std::uint32_t>(i));
            pollfd p{c.get(), POLLIN, 0};
            char who = 0;
            if (::poll(&p, 1, 5000) != 1 || ::recv(c.get(), &who, 1, 0) != 1) ++lost;
            else if (who == 'p') ++by_parent;
            else if (who == 'c') ++by_child;
            else ++lost;
        }
        clients_done = true;
    });
    ctx.sync_wait([&]() -> task<void> {
        while (!clients_done.load()) {
            auto s = co_await acc.accept(20ms);
            if (!s) continue;
            (void)read_id(s->native_handle());
            (void)co_await s->write_all(ringsock::as_bytes(std::string_view("p")));
        }
    }());
    clients.join();
    stop_w.reset();
    CHECK(child.wait() == 0);
    CHECK(lost == 0);
    CHECK(by_parent + by_child == n);
    CHECK(by_parent > 0);
    WARN("parent " << by_parent << ", child " << by_child);
}

TEST_CASE("accept hostile: a client that connects and closes at once is accepted as a socket that reads end of "
          "stream, through the direct path and through the ring",
          "[acceptor][accept_hostile]") {
    io_context ctx;
    auto ep = unique_name("gaveup");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    ctx.sync_wait([&]() -> task<void> {
        for (int i = 0; i < 40; ++i) {
            if (i % 2 == 0) {
                unique_fd c = connect_with_id(ep, 0);
                c.reset();
            } else {
                // Through the ring: the client connects and closes while the accept waits.
                auto later = [&]() -> task<void> {
                    (void)co_await ringsock::sleep_for(ctx, 200us);
                    unique_fd c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
                    REQUIRE(::connect(c.get(), ep.data(), ep.size()) == 0);
                };
                auto [dummy, ignored] = co_await ringsock::when_all(later(), later());
                (void)dummy;
                (void)ignored;
            }
            const int expect = i % 2 == 0 ? 1 : 2;
            for (int k = 0; k < expect; ++k) {
                auto s = co_await acc->accept(2s);
                REQUIRE(s);
                char buf[8];
                auto r = co_await s->read_some(std::span(reinterpret_cast<std::byte*>(buf), sizeof buf), 2s);
                if (i % 2 == 0) {
                    // The id, then end of stream.
                    REQUIRE(r);
                    CHECK(*r == 4);
                    r = co_await s->read_some(std::span(reinterpret_cast<std::byte*>(buf), sizeof buf), 2s);
                }
                CHECK((r ? *r == 0 : r.error() == ringsock::errc::end_of_stream));
            }
        }
    }());
}

TEST_CASE("accept hostile: a flood of thousands of connects from another thread is accepted completely, no accept "
          "hangs, descriptors return to the start",
          "[acceptor][accept_hostile][flood]") {
    const auto fds0 = ringsock::test::open_fd_count();
    {
        io_context ctx;
        auto ep = unique_name("flood");
        auto acc = acceptor::listen(ctx, ep);
        REQUIRE(acc);
        constexpr int n = 4000;
        std::atomic<int> failed{0};
        std::thread flood([&] {
            for (int i = 0; i < n; ++i) {
                unique_fd c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
                if (!c || ::connect(c.get(), ep.data(), ep.size()) != 0) ++failed;
                if (i % 3 == 0) (void)::send(c.get(), "x", 1, MSG_NOSIGNAL);
                // closed at once
            }
        });
        int accepted = 0, timeouts = 0;
        auto loop = [&]() -> task<void> {
            while (accepted < n) {
                auto s = co_await acc->accept(3s);
                if (!s) {
                    ++timeouts;
                    break;
                }
                ++accepted;
            }
        };
        // Two accept loops at once.
        ctx.sync_wait([&]() -> task<void> {
            auto [a, b] = co_await ringsock::when_all(loop(), loop());
            (void)a;
            (void)b;
        }());
        flood.join();
        CHECK(failed == 0);
        CHECK(accepted == n);
        CHECK(timeouts <= 1);  // the second loop may find nothing left
    }
    CHECK(ringsock::test::open_fd_count() == fds0);
}

// An adopted listener's file description is shared with every process holding it (a
// socket-activation sibling, a forked worker with a blocking accept loop): one of them
// may clear O_NONBLOCK after adopt(). A direct accept4 on it then blocks the whole loop
// until some client connects; accept() must wait on the ring instead.
TEST_CASE("accept hostile: an adopted listener made blocking after adopt() by another holder never blocks the loop "
          "in accept()",
          "[acceptor][accept_hostile][adopt]") {
    io_context ctx;
    auto ep = unique_name("cleared");
    unique_fd raw(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    REQUIRE(raw);
    REQUIRE(::bind(raw.get(), ep.data(), ep.size()) == 0);
    REQUIRE(::listen(raw.get(), 8) == 0);
    auto acc = acceptor::adopt(ctx, std::move(raw));
    // Another holder of the description (same file description: same flags) clears it.
    const int fl = ::fcntl(acc.native_handle(), F_GETFL);
    REQUIRE(::fcntl(acc.native_handle(), F_SETFL, fl & ~O_NONBLOCK) == 0);
    // Rescue: if the loop is stuck in a blocking accept4, a client unblocks it later.
    std::atomic<bool> stop{false};
    unique_fd rescue;
    std::thread rescuer([&] {
        for (int i = 0; i < 150 && !stop.load(); ++i) std::this_thread::sleep_for(10ms);
        if (!stop.load()) rescue = connect_with_id(ep, 99);
    });
    const auto t0 = std::chrono::steady_clock::now();
    auto r = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc.accept(100ms); }());
    const auto waited = std::chrono::steady_clock::now() - t0;
    stop = true;
    rescuer.join();
    CHECK_FALSE(r);
    if (!r) CHECK(r.error() == std::errc::timed_out);
    CHECK(waited < 1s);
    // A client that does come is still accepted (through the ring).
    auto c = connect_with_id(ep, 5);
    auto s = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc.accept(2s); }());
    REQUIRE(s);
    const std::uint32_t id = read_id(s->native_handle());
    CHECK((id == 5 || id == 99));
}

TEST_CASE("accept hostile: an accept() that misses while the cancel of the multishot request (after a direct hit) is "
          "still in flight re-arms the request and gets the next client",
          "[acceptor][accept_hostile]") {
    io_context ctx;
    auto ep = unique_name("rearm");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    std::vector<unique_fd> clients;
    auto connect_soon = [&](std::uint32_t id) -> task<void> {
        (void)co_await ringsock::sleep_for(ctx, 2ms);
        clients.push_back(connect_with_id(ep, id));
    };
    auto accept_one = [&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(2s); };
    for (std::uint32_t round = 0; round < 30; ++round) {
        const std::uint32_t base = round * 3;
        // Arm: an accept that finds nothing, answered by a client; then spend the skip.
        auto first = ctx.sync_wait([&]() -> task<io_result<stream_socket>> {
            auto [s, ignored] = co_await ringsock::when_all(accept_one(), connect_soon(base));
            (void)ignored;
            co_return std::move(s);
        }());
        REQUIRE(first);
        CHECK(read_id(first->native_handle()) == base);
        auto skip = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(1ms); }());
        REQUIRE_FALSE(skip);
        clients.push_back(connect_with_id(ep, base + 1));
        ctx.sync_wait([&]() -> task<void> {
            auto hit = co_await acc->accept(2s);  // direct: cancels the armed request
            REQUIRE(hit);
            CHECK(read_id(hit->native_handle()) == base + 1);
            // Same turn, cancel not yet processed: this one misses and must wait on a
            // request that is re-armed once the cancelled one ends.
            auto [s, ignored] = co_await ringsock::when_all(accept_one(), connect_soon(base + 2));
            (void)ignored;
            REQUIRE(s);
            CHECK(read_id(s->native_handle()) == base + 2);
        }());
    }
}

TEST_CASE("accept hostile: sockets accepted directly and through the ring have the same flags (FD_CLOEXEC, blocking "
          "file status)",
          "[acceptor][accept_hostile]") {
    io_context ctx;
    auto ep = unique_name("flags");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    std::vector<unique_fd> clients;
    clients.push_back(connect_with_id(ep, 0));
    auto direct = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(2s); }());
    REQUIRE(direct);
    auto ringed = accept_armed(ctx, *acc, ep, clients, 1, 2ms, 2s);
    REQUIRE(ringed);
    for (int fd : {direct->native_handle(), ringed->native_handle()}) {
        CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
        CHECK((::fcntl(fd, F_GETFL) & O_NONBLOCK) == 0);
    }
    CHECK(::fcntl(direct->native_handle(), F_GETFL) == ::fcntl(ringed->native_handle(), F_GETFL));
}

// Without DEFER_TASKRUN (an older kernel's fallback, or options.defer_taskrun = false)
// the armed multishot request runs its task-work on the loop thread's next syscall: a
// connection can sit accepted in the CQ, not yet reaped, while a later one waits in the
// backlog. A direct accept4 then takes the later one first.
TEST_CASE("accept hostile: without DEFER_TASKRUN, a direct accept never takes a later connection while an earlier "
          "one already accepted by the multishot request waits in the completion queue",
          "[acceptor][accept_hostile]") {
    io_context::options opts;
    opts.defer_taskrun = false;
    io_context ctx(opts);
    int inversions = 0;
    for (int round = 0; round < 20; ++round) {
        auto ep = unique_name("coop");
        auto acc = acceptor::listen(ctx, ep);  // fresh: its direct attempts start eager
        REQUIRE(acc);
        std::vector<unique_fd> clients;
        // Armed and idle: an accept answered by a client, then an accept that spends the
        // skip its miss caused and times out.
        auto first = accept_armed(ctx, *acc, ep, clients, 0, 1ms, 2s);
        REQUIRE(first);
        auto skip = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(1ms); }());
        REQUIRE_FALSE(skip);
        // Client A from this thread: the request's task-work accepts it on the way out
        // of connect/send, into the CQ. Client B from a thread already running, while
        // this one spins without a syscall: B stays in the backlog.
        std::atomic<int> step{0};
        unique_fd client_b;
        std::thread t([&] {
            while (step.load(std::memory_order_acquire) == 0) {
            }
            client_b = connect_with_id(ep, 2);
            step.store(2, std::memory_order_release);
        });
        std::vector<std::uint32_t> ids;
        ctx.sync_wait([&]() -> task<void> {
            // Inside the task: no loop turn (no reap) between the connects and the accept.
            clients.push_back(connect_with_id(ep, 1));
            step.store(1, std::memory_order_release);
            while (step.load(std::memory_order_acquire) != 2) {
            }
            for (int i = 0; i < 2; ++i) {
                auto s = co_await acc->accept(2s);
                ids.push_back(s ? read_id(s->native_handle()) : ~0u);
            }
        }());
        t.join();
        REQUIRE(ids.size() == 2);
        CHECK(std::set<std::uint32_t>(ids.begin(), ids.end()) == std::set<std::uint32_t>{1, 2});
        if (ids[0] != 1) ++inversions;
    }
    CHECK(inversions == 0);
}
