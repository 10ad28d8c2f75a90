// Integration tests for acceptor over real socket files: the mode a socket file is
// created with, stale-file replacement, refusing a live server's path or anything that
// is not a socket, removing only our own node on close, relative and abstract names,
// cancelled and timed-out accepts, backlogs accepted late, and descriptor hygiene.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
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
    clients.push_back(raw_connect(*ep));
    auto first = ctx.sync_wait([&]() -> task<io_result<stream_socket>> { co_return co_await acc->accept(); }());
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
