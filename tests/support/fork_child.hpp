// A second real process for descriptor-passing and credential tests: fork, run a
// function in the child (raw syscalls, or ringsock with its own io_context created
// there), and report its result as the exit status. The child never touches Catch2.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <thread>
#include <utility>

namespace ringsock::test {

/// A forked child running `fn` (returning its exit code). Killed and reaped on
/// destruction if still running, so a failing test leaves no process behind.
class child_process {
public:
    template <class F>
    explicit child_process(F&& fn) {
        pid_ = ::fork();
        if (pid_ < 0) throw std::runtime_error("fork failed");
        if (pid_ == 0) {
            int rc = 100;
            try {
                rc = fn();
            } catch (...) {
                rc = 101;
            }
            ::_exit(rc);  // no atexit handlers, no Catch2, no stdio flush of the parent's buffers
        }
    }
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;
    ~child_process() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int st = 0;
            ::waitpid(pid_, &st, 0);
        }
    }

    pid_t pid() const noexcept { return pid_; }

    /// Waits (at most `limit`) and returns the exit code; -1 if it was killed by a signal
    /// or did not finish in time (it is then killed).
    int wait(std::chrono::milliseconds limit = std::chrono::seconds(30)) {
        auto deadline = std::chrono::steady_clock::now() + limit;
        for (;;) {
            int st = 0;
            pid_t r = ::waitpid(pid_, &st, WNOHANG);
            if (r == pid_) {
                pid_ = -1;
                return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
            }
            if (r < 0 || std::chrono::steady_clock::now() > deadline) {
                ::kill(pid_, SIGKILL);
                ::waitpid(pid_, &st, 0);
                pid_ = -1;
                return -1;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
    }

private:
    pid_t pid_ = -1;
};

inline bool has_cloexec(int fd) {
    int f = ::fcntl(fd, F_GETFD);
    return f >= 0 && (f & FD_CLOEXEC) != 0;
}

inline bool fd_is_open(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }

/// True when the read end of a pipe reports end of file right now, i.e. every copy of
/// the write end (in this process too) has been closed.
inline bool pipe_at_eof(int read_end) {
    pollfd p{read_end, POLLIN, 0};
    if (::poll(&p, 1, 0) != 1) return false;
    char c;
    return ::read(read_end, &c, 1) == 0;
}

}  // namespace ringsock::test
