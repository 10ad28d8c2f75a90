// Integration tests for stream_socket::connect against real listeners: refused and
// missing paths, a full backlog cut short by a time limit or a stop token without
// leaking the half-made socket, and successful connects to abstract names and paths.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "support/fd_count.hpp"
#include "support/submission_count.hpp"

namespace {

using namespace std::chrono_literals;
using ringsock::acceptor;
using ringsock::endpoint;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::listen_options;
using ringsock::stream_socket;
using ringsock::task;
using ringsock::unique_fd;

/// Never put a co_await inside a Catch2 assertion: g++ 12 evaluates it more than once.
#define REQUIRE_OK(r)                                                          \
    do {                                                                       \
        if (!(r)) FAIL(#r << " failed: " << (r).error().message());            \
    } while (false)

class temp_dir {
public:
    temp_dir() {
        std::string tmpl = "/tmp/ringsock-connect-XXXXXX";
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        path_ = tmpl;
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    std::string operator/(std::string_view name) const { return path_ + "/" + std::string(name); }

private:
    std::string path_;
};

endpoint path_ep(const std::string& p) {
    auto ep = endpoint::path(p);
    REQUIRE(ep);
    return *ep;
}

endpoint abstract_ep(std::string_view tag) {
    auto ep = endpoint::abstract("ringsock-test-connect-" + std::string(tag) + "-" + std::to_string(::getpid()));
    REQUIRE(ep);
    return *ep;
}

io_result<stream_socket> connect_now(io_context& ctx, const endpoint& ep, ringsock::op_limits lim = {}) {
    return ctx.sync_wait([&]() -> task<io_result<stream_socket>> {
        co_return co_await stream_socket::connect(ctx, ep, lim);
    }());
}

/// Fills a listener's backlog with non-blocking connects until the kernel answers
/// EAGAIN (a Unix stream connect never says EINPROGRESS).
std::vector<unique_fd> fill_backlog(const endpoint& ep) {
    std::vector<unique_fd> fillers;
    for (int i = 0; i < 1000; ++i) {
        unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        REQUIRE(fd);
        if (::connect(fd.get(), ep.data(), ep.size()) < 0) {
            REQUIRE(errno == EAGAIN);
            return fillers;
        }
        fillers.push_back(std::move(fd));
    }
    FAIL("the backlog never filled up");
    return fillers;
}

}  // namespace

TEST_CASE("connect: a stale socket file gives ECONNREFUSED", "[connect]") {
    temp_dir dir;
    auto ep = path_ep(dir / "stale.sock");
    {
        unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(fd);
        REQUIRE(::bind(fd.get(), ep.data(), ep.size()) == 0);
        REQUIRE(::listen(fd.get(), 1) == 0);
    }  // closed; the file stays
    io_context ctx;
    auto c = connect_now(ctx, ep);
    REQUIRE_FALSE(c);
    CHECK(c.error() == std::errc::connection_refused);
    CHECK_THROWS_AS(c.value(), std::system_error);
    // With a time limit too (the linked-timeout path).
    auto c2 = connect_now(ctx, ep, 5s);
    REQUIRE_FALSE(c2);
    CHECK(c2.error() == std::errc::connection_refused);
}

TEST_CASE("connect: a missing path gives ENOENT", "[connect]") {
    temp_dir dir;
    io_context ctx;
    auto c = connect_now(ctx, path_ep(dir / "nobody-here.sock"));
    REQUIRE_FALSE(c);
    CHECK(c.error() == std::errc::no_such_file_or_directory);
    auto c2 = connect_now(ctx, path_ep(dir / "missing-dir/x.sock"));
    REQUIRE_FALSE(c2);
    CHECK(c2.error() == std::errc::no_such_file_or_directory);
}

TEST_CASE("connect: an abstract name nobody listens on gives ECONNREFUSED", "[connect]") {
    io_context ctx;
    auto c = connect_now(ctx, abstract_ep("nobody"));
    REQUIRE_FALSE(c);
    CHECK(c.error() == std::errc::connection_refused);
}

TEST_CASE("connect: a time limit ends a connect stuck on a full backlog with timed_out and no leak",
          "[connect]") {
    temp_dir dir;
    io_context ctx;
    auto ep = path_ep(dir / "full.sock");
    listen_options opts;
    opts.backlog = 0;
    auto acc = acceptor::listen(ctx, ep, opts);
    REQUIRE(acc);
    auto fillers = fill_backlog(ep);
    REQUIRE_FALSE(fillers.empty());
    const std::size_t before = ringsock::test::open_fd_count();

    auto start = std::chrono::steady_clock::now();
    auto c = connect_now(ctx, ep, 50ms);
    REQUIRE_FALSE(c);
    INFO("error: " << c.error().message());
    CHECK(c.error() == std::errc::timed_out);
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    CHECK(ringsock::test::open_fd_count() == before);

    SECTION("a stop token ends it with operation_canceled") {
        std::stop_source src;
        auto r = ctx.sync_wait([&]() -> task<io_result<stream_socket>> {
            auto stopper = [&]() -> task<void> {
                (void)co_await ringsock::sleep_for(ctx, 20ms);
                src.request_stop();
            };
            ctx.spawn(stopper());
            co_return co_await stream_socket::connect(ctx, ep, src.get_token());
        }());
        REQUIRE_FALSE(r);
        CHECK(r.error() == std::errc::operation_canceled);
        CHECK(ringsock::test::open_fd_count() == before);
    }
    SECTION("the interrupted connects left nothing in the backlog") {
        // Accept the fillers (single-shot accepts with a time limit), then nothing more.
        ctx.sync_wait([&]() -> task<void> {
            for (std::size_t i = 0; i < fillers.size(); ++i) {
                auto s = co_await acc->accept(2s);
                REQUIRE_OK(s);
            }
            auto extra = co_await acc->accept(50ms);
            REQUIRE_FALSE(extra);
            CHECK(extra.error() == std::errc::timed_out);
        }());
        // With room in the backlog again, a connect with a time limit succeeds.
        auto ok = connect_now(ctx, ep, 5s);
        REQUIRE_OK(ok);
    }
    fillers.clear();
}

TEST_CASE("connect: a blocked connect completes once the server accepts", "[connect]") {
    io_context ctx;
    auto ep = abstract_ep("unblock");
    listen_options opts;
    opts.backlog = 0;
    auto acc = acceptor::listen(ctx, ep, opts);
    REQUIRE(acc);
    auto fillers = fill_backlog(ep);
    REQUIRE_FALSE(fillers.empty());
    ctx.sync_wait([&]() -> task<void> {
        io_result<stream_socket> c;
        bool done = false;
        auto client = [&]() -> task<void> {
            c = co_await stream_socket::connect(ctx, ep, 10s);
            done = true;
        };
        ctx.spawn(client());
        (void)co_await ringsock::sleep_for(ctx, 20ms);
        CHECK_FALSE(done);
        // Make room: accept everything queued, including the blocked connect.
        std::vector<stream_socket> accepted;
        for (std::size_t i = 0; i <= fillers.size(); ++i) {
            auto s = co_await acc->accept(5s);
            REQUIRE_OK(s);
            accepted.push_back(std::move(*s));
        }
        while (!done) (void)co_await ringsock::sleep_for(ctx, 1ms);
        REQUIRE_OK(c);
        CHECK((::fcntl(c->native_handle(), F_GETFL) & O_NONBLOCK) == 0);
        auto w = co_await c->write_all(ringsock::as_bytes(std::string_view("late")));
        REQUIRE_OK(w);
        std::string buf(4, '\0');
        auto r = co_await accepted.back().read_exact(buf);
        REQUIRE_OK(r);
        CHECK(buf == "late");
    }());
}

TEST_CASE("connect: connecting to an abstract name succeeds and reports the peer's name", "[connect]") {
    io_context ctx;
    auto ep = abstract_ep("ok");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    ctx.sync_wait([&]() -> task<void> {
        for (bool limited : {false, true}) {
            io_result<stream_socket> c;
            if (limited) c = co_await stream_socket::connect(ctx, ep, 5s);
            else c = co_await stream_socket::connect(ctx, ep);
            REQUIRE_OK(c);
            CHECK((::fcntl(c->native_handle(), F_GETFD) & FD_CLOEXEC) != 0);
            auto peer = c->remote_endpoint();
            REQUIRE_OK(peer);
            CHECK(peer->is_abstract());
            CHECK(*peer == ep);
            auto local = c->local_endpoint();
            REQUIRE_OK(local);
            CHECK(local->is_unnamed());

            auto s = co_await acc->accept();
            REQUIRE_OK(s);
            auto w = co_await c->write_all(ringsock::as_bytes(std::string_view("abstract")));
            REQUIRE_OK(w);
            std::string buf(8, '\0');
            auto r = co_await s->read_exact(buf);
            REQUIRE_OK(r);
            CHECK(buf == "abstract");
        }
    }());
}

TEST_CASE("connect: connecting to a path succeeds with and without a time limit", "[connect]") {
    temp_dir dir;
    io_context ctx;
    auto ep = path_ep(dir / "ok.sock");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    ctx.sync_wait([&]() -> task<void> {
        auto a = co_await stream_socket::connect(ctx, ep);
        REQUIRE_OK(a);
        auto b = co_await stream_socket::connect(ctx, ep, 5s);
        REQUIRE_OK(b);
        auto peer = b->remote_endpoint();
        REQUIRE_OK(peer);
        CHECK(peer->path_name() == dir / "ok.sock");
        for (int i = 0; i < 2; ++i) {
            auto s = co_await acc->accept();
            REQUIRE_OK(s);
        }
    }());
}

TEST_CASE("connect: a connect to a listener with room completes without a ring request and yields a blocking socket",
          "[connect]") {
    const auto fds_before = ringsock::test::open_fd_count();
    {
        io_context ctx;
        auto ep = abstract_ep("direct");
        auto acc = acceptor::listen(ctx, ep);
        REQUIRE(acc);
        const unsigned before = ringsock::test::settled_sq_tail(ctx);
        io_result<stream_socket> c;
        unsigned submitted = 0;
        auto client = [&]() -> task<void> {
            c = co_await stream_socket::connect(ctx, ep);
            submitted = ringsock::test::sq_tail(ctx) - before;
        };
        ctx.sync_wait(client());
        CHECK(submitted == 0);
        REQUIRE_OK(c);
        CHECK((::fcntl(c->native_handle(), F_GETFL) & O_NONBLOCK) == 0);  // io_uring supplies the waiting
        CHECK((::fcntl(c->native_handle(), F_GETFD) & FD_CLOEXEC) != 0);
        auto io = [&]() -> task<void> {
            auto s = co_await acc->accept();
            REQUIRE_OK(s);
            // A receive that waits: on a socket left O_NONBLOCK it would still work (io_uring
            // polls), but a user's blocking syscall on native_handle() would not block.
            std::string buf(2, '\0');
            auto reader = [&]() -> task<void> {
                auto r = co_await c->read_exact(buf);
                REQUIRE_OK(r);
            };
            auto writer = [&]() -> task<void> {
                (void)co_await ringsock::sleep_for(ctx, 5ms);
                auto w = co_await s->write_all(ringsock::as_bytes(std::string_view("hi")));
                REQUIRE_OK(w);
            };
            (void)co_await ringsock::when_all(reader(), writer());
            CHECK(buf == "hi");
        };
        ctx.sync_wait(io());
    }
    CHECK(ringsock::test::open_fd_count() == fds_before);
}

TEST_CASE("connect: a stop requested before the connect starts connects nothing", "[connect]") {
    io_context ctx;
    auto ep = abstract_ep("prestopped");
    auto acc = acceptor::listen(ctx, ep);
    REQUIRE(acc);
    std::stop_source src;
    src.request_stop();
    io_result<stream_socket> c;
    auto client = [&]() -> task<void> { c = co_await stream_socket::connect(ctx, ep, src.get_token()); };
    ctx.sync_wait(client());
    REQUIRE_FALSE(c);
    CHECK(c.error() == std::errc::operation_canceled);
    int pending = -1;
    auto probe = [&]() -> task<void> {
        auto s = co_await acc->accept(20ms);
        pending = s ? 1 : 0;
    };
    ctx.sync_wait(probe());
    CHECK(pending == 0);  // no connection reached the backlog
}
