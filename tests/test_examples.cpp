// Runs the built examples as real processes and talks to them with plain blocking
// sockets: examples/echo_server must echo, honour half-close, serve many clients, shrug
// off misbehaving ones, shut down cleanly on SIGTERM/SIGINT, survive SIGHUP, and refuse
// paths it must not take. The binary comes from $RINGSOCK_BUILD_ROOT/examples (set by
// tests/meson.build); without it the program exits 77 (skipped).
#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

extern char** environ;

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

std::string example_path(const char* name) {
    const char* root = std::getenv("RINGSOCK_BUILD_ROOT");
    return root ? std::string(root) + "/examples/" + name : std::string();
}

// Skip the whole program (exit 77) when the example binary is not there.
[[maybe_unused]] const bool binary_present = [] {
    std::string p = example_path("echo_server");
    if (p.empty() || ::access(p.c_str(), X_OK) != 0) {
        std::fprintf(stderr, "test_examples: %s not found (RINGSOCK_BUILD_ROOT unset or example not built); "
                             "skipping\n", p.empty() ? "$RINGSOCK_BUILD_ROOT/examples/echo_server" : p.c_str());
        std::fflush(stderr);
        ::_exit(77);
    }
    return true;
}();

// ---------------------------------------------------------------------------------
// Small RAII helpers.

class fd_guard {
public:
    fd_guard() = default;
    explicit fd_guard(int fd) : fd_(fd) {}
    fd_guard(fd_guard&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    fd_guard& operator=(fd_guard&& o) noexcept {
        reset(std::exchange(o.fd_, -1));
        return *this;
    }
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() { reset(); }
    int get() const { return fd_; }
    explicit operator bool() const { return fd_ >= 0; }
    void reset(int fd = -1) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

class temp_dir {
public:
    temp_dir() {
        std::string tmpl = "/tmp/ringsock-examples-XXXXXX";
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

bool exists(const std::string& p) {
    struct stat st {};
    return ::lstat(p.c_str(), &st) == 0;
}

/// A child process with its stderr captured. The destructor kills (SIGKILL) and reaps it
/// if it is still running, so a failing test never leaves a server behind.
class child_process {
public:
    static child_process spawn(const std::vector<std::string>& args) {
        int err[2];
        REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
        child_process c;
        c.err_.reset(err[0]);
        fd_guard write_end(err[1]);
        REQUIRE(::fcntl(c.err_.get(), F_SETFL, O_NONBLOCK) == 0);

        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, write_end.get(), 2);
        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        // Whatever this process blocks or ignores, the server starts clean.
        sigset_t none, defaults;
        sigemptyset(&none);
        sigemptyset(&defaults);
        for (int s : {SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2}) sigaddset(&defaults, s);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setsigdefault(&attr, &defaults);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

        // No socket-activation or readiness variables from whoever runs the tests.
        std::vector<char*> env;
        for (char** e = environ; *e; ++e) {
            std::string_view v(*e);
            if (v.starts_with("LISTEN_") || v.starts_with("NOTIFY_SOCKET=")) continue;
            env.push_back(*e);
        }
        env.push_back(nullptr);
        std::vector<char*> argv;
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);

        int rc = ::posix_spawn(&c.pid_, argv[0], &fa, &attr, argv.data(), env.data());
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
        REQUIRE(rc == 0);
        return c;
    }

    child_process() = default;
    child_process(child_process&& o) noexcept
        : pid_(std::exchange(o.pid_, -1)), status_(o.status_), err_(std::move(o.err_)), log_(std::move(o.log_)) {}
    child_process& operator=(child_process&&) = delete;
    child_process(const child_process&) = delete;
    ~child_process() {
        if (pid_ > 0 && !status_) {
            ::kill(pid_, SIGKILL);
            int st = 0;
            ::waitpid(pid_, &st, 0);
        }
    }

    pid_t pid() const { return pid_; }
    void signal(int sig) const { REQUIRE(::kill(pid_, sig) == 0); }

    /// The wait status once the child has exited within `limit`, else nullopt.
    std::optional<int> wait_exit(std::chrono::milliseconds limit) {
        auto deadline = clock_type::now() + limit;
        while (!status_) {
            int st = 0;
            pid_t r = ::waitpid(pid_, &st, WNOHANG);
            if (r == pid_) {
                status_ = st;
                break;
            }
            if (clock_type::now() >= deadline) break;
            std::this_thread::sleep_for(5ms);
        }
        drain_stderr();
        return status_;
    }
    bool running() {
        if (status_) return false;
        int st = 0;
        if (::waitpid(pid_, &st, WNOHANG) == pid_) status_ = st;
        return !status_;
    }

    /// Everything the child wrote to stderr so far.
    const std::string& stderr_text() {
        drain_stderr();
        return log_;
    }
    /// Waits until stderr contains `what`; false if the child exits or time runs out.
    bool wait_for_stderr(std::string_view what, std::chrono::milliseconds limit = 10s) {
        auto deadline = clock_type::now() + limit;
        for (;;) {
            drain_stderr();
            if (log_.find(what) != std::string::npos) return true;
            if (!running()) {
                drain_stderr();
                return log_.find(what) != std::string::npos;
            }
            if (clock_type::now() >= deadline) return false;
            pollfd p{err_.get(), POLLIN, 0};
            ::poll(&p, 1, 20);
        }
    }

private:
    void drain_stderr() {
        char buf[4096];
        for (;;) {
            ssize_t n = ::read(err_.get(), buf, sizeof buf);
            if (n <= 0) break;
            log_.append(buf, static_cast<std::size_t>(n));
        }
    }

    pid_t pid_ = -1;
    std::optional<int> status_;
    fd_guard err_;
    std::string log_;
};

/// Starts echo_server on `path` and waits until it says it is listening.
child_process start_echo_server(const std::string& path, std::vector<std::string> extra = {}) {
    std::vector<std::string> args{example_path("echo_server"), path};
    args.insert(args.end(), extra.begin(), extra.end());
    auto c = child_process::spawn(args);
    bool up = c.wait_for_stderr("listening on");
    INFO("echo_server stderr: " << c.stderr_text());
    REQUIRE(up);
    return c;
}

std::size_t count_lines(std::string_view s) { return static_cast<std::size_t>(std::count(s.begin(), s.end(), '\n')); }

std::size_t proc_fd_count(pid_t pid) {
    std::string dir = "/proc/" + std::to_string(pid) + "/fd";
    std::size_t n = 0;
    for (auto it = std::filesystem::directory_iterator(dir); it != std::filesystem::directory_iterator(); ++it) ++n;
    return n;
}

// ---------------------------------------------------------------------------------
// Raw blocking clients.

sockaddr_un address_of(const std::string& path, socklen_t& len) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    REQUIRE(path.size() < sizeof sa.sun_path);
    std::memcpy(sa.sun_path, path.data(), path.size());
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
    return sa;
}

/// A blocking client with 10 s send/receive timeouts, so a broken server fails the test
/// instead of hanging it.
fd_guard connect_client(const std::string& path) {
    fd_guard fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd);
    socklen_t len = 0;
    auto sa = address_of(path, len);
    int rc = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), len);
    INFO("connect(" << path << "): " << std::strerror(errno));
    REQUIRE(rc == 0);
    timeval tv{10, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

std::vector<char> pattern(std::size_t n, std::uint32_t seed) {
    std::vector<char> v(n);
    for (std::size_t i = 0; i < n; ++i) {
        auto x = static_cast<std::uint32_t>(i) * 2654435761u + seed * 40503u;
        v[i] = static_cast<char>((x >> 24) ^ (i >> 16));
    }
    return v;
}

/// Sends `data` and reads the same number of bytes back, interleaving both with poll()
/// so neither side's buffers can deadlock. With `half_close`, shuts down the sending side
/// after the last byte and then also requires end of stream. Returns "" or a reason.
std::string echo_round_trip(int fd, std::span<const char> data, bool half_close = false) {
    std::vector<char> back(data.size());
    std::size_t sent = 0, got = 0;
    bool shut = false, eof = false;
    auto deadline = clock_type::now() + 20s;
    while (got < data.size() || (half_close && !eof)) {
        if (clock_type::now() > deadline) return "timed out after " + std::to_string(got) + " bytes back";
        if (half_close && sent == data.size() && !shut) {
            if (::shutdown(fd, SHUT_WR) < 0) return std::string("shutdown: ") + std::strerror(errno);
            shut = true;
        }
        pollfd p{fd, static_cast<short>(POLLIN | (sent < data.size() ? POLLOUT : 0)), 0};
        if (::poll(&p, 1, 1000) < 0) return std::string("poll: ") + std::strerror(errno);
        if ((p.revents & POLLOUT) && sent < data.size()) {
            ssize_t n = ::send(fd, data.data() + sent, std::min<std::size_t>(data.size() - sent, 65536),
                               MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n < 0 && errno != EAGAIN) return std::string("send: ") + std::strerror(errno);
            if (n > 0) sent += static_cast<std::size_t>(n);
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            char tmp[65536];
            ssize_t n = ::recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
            if (n < 0 && errno != EAGAIN) return std::string("recv: ") + std::strerror(errno);
            if (n == 0) {
                if (got < data.size()) return "end of stream after " + std::to_string(got) + " bytes";
                eof = true;
            }
            if (n > 0) {
                if (got + static_cast<std::size_t>(n) > back.size()) return "more bytes back than sent";
                std::memcpy(back.data() + got, tmp, static_cast<std::size_t>(n));
                got += static_cast<std::size_t>(n);
            }
        }
    }
    if (!std::equal(back.begin(), back.end(), data.begin())) return "echoed bytes differ from those sent";
    return {};
}

#define CHECK_ECHO_IMPL(fd, data, half)                   \
    do {                                                  \
        std::string why_ = echo_round_trip(fd, data, half); \
        INFO(why_);                                       \
        CHECK(why_.empty());                              \
    } while (false)
#define CHECK_ECHO(fd, data) CHECK_ECHO_IMPL(fd, data, false)
#define CHECK_ECHO_HALF_CLOSE(fd, data) CHECK_ECHO_IMPL(fd, data, true)

/// Writes without reading until the socket stays full (the server's echo is blocked on
/// our receive buffer and has stopped reading). Returns the bytes written.
std::size_t stuff_until_blocked(int fd) {
    std::vector<char> chunk(65536, 'z');
    std::size_t total = 0;
    int quiet = 0;
    auto deadline = clock_type::now() + 10s;
    while (quiet < 5 && clock_type::now() < deadline) {
        ssize_t n = ::send(fd, chunk.data(), chunk.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            total += static_cast<std::size_t>(n);
            quiet = 0;
        } else {
            ++quiet;
            std::this_thread::sleep_for(20ms);
        }
    }
    return total;
}

bool exited_with(const std::optional<int>& status, int code) {
    return status && WIFEXITED(*status) && WEXITSTATUS(*status) == code;
}

bool exited_nonzero(const std::optional<int>& status) {
    return status && WIFEXITED(*status) && WEXITSTATUS(*status) != 0;
}

}  // namespace

TEST_CASE("echo_server: echoes 1 MiB through a blocking client", "[examples][echo_server]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    auto server = start_echo_server(path);
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 07777) == 0600);

    auto c = connect_client(path);
    auto data = pattern(1 << 20, 1);
    CHECK_ECHO(c.get(), data);
    // And again on the same connection.
    CHECK_ECHO(c.get(), std::span<const char>(data).first(1000));
}

TEST_CASE("echo_server: a half-closed client gets everything back, then end of stream",
          "[examples][echo_server]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    auto server = start_echo_server(path);
    auto c = connect_client(path);
    auto data = pattern(300'000, 2);
    CHECK_ECHO_HALF_CLOSE(c.get(), data);
}

TEST_CASE("echo_server: many clients at once each get their own bytes back", "[examples][echo_server]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    auto server = start_echo_server(path);
    constexpr int n = 64;
    std::vector<fd_guard> clients;
    for (int i = 0; i < n; ++i) clients.push_back(connect_client(path));
    std::vector<std::vector<char>> msgs;
    for (int i = 0; i < n; ++i) {
        msgs.push_back(pattern(4096, static_cast<std::uint32_t>(100 + i)));
        REQUIRE(::send(clients[i].get(), msgs[i].data(), msgs[i].size(), MSG_NOSIGNAL) == 4096);
    }
    int ok = 0;
    for (int i = 0; i < n; ++i) {
        std::vector<char> back(4096);
        ssize_t got = ::recv(clients[i].get(), back.data(), back.size(), MSG_WAITALL);
        if (got == 4096 && back == msgs[i]) ++ok;
    }
    CHECK(ok == n);
}

TEST_CASE("echo_server: a client vanishing mid-stream does not disturb another client", "[examples][echo_server]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    auto server = start_echo_server(path);
    auto steady = connect_client(path);
    auto data = pattern(256 * 1024, 3);
    auto half = std::span<const char>(data).first(data.size() / 2);
    CHECK_ECHO(steady.get(), half);
    {
        auto rude = connect_client(path);
        auto junk = pattern(512 * 1024, 4);
        // Push data without reading any echo, then disappear.
        std::size_t sent = 0;
        for (int i = 0; i < 100 && sent < junk.size(); ++i) {
            ssize_t k = ::send(rude.get(), junk.data() + sent, junk.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (k > 0) sent += static_cast<std::size_t>(k);
            else std::this_thread::sleep_for(2ms);
        }
        CHECK(sent > 0);
    }
    CHECK_ECHO(steady.get(), std::span<const char>(data).subspan(data.size() / 2));
    auto fresh = connect_client(path);
    CHECK_ECHO(fresh.get(), half);
    CHECK(server.running());
}

TEST_CASE("echo_server: a client that never reads does not block other clients", "[examples][echo_server]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    auto server = start_echo_server(path);
    auto hog = connect_client(path);
    std::size_t stuffed = stuff_until_blocked(hog.get());
    CHECK(stuffed > 0);

    auto other = connect_client(path);
    auto data = pattern(1 << 20, 5);
    CHECK_ECHO(other.get(), data);
    auto another = connect_client(path);
    CHECK_ECHO(another.get(), std::span<const char>(data).first(10'000));
    CHECK(server.running());
}

TEST_CASE("echo_server: a client passing a descriptor with SCM_RIGHTS does not break it", "[examples][echo_server]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    auto server = start_echo_server(path);
    auto c = connect_client(path);
    // Warm up so the connection's own descriptors are counted in the baseline.
    CHECK_ECHO(c.get(), std::span<const char>("warm", 4));
    const std::size_t server_fds = proc_fd_count(server.pid());

    int pipefd[2];
    REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
    fd_guard pipe_r(pipefd[0]);
    {
        fd_guard pipe_w(pipefd[1]);
        char byte = 'x';
        iovec iov{&byte, 1};
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        cmsghdr* cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        int passed = pipe_w.get();
        std::memcpy(CMSG_DATA(cm), &passed, sizeof passed);
        REQUIRE(::sendmsg(c.get(), &msg, MSG_NOSIGNAL) == 1);
    }  // our copy of the write end is closed
    char back = 0;
    REQUIRE(::recv(c.get(), &back, 1, MSG_WAITALL) == 1);
    CHECK(back == 'x');

    // The server kept no copy of the write end: the pipe reports end of file.
    pollfd p{pipe_r.get(), POLLIN, 0};
    REQUIRE(::poll(&p, 1, 5000) == 1);
    char tmp = 0;
    CHECK(::read(pipe_r.get(), &tmp, 1) == 0);

    // The connection and the server go on as before.
    auto data = pattern(100'000, 6);
    CHECK_ECHO(c.get(), data);
    CHECK(proc_fd_count(server.pid()) == server_fds);
    auto other = connect_client(path);
    CHECK_ECHO(other.get(), data);
}

TEST_CASE("echo_server: SIGTERM or SIGINT makes it exit 0 within 5 s and remove its socket file",
          "[examples][echo_server]") {
    int sig = GENERATE(SIGTERM, SIGINT);
    INFO("signal " << ::strsignal(sig));
    temp_dir dir;
    std::string path = dir / "echo.sock";

    SECTION("idle") {
        auto server = start_echo_server(path);
        REQUIRE(exists(path));
        auto start = clock_type::now();
        server.signal(sig);
        auto st = server.wait_exit(5s);
        INFO("stderr: " << server.stderr_text());
        CHECK(exited_with(st, 0));
        CHECK(clock_type::now() - start < 5s);
        CHECK_FALSE(exists(path));
    }
    SECTION("with a connected client") {
        auto server = start_echo_server(path, {"--grace", "1"});
        auto c = connect_client(path);
        CHECK_ECHO(c.get(), std::span<const char>("hello", 5));
        server.signal(sig);
        auto st = server.wait_exit(5s);
        INFO("stderr: " << server.stderr_text());
        CHECK(exited_with(st, 0));
        CHECK_FALSE(exists(path));
        // The client's connection was closed, not left hanging.
        char b = 0;
        CHECK(::recv(c.get(), &b, 1, 0) == 0);
    }
}

TEST_CASE("echo_server: SIGHUP keeps it running with its connections", "[examples][echo_server]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    auto server = start_echo_server(path);
    auto c = connect_client(path);
    CHECK_ECHO(c.get(), std::span<const char>("before", 6));
    server.signal(SIGHUP);
    CHECK(server.wait_for_stderr("SIGHUP", 5s));
    CHECK(server.running());
    CHECK(exists(path));
    auto data = pattern(200'000, 7);
    CHECK_ECHO(c.get(), data);
    auto fresh = connect_client(path);
    CHECK_ECHO(fresh.get(), data);
}

TEST_CASE("echo_server: a second instance on the same path fails with one line and the first keeps working",
          "[examples][echo_server]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    auto first = start_echo_server(path);
    struct stat before {};
    REQUIRE(::lstat(path.c_str(), &before) == 0);

    auto second = child_process::spawn({example_path("echo_server"), path});
    auto st = second.wait_exit(5s);
    std::string err = second.stderr_text();
    INFO("second instance's stderr: " << err);
    CHECK(exited_nonzero(st));
    CHECK(count_lines(err) == 1);
    CHECK(err.find(path) != std::string::npos);

    struct stat after {};
    REQUIRE(::lstat(path.c_str(), &after) == 0);
    CHECK(after.st_ino == before.st_ino);
    CHECK(first.running());
    auto c = connect_client(path);
    CHECK_ECHO(c.get(), pattern(50'000, 8));
}

TEST_CASE("echo_server: a regular file at the path makes it fail and stays untouched", "[examples][echo_server]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    {
        std::ofstream f(path);
        f << "do not delete\n";
    }
    auto server = child_process::spawn({example_path("echo_server"), path});
    auto st = server.wait_exit(5s);
    std::string err = server.stderr_text();
    INFO("stderr: " << err);
    CHECK(exited_nonzero(st));
    CHECK(count_lines(err) == 1);
    std::ifstream f(path);
    std::string content((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    CHECK(content == "do not delete\n");
}

TEST_CASE("echo_server: a 200-byte path makes it fail with one line", "[examples][echo_server]") {
    temp_dir dir;
    std::string path = dir / "";
    path += std::string(200 - path.size(), 'p');
    REQUIRE(path.size() == 200);
    auto server = child_process::spawn({example_path("echo_server"), path});
    auto st = server.wait_exit(5s);
    std::string err = server.stderr_text();
    INFO("stderr: " << err);
    CHECK(exited_nonzero(st));
    CHECK(count_lines(err) == 1);
    CHECK(std::filesystem::is_empty(dir.path()));
}

TEST_CASE("echo_server: it takes over a stale socket file", "[examples][echo_server]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    {
        fd_guard fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        socklen_t len = 0;
        auto sa = address_of(path, len);
        REQUIRE(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&sa), len) == 0);
        REQUIRE(::listen(fd.get(), 1) == 0);
    }  // closed without unlink: a crashed server's leftover
    REQUIRE(exists(path));
    auto server = start_echo_server(path);
    auto c = connect_client(path);
    CHECK_ECHO(c.get(), pattern(100'000, 9));
    c.reset();  // no open connection: no grace period to sit out
    server.signal(SIGTERM);
    CHECK(exited_with(server.wait_exit(5s), 0));
    CHECK_FALSE(exists(path));
}

// ---------------------------------------------------------------------------------
// Rings (--threads) and limits (--idle-timeout, --max-connections, EMFILE back-off).

namespace {

/// No child process of this test program is left (every server was reaped).
bool no_children_left() {
    int st = 0;
    return ::waitpid(-1, &st, WNOHANG) == -1 && errno == ECHILD;
}

/// True when the server has closed `fd` (end of stream or reset) within `limit`.
bool closed_within(int fd, std::chrono::milliseconds limit) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(limit.count())) != 1) return false;
    char b = 0;
    return ::recv(fd, &b, 1, MSG_DONTWAIT) <= 0;
}

/// CPU time (user + system) the process has used so far.
std::chrono::milliseconds cpu_time(pid_t pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto rest = s.substr(s.rfind(')') + 2);  // fields from 3 (state) on
    std::vector<std::string> fields;
    std::size_t pos = 0;
    while (pos < rest.size()) {
        auto sp = rest.find(' ', pos);
        fields.push_back(rest.substr(pos, sp - pos));
        if (sp == std::string::npos) break;
        pos = sp + 1;
    }
    const long ticks = std::stol(fields.at(11)) + std::stol(fields.at(12));  // utime, stime
    return std::chrono::milliseconds(ticks * 1000 / ::sysconf(_SC_CLK_TCK));
}

}  // namespace

TEST_CASE("echo_server: --threads 2 echoes byte-exact for 200 clients and drains on SIGTERM",
          "[examples][echo_server][threads]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    {
        auto server = start_echo_server(path, {"--threads", "2", "--grace", "10"});
        constexpr int n = 200;
        std::vector<fd_guard> clients;
        for (int i = 0; i < n; ++i) clients.push_back(connect_client(path));
        std::vector<std::vector<char>> msgs;
        for (int i = 0; i < n; ++i) {
            msgs.push_back(pattern(8192, static_cast<std::uint32_t>(1000 + i)));
            REQUIRE(::send(clients[i].get(), msgs[i].data(), msgs[i].size(), MSG_NOSIGNAL) == 8192);
        }
        int ok = 0;
        for (int i = 0; i < n; ++i) {
            std::vector<char> back(8192);
            ssize_t got = ::recv(clients[i].get(), back.data(), back.size(), MSG_WAITALL);
            if (got == 8192 && back == msgs[i]) ++ok;
        }
        CHECK(ok == n);
        // Large transfers on a few of them (more than one lent buffer each).
        for (int i = 0; i < 4; ++i) CHECK_ECHO(clients[i].get(), pattern(1 << 20, static_cast<std::uint32_t>(i)));

        // SIGTERM: the listener goes at once, open connections keep working through the
        // grace period, and the server exits as soon as the last one has closed.
        server.signal(SIGTERM);
        CHECK(server.wait_for_stderr("shutting down", 5s));
        for (int i = 0; i < 20; ++i) CHECK_ECHO(clients[i].get(), std::span<const char>(msgs[i]).first(100));
        const auto closing = clock_type::now();
        clients.clear();
        auto st = server.wait_exit(5s);
        INFO("stderr: " << server.stderr_text());
        CHECK(exited_with(st, 0));
        CHECK(clock_type::now() - closing < 5s);  // well before the 10 s grace period
        CHECK(server.stderr_text().find("grace period over") == std::string::npos);
        CHECK_FALSE(exists(path));
    }
    CHECK(no_children_left());
}

TEST_CASE("echo_server: --threads 2 cancels what is left after the grace period and exits 0",
          "[examples][echo_server][threads]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    {
        auto server = start_echo_server(path, {"--threads", "2", "--grace", "0.5"});
        std::vector<fd_guard> clients;
        for (int i = 0; i < 10; ++i) {
            clients.push_back(connect_client(path));
            CHECK_ECHO(clients.back().get(), std::span<const char>("x", 1));
        }
        server.signal(SIGINT);
        auto st = server.wait_exit(5s);
        INFO("stderr: " << server.stderr_text());
        CHECK(exited_with(st, 0));
        CHECK(server.stderr_text().find("cancelling 10 connection(s)") != std::string::npos);
        for (auto& c : clients) CHECK(closed_within(c.get(), 1s));
        CHECK_FALSE(exists(path));
    }
    CHECK(no_children_left());
}

TEST_CASE("echo_server: --idle-timeout closes exactly the idle connections", "[examples][echo_server][limits]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    {
        auto server = start_echo_server(path, {"--threads", "2", "--idle-timeout", "1"});
        std::vector<fd_guard> idle, busy;
        for (int i = 0; i < 4; ++i) {
            idle.push_back(connect_client(path));
            busy.push_back(connect_client(path));
        }
        // The busy ones talk every 200 ms for 2.5 s; the idle ones never do.
        const auto until = clock_type::now() + 2500ms;
        while (clock_type::now() < until) {
            for (auto& b : busy) CHECK_ECHO(b.get(), std::span<const char>("ping", 4));
            std::this_thread::sleep_for(200ms);
        }
        for (auto& c : idle) CHECK(closed_within(c.get(), 2s));
        for (auto& b : busy) CHECK_ECHO(b.get(), pattern(100'000, 11));
        CHECK(server.running());
    }
    CHECK(no_children_left());
}

TEST_CASE("echo_server: at --max-connections a new client closes the longest-quiet one",
          "[examples][echo_server][limits]") {
    temp_dir dir;
    std::string path = dir / "echo.sock";
    {
        auto server = start_echo_server(path, {"--threads", "1", "--max-connections", "4"});
        std::vector<fd_guard> clients;
        for (int i = 0; i < 4; ++i) {
            clients.push_back(connect_client(path));
            CHECK_ECHO(clients.back().get(), std::span<const char>("hi", 2));
        }
        // Client 0 was quiet longest once client 1 speaks again.
        CHECK_ECHO(clients[0].get(), std::span<const char>("0", 1));
        CHECK_ECHO(clients[1].get(), std::span<const char>("1", 1));
        auto fresh = connect_client(path);
        CHECK_ECHO(fresh.get(), pattern(50'000, 12));
        CHECK(closed_within(clients[2].get(), 2s));  // the quietest: last active before 0 and 1 spoke
        for (int i : {0, 1, 3}) CHECK_ECHO(clients[i].get(), std::span<const char>("still", 5));
        CHECK(server.running());
    }
    CHECK(no_children_left());
}

TEST_CASE("echo_server: out of descriptors it backs off and keeps serving its clients",
          "[examples][echo_server][limits]") {
    const std::string prlimit = "/usr/bin/prlimit";
    if (::access(prlimit.c_str(), X_OK) != 0) {
        WARN("prlimit (util-linux) not installed: skipped");
        return;
    }
    temp_dir dir;
    std::string path = dir / "echo.sock";
    {
        // 48 descriptors and a cap above them: accept() runs into EMFILE.
        auto server = child_process::spawn({prlimit, "--nofile=48:48", "--", example_path("echo_server"), path,
                                            "--threads", "1", "--max-connections", "1000"});
        REQUIRE(server.wait_for_stderr("listening on"));
        auto old = connect_client(path);
        CHECK_ECHO(old.get(), std::span<const char>("before", 6));
        std::vector<fd_guard> flood;
        for (int i = 0; i < 80; ++i) {
            fd_guard fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
            socklen_t len = 0;
            auto sa = address_of(path, len);
            if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), len) == 0) flood.push_back(std::move(fd));
        }
        CHECK(flood.size() > 48);
        CHECK(server.wait_for_stderr("backing off", 5s));
        // The server is out of descriptors: it keeps echoing for the client it has,
        // without spinning on accept().
        const auto cpu_before = cpu_time(server.pid());
        const auto t0 = clock_type::now();
        while (clock_type::now() - t0 < 1s) {
            CHECK_ECHO(old.get(), pattern(10'000, 13));
            std::this_thread::sleep_for(50ms);
        }
        const auto cpu = cpu_time(server.pid()) - cpu_before;
        INFO("server CPU time over 1 s out of descriptors: " << cpu.count() << " ms");
        CHECK(cpu < 500ms);
        // Descriptors come back: new clients are accepted again.
        flood.clear();
        auto fresh = connect_client(path);
        CHECK_ECHO(fresh.get(), pattern(10'000, 14));
        CHECK(server.running());
    }
    CHECK(no_children_left());
}
