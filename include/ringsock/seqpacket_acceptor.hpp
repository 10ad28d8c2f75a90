// seqpacket_acceptor: a listening SOCK_SEQPACKET Unix socket. Same socket-file rules
// and accept machinery as the stream acceptor (mode from the first instant, stale file
// takeover, a live server's socket or a non-socket never touched, only our own node
// removed on close); accepted connections are seqpacket_sockets.
#pragma once

#include <sys/socket.h>

#include <memory>
#include <utility>

#include "acceptor.hpp"
#include "detail/socket_file.hpp"
#include "endpoint.hpp"
#include "io_context.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "seqpacket_socket.hpp"
#include "unique_fd.hpp"

namespace ringsock {
namespace detail {

/// The stream acceptor's awaiter (multishot engine, or a single ACCEPT with a time
/// limit), re-typing the accepted descriptor as a seqpacket_socket.
class seqpacket_accept_op {
public:
    seqpacket_accept_op(io_context& ctx, int fd, accept_engine* engine, const op_limits& lim)
        : ctx_(&ctx), inner_(ctx, fd, engine, lim) {}
    bool await_ready() noexcept { return inner_.await_ready(); }
    void await_suspend(std::coroutine_handle<> h) { inner_.await_suspend(h); }
    io_result<seqpacket_socket> await_resume() noexcept {
        auto r = inner_.await_resume();
        if (!r) return {r.error(), r.what()};
        return seqpacket_socket(*ctx_, r->release());
    }

private:
    io_context* ctx_;
    accept_op inner_;
};

}  // namespace detail

/// A listening seqpacket socket on a path or abstract name.
class seqpacket_acceptor {
public:
    seqpacket_acceptor() noexcept = default;
    seqpacket_acceptor(seqpacket_acceptor&& o) noexcept
        : ctx_(o.ctx_), fd_(std::move(o.fd_)), engine_(std::move(o.engine_)), bound_(std::move(o.bound_)) {
        o.bound_.owned = false;
    }
    seqpacket_acceptor& operator=(seqpacket_acceptor&& o) noexcept {
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
    ~seqpacket_acceptor() { close(); }

    /// Binds and listens. Errors: EADDRINUSE (a live server owns the path),
    /// errc::path_not_a_socket (the path is something else; left untouched),
    /// ENAMETOOLONG, EACCES, ENOENT (missing directory).
    static io_result<seqpacket_acceptor> listen(io_context& ctx, const endpoint& ep, listen_options opts = {}) {
        detail::bound_path bound;
        auto fd = detail::bind_socket(SOCK_SEQPACKET, ep, {opts.mode, opts.replace_stale}, bound);
        if (!fd) return {fd.error(), fd.what()};
        if (!opts.remove_on_close) bound.owned = false;
        if (::listen(fd->get(), opts.backlog) < 0) {
            auto ec = detail::last_error();
            bound.remove();
            return {ec, "listen"};
        }
        return seqpacket_acceptor(ctx, std::move(*fd), std::move(bound));
    }

    /// Adopts a descriptor that is already a listening seqpacket socket (e.g. from
    /// socket activation). Its socket file is never removed by this acceptor.
    static seqpacket_acceptor adopt(io_context& ctx, unique_fd listening) {
        return seqpacket_acceptor(ctx, std::move(listening), {});
    }

    /// Waits for the next connection. co_await yields io_result<seqpacket_socket>.
    /// Errors: EMFILE/ENFILE (back off and retry), operation_canceled, timed_out.
    [[nodiscard]] auto accept(op_limits lim = {}) {
        return detail::seqpacket_accept_op(*ctx_, fd_.get(), engine_.get(), lim);
    }

    /// Stops listening and removes the socket file if we created it and it is still
    /// ours. Coroutines waiting in accept() resume with operation_canceled.
    void close() noexcept {
        if (engine_) {
            auto* gate = engine_->waiters();
            while (auto* r = gate->waiters.front()) ctx_->request_cancel(static_cast<detail::operation*>(r));
            engine_->shut();
            engine_.reset();
        }
        bound_.remove();  // the name first, so a successor's socket is never unlinked
        fd_.reset();
    }

    bool is_open() const noexcept { return fd_.valid(); }
    int native_handle() const noexcept { return fd_.get(); }
    io_result<endpoint> local_endpoint() const { return ringsock::local_endpoint(fd_.get()); }

private:
    seqpacket_acceptor(io_context& ctx, unique_fd fd, detail::bound_path bound)
        : ctx_(&ctx), fd_(std::move(fd)),
          engine_(std::make_unique<detail::accept_engine>(ctx, fd_.get())), bound_(std::move(bound)) {}

    io_context* ctx_ = nullptr;
    unique_fd fd_;
    std::unique_ptr<detail::accept_engine> engine_;
    detail::bound_path bound_;
};

}  // namespace ringsock
