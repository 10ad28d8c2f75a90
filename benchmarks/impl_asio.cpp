// Optional baseline "asio": Boost.Asio (>= 1.81) with its io_uring backend
// (BOOST_ASIO_HAS_IO_URING + BOOST_ASIO_DISABLE_EPOLL, set by meson.build for this file
// only) and C++20 coroutines (asio::awaitable, use_awaitable), written the way a user
// would: async_write / async_read on local::stream_protocol sockets.
//  - pingpong_1thread only (kind::pingpong with one connection): client and echo
//    coroutines on one io_context;
//  - one_way on streams (stream_4k, stream_64k, stream_1m): async_write per chunk here,
//    async_read_some on the peer thread's own io_context.
// As in impl_ringsock.cpp the coroutines are spawned once; the one that finishes an op
// counts it and stops the io_context when the slice is over.
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/version.hpp>
#include <boost/asio/write.hpp>
#include <cstdint>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "harness.hpp"
#include "sockutil.hpp"

#if !defined(BOOST_ASIO_HAS_IO_URING) || !defined(BOOST_ASIO_DISABLE_EPOLL)
#error "impl_asio.cpp is meant to be built with BOOST_ASIO_HAS_IO_URING and BOOST_ASIO_DISABLE_EPOLL"
#endif

namespace {

namespace asio = boost::asio;
using local_socket = asio::local::stream_protocol::socket;
using namespace bench;

// Counts ops for the running slice and stops the io_context when it is over.
class driver {
 public:
  explicit driver(asio::io_context& ctx) noexcept : ctx_(ctx) {}
  void op_done() {
    ++ops_;
    if (s_->done(ops_)) ctx_.stop();
  }
  std::int64_t start() noexcept { return s_->sample(seq_++) ? slice::now_ns() : 0; }
  void finish(std::int64_t t0, std::uint64_t epoch) noexcept {
    if (t0 != 0 && epoch == epoch_) s_->record_latency(slice::now_ns() - t0);
  }
  std::uint64_t epoch() const noexcept { return epoch_; }

  std::uint64_t run(slice& s) {
    s_ = &s;
    ops_ = 0;
    ++epoch_;
    ctx_.restart();
    ctx_.run();
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    if (!ctx_.stopped()) throw std::runtime_error("asio: the coroutines ended");
    return ops_;
  }
  // co_spawn completion: remember the first exception and end the slice.
  void fail(std::exception_ptr e) {
    if (e && !error_) error_ = e;
    ctx_.stop();
  }

 private:
  asio::io_context& ctx_;
  slice* s_ = nullptr;
  std::uint64_t ops_ = 0, seq_ = 0, epoch_ = 0;
  std::exception_ptr error_;
};

local_socket adopt(asio::io_context& ctx, int fd) {
  local_socket s(ctx);
  s.assign(asio::local::stream_protocol(), fd);
  return s;
}

// kind::pingpong, one connection (pingpong_1thread).
class pingpong final : public session {
 public:
  explicit pingpong(const workload& w) : msg_(w.msg_size), d_(ctx_) {
    auto p = make_socketpair(SOCK_STREAM);
    auto on_done = [this](std::exception_ptr e) { d_.fail(e); };
    asio::co_spawn(ctx_, client(d_, adopt(ctx_, p.a.release()), msg_), on_done);
    asio::co_spawn(ctx_, echo(adopt(ctx_, p.b.release()), msg_), on_done);
  }
  counts run(slice& s) override {
    counts c;
    c.ops = d_.run(s);
    c.bytes = c.ops * msg_ * 2;
    return c;
  }

 private:
  static asio::awaitable<void> client(driver& d, local_socket a, std::size_t msg) {
    std::vector<char> out(msg, 'p'), in(msg);
    for (;;) {
      const std::int64_t t0 = d.start();
      const std::uint64_t epoch = d.epoch();
      co_await asio::async_write(a, asio::buffer(out), asio::use_awaitable);
      co_await asio::async_read(a, asio::buffer(in), asio::use_awaitable);
      d.finish(t0, epoch);
      d.op_done();
    }
  }
  static asio::awaitable<void> echo(local_socket b, std::size_t msg) {
    std::vector<char> buf(msg);
    for (;;) {
      co_await asio::async_read(b, asio::buffer(buf), asio::use_awaitable);
      co_await asio::async_write(b, asio::buffer(buf), asio::use_awaitable);
    }
  }

  std::size_t msg_;
  asio::io_context ctx_{1};
  driver d_;
};

// kind::one_way on a stream socketpair.
class one_way final : public session {
 public:
  explicit one_way(const workload& w) : msg_(w.msg_size), d_(ctx_) {
    auto p = make_socketpair(SOCK_STREAM);
    b_ = std::move(p.b);
    asio::co_spawn(ctx_, writer(d_, adopt(ctx_, p.a.release()), msg_),
                   [this](std::exception_ptr e) { d_.fail(e); });
    unique_fd peer_fd(::dup(b_.get()));
    if (!peer_fd) throw_errno("dup");
    peer_.start(
        b_.get(), [this, fd = peer_fd.release()] { read_thread(fd); },
        [this] {
          prog_.fail();
          ::shutdown(b_.get(), SHUT_RDWR);
        });
  }
  ~one_way() override { peer_.stop_and_join(); }

  counts run(slice& s) override {
    counts c;
    c.ops = d_.run(s);
    c.bytes = c.ops * msg_;
    written_ += c.bytes;
    prog_.wait_for(written_);
    return c;
  }

 private:
  static asio::awaitable<void> writer(driver& d, local_socket a, std::size_t msg) {
    std::vector<char> out(msg, 'w');
    for (;;) {
      co_await asio::async_write(a, asio::buffer(out), asio::use_awaitable);
      d.op_done();
    }
  }
  static asio::awaitable<void> reader(local_socket b, std::size_t msg, progress& prog) {
    std::vector<char> in(msg);
    for (;;) {
      boost::system::error_code ec;
      std::size_t n = co_await b.async_read_some(asio::buffer(in), asio::redirect_error(asio::use_awaitable, ec));
      if (ec == asio::error::eof) co_return;  // stop_and_join's shutdown
      if (ec) throw boost::system::system_error(ec, "async_read_some");
      prog.add(n);
    }
  }
  void read_thread(int fd) {
    asio::io_context ctx(1);
    std::exception_ptr error;
    asio::co_spawn(ctx, reader(adopt(ctx, fd), msg_, prog_), [&](std::exception_ptr e) { error = e; });
    ctx.run();
    if (error) std::rethrow_exception(error);
  }

  std::size_t msg_;
  progress prog_;
  std::uint64_t written_ = 0;
  unique_fd b_;
  asio::io_context ctx_{1};
  driver d_;
  peer_thread peer_;  // joined first
};

const registrar reg{{
    .name = "asio",
    .description = "Boost.Asio " + std::to_string(BOOST_ASIO_VERSION / 100000) + "." +
                   std::to_string(BOOST_ASIO_VERSION / 100 % 1000) + "." + std::to_string(BOOST_ASIO_VERSION % 100) +
                   ", io_uring backend, C++20 coroutines (pingpong_1thread and stream_* only)",
    .factories = {{kind::pingpong,
                   [](const workload& w) -> std::unique_ptr<session> {
                     if (w.conns != 1) return nullptr;
                     return std::make_unique<pingpong>(w);
                   }},
                  {kind::one_way,
                   [](const workload& w) -> std::unique_ptr<session> {
                     if (w.sock_type != SOCK_STREAM) return nullptr;
                     if (running_on_valgrind()) {
                       add_note("asio: two-thread workloads skipped under valgrind");
                       return nullptr;
                     }
                     return std::make_unique<one_way>(w);
                   }}},
}};

}  // namespace
