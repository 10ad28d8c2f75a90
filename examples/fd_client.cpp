// fd_client PATH NAME: asks fd_server for NAME, receives the opened file as a
// descriptor and copies it to standard output. Exits 1 with a message on "ERR", on an
// "OK" without a descriptor, on a reply carrying more than one descriptor (they are all
// closed, however many), on a malformed reply, or when no reply comes within 10 s.
//
//   fd_client /tmp/files.sock motd > motd.copy
#include <ringsock/ringsock.hpp>

#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

using namespace std::chrono_literals;
using ringsock::task;

namespace {

constexpr std::size_t max_reply = 4096;

int fail(const char* what, const std::string& detail = {}) {
    std::fprintf(stderr, "fd_client: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
    return 1;
}

/// Copies everything readable from `fd` to standard output.
int copy_to_stdout(int fd) {
    std::array<char, 64 * 1024> buf;
    for (;;) {
        ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n == 0) return 0;
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail("reading the received file", std::strerror(errno));
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = ::write(STDOUT_FILENO, buf.data() + off, static_cast<std::size_t>(n - off));
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) return fail("writing to standard output", std::strerror(errno));
            off += w;
        }
    }
}

task<int> fetch(ringsock::io_context& ctx, const ringsock::endpoint& ep, std::string name) {
    auto conn = co_await ringsock::fd_stream::connect(ctx, ep, 10s);
    if (!conn) co_return fail("connect", conn.error().message());
    ringsock::fd_stream& sock = *conn;
    // One reply carries at most one descriptor: anything beyond is closed on arrival and
    // the read reports fds_truncated, so a hostile server cannot fill our fd table.
    sock.set_fd_limit(1);

    std::string request = name + "\n";
    auto sent = co_await sock.write_all(request, 10s);
    if (!sent) co_return fail("sending the request", sent.error().message());

    // Read up to the end of the reply line; the descriptor arrives with its bytes.
    std::string line;
    std::array<char, 512> buf;
    for (;;) {
        auto n = co_await sock.read_some(buf, 10s);
        if (!n && n.error() == ringsock::errc::fds_truncated)
            co_return fail("malformed reply", "it carried more than one descriptor (all closed)");
        if (!n) co_return fail("reading the reply", n.error().message());
        if (*n == 0) co_return fail("malformed reply", "connection closed before the end of the line");
        line.append(buf.data(), *n);
        if (auto nl = line.find('\n'); nl != std::string::npos) {
            line.resize(nl);
            break;
        }
        if (line.size() > max_reply) co_return fail("malformed reply", "reply line too long");
    }

    if (line.rfind("ERR", 0) == 0) {
        std::string reason = line.size() > 4 ? line.substr(4) : "(no reason given)";
        co_return fail(("server refused " + name).c_str(), reason);
    }
    if (line != "OK") co_return fail("malformed reply", line.substr(0, 80));
    ringsock::unique_fd file = sock.take_fd();
    if (!file) co_return fail("malformed reply", "OK without a descriptor");
    co_return copy_to_stdout(file.get());
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: fd_client PATH NAME\n");
        return 2;
    }
    auto ep = ringsock::endpoint::path(argv[1]);
    if (!ep) return fail(argv[1], ep.error().message());
    try {
        ringsock::io_context ctx;
        return ctx.sync_wait(fetch(ctx, *ep, argv[2]));
    } catch (const std::exception& e) {
        return fail(e.what());
    }
}
