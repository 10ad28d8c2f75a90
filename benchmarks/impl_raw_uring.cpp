// Raw liburing baselines, hand-written (without coroutines but for raw_uring_coro).
// Two schedules:
//
// raw_uring_preposted ("the usual design"): a receive is posted as soon as the
//   previous one completed, so it is armed before its data is sent: it finds the
//   socket empty, arms poll, and finishes through task-work when the data comes.
//  - one ring per thread, IORING_SETUP_SINGLE_ISSUER|DEFER_TASKRUN (falls back to a
//    plain ring, with a note, if the kernel refuses), CQ sized 4x the SQ, registered
//    ring fd;
//  - one io_uring_submit_and_wait per loop turn (all SQEs of the turn batched), CQEs
//    copied out and the CQ advanced before they are handled;
//  - sockets are blocking (no O_NONBLOCK) and use RECV/SEND/RECVMSG/SENDMSG SQEs with
//    MSG_NOSIGNAL, never READ/WRITE; small atomic sends and closes use
//    IOSQE_CQE_SKIP_SUCCESS; at most one send and one recv in flight per socket.
//
// raw_uring_floor (FACTS.md "Performance facts"): the same ring and loop, plus
//   registered (fixed) files, and every receive whose data comes from this thread is
//   submitted in the same io_uring_enter as, and queued *behind*, the send that
//   feeds it, so it finds the data and completes inline: 2 enters per one-thread
//   round trip, no poll arm, no task-work.  A loop that submits a turn's SQEs in the
//   order they were issued gets this whenever the peer is local and busy.  Where the
//   data comes from another thread (pingpong_2thread, one_way) no receive can be
//   queued behind the peer's send; there the floor uses what is left: fixed files,
//   and IORING_RECVSEND_POLL_FIRST on receives that are known to find nothing.
//
// Variants:
//  raw_uring_preposted_nodt  the preposted code on a ring without SINGLE_ISSUER|DEFER_TASKRUN;
//  raw_uring_mshot           pingpong only: one multishot RECV per socket end from a
//                            provided buffer ring;
//  raw_uring_coro            pingpong only: the floor driven by minimal C++20
//                            coroutines (what coroutines alone add; see coro_pingpong).
#include <fcntl.h>
#include <liburing.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <coroutine>
#include <exception>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "harness.hpp"
#include "sockutil.hpp"
#include "uring_setup.hpp"

namespace {

using namespace bench;

struct config {
  const char* name;
  bool defer_taskrun;
  bool floor;              // the floor schedule (see the top of this file) + fixed files
  bool multishot = false;  // pingpong: multishot RECV from a provided buffer ring
};

constexpr config cfg_preposted{"raw_uring_preposted", true, false};
constexpr config cfg_nodt{"raw_uring_preposted_nodt", false, false};
constexpr config cfg_floor{"raw_uring_floor", true, true};
constexpr config cfg_mshot{"raw_uring_mshot", true, false, true};

struct completion {
  std::uint64_t user_data;
  std::int32_t res;
  std::uint32_t flags;
};

enum op : std::uint64_t { recv_a, recv_b, send_a, send_b, op_close, op_connect, op_accept, op_sendmsg, op_recvmsg };
constexpr std::uint64_t ud(std::size_t index, op o) { return (static_cast<std::uint64_t>(index) << 4) | o; }
constexpr std::size_t ud_index(std::uint64_t u) { return static_cast<std::size_t>(u >> 4); }
constexpr op ud_op(std::uint64_t u) { return static_cast<op>(u & 15); }

[[noreturn]] void throw_res(int res, const char* what) { throw std::system_error(-res, std::generic_category(), what); }

unsigned pow2_at_least(std::size_t n) {
  unsigned p = 1;
  while (p < n) p <<= 1;
  return p;
}

class ring {
 public:
  // enters: where to count io_uring_enter calls (the session's, so a peer thread's
  // ring can report to the measuring thread); written only by the ring's thread.
  ring(const config& cfg, unsigned entries, unsigned cq_entries, std::atomic<std::uint64_t>* enters = nullptr)
      : enters_(enters != nullptr ? enters : &own_enters_) {
    if (!init_uring(r_, entries, cq_entries, cfg.defer_taskrun))
      add_note(std::string(cfg.name) + ": SINGLE_ISSUER|DEFER_TASKRUN refused, using a plain ring");
  }
  ~ring() { close_ring(); }
  void close_ring() noexcept {
    if (open_) io_uring_queue_exit(&r_);
    open_ = false;
  }
  ring(const ring&) = delete;
  ring& operator=(const ring&) = delete;

  io_uring_sqe* sqe() {
    io_uring_sqe* e = io_uring_get_sqe(&r_);
    if (e == nullptr) {  // SQ full: submit what is there (never fail an op for that)
      io_uring_submit(&r_);
      count_enter();
      e = io_uring_get_sqe(&r_);
      if (e == nullptr) throw std::runtime_error("io_uring: no SQE after submit");
    }
    return e;
  }

  // Submit everything queued, wait for at least one CQE (unless some are ready),
  // copy a batch out, advance the CQ, then hand each completion to f.
  template <class F>
  void turn(F&& f) {
    if (io_uring_sq_ready(&r_) != 0 || io_uring_cq_ready(&r_) == 0) {
      for (;;) {
        count_enter();
        int rc = io_uring_submit_and_wait(&r_, 1);
        if (rc >= 0 || rc == -EBUSY || rc == -EAGAIN) break;  // EBUSY/EAGAIN: reap first
        if (rc != -EINTR) throw_res(rc, "io_uring_submit_and_wait");
      }
    }
    reap(f);
  }
  // Hands at most a batch of the completions there are now to f, without entering.
  // Inline reaping (io_uring_peek_batch_cqe is an out-of-line call that also
  // checks for overflow flushes, which NODROP + check_overflow cover here).
  template <class F>
  void reap(F&& f) {
    const unsigned head = *r_.cq.khead;
    const unsigned n = std::min(io_uring_smp_load_acquire(r_.cq.ktail) - head, batch);
    std::array<completion, batch> done;
    for (unsigned i = 0; i < n; ++i) {
      const io_uring_cqe& cqe = r_.cq.cqes[(head + i) & r_.cq.ring_mask];
      done[i] = {cqe.user_data, cqe.res, cqe.flags};
    }
    io_uring_cq_advance(&r_, n);
    for (unsigned i = 0; i < n; ++i) f(done[i]);
  }

  io_uring* get() noexcept { return &r_; }

  // Submit without waiting (e.g. trailing close SQEs at the end of a slice).
  void flush() {
    if (io_uring_sq_ready(&r_) == 0) return;
    count_enter();
    io_uring_submit(&r_);
  }

  // Registers fds as fixed files 0..n-1; from then on send/recv/close take an index
  // into that table instead of a descriptor.
  void register_files(const int* fds, unsigned n) {
    if (int rc = io_uring_register_files(&r_, fds, n); rc < 0) throw_res(rc, "io_uring_register_files");
    fixed_ = true;
  }
  bool fixed() const noexcept { return fixed_; }

  std::uint64_t enters() const noexcept { return enters_->load(std::memory_order_relaxed); }

  void check_overflow() const {
    if (*r_.cq.koverflow != 0) throw std::runtime_error("io_uring: CQ overflow dropped completions");
  }

  void send(int fd, const void* p, std::size_t n, int flags, std::uint64_t data, bool skip_success) {
    io_uring_sqe* e = sqe();
    io_uring_prep_send(e, fd, p, n, flags | MSG_NOSIGNAL);
    if (skip_success) e->flags |= IOSQE_CQE_SKIP_SUCCESS;
    if (fixed_) e->flags |= IOSQE_FIXED_FILE;
    e->user_data = data;
  }
  // poll_first: IORING_RECVSEND_POLL_FIRST, for a recv that is known to find the
  // socket empty (it skips the attempt and arms poll at once).
  void recv(int fd, void* p, std::size_t n, std::uint64_t data, bool poll_first = false) {
    io_uring_sqe* e = sqe();
    io_uring_prep_recv(e, fd, p, n, 0);
    if (poll_first) e->ioprio |= IORING_RECVSEND_POLL_FIRST;
    if (fixed_) e->flags |= IOSQE_FIXED_FILE;
    e->user_data = data;
  }
  void close(int fd) {
    io_uring_sqe* e = sqe();
    io_uring_prep_close(e, fd);
    e->flags |= IOSQE_CQE_SKIP_SUCCESS;
    e->user_data = ud(0, op_close);
  }

 private:
  void count_enter() noexcept { enters_->store(enters_->load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); }

  static constexpr unsigned batch = 256;
  io_uring r_{};
  std::atomic<std::uint64_t> own_enters_{0};
  std::atomic<std::uint64_t>* enters_;
  bool fixed_ = false;
  bool open_ = true;
};

// A CQE of an op posted with CQE_SKIP_SUCCESS only arrives on failure (or, for a
// send, if it was short: treat that as an error too; small sends are atomic).
void check_skipped(const completion& c, std::size_t expect, const char* what) {
  if (c.res < 0) throw_res(c.res, what);
  if (static_cast<std::size_t>(c.res) != expect) throw std::runtime_error(std::string(what) + ": short");
}

// kind::pingpong: N socketpairs, all 2N ends on one ring.
class pingpong final : public session {
 public:
  pingpong(const workload& w, const config& cfg)
      : cfg_(cfg),
        msg_(w.msg_size),
        out_(msg_, 'p'),
        in_(2 * w.conns * msg_),
        got_(2 * w.conns),
        t0_(w.conns),
        ring_(cfg, std::min(4096U, pow2_at_least(std::max<std::size_t>(64, 2 * w.conns + 8))),
              pow2_at_least(std::max<std::size_t>(256, 4 * w.conns))) {
    for (std::size_t i = 0; i < w.conns; ++i) pairs_.push_back(make_socketpair(SOCK_STREAM));
    if (cfg_.multishot) setup_buffers(pow2_at_least(4 * w.conns));
    if (cfg_.floor) {  // fixed file 2i is pairs_[i].a, 2i+1 is pairs_[i].b
      std::vector<int> fds;
      for (const auto& p : pairs_) {
        fds.push_back(p.a.get());
        fds.push_back(p.b.get());
      }
      ring_.register_files(fds.data(), static_cast<unsigned>(fds.size()));
    }
  }
  ~pingpong() override {
    if (br_ != nullptr) {
      io_uring_unregister_buf_ring(ring_.get(), 0);
      std::free(br_);
    }
  }

  counts run(slice& s) override {
    counts c;
    const std::uint64_t enters0 = ring_.enters();
    if (!started_) {
      for (std::size_t i = 0; i < pairs_.size(); ++i) {
        if (!cfg_.floor) {
          post_recv(i, recv_b);
          post_recv(i, recv_a);
        }
        start(s, i);
      }
      started_ = true;
    }
    while (!s.done(c.ops)) {
      ring_.turn([&](const completion& cq) {
        const std::size_t i = ud_index(cq.user_data);
        switch (const op o = ud_op(cq.user_data)) {
          case recv_a:
          case recv_b: {
            if (cq.res <= 0) cq.res == 0 ? throw std::runtime_error("recv: EOF") : throw_res(cq.res, "recv");
            std::size_t& got = got_[2 * i + (o == recv_b)];
            if (cfg_.multishot) {
              // The data sits in a provided buffer: copy it out, give the buffer back,
              // and re-arm only when the kernel ended the multishot request.
              const unsigned bid = cq.flags >> IORING_CQE_BUFFER_SHIFT;
              const std::size_t slot = 2 * i + (o == recv_b);
              std::memcpy(in_.data() + slot * msg_ + got, bufs_.data() + bid * msg_, static_cast<std::size_t>(cq.res));
              io_uring_buf_ring_add(br_, bufs_.data() + bid * msg_, static_cast<unsigned>(msg_),
                                    static_cast<unsigned short>(bid), io_uring_buf_ring_mask(nbufs_), 0);
              io_uring_buf_ring_advance(br_, 1);
              if ((cq.flags & IORING_CQE_F_MORE) == 0) post_recv(i, o);
            }
            got += static_cast<std::size_t>(cq.res);
            if (got < msg_) {  // partial: read the rest
              if (!cfg_.multishot) post_recv(i, o);
              break;
            }
            got = 0;
            if (o == recv_b) {  // B echoes
              ring_.send(fd_b(i), out_.data(), msg_, 0, ud(i, send_b), true);
              if (!cfg_.multishot) post_recv(i, cfg_.floor ? recv_a : recv_b);
            } else {  // round trip complete
              if (t0_[i] != 0) s.record_latency(slice::now_ns() - t0_[i]);
              ++c.ops;
              if (!cfg_.floor && !cfg_.multishot) post_recv(i, recv_a);
              start(s, i);
            }
            break;
          }
          case send_a:
          case send_b:
            check_skipped(cq, msg_, "send");
            break;
          default:
            throw std::runtime_error("unexpected CQE");
        }
      });
    }
    ring_.check_overflow();
    // Round trips still in flight finish in a later slice: don't time them.
    std::fill(t0_.begin(), t0_.end(), 0);
    c.bytes = c.ops * msg_ * 2;
    c.enters = ring_.enters() - enters0;
    return c;
  }

 private:
  void setup_buffers(unsigned n) {
    nbufs_ = std::min(n, 32768U);
    bufs_.resize(nbufs_ * msg_);
    void* mem = nullptr;
    if (posix_memalign(&mem, 4096, nbufs_ * sizeof(io_uring_buf)) != 0) throw std::bad_alloc();
    br_ = static_cast<io_uring_buf_ring*>(mem);
    io_uring_buf_ring_init(br_);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uint64_t>(br_);
    reg.ring_entries = nbufs_;
    reg.bgid = 0;
    if (int rc = io_uring_register_buf_ring(ring_.get(), &reg, 0); rc < 0) throw_res(rc, "io_uring_register_buf_ring");
    for (unsigned b = 0; b < nbufs_; ++b)
      io_uring_buf_ring_add(br_, bufs_.data() + b * msg_, static_cast<unsigned>(msg_), static_cast<unsigned short>(b),
                            io_uring_buf_ring_mask(nbufs_), static_cast<int>(b));
    io_uring_buf_ring_advance(br_, static_cast<int>(nbufs_));
  }
  void post_recv(std::size_t i, op o) {
    const std::size_t slot = 2 * i + (o == recv_b);
    const int fd = o == recv_b ? fd_b(i) : fd_a(i);
    if (cfg_.multishot) {
      io_uring_sqe* e = ring_.sqe();
      io_uring_prep_recv_multishot(e, fd, nullptr, 0, 0);
      e->flags |= IOSQE_BUFFER_SELECT;
      e->buf_group = 0;
      e->user_data = ud(i, o);
      return;
    }
    ring_.recv(fd, in_.data() + slot * msg_ + got_[slot], msg_ - got_[slot], ud(i, o));
  }
  void start(slice& s, std::size_t i) {
    t0_[i] = s.sample(seq_++) ? slice::now_ns() : 0;
    ring_.send(fd_a(i), out_.data(), msg_, 0, ud(i, send_a), true);
    if (cfg_.floor) post_recv(i, recv_b);  // behind the send that feeds it
  }
  // The descriptor, or the fixed-file index, of each end.
  int fd_a(std::size_t i) const noexcept { return ring_.fixed() ? static_cast<int>(2 * i) : pairs_[i].a.get(); }
  int fd_b(std::size_t i) const noexcept { return ring_.fixed() ? static_cast<int>(2 * i + 1) : pairs_[i].b.get(); }

  // Destroyed bottom-up: the ring (cancelling in-flight ops) goes before the
  // sockets and the buffers the ops point into.
  config cfg_;
  std::size_t msg_;
  std::vector<char> out_, in_;
  std::vector<std::size_t> got_;
  std::vector<std::int64_t> t0_;
  std::vector<fd_pair> pairs_;
  std::vector<char> bufs_;  // provided buffers (multishot)
  unsigned nbufs_ = 0;
  io_uring_buf_ring* br_ = nullptr;
  ring ring_;
  std::uint64_t seq_ = 0;
  bool started_ = false;
};

// kind::pingpong_2thread: client on this thread's ring, echo server on a peer
// thread with its own ring.  Each side submits [send, recv] in one enter; the recv
// is queued behind the send but its data comes from the other thread, so it finds
// nothing (the floor marks it POLL_FIRST, and uses a fixed file on each ring).
class pingpong_2thread final : public session {
 public:
  pingpong_2thread(const workload& w, const config& cfg)
      : cfg_(cfg), msg_(w.msg_size), out_(msg_, 'p'), in_(msg_), echo_(msg_), p_(make_socketpair(SOCK_STREAM)), ring_(cfg, 64, 256) {
    int a = p_.a.get();
    if (cfg_.floor) ring_.register_files(&a, 1);
    const int b = p_.b.get();
    peer_.start(
        b, [this, b] { echo_loop(b); }, [b] { ::shutdown(b, SHUT_RDWR); });
  }

  counts run(slice& s) override {
    counts c;
    const std::uint64_t enters0 = ring_.enters() + peer_enters_.load(std::memory_order_relaxed);
    const int a = ring_.fixed() ? 0 : p_.a.get();
    while (!s.done(c.ops)) {
      std::int64_t t0 = s.sample(c.ops) ? slice::now_ns() : 0;
      ring_.send(a, out_.data(), msg_, 0, ud(0, send_a), true);
      ring_.recv(a, in_.data(), msg_, ud(0, recv_a), cfg_.floor);
      std::size_t got = 0;
      while (got < msg_) {
        ring_.turn([&](const completion& cq) {
          if (ud_op(cq.user_data) == send_a) return check_skipped(cq, msg_, "send");
          if (cq.res <= 0) {
            peer_.check();
            cq.res == 0 ? throw std::runtime_error("recv: EOF") : throw_res(cq.res, "recv");
          }
          got += static_cast<std::size_t>(cq.res);
          if (got < msg_) ring_.recv(a, in_.data() + got, msg_ - got, ud(0, recv_a));
        });
      }
      if (t0 != 0) s.record_latency(slice::now_ns() - t0);
      ++c.ops;
    }
    ring_.check_overflow();
    c.bytes = c.ops * msg_ * 2;
    c.enters = ring_.enters() + peer_enters_.load(std::memory_order_relaxed) - enters0;
    return c;
  }

 private:
  void echo_loop(int fd) {
    ring r(cfg_, 64, 256, &peer_enters_);  // created on, and used only by, this thread
    if (cfg_.floor) r.register_files(&fd, 1);
    const int b = r.fixed() ? 0 : fd;
    std::size_t got = 0;
    bool stop = false;
    r.recv(b, echo_.data(), msg_, ud(0, recv_b), cfg_.floor);
    while (!stop) {
      r.turn([&](const completion& cq) {
        if (ud_op(cq.user_data) == send_b) return check_skipped(cq, msg_, "send");
        if (cq.res == 0) {  // shutdown by stop_and_join
          stop = true;
          return;
        }
        if (cq.res < 0) throw_res(cq.res, "recv");
        got += static_cast<std::size_t>(cq.res);
        const bool sent = got == msg_;
        if (sent) {
          got = 0;
          r.send(b, echo_.data(), msg_, 0, ud(0, send_b), true);
        }
        r.recv(b, echo_.data() + got, msg_ - got, ud(0, recv_b), cfg_.floor && sent);
      });
    }
  }

  config cfg_;
  std::size_t msg_;
  std::vector<char> out_, in_, echo_;
  fd_pair p_;
  std::atomic<std::uint64_t> peer_enters_{0};
  ring ring_;
  peer_thread peer_;  // joined first
};

// kind::one_way: writer on this thread's ring (one send in flight, MSG_WAITALL on
// streams so the kernel retries partial sends), reader thread with its own ring
// that re-posts its recv right after handling a completion (it completes inline
// when the writer is ahead).  The floor only adds fixed files here: the reader's
// data comes from another thread, so no recv can be queued behind its send.
class one_way final : public session {
 public:
  one_way(const workload& w, const config& cfg)
      : cfg_(cfg),
        msg_(w.msg_size),
        send_flags_(w.sock_type == SOCK_STREAM ? MSG_WAITALL : 0),
        use_recvmsg_(w.recvmsg),
        out_(msg_, 'w'),
        in_(msg_),
        p_(make_socketpair(w.sock_type)),
        ring_(cfg, 64, 256) {
    int a = p_.a.get();
    if (cfg_.floor) ring_.register_files(&a, 1);
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
    const std::uint64_t enters0 = ring_.enters() + peer_enters_.load(std::memory_order_relaxed);
    const int a = ring_.fixed() ? 0 : p_.a.get();
    std::size_t off = 0;
    while (off != 0 || !s.done(c.ops)) {
      ring_.send(a, out_.data() + off, msg_ - off, send_flags_, ud(0, send_a), false);
      ring_.turn([&](const completion& cq) {
        if (cq.res < 0) {
          peer_.check();
          throw_res(cq.res, "send");
        }
        off += static_cast<std::size_t>(cq.res);
        if (off == msg_) {
          off = 0;
          ++c.ops;
        }
      });
    }
    ring_.check_overflow();
    c.bytes = c.ops * msg_;
    written_ += c.bytes;
    prog_.wait_for(written_);
    c.enters = ring_.enters() + peer_enters_.load(std::memory_order_relaxed) - enters0;
    return c;
  }

 private:
  void read_loop(int fd) {
    ring r(cfg_, 64, 256, &peer_enters_);
    if (cfg_.floor) r.register_files(&fd, 1);
    const int b = r.fixed() ? 0 : fd;
    bool stop = false;
    control_recv cr(in_.data(), msg_);
    auto post = [&] {
      if (!use_recvmsg_) return r.recv(b, in_.data(), msg_, ud(0, recv_b));
      io_uring_sqe* e = r.sqe();
      io_uring_prep_recvmsg(e, b, &cr.msg, control_recv::flags);
      if (r.fixed()) e->flags |= IOSQE_FIXED_FILE;
      e->user_data = ud(0, recv_b);
    };
    post();
    while (!stop) {
      r.turn([&](const completion& cq) {
        if (cq.res == 0) {
          stop = true;
          return;
        }
        if (cq.res < 0) throw_res(cq.res, "recv");
        if (use_recvmsg_) cr.finish(cq.res);
        prog_.add(static_cast<std::uint64_t>(cq.res));
        post();
      });
    }
  }

  config cfg_;
  std::size_t msg_;
  int send_flags_;
  bool use_recvmsg_;
  std::vector<char> out_, in_;
  progress prog_;
  std::uint64_t written_ = 0;
  fd_pair p_;
  std::atomic<std::uint64_t> peer_enters_{0};
  ring ring_;
  peer_thread peer_;  // joined first
};

// kind::accept: multishot ACCEPT armed once on the listener; per cycle a socket()
// syscall, a CONNECT SQE, and two CLOSE SQEs (CQE_SKIP_SUCCESS) that ride along
// with the next cycle's CONNECT.  The floor instead queues a single-shot ACCEPT
// (listener as a fixed file) behind the CONNECT in the same enter: the connection
// is there when the accept is issued, so both complete inline.
class accept_rate final : public session {
 public:
  accept_rate(const workload&, const config& cfg)
      : cfg_(cfg), addr_(dir_.path("listen.sock")), lst_(make_listener(addr_)), ring_(cfg, 64, 256) {
    int l = lst_.get();
    if (cfg_.floor) ring_.register_files(&l, 1);
  }
  ~accept_rate() override {
    try {
      ring_.flush();
    } catch (...) {
    }
  }

  counts run(slice& s) override {
    counts c;
    const std::uint64_t enters0 = ring_.enters();
    while (!s.done(c.ops)) {
      if (!armed_ && !cfg_.floor) {
        io_uring_sqe* e = ring_.sqe();
        io_uring_prep_multishot_accept(e, lst_.get(), nullptr, nullptr, SOCK_CLOEXEC);
        e->user_data = ud(0, op_accept);
        armed_ = true;
      }
      int cl = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (cl < 0) throw_errno("socket");
      io_uring_sqe* e = ring_.sqe();
      io_uring_prep_connect(e, cl, addr_.get(), addr_.len);
      e->user_data = ud(0, op_connect);
      if (cfg_.floor) {  // behind the connect that feeds it
        e = ring_.sqe();
        io_uring_prep_accept(e, 0, nullptr, nullptr, SOCK_CLOEXEC);
        e->flags |= IOSQE_FIXED_FILE;
        e->user_data = ud(0, op_accept);
      }
      bool connected = false;
      int accepted = -1;
      while (!connected || accepted < 0) {
        ring_.turn([&](const completion& cq) {
          switch (ud_op(cq.user_data)) {
            case op_connect:
              if (cq.res < 0) {
                ::close(cl);
                throw_res(cq.res, "connect");
              }
              connected = true;
              break;
            case op_accept:
              if ((cq.flags & IORING_CQE_F_MORE) == 0) armed_ = false;
              if (cq.res < 0 && cfg_.floor) ::close(cl);
              if (cq.res < 0) throw_res(cq.res, "accept");
              accepted = cq.res;
              break;
            case op_close:
              throw_res(cq.res, "close");
            default:
              throw std::runtime_error("unexpected CQE");
          }
        });
      }
      ring_.close(accepted);
      ring_.close(cl);
      ++c.ops;
    }
    ring_.flush();  // don't keep the last pair open between slices
    ring_.check_overflow();
    c.enters = ring_.enters() - enters0;
    return c;
  }

 private:
  config cfg_;
  temp_dir dir_;
  unix_addr addr_;
  unique_fd lst_;
  ring ring_;
  bool armed_ = false;
};

// kind::fd_passing: per op [CLOSE(previous fd), RECVMSG(B), SENDMSG(A)] in one
// enter (the recvmsg arms poll, the sendmsg wakes it); the received descriptor is
// closed by a CLOSE SQE.  The floor orders them [CLOSE, SENDMSG(A), RECVMSG(B)],
// with the socketpair as fixed files, so the recvmsg completes inline.
class fd_passing final : public session {
 public:
  fd_passing(const workload&, const config& cfg)
      : cfg_(cfg), p_(make_socketpair(SOCK_STREAM)), payload_(::open("/dev/null", O_RDONLY | O_CLOEXEC)), snd_(payload_.get()), ring_(cfg, 64, 256) {
    if (!payload_) throw_errno("open /dev/null");
    if (cfg_.floor) {
      const int fds[2] = {p_.a.get(), p_.b.get()};
      ring_.register_files(fds, 2);
    }
  }
  ~fd_passing() override {
    try {
      ring_.flush();
    } catch (...) {
    }
  }

  counts run(slice& s) override {
    counts c;
    const std::uint64_t enters0 = ring_.enters();
    const bool fixed = ring_.fixed();
    while (!s.done(c.ops)) {
      rcv_.reset();
      if (!cfg_.floor) post_recvmsg(fixed);
      io_uring_sqe* e = ring_.sqe();
      io_uring_prep_sendmsg(e, fixed ? 0 : p_.a.get(), &snd_.msg, MSG_NOSIGNAL);
      e->flags |= IOSQE_CQE_SKIP_SUCCESS | (fixed ? IOSQE_FIXED_FILE : 0);
      e->user_data = ud(0, op_sendmsg);
      if (cfg_.floor) post_recvmsg(fixed);  // behind the sendmsg that feeds it
      bool received = false;
      while (!received) {
        ring_.turn([&](const completion& cq) {
          switch (ud_op(cq.user_data)) {
            case op_recvmsg: {
              if (cq.res != 1) cq.res < 0 ? throw_res(cq.res, "recvmsg") : throw std::runtime_error("recvmsg: EOF");
              unsigned n = rcv_.for_each_fd([&](int fd) { ring_.close(fd); });
              if ((rcv_.msg.msg_flags & MSG_CTRUNC) != 0) throw std::runtime_error("recvmsg: MSG_CTRUNC");
              if (n == 0) throw std::runtime_error("recvmsg: no descriptor arrived");
              c.ops += n;
              c.bytes += 1;
              received = true;
              break;
            }
            case op_sendmsg:
              check_skipped(cq, 1, "sendmsg");
              break;
            case op_close:
              throw_res(cq.res, "close");
            default:
              throw std::runtime_error("unexpected CQE");
          }
        });
      }
    }
    ring_.flush();
    ring_.check_overflow();
    c.enters = ring_.enters() - enters0;
    return c;
  }

 private:
  void post_recvmsg(bool fixed) {
    io_uring_sqe* e = ring_.sqe();
    io_uring_prep_recvmsg(e, fixed ? 1 : p_.b.get(), &rcv_.msg, MSG_CMSG_CLOEXEC);
    if (fixed) e->flags |= IOSQE_FIXED_FILE;
    e->user_data = ud(0, op_recvmsg);
  }

  config cfg_;
  fd_pair p_;
  unique_fd payload_;
  fd_send_msg snd_;
  fd_recv_msg rcv_;
  ring ring_;
};

// kind::pingpong, raw_uring_coro: the floor's ring, fixed files and order, but every
// send and receive is a co_await of the least an awaiter can be: its SQE goes into
// the SQ (a receive at the end of the turn, behind the sends, as the floor orders
// them) and its CQE resumes the coroutine straight from the reap loop. No
// cancellation, time limit, per-socket order, speculation or error recovery: this is
// what coroutines alone add to the floor. A coroutine waits for its send, so sends
// cannot skip their CQE (4 CQEs per round trip against the floor's 2).
class coro_pingpong final : public session {
 public:
  coro_pingpong(const workload& w, const config& cfg)
      : msg_(w.msg_size),
        out_(msg_, 'p'),
        in_(2 * w.conns * msg_),
        t0_(w.conns),
        ring_(cfg, std::min(4096U, pow2_at_least(std::max<std::size_t>(64, 2 * w.conns + 8))),
              pow2_at_least(std::max<std::size_t>(256, 4 * w.conns))) {
    std::vector<int> fds;
    for (std::size_t i = 0; i < w.conns; ++i) {
      pairs_.push_back(make_socketpair(SOCK_STREAM));
      fds.push_back(pairs_.back().a.get());
      fds.push_back(pairs_.back().b.get());
    }
    ring_.register_files(fds.data(), static_cast<unsigned>(fds.size()));
    late_.reserve(2 * w.conns);
  }
  ~coro_pingpong() override {
    ring_.close_ring();  // no CQE can resume a frame after this
    for (auto h : frames_) h.destroy();
  }

  counts run(slice& s) override {
    counts c;
    const std::uint64_t enters0 = ring_.enters(), ops0 = ops_;
    slice_ = &s;
    if (frames_.empty()) {
      for (std::size_t i = 0; i < pairs_.size(); ++i) {
        frames_.push_back(echo(i).h);  // its receive goes in first; it is late anyway
        frames_.push_back(client(i).h);
      }
      for (auto h : frames_) h.resume();
    }
    while (!s.done(ops_ - ops0)) {
      for (io* x : late_) prep(x);
      late_.clear();
      auto resume = [](const completion& cq) {
        auto* x = reinterpret_cast<io*>(cq.user_data);
        x->res = cq.res;
        x->h.resume();
      };
      // Every completion there is before the next enter, so each receive still goes
      // in behind the send that feeds it when a turn has more than a batch of them.
      ring_.turn(resume);
      while (io_uring_cq_ready(ring_.get()) != 0) ring_.reap(resume);
      if (error_) std::rethrow_exception(error_);
    }
    ring_.check_overflow();
    std::fill(t0_.begin(), t0_.end(), 0);
    c.ops = ops_ - ops0;
    c.bytes = c.ops * msg_ * 2;
    c.enters = ring_.enters() - enters0;
    return c;
  }

 private:
  struct task {  // starts suspended; the session owns and destroys the frame
    struct promise_type {
      coro_pingpong* s;
      promise_type(coro_pingpong& self, std::size_t) : s(&self) {}
      task get_return_object() { return {std::coroutine_handle<promise_type>::from_promise(*this)}; }
      std::suspend_always initial_suspend() noexcept { return {}; }
      std::suspend_always final_suspend() noexcept { return {}; }
      void return_void() noexcept {}
      void unhandled_exception() noexcept { s->error_ = std::current_exception(); }
    };
    std::coroutine_handle<promise_type> h;
  };
  struct io {
    coro_pingpong* s;
    int fd;
    char* p;
    std::size_t n;
    bool sends;
    int res = 0;
    std::coroutine_handle<> h{};
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> c) noexcept {
      h = c;
      if (sends) s->prep(this);
      else s->late_.push_back(this);
    }
    int await_resume() const noexcept { return res; }
  };
  void prep(io* x) {
    io_uring_sqe* e = ring_.sqe();
    io_uring_prep_rw(x->sends ? IORING_OP_SEND : IORING_OP_RECV, e, x->fd, x->p, static_cast<unsigned>(x->n), 0);
    e->msg_flags = x->sends ? MSG_NOSIGNAL : 0;
    e->flags |= IOSQE_FIXED_FILE;
    e->user_data = reinterpret_cast<std::uint64_t>(x);
  }
  task client(std::size_t i) {
    const int fd = static_cast<int>(2 * i);
    char* in = in_.data() + 2 * i * msg_;
    for (;;) {
      t0_[i] = slice_->sample(seq_++) ? slice::now_ns() : 0;
      const int sent = co_await io{this, fd, out_.data(), msg_, true};
      if (sent < 0) throw_res(sent, "send");
      if (static_cast<std::size_t>(sent) != msg_) throw std::runtime_error("send: short");
      for (std::size_t got = 0; got < msg_;) {
        const int r = co_await io{this, fd, in + got, msg_ - got, false};
        if (r <= 0) r == 0 ? throw std::runtime_error("recv: EOF") : throw_res(r, "recv");
        got += static_cast<std::size_t>(r);
      }
      if (t0_[i] != 0) slice_->record_latency(slice::now_ns() - t0_[i]);
      ++ops_;
    }
  }
  task echo(std::size_t i) {
    const int fd = static_cast<int>(2 * i + 1);
    char* in = in_.data() + (2 * i + 1) * msg_;
    for (;;) {
      for (std::size_t got = 0; got < msg_;) {
        const int r = co_await io{this, fd, in + got, msg_ - got, false};
        if (r <= 0) r == 0 ? throw std::runtime_error("recv: EOF") : throw_res(r, "recv");
        got += static_cast<std::size_t>(r);
      }
      const int sent = co_await io{this, fd, in, msg_, true};
      if (sent < 0) throw_res(sent, "send");
      if (static_cast<std::size_t>(sent) != msg_) throw std::runtime_error("send: short");
    }
  }

  std::size_t msg_;
  std::vector<char> out_, in_;
  std::vector<std::int64_t> t0_;
  std::vector<fd_pair> pairs_;
  std::vector<std::coroutine_handle<>> frames_;
  std::vector<io*> late_;
  std::exception_ptr error_;
  slice* slice_ = nullptr;
  std::uint64_t seq_ = 0, ops_ = 0;
  ring ring_;  // destroyed first (and closed by the destructor before the frames go)
};

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

implementation all_kinds(const config& cfg, std::string description) {
  return {cfg.name,
          std::move(description),
          {
              {kind::pingpong, with<pingpong>(cfg)},
              {kind::pingpong_2thread, with<pingpong_2thread, true>(cfg)},
              {kind::one_way, with<one_way, true>(cfg)},
              {kind::accept, with<accept_rate>(cfg)},
              {kind::fd_passing, with<fd_passing>(cfg)},
          }};
}

const registrar reg_preposted{all_kinds(
    cfg_preposted, "hand-written liburing, ring per thread, SINGLE_ISSUER|DEFER_TASKRUN, recv pre-posted (arms poll)")};
const registrar reg_floor{all_kinds(
    cfg_floor, "raw_uring_preposted + fixed files, each recv queued behind the send that feeds it (completes inline)")};
const registrar reg_nodt{all_kinds(cfg_nodt, "raw_uring_preposted on a ring without SINGLE_ISSUER|DEFER_TASKRUN")};
const registrar reg_coro{{
    .name = "raw_uring_coro",
    .description = "raw_uring_floor's schedule driven by minimal C++20 coroutines (a CQE per op resumes it), pingpong only",
    .factories = {{kind::pingpong, with<coro_pingpong>(cfg_floor)}},
}};
const registrar reg_mshot{{
    .name = cfg_mshot.name,
    .description = "raw_uring_preposted with multishot RECV from a provided buffer ring (copied out), pingpong kinds",
    .factories = {{kind::pingpong, with<pingpong>(cfg_mshot)}},
}};

}  // namespace
