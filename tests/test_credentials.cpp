// Peer credentials (SO_PEERCRED), peer pidfds (SO_PEERPIDFD) and per-message
// credentials (SO_PASSCRED / SO_PASSPIDFD), checked against a forked child's own
// getpid()/getuid()/getgid().
#include <catch2/catch.hpp>

#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <string>

#include <ringsock/ringsock.hpp>

#include "support/fd_count.hpp"
#include "support/fork_child.hpp"

using namespace std::chrono_literals;
using ringsock::endpoint;
using ringsock::io_context;
using ringsock::task;
using ringsock::test::child_process;

namespace {

endpoint unique_abstract(const char* tag) {
    return endpoint::abstract(std::string("ringsock-test-cred-") + tag + "-" + std::to_string(::getpid())).value();
}

/// What the child reports about itself, written on the connection.
struct identity {
    pid_t pid;
    uid_t uid;
    gid_t gid;
};

/// Child: connect to `ep` with a raw socket of `type`, write its identity, wait for the
/// parent to close, exit.
int connect_and_report(const endpoint& ep, int type) {
    int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    if (fd < 0 || ::connect(fd, ep.data(), ep.size()) < 0) return 1;
    identity id{::getpid(), ::getuid(), ::getgid()};
    if (::send(fd, &id, sizeof id, MSG_NOSIGNAL) != sizeof id) return 2;
    char c;
    (void)::recv(fd, &c, 1, 0);  // until the parent is done
    return 0;
}

/// The Pid: line of /proc/self/fdinfo/<pidfd>.
long pidfd_pid(int pidfd) {
    std::ifstream in("/proc/self/fdinfo/" + std::to_string(pidfd));
    std::string key;
    while (in >> key) {
        if (key == "Pid:") {
            long pid = 0;
            in >> pid;
            return pid;
        }
    }
    return 0;
}

}  // namespace

TEST_CASE("credentials: peer_credentials of an accepted stream and seqpacket connection match the forked child's getpid, getuid and getgid",
          "[credentials]") {
    const int type = GENERATE(SOCK_STREAM, SOCK_SEQPACKET);
    CAPTURE(type);
    io_context ctx;
    auto ep = unique_abstract(type == SOCK_STREAM ? "stream" : "seqpacket");
    ringsock::acceptor sacc;
    ringsock::seqpacket_acceptor qacc;
    if (type == SOCK_STREAM) sacc = ringsock::acceptor::listen(ctx, ep).value();
    else qacc = ringsock::seqpacket_acceptor::listen(ctx, ep).value();

    child_process child([&] { return connect_and_report(ep, type); });

    auto run = [&]() -> task<void> {
        identity id{};
        ringsock::io_result<ringsock::credentials> cred;
        if (type == SOCK_STREAM) {
            auto conn = co_await sacc.accept(10s);
            REQUIRE(conn);
            auto n = co_await conn->read_exact(std::span(reinterpret_cast<char*>(&id), sizeof id));
            REQUIRE(n);
            cred = ringsock::peer_credentials(*conn);
        } else {
            auto conn = co_await qacc.accept(10s);
            REQUIRE(conn);
            auto m = co_await conn->receive(std::span(reinterpret_cast<char*>(&id), sizeof id));
            REQUIRE(m);
            cred = ringsock::peer_credentials(*conn);
        }
        REQUIRE(cred);
        CHECK(cred->pid == child.pid());
        CHECK(cred->pid == id.pid);
        CHECK(cred->uid == id.uid);
        CHECK(cred->gid == id.gid);
        CHECK(cred->pid != ::getpid());
    };
    ctx.sync_wait(run());
    CHECK(child.wait() == 0);
}

TEST_CASE("credentials: peer_credentials are those of connect time and survive the peer's exit", "[credentials]") {
    io_context ctx;
    auto ep = unique_abstract("exit");
    auto acc = ringsock::acceptor::listen(ctx, ep);
    REQUIRE(acc);
    child_process child([&] {
        int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        return fd >= 0 && ::connect(fd, ep.data(), ep.size()) == 0 ? 0 : 1;
    });
    const pid_t child_pid = child.pid();
    REQUIRE(child.wait() == 0);  // gone and reaped
    auto run = [&]() -> task<void> {
        auto conn = co_await acc->accept(10s);
        REQUIRE(conn);
        auto cred = ringsock::peer_credentials(*conn);
        REQUIRE(cred);
        CHECK(cred->pid == child_pid);
    };
    ctx.sync_wait(run());
}

TEST_CASE("credentials: a socketpair's peer is this process, and sockets without a peer give not_connected", "[credentials]") {
    io_context ctx;
    auto pr = ringsock::stream_socket::pair(ctx);
    REQUIRE(pr);
    auto cred = ringsock::peer_credentials(pr->first);
    REQUIRE(cred);
    CHECK(cred->pid == ::getpid());
    CHECK(cred->uid == ::getuid());
    CHECK(cred->gid == ::getgid());

    auto lone = ringsock::datagram_socket::open(ctx);
    REQUIRE(lone);
    auto none = ringsock::peer_credentials(*lone);
    REQUIRE_FALSE(none);
    CHECK(none.error() == std::errc::not_connected);
    auto nopidfd = ringsock::peer_pidfd(*lone);
    REQUIRE_FALSE(nopidfd);
    CHECK((nopidfd.error() == std::errc::not_connected || nopidfd.error() == std::errc::not_supported));

    auto bad = ringsock::peer_credentials(-1);
    REQUIRE_FALSE(bad);
    CHECK(bad.error() == std::errc::bad_file_descriptor);
}

TEST_CASE("credentials: peer_pidfd is a close-on-exec pidfd of the connected child process", "[credentials]") {
    io_context ctx;
    auto ep = unique_abstract("pidfd");
    auto acc = ringsock::acceptor::listen(ctx, ep);
    REQUIRE(acc);
    child_process child([&] { return connect_and_report(ep, SOCK_STREAM); });
    auto run = [&]() -> task<void> {
        auto conn = co_await acc->accept(10s);
        REQUIRE(conn);
        identity id{};
        auto n = co_await conn->read_exact(std::span(reinterpret_cast<char*>(&id), sizeof id));
        REQUIRE(n);
        auto pidfd = ringsock::peer_pidfd(*conn);
        if (!pidfd && pidfd.error() == std::errc::not_supported) {
            WARN("SO_PEERPIDFD not supported by this kernel");
            co_return;
        }
        REQUIRE(pidfd);
        CHECK(ringsock::test::has_cloexec(pidfd->get()));
        CHECK(pidfd_pid(pidfd->get()) == child.pid());
        CHECK(pidfd_pid(pidfd->get()) == id.pid);
    };
    ctx.sync_wait(run());
    CHECK(child.wait() == 0);
}

TEST_CASE("credentials: with pass_credentials each datagram carries its sender's pid, uid and gid, from a forked child and from this process",
          "[credentials]") {
    io_context ctx;
    auto ep = unique_abstract("passcred");
    auto server = ringsock::datagram_socket::bind(ctx, ep);
    REQUIRE(server);
    REQUIRE(ringsock::pass_credentials(*server));
    child_process child([&] {
        int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);  // unbound
        identity id{::getpid(), ::getuid(), ::getgid()};
        return ::sendto(fd, &id, sizeof id, 0, ep.data(), ep.size()) == sizeof id ? 0 : 1;
    });
    REQUIRE(child.wait() == 0);
    auto run = [&]() -> task<void> {
        identity id{};
        auto m = co_await server->receive_from(std::span(reinterpret_cast<char*>(&id), sizeof id), 10s);
        REQUIRE(m);
        REQUIRE(m->sender_credentials);
        CHECK(m->sender_credentials->pid == id.pid);
        CHECK(m->sender_credentials->pid != ::getpid());
        CHECK(m->sender_credentials->uid == id.uid);
        CHECK(m->sender_credentials->gid == id.gid);
        CHECK(m->sender.is_unnamed());

        auto me = ringsock::datagram_socket::open(ctx);
        REQUIRE(me);
        auto s = co_await me->send_to(std::string_view("me"), ep);
        REQUIRE(s);
        std::array<char, 8> buf{};
        auto m2 = co_await server->receive(buf);
        REQUIRE(m2);
        REQUIRE(m2->sender_credentials);
        CHECK(m2->sender_credentials->pid == ::getpid());

        // Switched off again: no credentials.
        REQUIRE(ringsock::pass_credentials(*server, false));
        auto s2 = co_await me->send_to(std::string_view("me"), ep);
        REQUIRE(s2);
        auto m3 = co_await server->receive(buf);
        REQUIRE(m3);
        CHECK_FALSE(m3->sender_credentials);
    };
    ctx.sync_wait(run());
}

TEST_CASE("credentials: with pass_pidfd each seqpacket message carries a pidfd of its sender", "[credentials]") {
    io_context ctx;
    auto pr = ringsock::seqpacket_socket::pair(ctx);
    REQUIRE(pr);
    auto on = ringsock::pass_pidfd(pr->second);
    if (!on && on.error() == std::errc::not_supported) {
        WARN("SO_PASSPIDFD not supported by this kernel");
        return;
    }
    REQUIRE(on);
    auto run = [&]() -> task<void> {
        auto s = co_await pr->first.send(std::string_view("who"));
        REQUIRE(s);
        std::array<char, 8> buf{};
        auto m = co_await pr->second.receive(buf);
        REQUIRE(m);
        REQUIRE(m->sender_pidfd.valid());
        CHECK(ringsock::test::has_cloexec(m->sender_pidfd.get()));
        CHECK(pidfd_pid(m->sender_pidfd.get()) == ::getpid());
    };
    ctx.sync_wait(run());
}

namespace {

/// What a server inside a new pid namespace learned about its host-side client.
struct ns_report {
    int pid_in_ns;      // the server's own getpid(): 1 proves the namespace is new
    int cred_ok;        // peer_credentials succeeded
    int cred_error;     // its error code value otherwise
    pid_t pid;
    uid_t uid;
    gid_t gid;
    int pidfd_ok;       // peer_pidfd succeeded
    int pidfd_error;
};

/// Exit code of the intermediate child when unshare(CLONE_NEWPID) is not permitted.
constexpr int no_pid_namespace = 77;

/// Child: enters a new pid namespace and forks the server into it (unshare moves only
/// later children). The server accepts one connection on the inherited `listener`,
/// asks ringsock about its peer, writes an ns_report on the connection and exits.
int serve_from_new_pid_namespace(int listener) {
    if (::unshare(CLONE_NEWPID) < 0) return errno == EPERM ? no_pid_namespace : 1;
    pid_t inner = ::fork();
    if (inner < 0) return 2;
    if (inner == 0) {
        int conn = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
        if (conn < 0) ::_exit(3);
        ns_report r{};
        r.pid_in_ns = ::getpid();
        auto cred = ringsock::peer_credentials(conn);
        r.cred_ok = cred ? 1 : 0;
        r.cred_error = cred.error().value();
        r.pid = cred->pid;
        r.uid = cred->uid;
        r.gid = cred->gid;
        auto pidfd = ringsock::peer_pidfd(conn);
        r.pidfd_ok = pidfd ? 1 : 0;
        r.pidfd_error = pidfd.error().value();
        ::_exit(::send(conn, &r, sizeof r, MSG_NOSIGNAL) == sizeof r ? 0 : 4);
    }
    int status = 0;
    if (::waitpid(inner, &status, 0) != inner) return 5;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 6;
}

}  // namespace

// A daemon in a container serving a client on the host: the kernel cannot name the
// client's pid inside the daemon's namespace and reports pid 0 with the real uid/gid.
TEST_CASE("credentials: a server in another pid namespace gets its host client's uid and gid with pid 0, not not_connected",
          "[credentials]") {
    auto ep = unique_abstract("pidns");
    ringsock::unique_fd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(listener);
    REQUIRE(::bind(listener.get(), ep.data(), ep.size()) == 0);
    REQUIRE(::listen(listener.get(), 4) == 0);
    child_process child([&] { return serve_from_new_pid_namespace(listener.get()); });

    ringsock::unique_fd client(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(client);
    REQUIRE(::connect(client.get(), ep.data(), ep.size()) == 0);
    ns_report r{};
    ssize_t n = ::recv(client.get(), &r, sizeof r, MSG_WAITALL);
    const int code = child.wait();
    if (code == no_pid_namespace) {
        WARN("unshare(CLONE_NEWPID) is not permitted here; only the ucred classification was checked");
        return;
    }
    REQUIRE(code == 0);
    REQUIRE(n == static_cast<ssize_t>(sizeof r));
    CHECK(r.pid_in_ns == 1);
    CAPTURE(std::error_code(r.cred_error, std::generic_category()).message());
    REQUIRE(r.cred_ok == 1);
    CHECK(r.pid == 0);
    CHECK(r.uid == ::getuid());
    CHECK(r.gid == ::getgid());
    // The pidfd still names the client, though its pid cannot be shown in there.
    CAPTURE(std::error_code(r.pidfd_error, std::generic_category()).message());
    CHECK((r.pidfd_ok == 1 || r.pidfd_error == int(std::errc::not_supported)));
}

TEST_CASE("credentials: a ucred with pid 0 and a real uid is a peer in another pid namespace; uid -1 means no peer",
          "[credentials]") {
    auto other_ns = ringsock::detail::credentials_from_ucred(ucred{0, 1000, 1000});
    REQUIRE(other_ns);
    CHECK(other_ns->pid == 0);
    CHECK(other_ns->uid == 1000);
    CHECK(other_ns->gid == 1000);

    auto root_peer = ringsock::detail::credentials_from_ucred(ucred{0, 0, 0});
    REQUIRE(root_peer);
    CHECK(root_peer->uid == 0);

    auto visible = ringsock::detail::credentials_from_ucred(ucred{1234, 1000, 100});
    REQUIRE(visible);
    CHECK(visible->pid == 1234);

    auto none = ringsock::detail::credentials_from_ucred(ucred{0, static_cast<uid_t>(-1), static_cast<gid_t>(-1)});
    REQUIRE_FALSE(none);
    CHECK(none.error() == std::errc::not_connected);

    // And what the kernel really reports for a stream socket that never connected.
    ringsock::unique_fd lone(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(lone);
    auto unconnected = ringsock::peer_credentials(lone.get());
    REQUIRE_FALSE(unconnected);
    CHECK(unconnected.error() == std::errc::not_connected);
}
