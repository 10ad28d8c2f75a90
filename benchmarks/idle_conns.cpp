// idle_conns: user-space memory a server process spends per idle connection.
//
// For each implementation and each N, a server child process sets up (ring, pools,
// listener), then N clients in another process connect, each sends one 16-byte
// request, the server reads it and answers 16 bytes, and the connections stay open
// and idle.  Once all N are answered the server samples its own memory; the result
// is (sample - sample before the first connection) / N: RSS, anonymous RSS, PSS and
// malloc'ed heap.  The machine's slab memory is sampled around the same span
// (kernel memory per connection, both ends, approximate: it is machine-wide).
//
// Adding an implementation: write `void serve_NAME(idle_server& s)` (take
// s.listener or use it, call s.ready() when set up, s.all_answered() when s.n
// requests have been answered, then tear everything down and return) and add a row
// to `impls` below.
#include <fcntl.h>
#include <malloc.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <stop_token>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include <ringsock/acceptor.hpp>
#include <ringsock/buffer_ring.hpp>
#include <ringsock/io_context.hpp>
#include <ringsock/stream_socket.hpp>
#include <ringsock/task.hpp>

#include "report.hpp"
#include "scale_common.hpp"

// ---------------------------------------------------------------------------
// Where a server's per-connection heap goes: every global operator new and delete is
// counted by the size of its malloc chunk (malloc_usable_size; g++ frees coroutine
// frames with unsized deletes, so the requested size is not known at the delete), and
// every new also by its requested size.  The server takes a snapshot when set up and
// another when all N are answered; the difference / N is what each connection holds
// ("operator new per conn" in the table).  Costs a malloc_usable_size and two relaxed
// atomic adds per allocation and changes no memory figure.
namespace alloc_count {
constexpr std::size_t max_size = 8192;  // larger sizes share the last bucket
std::atomic<long> live_by_usable[max_size + 1];  // news - deletes
std::atomic<long> news_by_request[max_size + 1];  // news only
inline std::size_t bucket(std::size_t n) noexcept { return n < max_size ? n : max_size; }
}  // namespace alloc_count

void* operator new(std::size_t n) {
  void* p = std::malloc(n ? n : 1);
  if (!p) throw std::bad_alloc();
  alloc_count::news_by_request[alloc_count::bucket(n)].fetch_add(1, std::memory_order_relaxed);
  alloc_count::live_by_usable[alloc_count::bucket(malloc_usable_size(p))].fetch_add(1, std::memory_order_relaxed);
  return p;
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void operator delete(void* p) noexcept {
  if (p) alloc_count::live_by_usable[alloc_count::bucket(malloc_usable_size(p))].fetch_sub(1, std::memory_order_relaxed);
  std::free(p);
}
void operator delete[](void* p) noexcept { ::operator delete(p); }
void operator delete(void* p, std::size_t) noexcept { ::operator delete(p); }
void operator delete[](void* p, std::size_t) noexcept { ::operator delete(p); }

namespace {

using namespace bench;
using namespace bench::scale;

// A snapshot of the allocation counts, taken in place (no allocation, no stack).
struct alloc_snapshot {
  std::array<std::int32_t, alloc_count::max_size + 1> live{}, news{};
  void take() noexcept {
    for (std::size_t i = 0; i <= alloc_count::max_size; ++i) {
      live[i] = static_cast<std::int32_t>(alloc_count::live_by_usable[i].load(std::memory_order_relaxed));
      news[i] = static_cast<std::int32_t>(alloc_count::news_by_request[i].load(std::memory_order_relaxed));
    }
  }
};
// The server's two snapshots (set up, N answered): static, and both written before
// the set-up memory sample, so their 64 KiB are part of the fixed cost.
alloc_snapshot allocs_ready, allocs_loaded;

// "1.00 x 944 B" per connection for the malloc chunk sizes of which at least one in
// ten connections holds one more at `b` than at `a` (chunk = usable + 8 bytes of
// glibc header, x86-64), then the requested sizes of the allocations made in between
// ("new: 1.00 x 936 B"); and the live chunk bytes per connection over all sizes.
std::string alloc_growth(const alloc_snapshot& a, const alloc_snapshot& b, std::size_t n, double& chunk_per_conn) {
  auto list = [&](const auto& before, const auto& after, std::size_t extra, double* sum) {
    std::string out;
    for (std::size_t sz = 0; sz <= alloc_count::max_size; ++sz) {
      const long d = after[sz] - before[sz];
      if (d == 0) continue;
      const double per = static_cast<double>(d) / static_cast<double>(n);
      if (sum) *sum += per * static_cast<double>(sz + extra);
      if (per < 0.1 && per > -0.1) continue;
      char item[64];
      std::snprintf(item, sizeof item, "%s%.2f x %zu%s", out.empty() ? "" : " + ", per, sz + extra,
                    sz == alloc_count::max_size ? "+" : "");
      out += item;
    }
    return out.empty() ? std::string("none") : out;
  };
  chunk_per_conn = 0;
  return "chunks " + list(a.live, b.live, 8, &chunk_per_conn) + "; new " + list(a.news, b.news, 0, nullptr);
}

constexpr std::size_t request_size = 16;
constexpr std::size_t reply_size = 16;
constexpr char reply_bytes[reply_size + 1] = "answer, client!";

// What a server implementation gets (in the server process).
class idle_server {
 public:
  idle_server(int ctl, std::size_t n, unique_fd listener) : listener(std::move(listener)), n(n), ctl_(ctl) {}

  unique_fd listener;  // blocking, listening; the implementation may take it
  const std::size_t n;  // connections that will come; each sends one request

  // Call once set up, before waiting for connections.
  void ready() {
    allocs_loaded.take();  // touches its pages now
    allocs_ready.take();
    base_ = self_memory();
    allocs_ready.take();  // after self_memory(), whose streams allocate
    ctl_msg m;
    m.kind = ctl_msg::ready;
    put(m, base_);
    ctl_send(ctl_, m);
  }
  // Call when n requests have been answered and the replies are with the kernel:
  // samples memory, reports, and blocks until the parent ends the run.
  void all_answered() {
    ctl_msg m;
    m.kind = ctl_msg::report;
    allocs_loaded.take();  // before self_memory(), as above
    put(m, self_memory());
    {
      double chunk = 0;
      const std::string detail = alloc_growth(allocs_ready, allocs_loaded, n, chunk);
      m.v[4] = std::llround(chunk * 100);
      std::snprintf(m.text, sizeof m.text, "%s", detail.c_str());
    }
    ctl_send(ctl_, m);
    ctl_recv(ctl_, ctl_msg::exit_now, 600'000);
    teardown_start = now_ns();
  }
  std::int64_t teardown_start = 0;  // when all_answered() returned

  static void put(ctl_msg& m, const mem_sample& s) {
    m.v[0] = s.rss;
    m.v[1] = s.anon;
    m.v[2] = s.pss;
    m.v[3] = s.heap;
  }
  static mem_sample get(const ctl_msg& m) { return {m.v[0], m.v[1], m.v[2], m.v[3]}; }

 private:
  int ctl_;
  mem_sample base_;
};

// Ring sizes for the io_uring servers (raw and ringsock alike): a burst of
// accepts and requests needs room, the CQ is 4x the SQ.
constexpr unsigned ring_entries = 4096;

// ---------------------------------------------------------------------------
// raw_uring_floor: multishot ACCEPT into direct descriptors (a sparse registered
// file table, no fd per connection), one multishot RECV per connection drawing
// from one shared provided-buffer ring (1024 x 4 KiB, touched at setup), replies
// as fixed-file SENDs with CQE_SKIP_SUCCESS.  User space keeps nothing per
// connection: the file index is the connection.
void serve_raw_uring_floor(idle_server& s) {
  enum : std::uint64_t { op_accept = 1, op_recv = 2, op_send = 3, op_close = 4 };
  auto ud = [](std::uint64_t idx, std::uint64_t op) { return idx << 8 | op; };
  uring r(ring_entries, 4 * ring_entries);
  const unsigned table = static_cast<unsigned>(s.n + 16);
  if (int rc = io_uring_register_files_sparse(r.get(), table); rc < 0) throw_res(rc, "io_uring_register_files_sparse");
  buffer_ring pool(r.get(), 1024, 4096);
  auto arm_accept = [&] {
    io_uring_sqe* e = r.sqe();
    io_uring_prep_multishot_accept_direct(e, s.listener.get(), nullptr, nullptr, 0);
    e->user_data = ud(0, op_accept);
  };
  auto arm_recv = [&](unsigned idx) {
    io_uring_sqe* e = r.sqe();
    io_uring_prep_recv_multishot(e, static_cast<int>(idx), nullptr, 0, 0);
    e->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
    e->buf_group = 0;
    e->user_data = ud(idx, op_recv);
  };
  arm_accept();
  r.submit();
  s.ready();
  std::size_t answered = 0;
  while (answered < s.n) {
    r.turn([&](std::uint64_t u, int res, unsigned flags) {
      const auto idx = static_cast<unsigned>(u >> 8);
      switch (u & 0xff) {
        case op_accept:
          if (res < 0) throw_res(res, "accept");
          arm_recv(static_cast<unsigned>(res));
          if ((flags & IORING_CQE_F_MORE) == 0) arm_accept();
          break;
        case op_recv: {
          if (res > 0) {
            pool.recycle(flags >> IORING_CQE_BUFFER_SHIFT);
            if (static_cast<std::size_t>(res) != request_size) throw std::runtime_error("recv: partial request");
            io_uring_sqe* e = r.sqe();
            io_uring_prep_send(e, static_cast<int>(idx), reply_bytes, reply_size, MSG_NOSIGNAL);
            e->flags |= IOSQE_FIXED_FILE | IOSQE_CQE_SKIP_SUCCESS;
            e->user_data = ud(idx, op_send);
            ++answered;
          }
          if ((flags & IORING_CQE_F_MORE) != 0) break;
          if (res == -ENOBUFS || res > 0) {  // the kernel ended it: re-arm
            arm_recv(idx);
          } else if (res == 0) {  // the client went away
            io_uring_sqe* e = r.sqe();
            io_uring_prep_close_direct(e, idx);
            e->flags |= IOSQE_CQE_SKIP_SUCCESS;
            e->user_data = ud(idx, op_close);
          } else {
            throw_res(res, "recv");
          }
          break;
        }
        case op_send:
          if (res < 0) throw_res(res, "send");
          if (static_cast<std::size_t>(res) != reply_size) throw std::runtime_error("send: short");
          break;
        default:
          throw_res(res, "close");
      }
    });
  }
  r.submit();  // the last replies
  s.all_answered();
}  // the ring goes first (its requests and direct descriptors), then the pool's memory

// ---------------------------------------------------------------------------
// epoll: non-blocking sockets, level-triggered epoll, one shared 64 KiB read
// buffer, a 4-byte state per connection in a table indexed by descriptor.
void serve_epoll(idle_server& s) {
  struct conn {
    std::uint32_t requests = 0;
  };
  const int lfd = s.listener.get();
  unique_fd ep = epoll_with_listener(lfd);
  std::vector<conn> conns;       // indexed by descriptor
  std::vector<int> open_fds;     // to close them at the end (not per-connection state a server needs)
  open_fds.reserve(s.n);
  static char buf[65536];
  std::memset(buf, 0, sizeof buf);  // fixed cost, touched now
  s.ready();
  std::size_t answered = 0;
  std::array<epoll_event, 256> evs;
  while (answered < s.n) {
    const int ne = epoll_wait_some(ep.get(), evs.data(), static_cast<int>(evs.size()), -1);
    for (int k = 0; k < ne; ++k) {
      const int fd = evs[static_cast<std::size_t>(k)].data.fd;
      if (fd == lfd) {
        for (int c; (c = accept_nonblocking(lfd)) >= 0;) {
          open_fds.push_back(c);
          if (static_cast<std::size_t>(c) >= conns.size()) conns.resize(static_cast<std::size_t>(c) + 1);
          conns[static_cast<std::size_t>(c)] = {};
          epoll_add_in(ep.get(), c);
        }
        continue;
      }
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n < 0) throw_errno("recv");
      if (n == 0) {  // the client went away: close() also removes it from the epoll set
        ::close(fd);
        std::erase(open_fds, fd);
        continue;
      }
      if (static_cast<std::size_t>(n) != request_size) throw std::runtime_error("recv: partial request");
      ssize_t w = ::send(fd, reply_bytes, reply_size, MSG_NOSIGNAL);
      if (w < 0) throw_errno("send");
      if (static_cast<std::size_t>(w) != reply_size) throw std::runtime_error("send: short");  // never: empty buffer
      ++conns[static_cast<std::size_t>(fd)].requests;
      ++answered;
    }
  }
  s.all_answered();
  for (int fd : open_fds) ::close(fd);
}

// ---------------------------------------------------------------------------
// ringsock_plain: the natural handler with today's public API: an acceptor loop
// spawning one coroutine per connection that awaits read_some into a 4 KiB buffer
// in its frame and answers with write_all.
namespace rs = ringsock;

struct plain_state {
  idle_server& s;
  rs::io_context& ctx;
  std::size_t answered = 0;
};

rs::task<void> plain_handler(plain_state& st, rs::stream_socket sock) {
  std::array<char, 4096> buf;
  for (;;) {
    auto n = co_await sock.read_some(buf);
    if (n && *n == 0) co_return;  // end of stream: close
    n.value();                    // an error: throws, and the run fails
    if (*n != request_size) throw std::runtime_error("read_some: partial request");
    (co_await sock.write_all(std::span<const char>(reply_bytes, reply_size))).value();
    if (++st.answered == st.s.n) {
      st.s.all_answered();
      st.ctx.stop();
    }
  }
}

rs::task<void> plain_accept_loop(plain_state& st, rs::acceptor acc) {
  for (;;) {
    rs::stream_socket sock = (co_await acc.accept()).value();
    st.ctx.spawn(plain_handler(st, std::move(sock)));
  }
}

void serve_ringsock_plain(idle_server& s) {
  rs::io_context::options opts;
  opts.entries = ring_entries;
  rs::io_context ctx(opts);
  plain_state st{s, ctx};
  ctx.spawn(plain_accept_loop(st, rs::acceptor::adopt(ctx, rs::unique_fd(s.listener.release()))));
  s.ready();
  ctx.run();
  if (st.answered < s.n) throw std::runtime_error("ringsock: the loop ended early");
}  // ~io_context cancels the reads and destroys the coroutines (closing the sockets)

// ---------------------------------------------------------------------------
// ringsock_lent: the same shape, but each connection's coroutine awaits
// read_some(ring) on one shared buffer_ring (1024 x 4 KiB = 4 MiB, as the raw
// floor's pool): an idle read holds no buffer, the kernel picks one when data comes.
//
// Shutting down: a buffer_ring must outlive every read that names it, and its
// destructor needs the context alive, while ~io_context destroys spawned tasks only
// after everything declared later is gone.  So the server ends its handlers first,
// with the public API: every read carries a stop token; request_stop() cancels them
// all, the handlers return, run() runs out of work, then the ring and the context go.
// The teardown time covers all of that.
struct lent_state {
  idle_server& s;
  rs::buffer_ring& ring;
  std::stop_source stop;
  std::size_t answered = 0;
};

rs::task<void> lent_handler(lent_state& st, rs::stream_socket sock) {
  for (;;) {
    {
      auto got = co_await sock.read_some(st.ring, st.stop.get_token());
      if (!got && got.error() == std::errc::operation_canceled && st.stop.stop_requested()) co_return;
      if (got.value().empty()) co_return;  // end of stream (an error throws: the run fails)
      if (got->size() != request_size) throw std::runtime_error("read_some(ring): partial request");
    }  // the buffer goes back to the ring here
    (co_await sock.write_all(std::span<const char>(reply_bytes, reply_size))).value();
    if (++st.answered == st.s.n) {
      st.s.all_answered();
      st.stop.request_stop();  // cancels every read (and the accept) at once
    }
  }
}

rs::task<void> lent_accept_loop(lent_state& st, rs::io_context& ctx, rs::acceptor acc) {
  for (;;) {
    auto sock = co_await acc.accept(st.stop.get_token());
    if (!sock && sock.error() == std::errc::operation_canceled && st.stop.stop_requested()) co_return;
    ctx.spawn(lent_handler(st, std::move(sock.value())));
  }
}

// Passes every buffer of `ring` through the kernel once (16 bytes into each, over a
// socketpair), so its pages are touched at set-up like the raw floor's pool.
rs::task<void> touch_ring(rs::io_context& ctx, rs::buffer_ring& ring) {
  auto pair = rs::stream_socket::pair(ctx).value();
  for (unsigned i = 0; i < ring.count(); ++i) {
    (co_await pair.second.write_all(std::span<const char>(reply_bytes, reply_size))).value();
    auto got = (co_await pair.first.read_some(ring)).value();
    if (got.size() != reply_size) throw std::runtime_error("touch_ring: short read");
    std::memset(got.data(), 0, ring.buffer_size());  // the whole buffer, not just 16 bytes
  }
}

void serve_ringsock_lent(idle_server& s) {
  rs::io_context::options opts;
  opts.entries = ring_entries;
  rs::io_context ctx(opts);
  rs::buffer_ring ring(ctx, 1024, 4096);
  ctx.sync_wait(touch_ring(ctx, ring));
  lent_state st{s, ring, {}};
  ctx.spawn(lent_accept_loop(st, ctx, rs::acceptor::adopt(ctx, rs::unique_fd(s.listener.release()))));
  s.ready();
  // Runs until every handler has returned (after request_stop()).  If one throws, the
  // others are stopped too and run on until they are gone: the ring may not go first.
  std::exception_ptr error;
  for (;;) {
    try {
      ctx.run();
      break;
    } catch (...) {
      if (!error) error = std::current_exception();
      st.stop.request_stop();
    }
  }
  if (error) std::rethrow_exception(error);
  if (st.answered < s.n) throw std::runtime_error("ringsock: the loop ended early");
  if (ring.lent() != 0) throw std::runtime_error("ringsock: buffers still lent at the end");
}

using impl = impl_row<idle_server>;

const impl impls[] = {
    {"raw_uring_floor", "multishot accept (direct descriptors) + multishot recv, one shared 4 MiB buffer ring",
     serve_raw_uring_floor},
    {"epoll", "non-blocking fds, level-triggered epoll, one shared 64 KiB buffer, 4 B per connection", serve_epoll},
    {"ringsock_plain", "acceptor loop + one coroutine per connection, read_some into a 4 KiB buffer in its frame",
     serve_ringsock_plain},
    {"ringsock_lent", "acceptor loop + one coroutine per connection, read_some(ring) on one shared 4 MiB buffer_ring",
     serve_ringsock_lent},
};

// ---------------------------------------------------------------------------
// The clients: N blocking sockets; connect all, send a request on each, read every
// reply, report, then stay connected until the parent ends the run.
void run_clients(int ctl, const unix_addr& addr, std::size_t n) {
  raise_nofile();
  ctl_recv(ctl, ctl_msg::go, 600'000);
  std::vector<unique_fd> fds;
  fds.reserve(n);
  for (std::size_t i = 0; i < n; ++i) fds.push_back(connect_to(addr));
  const char request[request_size + 1] = "request, server";
  for (const auto& fd : fds) send_all(fd.get(), request, request_size);
  for (const auto& fd : fds) {
    char reply[reply_size];
    if (!recv_exact(fd.get(), reply, reply_size)) throw std::runtime_error("clients: the server closed a connection");
  }
  ctl_msg m;
  m.kind = ctl_msg::done;
  m.t_ns = now_ns();
  ctl_send(ctl, m);
  ctl_recv(ctl, ctl_msg::exit_now, 600'000);
}

constexpr int teardown_limit_s = 30;

struct result {
  std::string impl;
  std::size_t n = 0;
  mem_sample start, ready, loaded;  // server process: at start, set up, N answered
  slab_sample slab0, slab1;         // machine-wide, around the connections
  double seconds = 0;               // first connect to last reply
  double teardown_s = 0;            // server: from the end of the run until all is closed
  double alloc_chunk = 0;    // server: malloc chunk bytes live per connection from operator new
  std::string alloc_detail;  // ... by size
  std::string error;
};

result run_cell(const impl& im, std::size_t n) {
  result res;
  res.impl = im.name;
  res.n = n;
  temp_dir dir;
  const unix_addr addr(dir.path("listen.sock"));
  try {
    // The clients' process exists before the server samples anything, so the pages
    // the two share (both are forks of this one) are shared the same way in every
    // sample (PSS).
    child cli("clients", [&](int ctl) { run_clients(ctl, addr, n); });
    child srv("server", [&](int ctl) {
      raise_nofile();
      ctl_msg start;
      start.kind = ctl_msg::go;
      idle_server::put(start, self_memory());
      ctl_send(ctl, start);
      idle_server s(ctl, n, make_scale_listener(addr));
      const std::size_t fds0 = count_open_fds();
      im.serve(s);
      s.listener.reset();
      report_server_done(ctl, fds0 - 1, now_ns() - s.teardown_start);
    });
    res.start = idle_server::get(ctl_recv(srv.ctl(), ctl_msg::go, 120'000, cli.ctl()));
    res.ready = idle_server::get(ctl_recv(srv.ctl(), ctl_msg::ready, 120'000, cli.ctl()));
    res.slab0 = slab_memory();
    const std::int64_t t0 = now_ns();
    ctl_msg go;
    go.kind = ctl_msg::go;
    ctl_send(cli.ctl(), go);
    const ctl_msg loaded = ctl_recv(srv.ctl(), ctl_msg::report, 120'000, cli.ctl());
    res.loaded = idle_server::get(loaded);
    res.alloc_chunk = static_cast<double>(loaded.v[4]) / 100;
    res.alloc_detail.assign(loaded.text, strnlen(loaded.text, sizeof loaded.text));
    const ctl_msg cdone = ctl_recv(cli.ctl(), ctl_msg::done, 120'000, srv.ctl());
    res.seconds = static_cast<double>(cdone.t_ns - t0) * 1e-9;
    res.slab1 = slab_memory();
    ctl_msg bye;
    bye.kind = ctl_msg::exit_now;
    // The server shuts down while its clients are still connected; tearing down N
    // connections (closing them, cancelling N receives) is timed.
    // A teardown slower than the limit is a result, not a failure: the server is
    // killed and the row says so.
    ctl_send(srv.ctl(), bye);
    if (wait_readable(srv.ctl(), teardown_limit_s * 1000)) {
      res.teardown_s = static_cast<double>(wait_server_done(srv)) * 1e-9;
    } else {
      res.teardown_s = NAN;
      srv = child();  // killed and reaped
    }
    ctl_send(cli.ctl(), bye);
    cli.wait();
  } catch (const std::exception& e) {
    res.error = e.what();
  }
  return res;
}

double per_conn(std::int64_t after, std::int64_t before, std::size_t n) {
  return static_cast<double>(after - before) / static_cast<double>(n);
}

const char usage[] =
    "usage: idle_conns [--quick] [--json] [--impl NAME[,NAME]] [--n N[,N|max]...]\n"
    "  --impl   raw_uring_floor, epoll, ringsock_plain, ringsock_lent (default: all)\n"
    "  --n      connection counts (default 1000,10000,max; quick 1000,2500); max = what\n"
    "           RLIMIT_NOFILE allows (hard limit, less a few descriptors)\n"
    "  --slab-detail  also list the slab caches that grew most per connection\n"
    "  --quick  the CI run\n"
    "  --json   one JSON object per result on stdout; the table goes to stderr\n";

}  // namespace

int main(int argc, char** argv) {
  std::string counts_arg;
  bool slab_detail = false;
  const common_options o = parse_common(argc, argv, usage, [&](const std::string& f, const auto& value) {
    if (f == "--slab-detail") return slab_detail = true;
    if (f != "--n") return false;
    counts_arg = value();
    return true;
  });
  const std::size_t limit = raise_nofile();
  const std::size_t max_n = limit > 64 ? limit - 32 : 1;
  if (counts_arg.empty()) counts_arg = o.quick ? "1000,2500" : "1000,10000,max";
  const std::vector<std::size_t> ns = parse_counts(counts_arg, max_n);
  arm_watchdog(o.quick ? 120 : 900, "idle_conns");
  const std::size_t fds_at_start = count_open_fds();

  output out(o, "idle_conns", "server memory per idle connection (one request answered on each, then idle)");
  for (const auto& im : impls)
    if (o.wants(im.name)) std::fprintf(out.table(), "  %-16s %s\n", im.name, im.description);
  std::fprintf(out.table(),
               "  per connection = (server sample after N answered - sample before the first connect) / N;\n"
               "  fixed = set-up cost (ring, pools, listener); kernel = growth of the slab objects in use\n"
               "  (/proc/slabinfo, machine-wide) / N, both ends of each connection, approximate (other\n"
               "  processes allocate too); RLIMIT_NOFILE %zu\n\n",
               limit);
  std::fprintf(out.table(),
               "  ringsock sizes: stream_socket %zu B, lent_receive_op (read_some(ring)) %zu B, transfer_op\n"
               "  (read_some(buf), write_all) %zu B, acceptor %zu B; \"operator new per conn\" = malloc chunks\n"
               "  (request + 8 B header, rounded to 16) of global operator new still live per connection\n"
               "  (coroutine frames and anything else), by chunk size, then the requested sizes of the news\n\n",
               sizeof(rs::stream_socket), sizeof(rs::detail::lent_receive_op), sizeof(rs::detail::transfer_op),
               sizeof(rs::acceptor));
  std::fprintf(out.table(), "  %-16s %6s %10s %10s %10s %10s %10s %11s %8s %10s\n", "impl", "N", "rss B/conn",
               "anon B/c", "pss B/c", "heap B/c", "fixed KiB", "kernel B/c", "conn s", "teardown s");
  bool failed = false;
  for (std::size_t n : ns) {
    for (const auto& im : impls) {
      if (!o.wants(im.name)) continue;
      const result r = run_cell(im, n);
      if (!r.error.empty()) {
        failed = true;
        std::fprintf(out.table(), "  %-16s %6zu  ERROR: %s\n", r.impl.c_str(), n, r.error.c_str());
        out.json("\"workload\": \"idle_conns\", \"impl\": " + json_string(r.impl) + ", \"n\": " + std::to_string(n) +
                 ", \"error\": " + json_string(r.error));
        continue;
      }
      const double rss = per_conn(r.loaded.rss, r.ready.rss, n), anon = per_conn(r.loaded.anon, r.ready.anon, n),
                   pss = per_conn(r.loaded.pss, r.ready.pss, n), heap = per_conn(r.loaded.heap, r.ready.heap, n),
                   kern = r.slab0.total < 0 ? NAN : per_conn(r.slab1.total, r.slab0.total, n);
      const double fixed_kib = static_cast<double>(r.ready.rss - r.start.rss) / 1024.0;
      char teardown[32];
      if (std::isnan(r.teardown_s))
        std::snprintf(teardown, sizeof teardown, ">%d killed", teardown_limit_s);
      else
        std::snprintf(teardown, sizeof teardown, "%.3f", r.teardown_s);
      std::fprintf(out.table(), "  %-16s %6zu %10.0f %10.0f %10.0f %10.0f %10.0f %11.0f %8.2f %10s\n", r.impl.c_str(), n,
                   rss, anon, pss, heap, fixed_kib, kern, r.seconds, teardown);
      if (r.alloc_chunk >= 1)
        std::fprintf(out.table(), "      operator new per conn: %.0f B in malloc chunks: %s\n", r.alloc_chunk,
                     r.alloc_detail.c_str());
      if (slab_detail) std::fprintf(out.table(), "      slab growth B/conn: %s\n", slab_growth(r.slab0, r.slab1, n, 8).c_str());
      std::fflush(out.table());
      out.json("\"workload\": \"idle_conns\", \"impl\": " + json_string(r.impl) + ", \"n\": " + std::to_string(n) +
               ", \"unit\": \"bytes/connection\", \"rss_per_conn\": " + json_number(rss) +
               ", \"anon_per_conn\": " + json_number(anon) + ", \"pss_per_conn\": " + json_number(pss) +
               ", \"heap_per_conn\": " + json_number(heap) + ", \"fixed_rss_bytes\": " +
               std::to_string(r.ready.rss - r.start.rss) + ", \"kernel_slab_per_conn_approx\": " + json_number(kern) +
               ", \"new_chunk_bytes_per_conn\": " + json_number(r.alloc_chunk) +
               ", \"new_by_size\": " + json_string(r.alloc_detail) +
               ", \"seconds\": " + json_number(r.seconds) + ", \"teardown_seconds\": " + json_number(r.teardown_s) +
               ", \"teardown_killed_after_s\": " + (std::isnan(r.teardown_s) ? std::to_string(teardown_limit_s) : "null") +
               ", \"rlimit_nofile\": " + std::to_string(limit) +
               ", \"error\": null");
    }
  }
  if (count_open_fds() != fds_at_start) {
    std::fprintf(out.table(), "descriptor leak in the parent\n");
    failed = true;
  }
  alarm(0);
  return failed ? 1 : 0;
}
