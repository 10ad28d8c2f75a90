// Registered files: a socket that keeps making requests takes a slot in its
// io_context's table (IOSQE_FIXED_FILE), and every way a socket ends — close(),
// destruction, release(), being moved over — gives the slot back, so the kernel's
// reference never keeps a socket alive (the peer sees EOF at once).
#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <fstream>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>

#include <ringsock/ringsock.hpp>

using ringsock::io_context;
using ringsock::stream_socket;
using ringsock::task;

namespace {

/// Inodes of the sockets in the ring's table, from /proc/self/fdinfo of the ring fd
/// (lines "    N: socket:[INODE]").
std::set<ino_t> registered_inodes(io_context& ctx) {
    std::ifstream in("/proc/self/fdinfo/" + std::to_string(ctx.native_handle()->ring_fd));
    REQUIRE(in);
    std::set<ino_t> out;
    std::string line;
    while (std::getline(in, line)) {
        auto at = line.find("socket:[");
        if (at == std::string::npos) continue;
        out.insert(static_cast<ino_t>(std::stoull(line.substr(at + 8))));
    }
    return out;
}

ino_t inode_of(int fd) {
    struct stat st {};
    REQUIRE(::fstat(fd, &st) == 0);
    return st.st_ino;
}

/// `rounds` writes of 4 bytes from a to b, each read back.
/// Ping-pong: each socket alternates directions, two ring requests per round. (A run of
/// operations in one direction may be served by a direct syscall instead of the ring.)
task<void> exchange(stream_socket& a, stream_socket& b, int rounds) {
    std::array<char, 4> in{};
    for (int i = 0; i < rounds; ++i) {
        auto w = co_await a.write_all(std::string_view("ping"));
        REQUIRE(w);
        auto r = co_await b.read_exact(in);
        REQUIRE(r);
        REQUIRE(std::string_view(in.data(), in.size()) == "ping");
        auto w2 = co_await b.write_all(std::string_view("pong"));
        REQUIRE(w2);
        auto r2 = co_await a.read_exact(in);
        REQUIRE(r2);
        REQUIRE(std::string_view(in.data(), in.size()) == "pong");
    }
}

/// True if `fd`'s peer has closed: recv returns 0 at once (nothing is buffered).
bool peer_closed(int fd) {
    char c = 0;
    return ::recv(fd, &c, 1, MSG_DONTWAIT) == 0;
}

io_context::options register_after(unsigned n, unsigned slots = 1024) {
    io_context::options o;
    o.register_after = n;
    o.registered_files = slots;
    return o;
}

/// A stream pair on a context that registers at once; a few exchanges registered
/// both ends. The context is declared first, so the sockets die before it.
struct registered_pair {
    io_context ctx{register_after(1)};
    stream_socket first, second;
    ino_t first_inode = 0;
    registered_pair() {
        auto p = stream_socket::pair(ctx);
        REQUIRE(p);
        first = std::move(p->first);
        second = std::move(p->second);
        first_inode = inode_of(first.native_handle());
        ctx.sync_wait(exchange(first, second, 3));
        REQUIRE(registered_inodes(ctx).size() == 2);
    }
};

}  // namespace

TEST_CASE("registered files: a socket takes a slot only after register_after requests, then keeps working",
          "[registered_files]") {
    io_context ctx(register_after(8));
    REQUIRE(ctx.features().registered_files > 0);
    auto p = stream_socket::pair(ctx);
    REQUIRE(p);
    const ino_t a = inode_of(p->first.native_handle());
    const ino_t b = inode_of(p->second.native_handle());
    ctx.sync_wait(exchange(p->first, p->second, 3));  // 6 requests on each socket
    CHECK(registered_inodes(ctx).empty());
    ctx.sync_wait(exchange(p->first, p->second, 20));
    CHECK(registered_inodes(ctx) == std::set<ino_t>{a, b});
    ctx.sync_wait(exchange(p->second, p->first, 20));  // and in the other direction
}

TEST_CASE("registered files: closing a registered socket gives its slot back and its peer sees EOF at once, with the loop idle",
          "[registered_files]") {
    registered_pair rp;
    rp.first.close();
    CHECK(registered_inodes(rp.ctx).count(rp.first_inode) == 0);
    CHECK(registered_inodes(rp.ctx).size() == 1);
    CHECK(peer_closed(rp.second.native_handle()));
}

TEST_CASE("registered files: destroying a registered socket without close() gives its peer EOF", "[registered_files]") {
    io_context ctx(register_after(1));
    auto p = stream_socket::pair(ctx);
    REQUIRE(p);
    stream_socket peer = std::move(p->second);
    {
        stream_socket doomed = std::move(p->first);
        ctx.sync_wait(exchange(doomed, peer, 3));
        REQUIRE(registered_inodes(ctx).size() == 2);
    }
    CHECK(registered_inodes(ctx).size() == 1);  // the peer's own
    CHECK(peer_closed(peer.native_handle()));
}

TEST_CASE("registered files: release() gives the slot back and hands over a plain descriptor that works",
          "[registered_files]") {
    registered_pair rp;
    io_context& ctx = rp.ctx;
    ringsock::unique_fd plain = rp.first.release();
    CHECK(registered_inodes(ctx).count(rp.first_inode) == 0);
    CHECK(::send(plain.get(), "x", 1, MSG_NOSIGNAL) == 1);
    auto read_one = [&]() -> task<std::size_t> {
        std::array<char, 1> in{};
        auto got = co_await rp.second.read_some(in);
        REQUIRE(got);
        co_return *got;
    };
    CHECK(ctx.sync_wait(read_one()) == 1);
    plain.reset();
    CHECK(peer_closed(rp.second.native_handle()));
}

TEST_CASE("registered files: a moved socket keeps one slot, and moving onto a registered socket closes it",
          "[registered_files]") {
    io_context ctx(register_after(1));
    auto p = stream_socket::pair(ctx);
    auto q = stream_socket::pair(ctx);
    REQUIRE(p);
    REQUIRE(q);
    const ino_t pa = inode_of(p->first.native_handle());
    const ino_t qa = inode_of(q->first.native_handle());
    ctx.sync_wait(exchange(p->first, p->second, 2));
    ctx.sync_wait(exchange(q->first, q->second, 2));
    REQUIRE(registered_inodes(ctx).size() == 4);

    stream_socket moved = std::move(p->first);
    CHECK(registered_inodes(ctx).size() == 4);
    ctx.sync_wait(exchange(moved, p->second, 2));  // still the same socket, still registered
    CHECK(registered_inodes(ctx).count(pa) == 1);

    moved = std::move(q->first);  // p's first end is closed here
    CHECK(registered_inodes(ctx).count(pa) == 0);
    CHECK(registered_inodes(ctx).count(qa) == 1);
    CHECK(peer_closed(p->second.native_handle()));
    ctx.sync_wait(exchange(moved, q->second, 2));
}

TEST_CASE("registered files: close() cancels a read in flight on a registered socket", "[registered_files]") {
    registered_pair rp;
    io_context& ctx = rp.ctx;
    auto run = [&]() -> task<void> {
        auto closer = [&]() -> task<void> {
            co_await ctx.yield();
            co_await ctx.yield();  // the read is in flight by now
            rp.first.close();
        };
        ctx.spawn(closer());
        std::array<char, 8> buf{};
        auto r = co_await rp.first.read_some(buf);
        REQUIRE_FALSE(r);
        CHECK(r.error() == std::errc::operation_canceled);
    };
    ctx.sync_wait(run());
    CHECK(registered_inodes(ctx).size() == 1);
}

TEST_CASE("registered files: with every slot taken, further sockets work on plain descriptors", "[registered_files]") {
    io_context ctx(register_after(1, 2));
    REQUIRE(ctx.features().registered_files == 2);
    auto p = stream_socket::pair(ctx);
    auto q = stream_socket::pair(ctx);
    REQUIRE(p);
    REQUIRE(q);
    ctx.sync_wait(exchange(p->first, p->second, 3));
    ctx.sync_wait(exchange(q->first, q->second, 3));
    ctx.sync_wait(exchange(q->second, q->first, 3));
    CHECK(registered_inodes(ctx).size() == 2);
    p->first.close();
    p->second.close();
    CHECK(registered_inodes(ctx).empty());
    ctx.sync_wait(exchange(q->first, q->second, 3));  // the freed slots are taken again
    CHECK(registered_inodes(ctx).size() == 2);
}

TEST_CASE("registered files: registered_files = 0 turns registration off", "[registered_files]") {
    io_context ctx(register_after(1, 0));
    CHECK(ctx.features().registered_files == 0);
    auto p = stream_socket::pair(ctx);
    REQUIRE(p);
    ctx.sync_wait(exchange(p->first, p->second, 5));
    CHECK(registered_inodes(ctx).empty());
}

TEST_CASE("registered files: message sockets register too and their peers see the close",
          "[registered_files]") {
    io_context ctx(register_after(1));
    auto p = ringsock::seqpacket_socket::pair(ctx);
    REQUIRE(p);
    auto run = [&]() -> task<void> {
        // Both ways: each end receives on the ring (a lone send may go direct).
        std::array<char, 8> buf{};
        for (int i = 0; i < 3; ++i) {
            auto s = co_await p->first.send(std::string_view("msg"));
            REQUIRE(s);
            auto r = co_await p->second.receive_bytes(buf);
            REQUIRE(r);
            CHECK(*r == 3);
            auto s2 = co_await p->second.send(std::string_view("answer"));
            REQUIRE(s2);
            auto r2 = co_await p->first.receive_bytes(buf);
            REQUIRE(r2);
            CHECK(*r2 == 6);
        }
    };
    ctx.sync_wait(run());
    CHECK(registered_inodes(ctx).size() == 2);
    p->first.close();
    CHECK(registered_inodes(ctx).size() == 1);
    CHECK(peer_closed(p->second.native_handle()));
}

TEST_CASE("a receive still waiting to be submitted when its socket closes ends with operation_canceled and never reads the descriptor's next owner",
          "[registered_files]") {
    // The read is queued for the end of the turn; the closer runs in the same turn,
    // closes the socket and opens a new pair that reuses the descriptor number.
    io_context ctx;
    auto p = stream_socket::pair(ctx);
    REQUIRE(p);
    const int old_fd = p->first.native_handle();
    std::optional<std::pair<stream_socket, stream_socket>> next;
    bool reader_done = false;
    auto reader = [&]() -> task<void> {
        std::array<char, 8> buf{};
        auto r = co_await p->first.read_some(buf);
        REQUIRE_FALSE(r);
        CHECK(r.error() == std::errc::operation_canceled);
        reader_done = true;
    };
    auto closer = [&]() -> task<void> {
        p->first.close();
        auto q = stream_socket::pair(ctx);
        REQUIRE(q);
        next.emplace(std::move(*q));
        // Data waiting on whichever new socket took the old number.
        stream_socket& same = next->first.native_handle() == old_fd ? next->first : next->second;
        stream_socket& other = &same == &next->first ? next->second : next->first;
        CHECK(::send(other.native_handle(), "x", 1, MSG_NOSIGNAL) == 1);
        co_return;
    };
    ctx.spawn(reader());
    ctx.spawn(closer());
    ctx.run();
    CHECK(reader_done);
    REQUIRE(next);
    CHECK((next->first.native_handle() == old_fd || next->second.native_handle() == old_fd));
    stream_socket& same = next->first.native_handle() == old_fd ? next->first : next->second;
    char c = 0;
    CHECK(::recv(same.native_handle(), &c, 1, MSG_DONTWAIT) == 1);  // the byte is still there
    CHECK(c == 'x');
}

TEST_CASE("registered files: a socket that outlives its io_context (a misuse) still closes cleanly and its peer gets EOF",
          "[registered_files]") {
    std::optional<stream_socket> survivor;
    ringsock::unique_fd peer;
    {
        registered_pair rp;
        peer = rp.second.release();
        survivor.emplace(std::move(rp.first));
    }  // the context goes first, with survivor still registered
    survivor->close();
    pollfd pfd{peer.get(), POLLIN, 0};
    REQUIRE(::poll(&pfd, 1, 5000) == 1);  // the ring's teardown may drop its reference a moment later
    CHECK(peer_closed(peer.get()));
}
