// Hostile cases for the message receive fast path (recv_msg_op: no parse_control when
// no control data came; the plain result built in place; the received_message made
// only on first use), whole-message sends, and endpoint's default constructor that no
// longer zeroes sun_path.
#include <catch2/catch.hpp>

#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cstddef>
#include <cstring>
#include <new>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include <ringsock/ringsock.hpp>

#include "support/fd_count.hpp"
#include "support/fork_child.hpp"
#include "support/leak_guard.hpp"
#include "support/raw_fds.hpp"
#include "support/turn_support.hpp"

using namespace std::chrono_literals;
using ringsock::datagram_socket;
using ringsock::endpoint;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::received_message;
using ringsock::seqpacket_socket;
using ringsock::task;
using ringsock::unique_fd;
using ringsock::test::eventfd_value;
using ringsock::test::numbered_eventfds;
using ringsock::test::raw_pair;
using ringsock::test::raw_send_fds;
using ringsock::test::stop_when_consumed;

namespace {

std::string unique_name(const char* tag) {
    return std::string("ringsock-msg-hostile-") + tag + "-" + std::to_string(::getpid());
}

struct temp_dir {
    std::string path;
    temp_dir() {
        char tmpl[] = "/tmp/ringsock-mrh-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~temp_dir() {
        for (const char* n : {"/server.sock", "/a-rather-long-client-socket-name-that-fills-much-of-sun-path.sock", "/c.sock",
                              "/x.sock"})
            ::unlink((path + n).c_str());
        ::rmdir(path.c_str());
    }
    std::string file(const char* name) const { return path + "/" + name; }
};

// Fills a chunk of the stack with 0xAB so that locals made afterwards (in the callee's
// frame) start over garbage.
[[gnu::noinline]] void scribble_stack() {
    volatile unsigned char junk[4096];
    for (std::size_t i = 0; i < sizeof junk; ++i) junk[i] = 0xAB;
    (void)junk[17];
}

}  // namespace

// ---------------------------------------------------------------------------------
// recv_msg_op fast path vs control data
// ---------------------------------------------------------------------------------

TEST_CASE("message receive: plain and descriptor-carrying messages alternate on one socket, each with exactly its own descriptors",
          "[message_receive_hostile]") {
    const int type = GENERATE(SOCK_SEQPACKET, SOCK_DGRAM);
    CAPTURE(type);
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    raw_pair sp(type);
    auto efds = numbered_eventfds(3);
    auto body = [&]() -> task<void> {
        std::array<char, 32> buf{};
        auto do_recv = [&](std::size_t max_fds) -> task<io_result<received_message>> {
            if (type == SOCK_SEQPACKET) {
                seqpacket_socket s(ctx, unique_fd(::dup(sp.a.get())));
                co_return co_await s.receive(buf, max_fds, 5s);
            }
            datagram_socket s(ctx, unique_fd(::dup(sp.a.get())));
            co_return co_await s.receive(buf, max_fds, 5s);
        };
        auto do_recv_into = [&](std::span<char> b) -> task<io_result<received_message>> {
            if (type == SOCK_SEQPACKET) {
                seqpacket_socket s(ctx, unique_fd(::dup(sp.a.get())));
                co_return co_await s.receive(b, 5s);
            }
            datagram_socket s(ctx, unique_fd(::dup(sp.a.get())));
            co_return co_await s.receive(b, 5s);
        };
        for (int round = 0; round < 3; ++round) {
            // plain
            REQUIRE(raw_send_fds(sp.b.get(), "plain", nullptr, 0));
            auto t1 = do_recv(253);
            auto r1 = co_await std::move(t1);
            REQUIRE(r1);
            CHECK(r1->bytes == 5);
            CHECK(r1->full_size == 5);
            CHECK(r1->fds.empty());
            CHECK(r1->flags == 0);
            CHECK_FALSE(r1->sender_credentials);
            CHECK_FALSE(r1->sender_pidfd.valid());
            CHECK(r1->sender.is_unnamed());
            CHECK(std::string_view(buf.data(), r1->bytes) == "plain");
            // with descriptors
            int raw[3] = {efds[0].get(), efds[1].get(), efds[2].get()};
            REQUIRE(raw_send_fds(sp.b.get(), "fds!", raw, 3));
            auto t2 = do_recv(253);
            auto r2 = co_await std::move(t2);
            REQUIRE(r2);
            CHECK(r2->bytes == 4);
            CHECK(r2->full_size == 4);
            REQUIRE(r2->fds.size() == 3);
            CHECK(ringsock::test::has_cloexec(r2->fds[0].get()));
            CHECK(r2->flags == 0);
            // eventfd counters 1,2,3 (a read resets them; write them back)
            for (std::size_t i = 0; i < 3; ++i) {
                CHECK(eventfd_value(r2->fds[i].get()) == i + 1);
                std::uint64_t v = i + 1;
                REQUIRE(::write(r2->fds[i].get(), &v, sizeof v) == sizeof v);
            }
            // empty message, plain, into a zero-length buffer
            REQUIRE(raw_send_fds(sp.b.get(), "", nullptr, 0));
            std::span<char> none(buf.data(), 0);
            auto t3 = do_recv_into(none);
            auto r3 = co_await std::move(t3);
            REQUIRE(r3);
            CHECK(r3->bytes == 0);
            CHECK(r3->full_size == 0);
            CHECK(r3->fds.empty());
        }
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}

TEST_CASE("message receive: an empty message carrying descriptors is not taken for a plain empty message",
          "[message_receive_hostile]") {
    const int type = GENERATE(SOCK_SEQPACKET, SOCK_DGRAM);
    CAPTURE(type);
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto pr = seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    auto dg = datagram_socket::pair(ctx);
    REQUIRE(dg);
    auto efd = numbered_eventfds(2);
    auto body = [&]() -> task<void> {
        std::array<char, 8> buf{};
        const int two[2] = {efd[0].get(), efd[1].get()};
        io_result<std::size_t> s{0};
        if (type == SOCK_SEQPACKET) s = co_await pr->first.send_fds(std::string_view(""), two);
        else s = co_await dg->first.send_fds(std::string_view(""), two);
        REQUIRE(s);
        CHECK(*s == 0);
        io_result<received_message> r;
        if (type == SOCK_SEQPACKET) r = co_await pr->second.receive(buf, 5s);
        else r = co_await dg->second.receive(buf, 5s);
        REQUIRE(r);
        CHECK(r->bytes == 0);
        CHECK(r->full_size == 0);
        REQUIRE(r->fds.size() == 2);
        CHECK(eventfd_value(r->fds[0].get()) == 1);
        CHECK(eventfd_value(r->fds[1].get()) == 2);
        // Into a zero-length buffer as well.
        io_result<std::size_t> s2{0};
        if (type == SOCK_SEQPACKET) s2 = co_await pr->first.send_fds(std::string_view(""), efd[0]);
        else s2 = co_await dg->first.send_fds(std::string_view(""), efd[0]);
        REQUIRE(s2);
        std::span<char> none(buf.data(), 0);
        io_result<received_message> r2;
        if (type == SOCK_SEQPACKET) r2 = co_await pr->second.receive(none, 5s);
        else r2 = co_await dg->second.receive(none, 5s);
        REQUIRE(r2);
        CHECK(r2->bytes == 0);
        CHECK(r2->fds.size() == 1);
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}

TEST_CASE("message receive: a truncated message is message_truncated with its part, full size and MSG_TRUNC, with or without descriptors",
          "[message_receive_hostile]") {
    const bool with_fds = GENERATE(false, true);
    const bool waiting = GENERATE(false, true);
    CAPTURE(with_fds, waiting);
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto pr = seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    auto efd = numbered_eventfds(1);
    auto sender = [&]() -> task<void> {
        io_result<std::size_t> s{0};
        if (with_fds) s = co_await pr->first.send_fds(std::string_view("0123456789"), efd[0]);
        else s = co_await pr->first.send(std::string_view("0123456789"));
        REQUIRE(s);
        CHECK(*s == 10);
        auto s2 = co_await pr->first.send(std::string_view("ok"));
        REQUIRE(s2);
        CHECK(*s2 == 2);
    };
    auto body = [&]() -> task<void> {
        std::array<char, 4> small{};
        if (waiting) {
            ctx.spawn(sender());
        } else {
            auto st = sender();
            co_await std::move(st);
        }
        auto r = co_await pr->second.receive(small, 5s);
        REQUIRE_FALSE(r);
        CHECK(r.error() == ringsock::errc::message_truncated);
        CHECK(r.partial_value().bytes == 4);
        CHECK(r.partial_value().full_size == 10);
        CHECK((r.partial_value().flags & MSG_TRUNC) != 0);
        CHECK(std::string_view(small.data(), 4) == "0123");
        if (with_fds) {
            REQUIRE(r.partial_value().fds.size() == 1);
            CHECK(eventfd_value(r.partial_value().fds[0].get()) == 1);
        } else {
            CHECK(r.partial_value().fds.empty());
        }
        // The next message arrives clean through the fast path.
        auto n = co_await pr->second.receive(small, 5s);
        REQUIRE(n);
        CHECK(n->bytes == 2);
        CHECK(n->full_size == 2);
        CHECK(n->flags == 0);
        CHECK(n->fds.empty());
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}

TEST_CASE("message receive: max_fds below the count sent is fds_truncated with the bytes and no leak; the next plain message is clean",
          "[message_receive_hostile]") {
    const std::size_t max_fds = GENERATE(std::size_t{0}, std::size_t{1}, std::size_t{2});
    CAPTURE(max_fds);
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto pr = datagram_socket::pair(ctx);
    REQUIRE(pr);
    auto efd = numbered_eventfds(3);
    auto body = [&]() -> task<void> {
        std::array<char, 16> buf{};
        auto s = co_await pr->first.send_fds(std::string_view("three"), efd);
        REQUIRE(s);
        auto r = co_await pr->second.receive(buf, max_fds, 5s);
        REQUIRE_FALSE(r);
        CHECK(r.error() == ringsock::errc::fds_truncated);
        CHECK(r.partial_value().bytes == 5);
        CHECK(r.partial_value().fds.empty());
        auto s2 = co_await pr->first.send(std::string_view("plain"));
        REQUIRE(s2);
        auto n = co_await pr->second.receive(buf, max_fds, 5s);
        REQUIRE(n);
        CHECK(n->bytes == 5);
        CHECK(n->flags == 0);
        CHECK(n->fds.empty());
        // Exactly max_fds descriptors still pass (none for 0: an empty set is fine).
        std::vector<int> some;
        for (std::size_t i = 0; i < max_fds; ++i) some.push_back(efd[i].get());
        auto s3 = co_await pr->first.send_fds(std::string_view("fit"), some);
        REQUIRE(s3);
        auto f = co_await pr->second.receive(buf, max_fds, 5s);
        REQUIRE(f);
        CHECK(f->fds.size() == max_fds);
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}

TEST_CASE("message receive: with pass_credentials every message, even a truncated or empty one, carries this process's credentials",
          "[message_receive_hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto pr = datagram_socket::pair(ctx);
    REQUIRE(pr);
    REQUIRE(ringsock::pass_credentials(pr->second));
    auto efd = numbered_eventfds(1);
    auto body = [&]() -> task<void> {
        std::array<char, 4> buf{};
        auto s1 = co_await pr->first.send(std::string_view("abcdefgh"));
        REQUIRE(s1);
        auto r1 = co_await pr->second.receive(buf, 5s);
        REQUIRE_FALSE(r1);
        CHECK(r1.error() == ringsock::errc::message_truncated);
        CHECK(r1.partial_value().bytes == 4);
        CHECK(r1.partial_value().full_size == 8);
        REQUIRE(r1.partial_value().sender_credentials);
        CHECK(r1.partial_value().sender_credentials->pid == ::getpid());
        CHECK(r1.partial_value().sender_credentials->uid == ::getuid());

        auto s2 = co_await pr->first.send(std::string_view(""));
        REQUIRE(s2);
        auto r2 = co_await pr->second.receive(buf, 0, 5s);  // max_fds 0: control still has room for credentials
        REQUIRE(r2);
        CHECK(r2->bytes == 0);
        REQUIRE(r2->sender_credentials);
        CHECK(r2->sender_credentials->pid == ::getpid());

        auto s3 = co_await pr->first.send_fds(std::string_view("fd"), efd[0]);
        REQUIRE(s3);
        auto r3 = co_await pr->second.receive(buf, 5s);
        REQUIRE(r3);
        CHECK(r3->fds.size() == 1);
        REQUIRE(r3->sender_credentials);
        CHECK(r3->sender_credentials->gid == ::getgid());

        // Credentials plus descriptors refused: fds_truncated, credentials still there.
        auto s4 = co_await pr->first.send_fds(std::string_view("fd"), efd[0]);
        REQUIRE(s4);
        auto r4 = co_await pr->second.receive(buf, 0, 5s);
        REQUIRE_FALSE(r4);
        CHECK(r4.error() == ringsock::errc::fds_truncated);
        CHECK(r4.partial_value().fds.empty());

        REQUIRE(ringsock::pass_credentials(pr->second, false));
        auto s5 = co_await pr->first.send(std::string_view("no"));
        REQUIRE(s5);
        auto r5 = co_await pr->second.receive(buf, 5s);
        REQUIRE(r5);
        CHECK_FALSE(r5->sender_credentials);
        CHECK(r5->flags == 0);
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}

TEST_CASE("message receive: with pass_pidfd a truncated message still hands over one pidfd, and plain messages after switching it off carry none",
          "[message_receive_hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto pr = seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    auto on = ringsock::pass_pidfd(pr->second);
    if (!on && on.error() == std::errc::not_supported) {
        WARN("SO_PASSPIDFD not supported by this kernel");
        return;
    }
    REQUIRE(on);
    auto body = [&]() -> task<void> {
        std::array<char, 2> buf{};
        auto s = co_await pr->first.send(std::string_view("whoami"));
        REQUIRE(s);
        auto r = co_await pr->second.receive(buf, 5s);
        REQUIRE_FALSE(r);
        CHECK(r.error() == ringsock::errc::message_truncated);
        CHECK(r.partial_value().sender_pidfd.valid());
        CHECK(r.partial_value().fds.empty());
        REQUIRE(ringsock::pass_pidfd(pr->second, false));
        auto s2 = co_await pr->first.send(std::string_view("hi"));
        REQUIRE(s2);
        auto r2 = co_await pr->second.receive(buf, 5s);
        REQUIRE(r2);
        CHECK_FALSE(r2->sender_pidfd.valid());
        CHECK(r2->bytes == 2);
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}

// ---------------------------------------------------------------------------------
// receive_from: the sender must be exact every time
// ---------------------------------------------------------------------------------

namespace {

// One receive_from in its own frame, so successive calls reuse the same stack/frame
// memory.
task<io_result<received_message>> one_receive_from(datagram_socket& s, std::span<char> buf, bool with_fds) {
    if (with_fds) co_return co_await s.receive_from(buf, 4, 5s);
    co_return co_await s.receive_from(buf, 5s);
}

}  // namespace

TEST_CASE("receive_from: a short or unnamed sender after a long one is reported exactly (==, size, path_name, to_string)",
          "[message_receive_hostile]") {
    const bool with_fds = GENERATE(false, true);
    CAPTURE(with_fds);
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    temp_dir dir;
    auto server_ep = endpoint::abstract(unique_name("server")).value();
    auto server = datagram_socket::bind(ctx, server_ep);
    REQUIRE(server);
    const std::string long_path = dir.file("a-rather-long-client-socket-name-that-fills-much-of-sun-path.sock");
    REQUIRE(long_path.size() > 60);
    auto long_ep = endpoint::path(long_path).value();
    auto short_ep = endpoint::path(dir.file("c.sock")).value();
    auto long_abs = endpoint::abstract(std::string(70, 'L') + unique_name("x")).value();
    std::string nul_name("a\0b", 3);
    auto nul_abs = endpoint::abstract(nul_name + unique_name("n")).value();
    auto short_abs = endpoint::abstract("s" + std::to_string(::getpid())).value();
    auto long_sock = datagram_socket::bind(ctx, long_ep);
    REQUIRE(long_sock);
    auto short_sock = datagram_socket::bind(ctx, short_ep);
    REQUIRE(short_sock);
    auto long_abs_sock = datagram_socket::bind(ctx, long_abs);
    REQUIRE(long_abs_sock);
    auto nul_abs_sock = datagram_socket::bind(ctx, nul_abs);
    REQUIRE(nul_abs_sock);
    auto short_abs_sock = datagram_socket::bind(ctx, short_abs);
    REQUIRE(short_abs_sock);
    auto unbound = datagram_socket::open(ctx);
    REQUIRE(unbound);
    auto efd = numbered_eventfds(1);

    struct step {
        datagram_socket* from;
        const endpoint* ep;  // nullptr: unnamed
    };
    std::vector<step> steps = {{&*long_sock, &long_ep}, {&*short_sock, &short_ep},   {&*long_abs_sock, &long_abs},
                               {&*unbound, nullptr},    {&*long_sock, &long_ep},     {&*short_abs_sock, &short_abs},
                               {&*nul_abs_sock, &nul_abs}, {&*long_abs_sock, &long_abs}, {&*short_sock, &short_ep},
                               {&*unbound, nullptr}};
    auto body = [&]() -> task<void> {
        std::array<char, 16> buf{};
        for (std::size_t i = 0; i < steps.size(); ++i) {
            CAPTURE(i);
            io_result<std::size_t> s{0};
            if (with_fds && i % 2 == 0) s = co_await steps[i].from->send_fds_to(std::string_view("m"), efd[0], server_ep);
            else s = co_await steps[i].from->send_to(std::string_view("m"), server_ep);
            REQUIRE(s);
            auto rt = one_receive_from(*server, buf, with_fds);
            auto r = co_await std::move(rt);
            REQUIRE(r);
            CHECK(r->bytes == 1);
            CHECK(r->fds.size() == (with_fds && i % 2 == 0 ? 1u : 0u));
            const endpoint& got = r->sender;
            if (steps[i].ep == nullptr) {
                CHECK(got.is_unnamed());
                CHECK(got.size() == offsetof(sockaddr_un, sun_path));
                CHECK(got == endpoint{});
                CHECK(got.to_string() == "(unnamed)");
                CHECK(got.path_name().empty());
                CHECK(got.abstract_name().empty());
            } else {
                const endpoint& want = *steps[i].ep;
                CHECK(got == want);
                CHECK(got.size() == want.size());
                CHECK(got.is_path() == want.is_path());
                CHECK(got.is_abstract() == want.is_abstract());
                CHECK(got.path_name() == want.path_name());
                CHECK(got.abstract_name() == want.abstract_name());
                CHECK(got.to_string() == want.to_string());
                // And the address works for an answer.
                auto back = co_await server->send_to(std::string_view("r"), got);
                REQUIRE(back);
                auto rr = co_await steps[i].from->receive_from(buf, 5s);
                REQUIRE(rr);
                CHECK(rr->sender == server_ep);
            }
        }
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}

TEST_CASE("receive_from: a truncated datagram still reports its sender, and a truncated unnamed one reports unnamed",
          "[message_receive_hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto server_ep = endpoint::abstract(unique_name("trunc-server")).value();
    auto server = datagram_socket::bind(ctx, server_ep);
    REQUIRE(server);
    auto client_ep = endpoint::abstract(unique_name("trunc-client")).value();
    auto client = datagram_socket::bind(ctx, client_ep);
    REQUIRE(client);
    auto unbound = datagram_socket::open(ctx);
    REQUIRE(unbound);
    auto body = [&]() -> task<void> {
        std::array<char, 3> buf{};
        auto s = co_await client->send_to(std::string_view("truncated"), server_ep);
        REQUIRE(s);
        auto r = co_await server->receive_from(buf, 5s);
        REQUIRE_FALSE(r);
        CHECK(r.error() == ringsock::errc::message_truncated);
        CHECK(r.partial_value().bytes == 3);
        CHECK(r.partial_value().full_size == 9);
        CHECK(r.partial_value().sender == client_ep);
        auto s2 = co_await unbound->send_to(std::string_view("truncated"), server_ep);
        REQUIRE(s2);
        auto r2 = co_await server->receive_from(buf, 5s);
        REQUIRE_FALSE(r2);
        CHECK(r2.partial_value().sender.is_unnamed());
        // receive() (no sender wanted) on a named sender: unnamed sender field.
        auto s3 = co_await client->send_to(std::string_view("ab"), server_ep);
        REQUIRE(s3);
        auto r3 = co_await server->receive(buf, 5s);
        REQUIRE(r3);
        CHECK(r3->sender.is_unnamed());
        CHECK(r3->bytes == 2);
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}

// ---------------------------------------------------------------------------------
// cancellation, time limits, destroyed frames
// ---------------------------------------------------------------------------------

TEST_CASE("message receive: a timed-out or stopped receive takes nothing; the message sent afterwards arrives whole with its descriptors",
          "[message_receive_hostile]") {
    const bool by_timeout = GENERATE(false, true);
    const bool pre_stopped = GENERATE(false, true);
    CAPTURE(by_timeout, pre_stopped);
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto pr = seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    auto efd = numbered_eventfds(2);
    std::stop_source stop;
    if (pre_stopped && !by_timeout) stop.request_stop();
    auto canceller = [&]() -> task<void> {
        co_await ctx.yield();
        co_await ctx.yield();
        stop.request_stop();
    };
    auto body = [&]() -> task<void> {
        std::array<char, 16> buf{};
        if (!by_timeout && !pre_stopped) ctx.spawn(canceller());
        ringsock::op_limits lim = by_timeout ? ringsock::op_limits(pre_stopped ? 0ms : 20ms)
                                             : ringsock::op_limits(stop.get_token(), 10s);
        auto r = co_await pr->second.receive(buf, lim);
        REQUIRE_FALSE(r);
        CHECK(r.error() == (by_timeout ? std::errc::timed_out : std::errc::operation_canceled));
        CHECK(r.partial_value().fds.empty());
        CHECK(r.partial_value().bytes == 0);
        // The same (stopped) limits cancel the next receive too, with nothing taken,
        // even though a message is now queued.
        auto s = co_await pr->first.send_fds(std::string_view("after"), efd);
        REQUIRE(s);
        if (!by_timeout) {
            auto again = co_await pr->second.receive(buf, lim);
            REQUIRE_FALSE(again);
            CHECK(again.error() == std::errc::operation_canceled);
            CHECK(again.partial_value().fds.empty());
        }
        auto ok = co_await pr->second.receive(buf, 5s);
        REQUIRE(ok);
        CHECK(ok->bytes == 5);
        REQUIRE(ok->fds.size() == 2);
        CHECK(eventfd_value(ok->fds[1].get()) == 2);
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}

TEST_CASE("message receive: a stop requested after the message arrived does not lose it (the stopped token is only seen by the next receive)",
          "[message_receive_hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto pr = datagram_socket::pair(ctx);
    REQUIRE(pr);
    auto efd = numbered_eventfds(1);
    std::stop_source stop;
    auto body = [&]() -> task<void> {
        std::array<char, 16> buf{};
        auto sender = [&]() -> task<void> {
            auto s = co_await pr->first.send_fds(std::string_view("x"), efd[0]);
            REQUIRE(s);
            stop.request_stop();  // right after: the receive may or may not have completed
        };
        ctx.spawn(sender());
        ringsock::op_limits lim(stop.get_token());
        auto r = co_await pr->second.receive(buf, lim);
        if (r) {
            CHECK(r->bytes == 1);
            CHECK(r->fds.size() == 1);
        } else {
            CHECK(r.error() == std::errc::operation_canceled);
            CHECK(r.partial_value().fds.empty());
            auto again = co_await pr->second.receive(buf, 5s);
            REQUIRE(again);
            CHECK(again->fds.size() == 1);
        }
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}

namespace {

task<void> receive_from_never_resumed(io_context& ctx, unique_fd fd, bool& resumed) {
    std::array<char, 16> buf{};
    datagram_socket s(ctx, std::move(fd));
    auto r = co_await s.receive_from(buf);
    resumed = true;
    (void)r;
}

}  // namespace

TEST_CASE("receive_from: destroying a frame whose receive (with sender, descriptors and credentials) completed but never resumed closes everything",
          "[message_receive_hostile]") {
    ringsock::test::fd_leak_guard guard;
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    unique_fd pr(p[0]), pw(p[1]);
    auto ep = endpoint::abstract(unique_name("never-resumed")).value();
    unique_fd server(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    REQUIRE(server.valid());
    REQUIRE(::bind(server.get(), ep.data(), ep.size()) == 0);
    REQUIRE(ringsock::pass_credentials(server.get()));
    unique_fd client(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    auto cep = endpoint::abstract(unique_name("never-resumed-client")).value();
    REQUIRE(::bind(client.get(), cep.data(), cep.size()) == 0);
    REQUIRE(::connect(client.get(), ep.data(), ep.size()) == 0);
    const int w = pw.get();
    REQUIRE(raw_send_fds(client.get(), "hello", &w, 1));
    pw.reset();
    bool resumed = false, consumed = false;
    {
        io_context ctx;
        const int receiving = server.get();
        ctx.spawn(stop_when_consumed(ctx, receiving, consumed));
        ctx.spawn(receive_from_never_resumed(ctx, std::move(server), resumed));
        ctx.run();
        CHECK(consumed);
        CHECK_FALSE(resumed);
    }
    CHECK_FALSE(resumed);
    CHECK(ringsock::test::pipe_at_eof(pr.get()));
}

// ---------------------------------------------------------------------------------
// fd_stream: read_some and receive mixed
// ---------------------------------------------------------------------------------

TEST_CASE("fd_stream: read_some queues descriptors and receive hands over the queue plus its own, in order; plain receives carry none",
          "[message_receive_hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto pr = ringsock::fd_stream::pair(ctx);
    REQUIRE(pr);
    auto efd = numbered_eventfds(3);
    auto body = [&]() -> task<void> {
        std::array<char, 4> buf{};
        auto s1 = co_await pr->first.send_fds(std::string_view("aaaa"), efd[0]);
        REQUIRE(s1);
        auto r1 = co_await pr->second.read_some(buf, 5s);
        REQUIRE(r1);
        CHECK(*r1 == 4);
        CHECK(pr->second.queued_fds() == 1);
        auto s2 = co_await pr->first.write_all(std::string_view("bbbb"));
        REQUIRE(s2);
        auto plain = co_await pr->second.receive(buf, 5s);
        REQUIRE(plain);
        CHECK(plain->bytes == 4);
        // receive hands over everything queued so far, even when this read brought none.
        REQUIRE(plain->fds.size() == 1);
        CHECK(eventfd_value(plain->fds[0].get()) == 1);
        CHECK(pr->second.queued_fds() == 0);
        auto s3 = co_await pr->first.send_fds(std::string_view("cccc"), efd[1]);
        REQUIRE(s3);
        auto r3 = co_await pr->second.read_some(buf, 5s);
        REQUIRE(r3);
        auto s4 = co_await pr->first.send_fds(std::string_view("dddd"), efd[2]);
        REQUIRE(s4);
        auto r4 = co_await pr->second.receive(buf, 5s);
        REQUIRE(r4);
        REQUIRE(r4->fds.size() == 2);
        CHECK(eventfd_value(r4->fds[0].get()) == 2);
        CHECK(eventfd_value(r4->fds[1].get()) == 3);
        auto s5 = co_await pr->first.write_all(std::string_view("eeee"));
        REQUIRE(s5);
        auto r5 = co_await pr->second.receive(buf, 5s);
        REQUIRE(r5);
        CHECK(r5->fds.empty());
        CHECK(r5->bytes == 4);
        CHECK(std::string_view(buf.data(), 4) == "eeee");
        // read_exact after a timed-out receive.
        auto to = co_await pr->second.receive(buf, 1ms);
        REQUIRE_FALSE(to);
        CHECK(to.error() == std::errc::timed_out);
        auto s6 = co_await pr->first.write_all(std::string_view("ffff"));
        REQUIRE(s6);
        auto r6 = co_await pr->second.read_exact(buf, 5s);
        REQUIRE(r6);
        CHECK(*r6 == 4);
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}

// ---------------------------------------------------------------------------------
// whole-message send returned inline
// ---------------------------------------------------------------------------------

TEST_CASE("message send: send reports exactly the bytes sent, 0 for an empty message, and errors are never success",
          "[message_receive_hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto pr = seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    auto body = [&]() -> task<void> {
        for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{4096}}) {
            std::vector<char> data(n, 'z');
            auto s = co_await pr->first.send(data, 5s);
            REQUIRE(s);
            CHECK(*s == n);
            std::vector<char> in(n + 1);
            auto r = co_await pr->second.receive(in, 5s);
            REQUIRE(r);
            CHECK(r->bytes == n);
        }
        // Larger than the send buffer: EMSGSIZE, not a success.
        int sndbuf = 0;
        socklen_t l = sizeof sndbuf;
        REQUIRE(::getsockopt(pr->first.native_handle(), SOL_SOCKET, SO_SNDBUF, &sndbuf, &l) == 0);
        std::vector<char> huge(static_cast<std::size_t>(sndbuf) * 4, 'h');
        auto big = co_await pr->first.send(huge, 5s);
        REQUIRE_FALSE(big);
        CHECK(big.error() == std::errc::message_size);
        CHECK(big.partial_value() == 0);
        // A peer gone: EPIPE, not a success.
        pr->second.close();
        auto dead = co_await pr->first.send(std::string_view("x"), 5s);
        REQUIRE_FALSE(dead);
        CHECK(dead.error() == std::errc::broken_pipe);
        // A stopped token: canceled, nothing sent.
        std::stop_source st;
        st.request_stop();
        auto stopped = co_await pr->first.send(std::string_view("x"), st.get_token());
        REQUIRE_FALSE(stopped);
        CHECK(stopped.error() == std::errc::operation_canceled);
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}

// ---------------------------------------------------------------------------------
// endpoint over garbage memory
// ---------------------------------------------------------------------------------

TEST_CASE("endpoint: default-constructed over 0xAB memory is unnamed, equal to a clean one, and copies/compares by its size only",
          "[message_receive_hostile]") {
    alignas(endpoint) unsigned char raw1[sizeof(endpoint)];
    alignas(endpoint) unsigned char raw2[sizeof(endpoint)];
    std::memset(raw1, 0xAB, sizeof raw1);
    std::memset(raw2, 0x00, sizeof raw2);
    auto* dirty = ::new (raw1) endpoint();
    auto* clean = ::new (raw2) endpoint();
    CHECK(dirty->is_unnamed());
    CHECK_FALSE(dirty->is_path());
    CHECK_FALSE(dirty->is_abstract());
    CHECK(dirty->size() == offsetof(sockaddr_un, sun_path));
    CHECK(dirty->native().sun_family == AF_UNIX);
    CHECK(*dirty == *clean);
    CHECK(dirty->to_string() == "(unnamed)");
    CHECK(dirty->path_name().empty());
    CHECK(dirty->abstract_name().empty());
    endpoint copy = *dirty;
    CHECK(copy == *clean);
    endpoint assigned = endpoint::path("/tmp/x").value();
    assigned = *dirty;
    CHECK(assigned.is_unnamed());
    CHECK(assigned == endpoint{});
    dirty->~endpoint();
    clean->~endpoint();
}

TEST_CASE("endpoint: path() and abstract() built over a scribbled stack equal clean ones, and bind/connect/sendto use the exact name",
          "[message_receive_hostile]") {
    ringsock::test::fd_leak_guard guard;
    temp_dir dir;
    const std::string p = dir.file("x.sock");
    scribble_stack();
    auto dirty_path = endpoint::path(p);
    REQUIRE(dirty_path);
    CHECK(dirty_path->size() == offsetof(sockaddr_un, sun_path) + p.size() + 1);
    CHECK(dirty_path->native().sun_path[p.size()] == '\0');
    CHECK(dirty_path->path_name() == p);
    CHECK(dirty_path->to_string() == p);
    scribble_stack();
    auto dirty_abs = endpoint::abstract(unique_name("scribbled"));
    REQUIRE(dirty_abs);
    CHECK(dirty_abs->abstract_name() == unique_name("scribbled"));
    // Placement over garbage, then assigned from path(): same.
    alignas(endpoint) unsigned char raw[sizeof(endpoint)];
    std::memset(raw, 0xAB, sizeof raw);
    auto* over = ::new (raw) endpoint(endpoint::path(p).value());
    CHECK(*over == *dirty_path);
    CHECK(over->path_name() == p);

    // bind on the scribbled path, a socket connected to the placement copy, the local
    // name read back equals it.
    unique_fd srv(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    REQUIRE(::bind(srv.get(), dirty_path->data(), dirty_path->size()) == 0);
    auto local = ringsock::local_endpoint(srv.get());
    REQUIRE(local);
    CHECK(*local == *dirty_path);
    CHECK(local->path_name() == p);
    unique_fd cli(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    REQUIRE(::connect(cli.get(), over->data(), over->size()) == 0);
    auto remote = ringsock::remote_endpoint(cli.get());
    REQUIRE(remote);
    CHECK(*remote == *over);
    CHECK(::sendto(cli.get(), "q", 1, 0, over->data(), over->size()) == 1);
    char c = 0;
    CHECK(::recv(srv.get(), &c, 1, MSG_DONTWAIT) == 1);
    CHECK(c == 'q');

    // A default endpoint over garbage binds as autobind: an abstract name picked by the kernel.
    alignas(endpoint) unsigned char raw_auto[sizeof(endpoint)];
    std::memset(raw_auto, 0xAB, sizeof raw_auto);
    auto* autob = ::new (raw_auto) endpoint();
    unique_fd a(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    REQUIRE(::bind(a.get(), autob->data(), autob->size()) == 0);
    auto picked = ringsock::local_endpoint(a.get());
    REQUIRE(picked);
    CHECK(picked->is_abstract());
    CHECK(picked->abstract_name().size() == 5);  // the kernel's autobind names are 5 hex digits
    over->~endpoint();
    autob->~endpoint();
}

TEST_CASE("endpoint: from_native with short or odd lengths is unnamed below the name, exact at and past it",
          "[message_receive_hostile]") {
    sockaddr_un sa;
    std::memset(&sa, 0xAB, sizeof sa);
    sa.sun_family = AF_UNIX;
    for (socklen_t len : {socklen_t{0}, socklen_t{1}, socklen_t(offsetof(sockaddr_un, sun_path))}) {
        CAPTURE(len);
        auto e = endpoint::from_native(sa, len);
        CHECK(e.is_unnamed());
        CHECK(e.size() == offsetof(sockaddr_un, sun_path));
        CHECK(e == endpoint{});
        CHECK(e.native().sun_family == AF_UNIX);
        CHECK(e.to_string() == "(unnamed)");
    }
    // One byte of name, a NUL: the empty abstract name.
    sa.sun_path[0] = '\0';
    auto empty_abs = endpoint::from_native(sa, offsetof(sockaddr_un, sun_path) + 1);
    CHECK(empty_abs.is_abstract());
    CHECK(empty_abs.abstract_name().empty());
    CHECK(empty_abs == endpoint::abstract("").value());
    CHECK(empty_abs.to_string() == "@");
    CHECK_FALSE(empty_abs == endpoint{});
    // A path whose NUL was not counted (garbage after it): path_name stops at the length.
    std::memcpy(sa.sun_path, "abc", 3);
    auto no_nul = endpoint::from_native(sa, offsetof(sockaddr_un, sun_path) + 3);
    CHECK(no_nul.is_path());
    CHECK(no_nul.path_name() == "abc");
    CHECK(no_nul.to_string() == "abc");
    // With the NUL counted it equals path().
    sa.sun_path[3] = '\0';
    auto with_nul = endpoint::from_native(sa, offsetof(sockaddr_un, sun_path) + 4);
    CHECK(with_nul == endpoint::path("abc").value());
    // Longer than sockaddr_un: clamped, never read past.
    std::memset(sa.sun_path, 'p', sizeof sa.sun_path);
    auto full = endpoint::from_native(sa, sizeof(sockaddr_un) + 50);
    CHECK(full.size() == sizeof(sockaddr_un));
    CHECK(full.path_name().size() == sizeof sa.sun_path);
    // A wrong family in the source is overwritten.
    sa.sun_family = AF_INET;
    auto fam = endpoint::from_native(sa, offsetof(sockaddr_un, sun_path));
    CHECK(fam.native().sun_family == AF_UNIX);
}

// ---------------------------------------------------------------------------------
// more: longest names, waiting receives, everything at once
// ---------------------------------------------------------------------------------

TEST_CASE("receive_from: senders bound to the longest path (107 bytes) and longest abstract name (107 bytes) are reported exactly, alternating with short ones",
          "[message_receive_hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    temp_dir dir;
    std::string long_path = dir.path + "/";
    long_path += std::string(endpoint::max_path_length - long_path.size(), 'q');
    REQUIRE(long_path.size() == endpoint::max_path_length);
    std::string long_abs_name = unique_name("abs");
    long_abs_name += std::string(endpoint::max_abstract_length - long_abs_name.size(), 'w');
    auto server_ep = endpoint::abstract(unique_name("longest-server")).value();
    auto server = datagram_socket::bind(ctx, server_ep);
    REQUIRE(server);
    auto lp = endpoint::path(long_path).value();
    auto la = endpoint::abstract(long_abs_name).value();
    auto sa = endpoint::abstract("z" + std::to_string(::getpid())).value();
    CHECK(lp.size() == sizeof(sockaddr_un));
    CHECK(la.size() == sizeof(sockaddr_un));
    auto lp_sock = datagram_socket::bind(ctx, lp);
    REQUIRE(lp_sock);
    auto la_sock = datagram_socket::bind(ctx, la);
    REQUIRE(la_sock);
    auto sa_sock = datagram_socket::bind(ctx, sa);
    REQUIRE(sa_sock);
    auto body = [&]() -> task<void> {
        std::array<char, 8> buf{};
        datagram_socket* order[] = {&*lp_sock, &*sa_sock, &*la_sock, &*sa_sock, &*lp_sock, &*la_sock};
        const endpoint* want[] = {&lp, &sa, &la, &sa, &lp, &la};
        for (std::size_t i = 0; i < 6; ++i) {
            CAPTURE(i);
            auto s = co_await order[i]->send_to(std::string_view("k"), server_ep);
            REQUIRE(s);
            auto r = co_await server->receive_from(buf, 5s);
            REQUIRE(r);
            CHECK(r->sender == *want[i]);
            CHECK(r->sender.size() == want[i]->size());
            CHECK(r->sender.to_string() == want[i]->to_string());
            CHECK(r->sender.path_name() == want[i]->path_name());
            CHECK(r->sender.abstract_name() == want[i]->abstract_name());
        }
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
    ::unlink(long_path.c_str());
}

TEST_CASE("message receive: a receive already waiting when a plain, a descriptor-carrying or an empty message arrives gets exactly that message",
          "[message_receive_hostile]") {
    const int type = GENERATE(SOCK_SEQPACKET, SOCK_DGRAM);
    const int what = GENERATE(0, 1, 2, 3);  // plain, fds, empty, empty+fds
    CAPTURE(type, what);
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    raw_pair sp(type);
    auto efds = numbered_eventfds(2);
    int raw[2] = {efds[0].get(), efds[1].get()};
    const int peer = sp.b.get();
    bool sent = false;
    auto send_later = [&] {
        std::string_view data = what >= 2 ? std::string_view("") : std::string_view("payload");
        sent = raw_send_fds(peer, data, raw, what % 2 == 1 ? 2 : 0);
    };
    auto body = [&]() -> task<void> {
        std::array<char, 16> buf{};
        for (int round = 0; round < 2; ++round) {
            ringsock::post(ctx, send_later);
            io_result<received_message> r;
            if (type == SOCK_SEQPACKET) {
                seqpacket_socket s(ctx, unique_fd(::dup(sp.a.get())));
                r = co_await s.receive(buf, 5s);
            } else {
                datagram_socket s(ctx, unique_fd(::dup(sp.a.get())));
                r = co_await s.receive(buf, 5s);
            }
            CHECK(sent);
            REQUIRE(r);
            const std::size_t n = what >= 2 ? 0 : 7;
            CHECK(r->bytes == n);
            CHECK(r->full_size == n);
            CHECK(r->flags == 0);
            CHECK(r->fds.size() == (what % 2 == 1 ? 2u : 0u));
            if (n) CHECK(std::string_view(buf.data(), n) == "payload");
        }
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}

TEST_CASE("message receive: credentials, pidfd and too many descriptors in one truncated message: an error, descriptors closed, nothing leaked",
          "[message_receive_hostile]") {
    ringsock::test::fd_leak_guard guard;
    io_context ctx;
    auto pr = seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    REQUIRE(ringsock::pass_credentials(pr->second));
    auto pid_on = ringsock::pass_pidfd(pr->second);
    const bool pidfd = static_cast<bool>(pid_on);
    auto efd = numbered_eventfds(3);
    auto body = [&]() -> task<void> {
        std::array<char, 2> buf{};
        auto s = co_await pr->first.send_fds(std::string_view("long message"), efd);
        REQUIRE(s);
        auto r = co_await pr->second.receive(buf, 1, 5s);
        REQUIRE_FALSE(r);
        CHECK((r.error() == ringsock::errc::fds_truncated || r.error() == ringsock::errc::message_truncated));
        CHECK(r.partial_value().fds.empty());
        CHECK(r.partial_value().bytes == 2);
        CHECK(r.partial_value().full_size == 12);
        REQUIRE(r.partial_value().sender_credentials);
        CHECK(r.partial_value().sender_credentials->pid == ::getpid());
        // On fds_truncated parse_control closes the pidfd with the descriptors.
        if (pidfd && r.error() == ringsock::errc::fds_truncated) CHECK_FALSE(r.partial_value().sender_pidfd.valid());
        // And a plain one after it, still with credentials (slow path), right size.
        auto s2 = co_await pr->first.send(std::string_view("ok"));
        REQUIRE(s2);
        auto r2 = co_await pr->second.receive(buf, 5s);
        REQUIRE(r2);
        CHECK(r2->bytes == 2);
        CHECK(r2->flags == 0);
        CHECK(r2->sender_credentials);
    };
    auto t = body();
    ctx.sync_wait(std::move(t));
}
