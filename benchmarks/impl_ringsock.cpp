// Implementation "ringsock": the library itself, C++20 coroutines on io_context.
//  - every session owns one io_context; its coroutines are spawned once, in the
//    constructor, and loop forever (they own their sockets);
//  - run() just restarts the loop and calls io_context::run(); the coroutine that
//    finishes an op counts it and, when the slice is over, calls io_context::stop(), so
//    run() returns after that resume, and the next op's SQE waits unsubmitted in the SQ
//    until the next slice (the peer side is idle in between);
//  - peer threads (pingpong_2thread, one_way) run their own io_context with sync_wait;
//    stop_and_join's shutdown() makes their read return end of stream.
// Variant ringsock_nodt: the same code on io_context::options{.defer_taskrun = false}.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <coroutine>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <ringsock/acceptor.hpp>
#include <ringsock/io_context.hpp>
#include <ringsock/stream_socket.hpp>
#include <ringsock/task.hpp>
// Socket types and descriptor passing arrived after the stream core: their workloads
// are skipped when the headers are not there.
#if __has_include(<ringsock/seqpacket_socket.hpp>)
#include <ringsock/seqpacket_socket.hpp>
#define RINGSOCK_BENCH_HAVE_SEQPACKET 1
#endif
#if __has_include(<ringsock/datagram_socket.hpp>)
#include <ringsock/datagram_socket.hpp>
#define RINGSOCK_BENCH_HAVE_DATAGRAM 1
#endif
#if __has_include(<ringsock/fd_stream.hpp>)
#include <ringsock/fd_stream.hpp>
#define RINGSOCK_BENCH_HAVE_FD_STREAM 1
#endif

#include "harness.hpp"
#include "sockutil.hpp"

namespace {

namespace rs = ringsock;
using namespace bench;

struct config {
  const char* name;
  bool defer_taskrun;
};

constexpr config cfg_default{"ringsock", true};
constexpr config cfg_nodt{"ringsock_nodt", false};

unsigned pow2_at_least(std::size_t n) {
  unsigned p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Builds the context the way a user would; notes a refused DEFER_TASKRUN.
std::unique_ptr<rs::io_context> make_context(const config& cfg, unsigned entries) {
  rs::io_context::options opts;
  opts.entries = entries;
  opts.defer_taskrun = cfg.defer_taskrun;
  auto ctx = std::make_unique<rs::io_context>(opts);
  if (cfg.defer_taskrun && !ctx->features().defer_taskrun)
    add_note(std::string(cfg.name) + ": SINGLE_ISSUER|DEFER_TASKRUN refused, using a plain ring");
  return ctx;
}

// Shared by a session and its coroutines: counts ops and ends the slice.
//
// Where the slice ends matters when several coroutines share the loop (pingpong): if
// the loop stopped in the middle of a turn, the coroutines resumed before the stop
// would submit their next ops one enter ahead of their peers resumed after it; a recv
// submitted before the send that feeds it arms poll, and with 1000 connections on a
// DEFER_TASKRUN ring (whose task-work runs in bounded batches per enter) the pairs
// never fall back into step.  So for those sessions op_done() only wakes a "stopper"
// coroutine that yields to the end of the turn and stops the loop there, as
// the raw_uring loops end a slice between two turns.  Sessions with one coroutine on the
// loop stop at once (the next op's SQE then waits in the SQ until the next slice).
class driver {
 public:
  explicit driver(rs::io_context& ctx, bool stop_between_turns = false, std::uint64_t check_mask = 0)
      : ctx_(ctx), mask_(check_mask) {
    if (stop_between_turns) ctx_.spawn(stopper(*this));
  }

  // Called by a coroutine after each op.  Reads the clock every (mask + 1) ops only;
  // the --iterations count is always exact.
  void op_done() {
    ++ops_;
    if (stopping_) return;
    if ((ops_ & mask_) == 0 ? s_->done(ops_) : ops_ >= s_->max_ops()) {
      stopping_ = true;
      if (parked_) std::exchange(parked_, {}).resume();  // runs until its co_await yield()
      else ctx_.stop();
    }
  }
  // Latency sampling: start() gives a timestamp (or 0); finish() records it unless
  // the op started in an earlier slice.
  struct stamp {
    std::int64_t t0;
    std::uint64_t epoch;
  };
  stamp start() noexcept { return {s_->sample(seq_++) ? slice::now_ns() : 0, epoch_}; }
  void finish(const stamp& st) noexcept {
    if (st.t0 != 0 && st.epoch == epoch_) s_->record_latency(slice::now_ns() - st.t0);
  }

  // Runs the loop until a coroutine ends the slice; returns the ops done in it.
  std::uint64_t run(slice& s) {
    s_ = &s;
    ops_ = 0;
    stopping_ = false;
    ++epoch_;
    ctx_.restart();
    ctx_.run();  // rethrows what escaped a coroutine
    if (!ctx_.stopped()) throw std::runtime_error("ringsock: the coroutines ended");
    return ops_;
  }

 private:
  struct park {
    driver* d;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) noexcept { d->parked_ = h; }
    void await_resume() const noexcept {}
  };
  static rs::task<void> stopper(driver& d) {
    park p{&d};  // named: no braced temporary inside co_await (g++ 12)
    for (;;) {
      co_await p;
      co_await d.ctx_.yield();  // resumed first in the next turn, after its enter
      d.ctx_.stop();
    }
  }

  rs::io_context& ctx_;
  std::uint64_t mask_;
  std::coroutine_handle<> parked_;
  bool stopping_ = false;
  slice* s_ = nullptr;
  std::uint64_t ops_ = 0;
  std::uint64_t seq_ = 0;
  std::uint64_t epoch_ = 0;
};

template <class R>
auto check(R&& r) {
  return std::forward<R>(r).value();  // throws std::system_error naming the op
}

// ---------------------------------------------------------------------------
// kind::pingpong: N socketpairs; per pair a client (A) and an echo (B) coroutine.
rs::task<void> pp_client(driver& d, rs::stream_socket a, std::size_t msg) {
  std::vector<char> out(msg, 'p'), in(msg);
  for (;;) {
    const driver::stamp st = d.start();
    check(co_await a.write_all(out));
    check(co_await a.read_exact(in));
    d.finish(st);
    d.op_done();
  }
}

rs::task<void> pp_echo(rs::stream_socket b, std::size_t msg) {
  std::vector<char> buf(msg);
  for (;;) {
    check(co_await b.read_exact(buf));
    check(co_await b.write_all(buf));
  }
}

class pingpong final : public session {
 public:
  pingpong(const workload& w, const config& cfg)
      : ctx_(make_context(cfg, std::min(4096U, pow2_at_least(std::max<std::size_t>(64, 2 * w.conns + 8))))),
        d_(*ctx_, true, w.conns > 1 ? 7 : 0),
        msg_(w.msg_size) {
    for (std::size_t i = 0; i < w.conns; ++i) {
      auto [a, b] = check(rs::stream_socket::pair(*ctx_));
      ctx_->spawn(pp_client(d_, std::move(a), msg_));
      ctx_->spawn(pp_echo(std::move(b), msg_));
    }
  }

  counts run(slice& s) override {
    counts c;
    c.ops = d_.run(s);
    c.bytes = c.ops * msg_ * 2;
    return c;
  }

 private:
  std::unique_ptr<rs::io_context> ctx_;  // destroyed last: cancels, then frees the frames
  driver d_;
  std::size_t msg_;
};

// ---------------------------------------------------------------------------
// kind::pingpong_2thread: client coroutine here, echo coroutine on the peer thread's
// own io_context.
class pingpong_2thread final : public session {
 public:
  pingpong_2thread(const workload& w, const config& cfg)
      : cfg_(cfg), msg_(w.msg_size), ctx_(make_context(cfg, 64)), d_(*ctx_) {
    auto p = make_socketpair(SOCK_STREAM);
    b_ = std::move(p.b);
    ctx_->spawn(pp_client(d_, rs::stream_socket(*ctx_, rs::unique_fd(p.a.release())), msg_));
    // The peer's stream_socket owns a dup, so stop_and_join can always shutdown() b_.
    rs::unique_fd peer_fd(::dup(b_.get()));
    if (!peer_fd) throw_errno("dup");
    peer_.start(
        b_.get(), [this, fd = peer_fd.release()] { echo_thread(fd); }, [this] { ::shutdown(b_.get(), SHUT_RDWR); });
  }
  ~pingpong_2thread() override { peer_.stop_and_join(); }

  counts run(slice& s) override {
    counts c;
    c.ops = d_.run(s);
    c.bytes = c.ops * msg_ * 2;
    return c;
  }

 private:
  static rs::task<void> echo_until_eof(rs::stream_socket b, std::size_t msg) {
    std::vector<char> buf(msg);
    for (;;) {
      auto r = co_await b.read_exact(buf);
      if (!r && r.error() == rs::errc::end_of_stream && r.partial_value() == 0) co_return;  // stop_and_join
      check(std::move(r));
      check(co_await b.write_all(buf));
    }
  }
  void echo_thread(int fd) {
    rs::unique_fd owned(fd);
    auto ctx = make_context(cfg_, 64);
    ctx->sync_wait(echo_until_eof(rs::stream_socket(*ctx, std::move(owned)), msg_));
  }

  config cfg_;
  std::size_t msg_;
  unique_fd b_;
  std::unique_ptr<rs::io_context> ctx_;
  driver d_;
  peer_thread peer_;  // joined first
};

// ---------------------------------------------------------------------------
// kind::one_way: writer coroutine here, reader coroutine on the peer thread's
// io_context.  Streams: write_all per chunk, read_some into a msg_size buffer;
// seqpacket / dgram: send / receive one message.
template <class Socket>
class one_way final : public session {
 public:
  one_way(const workload& w, const config& cfg)
      : cfg_(cfg), msg_(w.msg_size), use_receive_(w.recvmsg), ctx_(make_context(cfg, 64)), d_(*ctx_) {
    auto p = make_socketpair(w.sock_type);
    b_ = std::move(p.b);
    ctx_->spawn(writer(d_, Socket(*ctx_, rs::unique_fd(p.a.release())), msg_));
    rs::unique_fd peer_fd(::dup(b_.get()));
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
  static constexpr bool is_stream = std::is_same_v<Socket, rs::stream_socket>;

  static rs::task<void> writer(driver& d, Socket a, std::size_t msg) {
    std::vector<char> out(msg, 'w');
    for (;;) {
      if constexpr (is_stream) {
        check(co_await a.write_all(out));
      } else {
        check(co_await a.send(out));
      }
      d.op_done();
    }
  }
  // Message sockets: receive_bytes (a plain recv), or with use_receive receive(), a
  // recvmsg that takes descriptors and credentials too.
  static rs::task<void> reader(Socket b, std::size_t msg, bool use_receive, progress& prog) {
    std::vector<char> in(msg);
    for (;;) {
      std::size_t n = 0;
      if constexpr (is_stream) {
        n = check(co_await b.read_some(in));
      } else if (use_receive) {
        auto r = co_await b.receive(in);
        n = r.value().bytes;  // no copy of the received_message
      } else {
        n = check(co_await b.receive_bytes(in));
      }
      if (n == 0) co_return;  // stop_and_join's shutdown
      prog.add(n);
    }
  }
  void read_thread(int fd) {
    rs::unique_fd owned(fd);
    auto ctx = make_context(cfg_, 64);
    ctx->sync_wait(reader(Socket(*ctx, std::move(owned)), msg_, use_receive_, prog_));
  }

  config cfg_;
  std::size_t msg_;
  bool use_receive_;
  progress prog_;
  std::uint64_t written_ = 0;
  unique_fd b_;
  std::unique_ptr<rs::io_context> ctx_;
  driver d_;
  peer_thread peer_;  // joined first
};

// ---------------------------------------------------------------------------
// kind::accept: connect (socket() + CONNECT SQE), accept (the acceptor's multishot
// ACCEPT), then both sockets go out of scope (close(2)).
class accept_rate final : public session {
 public:
  accept_rate(const workload&, const config& cfg) : ctx_(make_context(cfg, 64)), d_(*ctx_) {
    auto ep = check(rs::endpoint::path(dir_.path("listen.sock")));
    auto acc = check(rs::acceptor::listen(*ctx_, ep));
    ctx_->spawn(cycle(d_, *ctx_, std::move(acc), ep));
  }

  counts run(slice& s) override {
    counts c;
    c.ops = d_.run(s);
    return c;
  }

 private:
  static rs::task<void> cycle(driver& d, rs::io_context& ctx, rs::acceptor acc, rs::endpoint ep) {
    for (;;) {
      rs::stream_socket client = check(co_await rs::stream_socket::connect(ctx, ep));
      rs::stream_socket server = check(co_await acc.accept());
      d.op_done();
    }
  }

  temp_dir dir_;  // outlives the context (the acceptor removes its socket file first)
  std::unique_ptr<rs::io_context> ctx_;
  driver d_;
};

#if RINGSOCK_BENCH_HAVE_FD_STREAM
// ---------------------------------------------------------------------------
// kind::fd_passing: an fd_stream pair on one loop.  The sender coroutine sends a
// 1-byte message carrying the descriptor (send_fds); the receiver reads 1 byte
// (read_some queues the descriptors that came with it, MSG_CMSG_CLOEXEC) and closes
// every queued descriptor (take_fd).  The sender runs at most a few messages ahead.
class fd_passing final : public session {
 public:
  fd_passing(const workload&, const config& cfg)
      : ctx_(make_context(cfg, 64)), d_(*ctx_, true), payload_(::open("/dev/null", O_RDONLY | O_CLOEXEC)) {
    if (!payload_) throw_errno("open /dev/null");
    auto [a, b] = check(rs::fd_stream::pair(*ctx_));
    ctx_->spawn(sender(*ctx_, std::move(a), payload_, lag_));
    ctx_->spawn(receiver(d_, std::move(b), lag_));
  }

  counts run(slice& s) override {
    counts c;
    c.ops = d_.run(s);
    c.bytes = c.ops;
    return c;
  }

 private:
  static rs::task<void> sender(rs::io_context& ctx, rs::fd_stream a, const rs::unique_fd& payload, int& lag) {
    const std::array<char, 1> byte{'F'};
    for (;;) {
      while (lag >= 4) co_await ctx.yield();  // never in the steady state
      check(co_await a.send_fds(byte, payload));
      ++lag;
    }
  }
  static rs::task<void> receiver(driver& d, rs::fd_stream b, int& lag) {
    std::array<char, 1> buf{};
    for (;;) {
      if (check(co_await b.read_some(buf)) == 0) throw std::runtime_error("read_some: end of stream");
      unsigned n = 0;
      while (rs::unique_fd fd = b.take_fd()) ++n;  // closed here
      if (n == 0) throw std::runtime_error("read_some: no descriptor arrived");
      --lag;
      for (unsigned i = 0; i < n; ++i) d.op_done();
    }
  }

  std::unique_ptr<rs::io_context> ctx_;
  driver d_;
  rs::unique_fd payload_;
  int lag_ = 0;  // messages sent and not yet received
};
#endif

template <class Session, bool PeerWaitsInUring = false>
factory with(const config& cfg) {
  return [&cfg](const workload& w) -> std::unique_ptr<session> {
    if (PeerWaitsInUring && running_on_valgrind()) {
      add_note(std::string(cfg.name) + ": two-thread workloads skipped under valgrind (deadlocks in io_uring_enter)");
      return nullptr;
    }
    return std::make_unique<Session>(w, cfg);
  };
}

// one_way: the socket type decides the session.
factory one_way_factory(const config& cfg) {
  return [&cfg](const workload& w) -> std::unique_ptr<session> {
    if (running_on_valgrind()) {
      add_note(std::string(cfg.name) + ": two-thread workloads skipped under valgrind (deadlocks in io_uring_enter)");
      return nullptr;
    }
    switch (w.sock_type) {
      case SOCK_STREAM:
        return std::make_unique<one_way<rs::stream_socket>>(w, cfg);
#if RINGSOCK_BENCH_HAVE_SEQPACKET
      case SOCK_SEQPACKET:
        return std::make_unique<one_way<rs::seqpacket_socket>>(w, cfg);
#endif
#if RINGSOCK_BENCH_HAVE_DATAGRAM
      case SOCK_DGRAM:
        return std::make_unique<one_way<rs::datagram_socket>>(w, cfg);
#endif
      default:
        return nullptr;  // the library has no such socket type (yet)
    }
  };
}

implementation all_kinds(const config& cfg, std::string description) {
  return {cfg.name,
          std::move(description),
          {
              {kind::pingpong, with<pingpong>(cfg)},
              {kind::pingpong_2thread, with<pingpong_2thread, true>(cfg)},
              {kind::one_way, one_way_factory(cfg)},
              {kind::accept, with<accept_rate>(cfg)},
#if RINGSOCK_BENCH_HAVE_FD_STREAM
              {kind::fd_passing, with<fd_passing>(cfg)},
#endif
          }};
}

const registrar reg_default{all_kinds(cfg_default, "ringsock coroutines, io_context with DEFER_TASKRUN (default options)")};
const registrar reg_nodt{all_kinds(cfg_nodt, "ringsock coroutines, io_context::options::defer_taskrun = false")};

}  // namespace
