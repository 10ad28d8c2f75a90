// echo_server PATH: echoes every byte on every connection of a Unix stream socket.
// --threads N rings (default: one per CPU), each on its own thread: the listener on
// ring 0 hands every connection to the rings in turn. Each ring has a buffer_ring; each
// connection reads through a ring_reader (one multishot receive that stays armed), so an
// idle client holds no receive buffer: a buffer is lent only between a read and the
// write of its bytes back.
// Limits: a connection quiet for --idle-timeout (default 60 s) is closed; at
// --max-connections (default: RLIMIT_NOFILE minus a reserve) a new connection makes its
// ring close the connection that has been quiet longest. Out of descriptors, the
// acceptor backs off and the connections it has are still served.
// SIGTERM/SIGINT: stop accepting at once, let connections finish for a grace period
// (--grace, default 3 s), cancel the rest (on every ring), remove the socket file,
// exit 0. SIGHUP is logged and changes nothing.
//
//   echo_server /tmp/echo.sock [--grace SECONDS] [--mode OCTAL] [--threads N]
//               [--idle-timeout SECONDS] [--max-connections N]
//   socat - UNIX-CONNECT:/tmp/echo.sock
// Under a service manager (systemd-socket-activate -l /tmp/echo.sock echo_server) PATH
// may be omitted: the activated socket is used, and its file is left in place.
#include <ringsock/ringsock.hpp>
#include <ringsock/socket_activation.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <future>
#include <stop_token>
#include <string>

#include "conn_limits.hpp"

using namespace std::chrono_literals;
using ringsock::task;

namespace {

// Buffers per ring: a buffer is lent only while its bytes are being written back.
constexpr unsigned ring_buffers = 256;
constexpr std::size_t ring_buffer_size = 16 * 1024;

struct options {
    std::string path;  // optional when a service manager hands over the socket
    std::chrono::milliseconds grace = 3s;
    mode_t mode = 0600;
    std::size_t threads = 0;  // 0: one per CPU
};

struct server {
    ringsock::context_pool& pool;
    limits::process_limits& lim;
    limits::ring_set& rings;
};

// Echo until the client shuts down its side, then finish and close (half-close aware).
// Every operation takes the connection's token: idle timeout, shedding and the end of
// the grace period end the pending read or write with operation_canceled.
task<void> echo(ringsock::stream_socket sock, limits::connection& c, ringsock::buffer_ring& ring) {
    ringsock::ring_reader reader(sock, ring);  // one request for all the reads
    for (;;) {
        auto got = co_await reader.receive(c.token());  // holds no buffer while it waits
        if (!got || got->empty()) break;                      // error, cancelled, or end of stream
        c.touch();
        auto w = co_await sock.write_all(got->bytes(), c.token());
        if (!w) break;  // EPIPE/ECONNRESET: the client went away
        c.touch();
    }  // the lent buffer went back to the ring at the end of each turn
    (void)sock.shutdown(ringsock::shutdown_how::both);
}

// Runs on the ring the connection was handed to.
task<void> handle(ringsock::stream_socket sock, server& srv, limits::ticket) {
    limits::connection c(srv.rings.connections(sock.context()));
    if (!c.admitted()) co_return;  // closed at once: over the cap with nothing to shed, or stopping
    co_await c.run(echo(std::move(sock), c, srv.rings.buffers(sock.context())));
}

// Returns on SIGTERM or SIGINT; SIGHUP is logged and changes nothing.
task<void> wait_for_shutdown(ringsock::signal_set& signals, const limits::process_limits& lim) {
    for (;;) {
        auto sig = co_await signals.wait();
        if (!sig) {
            std::fprintf(stderr, "echo_server: waiting for signals: %s\n", sig.error().message().c_str());
            co_return;
        }
        if (*sig != SIGHUP) {
            std::fprintf(stderr, "echo_server: %s: shutting down\n", ::strsignal(*sig));
            co_return;
        }
        std::fprintf(stderr, "echo_server: SIGHUP: nothing to reload, %ld connection(s) kept\n", lim.live.load());
    }
}

// Polls until no connection is left or `until` has passed.
task<void> wait_drained(ringsock::io_context& ctx, const limits::process_limits& lim,
                        std::chrono::steady_clock::time_point until) {
    while (lim.live.load() > 0 && std::chrono::steady_clock::now() < until)
        (void)co_await ringsock::sleep_for(ctx, 5ms);
}

// The listener's ring (ring 0): set up, serve until a signal, drain. Yields the exit code.
task<int> serve(server& srv, const options& opt, ringsock::acceptor& acc) {
    ringsock::io_context& ctx = srv.pool[0];
    ringsock::signal_set signals(ctx, {SIGTERM, SIGINT, SIGHUP});
    if (auto ready = co_await ringsock::notify_ready(ctx, 5s); !ready)  // NOTIFY_SOCKET, if set
        std::fprintf(stderr, "echo_server: %s: %s\n", ready.what(), ready.error().message().c_str());

    ringsock::scope accepting(ctx);
    accepting.spawn(limits::accept_loop(
        acc, srv.lim, [&srv]() -> ringsock::io_context& { return srv.pool.next(); },
        [&srv](ringsock::stream_socket s, limits::ticket t) { return handle(std::move(s), srv, std::move(t)); },
        accepting.get_token(), "echo_server"));

    co_await wait_for_shutdown(signals, srv.lim);

    // Stop accepting at once: cancel the pending accept, stop listening and remove the
    // socket file (only if it is still the one this server created).
    accepting.request_stop();
    acc.close();
    co_await accepting.join();

    // Let open connections (on every ring) finish for the grace period, then cancel the rest.
    co_await wait_drained(ctx, srv.lim, std::chrono::steady_clock::now() + opt.grace);
    if (long left = srv.lim.live.load(); left > 0) {
        std::fprintf(stderr, "echo_server: grace period over, cancelling %ld connection(s)\n", left);
        srv.rings.stop_all();
    }
    co_await wait_drained(ctx, srv.lim, std::chrono::steady_clock::time_point::max());
    co_return 0;
}

// Ring 0 makes the listener (so it belongs to that ring), then serves; the result or
// the exception goes to main's thread through `result`.
task<void> run(server& srv, const options& opt, std::vector<ringsock::activated_socket>* activated, std::promise<int>& result) {
    try {
        ringsock::io_context& ctx = srv.pool[0];
        ringsock::acceptor acc;
        if (!activated->empty()) {
            auto& s = activated->front();
            if (s.type != SOCK_STREAM) {
                std::fprintf(stderr, "echo_server: the activated socket is not a stream socket\n");
                result.set_value(1);
                co_return;
            }
            acc = ringsock::acceptor::adopt(ctx, std::move(s.fd));
            std::fprintf(stderr, "echo_server: serving an activated socket (%s)\n", s.name.c_str());
        } else {
            auto ep = ringsock::endpoint::path(opt.path);
            if (!ep) {
                std::fprintf(stderr, "echo_server: %s: %s\n", opt.path.c_str(), ep.error().message().c_str());
                result.set_value(1);
                co_return;
            }
            auto listening = ringsock::acceptor::listen(ctx, *ep, {.mode = opt.mode, .backlog = limits::listen_backlog});
            if (!listening) {
                std::fprintf(stderr, "echo_server: cannot listen on %s: %s\n", opt.path.c_str(),
                             listening.error().message().c_str());
                result.set_value(1);
                co_return;
            }
            acc = std::move(*listening);
            std::fprintf(stderr, "echo_server: listening on %s\n", opt.path.c_str());
        }
        const int code = co_await serve(srv, opt, acc);
        result.set_value(code);
    } catch (...) {
        result.set_exception(std::current_exception());
    }
}

[[noreturn]] void usage() {
    std::fprintf(stderr, "usage: echo_server [PATH] [--grace SECONDS] [--mode OCTAL] [--threads N] [--idle-timeout SECONDS] "
                         "[--max-connections N]\n");
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    limits::process_limits lim;
    for (int i = 1; i < argc; ++i) {
        double v = 0;
        if (std::strcmp(argv[i], "--grace") == 0 && i + 1 < argc) {
            opt.grace = std::chrono::milliseconds(static_cast<long>(std::atof(argv[++i]) * 1000));
        } else if (std::strcmp(argv[i], "--mode") == 0 && i + 1 < argc) {
            opt.mode = static_cast<mode_t>(std::strtoul(argv[++i], nullptr, 8));
        } else if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc && limits::parse_positive(argv[++i], v)) {
            opt.threads = static_cast<std::size_t>(v);
        } else if (std::strcmp(argv[i], "--idle-timeout") == 0 && i + 1 < argc && limits::parse_positive(argv[++i], v)) {
            lim.idle_timeout = std::chrono::milliseconds(static_cast<long long>(v * 1000));
        } else if (std::strcmp(argv[i], "--max-connections") == 0 && i + 1 < argc &&
                   limits::parse_positive(argv[++i], v)) {
            lim.max_connections = static_cast<long>(v);
        } else if (opt.path.empty() && argv[i][0] != '-') {
            opt.path = argv[i];
        } else {
            usage();
        }
    }
    try {
        // Socket activation (systemd, systemd-socket-activate -l PATH): use the handed-over
        // listening socket; its file belongs to the service manager and is never removed.
        auto activated = ringsock::take_activated_sockets();
        if (!activated) {
            std::fprintf(stderr, "echo_server: %s: %s\n", activated.what(), activated.error().message().c_str());
            return 1;
        }
        if (activated->empty() && opt.path.empty()) usage();
        // Block the signals before any ring's thread starts, so every thread inherits the
        // mask and none is delivered the default way; ring 0's signal_set takes them.
        limits::block_signals({SIGTERM, SIGINT, SIGHUP});

        ringsock::context_pool pool(opt.threads);
        limits::ring_set rings(pool, lim, ring_buffers, ring_buffer_size);
        server srv{pool, lim, rings};
        return limits::run_server(pool, rings,
                                  [&](std::promise<int>& result) { return run(srv, opt, &*activated, result); });
    } catch (const std::exception& e) {
        std::fprintf(stderr, "echo_server: %s\n", e.what());
        return 1;
    }
}
