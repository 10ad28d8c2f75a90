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

#include "process.hpp"

namespace ringsock::test {

/// A forked child running `fn` (returning its exit code). Killed and reaped on
/// destruction if still running, so a failing test leaves no process behind.
class child_process {
public:
    template <class F>
    explicit child_process(F&& fn) {
        pid_t pid = ::fork();
        if (pid < 0) throw std::runtime_error("fork failed");
        if (pid == 0) {
            int rc = 100;
            try {
                rc = fn();
            } catch (...) {
                rc = 101;
            }
            ::_exit(rc);  // no atexit handlers, no Catch2, no stdio flush of the parent's buffers
        }
        guard_.pid = pid;
    }
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;
    pid_t pid() const noexcept { return guard_.pid; }

    /// Waits (at most `limit`) and returns the exit code; -1 if it was killed by a signal
    /// or did not finish in time (it is then killed).
    int wait(std::chrono::milliseconds limit = std::chrono::seconds(30)) { return guard_.wait_code(limit); }

private:
    child_guard guard_;  // kills and reaps it if the test ends first
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
