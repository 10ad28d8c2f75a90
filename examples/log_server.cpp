// log_server PATH: a datagram socket in the style of /dev/log. Prints each datagram it
// receives as one line on standard output, flushed per line, prefixed with the sender's
// pid and uid as the kernel reports them (SO_PASSCRED), so a sender cannot lie about
// who it is. SIGTERM/SIGINT: remove the socket file, exit 0.
//
//   log_server /tmp/log.sock [--mode OCTAL]     (default mode 0666, like /dev/log)
//   logger -u /tmp/log.sock "hello"
//   -> pid=12345 uid=1000: <13>Mar  5 12:00:00 user: hello
#include <ringsock/ringsock.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stop_token>
#include <string>
#include <string_view>

using ringsock::task;

namespace {

/// The datagram as one printable line: a trailing newline and NULs dropped, other
/// control bytes shown as \xNN, so one datagram is always exactly one output line.
std::string printable(std::string_view s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.remove_suffix(1);
    std::string out;
    for (unsigned char c : s) {
        if (c < 0x20 || c == 0x7f) {
            char esc[8];
            std::snprintf(esc, sizeof esc, "\\x%02x", c);
            out += esc;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out;
}

task<void> print_loop(ringsock::datagram_socket& sock, std::stop_token stop, bool& done) {
    std::array<char, 64 * 1024> buf;  // the largest datagram logger sends by default is 1 KiB
    for (;;) {
        auto m = co_await sock.receive(buf, stop);
        if (!m && m.error() == std::errc::operation_canceled) {
            done = true;
            co_return;
        }
        bool truncated = !m && m.error() == ringsock::errc::message_truncated;
        if (!m && !truncated && m.error() != ringsock::errc::fds_truncated) {
            std::fprintf(stderr, "log_server: receive: %s\n", m.error().message().c_str());
            (void)co_await ringsock::sleep_for(sock.context(), std::chrono::milliseconds(100));  // never spin
            continue;
        }
        const ringsock::received_message& msg = m.partial_value();
        if (!msg.fds.empty()) std::fprintf(stderr, "log_server: closed %zu descriptor(s) sent with a message\n", msg.fds.size());
        std::string text = printable(std::string_view(buf.data(), msg.bytes));
        if (msg.sender_credentials) {
            std::printf("pid=%d uid=%u: %s%s\n", int(msg.sender_credentials->pid),
                        unsigned(msg.sender_credentials->uid), text.c_str(), truncated ? " [truncated]" : "");
        } else {
            std::printf("pid=? uid=?: %s%s\n", text.c_str(), truncated ? " [truncated]" : "");
        }
        std::fflush(stdout);
    }
}

task<int> serve(ringsock::io_context& ctx, ringsock::datagram_socket& sock, ringsock::signal_set& signals) {
    std::stop_source stop;
    bool done = false;
    ctx.spawn(print_loop(sock, stop.get_token(), done));
    auto sig = co_await signals.wait();
    if (sig) std::fprintf(stderr, "log_server: %s: shutting down\n", ::strsignal(*sig));
    stop.request_stop();
    while (!done) (void)co_await ringsock::sleep_for(ctx, std::chrono::milliseconds(1));
    sock.close();  // removes the socket file
    co_return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::string path;
    mode_t mode = 0666;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--mode") == 0 && i + 1 < argc) {
            mode = static_cast<mode_t>(std::strtoul(argv[++i], nullptr, 8));
        } else if (path.empty() && argv[i][0] != '-') {
            path = argv[i];
        } else {
            path.clear();
            break;
        }
    }
    if (path.empty()) {
        std::fprintf(stderr, "usage: log_server PATH [--mode OCTAL]\n");
        return 2;
    }
    try {
        ringsock::io_context ctx;
        ringsock::signal_set signals(ctx, {SIGTERM, SIGINT});
        auto ep = ringsock::endpoint::path(path);
        if (!ep) {
            std::fprintf(stderr, "log_server: %s: %s\n", path.c_str(), ep.error().message().c_str());
            return 1;
        }
        ringsock::datagram_options opts;
        opts.mode = mode;
        auto sock = ringsock::datagram_socket::bind(ctx, *ep, opts);
        if (!sock) {
            std::fprintf(stderr, "log_server: cannot bind %s: %s\n", path.c_str(), sock.error().message().c_str());
            return 1;
        }
        // The kernel attaches each sender's real pid/uid/gid to every datagram.
        if (auto on = ringsock::pass_credentials(*sock); !on) {
            std::fprintf(stderr, "log_server: %s\n", on.error().message().c_str());
            return 1;
        }
        std::fprintf(stderr, "log_server: listening on %s\n", path.c_str());
        return ctx.sync_wait(serve(ctx, *sock, signals));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "log_server: %s\n", e.what());
        return 1;
    }
}
