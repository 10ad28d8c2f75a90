// Baseline "epoll": non-blocking sockets and a level-triggered epoll event loop
// per thread.  Sends are attempted directly (as reactors do); receives happen on
// readiness reported by epoll_wait.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <vector>

#include "harness.hpp"
#include "sockutil.hpp"

namespace {

using namespace bench;

unique_fd make_epoll() {
  unique_fd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep) throw_errno("epoll_create1");
  return ep;
}

void epoll_add(int ep, int fd, std::uint32_t events, std::uint64_t data) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = data;
  if (::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) throw_errno("epoll_ctl");
}

constexpr int max_events = 256;

// Waits for events.  On the measuring thread a peer that never answers within
// 10 s is a bug, not a result; peer threads idle between slices and wait forever
// (they are stopped by shutdown()).
int wait_events(int ep, epoll_event* evs, int timeout_ms = 10'000) {
  for (;;) {
    int n = ::epoll_wait(ep, evs, max_events, timeout_ms);
    if (n > 0) return n;
    if (n == 0) throw std::runtime_error("epoll_wait: no event within 10 s");
    if (errno != EINTR) throw_errno("epoll_wait");
  }
}

// One message of `n` bytes that must fit in the (empty) socket buffer.
void send_msg(int fd, const char* p, std::size_t n) {
  ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
  if (r < 0) throw_errno("send");
  if (static_cast<std::size_t>(r) != n) throw std::runtime_error("send: short write of a small message");
}

// Reads into buf at *got; returns true when msg bytes are complete.  EAGAIN
// (spurious readiness) returns false.
bool recv_part(int fd, char* buf, std::size_t& got, std::size_t msg) {
  ssize_t r = ::recv(fd, buf + got, msg - got, 0);
  if (r < 0) {
    if (errno == EAGAIN || errno == EINTR) return false;
    throw_errno("recv");
  }
  if (r == 0) throw std::runtime_error("recv: unexpected EOF");
  got += static_cast<std::size_t>(r);
  if (got < msg) return false;
  got = 0;
  return true;
}

// kind::pingpong: all 2N ends in one epoll loop.
class pingpong final : public session {
 public:
  explicit pingpong(const workload& w)
      : msg_(w.msg_size), ep_(make_epoll()), out_(msg_, 'p'), in_(2 * w.conns * msg_), got_(2 * w.conns), t0_(w.conns) {
    for (std::size_t i = 0; i < w.conns; ++i) {
      pairs_.push_back(make_socketpair(SOCK_STREAM, SOCK_NONBLOCK));
      epoll_add(ep_.get(), pairs_[i].a.get(), EPOLLIN, 2 * i);
      epoll_add(ep_.get(), pairs_[i].b.get(), EPOLLIN, 2 * i + 1);
    }
  }

  counts run(slice& s) override {
    counts c;
    if (!started_) {
      for (std::size_t i = 0; i < pairs_.size(); ++i) start(s, i);
      started_ = true;
    }
    std::array<epoll_event, max_events> evs;
    while (!s.done(c.ops)) {
      int n = wait_events(ep_.get(), evs.data());
      for (int k = 0; k < n; ++k) {
        const std::uint64_t d = evs[static_cast<std::size_t>(k)].data.u64;
        const std::size_t i = d >> 1;
        char* buf = in_.data() + d * msg_;
        if ((d & 1) != 0) {  // B: echo
          if (recv_part(pairs_[i].b.get(), buf, got_[d], msg_)) send_msg(pairs_[i].b.get(), out_.data(), msg_);
        } else if (recv_part(pairs_[i].a.get(), buf, got_[d], msg_)) {  // A: round trip done
          if (t0_[i] != 0) s.record_latency(slice::now_ns() - t0_[i]);
          ++c.ops;
          start(s, i);
        }
      }
    }
    // Round trips still in flight finish in a later slice: don't time them.
    std::fill(t0_.begin(), t0_.end(), 0);
    c.bytes = c.ops * msg_ * 2;
    return c;
  }

 private:
  void start(slice& s, std::size_t i) {
    t0_[i] = s.sample(seq_++) ? slice::now_ns() : 0;
    send_msg(pairs_[i].a.get(), out_.data(), msg_);
  }

  std::size_t msg_;
  unique_fd ep_;
  std::vector<fd_pair> pairs_;
  std::vector<char> out_, in_;
  std::vector<std::size_t> got_;
  std::vector<std::int64_t> t0_;
  std::uint64_t seq_ = 0;
  bool started_ = false;
};

// kind::pingpong_2thread: client loop here, echo loop on a peer thread; each has
// its own epoll instance.
class pingpong_2thread final : public session {
 public:
  explicit pingpong_2thread(const workload& w)
      : msg_(w.msg_size),
        p_(make_socketpair(SOCK_STREAM, SOCK_NONBLOCK)),
        ep_(make_epoll()),
        peer_ep_(make_epoll()),
        out_(msg_, 'p'),
        in_(msg_),
        echo_(msg_) {
    epoll_add(ep_.get(), p_.a.get(), EPOLLIN, 0);
    epoll_add(peer_ep_.get(), p_.b.get(), EPOLLIN | EPOLLRDHUP, 0);
    const int b = p_.b.get();
    peer_.start(
        b, [this, b] { echo_loop(b); }, [b] { ::shutdown(b, SHUT_RDWR); });
  }

  counts run(slice& s) override {
    counts c;
    const int a = p_.a.get();
    std::array<epoll_event, max_events> evs;
    while (!s.done(c.ops)) {
      std::int64_t t0 = s.sample(c.ops) ? slice::now_ns() : 0;
      send_msg(a, out_.data(), msg_);
      std::size_t got = 0;
      bool complete = false;
      while (!complete) {
        wait_events(ep_.get(), evs.data());
        try {
          complete = recv_part(a, in_.data(), got, msg_);
        } catch (...) {
          peer_.check();
          throw;
        }
      }
      if (t0 != 0) s.record_latency(slice::now_ns() - t0);
      ++c.ops;
    }
    c.bytes = c.ops * msg_ * 2;
    return c;
  }

 private:
  void echo_loop(int b) {
    std::array<epoll_event, max_events> evs;
    std::size_t got = 0;
    for (;;) {
      wait_events(peer_ep_.get(), evs.data(), -1);
      ssize_t r = ::recv(b, echo_.data() + got, msg_ - got, 0);
      if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        throw_errno("recv");
      }
      if (r == 0) return;  // stop_and_join shut us down
      got += static_cast<std::size_t>(r);
      if (got == msg_) {
        got = 0;
        send_msg(b, echo_.data(), msg_);
      }
    }
  }

  std::size_t msg_;
  fd_pair p_;
  unique_fd ep_, peer_ep_;
  std::vector<char> out_, in_, echo_;
  peer_thread peer_;
};

// kind::one_way: writer loop here (waits for EPOLLOUT only after EAGAIN), reader
// loop on a peer thread (reads until EAGAIN on each readiness).
class one_way final : public session {
 public:
  explicit one_way(const workload& w)
      : msg_(w.msg_size),
        use_recvmsg_(w.recvmsg),
        p_(make_socketpair(w.sock_type, SOCK_NONBLOCK)),
        ep_(make_epoll()),
        peer_ep_(make_epoll()),
        out_(msg_, 'w'),
        in_(msg_) {
    epoll_add(ep_.get(), p_.a.get(), EPOLLOUT, 0);
    epoll_add(peer_ep_.get(), p_.b.get(), EPOLLIN | EPOLLRDHUP, 0);
    const int b = p_.b.get();
    peer_.start(
        b, [this, b] { read_loop(b); },
        [this, b] {
          prog_.fail();
          ::shutdown(b, SHUT_RDWR);
        });
  }

  counts run(slice& s) override {
    counts c;
    const int a = p_.a.get();
    std::array<epoll_event, max_events> evs;
    std::size_t off = 0;
    while (off != 0 || !s.done(c.ops)) {
      ssize_t r = ::send(a, out_.data() + off, msg_ - off, MSG_NOSIGNAL);
      if (r < 0) {
        if (errno == EAGAIN) {
          if (prog_.failed()) peer_.check();
          wait_events(ep_.get(), evs.data());
          continue;
        }
        if (errno == EINTR) continue;
        throw_errno("send");
      }
      off += static_cast<std::size_t>(r);
      if (off == msg_) {
        off = 0;
        ++c.ops;
      }
    }
    c.bytes = c.ops * msg_;
    written_ += c.bytes;
    prog_.wait_for(written_);
    return c;
  }

 private:
  void read_loop(int b) {
    std::array<epoll_event, max_events> evs;
    control_recv cr(in_.data(), msg_);
    for (;;) {
      wait_events(peer_ep_.get(), evs.data(), -1);
      // After shutdown() a non-blocking dgram recv says EAGAIN, not EOF.
      const bool hup = (evs[0].events & (EPOLLRDHUP | EPOLLHUP)) != 0;
      for (;;) {
        ssize_t r = use_recvmsg_ ? ::recvmsg(b, &cr.msg, control_recv::flags) : ::recv(b, in_.data(), msg_, 0);
        if (r < 0) {
          if (errno == EAGAIN && hup) return;
          if (errno == EAGAIN) break;
          if (errno == EINTR) continue;
          throw_errno("recv");
        }
        if (r == 0) return;  // stop_and_join shut us down
        if (use_recvmsg_) cr.finish(r);
        prog_.add(static_cast<std::uint64_t>(r));
      }
    }
  }

  std::size_t msg_;
  bool use_recvmsg_;
  fd_pair p_;
  unique_fd ep_, peer_ep_;
  std::vector<char> out_, in_;
  progress prog_;
  std::uint64_t written_ = 0;
  peer_thread peer_;
};

// kind::accept: non-blocking connect (completes at once on AF_UNIX), the listener
// reports readiness through epoll, accept4, close both.
class accept_rate final : public session {
 public:
  explicit accept_rate(const workload&)
      : addr_(dir_.path("listen.sock")), lst_(make_listener(addr_, SOCK_NONBLOCK)), ep_(make_epoll()) {
    epoll_add(ep_.get(), lst_.get(), EPOLLIN, 0);
  }

  counts run(slice& s) override {
    counts c;
    std::array<epoll_event, max_events> evs;
    while (!s.done(c.ops)) {
      unique_fd cl(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
      if (!cl) throw_errno("socket");
      if (::connect(cl.get(), addr_.get(), addr_.len) != 0) throw_errno("connect");
      for (;;) {
        wait_events(ep_.get(), evs.data());
        unique_fd sv(::accept4(lst_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
        if (sv) break;
        if (errno != EAGAIN && errno != EINTR) throw_errno("accept4");
      }
      ++c.ops;
    }
    return c;
  }

 private:
  temp_dir dir_;
  unix_addr addr_;
  unique_fd lst_, ep_;
};

// kind::fd_passing: sendmsg on A, wait for B's readiness, recvmsg, close the fd.
class fd_passing final : public session {
 public:
  explicit fd_passing(const workload&)
      : p_(make_socketpair(SOCK_STREAM, SOCK_NONBLOCK)),
        ep_(make_epoll()),
        payload_(::open("/dev/null", O_RDONLY | O_CLOEXEC)),
        snd_(payload_.get()) {
    if (!payload_) throw_errno("open /dev/null");
    epoll_add(ep_.get(), p_.b.get(), EPOLLIN, 0);
  }

  counts run(slice& s) override {
    counts c;
    std::array<epoll_event, max_events> evs;
    while (!s.done(c.ops)) {
      if (::sendmsg(p_.a.get(), &snd_.msg, MSG_NOSIGNAL) != 1) throw_errno("sendmsg");
      for (;;) {
        wait_events(ep_.get(), evs.data());
        rcv_.reset();
        ssize_t r = ::recvmsg(p_.b.get(), &rcv_.msg, MSG_CMSG_CLOEXEC);
        if (r == 1) break;
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        throw_errno("recvmsg", r < 0 ? errno : EPROTO);
      }
      c.ops += rcv_.close_fds(rcv_.msg.msg_flags);
      c.bytes += 1;
    }
    return c;
  }

 private:
  fd_pair p_;
  unique_fd ep_, payload_;
  fd_send_msg snd_;
  fd_recv_msg rcv_;
};

const registrar reg{{
    .name = "epoll",
    .description = "non-blocking sockets + level-triggered epoll, one event loop per thread",
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
