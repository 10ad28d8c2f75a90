// Baseline "blocking": plain blocking send/recv/sendmsg/recvmsg syscalls.
// Two-ended workloads that are one-thread by definition drive both ends in
// sequence (send A, recv B, send B, recv A); two-thread workloads use a peer thread.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <vector>

#include "harness.hpp"
#include "sockutil.hpp"

namespace {

using namespace bench;

// kind::pingpong: N socketpairs; one thread sweeps: send on every A, then
// recv+send on every B, then recv on every A.  With N = 1 that is exactly
// send A, recv B, send B, recv A.
class pingpong final : public session {
 public:
  explicit pingpong(const workload& w) : msg_(w.msg_size), out_(w.msg_size, 'p'), in_(w.msg_size), t0_(w.conns) {
    for (std::size_t i = 0; i < w.conns; ++i) pairs_.push_back(make_socketpair(SOCK_STREAM));
  }

  counts run(slice& s) override {
    counts c;
    const std::size_t n = pairs_.size();
    while (!s.done(c.ops)) {
      for (std::size_t i = 0; i < n; ++i) {
        t0_[i] = s.sample(seq_++) ? slice::now_ns() : 0;
        send_all(pairs_[i].a.get(), out_.data(), msg_);
      }
      for (std::size_t i = 0; i < n; ++i) {
        if (!recv_exact(pairs_[i].b.get(), in_.data(), msg_)) throw std::runtime_error("unexpected EOF");
        send_all(pairs_[i].b.get(), in_.data(), msg_);
      }
      for (std::size_t i = 0; i < n; ++i) {
        if (!recv_exact(pairs_[i].a.get(), in_.data(), msg_)) throw std::runtime_error("unexpected EOF");
        if (t0_[i] != 0) s.record_latency(slice::now_ns() - t0_[i]);
      }
      c.ops += n;
    }
    c.bytes = c.ops * msg_ * 2;
    return c;
  }

 private:
  std::size_t msg_;
  std::vector<fd_pair> pairs_;
  std::vector<char> out_, in_;
  std::vector<std::int64_t> t0_;
  std::uint64_t seq_ = 0;
};

// kind::pingpong_2thread: client here, echo server on a peer thread.
class pingpong_2thread final : public session {
 public:
  explicit pingpong_2thread(const workload& w)
      : msg_(w.msg_size), p_(make_socketpair(SOCK_STREAM)), out_(msg_, 'p'), in_(msg_), echo_(msg_) {
    const int b = p_.b.get();
    peer_.start(
        b,
        [this, b] {
          while (recv_exact(b, echo_.data(), msg_)) send_all(b, echo_.data(), msg_);
        },
        [b] { ::shutdown(b, SHUT_RDWR); });
  }

  counts run(slice& s) override {
    counts c;
    const int a = p_.a.get();
    while (!s.done(c.ops)) {
      std::int64_t t0 = s.sample(c.ops) ? slice::now_ns() : 0;
      send_all(a, out_.data(), msg_);
      if (!recv_exact(a, in_.data(), msg_)) {
        peer_.check();
        throw std::runtime_error("unexpected EOF");
      }
      if (t0 != 0) s.record_latency(slice::now_ns() - t0);
      ++c.ops;
    }
    c.bytes = c.ops * msg_ * 2;
    return c;
  }

 private:
  std::size_t msg_;
  fd_pair p_;
  std::vector<char> out_, in_, echo_;
  peer_thread peer_;  // declared last: joined before the sockets close
};

// kind::one_way: writer here, reader on a peer thread.
class one_way final : public session {
 public:
  explicit one_way(const workload& w)
      : msg_(w.msg_size), p_(make_socketpair(w.sock_type)), out_(msg_, 'w'), in_(msg_) {
    const int b = p_.b.get();
    peer_.start(
        b,
        [this, b, use_recvmsg = w.recvmsg] {
          control_recv cr(in_.data(), in_.size());
          for (;;) {
            ssize_t r = use_recvmsg ? ::recvmsg(b, &cr.msg, control_recv::flags) : ::recv(b, in_.data(), in_.size(), 0);
            if (r < 0) {
              if (errno == EINTR) continue;
              throw_errno("recv");
            }
            if (r == 0) return;  // shutdown by stop_and_join
            if (use_recvmsg) cr.finish(r);
            prog_.add(static_cast<std::uint64_t>(r));
          }
        },
        [this, b] {
          prog_.fail();
          ::shutdown(b, SHUT_RDWR);
        });
  }

  counts run(slice& s) override {
    counts c;
    const int a = p_.a.get();
    while (!s.done(c.ops)) {
      send_all(a, out_.data(), msg_);
      ++c.ops;
    }
    c.bytes = c.ops * msg_;
    written_ += c.bytes;
    prog_.wait_for(written_);
    return c;
  }

 private:
  std::size_t msg_;
  fd_pair p_;
  std::vector<char> out_, in_;
  progress prog_;
  std::uint64_t written_ = 0;
  peer_thread peer_;
};

// kind::accept: socket + connect + accept4 + close both, one thread.
class accept_rate final : public session {
 public:
  explicit accept_rate(const workload&) : addr_(dir_.path("listen.sock")), lst_(make_listener(addr_)) {}

  counts run(slice& s) override {
    counts c;
    while (!s.done(c.ops)) {
      unique_fd cl(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (!cl) throw_errno("socket");
      if (::connect(cl.get(), addr_.get(), addr_.len) != 0) throw_errno("connect");
      unique_fd sv(::accept4(lst_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!sv) throw_errno("accept4");
      ++c.ops;
    }
    return c;
  }

 private:
  temp_dir dir_;
  unix_addr addr_;
  unique_fd lst_;
};

// kind::fd_passing: sendmsg on A, recvmsg on B, close the received fd.
class fd_passing final : public session {
 public:
  explicit fd_passing(const workload&)
      : p_(make_socketpair(SOCK_STREAM)), payload_(::open("/dev/null", O_RDONLY | O_CLOEXEC)), snd_(payload_.get()) {
    if (!payload_) throw_errno("open /dev/null");
  }

  counts run(slice& s) override {
    counts c;
    while (!s.done(c.ops)) {
      if (::sendmsg(p_.a.get(), &snd_.msg, MSG_NOSIGNAL) != 1) throw_errno("sendmsg");
      rcv_.reset();
      ssize_t r = ::recvmsg(p_.b.get(), &rcv_.msg, MSG_CMSG_CLOEXEC);
      if (r != 1) throw_errno("recvmsg", r < 0 ? errno : EPROTO);
      c.ops += rcv_.close_fds(rcv_.msg.msg_flags);
      c.bytes += 1;
    }
    return c;
  }

 private:
  fd_pair p_;
  unique_fd payload_;
  fd_send_msg snd_;
  fd_recv_msg rcv_;
};

const registrar reg{{
    .name = "blocking",
    .description = "blocking send/recv syscalls (peer thread where the workload has two)",
    .factories =
        {
            {kind::pingpong, make<pingpong>()},
            {kind::pingpong_2thread, make<pingpong_2thread>()},
            {kind::one_way, make<one_way>()},
            {kind::accept, make<accept_rate>()},
            {kind::fd_passing, make<fd_passing>()},
        },
}};

}  // namespace
