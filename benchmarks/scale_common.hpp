// Shared by the scale programs of issue 11 (idle_conns, accept_burst, server_scale):
// each runs a server and a client in separate child processes, so that the server's
// memory and descriptors are its own and the clients' descriptors do not count
// against the server's RLIMIT_NOFILE.  This file has the process plumbing (fork, a
// control socket, timeouts, cleanup), what is measured (memory of a process, slab
// memory of the machine, CPU time of a process), a raw io_uring ring set up the way
// FACTS.md found fastest, command-line options, and the table/JSON output.
#pragma once

#include <liburing.h>
#include <sys/epoll.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sockutil.hpp"

namespace bench::scale {

std::int64_t now_ns() noexcept;  // CLOCK_MONOTONIC: comparable across processes

// ---------------------------------------------------------------------------
// Control messages between the orchestrating parent and its children, over a
// SOCK_SEQPACKET socketpair (one message per send).  The meaning of the fields is
// up to each program; `text` carries an error.
struct ctl_msg {
  enum kind_t : std::uint32_t { ready = 1, report, done, go, exit_now, error };
  kind_t kind = ready;
  std::int64_t t_ns = 0;
  std::int64_t v[8] = {};
  char text[200] = {};
};

void ctl_send(int fd, const ctl_msg& m);
// Waits up to timeout_ms for a message; throws on timeout, EOF, an error message
// from the peer (its text), or a message of another kind than `expect`.  `watch`
// (optional) is another child's control socket: anything arriving there meanwhile
// (its error, or EOF because it died) is thrown too.
ctl_msg ctl_recv(int fd, ctl_msg::kind_t expect, int timeout_ms = 120'000, int watch = -1);

// True when fd becomes readable (or hangs up) within timeout_ms.
bool wait_readable(int fd, int timeout_ms);

// A child process running fn(control fd).  An exception in fn is sent to the parent
// as an `error` message and the child exits with status 1.  The destructor kills a
// child that is still running and reaps it.
class child {
 public:
  child() = default;
  child(const char* what, std::function<void(int ctl)> fn);
  child(child&& o) noexcept;
  // Kills and reaps a child still running, then takes o's.
  child& operator=(child&& o) noexcept;
  ~child();

  pid_t pid() const noexcept { return pid_; }
  int ctl() const noexcept { return ctl_.get(); }
  // Waits up to timeout_ms for the child to exit; throws if it failed, was
  // killed, or is still running (then it is killed).
  void wait(int timeout_ms = 60'000);

 private:
  void kill_and_reap() noexcept;
  std::string what_;
  pid_t pid_ = -1;
  unique_fd ctl_;
};

// ---------------------------------------------------------------------------
// Memory of the calling process.
struct mem_sample {
  std::int64_t rss = 0;   // resident bytes (/proc/self/statm)
  std::int64_t anon = 0;  // anonymous resident bytes (/proc/self/smaps_rollup)
  std::int64_t pss = 0;   // proportional set size (smaps_rollup)
  std::int64_t heap = 0;  // malloc'ed bytes in use (mallinfo2: uordblks + hblkhd)
};
mem_sample self_memory();

// Kernel slab memory of the whole machine: bytes of the objects in use per cache
// (/proc/slabinfo active_objs x objsize; root only) and the total.  Machine-wide, so
// approximate when other processes run.  Empty (total -1) if unreadable.
struct slab_sample {
  std::int64_t total = -1;
  std::vector<std::pair<std::string, std::int64_t>> caches;
};
slab_sample slab_memory();
// The caches that grew most from `a` to `b`, formatted "name +bytes, ..." (at most k).
std::string slab_growth(const slab_sample& a, const slab_sample& b, std::size_t per, std::size_t k);

// CPU time (user + system, ns) used so far by all threads of a process
// (/proc/PID/task/*/schedstat); pid 0 = self.
std::int64_t process_cpu_ns(pid_t pid);

// ---------------------------------------------------------------------------
// A raw io_uring ring for the servers: SINGLE_ISSUER|DEFER_TASKRUN (falls back to a
// plain ring, noted), CQ sized by the caller, registered ring fd.  Create and use it
// on one thread.
class uring {
 public:
  uring(unsigned entries, unsigned cq_entries);
  ~uring();
  uring(const uring&) = delete;
  uring& operator=(const uring&) = delete;

  io_uring* get() noexcept { return &r_; }
  int fd() const noexcept { return r_.ring_fd; }
  bool defer_taskrun() const noexcept { return dt_; }

  // An SQE; when the SQ is full, submits what is queued first.
  io_uring_sqe* sqe();
  // Submits what is queued and waits for at least one CQE (or timeout_ms, -1 =
  // forever); then hands every ready CQE, copied out and the CQ advanced first,
  // to f(user_data, res, flags).  Returns the number handled.
  template <class F>
  unsigned turn(F&& f, int timeout_ms = -1) {
    wait(timeout_ms);
    unsigned total = 0;
    for (;;) {
      io_uring_cqe* cqes[batch];
      unsigned n = io_uring_peek_batch_cqe(&r_, cqes, batch);
      if (n == 0) break;
      struct c {
        std::uint64_t ud;
        std::int32_t res;
        std::uint32_t flags;
      } done[batch];
      for (unsigned i = 0; i < n; ++i) done[i] = {cqes[i]->user_data, cqes[i]->res, cqes[i]->flags};
      io_uring_cq_advance(&r_, n);
      for (unsigned i = 0; i < n; ++i) f(done[i].ud, done[i].res, done[i].flags);
      total += n;
      if (n < batch) break;
    }
    return total;
  }
  // Submits what is queued without waiting.
  void submit();

 private:
  static constexpr unsigned batch = 256;
  void wait(int timeout_ms);
  io_uring r_{};
  bool dt_ = true;
};

// A provided buffer ring (group `bgid`) of `count` buffers of `size` bytes, set up
// the liburing 2.3 way (page-aligned ring memory + io_uring_register_buf_ring).
// The buffers are touched at setup, so they count as a fixed cost, not as the
// cost of the connections that later receive into them.
class buffer_ring {
 public:
  buffer_ring(io_uring* ring, unsigned count, unsigned size, unsigned short bgid = 0);
  ~buffer_ring();
  buffer_ring(const buffer_ring&) = delete;
  buffer_ring& operator=(const buffer_ring&) = delete;
  char* data(unsigned bid) noexcept { return mem_ + static_cast<std::size_t>(bid) * size_; }
  // Gives buffer `bid` back to the kernel.
  void recycle(unsigned bid) noexcept;
  std::size_t bytes() const noexcept { return static_cast<std::size_t>(count_) * size_; }

 private:
  io_uring* ring_;
  unsigned count_, size_;
  unsigned short bgid_;
  io_uring_buf_ring* br_ = nullptr;
  char* mem_ = nullptr;
};

[[noreturn]] void throw_res(int res, const char* what);

// ---------------------------------------------------------------------------
// Options common to the three programs; each adds its own through `extra`
// (return true if the flag was consumed; `value()` fetches its argument).
struct common_options {
  bool quick = false;
  bool json = false;
  std::vector<std::string> impls;  // empty: all
  bool wants(const std::string& impl) const;
};
using extra_flag = std::function<bool(const std::string& flag, const std::function<std::string()>& value)>;
common_options parse_common(int argc, char** argv, const char* usage, const extra_flag& extra);

// Comma-separated list of numbers; "max" stands for `max`.
std::vector<std::size_t> parse_counts(const std::string& s, std::size_t max);

// The header printed on top of every table (machine, compiler, liburing, and that
// the machine may be shared) and the fields every JSON line carries.
void print_header(std::FILE* out, const char* program, const char* what);
std::string json_common(const char* program);

// Output: the table goes to stdout, or to stderr with --json (then stdout carries one
// JSON object per line and result).
class output {
 public:
  output(const common_options& o, const char* program, const char* what);
  std::FILE* table() const noexcept { return table_; }
  // Emits one result: `fields` is the inside of a JSON object (no braces),
  // e.g. "\"impl\": \"epoll\", \"n\": 1000".
  void json(const std::string& fields);

 private:
  const char* program_;
  bool json_;
  std::FILE* table_;
};

// One implementation of a scale program: its row name, a line for the header, and
// the function the server process runs.
template <class Server>
struct impl_row {
  const char* name;
  const char* description;
  void (*serve)(Server&);
};

// The median (NaN for none).
double median(std::vector<double> v);

// The end of a server child: reports to the parent how many descriptors were left
// open beyond `expected` (0 when none leaked) and `extra` in v[1].
void report_server_done(int ctl, std::size_t expected, std::int64_t extra = 0);
// The parent's side: waits for that report, reaps the server, throws on a leak;
// returns `extra`.
std::int64_t wait_server_done(child& srv, int timeout_ms = 60'000);

// epoll helpers for the epoll servers: a set watching `lfd` (made non-blocking) for
// EPOLLIN with data.fd = lfd; adding a descriptor for EPOLLIN (data.fd = fd); one
// accept4 (SOCK_NONBLOCK|SOCK_CLOEXEC) returning -1 when nothing is waiting; a
// wait that returns 0 on EINTR and throws on errors.
unique_fd epoll_with_listener(int lfd);
void epoll_add_in(int ep, int fd);
int accept_nonblocking(int lfd);
int epoll_wait_some(int ep, epoll_event* evs, int max, int timeout_ms);

// The listening socket for a scale server: blocking, SOCK_CLOEXEC, mode 0600, backlog
// as large as net.core.somaxconn allows.
unique_fd make_scale_listener(const unix_addr& addr);
// Connects a new blocking stream socket to addr (waits while the backlog is full).
unique_fd connect_to(const unix_addr& addr);

}  // namespace bench::scale
