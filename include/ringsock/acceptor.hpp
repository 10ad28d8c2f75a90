// acceptor: a listening Unix socket. It binds safely (see listen_options), accepts with
// one multishot ACCEPT request shared by all waiting coroutines (or, for a connection
// already in the backlog, one direct accept4), and on close removes its socket file
// only if it is still the node it created.
#pragma once

#include <fcntl.h>
#include <liburing.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "detail/operation.hpp"
#include "detail/socket_file.hpp"
#include "detail/speculation.hpp"
#include "endpoint.hpp"
#include "io_context.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "stream_socket.hpp"
#include "unique_fd.hpp"

namespace ringsock {

/// How basic_acceptor::listen() creates and later removes its socket file.
struct listen_options {
    /// Mode of the socket file from the moment it exists. 0600: only the owner.
    mode_t mode = 0600;
    /// Length of the kernel's queue of connections not yet accepted (listen(2)).
    int backlog = SOMAXCONN;
    /// Replace a socket file nobody listens on (a crashed server's). A live server's
    /// socket is never touched, nor is anything that is not a socket.
    bool replace_stale = true;
    /// Remove the socket file on close (only if it is still the node we created).
    bool remove_on_close = true;
};

namespace detail {

/// FIFO of accepted descriptors not yet taken. A vector read from a moving head: taking
/// the last one empties it without freeing, so a steady accept/take cycle never
/// allocates (a std::deque frees and reallocates a block every 128 descriptors).
class fd_fifo {
public:
    fd_fifo() = default;
    fd_fifo(const fd_fifo&) = delete;
    fd_fifo& operator=(const fd_fifo&) = delete;
    ~fd_fifo() {
        for (std::size_t i = head_; i < fds_.size(); ++i) ::close(fds_[i]);
    }
    bool empty() const noexcept { return head_ == fds_.size(); }
    std::size_t size() const noexcept { return fds_.size() - head_; }
    void push_back(int fd) { fds_.push_back(fd); }
    /// Precondition: !empty().
    int pop_front() noexcept {
        int fd = fds_[head_++];
        if (head_ == fds_.size()) {
            fds_.clear();
            head_ = 0;
        } else if (head_ >= 64 && 2 * head_ >= fds_.size()) {
            fds_.erase(fds_.begin(), fds_.begin() + static_cast<std::ptrdiff_t>(head_));
            head_ = 0;
        }
        return fd;
    }

private:
    std::vector<int> fds_;
    std::size_t head_ = 0;
};

/// One multishot ACCEPT feeding a queue of accepted descriptors. Armed by the first
/// accept() that finds nothing to take; hands each descriptor to the oldest waiter, or
/// queues it (up to a cap, then it stops accepting until the queue drains, so the
/// kernel backlog applies). On a non-blocking listener an accept() with nothing queued
/// and nobody waiting first tries accept4(2) directly (speculation.hpp): a connection
/// already in the backlog then costs one syscall, not a poll wake-up and task-work.
class accept_engine final : public operation {
public:
    static constexpr std::size_t queue_cap = 64;

    /// `flags_ours`: listen() made the listener non-blocking itself. An adopted one's
    /// flags are shared with every process holding its file description (a forked
    /// worker, a socket-activation sibling): they are never changed here, and any of
    /// those processes may clear O_NONBLOCK at any time, so they are read again before
    /// each direct attempt (a blocking accept4 would hang the loop until a client came).
    /// A holder that clears it between that read and the accept4 still can: a window of
    /// one syscall, where a snapshot taken at adopt() left it open for good.
    accept_engine(io_context& ctx, int fd, bool flags_ours) noexcept
        : operation(ctx, {}), listen_fd_(fd), flags_shared_(!flags_ours) {}
    ~accept_engine() {
        shut();  // queued descriptors are closed by queue_'s destructor
    }

    bool is_internal() const noexcept override { return true; }
    void prepare(io_uring_sqe* sqe) noexcept override {
        io_uring_prep_multishot_accept(sqe, listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    }
    void on_cqe(int res, unsigned flags) noexcept override {
        if (res >= 0) {
            if (closing_) {
                ::close(res);
            } else if (auto* w = static_cast<operation*>(waiters_.waiters.pop_front())) {
                hand(w, res);
            } else {
                // Nobody waits right now: keep it for the next accept(), which then needs
                // no request at all. Only a full queue stops the multishot request, so a
                // server that stops accepting leaves connections in the kernel backlog.
                queue_.push_back(res);
                if (queue_.size() >= queue_cap && (flags & IORING_CQE_F_MORE)) ctx_->request_cancel(this);
            }
        } else if (res != -ECANCELED || !closing_) {
            last_error_ = res;
        }
    }
    bool on_complete() noexcept override {
        state_ = op_state::idle;
        cancel_requested_ = cancel_sent_ = false;
        int err = std::exchange(last_error_, 0);
        if (closing_) return false;
        // A terminal error (EMFILE, ENFILE, ...) goes to one waiter, who decides what to
        // do; -ECANCELED from our own throttling is not an error.
        if (err != 0 && err != -ECANCELED) {
            if (auto* w = static_cast<operation*>(waiters_.waiters.pop_front())) hand(w, err);
        }
        arm();
        return false;
    }

    /// Takes a queued descriptor, or -1.
    int take() noexcept {
        if (queue_.empty()) return -1;
        return queue_.pop_front();
    }
    /// With nothing queued and nobody waiting: one direct accept4(2), if attempts have
    /// been paying off. A descriptor (>= 0), a real error (-errno: EMFILE...), or
    /// would_block (go to the ring). A hit while the multishot request is armed and
    /// idle cancels it: connections then keep being taken directly, without a wake-up
    /// each; the next miss arms it again.
    static constexpr int would_block = 1;
    int try_now() noexcept {
        if (closing_ || !queue_.empty() || !waiters_.waiters.empty()) return would_block;
        // TRICKY: without DEFER_TASKRUN the armed request's task-work runs on any return
        // to user space, so a connection it already took from the backlog can wait in
        // the CQ, not yet reaped (so not in queue_): a direct accept4 would hand out a
        // later connection before it. Wait for the reap instead. (An interrupt between
        // this check and the accept4 can still post one: a window of a few instructions.)
        if (state_ == op_state::in_flight) {
            io_uring* r = ctx_->native_handle();
            if (io_uring_cq_ready(r) != 0 || io_uring_cq_has_overflow(r)) return would_block;
        }
        if (!spec_.worth_trying() || !ctx_->take_direct()) return would_block;
        if (flags_shared_) {
            const int fl = ::fcntl(listen_fd_, F_GETFL);
            if (fl < 0 || (fl & O_NONBLOCK) == 0) {
                spec_.missed();  // a blocking listener (socket activation's default): back off
                return would_block;
            }
        }
        const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) {
            spec_.hit();
            if (state_ == op_state::in_flight) ctx_->request_cancel(this);
            return fd;
        }
        const int err = errno;
        // A client that gave up before being accepted, or a signal: nothing to report.
        if (err == EAGAIN || err == EWOULDBLOCK || err == ECONNABORTED || err == EINTR || err == EPROTO) {
            spec_.missed();
            return would_block;
        }
        return -err;
    }
    op_gate* waiters() noexcept { return &waiters_; }
    void arm() noexcept {
        if (closing_ || state_ != op_state::idle || waiters_.waiters.empty()) return;
        if (queue_.size() >= queue_cap) return;
        ctx_->submit(this);
    }
    bool is_shut() const noexcept { return closing_; }
    /// Stops accepting and waits until the kernel has let go of the request.
    void shut() noexcept {
        closing_ = true;
        settle();
        state_ = op_state::idle;
        // Connections taken from the backlog but never handed out: their clients see
        // the connection closed now, not when the acceptor object goes.
        while (!queue_.empty()) ::close(queue_.pop_front());
    }

private:
    void hand(operation* w, int res) noexcept;

    int listen_fd_;
    op_gate waiters_{true, nullptr, {}};  // always "busy": accept waiters queue here
    fd_fifo queue_;
    int last_error_ = 0;
    bool closing_ = false;
    bool flags_shared_;  // adopted: O_NONBLOCK is checked before each direct accept4
    speculation spec_;
};

/// The awaiter of acceptor::accept(): waits in the engine's queue of waiters for the
/// shared multishot ACCEPT to hand it a connection. A time limit or a stop request ends
/// the wait in user space (the loop's deadline list), so a connection the multishot
/// request takes is always handed to a waiter that is still there.
class accept_wait final : public operation {
public:
    accept_wait(io_context& ctx, accept_engine* engine, const op_limits& lim) noexcept
        : operation(ctx, lim), engine_(engine), built_open_(engine && !engine->is_shut()) {
        if (engine) gate_ = engine->waiters();
    }
    ~accept_wait() {
        settle();
        if (handed_ && res_ >= 0) ::close(res_);  // handed over but never resumed
    }
    bool await_ready() noexcept {
        if (!engine_ || engine_->is_shut()) {
            // Closed before this was awaited: cancelled, like a socket's operations;
            // already closed when accept() was called: EBADF, like a closed socket.
            res_ = built_open_ ? -ECANCELED : -EBADF;
        } else if (!operation::await_ready()) {
            int fd = engine_->take();
            if (fd < 0) fd = engine_->try_now();
            if (fd == accept_engine::would_block) return false;
            res_ = fd;
            handed_ = fd >= 0;
        }
        state_ = op_state::done;
        return true;
    }
    void await_suspend(std::coroutine_handle<> h) {
        operation::await_suspend(h);
        engine_->arm();
    }
    void prepare(io_uring_sqe*) noexcept override {}  // never submitted: it only waits
    io_result<stream_socket> await_resume() noexcept {
        finish_wait();
        if (res_ < 0) return {result_error(), "accept"};
        handed_ = false;
        return stream_socket(ctx_->owner(), unique_fd(res_));
    }
    void take_fd(int res) noexcept {
        res_ = res;
        handed_ = res >= 0;
    }

private:
    accept_engine* engine_;
    bool built_open_;
    bool handed_ = false;
};

inline void accept_engine::hand(operation* w, int res) noexcept {
    static_cast<accept_wait*>(w)->take_fd(res);
    ctx_->make_ready_op(w);
}

using accept_op = accept_wait;

/// The accept awaiter for a socket type: accept_op yields stream_sockets; for other
/// connected types the accepted descriptor is re-typed.
template <class Socket>
class typed_accept_op {
public:
    typed_accept_op(io_context& ctx, accept_engine* engine, const op_limits& lim)
        : ctx_(&ctx), inner_(ctx, engine, lim) {}
    bool await_ready() noexcept { return inner_.await_ready(); }
    void await_suspend(std::coroutine_handle<> h) { inner_.await_suspend(h); }
    io_result<Socket> await_resume() noexcept {
        auto r = inner_.await_resume();
        if (!r) return {r.error(), r.what()};
        return Socket(*ctx_, r->release());
    }

private:
    io_context* ctx_;
    accept_op inner_;
};

template <class Socket>
struct accept_awaiter_for {
    using type = typed_accept_op<Socket>;
};
template <>
struct accept_awaiter_for<stream_socket> {
    using type = accept_op;
};

}  // namespace detail

/// A listening socket of type `Type` (SOCK_STREAM or SOCK_SEQPACKET) on a path or
/// abstract name, accepting `Socket`s. Use the aliases acceptor and seqpacket_acceptor.
template <class Socket, int Type>
class basic_acceptor {
public:
    basic_acceptor() noexcept = default;
    /// Takes over the listener and its socket file; `o` is left closed and will not
    /// remove the file.
    basic_acceptor(basic_acceptor&& o) noexcept
        : ctx_(o.ctx_), fd_(std::move(o.fd_)), engine_(std::move(o.engine_)), bound_(std::move(o.bound_)) {
        o.bound_.owned = false;
    }
    /// Closes this listener first (see close()), then takes over `o`'s.
    basic_acceptor& operator=(basic_acceptor&& o) noexcept {
        if (this != &o) {
            close();
            ctx_ = o.ctx_;
            fd_ = std::move(o.fd_);
            engine_ = std::move(o.engine_);
            bound_ = std::move(o.bound_);
            o.bound_.owned = false;
        }
        return *this;
    }
    ~basic_acceptor() { close(); }

    /// Binds and listens. A stale socket file is replaced, including one whose server
    /// was just killed and whose io_uring teardown still holds it open (this may wait
    /// up to 2 s when the listener's creator has exited but another process may hold
    /// it). The listener is non-blocking (O_NONBLOCK), so accept() can take a waiting
    /// connection with one accept4. The flag belongs to the file description, so a
    /// process forked from this one shares it: its blocking accept(2) calls would get
    /// EAGAIN. Fork before listen(), or accept there through ringsock too.
    /// Errors: EADDRINUSE (a live server owns the path),
    /// errc::path_not_a_socket (the path is something else; left untouched),
    /// ENAMETOOLONG, EACCES, ENOENT (missing directory).
    static io_result<basic_acceptor> listen(io_context& ctx, const endpoint& ep, listen_options opts = {}) {
        detail::bound_path bound;
        auto fd = detail::bind_socket(Type, ep, {opts.mode, opts.replace_stale}, bound);
        if (!fd) return {fd.error(), fd.what()};
        if (!opts.remove_on_close) bound.owned = false;
        // Non-blocking (our own descriptor): accept() may then try accept4 directly.
        const int fl = ::fcntl(fd->get(), F_GETFL);
        if (fl < 0 || ::fcntl(fd->get(), F_SETFL, fl | O_NONBLOCK) < 0) {
            auto ec = detail::last_error();
            bound.remove();
            return {ec, "listen: fcntl(O_NONBLOCK)"};
        }
        if (::listen(fd->get(), opts.backlog) < 0) {
            auto ec = detail::last_error();
            bound.remove();
            return {ec, "listen"};
        }
        return basic_acceptor(ctx, std::move(*fd), std::move(bound), true);
    }

    /// Adopts a descriptor that is already listening with this socket type (e.g. from
    /// socket activation). Its socket file is never removed by this acceptor.
    static basic_acceptor adopt(io_context& ctx, unique_fd listening) {
        return basic_acceptor(ctx, std::move(listening), {}, false);
    }

    /// Waits for the next connection. co_await yields io_result<Socket>.
    /// Errors: EMFILE/ENFILE (out of descriptors: back off and retry),
    /// operation_canceled, timed_out.
    [[nodiscard]] auto accept(op_limits lim = {}) {
        return typename detail::accept_awaiter_for<Socket>::type(*ctx_, engine_.get(), lim);
    }

    /// Stops listening and removes the socket file if we created it and it is still
    /// ours. Coroutines waiting in accept() resume with operation_canceled.
    void close() noexcept {
        if (engine_) {
            auto* gate = engine_->waiters();
            while (auto* r = gate->waiters.front()) detail::core(*ctx_).request_cancel(static_cast<detail::operation*>(r));
            // The engine stays allocated, shut, until the acceptor dies: an accept()
            // awaiter built before close() and awaited after it finds it and fails EBADF.
            engine_->shut();
        }
        // Remove the name first, so a new server can never be unlinked by our close.
        bound_.remove();
        fd_.reset();
    }

    /// True between a successful listen()/adopt() and close().
    bool is_open() const noexcept { return fd_.valid(); }
    /// The listening descriptor (-1 when closed); still owned by the acceptor.
    int native_handle() const noexcept { return fd_.get(); }
    /// The context it accepts on. Precondition: it was opened (not default-constructed).
    io_context& context() const noexcept { return *ctx_; }
    /// The address it listens on (getsockname); EBADF when closed.
    io_result<endpoint> local_endpoint() const { return ringsock::local_endpoint(fd_.get()); }

private:
    basic_acceptor(io_context& ctx, unique_fd fd, detail::bound_path bound, bool flags_ours)
        : ctx_(&ctx), fd_(std::move(fd)),
          engine_(std::make_unique<detail::accept_engine>(ctx, fd_.get(), flags_ours)), bound_(std::move(bound)) {}

    io_context* ctx_ = nullptr;
    unique_fd fd_;
    std::unique_ptr<detail::accept_engine> engine_;
    detail::bound_path bound_;
};

/// A listening stream socket on a path or abstract name.
using acceptor = basic_acceptor<stream_socket, SOCK_STREAM>;

}  // namespace ringsock
