// Socket activation and readiness notification: descriptors placed at fd 3... with the
// LISTEN_* variables set by the test itself, NOTIFY_SOCKET pointing at a datagram
// socket the test owns, and (when installed) systemd-socket-activate running echo_server.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <ringsock/acceptor.hpp>
#include <ringsock/io_context.hpp>
#include <ringsock/socket_activation.hpp>
#include <ringsock/stream_socket.hpp>

#include "support/process.hpp"

using namespace std::chrono_literals;
using ringsock::unique_fd;

namespace {

// Occupies fds 3 .. 3+count-1 for one test: whatever was there is saved and put back
// afterwards; meanwhile each slot holds a /dev/null placeholder until place() puts a
// test socket there. Declare it first in a test, so it is destroyed last.
class fd_slots {
public:
    explicit fd_slots(int count) : saved_(static_cast<std::size_t>(count), -1) {
        for (int i = 0; i < count; ++i) {
            if (::fcntl(slot(i), F_GETFD) >= 0) saved_[idx(i)] = ::fcntl(slot(i), F_DUPFD_CLOEXEC, 100);
        }
        int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        int high = ::fcntl(null, F_DUPFD_CLOEXEC, 100);
        ::close(null);
        for (int i = 0; i < count; ++i) ::dup2(high, slot(i));
        ::close(high);
    }
    ~fd_slots() {
        for (int i = 0; i < static_cast<int>(saved_.size()); ++i) {
            if (saved_[idx(i)] >= 0) {
                ::dup2(saved_[idx(i)], slot(i));
                ::close(saved_[idx(i)]);
            } else {
                ::close(slot(i));
            }
        }
    }
    fd_slots(const fd_slots&) = delete;
    fd_slots& operator=(const fd_slots&) = delete;

    /// Puts a copy of `fd` at slot i (without FD_CLOEXEC, as a service manager does).
    void place(int i, int fd) { REQUIRE(::dup2(fd, slot(i)) == slot(i)); }
    /// Leaves slot i empty.
    void empty(int i) { ::close(slot(i)); }
    static int slot(int i) { return ringsock::listen_fds_start + i; }

private:
    static std::size_t idx(int i) { return static_cast<std::size_t>(i); }
    std::vector<int> saved_;
};

// Sets environment variables for one test and restores the previous values.
class env_guard {
public:
    env_guard() {
        for (const char* n : names) {
            const char* v = std::getenv(n);
            old_.push_back(v ? std::optional<std::string>(v) : std::nullopt);
            ::unsetenv(n);
        }
    }
    ~env_guard() {
        for (std::size_t i = 0; i < old_.size(); ++i) {
            if (old_[i]) ::setenv(names[i], old_[i]->c_str(), 1);
            else ::unsetenv(names[i]);
        }
    }
    env_guard(const env_guard&) = delete;
    env_guard& operator=(const env_guard&) = delete;
    void set(const char* name, const std::string& value) { ::setenv(name, value.c_str(), 1); }
    void for_us(int n, const char* fdnames = nullptr) {
        set("LISTEN_PID", std::to_string(::getpid()));
        set("LISTEN_FDS", std::to_string(n));
        if (fdnames) set("LISTEN_FDNAMES", fdnames);
    }
    static constexpr std::array<const char*, 4> names{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET"};

private:
    std::vector<std::optional<std::string>> old_;
};

std::string unique_name(const char* what) {
    static int counter = 0;
    return "ringsock-test-sa-" + std::to_string(::getpid()) + "-" + what + "-" + std::to_string(++counter);
}

// NOTIFY_SOCKET's spelling of an abstract name. Appended rather than written
// "@" + unique_name(...): for operator+(const char*, std::string&&) g++ 12 at -O3
// reports a false -Wrestrict (a memcpy of 2^63 bytes) inside libstdc++'s insert.
std::string notify_abstract(const std::string& name) {
    std::string value = "@";
    value += name;
    return value;
}

unique_fd unix_socket(int type, const ringsock::endpoint& ep, bool do_listen) {
    unique_fd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    REQUIRE(fd);
    REQUIRE(::bind(fd.get(), ep.data(), ep.size()) == 0);
    if (do_listen) REQUIRE(::listen(fd.get(), 16) == 0);
    return fd;
}

unique_fd abstract_socket(int type, bool do_listen) {
    return unix_socket(type, ringsock::endpoint::abstract(unique_name("l")).value(), do_listen);
}

bool has_cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }
bool is_open(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }
bool env_clear() {
    return !std::getenv("LISTEN_PID") && !std::getenv("LISTEN_FDS") && !std::getenv("LISTEN_FDNAMES");
}

}  // namespace

TEST_CASE("socket_activation: takes a listening socket passed at fd 3 and clears the variables", "[socket_activation]") {
    fd_slots slots(1);
    env_guard env;
    {
        auto l = abstract_socket(SOCK_STREAM, true);
        slots.place(0, l.get());
    }
    env.for_us(1);
    REQUIRE_FALSE(has_cloexec(3));

    auto got = ringsock::take_activated_sockets();
    REQUIRE(got);
    REQUIRE(got->size() == 1);
    auto& s = got->front();
    CHECK(s.fd.get() == 3);
    CHECK(s.name == "unknown");
    CHECK(s.family == AF_UNIX);
    CHECK(s.type == SOCK_STREAM);
    CHECK(s.listening);
    CHECK(has_cloexec(3));
    CHECK(env_clear());
}

TEST_CASE("socket_activation: an adopted activated socket accepts and its file is never removed", "[socket_activation]") {
    fd_slots slots(1);
    env_guard env;
    ringsock::test::temp_dir dir;
    std::string path = dir.file("activated.sock");
    auto ep = ringsock::endpoint::path(path).value();
    {
        auto l = unix_socket(SOCK_STREAM, ep, true);
        slots.place(0, l.get());
    }
    env.for_us(1, "api");
    auto got = ringsock::take_activated_sockets();
    REQUIRE(got);
    REQUIRE(got->size() == 1);
    CHECK((*got)[0].name == "api");
    {
        ringsock::io_context ctx;
        auto acc = ringsock::acceptor::adopt(ctx, std::move((*got)[0].fd));
        auto run = [&]() -> ringsock::task<std::size_t> {
            auto client = co_await ringsock::stream_socket::connect(ctx, ep, 5s);
            auto server = co_await acc.accept(5s);
            if (!client || !server) co_return 0;
            (void)co_await client->write_all(std::string_view("hi"));
            std::array<char, 2> buf{};
            auto n = co_await server->read_exact(buf, 5s);
            co_return n ? *n : 0;
        };
        CHECK(ctx.sync_wait(run()) == 2);
        acc.close();
    }
    struct stat st {};
    CHECK(::lstat(path.c_str(), &st) == 0);  // the service manager's file stays
}

TEST_CASE("socket_activation: variables for another process are ignored and cleared", "[socket_activation]") {
    fd_slots slots(1);
    env_guard env;
    {
        auto l = abstract_socket(SOCK_STREAM, true);
        slots.place(0, l.get());
    }
    env.set("LISTEN_PID", std::to_string(::getpid() + 1));
    env.set("LISTEN_FDS", "1");
    auto got = ringsock::take_activated_sockets();
    REQUIRE(got);
    CHECK(got->empty());
    CHECK(is_open(3));
    CHECK_FALSE(has_cloexec(3));  // not ours: untouched
    CHECK(env_clear());
}

TEST_CASE("socket_activation: without LISTEN_PID there are no sockets", "[socket_activation]") {
    env_guard env;
    auto got = ringsock::take_activated_sockets();
    REQUIRE(got);
    CHECK(got->empty());
}

TEST_CASE("socket_activation: LISTEN_FDNAMES names stream, seqpacket and datagram sockets in order", "[socket_activation]") {
    fd_slots slots(3);
    env_guard env;
    {
        auto a = abstract_socket(SOCK_STREAM, true);
        auto b = abstract_socket(SOCK_SEQPACKET, true);
        auto c = abstract_socket(SOCK_DGRAM, false);
        slots.place(0, a.get());
        slots.place(1, b.get());
        slots.place(2, c.get());
    }
    env.for_us(3, "api:admin:events");
    auto got = ringsock::take_activated_sockets();
    REQUIRE(got);
    REQUIRE(got->size() == 3);
    CHECK((*got)[0].name == "api");
    CHECK((*got)[1].name == "admin");
    CHECK((*got)[2].name == "events");
    CHECK((*got)[0].type == SOCK_STREAM);
    CHECK((*got)[1].type == SOCK_SEQPACKET);
    CHECK((*got)[2].type == SOCK_DGRAM);
    CHECK((*got)[1].listening);
    CHECK_FALSE((*got)[2].listening);
    for (int i = 0; i < 3; ++i) {
        CHECK((*got)[static_cast<std::size_t>(i)].fd.get() == 3 + i);
        CHECK(has_cloexec(3 + i));
    }
}

TEST_CASE("socket_activation: a name count that differs from LISTEN_FDS is an error", "[socket_activation]") {
    fd_slots slots(2);
    env_guard env;
    {
        auto a = abstract_socket(SOCK_STREAM, true);
        slots.place(0, a.get());
        slots.place(1, a.get());
    }
    env.for_us(2, "only-one");
    auto got = ringsock::take_activated_sockets();
    REQUIRE_FALSE(got);
    CHECK(got.error() == std::errc::invalid_argument);
    CHECK(is_open(3));
    CHECK(is_open(4));
    CHECK(env_clear());
}

TEST_CASE("socket_activation: a socket that is not AF_UNIX is rejected and left open", "[socket_activation]") {
    fd_slots slots(1);
    env_guard env;
    {
        unique_fd inet(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(inet);
        slots.place(0, inet.get());
    }
    env.for_us(1);
    auto got = ringsock::take_activated_sockets();
    REQUIRE_FALSE(got);
    CHECK(got.error() == std::errc::address_family_not_supported);
    CHECK(is_open(3));
    CHECK_FALSE(has_cloexec(3));
}

TEST_CASE("socket_activation: a stream socket that is not listening is rejected unless connected ones are allowed", "[socket_activation]") {
    fd_slots slots(1);
    env_guard env;
    {
        auto bound = abstract_socket(SOCK_STREAM, false);
        slots.place(0, bound.get());
    }
    env.for_us(1);
    auto got = ringsock::take_activated_sockets();
    REQUIRE_FALSE(got);
    CHECK(got.error() == std::errc::invalid_argument);
    CHECK(is_open(3));

    env.for_us(1);
    ringsock::activation_options opts;
    opts.allow_connected = true;
    auto again = ringsock::take_activated_sockets(opts);
    REQUIRE(again);
    REQUIRE(again->size() == 1);
    CHECK_FALSE((*again)[0].listening);
}

TEST_CASE("socket_activation: a descriptor that is not a socket, or not open, is rejected", "[socket_activation]") {
    fd_slots slots(2);
    env_guard env;
    {
        int p[2];
        REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
        slots.place(0, p[0]);
        ::close(p[0]);
        ::close(p[1]);
    }
    env.for_us(1);
    auto got = ringsock::take_activated_sockets();
    REQUIRE_FALSE(got);
    CHECK(got.error() == std::errc::not_a_socket);

    {
        auto a = abstract_socket(SOCK_STREAM, true);
        slots.place(0, a.get());
    }
    slots.empty(1);
    env.for_us(2);
    auto missing = ringsock::take_activated_sockets();
    REQUIRE_FALSE(missing);
    CHECK(missing.error() == std::errc::bad_file_descriptor);
    CHECK(is_open(3));
}

TEST_CASE("socket_activation: malformed LISTEN_PID or LISTEN_FDS is an error", "[socket_activation]") {
    env_guard env;
    for (const char* pid : {"", "12x", "-5", " 7", "+7", "99999999999999999999"}) {
        env.set("LISTEN_PID", pid);
        env.set("LISTEN_FDS", "1");
        auto got = ringsock::take_activated_sockets();
        INFO("LISTEN_PID=" << pid);
        REQUIRE_FALSE(got);
        CHECK(got.error() == std::errc::invalid_argument);
    }
    for (const char* fds : {"", "-1", "+1", "1 ", "x", "3000000000"}) {
        env.set("LISTEN_PID", std::to_string(::getpid()));
        env.set("LISTEN_FDS", fds);
        auto got = ringsock::take_activated_sockets();
        INFO("LISTEN_FDS=" << fds);
        REQUIRE_FALSE(got);
        CHECK(got.error() == std::errc::invalid_argument);
        CHECK(env_clear());
    }
}

TEST_CASE("socket_activation: unset_environment = false keeps the variables", "[socket_activation]") {
    fd_slots slots(1);
    env_guard env;
    {
        auto a = abstract_socket(SOCK_STREAM, true);
        slots.place(0, a.get());
    }
    env.for_us(1, "kept");
    ringsock::activation_options opts;
    opts.unset_environment = false;
    auto got = ringsock::take_activated_sockets(opts);
    REQUIRE(got);
    CHECK(got->size() == 1);
    CHECK(std::getenv("LISTEN_FDS") != nullptr);
    CHECK(std::string(std::getenv("LISTEN_FDNAMES")) == "kept");
}

namespace {

// Receives one datagram (at most 5 s), as a service manager would.
std::string receive_notification(int fd) {
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::array<char, 512> buf{};
    ssize_t n;
    do n = ::recv(fd, buf.data(), buf.size(), 0);
    while (n < 0 && errno == EINTR);
    return n > 0 ? std::string(buf.data(), static_cast<std::size_t>(n)) : std::string();
}

}  // namespace

TEST_CASE("socket_activation: notify_ready sends READY=1 to a NOTIFY_SOCKET path", "[socket_activation]") {
    env_guard env;
    ringsock::test::temp_dir dir;
    std::string path = dir.file("notify");
    auto manager = unix_socket(SOCK_DGRAM, ringsock::endpoint::path(path).value(), false);
    env.set("NOTIFY_SOCKET", path);
    auto sent = ringsock::notify_ready();
    REQUIRE(sent);
    CHECK(*sent);
    CHECK(receive_notification(manager.get()) == "READY=1");
    CHECK(std::getenv("NOTIFY_SOCKET") != nullptr);  // later notifications still work
}

TEST_CASE("socket_activation: co_await notify_ready sends READY=1 through a ringsock datagram socket", "[socket_activation]") {
    env_guard env;
    ringsock::test::temp_dir dir;
    std::string path = dir.file("notify");
    auto manager = unix_socket(SOCK_DGRAM, ringsock::endpoint::path(path).value(), false);
    env.set("NOTIFY_SOCKET", path);
    ringsock::io_context ctx;
    auto sent = ctx.sync_wait(ringsock::notify_ready(ctx, 5s));
    REQUIRE(sent);
    CHECK(*sent);
    CHECK(receive_notification(manager.get()) == "READY=1");

    std::string name = unique_name("notify-async");
    auto abstract_manager = unix_socket(SOCK_DGRAM, ringsock::endpoint::abstract(name).value(), false);
    env.set("NOTIFY_SOCKET", notify_abstract(name));
    auto status = ctx.sync_wait(ringsock::notify(ctx, "STATUS=up\nREADY=1"));
    REQUIRE(status);
    CHECK(receive_notification(abstract_manager.get()) == "STATUS=up\nREADY=1");

    ::unsetenv("NOTIFY_SOCKET");
    auto none = ctx.sync_wait(ringsock::notify_ready(ctx));
    REQUIRE(none);
    CHECK_FALSE(*none);
    env.set("NOTIFY_SOCKET", notify_abstract(unique_name("nobody")));
    auto refused = ctx.sync_wait(ringsock::notify_ready(ctx, 5s));
    REQUIRE_FALSE(refused);
    CHECK(refused.error() == std::errc::connection_refused);
}

TEST_CASE("socket_activation: notify reaches an abstract NOTIFY_SOCKET written with @", "[socket_activation]") {
    env_guard env;
    std::string name = unique_name("notify");
    auto manager = unix_socket(SOCK_DGRAM, ringsock::endpoint::abstract(name).value(), false);
    env.set("NOTIFY_SOCKET", notify_abstract(name));
    auto sent = ringsock::notify("STATUS=serving\nREADY=1");
    REQUIRE(sent);
    CHECK(*sent);
    CHECK(receive_notification(manager.get()) == "STATUS=serving\nREADY=1");
}

TEST_CASE("socket_activation: notify without NOTIFY_SOCKET does nothing; other forms are errors", "[socket_activation]") {
    env_guard env;
    auto none = ringsock::notify_ready();
    REQUIRE(none);
    CHECK_FALSE(*none);

    env.set("NOTIFY_SOCKET", "vsock:2:1234");
    auto vsock = ringsock::notify_ready();
    REQUIRE_FALSE(vsock);
    CHECK(vsock.error() == std::errc::address_family_not_supported);

    env.set("NOTIFY_SOCKET", notify_abstract(unique_name("nobody")));
    auto refused = ringsock::notify_ready();
    REQUIRE_FALSE(refused);
    CHECK(refused.error() == std::errc::connection_refused);
}

TEST_CASE("socket_activation: echo_server serves a socket from systemd-socket-activate and leaves its file", "[socket_activation][process]") {
    std::string activate = ringsock::test::find_program("systemd-socket-activate");
    std::string server = ringsock::test::example_path("echo_server");
    if (activate.empty() || server.empty()) {
        WARN("systemd-socket-activate or examples/echo_server missing: not run");
        return;
    }
    ringsock::test::temp_dir dir;
    std::string path = dir.file("echo.sock");
    ringsock::test::child_guard child{ringsock::test::spawn({activate, "-l", path, server})};
    unique_fd c(ringsock::test::connect_when_listening(path, 10s));
    REQUIRE(c);
    timeval tv{10, 0};
    ::setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t sent;
    do sent = ::send(c.get(), "hello", 5, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    REQUIRE(sent == 5);
    std::array<char, 5> buf{};
    std::size_t got = 0;
    ssize_t n = 0;
    while (got < buf.size()) {
        n = ::recv(c.get(), buf.data() + got, buf.size() - got, 0);
        if (n < 0 && errno == EINTR) continue;  // a freeze/SIGCONT with SO_RCVTIMEO set
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
    }
    INFO("last recv " << n << (n < 0 ? std::string(" ") + std::strerror(errno) : std::string()));
    CHECK(std::string(buf.data(), got) == "hello");
    c.reset();

    ::kill(child.pid, SIGTERM);
    auto st = child.wait(15s);
    REQUIRE(st);
    INFO("wait status " << *st << (WIFSIGNALED(*st) ? " (killed by signal " + std::to_string(WTERMSIG(*st)) + ")" : ""));
    CHECK(WIFEXITED(*st));
    CHECK(WEXITSTATUS(*st) == 0);
    struct stat sb {};
    CHECK(::lstat(path.c_str(), &sb) == 0);  // activated: the file belongs to the manager
}
