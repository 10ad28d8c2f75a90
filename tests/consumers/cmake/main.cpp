// A tiny program that uses ringsock the way a cmake consumer would: one
// socketpair round trip through io_uring, then the version it was built against.
#include <ringsock/ringsock.hpp>

#include <cstdio>
#include <string_view>

int main() {
    ringsock::io_context ctx;
    auto [a, b] = ringsock::stream_socket::pair(ctx).value();
    auto run = [&]() -> ringsock::task<std::size_t> {
        auto w = co_await a.write_all(std::string_view("ping"));
        char buf[4];
        auto n = co_await b.read_exact(buf);
        co_return w && n ? *n : 0;
    };
    std::size_t n = ctx.sync_wait(run());
    std::printf("cmake consumer: read %zu bytes with ringsock %s\n", n, RINGSOCK_VERSION_STRING);
    return n == 4 && RINGSOCK_VERSION >= 100 ? 0 : 1;
}
