// What a socket's operations share with it: one gate per direction, whether writes are
// still safe, the registered-file slot, and (fd_stream) the queue of received
// descriptors. Operations point here while they run; closing, moving or destroying the
// socket re-points or detaches every one of them, so none touches a dead socket.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "../unique_fd.hpp"
#include "file_table.hpp"
#include "operation.hpp"
#include "speculation.hpp"

namespace ringsock::detail {

/// Descriptors received on a stream and not yet taken (fd_stream).
struct fd_queue {
    std::vector<unique_fd> fds;
    std::size_t limit = 1024;
    std::vector<unique_fd> scratch;  // always empty: its capacity is reused by every read
};

struct socket_state {
    op_gate send_gate;
    op_gate recv_gate;
    bool write_broken = false;
    bool closed = false;  // set by close(): never submit on a descriptor number that may be reused
    registered_file file;
    fd_queue* fds = nullptr;  // fd_stream's queue, or nullptr
    speculation send_spec;    // whether a direct syscall has been paying off
    speculation recv_spec;
    /// Whether the previous byte operation on this socket went the same way (and
    /// remember this one's): speculative I/O is tried only within such a run.
    bool same_direction_as_last(bool sends) noexcept {
        const std::uint8_t dir = sends ? 1 : 2;
        return std::exchange(last_direction_, dir) == dir;
    }
    std::uint8_t last_direction_ = 0;

    socket_state() noexcept = default;
    socket_state(const socket_state&) = delete;
    socket_state& operator=(const socket_state&) = delete;
    /// Moves everything, including the operations waiting on or holding a direction:
    /// they are re-pointed here, so a socket may move while operations are in flight.
    socket_state(socket_state&& o) noexcept { take(o); }
    void take(socket_state& o) noexcept {
        write_broken = std::exchange(o.write_broken, false);
        closed = std::exchange(o.closed, false);
        file = std::move(o.file);
        move_gate(send_gate, o.send_gate);
        move_gate(recv_gate, o.recv_gate);
    }
    /// Whether an operation holds or waits for either direction.
    bool in_use() const noexcept { return send_gate.busy || recv_gate.busy; }
    /// The owning socket moved its fd_queue (fd_stream's move): re-point.
    void set_fd_queue(fd_queue* q) noexcept { fds = q; }

    /// Detaches every operation that refers to this socket and asks the context to
    /// cancel it: queued ones complete with operation_canceled without ever reaching
    /// the kernel; the one in flight on each direction gets an ASYNC_CANCEL through the
    /// context's queue (never lost to a full SQ); one that already completed keeps its
    /// result. None of them touches this socket again. Defined in operation_impl.hpp.
    /// Returns true if one of them was in flight: its SQE may still be in the SQ, so
    /// the caller must flush the SQ before closing the descriptor or its slot.
    bool detach_all(scheduler& s) noexcept;

private:
    void move_gate(op_gate& to, op_gate& from) noexcept;
};

inline void socket_state::move_gate(op_gate& to, op_gate& from) noexcept {
    // `to` is idle (new, or closed before being assigned to). A direction nobody holds
    // has nobody waiting either: nothing to move (every moved-from socket, e.g. a
    // result passed along by value).
    if (!from.busy) return;
    to.busy = std::exchange(from.busy, false);
    to.holder = std::exchange(from.holder, nullptr);
    to.waiters.take(from.waiters);
    auto repoint = [&](operation* op) {
        op->sock_ = this;
        op->gate_ = &to;
    };
    if (to.holder) repoint(to.holder);
    for (resumable* r = to.waiters.front(); r; r = r->next_) repoint(static_cast<operation*>(r));
}

}  // namespace ringsock::detail
