// Child processes for tests that run the examples as real programs: spawn with extra
// environment variables, wait with a time limit, capture a program's standard output.
#pragma once

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
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace ringsock::test {

/// The built example `name`, from RINGSOCK_BUILD_ROOT (set by tests/meson.build), or ""
/// when it was not built.
inline std::string example_path(const char* name) {
    const char* root = std::getenv("RINGSOCK_BUILD_ROOT");
    if (root == nullptr) return {};
    std::string p = std::string(root) + "/examples/" + name;
    return ::access(p.c_str(), X_OK) == 0 ? p : std::string{};
}

/// The full path of `prog` on PATH, or "".
inline std::string find_program(const char* prog) {
    const char* path = std::getenv("PATH");
    std::string rest = path ? path : "/usr/bin:/bin";
    std::size_t pos = 0;
    while (pos <= rest.size()) {
        std::size_t end = rest.find(':', pos);
        if (end == std::string::npos) end = rest.size();
        std::string p = rest.substr(pos, end - pos) + "/" + prog;
        if (end > pos && ::access(p.c_str(), X_OK) == 0) return p;
        pos = end + 1;
    }
    return {};
}

/// Starts argv[0] (a path) with the current environment plus `extra_env` ("NAME=value",
/// overriding) minus `remove_env` names, with an empty signal mask and default signal
/// dispositions. `stdout_fd` and `stderr_fd`, if >= 0, become the child's standard
/// output and error.
inline pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env = {},
                   const std::vector<std::string>& remove_env = {}, int stdout_fd = -1, int stderr_fd = -1) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
        std::string kv(*e);
        std::string name = kv.substr(0, kv.find('='));
        bool drop = false;
        for (const auto& r : remove_env) drop = drop || r == name;
        for (const auto& x : extra_env) drop = drop || x.substr(0, x.find('=')) == name;
        if (!drop) env.push_back(std::move(kv));
    }
    for (const auto& x : extra_env) env.push_back(x);
    std::vector<char*> cargv, cenv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    for (const auto& e : env) cenv.push_back(const_cast<char*>(e.c_str()));
    cenv.push_back(nullptr);

    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (stdout_fd >= 0) posix_spawn_file_actions_adddup2(&fa, stdout_fd, STDOUT_FILENO);
    if (stderr_fd >= 0) posix_spawn_file_actions_adddup2(&fa, stderr_fd, STDERR_FILENO);
    pid_t pid = -1;
    int rc = ::posix_spawn(&pid, cargv[0], &fa, &attr, cargv.data(), cenv.data());
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) throw std::runtime_error("posix_spawn " + argv[0] + " failed: " + std::to_string(rc));
    return pid;
}

/// Waits for `pid` up to `limit`; returns its wait status, or nothing (the child is
/// then killed and reaped, so no zombie is left).
inline std::optional<int> wait_exit(pid_t pid, std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
        int status = 0;
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r < 0 && errno != EINTR) return std::nullopt;
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            return std::nullopt;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

/// Kills and reaps a child on scope exit unless it was already reaped.
struct child_guard {
    pid_t pid = -1;
    ~child_guard() {
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            int status = 0;
            ::waitpid(pid, &status, 0);
        }
    }
    std::optional<int> wait(std::chrono::milliseconds limit) {
        auto st = wait_exit(pid, limit);
        pid = -1;
        return st;
    }
    /// wait(), as an exit code: -1 if killed by a signal or not finished in time.
    int wait_code(std::chrono::milliseconds limit) {
        auto st = wait(limit);
        return st && WIFEXITED(*st) ? WEXITSTATUS(*st) : -1;
    }
};

struct captured {
    pid_t pid = -1;
    int status = -1;  // wait status; -1 if the program did not finish in time
    std::string out;
};

/// Runs a program to completion (at most `limit`) and captures its standard output.
inline captured run_capture(const std::vector<std::string>& argv,
                            std::chrono::milliseconds limit = std::chrono::seconds(30)) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) < 0) throw std::runtime_error("pipe2 failed");
    captured c;
    try {
        c.pid = spawn(argv, {}, {}, p[1]);
    } catch (...) {
        ::close(p[0]);
        ::close(p[1]);
        throw;
    }
    ::close(p[1]);
    auto deadline = std::chrono::steady_clock::now() + limit;
    char buf[4096];
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        pollfd pfd{p[0], POLLIN, 0};
        int r = ::poll(&pfd, 1, static_cast<int>(left.count()));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        ssize_t n = ::read(p[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        c.out.append(buf, static_cast<std::size_t>(n));
    }
    ::close(p[0]);
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (auto st = wait_exit(c.pid, std::max(left, std::chrono::milliseconds(100)))) c.status = *st;
    return c;
}

/// Connects a stream socket to `path`, retrying while nobody listens yet (the file
/// appears at bind(), before listen()). Returns the descriptor (close-on-exec), or -1
/// after `limit`.
inline int connect_when_listening(const std::string& path, std::chrono::milliseconds limit) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (path.size() >= sizeof sa.sun_path) return -1;
    std::memcpy(sa.sun_path, path.data(), path.size());
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
        int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) return fd;
        int err = errno;
        ::close(fd);
        bool retry = err == ECONNREFUSED || err == ENOENT || err == EINTR || err == EAGAIN;
        if (!retry || std::chrono::steady_clock::now() > deadline) return -1;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

/// Waits until a server listens on `path` (one probe connection is made and closed).
inline bool wait_for_listener(const std::string& path, std::chrono::milliseconds limit) {
    int fd = connect_when_listening(path, limit);
    if (fd < 0) return false;
    ::close(fd);
    return true;
}

/// A fresh temporary directory, removed (with its plain entries) on scope exit.
struct temp_dir {
    std::string path;
    temp_dir() {
        std::string tmpl = "/tmp/ringsock-test-XXXXXX";
        if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
        path = tmpl;
    }
    ~temp_dir() {
        // Only the files our tests create (sockets); no recursion needed.
        if (DIR* d = ::opendir(path.c_str())) {
            while (dirent* e = ::readdir(d)) {
                std::string n = e->d_name;
                if (n != "." && n != "..") ::unlink((path + "/" + n).c_str());
            }
            ::closedir(d);
        }
        ::rmdir(path.c_str());
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    std::string file(const char* name) const { return path + "/" + name; }
};

}  // namespace ringsock::test
