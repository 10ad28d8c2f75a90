// echo_server PATH: echoes every byte on every connection of a Unix stream socket.
// SIGTERM/SIGINT: stop accepting at once, let connections finish for a grace period
// (--grace, default 3 s), cancel the rest, remove the socket file, exit 0. SIGHUP is
// logged and changes nothing. Connections live in a ringsock::scope, so none can be
// leaked at shutdown.
//
//   echo_server /tmp/echo.sock [--grace SECONDS] [--mode OCTAL]
//   socat - UNIX-CONNECT:/tmp/echo.sock
// Under a service manager (systemd-socket-activate -l /tmp/echo.sock echo_server) PATH
// may be omitted: the activated socket is used, and its file is left in place.
#include <ringsock/ringsock.hpp>
#include <ringsock/socket_activation.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stop_token>
#include <string>

using namespace std::chrono_literals;
using ringsock::task;

namespace {

// Echo until the client shuts down its side, then finish and close (half-close aware).
// `stop` is the connections scope's token: once it is stopped, the pending read or
// write ends with operation_canceled and the handler returns.
task<void> echo(ringsock::stream_socket sock, std::stop_token stop) {
    std::array<std::byte, 64 * 1024> buf;
    for (;;) {
        auto n = co_await sock.read_some(buf, stop);
        if (!n || *n == 0) break;  // error, cancelled, or end of stream
        auto w = co_await sock.write_all(std::span(buf.data(), *n), stop);
        if (!w) break;  // EPIPE/ECONNRESET: the client went away
    }
    (void)sock.shutdown(ringsock::shutdown_how::both);
}

// Accepts until `stop`; every connection becomes a child of `connections`.
task<void> accept_loop(ringsock::io_context& ctx, ringsock::acceptor& acc, ringsock::scope& connections,
                       std::stop_token stop) {
    for (;;) {
        auto conn = co_await acc.accept(stop);
        if (conn) {
            connections.spawn(echo(std::move(*conn), connections.get_token()));
        } else if (conn.error() == std::errc::operation_canceled) {
            co_return;
        } else if (conn.error() == std::errc::too_many_files_open ||
                   conn.error() == std::errc::too_many_files_open_in_system) {
            std::fprintf(stderr, "echo_server: accept: %s; backing off\n", conn.error().message().c_str());
            (void)co_await ringsock::sleep_for(ctx, 100ms, stop);
        } else {
            std::fprintf(stderr, "echo_server: accept: %s\n", conn.error().message().c_str());
            co_return;
        }
    }
}

// Returns on SIGTERM or SIGINT; SIGHUP is logged and changes nothing.
task<void> wait_for_shutdown(ringsock::signal_set& signals, const ringsock::scope& connections) {
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
        std::fprintf(stderr, "echo_server: SIGHUP: nothing to reload, %zu connection(s) kept\n", connections.size());
    }
}

task<int> serve(ringsock::io_context& ctx, ringsock::acceptor& acc, ringsock::signal_set& signals,
                std::chrono::milliseconds grace) {
    ringsock::scope connections(ctx);  // one child per client
    ringsock::scope accepting(ctx);    // the accept loop
    accepting.spawn(accept_loop(ctx, acc, connections, accepting.get_token()));

    co_await wait_for_shutdown(signals, connections);

    // Stop accepting at once: cancel the pending accept, stop listening and remove the
    // socket file (only if it is still the one this server created).
    accepting.request_stop();
    acc.close();
    co_await accepting.join();

    // Let open connections finish for the grace period, then cancel the rest. The
    // watchdog is itself cancelled if they all finish in time.
    ringsock::scope watchdog(ctx);
    watchdog.spawn([&](std::stop_token st) -> task<void> {
        if (co_await ringsock::sleep_for(ctx, grace, st)) {
            std::fprintf(stderr, "echo_server: grace period over, cancelling %zu connection(s)\n",
                         connections.size());
            connections.request_stop();
        }
    });
    co_await connections.join();  // every handler has returned and closed its socket
    watchdog.request_stop();
    co_await watchdog.join();
    co_return 0;
}

[[noreturn]] void usage() {
    std::fprintf(stderr, "usage: echo_server [PATH] [--grace SECONDS] [--mode OCTAL]\n");
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
    std::string path;  // optional when a service manager hands over the socket
    std::chrono::milliseconds grace = 3s;
    mode_t mode = 0600;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--grace") == 0 && i + 1 < argc) {
            grace = std::chrono::milliseconds(static_cast<long>(std::atof(argv[++i]) * 1000));
        } else if (std::strcmp(argv[i], "--mode") == 0 && i + 1 < argc) {
            mode = static_cast<mode_t>(std::strtoul(argv[++i], nullptr, 8));
        } else if (path.empty() && argv[i][0] != '-') {
            path = argv[i];
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
        if (activated->empty() && path.empty()) usage();
        ringsock::io_context ctx;
        // Block the signals before anything else so none is delivered the default way.
        ringsock::signal_set signals(ctx, {SIGTERM, SIGINT, SIGHUP});
        ringsock::acceptor acc;
        if (!activated->empty()) {
            auto& s = activated->front();
            if (s.type != SOCK_STREAM) {
                std::fprintf(stderr, "echo_server: the activated socket is not a stream socket\n");
                return 1;
            }
            acc = ringsock::acceptor::adopt(ctx, std::move(s.fd));
            std::fprintf(stderr, "echo_server: serving an activated socket (%s)\n", s.name.c_str());
        } else {
            auto ep = ringsock::endpoint::path(path);
            if (!ep) {
                std::fprintf(stderr, "echo_server: %s: %s\n", path.c_str(), ep.error().message().c_str());
                return 1;
            }
            auto listening = ringsock::acceptor::listen(ctx, *ep, {.mode = mode});
            if (!listening) {
                std::fprintf(stderr, "echo_server: cannot listen on %s: %s\n", path.c_str(), listening.error().message().c_str());
                return 1;
            }
            acc = std::move(*listening);
            std::fprintf(stderr, "echo_server: listening on %s\n", path.c_str());
        }
        if (auto ready = ctx.sync_wait(ringsock::notify_ready(ctx, 5s)); !ready)  // NOTIFY_SOCKET, if set
            std::fprintf(stderr, "echo_server: %s: %s\n", ready.what(), ready.error().message().c_str());
        return ctx.sync_wait(serve(ctx, acc, signals, grace));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "echo_server: %s\n", e.what());
        return 1;
    }
}
