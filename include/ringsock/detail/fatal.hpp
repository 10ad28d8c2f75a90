// The one way ringsock gives up: when the ring itself fails in a way that leaves the
// kernel owning memory we can no longer account for (a lost completion, an enter
// error the kernel does not document as transient), freeing that memory would be a
// silent use-after-free. Print what failed and abort instead.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cerrno>
#include <cstring>

namespace ringsock::detail {

[[noreturn]] inline void fatal(const char* what, int err = 0) noexcept {
    if (err != 0) std::fprintf(stderr, "ringsock: fatal: %s: %s (errno %d)\n", what, std::strerror(err), err);
    else std::fprintf(stderr, "ringsock: fatal: %s\n", what);
    std::fflush(stderr);
    std::abort();
}

/// Whether an io_uring_enter result only means "try again after reaping": a signal
/// (EINTR), no memory for the request right now (EAGAIN), or a CQ backlog (EBUSY).
/// ETIME is a wait that timed out.
inline bool enter_error_is_transient(int rc) noexcept {
    return rc >= 0 || rc == -EINTR || rc == -EAGAIN || rc == -EBUSY || rc == -ETIME;
}

}  // namespace ringsock::detail
