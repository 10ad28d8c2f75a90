// A tiny program that uses ringsock the way each consumer build (meson-subproject,
// pkgconfig, cmake: RINGSOCK_CONSUMER names it) would: one socketpair round trip
// through io_uring, then the version it was built against.
#include <ringsock/ringsock.hpp>

#include <dirent.h>

#include <cstdio>
#include <string_view>

// Open descriptors, so the consumer also proves the round trip leaked none.
static int open_fds() {
    int n = 0;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
        ::closedir(d);
    }
    return n;
}

static std::size_t round_trip() {
    ringsock::io_context ctx;
    auto [a, b] = ringsock::stream_socket::pair(ctx).value();
    auto run = [&]() -> ringsock::task<std::size_t> {
        auto w = co_await a.write_all(std::string_view("ping"));
        char buf[4];
        auto n = co_await b.read_exact(buf);
        co_return w && n ? *n : 0;
    };
    return ctx.sync_wait(run());
}

int main() {
    int fds_before = open_fds();
    std::size_t n = round_trip();
    int fds_after = open_fds();
    if (fds_after != fds_before) std::printf("leaked %d descriptor(s)\n", fds_after - fds_before);
    std::printf("%s consumer: read %zu bytes with ringsock %s\n", RINGSOCK_CONSUMER, n, RINGSOCK_VERSION_STRING);
    return n == 4 && fds_after == fds_before && RINGSOCK_VERSION >= 100 ? 0 : 1;
}
