// fd_server PATH DIR: a file broker. A client sends "NAME\n"; the server opens DIR/NAME
// read-only and answers "OK\n" carrying that one descriptor, or "ERR <reason>\n"
// carrying none. Only peers with our uid (or one given with --allow-uid) are served,
// checked with SO_PEERCRED; refused peers are logged with their pid and uid.
// Limits: a connection with no request for --idle-timeout (default 60 s) is closed; at
// --max-connections (default: RLIMIT_NOFILE minus a reserve, which also leaves room
// for the files being opened) a new connection closes the one quiet longest.
// SIGTERM/SIGINT: stop, remove the socket file, exit 0.
//
//   fd_server /tmp/files.sock /srv/files [--allow-uid UID]... [--mode OCTAL]
//             [--idle-timeout SECONDS] [--max-connections N]
//   fd_client /tmp/files.sock motd
//   python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect("/tmp/files.sock");
//     s.send(b"motd\n"); msg, fds, _, _ = socket.recv_fds(s, 64, 1); print(msg, fds)'
#include <ringsock/ringsock.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "conn_limits.hpp"

using namespace std::chrono_literals;
using ringsock::task;

namespace {

/// A request line longer than this (without its newline) ends the connection.
constexpr std::size_t max_request = 4096;
/// An open that takes longer (a FIFO with no writer, a hung file system) is answered
/// "ERR Connection timed out"; only that client waits.
constexpr auto open_limit = 2s;

struct server_state {
    int dir_fd = -1;
    std::vector<uid_t> allowed;
    limits::process_limits lim;
    limits::ring_connections* conns = nullptr;
};

/// The reply to one request: "OK\n" and a descriptor, or "ERR <reason>\n".
struct reply {
    std::string line;
    ringsock::unique_fd fd;
};

// Opens on the ring (IORING_OP_OPENAT2), so a slow file system or a FIFO blocks an io-wq
// thread, never the loop: other clients are served meanwhile. The kernel refuses any
// path that leaves DIR (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
// the name checks stay as a second layer and give clearer answers.
task<reply> open_request(ringsock::io_context& ctx, const server_state& st, std::string_view name) {
    if (name.empty()) co_return reply{"ERR empty name\n", {}};
    if (name.find('/') != std::string_view::npos || name.find("..") != std::string_view::npos || name == "." ||
        name.find('\0') != std::string_view::npos)
        co_return reply{"ERR invalid name\n", {}};
    const std::string n(name);
    auto fd = co_await ringsock::open_at(ctx, st.dir_fd, n, ringsock::beneath(O_RDONLY | O_NOCTTY), open_limit);
    if (!fd) {
        std::string err = "ERR ";  // appended, not "ERR " + ...: g++ 12 -O3 -Wrestrict
        err += fd.error().message();
        err += '\n';
        co_return reply{std::move(err), {}};
    }
    struct stat sb {};
    if (::fstat(fd->get(), &sb) < 0 || !S_ISREG(sb.st_mode)) co_return reply{"ERR not a regular file\n", {}};
    co_return reply{"OK\n", std::move(*fd)};
}

// One connection: many requests, one reply each.
// Its I/O takes the connection's token: idle timeout, shedding and shutdown cancel it.
task<void> serve_client(ringsock::fd_stream sock, limits::connection& c, const server_state& st) {
    auto token = c.token();
    auto cred = ringsock::peer_credentials(sock);
    bool allowed = false;
    if (cred) {
        for (uid_t u : st.allowed) allowed = allowed || u == cred->uid;
    }
    if (!allowed) {
        if (cred) std::fprintf(stderr, "fd_server: refused peer pid %d uid %u\n", int(cred->pid), unsigned(cred->uid));
        else std::fprintf(stderr, "fd_server: refused peer: %s\n", cred.error().message().c_str());
        (void)co_await sock.write_all(std::string_view("ERR permission denied\n"), {token, 5s});
        co_return;
    }
    // A request ends at "\n": read_until, not read_line, so a "\r" before it stays part of
    // the name (and the name is refused), as it always was.
    ringsock::buffered_stream in(sock);
    for (bool ok = true; ok;) {
        auto line = co_await in.read_until("\n", max_request, token);
        // Descriptors the client pushed at us are not wanted: close them (a push over the
        // queue limit was already closed, reported as fds_truncated with the bytes kept).
        if (auto pushed = in.take_fds(); !pushed.empty())
            std::fprintf(stderr, "fd_server: closed %zu descriptor(s) sent by pid %d\n", pushed.size(), int(cred->pid));
        if (!line && line.error() == ringsock::errc::fds_truncated) continue;
        if (!line && line.error() == ringsock::framing_errc::frame_too_long) {
            (void)co_await sock.write_all(std::string_view("ERR request too long\n"), {token, 5s});
            break;  // disconnect: the rest of the line is never read
        }
        if (!line) break;  // end of stream, error or cancelled
        c.touch();
        reply r = co_await open_request(sock.context(), st, *line);
        if (r.fd) {
            auto w = co_await sock.send_fds(r.line, r.fd, token);
            ok = static_cast<bool>(w);
        } else {
            auto w = co_await sock.write_all(r.line, token);
            ok = static_cast<bool>(w);
        }
    }
}

task<void> handle(ringsock::stream_socket s, const server_state& st, limits::ticket) {
    limits::connection c(*st.conns);
    if (!c.admitted()) co_return;  // closed at once: over the cap with nothing to shed, or stopping
    co_await c.run(serve_client(ringsock::fd_stream(std::move(s)), c, st));
}

task<int> serve(ringsock::io_context& ctx, ringsock::acceptor& acc, ringsock::signal_set& signals,
                server_state& st) {
    limits::ring_connections conns(ctx, st.lim);
    st.conns = &conns;
    ringsock::scope accepting(ctx);
    accepting.spawn(limits::accept_loop(
        acc, st.lim, [&ctx]() -> ringsock::io_context& { return ctx; },
        [&st](ringsock::stream_socket s, limits::ticket t) { return handle(std::move(s), st, std::move(t)); },
        accepting.get_token(), "fd_server"));
    auto sig = co_await signals.wait();
    if (sig) std::fprintf(stderr, "fd_server: %s: shutting down\n", ::strsignal(*sig));
    acc.close();  // stops accepting and removes the socket file
    accepting.request_stop();
    co_await accepting.join();
    conns.stop_all();  // cancels every connection
    while (st.lim.live.load() > 0) (void)co_await ringsock::sleep_for(ctx, 1ms);
    co_return 0;
}

[[noreturn]] void usage() {
    std::fprintf(stderr, "usage: fd_server PATH DIR [--allow-uid UID]... [--mode OCTAL] [--idle-timeout SECONDS] "
                         "[--max-connections N]\n");
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> positional;
    server_state st;
    st.allowed.push_back(::getuid());
    mode_t mode = 0600;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--allow-uid") == 0 && i + 1 < argc) {
            char* end = nullptr;
            unsigned long u = std::strtoul(argv[++i], &end, 10);
            if (*end != '\0') usage();
            st.allowed.push_back(static_cast<uid_t>(u));
        } else if (std::strcmp(argv[i], "--mode") == 0 && i + 1 < argc) {
            mode = static_cast<mode_t>(std::strtoul(argv[++i], nullptr, 8));
        } else if (double v = 0; std::strcmp(argv[i], "--idle-timeout") == 0 && i + 1 < argc &&
                                 limits::parse_positive(argv[++i], v)) {
            st.lim.idle_timeout = std::chrono::milliseconds(static_cast<long long>(v * 1000));
        } else if (std::strcmp(argv[i], "--max-connections") == 0 && i + 1 < argc &&
                   limits::parse_positive(argv[++i], v)) {
            st.lim.max_connections = static_cast<long>(v);
        } else if (argv[i][0] == '-') {
            usage();
        } else {
            positional.push_back(argv[i]);
        }
    }
    if (positional.size() != 2) usage();
    const std::string& path = positional[0];
    ringsock::unique_fd dir(::open(positional[1].c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir) {
        std::fprintf(stderr, "fd_server: %s: %s\n", positional[1].c_str(), std::strerror(errno));
        return 1;
    }
    st.dir_fd = dir.get();
    try {
        ringsock::io_context ctx;
        // Block the signals before anything else so none is delivered the default way.
        ringsock::signal_set signals(ctx, {SIGTERM, SIGINT});
        auto ep = ringsock::endpoint::path(path);
        if (!ep) {
            std::fprintf(stderr, "fd_server: %s: %s\n", path.c_str(), ep.error().message().c_str());
            return 1;
        }
        ringsock::listen_options opts;
        opts.mode = mode;
        opts.backlog = limits::listen_backlog;
        auto acc = ringsock::acceptor::listen(ctx, *ep, opts);
        if (!acc) {
            std::fprintf(stderr, "fd_server: cannot listen on %s: %s\n", path.c_str(), acc.error().message().c_str());
            return 1;
        }
        std::fprintf(stderr, "fd_server: serving %s on %s\n", positional[1].c_str(), path.c_str());
        return ctx.sync_wait(serve(ctx, *acc, signals, st));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fd_server: %s\n", e.what());
        return 1;
    }
}
