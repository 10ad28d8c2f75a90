// datagram_socket: boundaries, truncation, sender addresses (bound, abstract and
// unbound senders), connected use, socketpair, and the socket-file rules of bind().
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <ringsock/ringsock.hpp>

#include "support/fd_count.hpp"
#include "support/full_receiver.hpp"
#include "support/submission_count.hpp"

using namespace std::chrono_literals;
using ringsock::datagram_socket;
using ringsock::endpoint;
using ringsock::io_context;
using ringsock::task;
using ringsock::test::full_receiver;

namespace {

struct temp_dir {
    std::string path;
    temp_dir() {
        char tmpl[] = "/tmp/ringsock-dgram-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~temp_dir() {
        for (const char* n : {"/server.sock", "/client.sock"}) ::unlink((path + n).c_str());
        ::rmdir(path.c_str());
    }
    std::string file(const char* name) const { return path + "/" + name; }
};

endpoint unique_abstract(const char* tag) {
    return endpoint::abstract(std::string("ringsock-test-dgram-") + tag + "-" + std::to_string(::getpid())).value();
}

}  // namespace

TEST_CASE("datagram_socket: each datagram is received whole and separately, with the sender's path", "[datagram_socket]") {
    io_context ctx;
    temp_dir dir;
    auto server_ep = endpoint::path(dir.file("server.sock")).value();
    auto client_ep = endpoint::path(dir.file("client.sock")).value();
    auto server = datagram_socket::bind(ctx, server_ep);
    REQUIRE(server);
    auto client = datagram_socket::bind(ctx, client_ep);
    REQUIRE(client);
    auto run = [&]() -> task<void> {
        for (std::string_view m : {"one", "two!", "three"}) {
            auto s = co_await client->send_to(m, server_ep);
            REQUIRE(s);
            CHECK(*s == m.size());
        }
        std::array<char, 64> buf{};
        for (std::string_view m : {"one", "two!", "three"}) {
            auto r = co_await server->receive_from(buf);
            REQUIRE(r);
            CHECK(std::string_view(buf.data(), r->bytes) == m);
            CHECK(r->sender.is_path());
            CHECK(r->sender.path_name() == dir.file("client.sock"));
        }
        // The server answers to the address it saw.
        auto r = co_await server->send_to(std::string_view("ack"), client_ep);
        REQUIRE(r);
        auto back = co_await client->receive_from(buf);
        REQUIRE(back);
        CHECK(std::string_view(buf.data(), back->bytes) == "ack");
        CHECK(back->sender == server_ep);
    };
    ctx.sync_wait(run());
}

TEST_CASE("datagram_socket: an unbound sender appears as an unnamed endpoint, an abstract one by its name", "[datagram_socket]") {
    io_context ctx;
    auto server_ep = unique_abstract("server");
    auto server = datagram_socket::bind(ctx, server_ep);
    REQUIRE(server);
    auto unbound = datagram_socket::open(ctx);
    REQUIRE(unbound);
    auto named_ep = unique_abstract("client");
    auto named = datagram_socket::bind(ctx, named_ep);
    REQUIRE(named);
    auto run = [&]() -> task<void> {
        auto s1 = co_await unbound->send_to(std::string_view("anon"), server_ep);
        REQUIRE(s1);
        auto s2 = co_await named->send_to(std::string_view("named"), server_ep);
        REQUIRE(s2);
        std::array<char, 64> buf{};
        auto r1 = co_await server->receive_from(buf);
        REQUIRE(r1);
        CHECK(std::string_view(buf.data(), r1->bytes) == "anon");
        CHECK(r1->sender.is_unnamed());
        CHECK(r1->sender.to_string() == "(unnamed)");
        auto r2 = co_await server->receive_from(buf);
        REQUIRE(r2);
        CHECK(r2->sender.is_abstract());
        CHECK(r2->sender == named_ep);
    };
    ctx.sync_wait(run());
}

TEST_CASE("datagram_socket: a datagram longer than the buffer is message_truncated with the part that fit, and the next is intact",
          "[datagram_socket]") {
    io_context ctx;
    auto pr = datagram_socket::pair(ctx);
    REQUIRE(pr);
    auto run = [&]() -> task<void> {
        auto s1 = co_await pr->first.send(std::string_view("0123456789"));
        REQUIRE(s1);
        auto s2 = co_await pr->first.send(std::string_view("ok"));
        REQUIRE(s2);
        std::array<char, 4> small{};
        auto r = co_await pr->second.receive(small);
        REQUIRE_FALSE(r);
        CHECK(r.error() == ringsock::errc::message_truncated);
        CHECK(r.partial_value().bytes == 4);
        CHECK(r.partial_value().full_size == 10);
        CHECK(std::string_view(small.data(), 4) == "0123");
        auto r2 = co_await pr->second.receive(small);
        REQUIRE(r2);
        CHECK(r2->bytes == 2);
        CHECK(std::string_view(small.data(), 2) == "ok");
    };
    ctx.sync_wait(run());
}

TEST_CASE("datagram_socket: an empty datagram is received as 0 bytes without error", "[datagram_socket]") {
    io_context ctx;
    auto pr = datagram_socket::pair(ctx);
    REQUIRE(pr);
    auto run = [&]() -> task<void> {
        auto s = co_await pr->first.send(std::string_view(""));
        REQUIRE(s);
        std::array<char, 8> buf{};
        auto r = co_await pr->second.receive(buf);
        REQUIRE(r);
        CHECK(r->bytes == 0);
        CHECK(r->full_size == 0);
    };
    ctx.sync_wait(run());
}

TEST_CASE("datagram_socket: connect sets the default destination, and sending to nobody fails with ECONNREFUSED or ENOENT",
          "[datagram_socket]") {
    io_context ctx;
    auto server_ep = unique_abstract("connected");
    auto server = datagram_socket::bind(ctx, server_ep);
    REQUIRE(server);
    auto client = datagram_socket::open(ctx);
    REQUIRE(client);
    REQUIRE(client->connect(server_ep));
    temp_dir dir;
    auto run = [&]() -> task<void> {
        auto s = co_await client->send(std::string_view("hi"));
        REQUIRE(s);
        std::array<char, 8> buf{};
        auto r = co_await server->receive(buf);
        REQUIRE(r);
        CHECK(std::string_view(buf.data(), r->bytes) == "hi");
        auto nobody = co_await client->send_to(std::string_view("x"), unique_abstract("nobody"));
        REQUIRE_FALSE(nobody);
        CHECK(nobody.error() == std::errc::connection_refused);
        auto missing = co_await client->send_to(std::string_view("x"), endpoint::path(dir.file("none")).value());
        REQUIRE_FALSE(missing);
        CHECK(missing.error() == std::errc::no_such_file_or_directory);
    };
    ctx.sync_wait(run());
    auto bad = client->connect(unique_abstract("nobody"));
    REQUIRE_FALSE(bad);
    CHECK(bad.error() == std::errc::connection_refused);
}

TEST_CASE("datagram_socket: receive_from and receive_bytes on an idle socket end with timed_out, and close() cancels a waiting receive",
          "[datagram_socket]") {
    io_context ctx;
    auto s = datagram_socket::bind(ctx, endpoint::autobind());
    REQUIRE(s);
    auto local = s->local_endpoint();
    REQUIRE(local);
    CHECK(local->is_abstract());  // autobind picked a name
    auto run = [&]() -> task<void> {
        std::array<char, 8> buf{};
        auto r = co_await s->receive_from(buf, 20ms);
        REQUIRE_FALSE(r);
        CHECK(r.error() == std::errc::timed_out);
        auto rb = co_await s->receive_bytes(buf, 20ms);
        REQUIRE_FALSE(rb);
        CHECK(rb.error() == std::errc::timed_out);
        auto closer = [&]() -> task<void> {
            co_await ctx.yield();
            s->close();
        };
        ctx.spawn(closer());
        auto r2 = co_await s->receive_bytes(buf);  // receive()'s cancel: test_seqpacket_socket
        REQUIRE_FALSE(r2);
        CHECK(r2.error() == std::errc::operation_canceled);
    };
    ctx.sync_wait(run());
}

TEST_CASE("datagram_socket: bind applies the mode from the start, replaces a stale file, refuses a live one, and close removes only its own file",
          "[datagram_socket]") {
    io_context ctx;
    temp_dir dir;
    const std::string path = dir.file("server.sock");
    auto ep = endpoint::path(path).value();
    {
        int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        REQUIRE(::bind(fd, ep.data(), ep.size()) == 0);
        ::close(fd);  // stale
    }
    ringsock::datagram_options opts;
    opts.mode = 0660;
    auto s = datagram_socket::bind(ctx, ep, opts);
    REQUIRE(s);
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 07777) == 0660);

    auto live = datagram_socket::bind(ctx, ep);
    REQUIRE_FALSE(live);
    CHECK(live.error() == std::errc::address_in_use);

    // Someone replaces our file with theirs: our close must not remove it.
    REQUIRE(::unlink(path.c_str()) == 0);
    auto successor = datagram_socket::bind(ctx, ep);
    REQUIRE(successor);
    s->close();
    CHECK(::lstat(path.c_str(), &st) == 0);
    successor->close();
    CHECK(::lstat(path.c_str(), &st) == -1);
}

TEST_CASE("datagram_socket: bind on a path that is not a socket is path_not_a_socket and leaves the file alone", "[datagram_socket]") {
    io_context ctx;
    temp_dir dir;
    const std::string path = dir.file("server.sock");
    { std::ofstream(path) << "keep"; }
    auto s = datagram_socket::bind(ctx, endpoint::path(path).value());
    REQUIRE_FALSE(s);
    CHECK(s.error() == ringsock::errc::path_not_a_socket);
    std::ifstream in(path);
    std::string content;
    in >> content;
    CHECK(content == "keep");
}

TEST_CASE("datagram_socket: a full receiver makes send wait, and a time limit ends the wait with timed_out", "[datagram_socket]") {
    io_context ctx;
    auto pr = datagram_socket::pair(ctx);
    REQUIRE(pr);
    auto run = [&]() -> task<void> {
        std::array<char, 64> payload{};
        for (int i = 0; i < 10000; ++i) {
            auto s = co_await pr->first.send(payload, 50ms);
            if (!s) {
                CHECK(s.error() == std::errc::timed_out);
                co_return;
            }
        }
        FAIL("10000 datagrams never filled the receiver");
    };
    ctx.sync_wait(run());
}

TEST_CASE("datagram_socket: receive_bytes returns one whole datagram per call and reports a longer one as message_truncated",
          "[datagram_socket]") {
    io_context ctx;
    auto pr = datagram_socket::pair(ctx);
    REQUIRE(pr);
    auto run = [&]() -> task<void> {
        for (std::string_view m : {"0123456789", "", "ok"}) {
            auto s = co_await pr->first.send(m);
            REQUIRE(s);
            CHECK(*s == m.size());
        }
        std::array<char, 4> small{};
        auto r = co_await pr->second.receive_bytes(small);
        REQUIRE_FALSE(r);
        CHECK(r.error() == ringsock::errc::message_truncated);
        CHECK(r.partial_value() == 4);
        CHECK(std::string_view(small.data(), 4) == "0123");
        auto empty = co_await pr->second.receive_bytes(small);
        REQUIRE(empty);
        CHECK(*empty == 0);
        auto r2 = co_await pr->second.receive_bytes(small);
        REQUIRE(r2);
        CHECK(std::string_view(small.data(), *r2) == "ok");
    };
    ctx.sync_wait(run());
}

TEST_CASE("datagram_socket: receive_bytes takes datagrams from unbound senders, and descriptors attached to them are released by the kernel",
          "[datagram_socket]") {
    io_context ctx;
    auto ep = unique_abstract("bytes");
    auto server = datagram_socket::bind(ctx, ep);
    REQUIRE(server);
    auto client = datagram_socket::open(ctx);
    REQUIRE(client);
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    ringsock::unique_fd rd(p[0]), wr(p[1]);
    const std::size_t before = ringsock::test::open_fd_count();
    auto run = [&]() -> task<void> {
        auto s = co_await client->send_fds_to(std::string_view("hello"), wr, ep);
        REQUIRE(s);
        std::array<char, 16> buf{};
        auto r = co_await server->receive_bytes(buf);
        REQUIRE(r);
        CHECK(std::string_view(buf.data(), *r) == "hello");
    };
    ctx.sync_wait(run());
    CHECK(ringsock::test::open_fd_count() == before);
    wr.reset();
    char c = 0;
    CHECK(::read(rd.get(), &c, 1) == 0);  // no copy of the write end survives anywhere
}

TEST_CASE("datagram_socket: a send connected one way to a full receiver waits for room and delivers the datagram and its descriptor whole",
          "[datagram_socket]") {
    const auto fds_before = ringsock::test::open_fd_count();
    {
        io_context ctx;
        full_receiver full(ctx, "oneway");
        auto s = datagram_socket::open(ctx);
        REQUIRE(s);
        REQUIRE(s->connect(full.ep));
        int p[2];
        REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
        ringsock::unique_fd pipe_r(p[0]), pipe_w(p[1]);
        ringsock::io_result<std::size_t> sent{0};
        std::vector<std::size_t> lengths;
        std::uint32_t last = 0;
        std::size_t last_fds = 0;
        auto sender = [&]() -> task<void> {
            const std::uint32_t v = 42;
            std::array<int, 1> fds{pipe_w.get()};
            sent = co_await s->send_fds(std::as_bytes(std::span(&v, 1)), fds);
        };
        auto drainer = [&]() -> task<void> {
            auto slept = co_await ringsock::sleep_for(ctx, 20ms);  // the send is waiting by now
            REQUIRE(slept);
            for (int i = 0; i <= full.queued; ++i) {
                std::array<std::uint32_t, 1> m{};
                auto got = co_await full.r.receive(std::as_writable_bytes(std::span(m)));
                REQUIRE(got);
                lengths.push_back(got->bytes);
                last = m[0];
                last_fds = got->fds.size();
            }
        };
        ctx.sync_wait([&]() -> task<void> { (void)co_await ringsock::when_all(sender(), drainer()); }());
        REQUIRE(sent);
        CHECK(*sent == 4);
        REQUIRE(lengths.size() == static_cast<std::size_t>(full.queued) + 1);
        CHECK(lengths.back() == 4);  // never an empty datagram in its place
        CHECK(last == 42);
        CHECK(last_fds == 1);
        CHECK(full.drain().empty());
    }
    CHECK(ringsock::test::open_fd_count() == fds_before);
}

TEST_CASE("datagram_socket: a send_to that times out waiting for a full receiver sends nothing, then or later",
          "[datagram_socket]") {
    io_context ctx;
    full_receiver full(ctx, "timeout");
    auto s = datagram_socket::open(ctx);
    REQUIRE(s);
    auto run = [&]() -> task<void> {
        const std::uint32_t v = 42;
        auto w = co_await s->send_to(std::as_bytes(std::span(&v, 1)), full.ep, 30ms);
        REQUIRE_FALSE(w);
        CHECK(w.error() == std::errc::timed_out);
        CHECK(w.partial_value() == 0);
        const auto lengths = full.drain();  // room now: a retry left behind would send
        CHECK(lengths.size() == static_cast<std::size_t>(full.queued));
        auto slept = co_await ringsock::sleep_for(ctx, 30ms);
        REQUIRE(slept);
    };
    ctx.sync_wait(run());
    CHECK(full.drain().empty());
}

TEST_CASE("datagram_socket: closing a socket whose send_to waits for a full receiver ends it with operation_canceled and sends nothing",
          "[datagram_socket]") {
    const auto fds_before = ringsock::test::open_fd_count();
    {
        io_context ctx;
        full_receiver full(ctx, "close");
        auto s = datagram_socket::open(ctx);
        REQUIRE(s);
        ringsock::io_result<std::size_t> sent{0};
        auto sender = [&]() -> task<void> {
            const std::uint32_t v = 42;
            sent = co_await s->send_to(std::as_bytes(std::span(&v, 1)), full.ep);
        };
        auto closer = [&]() -> task<void> {
            auto slept = co_await ringsock::sleep_for(ctx, 20ms);
            REQUIRE(slept);
            s->close();
        };
        ctx.sync_wait([&]() -> task<void> { (void)co_await ringsock::when_all(sender(), closer()); }());
        REQUIRE_FALSE(sent);
        CHECK(sent.error() == std::errc::operation_canceled);
        CHECK(full.drain().size() == static_cast<std::size_t>(full.queued));
    }
    CHECK(ringsock::test::open_fd_count() == fds_before);
}

TEST_CASE("datagram_socket: a connected send that loses freed room to another sender waits on its poll again, not on timers",
          "[datagram_socket]") {
    io_context ctx;
    full_receiver full(ctx, "lost-room");
    auto s1 = datagram_socket::open(ctx);
    auto s2 = datagram_socket::open(ctx);
    REQUIRE(s1);
    REQUIRE(s2);
    REQUIRE(s1->connect(full.ep));
    REQUIRE(s2->connect(full.ep));
    ringsock::io_result<std::size_t> sent1{0}, sent2{0};
    unsigned submitted = 0;
    auto send1 = [&]() -> task<void> {
        const std::uint32_t v = 1;
        sent1 = co_await s1->send(std::as_bytes(std::span(&v, 1)));
    };
    auto send2 = [&]() -> task<void> {
        const std::uint32_t v = 2;
        sent2 = co_await s2->send(std::as_bytes(std::span(&v, 1)));
    };
    auto driver = [&]() -> task<void> {
        auto slept = co_await ringsock::sleep_for(ctx, 20ms);  // both sends wait in their polls
        REQUIRE(slept);
        std::uint32_t v = 0;
        REQUIRE(::recv(full.r.native_handle(), &v, sizeof v, MSG_DONTWAIT) == 4);  // room for one
        // Both polls fire; one send takes the room, the other finds none. What the loser
        // submits while the receiver stays full: one poll, or a timer every few ms.
        const unsigned before = ringsock::test::settled_sq_tail(ctx);
        auto slept2 = co_await ringsock::sleep_for(ctx, 100ms);
        REQUIRE(slept2);
        submitted = ringsock::test::sq_tail(ctx) - before;
        CHECK(full.drain().size() == static_cast<std::size_t>(full.queued));  // room for the loser
    };
    ctx.sync_wait([&]() -> task<void> { (void)co_await ringsock::when_all(send1(), send2(), driver()); }());
    CHECK(submitted <= 3);  // this sleep's timer and the loser's poll (a TIMEOUT backoff: ~25)
    REQUIRE(sent1);
    REQUIRE(sent2);
    const auto rest = full.drain();
    REQUIRE(rest.size() == 1);  // one went into the room, the other after the drain
    CHECK(rest[0].len == 4);
}
