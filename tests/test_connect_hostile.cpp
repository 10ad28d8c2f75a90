// Hostile tests for connect's direct path (detail::connect_op tries ::connect on an
// O_NONBLOCK socket, then makes it blocking) and for the scheduler's per-turn budget of
// direct syscalls (scheduler::take_direct): sockets returned blocking and CLOEXEC by
// every connecting type, connects past the budget, full backlogs with stop requests and
// time limits, error codes, many concurrent connects, fairness of loops whose operations
// all complete at once, and frames destroyed while a connect waits on the ring.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>
#include <ringsock/seqpacket_acceptor.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <stop_token>
#include <type_traits>
#include <string>
#include <string_view>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/fd_count.hpp"
#include "support/leak_guard.hpp"
#include "support/submission_count.hpp"

namespace {

using namespace std::chrono_literals;
using ringsock::acceptor;
using ringsock::datagram_socket;
using ringsock::endpoint;
using ringsock::fd_stream;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::seqpacket_acceptor;
using ringsock::seqpacket_socket;
using ringsock::stream_socket;
using ringsock::task;
using ringsock::unique_fd;
using ringsock::test::fd_leak_guard;
using ringsock::test::fill_backlog;
using ringsock::test::raw_listener;
using ringsock::test::unique_abstract;

// Hang guard: a test that deadlocks fails instead of stalling the run.
struct hang_guard {
    hang_guard() { ::alarm(60); }
    hang_guard(const hang_guard&) = delete;
    hang_guard& operator=(const hang_guard&) = delete;
    ~hang_guard() { ::alarm(0); }
};

bool is_blocking(int fd) { return (::fcntl(fd, F_GETFL) & O_NONBLOCK) == 0; }
bool is_cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

/// Accepts whatever is queued on a raw listener without blocking; the count.
int drain_listener(int listen_fd) {
    int n = 0;
    for (;;) {
        const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) break;
        ::close(fd);
        ++n;
    }
    return n;
}

/// A fresh path in a fresh temporary directory (removed by the destructor).
struct temp_dir {
    std::string dir;
    temp_dir() {
        char tmpl[] = "/tmp/ringsock-conn-hostile-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        dir = tmpl;
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir() {
        ::chmod(dir.c_str(), 0700);
        const std::string cmd = "rm -rf '" + dir + "'";
        [[maybe_unused]] int rc = std::system(cmd.c_str());
    }
    std::string file(const std::string& name) const { return dir + "/" + name; }
};

endpoint path_ep(const std::string& p) {
    auto ep = endpoint::path(p);
    REQUIRE(ep);
    return *ep;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Sockets returned by every connecting type

TEST_CASE("connect hostile: seqpacket_socket::connect directly yields a blocking, CLOEXEC, usable socket",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto ep = unique_abstract("seq-direct");
    auto acc = seqpacket_acceptor::listen(ctx, ep);
    REQUIRE(acc);
    const unsigned before = ringsock::test::settled_sq_tail(ctx);
    io_result<seqpacket_socket> c;
    unsigned submitted = 0;
    auto client = [&]() -> task<void> {
        c = co_await seqpacket_socket::connect(ctx, ep);
        submitted = ringsock::test::sq_tail(ctx) - before;
    };
    ctx.sync_wait(client());
    CHECK(submitted == 0);
    REQUIRE(c);
    CHECK(is_blocking(c->native_handle()));
    CHECK(is_cloexec(c->native_handle()));
    std::string got;
    auto io = [&]() -> task<void> {
        auto s = co_await acc->accept();
        REQUIRE(s);
        auto sent = co_await c->send(ringsock::as_bytes(std::string_view("seq")));
        REQUIRE(sent);
        std::array<char, 16> buf{};
        auto r = co_await s->receive_bytes(buf);
        REQUIRE(r);
        got.assign(buf.data(), *r);
    };
    ctx.sync_wait(io());
    CHECK(got == "seq");
}

TEST_CASE("connect hostile: fd_stream::connect directly yields a blocking, CLOEXEC, usable socket",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto ep = unique_abstract("fds-direct");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    io_result<fd_stream> c;
    auto client = [&]() -> task<void> { c = co_await fd_stream::connect(ctx, ep); };
    ctx.sync_wait(client());
    REQUIRE(c);
    CHECK(is_blocking(c->native_handle()));
    CHECK(is_cloexec(c->native_handle()));
    std::string got(3, '\0');
    auto io = [&]() -> task<void> {
        auto s = co_await acc->accept();
        REQUIRE(s);
        auto w = co_await c->write_all(ringsock::as_bytes(std::string_view("fds")));
        REQUIRE(w);
        auto r = co_await s->read_exact(got);
        REQUIRE(r);
    };
    ctx.sync_wait(io());
    CHECK(got == "fds");
}

template <class Socket>
void many_connects_in_one_turn(const char* tag) {
    fd_leak_guard guard;
    hang_guard hang;
    constexpr int n = 200;
    io_context ctx;
    auto ep = unique_abstract(tag);
    unique_fd lfd;
    {
        const int type = std::is_same_v<Socket, seqpacket_socket> ? SOCK_SEQPACKET : SOCK_STREAM;
        lfd.reset(::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        REQUIRE(lfd);
        REQUIRE(::bind(lfd.get(), ep.data(), ep.size()) == 0);
        REQUIRE(::listen(lfd.get(), 4096) == 0);
    }
    std::vector<io_result<Socket>> results(n);
    const unsigned before = ringsock::test::settled_sq_tail(ctx);
    {
        ringsock::scope sc(ctx);
        for (int i = 0; i < n; ++i) {
            sc.spawn([&, i](std::stop_token) -> task<void> { results[static_cast<std::size_t>(i)] = co_await Socket::connect(ctx, ep); });
        }
        auto join = [&]() -> task<void> { co_await sc.join(); };
        ctx.sync_wait(join());
    }
    const unsigned submitted = ringsock::test::sq_tail(ctx) - before;
    int ok = 0, blocking = 0, cloexec = 0;
    for (auto& r : results) {
        if (!r) {
            UNSCOPED_INFO(r.error().message() << " (" << r.what() << ")");
            continue;
        }
        ++ok;
        blocking += is_blocking(r->native_handle()) ? 1 : 0;
        cloexec += is_cloexec(r->native_handle()) ? 1 : 0;
    }
    CHECK(ok == n);
    CHECK(blocking == n);
    CHECK(cloexec == n);
    // The budget (128 a turn) sent the rest to the ring.
    CHECK(submitted >= static_cast<unsigned>(n) - ringsock::detail::scheduler::direct_per_turn);
    CHECK(drain_listener(lfd.get()) == n);
    results.clear();
}

TEST_CASE("connect hostile: 200 stream connects in one turn all succeed and are blocking past the budget",
          "[connect_hostile]") {
    many_connects_in_one_turn<stream_socket>("many-stream");
}

TEST_CASE("connect hostile: 200 seqpacket connects in one turn all succeed and are blocking past the budget",
          "[connect_hostile]") {
    many_connects_in_one_turn<seqpacket_socket>("many-seq");
}

TEST_CASE("connect hostile: 200 fd_stream connects in one turn all succeed and are blocking past the budget",
          "[connect_hostile]") {
    many_connects_in_one_turn<fd_stream>("many-fds");
}

// ---------------------------------------------------------------------------------------
// Full backlogs

TEST_CASE("connect hostile: a connect to a full backlog ends canceled by a stop request and leaves no connection",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    for (int backlog : {0, 1}) {
        CAPTURE(backlog);
        io_context ctx;
        auto ep = unique_abstract("full-stop");
        auto lfd = raw_listener(ep, backlog);
        auto clients = fill_backlog(ep);
        std::stop_source src;
        io_result<stream_socket> c;
        auto client = [&]() -> task<void> { c = co_await stream_socket::connect(ctx, ep, src.get_token()); };
        auto stopper = [&]() -> task<void> {
            (void)co_await ringsock::sleep_for(ctx, 20ms);
            src.request_stop();
        };
        auto both = [&]() -> task<void> { (void)co_await ringsock::when_all(client(), stopper()); };
        ctx.sync_wait(both());
        REQUIRE_FALSE(c);
        CHECK(c.error() == std::errc::operation_canceled);
        CHECK(std::string_view(c.what()) == "connect");
        ::fcntl(lfd.get(), F_SETFL, O_NONBLOCK);
        CHECK(drain_listener(lfd.get()) == static_cast<int>(clients.size()));
    }
}

TEST_CASE("connect hostile: a connect to a full backlog ends timed_out under a time limit and leaves no connection",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    for (int backlog : {0, 1}) {
        CAPTURE(backlog);
        io_context ctx;
        auto ep = unique_abstract("full-time");
        auto lfd = raw_listener(ep, backlog);
        auto clients = fill_backlog(ep);
        io_result<stream_socket> c;
        auto client = [&]() -> task<void> { c = co_await stream_socket::connect(ctx, ep, 20ms); };
        ctx.sync_wait(client());
        REQUIRE_FALSE(c);
        CHECK(c.error() == std::errc::timed_out);
        CHECK(std::string_view(c.what()) == "connect");
        ::fcntl(lfd.get(), F_SETFL, O_NONBLOCK);
        CHECK(drain_listener(lfd.get()) == static_cast<int>(clients.size()));
    }
}

TEST_CASE("connect hostile: a seqpacket connect to a full backlog waits, then completes once the server accepts",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto ep = unique_abstract("seq-full-later");
    unique_fd lfd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    REQUIRE(lfd);
    REQUIRE(::bind(lfd.get(), ep.data(), ep.size()) == 0);
    REQUIRE(::listen(lfd.get(), 0) == 0);
    std::vector<unique_fd> clients;
    for (;;) {
        unique_fd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        REQUIRE(fd);
        if (::connect(fd.get(), ep.data(), ep.size()) < 0) {
            REQUIRE(errno == EAGAIN);
            break;
        }
        clients.push_back(std::move(fd));
        REQUIRE(clients.size() < 100);
    }
    io_result<seqpacket_socket> c;
    bool done = false;
    int accepted = 0;
    auto client = [&]() -> task<void> {
        c = co_await seqpacket_socket::connect(ctx, ep, 10s);
        done = true;
    };
    auto server = [&]() -> task<void> {
        (void)co_await ringsock::sleep_for(ctx, 20ms);
        CHECK_FALSE(done);  // it waited for room
        std::vector<unique_fd> conns;
        for (int i = 0; i < 1000 && !done; ++i) {
            const int fd = ::accept4(lfd.get(), nullptr, nullptr, SOCK_CLOEXEC);
            if (fd >= 0) {
                conns.emplace_back(fd);
                ++accepted;
            }
            (void)co_await ringsock::sleep_for(ctx, 1ms);
        }
        accepted += drain_listener(lfd.get());
    };
    auto both = [&]() -> task<void> { (void)co_await ringsock::when_all(client(), server()); };
    ctx.sync_wait(both());
    REQUIRE(c);
    CHECK(is_blocking(c->native_handle()));
    CHECK(is_cloexec(c->native_handle()));
    CHECK(accepted == static_cast<int>(clients.size()) + 1);
}

// ---------------------------------------------------------------------------------------
// Errors

namespace {

/// The error a plain blocking connect of a `type` socket to `ep` gives.
std::errc raw_connect_errc(const endpoint& ep, int type = SOCK_STREAM) {
    unique_fd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    REQUIRE(fd);
    REQUIRE(::connect(fd.get(), ep.data(), ep.size()) < 0);
    return static_cast<std::errc>(errno);
}

template <class Socket>
constexpr int mine_type() {
    return std::is_same_v<Socket, seqpacket_socket> ? SOCK_SEQPACKET : SOCK_STREAM;
}

template <class Socket>
void check_connect_error(io_context& ctx, const endpoint& ep, std::errc want) {
    io_result<Socket> c;
    auto client = [&]() -> task<void> { c = co_await Socket::connect(ctx, ep); };
    ctx.sync_wait(client());
    REQUIRE_FALSE(c);
    CHECK(c.error() == want);
    CHECK(std::string_view(c.what()) == "connect");
}

template <class Socket>
void check_all_errors(io_context& ctx) {
    temp_dir tmp;
    SECTION("a missing path: ENOENT") {
        check_connect_error<Socket>(ctx, path_ep(tmp.file("missing")), std::errc::no_such_file_or_directory);
    }
    SECTION("a stale socket file: ECONNREFUSED") {
        const std::string p = tmp.file("stale");
        {
            unique_fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
            auto ep = path_ep(p);
            REQUIRE(::bind(s.get(), ep.data(), ep.size()) == 0);
        }
        check_connect_error<Socket>(ctx, path_ep(p), std::errc::connection_refused);
    }
    SECTION("a regular file: ECONNREFUSED") {
        const std::string p = tmp.file("regular");
        unique_fd f(::open(p.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
        REQUIRE(f);
        check_connect_error<Socket>(ctx, path_ep(p), std::errc::connection_refused);
    }
    SECTION("a directory without search permission: EACCES") {
        if (::geteuid() == 0) {
            WARN("running as root: permission checks do not apply, skipped");
        } else {
            const std::string d = tmp.file("locked");
            REQUIRE(::mkdir(d.c_str(), 0700) == 0);
            unique_fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
            auto ep = path_ep(d + "/sock");
            REQUIRE(::bind(s.get(), ep.data(), ep.size()) == 0);
            REQUIRE(::listen(s.get(), 4) == 0);
            REQUIRE(::chmod(d.c_str(), 0600) == 0);
            check_connect_error<Socket>(ctx, ep, std::errc::permission_denied);
            REQUIRE(::chmod(d.c_str(), 0700) == 0);
        }
    }
    SECTION("an abstract name nobody listens on: ECONNREFUSED") {
        check_connect_error<Socket>(ctx, unique_abstract("nobody"), std::errc::connection_refused);
    }
    SECTION("a datagram socket's name: what a plain connect gives (ECONNREFUSED on Linux 6.x)") {
        auto ep = unique_abstract("dgram-target");
        auto d = datagram_socket::bind(ctx, ep);
        REQUIRE(d);
        check_connect_error<Socket>(ctx, ep, raw_connect_errc(ep));
    }
    SECTION("a listener of the other connected type: what a plain connect gives") {
        auto ep = unique_abstract("other-type");
        const int other = std::is_same_v<Socket, seqpacket_socket> ? SOCK_STREAM : SOCK_SEQPACKET;
        const int mine = std::is_same_v<Socket, seqpacket_socket> ? SOCK_SEQPACKET : SOCK_STREAM;
        unique_fd l(::socket(AF_UNIX, other | SOCK_CLOEXEC, 0));
        REQUIRE(::bind(l.get(), ep.data(), ep.size()) == 0);
        REQUIRE(::listen(l.get(), 4) == 0);
        const std::errc want = raw_connect_errc(ep, mine);
        check_connect_error<Socket>(ctx, ep, want);
        ::fcntl(l.get(), F_SETFL, O_NONBLOCK);
        CHECK(drain_listener(l.get()) == 0);
    }
    SECTION("an empty (autobind) address: EINVAL") {
        check_connect_error<Socket>(ctx, endpoint::autobind(), raw_connect_errc(endpoint::autobind(), mine_type<Socket>()));
    }
}

}  // namespace

TEST_CASE("connect hostile: out of descriptors, connect fails with EMFILE named connect: socket, and recovers",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto ep = unique_abstract("emfile");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    rlimit old{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &old) == 0);
    // Fill every slot below a small limit: the next socket() fails.
    std::vector<unique_fd> filler;
    rlimit low = old;
    low.rlim_cur = ringsock::test::open_fd_count() + 4;
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
    for (;;) {
        unique_fd f(::open("/dev/null", O_RDONLY | O_CLOEXEC));
        if (!f) break;
        filler.push_back(std::move(f));
    }
    io_result<stream_socket> c;
    auto client = [&]() -> task<void> { c = co_await stream_socket::connect(ctx, ep); };
    ctx.sync_wait(client());
    filler.clear();
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &old) == 0);
    REQUIRE_FALSE(c);
    CHECK(c.error() == std::errc::too_many_files_open);
    CHECK(std::string_view(c.what()) == "connect: socket");
    io_result<stream_socket> again;
    auto retry = [&]() -> task<void> {
        again = co_await stream_socket::connect(ctx, ep);
        auto s = co_await acc->accept(5s);
        CHECK(s);
    };
    ctx.sync_wait(retry());
    REQUIRE(again);
    CHECK(is_blocking(again->native_handle()));
}

TEST_CASE("connect hostile: a direct connect under a time limit leaves no deadline behind",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto ep = unique_abstract("limit-direct");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    std::string got(2, '\0');
    auto io = [&]() -> task<void> {
        auto c = co_await stream_socket::connect(ctx, ep, 1ms);
        REQUIRE(c);
        auto s = co_await acc->accept();
        REQUIRE(s);
        (void)co_await ringsock::sleep_for(ctx, 10ms);  // well past the connect's limit
        auto w = co_await c->write_all(ringsock::as_bytes(std::string_view("ok")));
        REQUIRE(w);
        auto r = co_await s->read_exact(got);
        REQUIRE(r);
    };
    ctx.sync_wait(io());
    CHECK(got == "ok");
}

TEST_CASE("connect hostile: stream connect errors are returned directly with their code, named connect",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    check_all_errors<stream_socket>(ctx);
}

TEST_CASE("connect hostile: seqpacket connect errors are returned directly with their code, named connect",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    check_all_errors<seqpacket_socket>(ctx);
}

TEST_CASE("connect hostile: fd_stream connect errors are returned directly with their code, named connect",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    check_all_errors<fd_stream>(ctx);
}

TEST_CASE("connect hostile: connect errors past the budget (on the ring) keep their code and name",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    temp_dir tmp;
    auto missing = path_ep(tmp.file("missing"));
    auto nobody = unique_abstract("nobody-ring");
    auto dg_ep = unique_abstract("dgram-ring");
    auto d = datagram_socket::bind(ctx, dg_ep);
    REQUIRE(d);
    const std::errc dgram_errc = raw_connect_errc(dg_ep);
    constexpr int n = 150;
    std::vector<std::error_code> errs;
    std::vector<std::string> whats;
    auto loop = [&]() -> task<void> {
        for (int i = 0; i < n; ++i) {
            const endpoint& ep = i % 3 == 0 ? missing : i % 3 == 1 ? nobody : dg_ep;
            auto c = co_await stream_socket::connect(ctx, ep);
            errs.push_back(c ? std::error_code{} : c.error());
            whats.emplace_back(c ? "" : c.what());
        }
    };
    const unsigned before = ringsock::test::settled_sq_tail(ctx);
    ctx.sync_wait(loop());
    CHECK(ringsock::test::sq_tail(ctx) - before > 0);  // some went to the ring
    REQUIRE(errs.size() == static_cast<std::size_t>(n));
    int wrong = 0;
    for (int i = 0; i < n; ++i) {
        const std::errc want = i % 3 == 0 ? std::errc::no_such_file_or_directory
                             : i % 3 == 1 ? std::errc::connection_refused
                                          : dgram_errc;
        if (errs[static_cast<std::size_t>(i)] != want || whats[static_cast<std::size_t>(i)] != "connect") {
            UNSCOPED_INFO("connect " << i << ": " << errs[static_cast<std::size_t>(i)].message() << " ("
                                     << whats[static_cast<std::size_t>(i)] << ")");
            ++wrong;
        }
    }
    CHECK(wrong == 0);
}

// ---------------------------------------------------------------------------------------
// Many concurrent connects with a server in the same context

TEST_CASE("connect hostile: 300 coroutines connect while a server accepts in the same context: none lost",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    for (int backlog : {SOMAXCONN, 4}) {
        CAPTURE(backlog);
        constexpr int n = 300;
        io_context ctx;
        auto ep = unique_abstract("crowd");
        ringsock::listen_options opts;
        opts.backlog = backlog;
        auto acc = acceptor::listen(ctx, ep, opts);
        REQUIRE(acc);
        std::set<int> seen;
        int connect_failures = 0, accept_failures = 0, blocking = 0;
        {
            ringsock::scope sc(ctx);
            for (int i = 0; i < n; ++i) {
                sc.spawn([&, i](std::stop_token) -> task<void> {
                    auto c = co_await stream_socket::connect(ctx, ep, 30s);
                    if (!c) {
                        ++connect_failures;
                        co_return;
                    }
                    blocking += is_blocking(c->native_handle()) ? 1 : 0;
                    char id[8];
                    std::snprintf(id, sizeof id, "%04d", i);
                    auto w = co_await c->write_all(ringsock::as_bytes(std::string_view(id, 4)));
                    if (!w) ++connect_failures;
                });
            }
            sc.spawn([&](std::stop_token) -> task<void> {
                ringsock::scope handlers(ctx);
                for (int i = 0; i < n; ++i) {
                    auto s = co_await acc->accept(30s);
                    if (!s) {
                        ++accept_failures;
                        break;
                    }
                    handlers.spawn([&seen, &accept_failures, conn = std::move(*s)](std::stop_token) mutable -> task<void> {
                        std::string id(4, '\0');
                        auto r = co_await conn.read_exact(id);
                        if (!r) {
                            ++accept_failures;
                            co_return;
                        }
                        seen.insert(std::atoi(id.c_str()));
                    });
                }
                co_await handlers.join();
            });
            auto join = [&]() -> task<void> { co_await sc.join(); };
            ctx.sync_wait(join());
        }
        CHECK(connect_failures == 0);
        CHECK(accept_failures == 0);
        CHECK(blocking == n);
        CHECK(seen.size() == static_cast<std::size_t>(n));
    }
}

// ---------------------------------------------------------------------------------------
// Fairness: loops whose operations all complete at once

namespace {

constexpr int round_cap = 100'000;

/// Runs `round` until a 1 ms timer fires and a coroutine spawned alongside has run, or
/// `round_cap` rounds pass. The rounds it ran.
template <class Round>
int rounds_until_others_ran(io_context& ctx, Round& round) {
    bool timer_fired = false;
    bool other_ran = false;
    int rounds = 0;
    auto busy = [&]() -> task<void> {
        while ((!timer_fired || !other_ran) && rounds < round_cap) {
            co_await round();
            ++rounds;
        }
    };
    auto timer = [&]() -> task<void> {
        auto slept = co_await ringsock::sleep_for(ctx, 1ms);
        CHECK(slept);
        timer_fired = true;
    };
    auto other = [&]() -> task<void> {
        // Runs once the busy loop has started: it must get a turn.
        auto set_flag = [](bool& flag) -> task<void> {
            flag = true;
            co_return;
        };
        ctx.spawn(set_flag(other_ran));
        co_return;
    };
    auto all = [&]() -> task<void> { (void)co_await ringsock::when_all(busy(), timer(), other()); };
    ctx.sync_wait(all());
    CHECK(timer_fired);
    CHECK(other_ran);
    return rounds;
}

}  // namespace

TEST_CASE("connect hostile: fairness: direct writes and reads on a socketpair let a timer and another coroutine run",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto p = ringsock::test::make_pair(ctx);
    auto& a = p.first;
    auto& b = p.second;
    auto round = [&]() -> task<void> {
        std::array<char, 1> in{};
        auto w = co_await a.write_all(ringsock::as_bytes(std::string_view("x")));
        REQUIRE(w);
        auto r = co_await b.read_exact(in);
        REQUIRE(r);
    };
    const int rounds = rounds_until_others_ran(ctx, round);
    CHECK(rounds < round_cap);
}

TEST_CASE("connect hostile: fairness: connect and accept in a loop let a timer and another coroutine run",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto ep = unique_abstract("fair-accept");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    auto round = [&]() -> task<void> {
        auto c = co_await stream_socket::connect(ctx, ep);
        REQUIRE(c);
        auto s = co_await acc->accept();
        REQUIRE(s);
    };
    const int rounds = rounds_until_others_ran(ctx, round);
    CHECK(rounds < round_cap);
}

TEST_CASE("connect hostile: fairness: connect and accept on a raw listener let a timer run (direct connects only)",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto ep = unique_abstract("fair-raw");
    auto lfd = raw_listener(ep, 4096);
    ::fcntl(lfd.get(), F_SETFL, O_NONBLOCK);
    auto round = [&]() -> task<void> {
        auto c = co_await stream_socket::connect(ctx, ep);
        REQUIRE(c);
        CHECK(drain_listener(lfd.get()) == 1);
    };
    const int rounds = rounds_until_others_ran(ctx, round);
    CHECK(rounds < round_cap);
}

TEST_CASE("connect hostile: fairness: failing connects in a loop let a timer and another coroutine run",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto ep = unique_abstract("fair-refused");
    auto round = [&]() -> task<void> {
        auto c = co_await stream_socket::connect(ctx, ep);
        CHECK_FALSE(c);
    };
    const int rounds = rounds_until_others_ran(ctx, round);
    CHECK(rounds < round_cap);
}

TEST_CASE("connect hostile: fairness: datagram sends and receives let a timer and another coroutine run",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto rx_ep = unique_abstract("fair-dgram");
    auto rx = datagram_socket::bind(ctx, rx_ep);
    REQUIRE(rx);
    auto tx = datagram_socket::open(ctx);
    REQUIRE(tx);
    auto round = [&]() -> task<void> {
        std::array<char, 8> in{};
        auto w = co_await tx->send_to(ringsock::as_bytes(std::string_view("dg")), rx_ep);
        REQUIRE(w);
        auto r = co_await rx->receive_bytes(in);
        REQUIRE(r);
    };
    const int rounds = rounds_until_others_ran(ctx, round);
    CHECK(rounds < round_cap);
}

TEST_CASE("connect hostile: fairness: seqpacket sends and receives let a timer and another coroutine run",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto p = seqpacket_socket::pair(ctx);
    REQUIRE(p);
    auto& a = p->first;
    auto& b = p->second;
    auto round = [&]() -> task<void> {
        std::array<char, 8> in{};
        auto w = co_await a.send(ringsock::as_bytes(std::string_view("sp")));
        REQUIRE(w);
        auto r = co_await b.receive_bytes(in);
        REQUIRE(r);
    };
    const int rounds = rounds_until_others_ran(ctx, round);
    CHECK(rounds < round_cap);
}

TEST_CASE("connect hostile: fairness: connected datagram sends and fd_stream reads let a timer and another coroutine run",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto dp = datagram_socket::pair(ctx);
    REQUIRE(dp);
    auto fp = fd_stream::pair(ctx);
    REQUIRE(fp);
    auto& d1 = dp->first;
    auto& d2 = dp->second;
    auto& f1 = fp->first;
    auto& f2 = fp->second;
    auto round = [&]() -> task<void> {
        std::array<char, 8> in{};
        auto w = co_await d1.send(ringsock::as_bytes(std::string_view("dg")));
        REQUIRE(w);
        auto r = co_await d2.receive_bytes(in);
        REQUIRE(r);
        auto fw = co_await f1.write_all(ringsock::as_bytes(std::string_view("f")));
        REQUIRE(fw);
        std::array<char, 1> one{};
        auto fr = co_await f2.read_some(one);
        REQUIRE(fr);
    };
    const int rounds = rounds_until_others_ran(ctx, round);
    CHECK(rounds < round_cap);
}

TEST_CASE("connect hostile: fairness: a loop of direct operations lets a signal_set wait see a signal",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    ringsock::signal_set sigs(ctx, {SIGUSR2});
    auto p = ringsock::test::make_pair(ctx);
    auto& a = p.first;
    auto& b = p.second;
    bool got_signal = false;
    int rounds = 0;
    auto busy = [&]() -> task<void> {
        while (!got_signal && rounds < round_cap) {
            if (rounds == 10) ::raise(SIGUSR2);
            std::array<char, 1> in{};
            auto w = co_await a.write_all(ringsock::as_bytes(std::string_view("x")));
            REQUIRE(w);
            auto r = co_await b.read_exact(in);
            REQUIRE(r);
            ++rounds;
        }
    };
    auto waiter = [&]() -> task<void> {
        auto sig = co_await sigs.wait();
        CHECK(sig);
        got_signal = true;
    };
    auto both = [&]() -> task<void> { (void)co_await ringsock::when_all(busy(), waiter()); };
    ctx.sync_wait(both());
    CHECK(got_signal);
    CHECK(rounds < round_cap);
}

TEST_CASE("connect hostile: fairness: writes failing at once on a broken stream let a timer and another coroutine run",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto p = ringsock::test::make_pair(ctx);
    auto& a = p.first;
    p.second.close();
    auto first = [&]() -> task<void> {
        auto w = co_await a.write_all(ringsock::as_bytes(std::string_view("x")));
        CHECK_FALSE(w);  // EPIPE: the stream is broken from now on
    };
    ctx.sync_wait(first());
    auto round = [&]() -> task<void> {
        auto w = co_await a.write_all(ringsock::as_bytes(std::string_view("x")));
        CHECK_FALSE(w);
    };
    const int rounds = rounds_until_others_ran(ctx, round);
    CHECK(rounds < round_cap);
}

TEST_CASE("connect hostile: fairness: a stop request from a timer coroutine ends a loop of direct operations",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto p = ringsock::test::make_pair(ctx);
    auto& a = p.first;
    auto& b = p.second;
    auto ep = unique_abstract("fair-stop");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    std::stop_source src;
    int rounds = 0;
    std::error_code ended_with;
    auto busy = [&]() -> task<void> {
        const std::stop_token tok = src.get_token();
        while (rounds < round_cap) {
            std::array<char, 1> in{};
            auto w = co_await a.write_all(ringsock::as_bytes(std::string_view("x")), tok);
            if (!w) {
                ended_with = w.error();
                break;
            }
            auto r = co_await b.read_exact(in, tok);
            if (!r) {
                ended_with = r.error();
                break;
            }
            auto c = co_await stream_socket::connect(ctx, ep, tok);
            if (!c) {
                ended_with = c.error();
                break;
            }
            auto s = co_await acc->accept(tok);
            if (!s) {
                ended_with = s.error();
                break;
            }
            ++rounds;
        }
    };
    auto stopper = [&]() -> task<void> {
        (void)co_await ringsock::sleep_for(ctx, 1ms);
        src.request_stop();
    };
    auto both = [&]() -> task<void> { (void)co_await ringsock::when_all(busy(), stopper()); };
    ctx.sync_wait(both());
    CHECK(rounds < round_cap);
    CHECK(ended_with == std::errc::operation_canceled);
}

// ---------------------------------------------------------------------------------------
// Frames destroyed while a connect waits on the ring

TEST_CASE("connect hostile: a scope destroyed while its connects wait on a full backlog leaks nothing",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto ep = unique_abstract("scope-destroyed");
    auto lfd = raw_listener(ep, 0);
    auto clients = fill_backlog(ep);
    ringsock::test::counted::alive = 0;
    int finished = 0;
    {
        auto sc = std::make_unique<ringsock::scope>(ctx);
        for (int i = 0; i < 8; ++i) {
            sc->spawn([&](std::stop_token) -> task<void> {
                ringsock::test::counted keep;
                auto c = co_await stream_socket::connect(ctx, ep);
                ++finished;  // never: the frame goes first
            });
        }
        auto wait = [&]() -> task<void> { (void)co_await ringsock::sleep_for(ctx, 20ms); };
        ctx.sync_wait(wait());
        CHECK(ringsock::test::counted::alive == 8);
        sc.reset();
    }
    CHECK(ringsock::test::counted::alive == 0);
    CHECK(finished == 0);
    ::fcntl(lfd.get(), F_SETFL, O_NONBLOCK);
    CHECK(drain_listener(lfd.get()) == static_cast<int>(clients.size()));
}

TEST_CASE("connect hostile: a scope stopped while its connects wait on a full backlog ends them canceled",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto ep = unique_abstract("scope-stopped");
    auto lfd = raw_listener(ep, 1);
    auto clients = fill_backlog(ep);
    int canceled = 0, other = 0;
    {
        ringsock::scope sc(ctx);
        for (int i = 0; i < 8; ++i) {
            sc.spawn([&](std::stop_token tok) -> task<void> {
                auto c = co_await fd_stream::connect(ctx, ep, tok);
                if (!c && c.error() == std::errc::operation_canceled) ++canceled;
                else ++other;
            });
        }
        auto run = [&]() -> task<void> {
            (void)co_await ringsock::sleep_for(ctx, 20ms);
            sc.request_stop();
            co_await sc.join();
        };
        ctx.sync_wait(run());
    }
    CHECK(canceled == 8);
    CHECK(other == 0);
    ::fcntl(lfd.get(), F_SETFL, O_NONBLOCK);
    CHECK(drain_listener(lfd.get()) == static_cast<int>(clients.size()));
}

TEST_CASE("connect hostile: a connect waiting on a full backlog ends with an error when the listener closes",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    io_context ctx;
    auto ep = unique_abstract("listener-closes");
    auto lfd = raw_listener(ep, 0);
    auto clients = fill_backlog(ep);
    io_result<stream_socket> c;
    bool done = false;
    auto client = [&]() -> task<void> {
        c = co_await stream_socket::connect(ctx, ep, 20s);
        done = true;
    };
    auto closer = [&]() -> task<void> {
        (void)co_await ringsock::sleep_for(ctx, 20ms);
        CHECK_FALSE(done);
        lfd.reset();
    };
    auto both = [&]() -> task<void> { (void)co_await ringsock::when_all(client(), closer()); };
    ctx.sync_wait(both());
    REQUIRE_FALSE(c);
    INFO(c.error().message());
    CHECK(c.error() != std::errc::timed_out);
    CHECK(std::string_view(c.what()) == "connect");
}

TEST_CASE("connect hostile: connect awaiters made but never awaited connect nothing and leak nothing",
          "[connect_hostile]") {
    fd_leak_guard guard;
    io_context ctx;
    auto ep = unique_abstract("unawaited");
    auto lfd = raw_listener(ep, 64);
    ::fcntl(lfd.get(), F_SETFL, O_NONBLOCK);
    for (int i = 0; i < 10; ++i) {
        auto a1 = stream_socket::connect(ctx, ep);
        auto a2 = seqpacket_socket::connect(ctx, ep, 1s);
        auto a3 = fd_stream::connect(ctx, ep);
        (void)a1;
        (void)a2;
        (void)a3;
    }
    CHECK(drain_listener(lfd.get()) == 0);
}

TEST_CASE("connect hostile: a context destroyed with a detached connect still waiting leaks nothing",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    auto ep = unique_abstract("ctx-destroyed");
    auto lfd = raw_listener(ep, 0);
    auto clients = fill_backlog(ep);
    {
        io_context ctx;
        auto detached = [](io_context& on, endpoint to) -> task<void> {
            auto c = co_await stream_socket::connect(on, to);
            (void)c;
        };
        ctx.spawn(detached(ctx, ep));
        auto wait = [&]() -> task<void> { (void)co_await ringsock::sleep_for(ctx, 20ms); };
        ctx.sync_wait(wait());
    }
    ::fcntl(lfd.get(), F_SETFL, O_NONBLOCK);
    CHECK(drain_listener(lfd.get()) == static_cast<int>(clients.size()));
}

TEST_CASE("connect hostile: 150 connects past the budget to a small backlog with some accepted and the rest stopped: every success is one connection",
          "[connect_hostile]") {
    fd_leak_guard guard;
    hang_guard hang;
    constexpr int n = 150;
    io_context ctx;
    auto ep = unique_abstract("partial");
    auto lfd = raw_listener(ep, 16);
    ::fcntl(lfd.get(), F_SETFL, O_NONBLOCK);
    int ok = 0, canceled = 0, other = 0, accepted = 0;
    std::vector<stream_socket> kept;
    std::vector<unique_fd> server_side;
    {
        ringsock::scope sc(ctx);
        for (int i = 0; i < n; ++i) {
            sc.spawn([&](std::stop_token tok) -> task<void> {
                auto c = co_await stream_socket::connect(ctx, ep, tok);
                if (c) {
                    ++ok;
                    CHECK(is_blocking(c->native_handle()));
                    kept.push_back(std::move(*c));
                } else if (c.error() == std::errc::operation_canceled) {
                    ++canceled;
                } else {
                    ++other;
                }
            });
        }
        auto server = [&]() -> task<void> {
            (void)co_await ringsock::sleep_for(ctx, 20ms);
            for (int round = 0; round < 10; ++round) {
                for (int k = 0; k < 5; ++k) {
                    const int fd = ::accept4(lfd.get(), nullptr, nullptr, SOCK_CLOEXEC);
                    if (fd >= 0) {
                        server_side.emplace_back(fd);
                        ++accepted;
                    }
                }
                (void)co_await ringsock::sleep_for(ctx, 2ms);
            }
            sc.request_stop();
            co_await sc.join();
        };
        ctx.sync_wait(server());
    }
    accepted += drain_listener(lfd.get());
    CHECK(other == 0);
    CHECK(ok + canceled == n);
    CHECK(canceled > 0);
    CHECK(accepted == ok);  // no half-made connection from a stopped connect
}
