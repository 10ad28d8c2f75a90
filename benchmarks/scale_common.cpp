// Process plumbing, measurements, the raw ring and output for the scale programs
// (see scale_common.hpp).
#include "scale_common.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "report.hpp"
#include "uring_setup.hpp"

#ifndef RINGSOCK_BENCH_LIBURING_VERSION
#define RINGSOCK_BENCH_LIBURING_VERSION "unknown"
#endif

namespace bench::scale {

std::int64_t now_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

void throw_res(int res, const char* what) { throw std::system_error(-res, std::generic_category(), what); }

// ---------------------------------------------------------------------------
void ctl_send(int fd, const ctl_msg& m) {
  for (;;) {
    ssize_t r = ::send(fd, &m, sizeof m, MSG_NOSIGNAL);
    if (r == static_cast<ssize_t>(sizeof m)) return;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw_errno("control send");
    throw std::runtime_error("control send: short");
  }
}

ctl_msg ctl_recv(int fd, ctl_msg::kind_t expect, int timeout_ms, int watch) {
  const std::int64_t give_up = now_ns() + std::int64_t{timeout_ms} * 1'000'000;
  for (;;) {
    // The watched socket is polled for hang-up only: a child that fails sends its
    // error and exits, and its normal messages are read later by their own ctl_recv.
    pollfd p[2] = {{fd, POLLIN, 0}, {watch, 0, 0}};
    const auto left = static_cast<int>(std::max<std::int64_t>(0, (give_up - now_ns()) / 1'000'000));
    int r = ::poll(p, watch >= 0 ? 2 : 1, left);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw_errno("control poll");
    if (r == 0) throw std::runtime_error("control: no message within " + std::to_string(timeout_ms / 1000) + " s");
    if (watch >= 0 && p[1].revents != 0 && p[0].revents == 0) {
      ctl_recv(watch, ctl_msg::error, 1000);  // throws its error, or that it went away
      throw std::runtime_error("control: the other process stopped");
    }
    ctl_msg m;
    ssize_t n = ::recv(fd, &m, sizeof m, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("control recv");
    if (n == 0) throw std::runtime_error("control: the other process went away");
    if (n != static_cast<ssize_t>(sizeof m)) throw std::runtime_error("control: short message");
    if (m.kind == ctl_msg::error) {
      m.text[sizeof m.text - 1] = '\0';
      throw std::runtime_error(m.text);
    }
    if (m.kind != expect) throw std::runtime_error("control: unexpected message " + std::to_string(m.kind));
    return m;
  }
}

child::child(const char* what, std::function<void(int ctl)> fn) : what_(what) {
  fd_pair sp = make_socketpair(SOCK_SEQPACKET);
  std::fflush(nullptr);  // no buffered output duplicated into the child
  pid_ = ::fork();
  if (pid_ < 0) throw_errno("fork");
  if (pid_ == 0) {
    // Dies with the parent (e.g. when the parent's watchdog fires).
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) _exit(1);
    sp.a.reset();
    int status = 0;
    try {
      fn(sp.b.get());
    } catch (const std::exception& e) {
      ctl_msg m;
      m.kind = ctl_msg::error;
      std::snprintf(m.text, sizeof m.text, "%s: %s", what, e.what());
      try {
        ctl_send(sp.b.get(), m);
      } catch (...) {
      }
      status = 1;
    }
    std::fflush(nullptr);
    _exit(status);
  }
  ctl_ = std::move(sp.a);
}

child::child(child&& o) noexcept : what_(std::move(o.what_)), pid_(std::exchange(o.pid_, -1)), ctl_(std::move(o.ctl_)) {}

child& child::operator=(child&& o) noexcept {
  if (this != &o) {
    kill_and_reap();
    what_ = std::move(o.what_);
    pid_ = std::exchange(o.pid_, -1);
    ctl_ = std::move(o.ctl_);
  }
  return *this;
}

child::~child() { kill_and_reap(); }

void child::kill_and_reap() noexcept {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int st = 0;
  while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

bool wait_readable(int fd, int timeout_ms) {
  const std::int64_t give_up = now_ns() + std::int64_t{timeout_ms} * 1'000'000;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    const auto left = static_cast<int>(std::max<std::int64_t>(0, (give_up - now_ns()) / 1'000'000));
    int r = ::poll(&p, 1, left);
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) throw_errno("poll");
  }
}

void child::wait(int timeout_ms) {
  if (pid_ <= 0) return;
  const std::int64_t give_up = now_ns() + std::int64_t{timeout_ms} * 1'000'000;
  int st = 0;
  for (;;) {
    pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) break;
    if (r < 0 && errno != EINTR) throw_errno("waitpid");
    if (now_ns() > give_up) throw std::runtime_error(what_ + ": did not exit in time (killed)");
    ::usleep(1000);
  }
  pid_ = -1;
  if (WIFSIGNALED(st)) throw std::runtime_error(what_ + ": killed by signal " + std::to_string(WTERMSIG(st)));
  if (WEXITSTATUS(st) != 0) throw std::runtime_error(what_ + ": exit status " + std::to_string(WEXITSTATUS(st)));
}

// ---------------------------------------------------------------------------
mem_sample self_memory() {
  mem_sample m;
  const long page = sysconf(_SC_PAGESIZE);
  {
    std::ifstream in("/proc/self/statm");
    long size = 0, resident = 0;
    if (!(in >> size >> resident)) throw std::runtime_error("cannot read /proc/self/statm");
    m.rss = static_cast<std::int64_t>(resident) * page;
  }
  std::ifstream in("/proc/self/smaps_rollup");
  std::string line;
  while (std::getline(in, line)) {
    long kb = 0;
    if (std::sscanf(line.c_str(), "Pss: %ld kB", &kb) == 1) m.pss = std::int64_t{kb} * 1024;
    if (std::sscanf(line.c_str(), "Anonymous: %ld kB", &kb) == 1) m.anon = std::int64_t{kb} * 1024;
  }
  struct mallinfo2 mi = mallinfo2();
  m.heap = static_cast<std::int64_t>(mi.uordblks + mi.hblkhd);
  return m;
}

slab_sample slab_memory() {
  slab_sample s;
  std::ifstream in("/proc/slabinfo");
  std::string line;
  if (!std::getline(in, line)) return s;  // not root
  s.total = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    char name[64];
    long long active = 0, num = 0, objsize = 0;
    if (std::sscanf(line.c_str(), "%63s %lld %lld %lld", name, &active, &num, &objsize) != 4) continue;
    s.caches.emplace_back(name, active * objsize);
    s.total += active * objsize;
  }
  return s;
}

std::string slab_growth(const slab_sample& a, const slab_sample& b, std::size_t per, std::size_t k) {
  std::vector<std::pair<std::int64_t, std::string>> grew;
  for (const auto& [name, bytes] : b.caches) {
    std::int64_t before = 0;
    for (const auto& [n2, b2] : a.caches)
      if (n2 == name) before = b2;
    if (bytes > before) grew.emplace_back(bytes - before, name);
  }
  std::sort(grew.rbegin(), grew.rend());
  std::string out;
  for (std::size_t i = 0; i < grew.size() && i < k; ++i) {
    if (!out.empty()) out += ", ";
    out += grew[i].second + " +" + std::to_string(grew[i].first / static_cast<std::int64_t>(std::max<std::size_t>(per, 1)));
  }
  return out;
}

std::int64_t process_cpu_ns(pid_t pid) {
  const std::string dir = pid == 0 ? std::string("/proc/self/task") : "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) throw_errno(("opendir " + dir).c_str());
  std::int64_t total = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream in(dir + "/" + e->d_name + "/schedstat");
    long long run = 0;
    if (in >> run) total += run;  // a thread may have exited meanwhile
  }
  ::closedir(d);
  return total;
}

// ---------------------------------------------------------------------------
uring::uring(unsigned entries, unsigned cq_entries) : dt_(init_uring(r_, entries, cq_entries, true)) {}

uring::~uring() { io_uring_queue_exit(&r_); }

io_uring_sqe* uring::sqe() {
  io_uring_sqe* e = io_uring_get_sqe(&r_);
  if (e != nullptr) return e;
  submit();
  e = io_uring_get_sqe(&r_);
  if (e == nullptr) throw std::runtime_error("io_uring: no SQE after submit");
  return e;
}

void uring::submit() {
  for (;;) {
    int rc = io_uring_submit(&r_);
    if (rc >= 0 || rc == -EBUSY) return;  // EBUSY: the CQ backlog must be reaped first
    if (rc != -EINTR) throw_res(rc, "io_uring_submit");
  }
}

void uring::wait(int timeout_ms) {
  if (io_uring_sq_ready(&r_) == 0 && io_uring_cq_ready(&r_) != 0) return;
  for (;;) {
    int rc;
    if (timeout_ms < 0) {
      rc = io_uring_submit_and_wait(&r_, 1);
    } else {
      __kernel_timespec ts{};
      ts.tv_sec = timeout_ms / 1000;
      ts.tv_nsec = (timeout_ms % 1000) * 1'000'000LL;
      io_uring_cqe* cqe = nullptr;
      rc = io_uring_submit_and_wait_timeout(&r_, &cqe, 1, &ts, nullptr);
      if (rc == -ETIME) return;
    }
    if (rc >= 0 || rc == -EBUSY || rc == -EAGAIN) return;
    if (rc != -EINTR) throw_res(rc, "io_uring_submit_and_wait");
  }
}

buffer_ring::buffer_ring(io_uring* ring, unsigned count, unsigned size, unsigned short bgid)
    : ring_(ring), count_(count), size_(size), bgid_(bgid) {
  void* mem = nullptr;
  if (posix_memalign(&mem, 4096, count * sizeof(io_uring_buf)) != 0) throw std::bad_alloc();
  br_ = static_cast<io_uring_buf_ring*>(mem);
  std::memset(br_, 0, count * sizeof(io_uring_buf));
  if (posix_memalign(&mem, 4096, bytes()) != 0) {
    std::free(br_);
    throw std::bad_alloc();
  }
  mem_ = static_cast<char*>(mem);
  std::memset(mem_, 0, bytes());  // fault the pool in now: it is a fixed cost
  io_uring_buf_ring_init(br_);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<std::uint64_t>(br_);
  reg.ring_entries = count;
  reg.bgid = bgid;
  if (int rc = io_uring_register_buf_ring(ring_, &reg, 0); rc < 0) {
    std::free(mem_);
    std::free(br_);
    throw_res(rc, "io_uring_register_buf_ring");
  }
  for (unsigned b = 0; b < count; ++b)
    io_uring_buf_ring_add(br_, data(b), size, static_cast<unsigned short>(b), io_uring_buf_ring_mask(count),
                          static_cast<int>(b));
  io_uring_buf_ring_advance(br_, static_cast<int>(count));
}

buffer_ring::~buffer_ring() {
  io_uring_unregister_buf_ring(ring_, bgid_);
  std::free(mem_);
  std::free(br_);
}

void buffer_ring::recycle(unsigned bid) noexcept {
  io_uring_buf_ring_add(br_, data(bid), size_, static_cast<unsigned short>(bid), io_uring_buf_ring_mask(count_), 0);
  io_uring_buf_ring_advance(br_, 1);
}

// ---------------------------------------------------------------------------
bool common_options::wants(const std::string& impl) const {
  return impls.empty() || std::find(impls.begin(), impls.end(), impl) != impls.end();
}

common_options parse_common(int argc, char** argv, const char* usage, const extra_flag& extra) {
  common_options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value for %s\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--quick") {
      o.quick = true;
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--impl") {
      std::stringstream ss(value());
      for (std::string item; std::getline(ss, item, ',');)
        if (!item.empty()) o.impls.push_back(item);
    } else if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    } else if (!extra || !extra(a, value)) {
      std::fprintf(stderr, "unknown argument: %s\n%s", a.c_str(), usage);
      std::exit(2);
    }
  }
  return o;
}

std::vector<std::size_t> parse_counts(const std::string& s, std::size_t max) {
  std::vector<std::size_t> v;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) continue;
    std::size_t n = item == "max" ? max : static_cast<std::size_t>(std::strtoull(item.c_str(), nullptr, 10));
    if (n == 0) {
      std::fprintf(stderr, "bad count: %s\n", item.c_str());
      std::exit(2);
    }
    v.push_back(std::min(n, max));
  }
  return v;
}

void print_header(std::FILE* out, const char* program, const char* what) {
  const system_info si = get_system_info();
  std::fprintf(out, "%s: %s\n  kernel %s (%s), cpu %s x%ld, %s, liburing %s\n", program, what,
               si.kernel_release.c_str(), si.machine.c_str(), si.cpu.c_str(), si.cpus, si.compiler.c_str(),
               RINGSOCK_BENCH_LIBURING_VERSION);
  std::fprintf(out, "  server and clients in separate processes; other work on the machine (builds) is not "
                    "excluded: the numbers are from a shared machine unless it was idle\n");
}

std::string json_common(const char* program) {
  static const system_info si = get_system_info();
  return "\"program\": " + json_string(program) + ", \"kernel\": " + json_string(si.kernel_release) +
         ", \"cpus\": " + std::to_string(si.cpus) + ", \"compiler\": " + json_string(si.compiler) +
         ", \"liburing\": " + json_string(RINGSOCK_BENCH_LIBURING_VERSION);
}

output::output(const common_options& o, const char* program, const char* what)
    : program_(program), json_(o.json), table_(o.json ? stderr : stdout) {
  print_header(table_, program, what);
}

void output::json(const std::string& fields) {
  if (!json_) return;
  std::printf("{%s, %s}\n", json_common(program_).c_str(), fields.c_str());
  std::fflush(stdout);
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 != 0 ? v[m] : (v[m - 1] + v[m]) / 2;
}

void report_server_done(int ctl, std::size_t expected, std::int64_t extra) {
  ctl_msg m;
  m.kind = ctl_msg::done;
  m.v[0] = static_cast<std::int64_t>(count_open_fds()) - static_cast<std::int64_t>(expected);
  m.v[1] = extra;
  ctl_send(ctl, m);
}

std::int64_t wait_server_done(child& srv, int timeout_ms) {
  const ctl_msg m = ctl_recv(srv.ctl(), ctl_msg::done, timeout_ms);
  srv.wait();
  if (m.v[0] != 0) throw std::runtime_error("server: " + std::to_string(m.v[0]) + " descriptors leaked");
  return m.v[1];
}

unique_fd epoll_with_listener(int lfd) {
  unique_fd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep) throw_errno("epoll_create1");
  const int fl = ::fcntl(lfd, F_GETFL);
  if (fl < 0 || ::fcntl(lfd, F_SETFL, fl | O_NONBLOCK) != 0) throw_errno("fcntl O_NONBLOCK");
  epoll_add_in(ep.get(), lfd);
  return ep;
}

void epoll_add_in(int ep, int fd) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  if (::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) throw_errno("epoll_ctl");
}

int accept_nonblocking(int lfd) {
  int c = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (c >= 0) return c;
  if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) return -1;
  throw_errno("accept4");
}

int epoll_wait_some(int ep, epoll_event* evs, int max, int timeout_ms) {
  int n = ::epoll_wait(ep, evs, max, timeout_ms);
  if (n >= 0) return n;
  if (errno == EINTR) return 0;
  throw_errno("epoll_wait");
}

unique_fd make_scale_listener(const unix_addr& addr) { return make_listener(addr, 0, 65535); }

unique_fd connect_to(const unix_addr& addr) {
  unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw_errno("socket");
  for (;;) {
    if (::connect(fd.get(), addr.get(), addr.len) == 0) return fd;
    if (errno == EINTR) continue;
    throw_errno("connect");
  }
}

}  // namespace bench::scale
