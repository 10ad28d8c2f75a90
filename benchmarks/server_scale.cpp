// server_scale: does a server bound by its own CPU go faster with 2 threads than 1?
//
// 64 connections from a client process (one thread, epoll), one 64-byte message in
// flight on each (ping-pong).  The server process spends a calibrated 10 µs of CPU
// on every message (a spin of dependent multiply-adds) before answering it, so one
// server thread can do at most ~100k msgs/s.  Measured: messages per second over
// the run after a warm-up, and the CPU time (all threads, /proc/PID/task/*/schedstat)
// of the server and of the client over the same span, as cores used.
//
// Multi-threaded servers cannot share an AF_UNIX listener to spread connections
// (no SO_REUSEPORT; dup'ed listeners or several rings' multishot ACCEPTs all go to
// one waiter, FACTS.md): thread 0 accepts and hands the connections round-robin to
// the threads.
//
// Adding an implementation: write `void serve_NAME(scale_server& s)` (run
// s.threads threads, call s.ready() once accepting, answer every 64-byte message
// after s.work(), return when the client has closed all s.conns connections) and
// add a row to `impls` below.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <exception>
#include <latch>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <ringsock/acceptor.hpp>
#include <ringsock/context_pool.hpp>
#include <ringsock/hand_off.hpp>
#include <ringsock/io_context.hpp>
#include <ringsock/post.hpp>
#include <ringsock/stream_socket.hpp>
#include <ringsock/task.hpp>

#include "report.hpp"
#include "scale_common.hpp"

namespace {

using namespace bench;
using namespace bench::scale;

constexpr std::size_t msg_size = 64;
constexpr char reply_bytes[msg_size] = "reply";

// ---------------------------------------------------------------------------
// The calibrated work: `iters` dependent multiply-adds (the asm keeps the compiler
// from folding the loop).
std::uint64_t spin(std::uint64_t iters, std::uint64_t x) noexcept {
  for (std::uint64_t i = 0; i < iters; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    asm volatile("" : "+r"(x));
  }
  return x;
}

std::int64_t thread_cpu_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Iterations that take `us` microseconds of CPU: the fastest of several timed runs
// (CPU time, so being preempted does not count).
std::uint64_t calibrate(double us) {
  constexpr std::uint64_t probe = 200'000;
  double best = 1e18;
  std::uint64_t sink = 1;
  for (int i = 0; i < 15; ++i) {
    const std::int64_t t0 = thread_cpu_ns();
    sink = spin(probe, sink);
    best = std::min(best, static_cast<double>(thread_cpu_ns() - t0) / static_cast<double>(probe));
  }
  if (sink == 0) std::fputs("", stderr);  // keep the result alive
  return static_cast<std::uint64_t>(us * 1000.0 / best);
}

// What a server implementation gets (in the server process).
class scale_server {
 public:
  scale_server(int ctl, unsigned threads, std::size_t conns, std::uint64_t iters, unique_fd listener)
      : listener(std::move(listener)), threads(threads), conns(conns), iters_(iters), ctl_(ctl) {}

  unique_fd listener;      // blocking, listening; thread 0 accepts
  const unsigned threads;  // server threads to run
  const std::size_t conns;  // connections that will come

  void ready() {
    ctl_msg m;
    m.kind = ctl_msg::ready;
    ctl_send(ctl_, m);
  }
  // The per-message cost; call once per message before answering it.
  void work() noexcept { sink_ = spin(iters_, sink_); }

  // Thread plumbing: run f(i) on threads 0..threads-1 (0 is the calling thread);
  // the first exception stops the others (stopping() turns true) and is rethrown.
  template <class F>
  void run_threads(F&& f) {
    std::vector<std::thread> ts;
    auto guarded = [&](unsigned i) {
      try {
        f(i);
      } catch (...) {
        std::lock_guard lock(m_);
        if (!error_) error_ = std::current_exception();
        stop_.store(true);
      }
    };
    for (unsigned i = 1; i < threads; ++i) ts.emplace_back(guarded, i);
    guarded(0);
    for (auto& t : ts) t.join();
    if (error_) std::rethrow_exception(error_);
  }
  bool stopping() const noexcept { return stop_.load(std::memory_order_relaxed); }

 private:
  std::uint64_t iters_;
  int ctl_;
  std::uint64_t sink_ = 1;
  std::atomic<bool> stop_{false};
  std::mutex m_;
  std::exception_ptr error_;
};

// Connection counts shared by the threads of a server: thread 0 accepts and
// assigns; a thread is done when everything was accepted and its own connections
// have all closed.
struct assignment {
  explicit assignment(unsigned threads) : assigned(threads) {}
  std::vector<std::atomic<std::size_t>> assigned;
  std::atomic<std::size_t> accepted{0};
  unsigned next = 0;  // thread 0 only
  bool done(const scale_server& s, unsigned t, std::size_t closed) const {
    return s.stopping() || (accepted.load() == s.conns && closed == assigned[t].load());
  }
};

// ---------------------------------------------------------------------------
// epoll: one level-triggered epoll per thread; thread 0 also has the listener and
// adds each accepted descriptor to the next thread's epoll set (epoll_ctl on
// another thread's set is safe).  One recv per readiness (a message arrives
// whole), the work, one send.
void serve_epoll(scale_server& s) {
  const int lfd = s.listener.get();
  std::vector<unique_fd> eps;
  eps.push_back(epoll_with_listener(lfd));
  for (unsigned t = 1; t < s.threads; ++t) {
    eps.emplace_back(::epoll_create1(EPOLL_CLOEXEC));
    if (!eps.back()) throw_errno("epoll_create1");
  }
  assignment as(s.threads);
  s.ready();
  s.run_threads([&](unsigned t) {
    const int ep = eps[t].get();
    std::vector<std::uint8_t> got;  // bytes of the current message, by descriptor
    std::size_t closed = 0;
    char buf[msg_size];
    std::array<epoll_event, 64> evs;
    auto close_conn = [&](int fd) {
      ::close(fd);
      ++closed;
    };
    while (!as.done(s, t, closed)) {
      const int ne = epoll_wait_some(ep, evs.data(), static_cast<int>(evs.size()), 100);
      for (int k = 0; k < ne; ++k) {
        const int fd = evs[static_cast<std::size_t>(k)].data.fd;
        if (fd == lfd) {
          for (int c; (c = accept_nonblocking(lfd)) >= 0;) {
            const unsigned to = as.next++ % s.threads;
            as.assigned[to].fetch_add(1);
            epoll_add_in(eps[to].get(), c);
            as.accepted.fetch_add(1);
          }
          continue;
        }
        const auto i = static_cast<std::size_t>(fd);
        if (i >= got.size()) got.resize(i + 1);
        ssize_t n = ::recv(fd, buf, msg_size - got[i], 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
          close_conn(fd);
          continue;
        }
        if (n < 0) throw_errno("recv");
        got[i] = static_cast<std::uint8_t>(got[i] + n);
        if (got[i] < msg_size) continue;
        got[i] = 0;
        s.work();
        ssize_t w = ::send(fd, reply_bytes, msg_size, MSG_NOSIGNAL);
        if (w < 0 && (errno == EPIPE || errno == ECONNRESET)) continue;  // recv sees the end next
        if (w != static_cast<ssize_t>(msg_size)) throw_errno("send");
      }
    }
  });
}

// ---------------------------------------------------------------------------
// raw_uring: a ring per thread (DEFER_TASKRUN), thread 0 with a multishot ACCEPT;
// each accepted descriptor goes round-robin to a thread, to another ring by
// MSG_RING (the descriptor number as the CQE's res).  The owning thread installs it
// in its registered file table, closes the plain descriptor, and arms one
// multishot RECV from its provided buffer ring; replies are fixed-file SENDs with
// CQE_SKIP_SUCCESS, submitted with the next wait.
void serve_raw_uring(scale_server& s) {
  enum : std::uint64_t { op_accept = 1, op_handoff = 2, op_recv = 3, op_send = 4, op_close = 5, op_msg = 6 };
  auto ud = [](std::uint64_t idx, std::uint64_t op) { return idx << 8 | op; };
  std::vector<int> ring_fds(s.threads, -1);
  std::latch rings_ready(s.threads);
  assignment as(s.threads);
  s.run_threads([&](unsigned t) {
    // Every thread arrives at the latch, also when its set-up fails (the others then
    // see stopping() and end).
    struct arrive_once {
      std::latch& l;
      bool done = false;
      void operator()() {
        if (!std::exchange(done, true)) l.arrive_and_wait();
      }
      ~arrive_once() {
        if (!done) l.count_down();
      }
    } arrive{rings_ready};
    uring r(256, 1024);
    const auto table = static_cast<unsigned>(s.conns + 8);
    if (int rc = io_uring_register_files_sparse(r.get(), table); rc < 0) throw_res(rc, "io_uring_register_files_sparse");
    buffer_ring pool(r.get(), 512, 256);
    ring_fds[t] = r.fd();
    arrive();
    if (s.stopping()) return;
    std::vector<std::uint8_t> got(table);  // bytes of the current message, by slot
    unsigned next_slot = 0;
    std::size_t closed = 0;
    auto arm_recv = [&](unsigned slot) {
      io_uring_sqe* e = r.sqe();
      io_uring_prep_recv_multishot(e, static_cast<int>(slot), nullptr, 0, 0);
      e->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
      e->buf_group = 0;
      e->user_data = ud(slot, op_recv);
    };
    auto adopt = [&](int fd) {
      const unsigned slot = next_slot++;
      if (int rc = io_uring_register_files_update(r.get(), slot, &fd, 1); rc != 1) {
        ::close(fd);
        throw_res(rc < 0 ? rc : -EBADF, "io_uring_register_files_update");
      }
      ::close(fd);  // the table holds the file now
      got[slot] = 0;
      arm_recv(slot);
    };
    auto arm_accept = [&] {
      io_uring_sqe* e = r.sqe();
      io_uring_prep_multishot_accept(e, s.listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
      e->user_data = ud(0, op_accept);
    };
    if (t == 0) {
      arm_accept();
      r.submit();
      s.ready();
    }
    while (!as.done(s, t, closed)) {
      r.turn(
          [&](std::uint64_t u, int res, unsigned flags) {
            const auto slot = static_cast<unsigned>(u >> 8);
            switch (u & 0xff) {
              case op_accept: {
                if (res < 0) throw_res(res, "accept");
                if ((flags & IORING_CQE_F_MORE) == 0) arm_accept();
                const unsigned to = as.next++ % s.threads;
                as.assigned[to].fetch_add(1);
                as.accepted.fetch_add(1);
                if (to == 0) {
                  adopt(res);
                } else {
                  io_uring_sqe* e = r.sqe();
                  io_uring_prep_msg_ring(e, ring_fds[to], static_cast<unsigned>(res), ud(0, op_handoff), 0);
                  e->flags |= IOSQE_CQE_SKIP_SUCCESS;
                  e->user_data = ud(static_cast<unsigned>(res), op_msg);
                }
                break;
              }
              case op_handoff:  // posted by thread 0's MSG_RING: res is the descriptor
                adopt(res);
                break;
              case op_msg:
                ::close(static_cast<int>(slot));
                throw_res(res, "msg_ring");
              case op_recv: {
                if (res > 0) {
                  pool.recycle(flags >> IORING_CQE_BUFFER_SHIFT);
                  got[slot] = static_cast<std::uint8_t>(got[slot] + res);
                  if (got[slot] > msg_size) throw std::runtime_error("recv: more than one message");
                  if (got[slot] == msg_size) {
                    got[slot] = 0;
                    s.work();
                    io_uring_sqe* e = r.sqe();
                    io_uring_prep_send(e, static_cast<int>(slot), reply_bytes, msg_size, MSG_NOSIGNAL);
                    e->flags |= IOSQE_FIXED_FILE | IOSQE_CQE_SKIP_SUCCESS;
                    e->user_data = ud(slot, op_send);
                  }
                }
                if ((flags & IORING_CQE_F_MORE) != 0) break;
                if (res > 0 || res == -ENOBUFS) {
                  arm_recv(slot);
                } else if (res == 0 || res == -ECONNRESET) {
                  io_uring_sqe* e = r.sqe();
                  io_uring_prep_close_direct(e, slot);
                  e->flags |= IOSQE_CQE_SKIP_SUCCESS;
                  e->user_data = ud(slot, op_close);
                  ++closed;
                } else {
                  throw_res(res, "recv");
                }
                break;
              }
              case op_send:  // only failures come: the client is gone, recv sees the end
                if (res != -EPIPE && res != -ECONNRESET) throw_res(res, "send");
                break;
              default:
                throw_res(res, "close");
            }
          },
          100);
    }
  });
}

// ---------------------------------------------------------------------------
// ringsock_pool / ringsock_pool_ll: a context_pool of s.threads rings; a task on
// ring 0 adopts the listener and runs serve(), which accepts and hands each
// connection to a ring (round robin, or least loaded) where the handler runs:
// read_exact 64 bytes into its frame, the work, write_all, until the client closes.
// The last connection to close stops the pool.
namespace rs = ringsock;

rs::task<void> pool_listen(rs::context_pool& pool, rs::unique_fd lfd, scale_server& s, rs::distribution how,
                           std::atomic<std::size_t>& closed) {
  rs::acceptor acc = rs::acceptor::adopt(pool[0], std::move(lfd));
  auto handler = [&s, &pool, &closed](rs::stream_socket sock) -> rs::task<void> {
    std::array<char, msg_size> buf;
    for (;;) {
      auto got = co_await sock.read_exact(buf);
      if (!got) {
        const std::error_code ec = got.error();
        if (ec != rs::errc::end_of_stream && ec != std::errc::connection_reset) got.value();  // throws
        break;
      }
      s.work();
      auto sent = co_await sock.write_all(std::span<const char>(reply_bytes, msg_size));
      if (!sent && sent.error() != std::errc::broken_pipe && sent.error() != std::errc::connection_reset)
        sent.value();  // throws; a closed client is seen by the next read
    }
    sock.close();
    if (closed.fetch_add(1) + 1 == s.conns) pool.stop();
  };
  co_await rs::serve(acc, pool, handler, how);
}

void serve_ringsock(scale_server& s, rs::distribution how) {
  rs::context_pool pool(s.threads);
  std::atomic<std::size_t> closed{0};
  rs::spawn_on(pool[0], pool_listen(pool, rs::unique_fd(s.listener.release()), s, how, closed));
  s.ready();  // the listener already listens: connections wait in its backlog until accepted
  pool.join();  // until the last connection closed (or a ring failed: rethrown)
}

void serve_ringsock_pool(scale_server& s) { serve_ringsock(s, rs::distribution::round_robin); }
void serve_ringsock_pool_ll(scale_server& s) { serve_ringsock(s, rs::distribution::least_loaded); }

using impl = impl_row<scale_server>;

const impl impls[] = {
    {"epoll", "an epoll per thread; thread 0 accepts and epoll_ctl-adds fds round-robin", serve_epoll},
    {"raw_uring", "a ring per thread; thread 0's multishot ACCEPT hands fds round-robin by MSG_RING; multishot RECV",
     serve_raw_uring},
    {"ringsock_pool", "context_pool; serve() on ring 0 hands connections round robin; read_exact, work, write_all",
     serve_ringsock_pool},
    {"ringsock_pool_ll", "the same with distribution::least_loaded", serve_ringsock_pool_ll},
};

// ---------------------------------------------------------------------------
// The client: one thread, epoll, `conns` non-blocking connections with one message
// each in flight.  Counts answered messages between warm-up and the end, and the
// CPU time of itself and of the server over that span.
struct client_report {
  std::int64_t msgs = 0, ns = 0, client_cpu = 0, server_cpu = 0;
};

void run_client(int ctl, const unix_addr& addr, std::size_t conns, pid_t server, double warmup_s, double run_s) {
  std::vector<unique_fd> fds;
  unique_fd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep) throw_errno("epoll_create1");
  for (std::size_t i = 0; i < conns; ++i) {
    fds.push_back(connect_to(addr));
    const int fd = fds.back().get();
    if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) throw_errno("fcntl O_NONBLOCK");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = i;
    if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) != 0) throw_errno("epoll_ctl");
  }
  const char request[msg_size] = "request";
  auto send_one = [&](int fd) {
    if (::send(fd, request, msg_size, MSG_NOSIGNAL) != static_cast<ssize_t>(msg_size)) throw_errno("send");
  };
  for (const auto& fd : fds) send_one(fd.get());
  std::vector<std::size_t> got(conns);
  std::int64_t msgs = 0;
  const std::int64_t start = now_ns();
  const auto t_begin = start + static_cast<std::int64_t>(warmup_s * 1e9);
  const auto t_end = t_begin + static_cast<std::int64_t>(run_s * 1e9);
  client_report rep;
  bool measuring = false;
  std::array<epoll_event, 64> evs;
  char buf[msg_size];
  for (;;) {
    const std::int64_t now = now_ns();
    if (!measuring && now >= t_begin) {
      measuring = true;
      rep = {-msgs, -now, -process_cpu_ns(0), -process_cpu_ns(server)};
    } else if (measuring && now >= t_end) {
      rep.msgs += msgs;
      rep.ns += now;
      rep.client_cpu += process_cpu_ns(0);
      rep.server_cpu += process_cpu_ns(server);
      break;
    }
    int ne = ::epoll_wait(ep.get(), evs.data(), static_cast<int>(evs.size()), 10'000);
    if (ne < 0 && errno == EINTR) continue;
    if (ne < 0) throw_errno("epoll_wait");
    if (ne == 0) throw std::runtime_error("client: no answer for 10 s");
    for (int k = 0; k < ne; ++k) {
      const auto i = static_cast<std::size_t>(evs[static_cast<std::size_t>(k)].data.u64);
      ssize_t n = ::recv(fds[i].get(), buf, msg_size - got[i], 0);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) throw std::runtime_error("client: the server closed a connection");
      got[i] += static_cast<std::size_t>(n);
      if (got[i] < msg_size) continue;
      got[i] = 0;
      ++msgs;
      send_one(fds[i].get());
    }
  }
  ctl_msg m;
  m.kind = ctl_msg::done;
  m.v[0] = rep.msgs;
  m.v[1] = rep.ns;
  m.v[2] = rep.client_cpu;
  m.v[3] = rep.server_cpu;
  ctl_send(ctl, m);
}  // closing the connections ends the server

struct result {
  double rate = NAN, server_cores = NAN, client_cores = NAN, server_us_per_msg = NAN;
  std::string error;
};

result run_cell(const impl& im, unsigned threads, std::size_t conns, std::uint64_t iters, double warmup_s,
                double run_s) {
  result res;
  temp_dir dir;
  const unix_addr addr(dir.path("listen.sock"));
  try {
    child srv("server", [&](int ctl) {
      scale_server s(ctl, threads, conns, iters, make_scale_listener(addr));
      const std::size_t fds0 = count_open_fds();
      im.serve(s);
      s.listener.reset();
      report_server_done(ctl, fds0 - 1);
    });
    ctl_recv(srv.ctl(), ctl_msg::ready);
    const pid_t server_pid = srv.pid();
    child cli("client", [&](int ctl) { run_client(ctl, addr, conns, server_pid, warmup_s, run_s); });
    const ctl_msg rep = ctl_recv(cli.ctl(), ctl_msg::done, 120'000, srv.ctl());
    cli.wait();
    wait_server_done(srv, 30'000);
    const double secs = static_cast<double>(rep.v[1]) * 1e-9;
    res.rate = static_cast<double>(rep.v[0]) / secs;
    res.client_cores = static_cast<double>(rep.v[2]) * 1e-9 / secs;
    res.server_cores = static_cast<double>(rep.v[3]) * 1e-9 / secs;
    res.server_us_per_msg = static_cast<double>(rep.v[3]) * 1e-3 / static_cast<double>(rep.v[0]);
  } catch (const std::exception& e) {
    res.error = e.what();
  }
  return res;
}

const char usage[] =
    "usage: server_scale [--quick] [--json] [--impl NAME[,NAME]] [--threads T[,T]] [--duration S]\n"
    "                    [--reps R] [--conns N] [--work-us US]\n"
    "  --impl      epoll, raw_uring, ringsock_pool, ringsock_pool_ll (default: all)\n"
    "  --threads   server thread counts (default 1,2)\n"
    "  --duration  measured seconds per run, after a warm-up (default 2, quick 0.4)\n"
    "  --reps      runs per cell, interleaved; the median is reported (default 3, quick 1)\n"
    "  --conns     connections (default 64)\n"
    "  --work-us   CPU spent by the server per message (default 10)\n"
    "  --quick     the CI run\n"
    "  --json      one JSON object per cell on stdout; the table goes to stderr\n";

}  // namespace

int main(int argc, char** argv) {
  std::string threads_arg = "1,2";
  double duration = 0, work_us = 10;
  std::size_t reps = 0, conns = 64;
  const common_options o = parse_common(argc, argv, usage, [&](const std::string& f, const auto& value) {
    if (f == "--threads")
      threads_arg = value();
    else if (f == "--duration")
      duration = std::strtod(value().c_str(), nullptr);
    else if (f == "--reps")
      reps = static_cast<std::size_t>(std::strtoull(value().c_str(), nullptr, 10));
    else if (f == "--conns")
      conns = static_cast<std::size_t>(std::strtoull(value().c_str(), nullptr, 10));
    else if (f == "--work-us")
      work_us = std::strtod(value().c_str(), nullptr);
    else
      return false;
    return true;
  });
  if (duration <= 0) duration = o.quick ? 0.4 : 2.0;
  if (reps == 0) reps = o.quick ? 1 : 3;
  const double warmup = o.quick ? 0.1 : 0.3;
  const std::vector<std::size_t> thread_counts = parse_counts(threads_arg, 64);
  if (conns == 0 || work_us <= 0) {
    std::fputs("--conns and --work-us must be positive\n", stderr);
    return 2;
  }
  raise_nofile();
  arm_watchdog(static_cast<unsigned>(60 + 4.0 * static_cast<double>(reps) * (duration + 2.0) * 8), "server_scale");
  const std::size_t fds_at_start = count_open_fds();

  const std::uint64_t iters = calibrate(work_us);
  output out(o, "server_scale", "server-bound ping-pong, msgs/s with 1 vs 2 server threads");
  std::vector<const impl*> chosen;
  for (const auto& im : impls)
    if (o.wants(im.name)) {
      chosen.push_back(&im);
      std::fprintf(out.table(), "  %-16s %s\n", im.name, im.description);
    }
  std::fprintf(out.table(),
               "  %zu connections, one %zu B message in flight on each; the server spends %.1f us of CPU per\n"
               "  message (%llu spin iterations, calibrated); client: one thread, epoll; %zu x %.1f s per cell\n"
               "  (median), interleaved; cores = CPU time (user+sys, all threads) / wall time\n\n",
               conns, msg_size, work_us, static_cast<unsigned long long>(iters), reps, duration);

  struct cell {
    const impl* im;
    unsigned threads;
    std::vector<result> runs;
  };
  std::vector<cell> cells;
  for (const impl* im : chosen)
    for (std::size_t t : thread_counts) cells.push_back({im, static_cast<unsigned>(t), {}});
  for (std::size_t rep = 0; rep < reps; ++rep)
    for (std::size_t j = 0; j < cells.size(); ++j) {
      cell& c = cells[(rep + j) % cells.size()];
      c.runs.push_back(run_cell(*c.im, c.threads, conns, iters, warmup, duration));
    }

  std::fprintf(out.table(), "  %-16s %7s %10s %9s %13s %13s %14s\n", "impl", "threads", "msgs/s", "x1thread",
               "server cores", "client cores", "server us/msg");
  bool failed = false;
  for (const cell& c : cells) {
    std::vector<double> rate, sc, cc, us;
    std::string error;
    for (const auto& r : c.runs) {
      if (!r.error.empty()) {
        error = r.error;
        continue;
      }
      rate.push_back(r.rate);
      sc.push_back(r.server_cores);
      cc.push_back(r.client_cores);
      us.push_back(r.server_us_per_msg);
    }
    double base = NAN;
    for (const cell& b : cells)
      if (b.im == c.im && b.threads == 1) {
        std::vector<double> br;
        for (const auto& r : b.runs)
          if (r.error.empty()) br.push_back(r.rate);
        base = median(br);
      }
    const double m = median(rate), ratio = m / base;
    std::fprintf(out.table(), "  %-16s %7u %10.0f %9.2f %13.2f %13.2f %14.2f", c.im->name, c.threads, m, ratio,
                 median(sc), median(cc), median(us));
    if (!error.empty()) {
      failed = true;
      std::fprintf(out.table(), "  ERROR: %s", error.c_str());
    }
    std::fputc('\n', out.table());
    out.json("\"workload\": \"server_scale\", \"impl\": " + json_string(c.im->name) + ", \"threads\": " +
             std::to_string(c.threads) + ", \"conns\": " + std::to_string(conns) +
             ", \"work_us\": " + json_number(work_us) + ", \"unit\": \"msgs/s\", \"median\": " + json_number(m) +
             ", \"ratio_to_1thread\": " + json_number(ratio) + ", \"server_cores\": " + json_number(median(sc)) +
             ", \"client_cores\": " + json_number(median(cc)) +
             ", \"server_us_per_msg\": " + json_number(median(us)) + ", \"runs\": " + std::to_string(rate.size()) +
             ", \"seconds_per_run\": " + json_number(duration) +
             ", \"error\": " + (error.empty() ? std::string("null") : json_string(error)));
  }
  if (count_open_fds() != fds_at_start) {
    std::fprintf(out.table(), "descriptor leak in the parent\n");
    failed = true;
  }
  alarm(0);
  return failed ? 1 : 0;
}
