// Tests for unique_fd: it closes its descriptor exactly once, and move, release and
// reset hand ownership over without closing anything twice or leaking.
#include <catch2/catch.hpp>

#include <ringsock/unique_fd.hpp>

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <type_traits>
#include <utility>

namespace {

using ringsock::unique_fd;

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }
bool is_closed(int fd) { return ::fcntl(fd, F_GETFD) == -1 && errno == EBADF; }

int new_fd() {
    int fd = ::eventfd(0, EFD_CLOEXEC);
    REQUIRE(fd >= 0);
    return fd;
}

}  // namespace

static_assert(!std::is_copy_constructible_v<unique_fd>);
static_assert(!std::is_copy_assignable_v<unique_fd>);
static_assert(std::is_nothrow_move_constructible_v<unique_fd>);
static_assert(std::is_nothrow_move_assignable_v<unique_fd>);

TEST_CASE("unique_fd: a default-constructed one is empty", "[unique_fd]") {
    unique_fd u;
    REQUIRE(u.get() == -1);
    REQUIRE_FALSE(u.valid());
    REQUIRE_FALSE(static_cast<bool>(u));
    u.reset();  // closing nothing is fine
    REQUIRE(u.get() == -1);
}

TEST_CASE("unique_fd: closes its descriptor on destruction", "[unique_fd]") {
    int fd = new_fd();
    {
        unique_fd u(fd);
        REQUIRE(u.get() == fd);
        REQUIRE(u.valid());
        REQUIRE(static_cast<bool>(u));
        REQUIRE(is_open(fd));
    }
    REQUIRE(is_closed(fd));
}

TEST_CASE("unique_fd: a moved-from object closes nothing, so the descriptor is closed once", "[unique_fd]") {
    int fd = new_fd();
    int reused = -1;
    {
        unique_fd a(fd);
        {
            unique_fd b(std::move(a));
            REQUIRE(a.get() == -1);  // NOLINT(bugprone-use-after-move): checking the moved-from state
            REQUIRE(b.get() == fd);
            REQUIRE(is_open(fd));
        }
        REQUIRE(is_closed(fd));
        // The lowest free number is handed out again: if `a` closed it a second time it
        // would close this unrelated descriptor.
        reused = new_fd();
        REQUIRE(reused == fd);
    }
    REQUIRE(is_open(reused));
    ::close(reused);
}

TEST_CASE("unique_fd: move assignment closes the target's old descriptor", "[unique_fd]") {
    int fd1 = new_fd();
    int fd2 = new_fd();
    unique_fd a(fd1);
    unique_fd b(fd2);
    b = std::move(a);
    REQUIRE(b.get() == fd1);
    REQUIRE(a.get() == -1);  // NOLINT(bugprone-use-after-move)
    REQUIRE(is_closed(fd2));
    REQUIRE(is_open(fd1));

    unique_fd& alias = b;
    b = std::move(alias);  // self-move keeps the descriptor open and owned
    REQUIRE(b.get() == fd1);
    REQUIRE(is_open(fd1));

    b = unique_fd();
    REQUIRE_FALSE(b.valid());
    REQUIRE(is_closed(fd1));
}

TEST_CASE("unique_fd: release() gives the descriptor up without closing it", "[unique_fd]") {
    int fd = new_fd();
    {
        unique_fd u(fd);
        int got = u.release();
        REQUIRE(got == fd);
        REQUIRE_FALSE(u.valid());
        REQUIRE(u.get() == -1);
    }
    REQUIRE(is_open(fd));
    ::close(fd);
}

TEST_CASE("unique_fd: reset() closes the old descriptor and takes the new one", "[unique_fd]") {
    int fd1 = new_fd();
    int fd2 = new_fd();
    unique_fd u(fd1);
    u.reset(fd2);
    REQUIRE(u.get() == fd2);
    REQUIRE(is_closed(fd1));
    REQUIRE(is_open(fd2));
    u.reset();
    REQUIRE(u.get() == -1);
    REQUIRE(is_closed(fd2));
    u.reset();
    REQUIRE(u.get() == -1);
}
