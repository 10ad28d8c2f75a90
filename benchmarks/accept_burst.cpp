// accept_burst: how long after a burst of connects the server has accepted them all.
//
// A client process creates N sockets, then connects them one after another as fast
// as it can (blocking connect: when the listen backlog is full it waits for the
// server).  The server process accepts and keeps every connection.  The lag is the
// server's CLOCK_MONOTONIC time when it accepted the N-th connection minus the
// client's time when its last connect() returned (both sent to the parent); a
// server that keeps up has a lag of a few microseconds, one that falls behind has
// up to a backlog's worth of connections left when the client is done.  Also
// reported: accepts per second over the whole burst.  Repetitions are interleaved
// across implementations.
//
// Adding an implementation: write `void accept_NAME(burst_server& s)` (call
// s.ready() once listening, s.all_accepted() right when the n-th connection is
// accepted, keep the connections until then, close everything and return) and add
// a row to `impls` below.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>
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

// What a server implementation gets (in the server process).
class burst_server {
 public:
  burst_server(int ctl, std::size_t n, unique_fd listener) : listener(std::move(listener)), n(n), ctl_(ctl) {}

  unique_fd listener;  // blocking, listening; the implementation may take it
  const std::size_t n;  // connections in the burst

  void ready() { ctl_send(ctl_, msg(ctl_msg::ready, now_ns())); }
  // Call right when the n-th connection has been accepted (it takes the time
  // first); blocks until the parent ends the run.
  void all_accepted() {
    ctl_send(ctl_, msg(ctl_msg::report, now_ns()));
    ctl_recv(ctl_, ctl_msg::exit_now, 600'000);
  }
  static ctl_msg msg(ctl_msg::kind_t k, std::int64_t t) {
    ctl_msg m;
    m.kind = k;
    m.t_ns = t;
    return m;
  }

 private:
  int ctl_;
};

constexpr unsigned ring_entries = 4096;  // CQ 4x: a burst posts many accept CQEs at once

// ---------------------------------------------------------------------------
// raw_uring / raw_uring_direct: one multishot ACCEPT on the listener (re-armed if the
// kernel ends it), CQEs reaped in batches of 256 per io_uring_submit_and_wait;
// raw_uring_direct accepts into a sparse registered file table instead of the
// descriptor table.
void accept_raw(burst_server& s, bool direct) {
  uring r(ring_entries, 4 * ring_entries);
  if (direct) {
    if (int rc = io_uring_register_files_sparse(r.get(), static_cast<unsigned>(s.n + 16)); rc < 0)
      throw_res(rc, "io_uring_register_files_sparse");
  }
  auto arm = [&] {
    io_uring_sqe* e = r.sqe();
    if (direct)
      io_uring_prep_multishot_accept_direct(e, s.listener.get(), nullptr, nullptr, 0);
    else
      io_uring_prep_multishot_accept(e, s.listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
    e->user_data = 1;
  };
  arm();
  r.submit();
  s.ready();
  std::vector<int> fds;  // regular descriptors (direct ones go with the ring)
  fds.reserve(direct ? 0 : s.n);
  std::size_t accepted = 0;
  while (accepted < s.n) {
    r.turn([&](std::uint64_t, int res, unsigned flags) {
      if (res < 0) throw_res(res, "accept");
      ++accepted;
      if (!direct) fds.push_back(res);
      if ((flags & IORING_CQE_F_MORE) == 0) arm();
    });
  }
  s.all_accepted();
  for (int fd : fds) ::close(fd);
}

void accept_raw_uring(burst_server& s) { accept_raw(s, false); }
void accept_raw_uring_direct(burst_server& s) { accept_raw(s, true); }

// ---------------------------------------------------------------------------
// epoll: non-blocking listener in a level-triggered epoll set; on readiness accept4
// until EAGAIN.
void accept_epoll(burst_server& s) {
  const int lfd = s.listener.get();
  unique_fd ep = epoll_with_listener(lfd);
  std::vector<unique_fd> fds;
  fds.reserve(s.n);
  s.ready();
  std::array<epoll_event, 16> evs;
  while (fds.size() < s.n) {
    epoll_wait_some(ep.get(), evs.data(), static_cast<int>(evs.size()), -1);
    for (int c; fds.size() < s.n && (c = accept_nonblocking(lfd)) >= 0;) fds.emplace_back(c);
  }
  s.all_accepted();
}

// ---------------------------------------------------------------------------
// ringsock: an acceptor (adopting the listener) and one coroutine calling
// accept() in a loop, keeping every stream_socket.
namespace rs = ringsock;

rs::task<void> ringsock_accept_loop(burst_server& s, rs::io_context& ctx, rs::acceptor acc) {
  std::vector<rs::stream_socket> conns;
  conns.reserve(s.n);
  while (conns.size() < s.n) conns.push_back((co_await acc.accept()).value());
  s.all_accepted();
  ctx.stop();
}

void accept_ringsock(burst_server& s) {
  rs::io_context ctx;
  ctx.spawn(ringsock_accept_loop(s, ctx, rs::acceptor::adopt(ctx, rs::unique_fd(s.listener.release()))));
  s.ready();
  ctx.run();
}

// ---------------------------------------------------------------------------
// ringsock_pool: a context_pool of 2 rings; a task on ring 0 adopts the listener and
// runs serve() (round robin), whose handler keeps the socket in its ring's list.  A
// connection counts as accepted when its handler runs on its ring, so the lag
// includes the hand-off.  At the end every ring empties its own list (sockets die on
// their ring's thread) and the main thread stops the pool.  (Not the last ring to
// finish: a stop() from a function posted to the ring's own loop leaves that loop
// blocked in io_uring_enter, see the README.)
struct pool_burst {
  burst_server& s;
  rs::context_pool& pool;
  std::vector<std::vector<rs::stream_socket>> kept;  // by ring, touched on that ring only
  std::atomic<std::size_t> accepted{0};
  std::atomic<std::size_t> rings_cleared{0};
};

rs::task<void> pool_burst_listen(pool_burst& pb, rs::unique_fd lfd) {
  rs::acceptor acc = rs::acceptor::adopt(pb.pool[0], std::move(lfd));
  auto handler = [&pb](rs::stream_socket sock) -> rs::task<void> {
    pb.kept[pb.pool.index_of(sock.context())].push_back(std::move(sock));
    if (pb.accepted.fetch_add(1) + 1 != pb.s.n) co_return;
    pb.s.all_accepted();  // blocks this ring until the parent ends the run
    for (std::size_t r = 0; r < pb.pool.size(); ++r)
      rs::post(pb.pool[r], [&pb, r] {
        pb.kept[r].clear();
        pb.rings_cleared.fetch_add(1);
      });
  };
  co_await rs::serve(acc, pb.pool, handler);
}

void accept_ringsock_pool(burst_server& s) {
  rs::context_pool pool(2);
  pool_burst pb{s, pool, std::vector<std::vector<rs::stream_socket>>(pool.size()), {}, {}};
  for (auto& k : pb.kept) k.reserve(s.n);
  rs::spawn_on(pool[0], pool_burst_listen(pb, rs::unique_fd(s.listener.release())));
  s.ready();  // the listener already listens: connections wait in its backlog until accepted
  // Until every ring has dropped its sockets (or a ring failed and the pool stopped).
  while (pb.rings_cleared.load() < pool.size() && !pool.stopping())
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  pool.stop();
  pool.join();
}

using impl = impl_row<burst_server>;

const impl impls[] = {
    {"raw_uring", "one multishot ACCEPT, CQEs reaped 256 at a time, DEFER_TASKRUN ring", accept_raw_uring},
    {"raw_uring_direct", "the same, accepting into direct descriptors (registered file table)",
     accept_raw_uring_direct},
    {"epoll", "non-blocking listener, level-triggered epoll, accept4 until EAGAIN", accept_epoll},
    {"ringsock", "acceptor::accept() in a loop (today's public API, default io_context)", accept_ringsock},
    {"ringsock_pool", "context_pool(2): serve() on ring 0 hands each connection round robin to a ring",
     accept_ringsock_pool},
};

// ---------------------------------------------------------------------------
// The client: N sockets created up front; on `go`, connect them all back to back.
void run_burst(int ctl, const unix_addr& addr, std::size_t n) {
  raise_nofile();
  std::vector<unique_fd> fds;
  fds.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    fds.emplace_back(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fds.back()) throw_errno("socket");
  }
  ctl_send(ctl, burst_server::msg(ctl_msg::ready, 0));
  ctl_recv(ctl, ctl_msg::go, 600'000);
  const std::int64_t first = now_ns();
  for (const auto& fd : fds) {
    while (::connect(fd.get(), addr.get(), addr.len) != 0)
      if (errno != EINTR) throw_errno("connect");
  }
  ctl_msg m = burst_server::msg(ctl_msg::done, now_ns());
  m.v[0] = first;
  ctl_send(ctl, m);
  ctl_recv(ctl, ctl_msg::exit_now, 600'000);
}

struct result {
  double lag_us = NAN;       // last accept - last connect
  double burst_s = NAN;      // first connect - last accept
  std::string error;
};

// Grows the calling process's descriptor table to hold descriptor `top` now, by
// dup2()ing stdin there and closing it.  A multi-threaded process pays an RCU grace
// period (synchronize_rcu in expand_files) at every doubling of its table; a server
// that does it at set-up pays none of them during a burst.
void presize_fd_table(std::size_t top) {
  const int hi = ::dup2(STDIN_FILENO, static_cast<int>(top));
  if (hi < 0) throw_errno("dup2 (presizing the descriptor table)");
  if (::close(hi) != 0) throw_errno("close");
}

result run_cell(const impl& im, std::size_t n, bool server_thread, bool presize_fds) {
  result res;
  temp_dir dir;
  const unix_addr addr(dir.path("listen.sock"));
  try {
    child cli("clients", [&](int ctl) { run_burst(ctl, addr, n); });
    child srv("server", [&](int ctl) {
      const std::size_t limit = raise_nofile();
      if (presize_fds) presize_fd_table(std::min(n + 16, limit - 1));
      burst_server s(ctl, n, make_scale_listener(addr));
      const std::size_t fds0 = count_open_fds();
      if (server_thread) {  // the main thread only waits (std::thread rethrows nothing: catch here)
        std::exception_ptr error;
        std::thread t([&] {
          try {
            im.serve(s);
          } catch (...) {
            error = std::current_exception();
          }
        });
        t.join();
        if (error) std::rethrow_exception(error);
      } else {
        im.serve(s);
      }
      s.listener.reset();
      report_server_done(ctl, fds0 - 1);
    });
    ctl_recv(cli.ctl(), ctl_msg::ready, 120'000, srv.ctl());
    ctl_recv(srv.ctl(), ctl_msg::ready, 120'000, cli.ctl());
    ctl_send(cli.ctl(), burst_server::msg(ctl_msg::go, 0));
    const ctl_msg accepted = ctl_recv(srv.ctl(), ctl_msg::report, 120'000, cli.ctl());
    const ctl_msg connected = ctl_recv(cli.ctl(), ctl_msg::done, 120'000, srv.ctl());
    res.lag_us = static_cast<double>(accepted.t_ns - connected.t_ns) * 1e-3;
    res.burst_s = static_cast<double>(accepted.t_ns - connected.v[0]) * 1e-9;
    const ctl_msg bye = burst_server::msg(ctl_msg::exit_now, 0);
    ctl_send(srv.ctl(), bye);
    wait_server_done(srv);
    ctl_send(cli.ctl(), bye);
    cli.wait();
  } catch (const std::exception& e) {
    res.error = e.what();
  }
  return res;
}

const char usage[] =
    "usage: accept_burst [--quick] [--json] [--impl NAME[,NAME]] [--n N|max] [--reps R]\n"
    "  --impl   raw_uring, raw_uring_direct, epoll, ringsock, ringsock_pool (default: all)\n"
    "  --n      connections in the burst (default max = what RLIMIT_NOFILE allows,\n"
    "           less a few descriptors; quick 5000)\n"
    "  --reps   repetitions per implementation, interleaved (default 7, quick 3)\n"
    "  --server-thread  run each server on a second thread of its process (the main\n"
    "           thread only joins it), as a context_pool's rings run\n"
    "  --presize-fds  grow each server's descriptor table to N + 16 before set-up\n"
    "           (a multi-threaded process waits an RCU grace period at every doubling)\n"
    "  --quick  the CI run\n"
    "  --json   one JSON object per implementation on stdout; the table goes to stderr\n";

}  // namespace

int main(int argc, char** argv) {
  std::string n_arg;
  std::size_t reps = 0;
  bool server_thread = false, presize_fds = false;
  const common_options o = parse_common(argc, argv, usage, [&](const std::string& f, const auto& value) {
    if (f == "--n") {
      n_arg = value();
    } else if (f == "--reps") {
      reps = static_cast<std::size_t>(std::strtoull(value().c_str(), nullptr, 10));
    } else if (f == "--server-thread") {
      server_thread = true;
    } else if (f == "--presize-fds") {
      presize_fds = true;
    } else {
      return false;
    }
    return true;
  });
  const std::size_t limit = raise_nofile();
  const std::size_t max_n = limit > 64 ? limit - 32 : 1;
  if (n_arg.empty()) n_arg = o.quick ? "5000" : "max";
  const std::vector<std::size_t> ns = parse_counts(n_arg, max_n);
  if (ns.size() != 1) {
    std::fputs("--n takes one count\n", stderr);
    return 2;
  }
  const std::size_t n = ns[0];
  if (reps == 0) reps = o.quick ? 3 : 7;
  arm_watchdog(o.quick ? 120 : 900, "accept_burst");
  const std::size_t fds_at_start = count_open_fds();

  output out(o, "accept_burst", "lag from the client's last connect() to the server's last accept");
  std::vector<const impl*> chosen;
  for (const auto& im : impls)
    if (o.wants(im.name)) {
      chosen.push_back(&im);
      std::fprintf(out.table(), "  %-16s %s\n", im.name, im.description);
    }
  std::fprintf(out.table(),
               "  N = %zu connections per burst (listen backlog %s), %zu repetitions per implementation,\n"
               "  interleaved; lag = server's last accept - client's last connect (CLOCK_MONOTONIC)%s%s\n\n",
               n, "min(65535, net.core.somaxconn)", reps,
               server_thread ? ";\n  every server runs on a second thread of its process (--server-thread)" : "",
               presize_fds ? ";\n  each server's descriptor table is grown to N + 16 before set-up (--presize-fds)" : "");
  std::vector<std::vector<result>> results(chosen.size());
  for (std::size_t rep = 0; rep < reps; ++rep)
    for (std::size_t j = 0; j < chosen.size(); ++j) {
      const std::size_t k = (rep + j) % chosen.size();  // rotate who goes first
      results[k].push_back(run_cell(*chosen[k], n, server_thread, presize_fds));
    }

  std::fprintf(out.table(), "  %-16s %6s %12s %12s %12s %14s %5s\n", "impl", "N", "lag med us", "lag min us",
               "lag max us", "accepts/s med", "reps");
  bool failed = false;
  for (std::size_t k = 0; k < chosen.size(); ++k) {
    std::vector<double> lags, rates;
    std::string error;
    for (const auto& r : results[k]) {
      if (!r.error.empty()) {
        error = r.error;
        continue;
      }
      lags.push_back(r.lag_us);
      rates.push_back(static_cast<double>(n) / r.burst_s);
    }
    const double lag_med = median(lags), rate_med = median(rates);
    const double lag_min = lags.empty() ? NAN : *std::min_element(lags.begin(), lags.end());
    const double lag_max = lags.empty() ? NAN : *std::max_element(lags.begin(), lags.end());
    std::fprintf(out.table(), "  %-16s %6zu %12.0f %12.0f %12.0f %14.0f %5zu", chosen[k]->name, n, lag_med, lag_min,
                 lag_max, rate_med, lags.size());
    if (!error.empty()) {
      failed = true;
      std::fprintf(out.table(), "  ERROR: %s", error.c_str());
    }
    std::fputc('\n', out.table());
    std::string all;
    for (double l : lags) all += (all.empty() ? "" : ", ") + json_number(l);
    out.json("\"workload\": \"accept_burst\", \"impl\": " + json_string(chosen[k]->name) + ", \"n\": " +
             std::to_string(n) + ", \"unit\": \"microseconds\", \"lag_us_median\": " + json_number(lag_med) +
             ", \"lag_us_min\": " + json_number(lag_min) + ", \"lag_us_max\": " + json_number(lag_max) +
             ", \"lag_us_all\": [" + all + "], \"accepts_per_s_median\": " + json_number(rate_med) +
             ", \"reps\": " + std::to_string(lags.size()) +
             ", \"error\": " + (error.empty() ? std::string("null") : json_string(error)));
  }
  if (count_open_fds() != fds_at_start) {
    std::fprintf(out.table(), "descriptor leak in the parent\n");
    failed = true;
  }
  alarm(0);
  return failed ? 1 : 0;
}
