// Integration tests for acceptor over real socket files: the mode a socket file is
// created with, stale-file replacement, refusing a live server's path or anything that
// is not a socket, removing only our own node on close, relative and abstract names,
// cancelled and timed-out accepts, backlogs accepted late, and descriptor hygiene.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support/fd_count.hpp"

namespace {

using namespace std::chrono_literals;
using ringsock::acceptor;
using ringsock::endpoint;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::listen_options;
using ringsock::stream_socket;
using ringsock::task;
using ringsock::unique_fd;

/// A fresh directory under /tmp for one test, removed with everything in it.
class temp_dir {
public:
    temp_dir() {
        std::string tmpl = "/tmp/ringsock-listener-XXXXXX";
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        path_ = tmpl;
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    const std::string& path() const { return path_; }
    std::string operator/(std::string_view name) const { return path_ + "/" + std::string(name); }

private:
    std::string path_;
};

/// Sets the umask for one test and restores the previous one.
class umask_guard {
public:
    explicit umask_guard(mode_t m) : old_(::umask(m)) {}
    umask_guard(const umask_guard&) = delete;
    umask_guard& operator=(const umask_guard&) = delete;
    ~umask_guard() { ::umask(old_); }

private:
    mode_t old_;
};

/// Restores the working directory when the test ends, however it ends.
class cwd_guard {
public:
    cwd_guard() {
        char buf[PATH_MAX];
        REQUIRE(::getcwd(buf, sizeof buf) != nullptr);
        old_ = buf;
    }
    cwd_guard(const cwd_guard&) = delete;
    cwd_guard& operator=(const cwd_guard&) = delete;
    ~cwd_guard() { (void)!::chdir(old_.c_str()); }

private:
    std::string old_;
};

endpoint path_ep(const std::string& p) {
    auto ep = endpoint::path(p);
    REQUIRE(ep);
    return *ep;
}

bool exists(const std::string& p) {
    struct stat st {};
    return ::lstat(p.c_str(), &st) == 0;
}

struct stat lstat_of(const std::string& p) {
    struct stat st {};
    REQUIRE(::lstat(p.c_str(), &st) == 0);
    return st;
}

mode_t mode_of(const std::string& p) { return lstat_of(p).st_mode & 07777; }

void write_file(const std::string& p, std::string_view content) {
    std::ofstream f(p, std::ios::binary);
    f << content;
    REQUIRE(f.good());
}

std::string read_file(const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

/// What a crashed server leaves behind: a bound socket file nobody listens on.
void make_stale_socket(const endpoint& ep) {
    unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd);
    REQUIRE(::bind(fd.get(), ep.data(), ep.size()) == 0);
    REQUIRE(::listen(fd.get(), 1) == 0);
}  // closed without unlink

/// A blocking client connected with plain syscalls.
unique_fd raw_connect(const endpoint& ep) {
    unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd);
    REQUIRE(::connect(fd.get(), ep.data(), ep.size()) == 0);
    return fd;
}

/// Fails the test with the error's message when `r` holds an error. Never put a
/// co_await inside a Catch2 assertion: g++ 12 evaluates it more than once.
#define REQUIRE_OK(r)                                                          \
    do {                                                                       \
        if (!(r)) FAIL(#r << " failed: " << (r).error().message());            \
    } while (false)

/// Connects a client, accepts it, and checks that bytes flow both ways. Connections
/// that are already at end of stream (a liveness probe's, see "live server" below) are
/// skipped and counted in `skipped`.
task<void> check_round_trip(io_context& ctx, acceptor& acc, const endpoint& ep, int* skipped = nullptr) {
    auto client = co_await stream_socket::connect(ctx, ep, 5s);
    REQUIRE_OK(client);
    auto w = co_await client->write_all(ringsock::as_bytes(std::string_view("ping")));
    REQUIRE_OK(w);
    std::string buf(4, '\0');
    for (int tries = 0;; ++tries) {
        REQUIRE(tries < 5);
        auto server = co_await acc.accept();
        REQUIRE_OK(server);
        auto r = co_await server->read_exact(buf);
        if (!r && r.error() == ringsock::errc::end_of_stream && r.partial_value() == 0) {
            if (skipped) ++*skipped;
            continue;
        }
        REQUIRE_OK(r);
        CHECK(buf == "ping");
        auto w2 = co_await server->write_all(ringsock::as_bytes(std::string_view("pong")));
        REQUIRE_OK(w2);
        auto r2 = co_await client->read_exact(buf);
        REQUIRE_OK(r2);
        CHECK(buf == "pong");
        break;
    }
}

}  // namespace

TEST_CASE("acceptor: the socket file is created with mode 0600 by default", "[acceptor]") {
    temp_dir dir;
    io_context ctx;
    {
        umask_guard um(022);
        auto acc = acceptor::listen(ctx, path_ep(dir / "a.sock"));
        REQUIRE(acc);
        CHECK(mode_of(dir / "a.sock") == 0600);
        CHECK(S_ISSOCK(lstat_of(dir / "a.sock").st_mode));
    }
    {
        umask_guard um(0);
        auto acc = acceptor::listen(ctx, path_ep(dir / "b.sock"));
        REQUIRE(acc);
        CHECK(mode_of(dir / "b.sock") == 0600);
    }
}

TEST_CASE("acceptor: listen_options.mode gives exactly the requested mode, even under umask 022", "[acceptor]") {
    temp_dir dir;
    io_context ctx;
    umask_guard um(022);
    for (mode_t m : {mode_t{0660}, mode_t{0666}, mode_t{0640}, mode_t{0700}}) {
        listen_options opts;
        opts.mode = m;
        // Appended, not "m" + std::to_string(m): g++ 12 -O3 reports a false -Wrestrict
        // inside libstdc++ for operator+(const char*, std::string&&).
        std::string name = "m";
        name += std::to_string(m);
        std::string p = dir / (name + ".sock");
        auto acc = acceptor::listen(ctx, path_ep(p), opts);
        REQUIRE(acc);
        INFO("requested mode " << std::oct << m);
        CHECK(mode_of(p) == m);
    }
    // The process umask was not disturbed.
    mode_t now = ::umask(022);
    CHECK(now == 022);
}

TEST_CASE("acceptor: a stale socket file is replaced", "[acceptor]") {
    temp_dir dir;
    io_context ctx;
    auto ep = path_ep(dir / "stale.sock");
    make_stale_socket(ep);
    auto before = lstat_of(dir / "stale.sock");
    REQUIRE(S_ISSOCK(before.st_mode));

    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    auto after = lstat_of(dir / "stale.sock");
    CHECK(S_ISSOCK(after.st_mode));
    ctx.sync_wait(check_round_trip(ctx, *acc, ep));
}

TEST_CASE("acceptor: listen_options.replace_stale = false refuses a stale socket file", "[acceptor]") {
    temp_dir dir;
    io_context ctx;
    auto ep = path_ep(dir / "stale.sock");
    make_stale_socket(ep);
    auto before = lstat_of(dir / "stale.sock");
    listen_options opts;
    opts.replace_stale = false;
    auto acc = acceptor::listen(ctx, ep, opts);
    REQUIRE_FALSE(acc);
    CHECK(acc.error() == std::errc::address_in_use);
    CHECK(lstat_of(dir / "stale.sock").st_ino == before.st_ino);
}

TEST_CASE("acceptor: a live server's path gives EADDRINUSE and the live server keeps working", "[acceptor]") {
    temp_dir dir;
    io_context ctx;
    auto ep = path_ep(dir / "live.sock");
    auto first = acceptor::listen(ctx, ep);
    REQUIRE(first);
    auto ino = lstat_of(dir / "live.sock").st_ino;

    auto second = acceptor::listen(ctx, ep);
    REQUIRE_FALSE(second);
    CHECK(second.error() == std::errc::address_in_use);
    CHECK(lstat_of(dir / "live.sock").st_ino == ino);
    // The liveness probe's connect reaches the live server as a connection that ends at
    // once; the server must skip it and go on serving.
    int skipped = 0;
    ctx.sync_wait(check_round_trip(ctx, *first, ep, &skipped));
    CHECK(skipped <= 1);
}

TEST_CASE("acceptor: a live server with a full backlog is still recognised as live", "[acceptor]") {
    temp_dir dir;
    io_context ctx;
    auto ep = path_ep(dir / "busy.sock");
    listen_options opts;
    opts.backlog = 0;
    auto first = acceptor::listen(ctx, ep, opts);
    REQUIRE(first);
    // Fill the backlog with non-blocking connects until the kernel says EAGAIN.
    std::vector<unique_fd> fillers;
    for (int i = 0; i < 64; ++i) {
        unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        REQUIRE(fd);
        if (::connect(fd.get(), ep.data(), ep.size()) < 0) {
            REQUIRE(errno == EAGAIN);
            break;
        }
        fillers.push_back(std::move(fd));
    }
    REQUIRE(fillers.size() < 64);
    auto ino = lstat_of(dir / "busy.sock").st_ino;
    auto second = acceptor::listen(ctx, ep);
    REQUIRE_FALSE(second);
    CHECK(second.error() == std::errc::address_in_use);
    CHECK(lstat_of(dir / "busy.sock").st_ino == ino);
}

TEST_CASE("acceptor: a regular file, directory, fifo or symlink at the path gives path_not_a_socket and is left "
          "untouched",
          "[acceptor]") {
    temp_dir dir;
    io_context ctx;

    SECTION("regular file") {
        write_file(dir / "f", "precious contents\n");
        auto acc = acceptor::listen(ctx, path_ep(dir / "f"));
        REQUIRE_FALSE(acc);
        CHECK(acc.error() == ringsock::errc::path_not_a_socket);
        CHECK(acc.error() == std::errc::file_exists);
        CHECK(S_ISREG(lstat_of(dir / "f").st_mode));
        CHECK(read_file(dir / "f") == "precious contents\n");
    }
    SECTION("directory") {
        REQUIRE(::mkdir((dir / "d").c_str(), 0755) == 0);
        write_file(dir / "d/inside", "x");
        auto acc = acceptor::listen(ctx, path_ep(dir / "d"));
        REQUIRE_FALSE(acc);
        CHECK(acc.error() == ringsock::errc::path_not_a_socket);
        CHECK(S_ISDIR(lstat_of(dir / "d").st_mode));
        CHECK(read_file(dir / "d/inside") == "x");
    }
    SECTION("fifo") {
        REQUIRE(::mkfifo((dir / "p").c_str(), 0600) == 0);
        auto acc = acceptor::listen(ctx, path_ep(dir / "p"));
        REQUIRE_FALSE(acc);
        CHECK(acc.error() == ringsock::errc::path_not_a_socket);
        CHECK(S_ISFIFO(lstat_of(dir / "p").st_mode));
    }
    SECTION("symlink to a regular file") {
        write_file(dir / "target", "target contents");
        REQUIRE(::symlink((dir / "target").c_str(), (dir / "link").c_str()) == 0);
        auto acc = acceptor::listen(ctx, path_ep(dir / "link"));
        REQUIRE_FALSE(acc);
        CHECK(acc.error() == ringsock::errc::path_not_a_socket);
        CHECK(S_ISLNK(lstat_of(dir / "link").st_mode));
        CHECK(read_file(dir / "target") == "target contents");
    }
    SECTION("dangling symlink") {
        REQUIRE(::symlink((dir / "nowhere").c_str(), (dir / "link").c_str()) == 0);
        auto acc = acceptor::listen(ctx, path_ep(dir / "link"));
        REQUIRE_FALSE(acc);
        CHECK(acc.error() == ringsock::errc::path_not_a_socket);
        CHECK(S_ISLNK(lstat_of(dir / "link").st_mode));
        CHECK_FALSE(exists(dir / "nowhere"));
    }
    SECTION("symlink to a stale socket") {
        auto target = path_ep(dir / "stale.sock");
        make_stale_socket(target);
        auto ino = lstat_of(dir / "stale.sock").st_ino;
        REQUIRE(::symlink((dir / "stale.sock").c_str(), (dir / "link").c_str()) == 0);
        auto acc = acceptor::listen(ctx, path_ep(dir / "link"));
        REQUIRE_FALSE(acc);
        CHECK(acc.error() == ringsock::errc::path_not_a_socket);
        CHECK(S_ISLNK(lstat_of(dir / "link").st_mode));
        CHECK(lstat_of(dir / "stale.sock").st_ino == ino);
    }
}

TEST_CASE("acceptor: a 108-byte path gives ENAMETOOLONG from endpoint::path, 107 bytes binds", "[acceptor][endpoint]") {
    temp_dir dir;
    auto too_long = endpoint::path(std::string(108, 'a'));
    REQUIRE_FALSE(too_long);
    CHECK(too_long.error() == std::errc::filename_too_long);

    std::string p = dir / "";
    REQUIRE(p.size() < 100);
    p += std::string(107 - p.size(), 's');
    REQUIRE(p.size() == 107);
    auto ep = endpoint::path(p);
    REQUIRE(ep);
    io_context ctx;
    auto acc = acceptor::listen(ctx, *ep);
    REQUIRE(acc);
    CHECK(exists(p));
    ctx.sync_wait(check_round_trip(ctx, *acc, *ep));
    acc->close();
    CHECK_FALSE(exists(p));
}

TEST_CASE("acceptor: close() removes the socket file, and so does the destructor", "[acceptor]") {
    temp_dir dir;
    io_context ctx;
    auto acc = acceptor::listen(ctx, path_ep(dir / "c.sock"));
    REQUIRE(acc);
    REQUIRE(exists(dir / "c.sock"));
    acc->close();
    CHECK_FALSE(acc->is_open());
    CHECK_FALSE(exists(dir / "c.sock"));
    acc->close();  // idempotent

    {
        auto scoped = acceptor::listen(ctx, path_ep(dir / "d.sock"));
        REQUIRE(scoped);
        REQUIRE(exists(dir / "d.sock"));
        // Moving keeps exactly one owner of the file.
        acceptor moved = std::move(*scoped);
        CHECK(exists(dir / "d.sock"));
    }
    CHECK_FALSE(exists(dir / "d.sock"));

    listen_options keep;
    keep.remove_on_close = false;
    auto kept = acceptor::listen(ctx, path_ep(dir / "e.sock"), keep);
    REQUIRE(kept);
    kept->close();
    CHECK(exists(dir / "e.sock"));
}

TEST_CASE("acceptor: close() does not remove a socket file that replaced ours", "[acceptor]") {
    temp_dir dir;
    io_context ctx;
    auto ep = path_ep(dir / "r.sock");
    auto first = acceptor::listen(ctx, ep);
    REQUIRE(first);
    REQUIRE(::unlink((dir / "r.sock").c_str()) == 0);

    SECTION("by another listening socket") {
        auto second = acceptor::listen(ctx, ep);
        REQUIRE(second);
        auto ino = lstat_of(dir / "r.sock").st_ino;
        first->close();
        REQUIRE(exists(dir / "r.sock"));
        CHECK(lstat_of(dir / "r.sock").st_ino == ino);
        ctx.sync_wait(check_round_trip(ctx, *second, ep));
        second->close();
        CHECK_FALSE(exists(dir / "r.sock"));
    }
    SECTION("by a regular file") {
        write_file(dir / "r.sock", "not ours");
        first->close();
        CHECK(read_file(dir / "r.sock") == "not ours");
    }
}

TEST_CASE("acceptor: a relative path binds in the working directory and close() removes it after a chdir",
          "[acceptor]") {
    temp_dir dir;
    cwd_guard cwd;
    io_context ctx;
    REQUIRE(::chdir(dir.path().c_str()) == 0);
    auto ep = path_ep("rel.sock");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    CHECK(exists(dir / "rel.sock"));
    ctx.sync_wait(check_round_trip(ctx, *acc, ep));

    // Closing from elsewhere still removes the file it created, not ./rel.sock.
    REQUIRE(::chdir("/") == 0);
    acc->close();
    CHECK_FALSE(exists(dir / "rel.sock"));
}

TEST_CASE("acceptor: an abstract name leaves no file anywhere", "[acceptor]") {
    temp_dir dir;
    cwd_guard cwd;
    io_context ctx;
    REQUIRE(::chdir(dir.path().c_str()) == 0);
    // Name it like a path, to catch an implementation that mixes the two up.
    std::string name = dir / ("abstract-" + std::to_string(::getpid()));
    auto ep = endpoint::abstract(name);
    REQUIRE(ep);
    auto acc = acceptor::listen(ctx, *ep);
    REQUIRE(acc);
    CHECK(std::filesystem::is_empty(dir.path()));
    CHECK_FALSE(exists(name));
    ctx.sync_wait(check_round_trip(ctx, *acc, *ep));
    auto local = acc->local_endpoint();
    REQUIRE(local);
    CHECK(*local == *ep);
    acc->close();
    CHECK(std::filesystem::is_empty(dir.path()));
}

TEST_CASE("acceptor: accept with a stop token cancelled while waiting gives operation_canceled", "[acceptor]") {
    io_context ctx;
    auto ep = endpoint::abstract("ringsock-test-accept-cancel-" + std::to_string(::getpid()));
    REQUIRE(ep);
    auto acc = acceptor::listen(ctx, *ep);
    REQUIRE(acc);

    SECTION("stopped from the loop") {
        ctx.sync_wait([&]() -> task<void> {
            std::stop_source src;
            auto stopper = [&]() -> task<void> {
                (void)co_await ringsock::sleep_for(ctx, 10ms);
                src.request_stop();
            };
            ctx.spawn(stopper());
            auto r = co_await acc->accept(src.get_token());
            REQUIRE_FALSE(r);
            CHECK(r.error() == std::errc::operation_canceled);
        }());
    }
    SECTION("stopped from another thread") {
        std::stop_source src;
        std::thread t([&] {
            std::this_thread::sleep_for(10ms);
            src.request_stop();
        });
        auto r = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(src.get_token()); }());
        t.join();
        REQUIRE_FALSE(r);
        CHECK(r.error() == std::errc::operation_canceled);
    }
    SECTION("already stopped") {
        std::stop_source src;
        src.request_stop();
        auto r = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(src.get_token()); }());
        REQUIRE_FALSE(r);
        CHECK(r.error() == std::errc::operation_canceled);
    }
    // The acceptor still works after a cancelled accept.
    ctx.sync_wait(check_round_trip(ctx, *acc, *ep));
}

TEST_CASE("acceptor: accept with a 20ms timeout and no client gives timed_out", "[acceptor]") {
    io_context ctx;
    auto ep = endpoint::abstract("ringsock-test-accept-timeout-" + std::to_string(::getpid()));
    REQUIRE(ep);
    auto acc = acceptor::listen(ctx, *ep);
    REQUIRE(acc);
    ctx.sync_wait([&]() -> task<void> {
        auto start = std::chrono::steady_clock::now();
        auto r = co_await acc->accept(20ms);
        REQUIRE_FALSE(r);
        CHECK(r.error() == std::errc::timed_out);
        CHECK(std::chrono::steady_clock::now() - start < 5s);

        std::stop_source src;
        auto r2 = co_await acc->accept(ringsock::op_limits(src.get_token(), 20ms));
        REQUIRE_FALSE(r2);
        CHECK(r2.error() == std::errc::timed_out);
    }());
    // A time limit that does not expire lets the connection through.
    ctx.sync_wait(check_round_trip(ctx, *acc, *ep));
}

TEST_CASE("acceptor: clients that connect before anyone accepts are all accepted", "[acceptor]") {
    io_context ctx;
    auto ep = endpoint::abstract("ringsock-test-backlog-" + std::to_string(::getpid()));
    REQUIRE(ep);
    auto acc = acceptor::listen(ctx, *ep);
    REQUIRE(acc);
    // More than the acceptor's internal queue (256), so it must pause and resume.
    constexpr std::uint32_t n = 300;
    std::vector<unique_fd> clients;
    for (std::uint32_t i = 0; i < n; ++i) {
        clients.push_back(raw_connect(*ep));
        REQUIRE(::write(clients.back().get(), &i, sizeof i) == sizeof i);
    }
    std::set<std::uint32_t> seen;
    ctx.sync_wait([&]() -> task<void> {
        for (std::uint32_t i = 0; i < n; ++i) {
            auto s = co_await acc->accept(5s);  // time limit: one single-shot ACCEPT each
            REQUIRE(s);
            std::uint32_t id = 0;
            auto r = co_await s->read_exact(std::span(reinterpret_cast<std::byte*>(&id), sizeof id));
            REQUIRE(r);
            seen.insert(id);
        }
    }());
    CHECK(seen.size() == n);
    CHECK(*seen.begin() == 0);
    CHECK(*seen.rbegin() == n - 1);
}

TEST_CASE("acceptor: late accepts through the shared multishot queue get every queued client", "[acceptor]") {
    io_context ctx;
    auto ep = endpoint::abstract("ringsock-test-backlog-ms-" + std::to_string(::getpid()));
    REQUIRE(ep);
    auto acc = acceptor::listen(ctx, *ep);
    REQUIRE(acc);
    constexpr std::uint32_t n = 300;
    std::vector<unique_fd> clients;
    for (std::uint32_t i = 0; i < n; ++i) {
        clients.push_back(raw_connect(*ep));
        REQUIRE(::write(clients.back().get(), &i, sizeof i) == sizeof i);
    }
    std::set<std::uint32_t> seen;
    ctx.sync_wait([&]() -> task<void> {
        for (std::uint32_t i = 0; i < n; ++i) {
            auto s = co_await acc->accept();  // no time limit: the multishot engine
            REQUIRE(s);
            std::uint32_t id = 0;
            auto r = co_await s->read_exact(std::span(reinterpret_cast<std::byte*>(&id), sizeof id));
            REQUIRE(r);
            seen.insert(id);
        }
    }());
    CHECK(seen.size() == n);
}

// The multishot request stays armed between accepts (the next accept() then needs no
// request), but only up to a cap: a server that stops accepting must leave the rest in
// the kernel backlog, where its limit makes clients wait.
TEST_CASE("acceptor: a server that stops calling accept() holds at most queue_cap connections, the rest stay in the backlog",
          "[acceptor]") {
    constexpr int backlog = 8;
    constexpr std::size_t cap = ringsock::detail::accept_engine::queue_cap;
    io_context ctx;
    auto ep = endpoint::abstract("ringsock-test-cap-" + std::to_string(::getpid()));
    REQUIRE(ep);
    listen_options opts;
    opts.backlog = backlog;
    auto acc = acceptor::listen(ctx, *ep, opts);
    REQUIRE(acc);
    std::vector<unique_fd> clients;
    // An accept() that finds the backlog empty arms the multishot request (one that finds
    // a connection there takes it with accept4 and arms nothing).
    auto accept_one = [&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(); };
    auto connect_soon = [&]() -> task<void> {
        (void)co_await ringsock::sleep_for(ctx, 5ms);
        clients.push_back(raw_connect(*ep));
    };
    auto first = ctx.sync_wait([&]() -> task<io_result<stream_socket>> {
        auto [s, ignored] = co_await when_all(accept_one(), connect_soon());
        (void)ignored;
        co_return std::move(s);
    }());
    REQUIRE(first);  // the multishot request is armed now
    // Connect without blocking until the kernel refuses, letting the loop run (with
    // something to wait for) between attempts so the engine pulls connections out of
    // the backlog.
    auto turn = [&] {
        ctx.sync_wait([&]() -> task<void> { (void)co_await ringsock::sleep_for(ctx, 1ms); }());
    };
    for (int refusals = 0; refusals < 5 && clients.size() < 1000;) {
        unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        REQUIRE(fd);
        if (::connect(fd.get(), ep->data(), ep->size()) == 0) {
            clients.push_back(std::move(fd));
            refusals = 0;
        } else {
            REQUIRE(errno == EAGAIN);
            ++refusals;
        }
        turn();
    }
    const std::size_t connected = clients.size() - 1;  // after the first
    CHECK(connected >= cap + backlog);
    CHECK(connected <= cap + backlog + 2);
    // Every one of them is a real connection an accept() hands over.
    std::size_t accepted = ctx.sync_wait([&]() -> task<std::size_t> {
        std::size_t n = 0;
        for (std::size_t i = 0; i < connected; ++i) {
            auto s = co_await acc->accept(2s);
            if (!s) break;
            ++n;
        }
        co_return n;
    }());
    CHECK(accepted == connected);
}

// accept() with a time limit is a separate single-shot ACCEPT: it must still see the
// connections the shared multishot request (armed by an earlier accept()) queued.
TEST_CASE("acceptor: accept with a time limit also takes connections queued by an earlier accept",
          "[acceptor]") {
    io_context ctx;
    auto ep = endpoint::abstract("ringsock-test-mixed-" + std::to_string(::getpid()));
    REQUIRE(ep);
    auto acc = acceptor::listen(ctx, *ep);
    REQUIRE(acc);
    std::vector<unique_fd> clients;
    for (int i = 0; i < 4; ++i) clients.push_back(raw_connect(*ep));
    ctx.sync_wait([&]() -> task<void> {
        auto first = co_await acc->accept();  // arms the multishot request
        REQUIRE(first);
        (void)co_await ringsock::sleep_for(ctx, 20ms);  // let it pull in the other three
        for (int i = 0; i < 3; ++i) {
            auto s = co_await acc->accept(2s);
            if (!s) FAIL("accept #" << i + 2 << ": " << s.error().message());
        }
    }());
}

TEST_CASE("acceptor: accepted sockets have FD_CLOEXEC", "[acceptor]") {
    io_context ctx;
    auto ep = endpoint::abstract("ringsock-test-cloexec-" + std::to_string(::getpid()));
    REQUIRE(ep);
    auto acc = acceptor::listen(ctx, *ep);
    REQUIRE(acc);
    CHECK((::fcntl(acc->native_handle(), F_GETFD) & FD_CLOEXEC) != 0);
    auto c1 = raw_connect(*ep);
    auto c2 = raw_connect(*ep);
    ctx.sync_wait([&]() -> task<void> {
        // Single-shot (time-limited) accept first: once the multishot request is armed
        // it takes every new connection.
        auto once = co_await acc->accept(5s);
        REQUIRE_OK(once);
        CHECK((::fcntl(once->native_handle(), F_GETFD) & FD_CLOEXEC) != 0);
        auto multishot = co_await acc->accept();
        REQUIRE_OK(multishot);
        CHECK((::fcntl(multishot->native_handle(), F_GETFD) & FD_CLOEXEC) != 0);
        auto connected = co_await stream_socket::connect(ctx, *ep);
        REQUIRE(connected);
        CHECK((::fcntl(connected->native_handle(), F_GETFD) & FD_CLOEXEC) != 0);
        auto third = co_await acc->accept();
        REQUIRE(third);
    }());
}

TEST_CASE("acceptor: destroying an acceptor with queued, unaccepted connections leaks no descriptor",
          "[acceptor]") {
    const std::size_t baseline = ringsock::test::open_fd_count();
    std::vector<unique_fd> clients;
    {
        io_context ctx;
        auto ep = endpoint::abstract("ringsock-test-queued-" + std::to_string(::getpid()));
        REQUIRE(ep);
        auto acc = acceptor::listen(ctx, *ep);
        REQUIRE(acc);
        for (int i = 0; i < 20; ++i) clients.push_back(raw_connect(*ep));
        ctx.sync_wait([&]() -> task<void> {
            // One accept arms the multishot request, which pulls the rest into its queue.
            auto s = co_await acc->accept();
            REQUIRE(s);
            (void)co_await ringsock::sleep_for(ctx, 20ms);
        }());
        CHECK(ringsock::test::open_fd_count() > baseline + clients.size());
        // Also some that are still in the kernel backlog when the acceptor goes.
        for (int i = 0; i < 5; ++i) clients.push_back(raw_connect(*ep));
    }
    CHECK(ringsock::test::open_fd_count() == baseline + clients.size());
    // Every client sees its connection end.
    for (auto& c : clients) {
        char b = 0;
        CHECK(::recv(c.get(), &b, 1, MSG_DONTWAIT) <= 0);
    }
    clients.clear();
    CHECK(ringsock::test::open_fd_count() == baseline);
}

TEST_CASE("acceptor: close() resumes a waiting accept with operation_canceled", "[acceptor]") {
    temp_dir dir;
    io_context ctx;
    auto acc = acceptor::listen(ctx, path_ep(dir / "w.sock"));
    REQUIRE(acc);
    ctx.sync_wait([&]() -> task<void> {
        io_result<stream_socket> r;
        bool done = false;
        auto waiter = [&]() -> task<void> {
            r = co_await acc->accept();
            done = true;
        };
        ctx.spawn(waiter());
        (void)co_await ringsock::sleep_for(ctx, 5ms);
        CHECK_FALSE(done);
        acc->close();
        while (!done) (void)co_await ringsock::sleep_for(ctx, 1ms);
        REQUIRE_FALSE(r);
        CHECK(r.error() == std::errc::operation_canceled);
    }());
    CHECK_FALSE(exists(dir / "w.sock"));
}

TEST_CASE("acceptor: accept after close() or on a moved-from acceptor gives EBADF", "[acceptor]") {
    io_context ctx;
    auto ep = endpoint::abstract("ringsock-test-closed-" + std::to_string(::getpid()));
    REQUIRE(ep);
    auto acc = acceptor::listen(ctx, *ep);
    REQUIRE(acc);
    acceptor moved = std::move(*acc);
    acc->close();
    ctx.sync_wait([&]() -> task<void> {
        auto a = co_await acc->accept();
        REQUIRE_FALSE(a);
        CHECK(a.error() == std::errc::bad_file_descriptor);
        auto b = co_await acc->accept(10ms);
        REQUIRE_FALSE(b);
        CHECK(b.error() == std::errc::bad_file_descriptor);
    }());
    moved.close();
    ctx.sync_wait([&]() -> task<void> {
        auto c = co_await moved.accept();
        REQUIRE_FALSE(c);
        CHECK(c.error() == std::errc::bad_file_descriptor);
    }());
}

// The umask narrows the mode bind() creates; widening it afterwards must change our
// socket and nothing else. An attacker who can write the directory may swap the path
// for a symlink between bind() and that step (a root daemon would chmod the target).
TEST_CASE("acceptor: widening the mode after bind changes nothing when the socket file was swapped for a symlink",
          "[acceptor][listener]") {
    temp_dir dir;
    umask_guard um(077);
    const std::string sock = dir / "s.sock";
    const std::string target = dir / "target";
    write_file(target, "secret");
    REQUIRE(::chmod(target.c_str(), 0600) == 0);

    // Our socket, created as bind_socket does: fchmod 0666, then bind under umask 077.
    unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd);
    REQUIRE(::fchmod(fd.get(), 0666) == 0);
    auto ep = path_ep(sock);
    REQUIRE(::bind(fd.get(), ep.data(), ep.size()) == 0);
    auto ours = lstat_of(sock);
    REQUIRE((ours.st_mode & 07777) == 0600);

    SECTION("by a symlink to a regular file") {
        REQUIRE(::rename(sock.c_str(), (dir / "moved.sock").c_str()) == 0);
        REQUIRE(::symlink(target.c_str(), sock.c_str()) == 0);
        auto r = ringsock::detail::set_mode_of_created_node(sock, ours.st_dev, ours.st_ino, 0666);
        REQUIRE_FALSE(r);
        CHECK(r.error() == ringsock::errc::path_not_a_socket);
        CHECK(std::string_view(r.what()).find("replaced") != std::string_view::npos);
        CHECK(mode_of(target) == 0600);
        CHECK(read_file(target) == "secret");
        CHECK(S_ISLNK(lstat_of(sock).st_mode));
        CHECK(mode_of(dir / "moved.sock") == 0600);
    }
    SECTION("by a symlink to our own socket, moved elsewhere") {
        REQUIRE(::rename(sock.c_str(), (dir / "moved.sock").c_str()) == 0);
        REQUIRE(::symlink((dir / "moved.sock").c_str(), sock.c_str()) == 0);
        auto r = ringsock::detail::set_mode_of_created_node(sock, ours.st_dev, ours.st_ino, 0666);
        CHECK_FALSE(r);
        CHECK(mode_of(dir / "moved.sock") == 0600);
    }
    SECTION("by another socket") {
        REQUIRE(::unlink(sock.c_str()) == 0);
        make_stale_socket(ep);
        auto other = lstat_of(sock);
        REQUIRE(other.st_ino != ours.st_ino);
        auto r = ringsock::detail::set_mode_of_created_node(sock, ours.st_dev, ours.st_ino, 0666);
        REQUIRE_FALSE(r);
        CHECK(r.error() == std::errc::file_exists);
        CHECK(mode_of(sock) == (other.st_mode & 07777));
    }
    SECTION("not swapped: the mode is widened") {
        auto r = ringsock::detail::set_mode_of_created_node(sock, ours.st_dev, ours.st_ino, 0666);
        REQUIRE_OK(r);
        CHECK(mode_of(sock) == 0666);
    }
}

TEST_CASE("acceptor: under umask 077 listen_options.mode 0666 still gives mode 0666", "[acceptor][listener]") {
    temp_dir dir;
    io_context ctx;
    umask_guard um(077);
    listen_options opts;
    opts.mode = 0666;
    auto ep = path_ep(dir / "wide.sock");
    auto acc = acceptor::listen(ctx, ep, opts);
    REQUIRE(acc);
    CHECK(mode_of(dir / "wide.sock") == 0666);
    CHECK(S_ISSOCK(lstat_of(dir / "wide.sock").st_mode));
    ctx.sync_wait(check_round_trip(ctx, *acc, ep));
}

namespace {

/// A forked child for the restart tests. The test kills and reaps it itself (so the
/// next server starts with no pause); if the test ends first, it is killed and reaped.
class forked {
public:
    template <class F>
    explicit forked(F&& fn) {
        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            int rc = 100;
            try {
                rc = fn();
            } catch (...) {
                rc = 101;
            }
            ::_exit(rc);
        }
    }
    forked(const forked&) = delete;
    forked& operator=(const forked&) = delete;
    ~forked() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            reap();
        }
    }
    pid_t pid() const { return pid_; }
    /// SIGKILL, then wait until it is dead: reaped, or (`reap` false) left a zombie.
    void kill_now(bool reap_it) {
        REQUIRE(::kill(pid_, SIGKILL) == 0);
        if (reap_it) {
            reap();
        } else {
            siginfo_t info{};
            REQUIRE(::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOWAIT) == 0);
        }
    }
    void reap() {
        int status = 0;
        while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
        pid_ = -1;
    }

private:
    pid_t pid_ = -1;
};

/// Reads one byte from `fd` within 10 s; '\0' on timeout or end of file.
char read_signal(int fd) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 10000) != 1) return '\0';
    char c = '\0';
    return ::read(fd, &c, 1) == 1 ? c : '\0';
}

/// Child: a ringsock server on `ep` that serves one client (so its ring holds the
/// listening socket, the connection and a pending accept), telling the parent "L"
/// (listening) and "S" (served) through `notify`, then waits to be killed.
int serve_once_then_wait(const endpoint& ep, int notify) {
    io_context ctx;
    auto acc = acceptor::listen(ctx, ep);
    if (!acc) return 10;
    if (::write(notify, "L", 1) != 1) return 11;
    ctx.sync_wait([&]() -> task<void> {
        auto s = co_await acc->accept();
        if (!s) co_return;
        std::string buf(4, '\0');
        auto r = co_await s->read_exact(buf);
        if (!r) co_return;
        auto w = co_await s->write_all(ringsock::as_bytes(std::string_view("pong")));
        if (!w) co_return;
        if (::write(notify, "S", 1) != 1) co_return;
        auto next = co_await acc->accept();  // never completes: killed while waiting
        (void)next;
    }());
    return 12;
}

/// Child: a ringsock server on `ep` that answers "ping" with "pong" on every
/// connection, one at a time, and skips connections that end at once (probes).
int serve_forever(const endpoint& ep, int notify) {
    io_context ctx;
    auto acc = acceptor::listen(ctx, ep);
    if (!acc) return 10;
    if (::write(notify, "L", 1) != 1) return 11;
    ctx.sync_wait([&]() -> task<void> {
        for (;;) {
            auto s = co_await acc->accept();
            if (!s) co_return;
            std::string buf(4, '\0');
            auto r = co_await s->read_exact(buf);
            if (r) (void)co_await s->write_all(ringsock::as_bytes(std::string_view("pong")));
        }
    }());
    return 12;
}

}  // namespace

// io_uring tears a killed process's ring down in a kernel worker: for a moment the dead
// server's listening socket still accepts connect(). A supervisor restarting it at once
// must not take that for a live server.
TEST_CASE("acceptor: a server restarted right after SIGKILL replaces the dead server's socket file",
          "[acceptor][listener]") {
    const bool reaped = GENERATE(true, false);
    CAPTURE(reaped);  // false: the dead server is still a zombie when the new one starts
    temp_dir dir;
    auto ep = path_ep(dir / "restart.sock");
    int refused = 0;
    std::string first_error;
    for (int i = 0; i < 20; ++i) {
        int p[2];
        REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
        unique_fd rd(p[0]), wr(p[1]);
        forked server([&] { return serve_once_then_wait(ep, wr.get()); });
        wr.reset();
        REQUIRE(read_signal(rd.get()) == 'L');
        auto client = raw_connect(ep);
        REQUIRE(::send(client.get(), "ping", 4, MSG_NOSIGNAL) == 4);
        char buf[4];
        REQUIRE(::recv(client.get(), buf, 4, MSG_WAITALL) == 4);
        REQUIRE(std::string_view(buf, 4) == "pong");
        REQUIRE(read_signal(rd.get()) == 'S');

        server.kill_now(reaped);
        io_context ctx;
        auto again = acceptor::listen(ctx, ep);  // no pause
        if (!again) {
            ++refused;
            if (first_error.empty()) first_error = std::string(again.what()) + ": " + again.error().message();
            // Let the old ring go, so the next round starts clean.
            for (int t = 0; t < 200 && exists(dir / "restart.sock"); ++t) {
                auto later = acceptor::listen(ctx, ep);
                if (later) break;
                std::this_thread::sleep_for(5ms);
            }
            continue;
        }
        CHECK(S_ISSOCK(lstat_of(dir / "restart.sock").st_mode));
        ctx.sync_wait(check_round_trip(ctx, *again, ep));
    }
    INFO("first refusal: " << first_error);
    CHECK(refused == 0);
}

TEST_CASE("acceptor: a live server in another process still gives EADDRINUSE", "[acceptor][listener]") {
    temp_dir dir;
    auto ep = path_ep(dir / "other.sock");
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    unique_fd rd(p[0]), wr(p[1]);
    forked server([&] { return serve_forever(ep, wr.get()); });
    wr.reset();
    REQUIRE(read_signal(rd.get()) == 'L');
    auto ino = lstat_of(dir / "other.sock").st_ino;

    io_context ctx;
    auto second = acceptor::listen(ctx, ep);
    REQUIRE_FALSE(second);
    CHECK(second.error() == std::errc::address_in_use);
    CHECK(lstat_of(dir / "other.sock").st_ino == ino);
    // Undisturbed: still serving.
    auto client = raw_connect(ep);
    REQUIRE(::send(client.get(), "ping", 4, MSG_NOSIGNAL) == 4);
    char buf[4];
    REQUIRE(::recv(client.get(), buf, 4, MSG_WAITALL) == 4);
    CHECK(std::string_view(buf, 4) == "pong");
}

// The creator of a listening socket (whose pid SO_PEERCRED names) may exit while another
// process keeps the socket: a daemon that forks and lets its parent exit. That server
// is live; its path must never be taken over, even if it drops every connection at once.
TEST_CASE("acceptor: a live listener whose creating process has exited still gives EADDRINUSE",
          "[acceptor][listener]") {
    const bool drops_connections = GENERATE(false, true);
    CAPTURE(drops_connections);
    temp_dir dir;
    auto ep = path_ep(dir / "daemon.sock");
    // The holder ends when our end of `lifeline` closes, however this test ends.
    int p[2], l[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    unique_fd rd(p[0]), wr(p[1]);
    REQUIRE(::pipe2(l, O_CLOEXEC) == 0);
    unique_fd lifeline_rd(l[0]), lifeline(l[1]);
    struct subreaper {  // the orphaned holder becomes our child, so we can reap it
        subreaper() { REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0); }
        ~subreaper() { ::prctl(PR_SET_CHILD_SUBREAPER, 0); }
    } reaper;
    // The creator binds and listens, forks the holder (which reports its pid) and exits.
    forked creator([&]() -> int {
        int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || ::bind(fd, ep.data(), ep.size()) < 0 || ::listen(fd, 16) < 0) return 10;
        pid_t holder = ::fork();
        if (holder < 0) return 11;
        if (holder == 0) {
            lifeline.reset();
            pid_t self = ::getpid();
            if (::write(wr.get(), &self, sizeof self) != sizeof self) ::_exit(1);
            pollfd w[2] = {{lifeline_rd.get(), POLLIN, 0}, {fd, POLLIN, 0}};
            for (;;) {
                if (::poll(w, drops_connections ? 2 : 1, -1) < 0 && errno != EINTR) ::_exit(2);
                if (w[0].revents != 0) ::_exit(0);  // the test is over
                if (drops_connections && (w[1].revents & POLLIN)) {
                    int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
                    if (c >= 0) ::close(c);
                }
            }
        }
        return 0;
    });
    wr.reset();
    lifeline_rd.reset();
    pid_t holder = -1;
    pollfd pf{rd.get(), POLLIN, 0};
    REQUIRE(::poll(&pf, 1, 10000) == 1);
    REQUIRE(::read(rd.get(), &holder, sizeof holder) == sizeof holder);
    creator.reap();  // the creator is gone; the holder keeps the listener
    struct holder_killer {
        pid_t pid;
        ~holder_killer() {
            ::kill(pid, SIGKILL);
            int status = 0;
            ::waitpid(pid, &status, 0);
        }
    } killer{holder};
    auto ino = lstat_of(dir / "daemon.sock").st_ino;

    io_context ctx;
    auto second = acceptor::listen(ctx, ep);
    REQUIRE_FALSE(second);
    CHECK(second.error() == std::errc::address_in_use);
    CHECK(lstat_of(dir / "daemon.sock").st_ino == ino);
    CHECK(::kill(holder, 0) == 0);
}

TEST_CASE("acceptor: listen() makes the listener non-blocking, and a waiting connection is taken without a request",
          "[acceptor][speculation]") {
    io_context ctx;
    auto ep = endpoint::abstract("ringsock-test-direct-" + std::to_string(::getpid()));
    REQUIRE(ep);
    auto acc = acceptor::listen(ctx, *ep);
    REQUIRE(acc);
    CHECK((::fcntl(acc->native_handle(), F_GETFL) & O_NONBLOCK) != 0);
    unique_fd client = raw_connect(*ep);
    ctx.poll();  // the context's own first requests (its wake-up read) go out here
    const unsigned before = *ctx.native_handle()->sq.khead;
    auto s = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(); }());
    REQUIRE(s);
    CHECK(*ctx.native_handle()->sq.khead == before);  // accept4 took it: no SQE at all
    REQUIRE(::write(client.get(), "x", 1) == 1);
    char c = 0;
    CHECK(::read(s->native_handle(), &c, 1) == 1);
    CHECK(c == 'x');
}

TEST_CASE("acceptor: an adopted blocking listener is left blocking and accept() never blocks the loop on it",
          "[acceptor][speculation]") {
    io_context ctx;
    auto ep = endpoint::abstract("ringsock-test-adopt-blocking-" + std::to_string(::getpid()));
    REQUIRE(ep);
    unique_fd raw(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(raw);
    REQUIRE(::bind(raw.get(), ep->data(), ep->size()) == 0);
    REQUIRE(::listen(raw.get(), 8) == 0);
    auto acc = acceptor::adopt(ctx, std::move(raw));
    bool accepted = false;
    auto accept_one = [&]() -> task<void> {
        auto s = co_await acc.accept(5s);
        CHECK(s);
        accepted = true;
    };
    // A blocking accept4 here would hang the loop for good: the accept must wait on the ring.
    ctx.spawn(accept_one());
    for (int i = 0; i < 5; ++i) ctx.poll();
    CHECK(!accepted);
    unique_fd client = raw_connect(*ep);
    while (!accepted) ctx.run_one();
    CHECK((::fcntl(acc.native_handle(), F_GETFL) & O_NONBLOCK) == 0);  // never changed
}

TEST_CASE("acceptor: accepts that find a connection waiting and accepts that wait for one hand out every client once, in order",
          "[acceptor][speculation]") {
    io_context ctx;
    auto ep = endpoint::abstract("ringsock-test-mixed-" + std::to_string(::getpid()));
    REQUIRE(ep);
    auto acc = acceptor::listen(ctx, *ep);
    REQUIRE(acc);
    constexpr std::uint32_t n = 300;
    std::vector<unique_fd> clients;
    std::vector<std::uint32_t> order;
    auto connect_next = [&] {
        const auto id = static_cast<std::uint32_t>(clients.size());
        clients.push_back(raw_connect(*ep));
        REQUIRE(::write(clients.back().get(), &id, sizeof id) == sizeof id);
    };
    auto connect_later = [&](int k) -> task<void> {
        (void)co_await ringsock::sleep_for(ctx, 200us);
        for (int i = 0; i < k; ++i) connect_next();
    };
    auto take = [&](stream_socket s) -> task<void> {
        std::uint32_t id = 0;
        auto r = co_await s.read_exact(std::span(reinterpret_cast<std::byte*>(&id), sizeof id));
        REQUIRE(r);
        order.push_back(id);
    };
    auto accept_one = [&]() -> task<void> {
        auto s = co_await acc->accept(5s);
        REQUIRE(s);
        co_await take(std::move(*s));
    };
    // Patterns rotate: connections made before the accept (accept4 hits), after it
    // (the multishot request is armed, or re-armed after a hit cancelled it), and in
    // bursts that queue up behind an armed request.
    ctx.sync_wait([&]() -> task<void> {
        std::uint32_t accepted = 0;
        for (int round = 0; accepted < n; ++round) {
            switch (round % 3) {
                case 0:
                    connect_next();
                    co_await accept_one();
                    ++accepted;
                    break;
                case 1: {
                    auto [a, b] = co_await ringsock::when_all(accept_one(), connect_later(1));
                    (void)a;
                    (void)b;
                    ++accepted;
                    break;
                }
                default: {
                    const int burst = static_cast<int>(std::min<std::uint32_t>(5, n - accepted));
                    co_await connect_later(burst);
                    for (int i = 0; i < burst; ++i) co_await accept_one();
                    accepted += static_cast<std::uint32_t>(burst);
                    break;
                }
            }
        }
    }());
    REQUIRE(order.size() == n);
    for (std::uint32_t i = 0; i < n; ++i) CHECK(order[i] == i);
}
