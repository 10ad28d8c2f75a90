// asio_echo PATH: single-threaded Boost.Asio echo server on a Unix stream socket, with
// C++20 coroutines (awaitable, co_spawn): one io_context run on the main thread, a
// coroutine per connection doing async_read_some into a 16 KiB buffer and async_write of
// what came back. run.sh builds it twice: with Asio's default reactor (epoll), and with
// -DBOOST_ASIO_HAS_IO_URING -DBOOST_ASIO_DISABLE_EPOLL -luring (Asio's io_uring backend).
// SIGTERM/SIGINT stop it.
#include <boost/asio.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <exception>

#include <unistd.h>

namespace asio = boost::asio;
using asio::local::stream_protocol;

namespace {

asio::awaitable<void> echo(stream_protocol::socket sock) {
    std::array<char, 16 * 1024> buf;  // lives in the coroutine frame, as a task's buffer would
    try {
        for (;;) {
            std::size_t n = co_await sock.async_read_some(asio::buffer(buf), asio::use_awaitable);
            co_await asio::async_write(sock, asio::buffer(buf.data(), n), asio::use_awaitable);
        }
    } catch (const std::exception&) {
        // end of stream or a reset: the connection is done
    }
}

asio::awaitable<void> listen(stream_protocol::acceptor& acceptor) {
    for (;;) {
        stream_protocol::socket sock = co_await acceptor.async_accept(asio::use_awaitable);
        asio::co_spawn(acceptor.get_executor(), echo(std::move(sock)), asio::detached);
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: asio_echo PATH\n");
        return 2;
    }
    try {
        asio::io_context ctx(1);  // one thread: Asio may leave out its locking
        ::unlink(argv[1]);
        stream_protocol::acceptor acceptor(ctx, stream_protocol::endpoint(argv[1]));
        asio::signal_set signals(ctx, SIGTERM, SIGINT);
        signals.async_wait([&](const boost::system::error_code&, int) { ctx.stop(); });
        asio::co_spawn(ctx, listen(acceptor), asio::detached);
        ctx.run();
        ::unlink(argv[1]);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "asio_echo: %s\n", e.what());
        return 1;
    }
    return 0;
}
