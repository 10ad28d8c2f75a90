// Tests for file operations on the ring: opening beneath a directory (the kernel
// refuses "..", absolute paths, symlinks and /proc magic links), a FIFO open that waits
// on io-wq without stalling the loop and ends by time limit or stop token, descriptors
// owned on every path (completion, cancellation, a destroyed coroutine before or after
// the completion arrived), short reads at end of file, statx, write_all_at read back,
// close through the ring, and a file closed or moved with operations in flight.
// Every case checks that no descriptor leaked.
#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support/cancel_support.hpp"
#include "support/fork_child.hpp"
#include "support/leak_guard.hpp"
#include "support/turn_support.hpp"

namespace {

using namespace std::chrono_literals;
using ringsock::file;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::task;
using ringsock::unique_fd;
using ringsock::test::canceled;
using ringsock::test::counted;
using ringsock::test::fd_leak_guard;
using ringsock::test::timed_out;

using clock_type = std::chrono::steady_clock;

/// root/secret.txt, and the jail root/jail with inside.txt ("hello world"), sub/deep.txt,
/// a FIFO and symlinks: link_abs -> /etc/hostname, link_up -> ../secret.txt,
/// link_in -> inside.txt. Removed on scope exit.
struct sandbox {
    std::string root;
    std::string jail;
    unique_fd jail_fd;
    sandbox() {
        std::string tmpl = "/tmp/ringsock-file-XXXXXX";
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        root = tmpl;
        jail = root + "/jail";
        write_file(root + "/secret.txt", "secret");
        REQUIRE(::mkdir(jail.c_str(), 0700) == 0);
        REQUIRE(::mkdir((jail + "/sub").c_str(), 0700) == 0);
        write_file(jail + "/inside.txt", "hello world");
        write_file(jail + "/sub/deep.txt", "deep");
        REQUIRE(::mkfifo((jail + "/fifo").c_str(), 0600) == 0);
        REQUIRE(::symlink("/etc/hostname", (jail + "/link_abs").c_str()) == 0);
        REQUIRE(::symlink("../secret.txt", (jail + "/link_up").c_str()) == 0);
        REQUIRE(::symlink("inside.txt", (jail + "/link_in").c_str()) == 0);
        jail_fd.reset(::open(jail.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        REQUIRE(jail_fd);
    }
    ~sandbox() {
        std::error_code ec;
        std::filesystem::remove_all(root, ec);
    }
    sandbox(const sandbox&) = delete;
    sandbox& operator=(const sandbox&) = delete;
    static void write_file(const std::string& p, const std::string& data) {
        unique_fd fd(::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
        REQUIRE(fd);
        REQUIRE(::write(fd.get(), data.data(), data.size()) == static_cast<ssize_t>(data.size()));
    }
    std::string fifo() const { return jail + "/fifo"; }
};

/// One open, for tests that only look at the result.
io_result<unique_fd> open_now(io_context& ctx, int dirfd, const std::string& path, open_how how,
                              ringsock::op_limits lim = {}) {
    return ctx.sync_wait([](io_context& ctx, int dirfd, const std::string& path, open_how how,
                            ringsock::op_limits lim) -> task<io_result<unique_fd>> {
        co_return co_await ringsock::open_at(ctx, dirfd, path, how, lim);
    }(ctx, dirfd, path, how, lim));
}

open_how plain(int flags) { return open_how{static_cast<std::uint64_t>(flags), 0, 0}; }
open_how resolve(int flags, std::uint64_t r) { return open_how{static_cast<std::uint64_t>(flags), 0, r}; }

std::error_code err(int e) { return {e, std::generic_category()}; }

/// Starts a lazy task by hand, as an executor would.
void start(task<void>& t) { t.handle().resume(); }

task<void> open_into_frame(io_context& ctx, std::string path, open_how how, bool& resumed) {
    counted c;
    auto r = co_await ringsock::open_at(ctx, AT_FDCWD, path, how);
    resumed = true;
}

}  // namespace

TEST_CASE("file_ops: opening beneath a directory refuses every escape", "[file_ops]") {
    fd_leak_guard guard;
    io_context ctx;
    sandbox sb;
    const int dir = sb.jail_fd.get();
    const auto strict = ringsock::beneath(O_RDONLY);

    SECTION("paths that stay inside open") {
        for (const char* p : {"inside.txt", "sub/deep.txt", "sub/../inside.txt", "./sub/deep.txt"}) {
            INFO(p);
            auto r = open_now(ctx, dir, p, strict);
            REQUIRE(r);
            CHECK(ringsock::test::has_cloexec(r->get()));
        }
    }
    SECTION("dot-dot and absolute paths: EXDEV") {
        for (const char* p : {"../secret.txt", "sub/../../secret.txt", "/etc/hostname"}) {
            INFO(p);
            auto r = open_now(ctx, dir, p, strict);
            CHECK(r.error() == err(EXDEV));
            CHECK(std::string(r.what()) == "open");
        }
        // The same paths without resolve flags do open: the refusal is the kernel's.
        REQUIRE(open_now(ctx, dir, "../secret.txt", plain(O_RDONLY)));
    }
    SECTION("symlinks: ELOOP, even one that stays inside") {
        for (const char* p : {"link_abs", "link_up", "link_in", "sub/../link_up"}) {
            INFO(p);
            CHECK(open_now(ctx, dir, p, strict).error() == err(ELOOP));
        }
        // RESOLVE_BENEATH alone follows links but not out of the directory.
        CHECK(open_now(ctx, dir, "link_abs", resolve(O_RDONLY, RESOLVE_BENEATH)).error() == err(EXDEV));
        CHECK(open_now(ctx, dir, "link_up", resolve(O_RDONLY, RESOLVE_BENEATH)).error() == err(EXDEV));
        CHECK(open_now(ctx, dir, "link_in", resolve(O_RDONLY, RESOLVE_BENEATH)));
    }
    SECTION("magic links under /proc/self/fd") {
        unique_fd secret(::open((sb.root + "/secret.txt").c_str(), O_RDONLY | O_CLOEXEC));
        REQUIRE(secret);
        unique_fd fds(::open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC));
        REQUIRE(fds);
        const std::string n = std::to_string(secret.get());
        // Through the magic link, the file outside opens when nothing forbids it ...
        REQUIRE(open_now(ctx, fds.get(), n, plain(O_RDONLY)));
        // ... and never with the strict flags, nor with RESOLVE_NO_MAGICLINKS alone.
        auto strict_r = open_now(ctx, fds.get(), n, strict);
        CHECK((strict_r.error() == err(ELOOP) || strict_r.error() == err(EXDEV)));
        CHECK(open_now(ctx, fds.get(), n, resolve(O_RDONLY, RESOLVE_NO_MAGICLINKS)).error() == err(ELOOP));
        // From the jail, the absolute magic-link path is refused as absolute.
        CHECK(open_now(ctx, dir, "/proc/self/fd/" + n, strict).error() == err(EXDEV));
    }
    SECTION("creating beneath the directory, and an unknown flag") {
        auto r = open_now(ctx, dir, "new.txt", ringsock::beneath(O_WRONLY | O_CREAT | O_EXCL, 0640));
        REQUIRE(r);
        CHECK(open_now(ctx, dir, "new.txt", ringsock::beneath(O_WRONLY | O_CREAT | O_EXCL, 0640)).error() ==
              err(EEXIST));
        CHECK(open_now(ctx, dir, "../new.txt", ringsock::beneath(O_WRONLY | O_CREAT, 0640)).error() == err(EXDEV));
        // openat2 rejects a mode without O_CREAT (open(2) would ignore it).
        CHECK(open_now(ctx, dir, "inside.txt", open_how{O_RDONLY, 0600, 0}).error() == err(EINVAL));
    }
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("file_ops: a FIFO open waits on io-wq without stalling the loop; a time limit ends it", "[file_ops]") {
    fd_leak_guard guard;
    io_context ctx;
    sandbox sb;
    int ticks = 0;
    const auto t0 = clock_type::now();
    auto r = ctx.sync_wait([](io_context& ctx, const std::string& path, int& ticks) -> task<io_result<unique_fd>> {
        ringsock::scope sc(ctx);
        bool opened = false;
        sc.spawn([&](std::stop_token) -> task<void> {
            while (!opened) {
                (void)co_await ringsock::sleep_for(ctx, 2ms);
                ++ticks;
            }
        });
        auto r = co_await ringsock::open_at(ctx, AT_FDCWD, path, plain(O_RDONLY), 150ms);
        opened = true;
        co_await sc.join();
        co_return r;
    }(ctx, sb.fifo(), ticks));
    const auto elapsed = clock_type::now() - t0;
    CHECK(timed_out(r.error()));
    CHECK_FALSE(r.partial_value().valid());
    CHECK(elapsed >= 140ms);
    CHECK(elapsed < 5s);
    CHECK(ticks >= 20);  // the loop kept running the other coroutine meanwhile
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("file_ops: a FIFO open ends with operation_canceled on a stop request", "[file_ops]") {
    fd_leak_guard guard;
    io_context ctx;
    sandbox sb;
    SECTION("from the loop's thread") {
        auto ec = ctx.sync_wait([](io_context& ctx, const std::string& path) -> task<std::error_code> {
            std::error_code ec;
            ringsock::scope sc(ctx);
            sc.spawn([&](std::stop_token st) -> task<void> {
                ec = (co_await ringsock::open_at(ctx, AT_FDCWD, path, plain(O_WRONLY), st)).error();
            });
            (void)co_await ringsock::sleep_for(ctx, 30ms);
            sc.request_stop();
            co_await sc.join();
            co_return ec;
        }(ctx, sb.fifo()));
        CHECK(canceled(ec));
    }
    SECTION("from another thread, with a time limit too") {
        std::stop_source src;
        std::thread stopper([&] {
            std::this_thread::sleep_for(30ms);
            src.request_stop();
        });
        auto r = open_now(ctx, AT_FDCWD, sb.fifo(), plain(O_RDONLY), {src.get_token(), 1h});
        stopper.join();
        CHECK(canceled(r.error()));
    }
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("file_ops: a FIFO open completes when the writer arrives, with blocking semantics", "[file_ops]") {
    fd_leak_guard guard;
    io_context ctx;
    sandbox sb;
    std::thread writer([&] {
        std::this_thread::sleep_for(20ms);
        unique_fd w(::open(sb.fifo().c_str(), O_WRONLY | O_CLOEXEC));
        if (w) (void)::write(w.get(), "x", 1);
    });
    auto r = open_now(ctx, AT_FDCWD, sb.fifo(), plain(O_RDONLY), 10s);
    writer.join();
    REQUIRE(r);
    CHECK((::fcntl(r->get(), F_GETFL) & O_NONBLOCK) == 0);  // as openat2(2) gives it
    // With O_NONBLOCK asked for, the open is tried inline: a reader needs no writer.
    auto nb = open_now(ctx, AT_FDCWD, sb.fifo(), plain(O_RDONLY | O_NONBLOCK));
    REQUIRE(nb);
    CHECK((::fcntl(nb->get(), F_GETFL) & O_NONBLOCK) != 0);
}

TEST_CASE("file_ops: FIFO opens racing a writer and short limits never leak a descriptor", "[file_ops]") {
    fd_leak_guard guard;
    io_context ctx;
    sandbox sb;
    std::atomic<bool> done{false};
    std::thread writer([&] {
        // Non-blocking opens succeed only while a reader waits in the kernel.
        while (!done.load()) {
            int w = ::open(sb.fifo().c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
            if (w >= 0) ::close(w);
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
    });
    int opened = 0, ended = 0;
    ctx.sync_wait([](io_context& ctx, const std::string& path, int& opened, int& ended) -> task<void> {
        for (int i = 0; i < 200; ++i) {
            std::stop_source src;
            if (i % 3 == 2) src.request_stop();
            ringsock::op_limits lim(src.get_token(), std::chrono::microseconds(100 * (i % 7)));
            auto r = co_await ringsock::open_at(ctx, AT_FDCWD, path, plain(O_RDONLY), lim);
            if (r) {
                CHECK(r->valid());
                ++opened;
            } else {
                CHECK((timed_out(r.error()) || canceled(r.error())));
                CHECK_FALSE(r.partial_value().valid());
                ++ended;
            }
        }
    }(ctx, sb.fifo(), opened, ended));
    done = true;
    writer.join();
    CHECK(opened + ended == 200);
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("file_ops: destroying the coroutine of an open closes what the kernel produced", "[file_ops]") {
    fd_leak_guard guard;
    io_context ctx;
    sandbox sb;
    SECTION("waiting in the kernel (a FIFO): the open is cancelled and reaped") {
        for (int i = 0; i < 50; ++i) {
            bool resumed = false;
            std::optional<task<void>> t;
            t.emplace(open_into_frame(ctx, sb.fifo(), plain(O_RDONLY), resumed));
            start(*t);
            for (int k = 0; k < i % 3; ++k) ctx.poll();
            t.reset();
            REQUIRE_FALSE(resumed);
            REQUIRE(counted::alive == 0);
            REQUIRE(ctx.outstanding_work() == 0);
        }
    }
    SECTION("completion posted, not yet reaped") {
        for (int i = 0; i < 50; ++i) {
            const std::string path = sb.jail + "/posted" + std::to_string(i);
            bool resumed = false;
            std::optional<task<void>> t;
            t.emplace(open_into_frame(ctx, path, plain(O_RDWR | O_CREAT | O_EXCL), resumed));
            start(*t);
            REQUIRE(io_uring_submit(ctx.native_handle()) >= 1);
            REQUIRE(ringsock::test::wait_cqes_posted(ctx, 1));
            t.reset();  // settle reaps the CQE: the descriptor is the operation's to close
            REQUIRE_FALSE(resumed);
            REQUIRE(::access(path.c_str(), F_OK) == 0);  // the open did happen
            REQUIRE(ctx.outstanding_work() == 0);
        }
    }
    SECTION("completion reaped, coroutine not yet resumed") {
        int unresumed = 0;
        ctx.sync_wait([](io_context& ctx, sandbox& sb, int& unresumed) -> task<void> {
            for (int i = 0; i < 50; ++i) {
                const std::string path = sb.jail + "/ready" + std::to_string(i);
                bool resumed = false;
                task<void> t = open_into_frame(ctx, path, plain(O_RDWR | O_CREAT | O_EXCL), resumed);
                start(t);
                REQUIRE(io_uring_submit(ctx.native_handle()) >= 1);
                REQUIRE(ringsock::test::wait_cqes_posted(ctx, 1));
                // This frame is queued ahead of the open's completion, reaped next turn.
                co_await ctx.yield();
                if (!resumed) ++unresumed;
                t = task<void>{};
                REQUIRE(::access(path.c_str(), F_OK) == 0);
            }
        }(ctx, sb, unresumed));
        CHECK(unresumed == 50);
    }
    REQUIRE(counted::alive == 0);
}

TEST_CASE("file_ops: reads at and past end of file are short, read_exact_at reports end_of_stream",
          "[file_ops]") {
    fd_leak_guard guard;
    io_context ctx;
    sandbox sb;
    ctx.sync_wait([](io_context& ctx, sandbox& sb) -> task<void> {
        auto f = co_await file::open(ctx, sb.jail_fd.get(), "inside.txt", ringsock::beneath(O_RDONLY));
        REQUIRE(f);
        std::array<char, 64> buf{};
        auto a = co_await f->read_some_at(buf, 0);
        REQUIRE(a.value() == 11);
        CHECK(std::string(buf.data(), 11) == "hello world");
        auto b = co_await f->read_some_at(buf, 6);
        REQUIRE(b.value() == 5);
        CHECK(std::string(buf.data(), 5) == "world");
        auto c = co_await f->read_some_at(buf, 11);
        CHECK(c.value() == 0);
        auto d = co_await f->read_some_at(buf, 1 << 20);
        CHECK(d.value() == 0);
        std::array<char, 8> eight{};
        auto e = co_await f->read_exact_at(eight, 6);
        CHECK(e.error() == ringsock::errc::end_of_stream);
        CHECK(e.partial_value() == 5);
        CHECK(std::string(e.what()) == "read_at");
        std::array<char, 5> five{};
        auto g = co_await ringsock::read_exact_at(ctx, f->native_handle(), five, 6);
        CHECK(g.value() == 5);
        std::array<char, 0> none{};
        auto h = co_await f->read_exact_at(none, 100);
        CHECK(h.value() == 0);
        // A write on a read-only descriptor: the kernel's EBADF, named.
        auto w = co_await f->write_some_at(std::string_view("x"), 0);
        CHECK(w.error() == err(EBADF));
        CHECK(std::string(w.what()) == "write_at");
    }(ctx, sb));
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("file_ops: statx of a file, a directory, a FIFO and a missing path", "[file_ops]") {
    fd_leak_guard guard;
    io_context ctx;
    sandbox sb;
    ctx.sync_wait([](io_context& ctx, sandbox& sb) -> task<void> {
        auto s = co_await ringsock::stat_at(ctx, sb.jail_fd.get(), "inside.txt");
        REQUIRE(s);
        CHECK(S_ISREG(s->stx_mode));
        CHECK(s->stx_size == 11);
        auto d = co_await ringsock::stat_at(ctx, sb.jail_fd.get(), "sub");
        REQUIRE(d);
        CHECK(S_ISDIR(d->stx_mode));
        auto p = co_await ringsock::stat_at(ctx, sb.jail_fd.get(), "fifo");
        REQUIRE(p);
        CHECK(S_ISFIFO(p->stx_mode));
        auto l = co_await ringsock::stat_at(ctx, sb.jail_fd.get(), "link_in", AT_SYMLINK_NOFOLLOW);
        REQUIRE(l);
        CHECK(S_ISLNK(l->stx_mode));
        auto m = co_await ringsock::stat_at(ctx, sb.jail_fd.get(), "missing");
        CHECK(m.error() == err(ENOENT));
        CHECK(std::string(m.what()) == "statx");
        // Through a file object: the file itself, and a path relative to a directory.
        auto dir = co_await file::open(ctx, AT_FDCWD, sb.jail, plain(O_RDONLY | O_DIRECTORY));
        REQUIRE(dir);
        auto self = co_await dir->stat();
        REQUIRE(self);
        CHECK(S_ISDIR(self->stx_mode));
        auto deep = co_await dir->stat_at("sub/deep.txt");
        REQUIRE(deep);
        CHECK(deep->stx_size == 4);
        std::stop_source stopped;
        stopped.request_stop();
        auto c = co_await dir->stat(stopped.get_token());
        CHECK(canceled(c.error()));
    }(ctx, sb));
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("file_ops: write_all_at then read back, at an offset", "[file_ops]") {
    fd_leak_guard guard;
    io_context ctx;
    sandbox sb;
    ctx.sync_wait([](io_context& ctx, sandbox& sb) -> task<void> {
        auto dir = co_await file::open(ctx, sb.jail_fd.get(), ".", ringsock::beneath(O_PATH | O_DIRECTORY));
        REQUIRE(dir);
        auto f = co_await dir->open_at("data.bin", ringsock::beneath(O_RDWR | O_CREAT | O_TRUNC, 0600), 5s);
        REQUIRE(f);
        std::vector<char> data(3 << 20);
        for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('a' + i % 26);
        auto w = co_await f->write_all_at(data, 4096, 10s);
        REQUIRE(w.value() == data.size());
        auto st = co_await f->stat();
        REQUIRE(st);
        CHECK(st->stx_size == 4096 + data.size());
        std::vector<char> back(data.size());
        auto r = co_await f->read_exact_at(back, 4096, 10s);
        REQUIRE(r.value() == back.size());
        CHECK(back == data);
        std::array<char, 16> hole{};
        auto h = co_await f->read_exact_at(hole, 0);
        REQUIRE(h.value() == hole.size());
        CHECK(hole == std::array<char, 16>{});
        // A stop before the write starts: nothing is written.
        std::stop_source stopped;
        stopped.request_stop();
        auto none = co_await f->write_all_at(std::string_view("zzzz"), 4096, stopped.get_token());
        CHECK(canceled(none.error()));
        CHECK(none.partial_value() == 0);
        auto again = co_await f->read_exact_at(hole, 4096);
        REQUIRE(again);
        CHECK(std::string(hole.data(), 4) == "abcd");
        auto closed = co_await f->close_async();
        CHECK(closed);
        CHECK_FALSE(f->is_open());
    }(ctx, sb));
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("file_ops: close_async releases the descriptor on every path", "[file_ops]") {
    fd_leak_guard guard;
    io_context ctx;
    auto count = ringsock::test::open_fd_count;
    const auto base = count();
    ctx.sync_wait([](io_context& ctx, std::size_t base, std::size_t (*count)()) -> task<void> {
        auto r = co_await ringsock::close_async(ctx, unique_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC)));
        CHECK(r);
        CHECK(count() == base);
        std::stop_source stopped;
        stopped.request_stop();
        auto c = co_await ringsock::close_async(ctx, unique_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC)),
                                                stopped.get_token());
        CHECK(canceled(c.error()));  // cancelled, and still closed
        CHECK(count() == base);
        auto e = co_await ringsock::close_async(ctx, unique_fd());
        CHECK(e.error() == err(EBADF));
        CHECK(std::string(e.what()) == "close");
        {
            // Built and never awaited: closed by its destructor.
            auto never = ringsock::close_async(ctx, unique_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC)));
            CHECK(count() == base + 1);
        }
        CHECK(count() == base);
        auto z = co_await ringsock::close_async(ctx, unique_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC)), 0ms);
        CHECK((z || timed_out(z.error())));
        CHECK(count() == base);
    }(ctx, base, count));
    REQUIRE(ctx.outstanding_work() == 0);
}

TEST_CASE("file_ops: closing, moving or destroying a file with reads in flight cancels them", "[file_ops]") {
    fd_leak_guard guard;
    io_context ctx;
    sandbox sb;
    ctx.sync_wait([](io_context& ctx, sandbox& sb) -> task<void> {
        for (int i = 0; i < 60; ++i) {
            // O_RDWR on a FIFO never waits for a peer; its read waits for data.
            auto f = co_await file::open(ctx, AT_FDCWD, sb.fifo(), plain(O_RDWR));
            REQUIRE(f);
            std::optional<file> moved;
            std::error_code ec1, ec2;
            bool closed = false;
            ringsock::scope sc(ctx);
            sc.spawn([&](std::stop_token) -> task<void> {
                std::array<char, 8> buf{};
                ec1 = (co_await f->read_some_at(buf, 0)).error();
            });
            sc.spawn([&](std::stop_token) -> task<void> {
                std::array<char, 8> buf{};
                auto op = f->read_some_at(buf, 0, 1h);  // built now, awaited after the close
                while (!closed) co_await ctx.yield();
                ec2 = (co_await op).error();
            });
            // 1: the read is queued for submission; 2: its SQE went in; 3: it waits.
            for (int k = 0; k < 1 + i % 3; ++k) co_await ctx.yield();
            switch (i / 3 % 3) {
                case 0: f->close(); break;
                case 1: moved.emplace(std::move(*f)); moved->close(); break;
                default: moved.emplace(std::move(*f)); moved.reset(); break;
            }
            closed = true;
            co_await sc.join();
            CHECK(canceled(ec1));
            CHECK(canceled(ec2));
        }
    }(ctx, sb));
    REQUIRE(ctx.outstanding_work() == 0);
}
