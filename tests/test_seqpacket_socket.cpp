// seqpacket_socket and seqpacket_acceptor: whole messages in, whole messages out,
// truncation reported, and the listener's socket-file rules.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <fstream>
#include <string>
#include <string_view>

#include <ringsock/ringsock.hpp>

#include "support/fd_count.hpp"

using namespace std::chrono_literals;
using ringsock::endpoint;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::seqpacket_acceptor;
using ringsock::seqpacket_socket;
using ringsock::task;

namespace {

struct temp_dir {
    std::string path;
    temp_dir() {
        char tmpl[] = "/tmp/ringsock-seqpacket-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~temp_dir() {
        for (const char* n : {"/s.sock", "/file"}) ::unlink((path + n).c_str());
        ::rmdir(path.c_str());
    }
    std::string sock() const { return path + "/s.sock"; }
};

endpoint unique_abstract(const char* tag) {
    return endpoint::abstract(std::string("ringsock-test-seqpacket-") + tag + "-" + std::to_string(::getpid())).value();
}

std::string_view text(const std::array<char, 64>& buf, std::size_t n) { return {buf.data(), n}; }

}  // namespace

TEST_CASE("seqpacket_socket: a connection through an acceptor keeps message boundaries in both directions",
          "[seqpacket_socket]") {
    io_context ctx;
    auto ep = unique_abstract("bounds");
    auto acc = seqpacket_acceptor::listen(ctx, ep);
    REQUIRE(acc);
    auto run = [&]() -> task<void> {
        auto client = co_await seqpacket_socket::connect(ctx, ep);
        REQUIRE(client);
        auto server = co_await acc->accept();
        REQUIRE(server);
        for (std::string_view m : {"a", "bb", "ccc"}) {
            auto s = co_await client->send(m);
            REQUIRE(s);
            CHECK(*s == m.size());
        }
        std::array<char, 64> buf{};
        for (std::string_view m : {"a", "bb", "ccc"}) {
            auto r = co_await server->receive(buf);
            REQUIRE(r);
            CHECK(text(buf, r->bytes) == m);
            CHECK(r->full_size == m.size());
            CHECK(r->fds.empty());
        }
        auto back = co_await server->send(std::string_view("reply"));
        REQUIRE(back);
        auto r = co_await client->receive(buf);
        REQUIRE(r);
        CHECK(text(buf, r->bytes) == "reply");
    };
    ctx.sync_wait(run());
}

TEST_CASE("seqpacket_socket: a message longer than the buffer is message_truncated with the part that fit, and the next message is intact",
          "[seqpacket_socket]") {
    io_context ctx;
    auto pr = seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    auto run = [&]() -> task<void> {
        auto s1 = co_await pr->first.send(std::string_view("0123456789"));
        REQUIRE(s1);
        auto s2 = co_await pr->first.send(std::string_view("next"));
        REQUIRE(s2);
        std::array<char, 4> small{};
        auto r = co_await pr->second.receive(small);
        REQUIRE_FALSE(r);
        CHECK(r.error() == ringsock::errc::message_truncated);
        CHECK(r.partial_value().bytes == 4);
        CHECK(r.partial_value().full_size == 10);
        CHECK((r.partial_value().flags & MSG_TRUNC) != 0);
        CHECK(std::string_view(small.data(), 4) == "0123");
        auto r2 = co_await pr->second.receive(small);
        REQUIRE(r2);
        CHECK(r2->bytes == 4);
        CHECK(std::string_view(small.data(), 4) == "next");
        // receive_bytes (a plain recv with MSG_TRUNC) reports the same way.
        auto s3 = co_await pr->first.send(std::string_view("abcdefgh"));
        REQUIRE(s3);
        auto b = co_await pr->second.receive_bytes(small);
        REQUIRE_FALSE(b);
        CHECK(b.error() == ringsock::errc::message_truncated);
        CHECK(b.partial_value() == 4);
        CHECK(std::string_view(small.data(), 4) == "abcd");
        CHECK(std::string(b.what()).find("receive_bytes") != std::string::npos);
    };
    ctx.sync_wait(run());
}

TEST_CASE("seqpacket_socket: receive returns 0 bytes after the peer closes, and send then fails with EPIPE without SIGPIPE",
          "[seqpacket_socket]") {
    io_context ctx;
    auto pr = seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    pr->first.close();
    auto run = [&]() -> task<void> {
        std::array<char, 64> buf{};
        auto r = co_await pr->second.receive(buf);
        REQUIRE(r);
        CHECK(r->bytes == 0);
        auto s = co_await pr->second.send(std::string_view("x"));
        REQUIRE_FALSE(s);
        CHECK(s.error() == std::errc::broken_pipe);
    };
    ctx.sync_wait(run());
}

TEST_CASE("seqpacket_socket: a receive waiting on an idle socket ends with timed_out, and close() cancels a waiting receive",
          "[seqpacket_socket]") {
    io_context ctx;
    auto pr = seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    auto run = [&]() -> task<void> {
        std::array<char, 64> buf{};
        auto r = co_await pr->second.receive(buf, 20ms);
        REQUIRE_FALSE(r);
        CHECK(r.error() == std::errc::timed_out);
        auto rb = co_await pr->second.receive_bytes(buf, 20ms);
        REQUIRE_FALSE(rb);
        CHECK(rb.error() == std::errc::timed_out);
        auto closer = [&]() -> task<void> {
            co_await ctx.yield();
            pr->second.close();
        };
        ctx.spawn(closer());
        auto r2 = co_await pr->second.receive(buf);
        REQUIRE_FALSE(r2);
        CHECK(r2.error() == std::errc::operation_canceled);
    };
    ctx.sync_wait(run());
}

TEST_CASE("seqpacket_socket: accept with a time limit on an idle listener ends with timed_out", "[seqpacket_socket]") {
    io_context ctx;
    auto acc = seqpacket_acceptor::listen(ctx, unique_abstract("accept-timeout"));
    REQUIRE(acc);
    auto run = [&]() -> task<void> {
        auto s = co_await acc->accept(20ms);
        REQUIRE_FALSE(s);
        CHECK(s.error() == std::errc::timed_out);
    };
    ctx.sync_wait(run());
}

TEST_CASE("seqpacket_socket: a stream client cannot connect to a seqpacket listener (ECONNREFUSED)", "[seqpacket_socket]") {
    io_context ctx;
    auto ep = unique_abstract("prototype");
    auto acc = seqpacket_acceptor::listen(ctx, ep);
    REQUIRE(acc);
    auto run = [&]() -> task<void> {
        auto s = co_await ringsock::stream_socket::connect(ctx, ep);
        REQUIRE_FALSE(s);
        CHECK(s.error() == std::errc::connection_refused);
    };
    ctx.sync_wait(run());
}

TEST_CASE("seqpacket_acceptor: the socket file has the requested mode, a stale file is replaced, a live one is EADDRINUSE, and close removes it",
          "[seqpacket_socket]") {
    io_context ctx;
    temp_dir dir;
    auto ep = endpoint::path(dir.sock()).value();
    {
        // A crashed server's file: bound, never unlinked.
        int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        REQUIRE(::bind(fd, ep.data(), ep.size()) == 0);
        ::close(fd);
    }
    ringsock::listen_options opts;
    opts.mode = 0640;
    auto acc = seqpacket_acceptor::listen(ctx, ep, opts);
    REQUIRE(acc);
    struct stat st {};
    REQUIRE(::lstat(dir.sock().c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 07777) == 0640);

    auto second = seqpacket_acceptor::listen(ctx, ep);
    REQUIRE_FALSE(second);
    CHECK(second.error() == std::errc::address_in_use);

    acc->close();
    CHECK(::lstat(dir.sock().c_str(), &st) == -1);
}

TEST_CASE("seqpacket_acceptor: a path that is not a socket is path_not_a_socket and left untouched", "[seqpacket_socket]") {
    io_context ctx;
    temp_dir dir;
    { std::ofstream(dir.sock()) << "precious"; }
    auto acc = seqpacket_acceptor::listen(ctx, endpoint::path(dir.sock()).value());
    REQUIRE_FALSE(acc);
    CHECK(acc.error() == ringsock::errc::path_not_a_socket);
    std::ifstream in(dir.sock());
    std::string content;
    in >> content;
    CHECK(content == "precious");
}

TEST_CASE("seqpacket_socket: an empty message is delivered as 0 bytes with its descriptors", "[seqpacket_socket]") {
    io_context ctx;
    auto pr = seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    ringsock::unique_fd r(p[0]), w(p[1]);
    auto run = [&]() -> task<void> {
        auto s = co_await pr->first.send_fds(std::string_view(""), w);
        REQUIRE(s);
        CHECK(*s == 0);
        std::array<char, 8> buf{};
        auto m = co_await pr->second.receive(buf);
        REQUIRE(m);
        CHECK(m->bytes == 0);
        CHECK(m->fds.size() == 1);
    };
    ctx.sync_wait(run());
}

TEST_CASE("seqpacket_socket: receive_bytes returns one whole message per call, empty messages included",
          "[seqpacket_socket]") {
    io_context ctx;
    auto pr = seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    auto run = [&]() -> task<void> {
        for (std::string_view m : {"first", "", "third message"}) {
            auto s = co_await pr->first.send(m);
            REQUIRE(s);
            CHECK(*s == m.size());
        }
        std::array<char, 64> buf{};
        for (std::string_view m : {"first", "", "third message"}) {
            auto r = co_await pr->second.receive_bytes(buf);
            REQUIRE(r);
            CHECK(text(buf, *r) == m);
        }
    };
    ctx.sync_wait(run());
}

TEST_CASE("seqpacket_socket: descriptors attached to a message read with receive_bytes are released by the kernel, none installed here",
          "[seqpacket_socket]") {
    io_context ctx;
    auto pr = seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    ringsock::unique_fd rd(p[0]), wr(p[1]);
    const std::size_t before = ringsock::test::open_fd_count();
    auto run = [&]() -> task<void> {
        auto s = co_await pr->first.send_fds(std::string_view("with fd"), wr);
        REQUIRE(s);
        std::array<char, 64> buf{};
        auto r = co_await pr->second.receive_bytes(buf);
        REQUIRE(r);
        CHECK(text(buf, *r) == "with fd");
    };
    ctx.sync_wait(run());
    CHECK(ringsock::test::open_fd_count() == before);
    // If any copy of the write end were still open, this read would block, not see EOF.
    wr.reset();
    char c = 0;
    CHECK(::read(rd.get(), &c, 1) == 0);
}
