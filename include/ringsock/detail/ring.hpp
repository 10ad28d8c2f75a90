// The io_uring itself: set up with the best flags the kernel accepts, the features it
// gave us, and every call into the kernel under one error policy: EINTR, EAGAIN, EBUSY
// and ETIME mean "reap, then try again"; anything else aborts with its name, because
// operations the kernel may still write into could otherwise be freed (fatal.hpp).
#pragma once

#include <liburing.h>

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <system_error>

#include "errno.hpp"
#include "fatal.hpp"

namespace ringsock {

/// What the ring was set up with, for tests, logs and benchmarks.
struct ring_features {
    unsigned sq_entries = 0;
    unsigned cq_entries = 0;
    bool single_issuer = false;
    bool defer_taskrun = false;
    bool coop_taskrun = false;
    bool registered_ring_fd = false;
    /// IORING_OP_MSG_RING: other rings wake this one with a completion (Linux >= 5.18);
    /// without it, posts from other threads wake the loop through its eventfd.
    bool msg_ring = false;
    /// Slots in the ring's table of registered files (0: none; sockets then use plain
    /// descriptors).
    unsigned registered_files = 0;
};

}  // namespace ringsock

namespace ringsock::detail {

class ring {
public:
    /// Throws std::system_error naming the step if the ring cannot be set up.
    ring(unsigned entries, bool defer_taskrun, bool use_msg_ring = true) {
        // An operation with a time limit needs two SQEs at once (the request and its
        // link timeout): a one-entry SQ could never submit it.
        if (entries < 2) entries = 2;
        io_uring_params p{};
        auto try_init = [&](unsigned flags) {
            p = io_uring_params{};
            p.flags = flags | IORING_SETUP_CQSIZE;
            p.cq_entries = entries * 4;  // room for bursts: completions outnumber submissions
            return io_uring_queue_init_params(entries, &ring_, &p);
        };
        int rc = -EINVAL;
        if (defer_taskrun) {
            rc = try_init(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
            if (rc == 0) features_.single_issuer = features_.defer_taskrun = true;
        }
        if (rc < 0) {
            rc = try_init(IORING_SETUP_COOP_TASKRUN);
            if (rc == 0) features_.coop_taskrun = true;
        }
        if (rc < 0) rc = try_init(0);
        if (rc < 0) throw_errno(-rc, "io_context: io_uring_queue_init_params");
        if (!(p.features & IORING_FEAT_NODROP)) {
            io_uring_queue_exit(&ring_);
            throw std::system_error(std::make_error_code(std::errc::not_supported),
                                    "io_context: kernel lacks IORING_FEAT_NODROP (Linux >= 5.5 needed)");
        }
        features_.sq_entries = p.sq_entries;
        features_.cq_entries = p.cq_entries;
        features_.registered_ring_fd = io_uring_register_ring_fd(&ring_) == 1;
        if (io_uring_probe* probe = use_msg_ring ? io_uring_get_probe_ring(&ring_) : nullptr) {
            features_.msg_ring = io_uring_opcode_supported(probe, IORING_OP_MSG_RING) != 0;
            io_uring_free_probe(probe);
        }
    }
    ring(const ring&) = delete;
    ring& operator=(const ring&) = delete;
    ~ring() { io_uring_queue_exit(&ring_); }

    io_uring* native() noexcept { return &ring_; }
    /// The ring's own descriptor (what IORING_OP_MSG_RING names as its target).
    int fd() const noexcept { return ring_.ring_fd; }
    const ring_features& features() const noexcept { return features_; }
    void set_registered_files(unsigned n) noexcept { features_.registered_files = n; }

    unsigned sq_space_left() noexcept { return io_uring_sq_space_left(&ring_); }
    unsigned sq_ready() noexcept { return io_uring_sq_ready(&ring_); }
    /// An SQE, or nullptr when the SQ is full. io_uring_get_sqe, without its tests for
    /// SQPOLL and 128-byte SQEs: this ring is set up with neither, so the kernel moves
    /// the SQ head only inside our own enters.
    io_uring_sqe* get_sqe() noexcept {
        io_uring_sq& sq = ring_.sq;
        const unsigned tail = sq.sqe_tail;
        if (tail - __atomic_load_n(sq.khead, __ATOMIC_RELAXED) >= sq.ring_entries) return nullptr;
        sq.sqe_tail = tail + 1;
        return &sq.sqes[tail & sq.ring_mask];
    }
    /// Whether get_sqe() would return an SQE.
    bool has_sqe() const noexcept {
        return ring_.sq.sqe_tail - __atomic_load_n(ring_.sq.khead, __ATOMIC_RELAXED) < ring_.sq.ring_entries;
    }
    /// An SQE, handing the full SQ to the kernel first if needed; nullptr if still full.
    io_uring_sqe* get_sqe_flushing() noexcept {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        if (!sqe) {
            flush();
            sqe = io_uring_get_sqe(&ring_);
        }
        return sqe;
    }

    /// Hands the SQ to the kernel without waiting; a full SQ is never an error.
    void flush() noexcept { check(io_uring_submit(&ring_), "io_uring_enter (submit)"); }
    /// Submits and, if `wait`, blocks until at least one completion is there. On a
    /// DEFER_TASKRUN ring task-work runs only in a GETEVENTS enter, so even the
    /// non-waiting form asks for events.
    void enter(bool wait, const char* what = "io_uring_enter") noexcept {
        // io_uring_submit_and_wait / _get_events, inline: publish the SQ tail, then one
        // io_uring_enter through the registered ring descriptor when there is one.
        io_uring_sq& sq = ring_.sq;
        const unsigned tail = sq.sqe_tail;
        if (sq.sqe_head != tail) {
            sq.sqe_head = tail;
            io_uring_smp_store_release(sq.ktail, tail);
        }
        // Counted from the kernel's head, as liburing does, not from sqe_head: a
        // submission the kernel cut short (an SQE it rejected, without
        // IORING_SETUP_SUBMIT_ALL; -EAGAIN) leaves SQEs in the SQ that sqe_head already
        // counts as handed over, and they must go with this enter.
        const unsigned to_submit = tail - __atomic_load_n(sq.khead, __ATOMIC_RELAXED);
        unsigned flags = IORING_ENTER_GETEVENTS;
        if (features_.registered_ring_fd) flags |= IORING_ENTER_REGISTERED_RING;
        const long rc = ::syscall(__NR_io_uring_enter, ring_.enter_ring_fd, to_submit, wait ? 1U : 0U, flags,
                                  nullptr, _NSIG / 8);
        check(rc < 0 ? -errno : static_cast<int>(rc), what);
    }
    /// Submits and blocks until a completion or until `rel` has passed.
    void enter_until(__kernel_timespec rel) noexcept {
        io_uring_cqe* cqe = nullptr;
        check(io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &rel, nullptr), "io_uring_enter (wait with timeout)");
    }

    /// Calls `f(user_data, res, flags)` for each completion there is now, after copying
    /// it out and advancing the CQ past it: a handler may submit new SQEs or resume
    /// nothing yet; the CQ slot it came from is already free.
    template <class F>
    void reap(F&& f) noexcept {
        bool flushed = false;
        for (;;) {
            // The CQ read inline (io_uring_peek_batch_cqe is an out-of-line library call).
            // The ring has 16-byte CQEs: no IORING_SETUP_CQE32.
            const unsigned tail = io_uring_smp_load_acquire(ring_.cq.ktail);
            if (tail == *ring_.cq.khead) {
                // CQEs the kernel kept on its overflow list (NODROP) come back with a
                // GETEVENTS enter, as io_uring_peek_batch_cqe does it.
                if (flushed || !io_uring_cq_has_overflow(&ring_)) break;
                check(io_uring_get_events(&ring_), "io_uring_enter (overflowed completions)");
                flushed = true;
                continue;
            }
            const unsigned mask = ring_.cq.ring_mask;
            // The head is read again each time: were a handler ever to reap, it would
            // have consumed completions up to a later tail, which must not run twice.
            for (unsigned head; static_cast<int>(tail - (head = *ring_.cq.khead)) > 0;) {
                const io_uring_cqe& c = ring_.cq.cqes[head & mask];
                const std::uint64_t user_data = c.user_data;
                const int res = c.res;
                const unsigned flags = c.flags;
                io_uring_smp_store_release(ring_.cq.khead, head + 1);
                f(user_data, res, flags);
            }
            break;
        }
    }

private:
    void check(int rc, const char* what) noexcept {
        // EBADR (a completion was lost), EBADF, EFAULT, ...: some operation will never
        // see its completion, or the ring is gone. Freeing its memory would be a silent
        // use-after-free; stop here and say why.
        if (!enter_error_is_transient(rc)) fatal(what, -rc);
        // With NODROP the kernel keeps overflowing CQEs on a list; a non-zero koverflow
        // means it could not, and some operation will never see its completion.
        if (ring_.cq.koverflow && *ring_.cq.koverflow != 0)
            fatal("completion queue overflow: the kernel dropped completions");
    }

    io_uring ring_{};
    ring_features features_{};
};

}  // namespace ringsock::detail
