// echo_server PATH: echoes every byte on every connection of a Unix stream socket.
// SIGTERM/SIGINT: stop accepting, let connections finish for a grace period, cancel the
// rest, remove the socket file, exit 0. SIGHUP is logged and changes nothing.
//
//   echo_server /tmp/echo.sock [--grace SECONDS] [--mode OCTAL]
//   socat - UNIX-CONNECT:/tmp/echo.sock
#include <ringsock/ringsock.hpp>

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

struct server_state {
    std::stop_source stop;  // cancels every connection's pending I/O
    std::size_t connections = 0;
};

// Echo until the client shuts down its side, then finish and close (half-close aware).
task<void> echo(ringsock::stream_socket sock, server_state& st) {
    ++st.connections;
    std::array<std::byte, 64 * 1024> buf;
    for (;;) {
        auto n = co_await sock.read_some(buf, st.stop.get_token());
        if (!n || *n == 0) break;  // error, cancelled, or end of stream
        auto w = co_await sock.write_all(std::span(buf.data(), *n), st.stop.get_token());
        if (!w) break;  // EPIPE/ECONNRESET: the client went away
    }
    (void)sock.shutdown(ringsock::shutdown_how::both);
    --st.connections;
}

task<void> accept_loop(ringsock::io_context& ctx, ringsock::acceptor& acc, server_state& st) {
    for (;;) {
        auto conn = co_await acc.accept(st.stop.get_token());
        if (conn) {
            ctx.spawn(echo(std::move(*conn), st));
        } else if (conn.error() == std::errc::operation_canceled) {
            co_return;
        } else if (conn.error() == std::errc::too_many_files_open ||
                   conn.error() == std::errc::too_many_files_open_in_system) {
            std::fprintf(stderr, "echo_server: accept: %s; backing off\n", conn.error().message().c_str());
            co_await ringsock::sleep_for(ctx, 100ms);
        } else {
            std::fprintf(stderr, "echo_server: accept: %s\n", conn.error().message().c_str());
            co_return;
        }
    }
}

task<int> serve(ringsock::io_context& ctx, ringsock::acceptor& acc, ringsock::signal_set& signals,
                std::chrono::milliseconds grace) {
    server_state st;
    std::stop_source accept_stop;
    ctx.spawn(accept_loop(ctx, acc, st));
    for (;;) {
        auto sig = co_await signals.wait();
        if (!sig) {
            std::fprintf(stderr, "echo_server: waiting for signals: %s\n", sig.error().message().c_str());
            break;
        }
        if (*sig == SIGHUP) {
            std::fprintf(stderr, "echo_server: SIGHUP: nothing to reload, %zu connection(s) kept\n", st.connections);
            continue;
        }
        std::fprintf(stderr, "echo_server: %s: shutting down\n", ::strsignal(*sig));
        break;
    }
    acc.close();  // stops accepting and removes the socket file at once
    auto deadline = std::chrono::steady_clock::now() + grace;
    while (st.connections > 0 && std::chrono::steady_clock::now() < deadline)
        co_await ringsock::sleep_for(ctx, 20ms);
    st.stop.request_stop();  // cancel whatever is still open
    while (st.connections > 0) co_await ringsock::sleep_for(ctx, 1ms);
    co_return 0;
}

[[noreturn]] void usage() {
    std::fprintf(stderr, "usage: echo_server PATH [--grace SECONDS] [--mode OCTAL]\n");
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) usage();
    std::string path = argv[1];
    std::chrono::milliseconds grace = 3s;
    mode_t mode = 0600;
    for (int i = 2; i < argc; ++i) {
        if (std::strcmp(argv[i], "--grace") == 0 && i + 1 < argc) {
            grace = std::chrono::milliseconds(static_cast<long>(std::atof(argv[++i]) * 1000));
        } else if (std::strcmp(argv[i], "--mode") == 0 && i + 1 < argc) {
            mode = static_cast<mode_t>(std::strtoul(argv[++i], nullptr, 8));
        } else {
            usage();
        }
    }
    try {
        ringsock::io_context ctx;
        // Block the signals before anything else so none is delivered the default way.
        ringsock::signal_set signals(ctx, {SIGTERM, SIGINT, SIGHUP});
        auto ep = ringsock::endpoint::path(path);
        if (!ep) {
            std::fprintf(stderr, "echo_server: %s: %s\n", path.c_str(), ep.error().message().c_str());
            return 1;
        }
        auto acc = ringsock::acceptor::listen(ctx, *ep, {.mode = mode});
        if (!acc) {
            std::fprintf(stderr, "echo_server: cannot listen on %s: %s\n", path.c_str(), acc.error().message().c_str());
            return 1;
        }
        std::fprintf(stderr, "echo_server: listening on %s\n", path.c_str());
        return ctx.sync_wait(serve(ctx, *acc, signals, grace));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "echo_server: %s\n", e.what());
        return 1;
    }
}
