// ringsock_bench harness: workload list, registry, interleaved slicing, statistics,
// table and JSON output, allocation counting.
#include "harness.hpp"
#include "report.hpp"
#include "sockutil.hpp"

#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <new>
#include <stdexcept>
#include <string_view>

#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define BENCH_RUNNING_ON_VALGRIND() (RUNNING_ON_VALGRIND != 0)
#define BENCH_CALLGRIND_ZERO() CALLGRIND_ZERO_STATS
#define BENCH_CALLGRIND_DUMP(name) CALLGRIND_DUMP_STATS_AT(name)
#else
#define BENCH_CALLGRIND_ZERO() ((void)0)
#define BENCH_CALLGRIND_DUMP(name) ((void)(name))
#define BENCH_RUNNING_ON_VALGRIND() false
#endif

#ifndef RINGSOCK_BENCH_LIBURING_VERSION
#define RINGSOCK_BENCH_LIBURING_VERSION "unknown"
#endif

// ---------------------------------------------------------------------------
// Heap allocation counting: every global operator new goes through here.
namespace {
std::atomic<std::uint64_t> g_allocations{0};

void* counted_alloc(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (n == 0) n = 1;
  void* p = std::malloc(n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void* counted_alloc_aligned(std::size_t n, std::align_val_t al) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (n == 0) n = 1;
  std::size_t a = std::max(static_cast<std::size_t>(al), sizeof(void*));
  void* p = nullptr;
  if (posix_memalign(&p, a, n) != 0) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(std::size_t n) { return counted_alloc(n); }
void* operator new[](std::size_t n) { return counted_alloc(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try { return counted_alloc(n); } catch (...) { return nullptr; }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try { return counted_alloc(n); } catch (...) { return nullptr; }
}
void* operator new(std::size_t n, std::align_val_t al) { return counted_alloc_aligned(n, al); }
void* operator new[](std::size_t n, std::align_val_t al) { return counted_alloc_aligned(n, al); }
void* operator new(std::size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  try { return counted_alloc_aligned(n, al); } catch (...) { return nullptr; }
}
void* operator new[](std::size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  try { return counted_alloc_aligned(n, al); } catch (...) { return nullptr; }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

namespace bench {

std::uint64_t allocation_count() noexcept { return g_allocations.load(std::memory_order_relaxed); }

// ---------------------------------------------------------------------------
const std::vector<workload>& workloads() {
  static const std::vector<workload> list = {
      {"pingpong_1thread", kind::pingpong, SOCK_STREAM, 64, 1, false, true, "round trips",
       "64 B ping-pong on one stream socketpair, both ends in one thread"},
      {"pingpong_2thread", kind::pingpong_2thread, SOCK_STREAM, 64, 1, false, true, "round trips",
       "64 B ping-pong on one stream socketpair, each end on its own thread", placement::same_cpu},
      {"stream_4k", kind::one_way, SOCK_STREAM, 4096, 1, true, false, "4 KiB writes",
       "one-way stream, 4 KiB writes/reads, writer and reader threads", placement::same_cpu},
      {"stream_64k", kind::one_way, SOCK_STREAM, 65536, 1, true, false, "64 KiB writes",
       "one-way stream, 64 KiB writes/reads, writer and reader threads", placement::same_cpu},
      {"stream_1m", kind::one_way, SOCK_STREAM, 1 << 20, 1, true, false, "1 MiB writes",
       "one-way stream, 1 MiB writes/reads, writer and reader threads", placement::same_cpu},
      {"conns_64", kind::pingpong, SOCK_STREAM, 64, 64, false, true, "round trips",
       "64 socketpairs, one 64 B message bouncing on each, one thread"},
      {"conns_1000", kind::pingpong, SOCK_STREAM, 64, 1000, false, true, "round trips",
       "1000 socketpairs, one 64 B message bouncing on each, one thread"},
      {"accept_rate", kind::accept, SOCK_STREAM, 0, 1, false, false, "connections",
       "socket+connect+accept+close on a path socket, one thread"},
      {"fd_passing", kind::fd_passing, SOCK_STREAM, 1, 1, false, false, "descriptors",
       "1 fd per 1-byte message over SCM_RIGHTS, receiver closes it, one thread"},
      {"seqpacket_64", kind::one_way, SOCK_SEQPACKET, 64, 1, false, false, "messages",
       "one-way 64 B seqpacket messages, writer and reader threads", placement::same_cpu},
      {"dgram_64", kind::one_way, SOCK_DGRAM, 64, 1, false, false, "messages",
       "one-way 64 B datagrams on a socketpair, writer and reader threads", placement::same_cpu},
      {"seqpacket_64_recvmsg", kind::one_way, SOCK_SEQPACKET, 64, 1, false, false, "messages",
       "seqpacket_64, reader uses recvmsg with room for descriptors", placement::same_cpu, true},
      {"dgram_64_recvmsg", kind::one_way, SOCK_DGRAM, 64, 1, false, false, "messages",
       "dgram_64, reader uses recvmsg with room for descriptors", placement::same_cpu, true},
  };
  return list;
}

// ---------------------------------------------------------------------------
namespace {

std::vector<implementation>& registry() {
  static std::vector<implementation> r;
  return r;
}

std::vector<std::string>& notes() {
  static std::vector<std::string> n;
  return n;
}

}  // namespace

void register_implementation(implementation impl) { registry().push_back(std::move(impl)); }
void add_note(std::string note) {
  static std::mutex m;  // rings are also created on peer threads
  std::lock_guard<std::mutex> lock(m);
  auto& n = notes();
  if (std::find(n.begin(), n.end(), note) == n.end()) n.push_back(std::move(note));
}

void slice::record_latency(std::int64_t ns) noexcept {
  if (lat_ == nullptr || lat_->empty()) return;
  (*lat_)[*lat_next_ % lat_->size()] = ns;
  ++*lat_next_;
}

namespace {
cpu_set_t g_original_mask;
bool g_have_mask = false;
std::atomic<int> g_peer_cpu{-1};  // -1: the original (unpinned) mask

void set_thread_mask(const cpu_set_t& set) noexcept { pthread_setaffinity_np(pthread_self(), sizeof set, &set); }

void set_thread_cpu(int cpu) noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  set_thread_mask(set);
}

const char* placement_name(placement p) {
  switch (p) {
    case placement::same_cpu: return "same_cpu";
    case placement::split_cpus: return "split_cpus";
    case placement::none: break;
  }
  return "none";
}

// Pins the calling (main) thread and sets the CPU for peer threads; returns a
// description for the table ("" for none).
std::string apply_placement(placement p) {
  std::vector<int> cpus;
  if (g_have_mask)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &g_original_mask)) cpus.push_back(c);
  if (p == placement::none || cpus.empty()) {
    if (g_have_mask) set_thread_mask(g_original_mask);
    g_peer_cpu.store(-1);
    return "";
  }
  const int main_cpu = cpus.back();
  const int peer_cpu = p == placement::same_cpu || cpus.size() < 2 ? main_cpu : cpus[cpus.size() - 2];
  set_thread_cpu(main_cpu);
  g_peer_cpu.store(peer_cpu);
  if (main_cpu == peer_cpu) return "all threads on CPU " + std::to_string(main_cpu);
  return "main thread on CPU " + std::to_string(main_cpu) + ", peer threads on CPU " + std::to_string(peer_cpu);
}
}  // namespace

bool running_on_valgrind() noexcept { return BENCH_RUNNING_ON_VALGRIND(); }

void pin_peer_thread() noexcept {
  int cpu = g_peer_cpu.load();
  if (cpu >= 0)
    set_thread_cpu(cpu);
  else if (g_have_mask)
    set_thread_mask(g_original_mask);
}

// peer_thread (sockutil.hpp) lives here: it applies the workload's placement.
void peer_thread::start(int wake_fd, std::function<void()> fn, std::function<void()> on_error) {
  wake_fd_ = wake_fd;
  thread_ = std::thread([this, fn = std::move(fn), on_error = std::move(on_error)] {
    pin_peer_thread();
    try {
      fn();
    } catch (...) {
      error_ = std::current_exception();
      failed_.store(true, std::memory_order_release);
      if (on_error) on_error();
    }
  });
}

void peer_thread::stop_and_join() noexcept {
  if (!thread_.joinable()) return;
  if (wake_fd_ >= 0) ::shutdown(wake_fd_, SHUT_RDWR);
  thread_.join();
}

void peer_thread::check() const {
  if (failed_.load(std::memory_order_acquire) && error_) std::rethrow_exception(error_);
}

void progress::wait_for(std::uint64_t target) const {
  const std::int64_t give_up = slice::now_ns() + 10'000'000'000;
  for (unsigned spin = 0; get() < target; ++spin) {
    if (failed()) throw std::runtime_error("peer thread failed");
    if ((spin & 255) == 255) {
      if (slice::now_ns() > give_up) throw std::runtime_error("reader did not catch up within 10 s");
    }
    sched_yield();
  }
}

// ---------------------------------------------------------------------------
namespace {

struct options {
  bool quick = false;
  bool json = false;
  bool list = false;
  std::uint64_t iterations = 0;  // 0: time-sliced mode
  double duration_s = 3.0;       // per workload, all implementations together
  double slice_ms = 30.0;
  std::optional<placement> pin;  // overrides each workload's default
  std::vector<std::string> filters;
};

void usage(std::FILE* f) {
  std::fputs(
      "usage: ringsock_bench [--quick] [--json] [--iterations N] [--filter SUBSTR]...\n"
      "                      [--duration SEC] [--slice-ms MS] [--pin none|same|split] [--list]\n"
      "  --quick          short run (~15 s), for CI\n"
      "  --json           machine-readable results on stdout (table goes to stderr)\n"
      "  --iterations N   run N ops per cell once, no time slicing (callgrind:\n"
      "                   each cell is a separate dump named workload/impl)\n"
      "  --filter SUBSTR  only cells whose \"workload/impl\" contains SUBSTR; a\n"
      "                   trailing '$' anchors the end (pingpong_1thread/ringsock$)\n"
      "                   (repeat or separate with ',' for alternatives)\n"
      "  --duration SEC   measured time per workload, shared by its implementations\n"
      "                   (default 3, quick 0.8)\n"
      "  --slice-ms MS    length of one interleaved slice (default 30, quick 20)\n"
      "  --pin MODE       thread placement for every workload: none (scheduler),\n"
      "                   same (all threads on one CPU), split (peer threads on\n"
      "                   another CPU); default: same for workloads with a peer\n"
      "                   thread, none otherwise\n"
      "  --list           list workloads and implementations\n",
      f);
}

options parse(int argc, char** argv) {
  options o;
  bool duration_set = false, slice_set = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value for %s\n", argv[i]);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--quick") {
      o.quick = true;
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--list") {
      o.list = true;
    } else if (a == "--iterations") {
      o.iterations = std::strtoull(value().c_str(), nullptr, 10);
      if (o.iterations == 0) {
        std::fputs("--iterations needs a positive count\n", stderr);
        std::exit(2);
      }
    } else if (a == "--filter") {
      std::string v = value();
      std::size_t pos = 0;
      while (pos <= v.size()) {
        std::size_t comma = v.find(',', pos);
        if (comma == std::string::npos) comma = v.size();
        if (comma > pos) o.filters.push_back(v.substr(pos, comma - pos));
        pos = comma + 1;
      }
    } else if (a == "--duration") {
      o.duration_s = std::strtod(value().c_str(), nullptr);
      duration_set = true;
    } else if (a == "--slice-ms") {
      o.slice_ms = std::strtod(value().c_str(), nullptr);
      slice_set = true;
    } else if (a == "--pin") {
      std::string v = value();
      if (v == "none")
        o.pin = placement::none;
      else if (v == "same")
        o.pin = placement::same_cpu;
      else if (v == "split")
        o.pin = placement::split_cpus;
      else {
        std::fprintf(stderr, "--pin: expected none, same or split, got %s\n", v.c_str());
        std::exit(2);
      }
    } else if (a == "--help" || a == "-h") {
      usage(stdout);
      std::exit(0);
    } else {
      std::fprintf(stderr, "unknown argument: %s\n", argv[i]);
      usage(stderr);
      std::exit(2);
    }
  }
  if (o.quick) {
    if (!duration_set) o.duration_s = 0.8;
    if (!slice_set) o.slice_ms = 20.0;
  }
  if (o.duration_s <= 0 || o.slice_ms <= 0) {
    std::fputs("--duration and --slice-ms must be positive\n", stderr);
    std::exit(2);
  }
  return o;
}

bool matches(const options& o, const std::string& key) {
  if (o.filters.empty()) return true;
  return std::any_of(o.filters.begin(), o.filters.end(), [&](const std::string& f) {
    // A trailing '$' anchors the end: "pingpong_1thread/ringsock$" is that cell only.
    if (!f.empty() && f.back() == '$')
      return key.size() >= f.size() - 1 && key.compare(key.size() - (f.size() - 1), f.size() - 1, f, 0, f.size() - 1) == 0;
    return key.find(f) != std::string::npos;
  });
}

int baseline_rank(const std::string& name) {
  int i = 0;
  for (const char* b : baseline_names) {
    if (name == b) return i;
    ++i;
  }
  return i;
}

std::vector<const implementation*> sorted_impls() {
  std::vector<const implementation*> v;
  for (const auto& i : registry()) v.push_back(&i);
  std::stable_sort(v.begin(), v.end(), [](const implementation* a, const implementation* b) {
    int ra = baseline_rank(a->name), rb = baseline_rank(b->name);
    if (ra != rb) return ra < rb;
    return a->name < b->name;
  });
  return v;
}

// Quantile with linear interpolation; v must be non-empty and sorted.
double quantile(const std::vector<double>& v, double q) {
  if (v.size() == 1) return v[0];
  double pos = q * static_cast<double>(v.size() - 1);
  auto lo = static_cast<std::size_t>(pos);
  std::size_t hi = std::min(lo + 1, v.size() - 1);
  double frac = pos - static_cast<double>(lo);
  return v[lo] + (v[hi] - v[lo]) * frac;
}

// ---------------------------------------------------------------------------
constexpr std::size_t latency_capacity = 1 << 16;

struct cell {
  const workload* w = nullptr;
  const implementation* impl = nullptr;
  std::string key;
  std::unique_ptr<session> s;
  std::vector<double> round_rates;  // per round, NaN when not measured
  std::vector<std::int64_t> lat;
  std::size_t lat_next = 0;
  std::uint64_t ops = 0, bytes = 0, allocs = 0, enters = 0;
  double seconds = 0;
  std::string error;
  bool ok() const { return s != nullptr && error.empty(); }
};

struct cell_stats {
  std::size_t slices = 0;
  double median = NAN, p10 = NAN, p90 = NAN, min = NAN, max = NAN;
  double allocs_per_op = NAN;
  double enters_per_op = NAN;  // NaN when the session does not count enters
  double lat_p50_us = NAN, lat_p99_us = NAN;
  std::size_t lat_samples = 0;
  std::vector<std::pair<std::string, double>> ratios;  // baseline -> median ratio
};

// Runs one slice of a cell; returns the rate or NaN (and records the error).
double run_slice(cell& c, std::int64_t slice_ns, std::uint64_t max_ops, bool record) {
  if (!c.ok()) return NAN;
  try {
    std::int64_t t0 = slice::now_ns();
    slice s(max_ops == 0 ? t0 + slice_ns : slice::no_deadline, max_ops == 0 ? UINT64_MAX : max_ops,
            record && c.w->latency ? &c.lat : nullptr, &c.lat_next);
    std::uint64_t a0 = allocation_count();
    counts r = c.s->run(s);
    std::uint64_t a1 = allocation_count();
    std::int64_t t1 = slice::now_ns();
    double secs = static_cast<double>(t1 - t0) * 1e-9;
    if (secs <= 0) secs = 1e-9;
    if (record) {
      c.ops += r.ops;
      c.bytes += r.bytes;
      c.allocs += a1 - a0;
      c.enters += r.enters;
      c.seconds += secs;
    }
    return (c.w->rate_in_bytes ? static_cast<double>(r.bytes) : static_cast<double>(r.ops)) / secs;
  } catch (const std::exception& e) {
    c.error = e.what();
  } catch (...) {
    c.error = "unknown exception";
  }
  return NAN;
}

cell_stats compute_stats(const cell& c, const std::vector<cell>& all) {
  cell_stats st;
  std::vector<double> r;
  for (double x : c.round_rates)
    if (!std::isnan(x)) r.push_back(x);
  st.slices = r.size();
  if (!r.empty()) {
    std::sort(r.begin(), r.end());
    st.median = quantile(r, 0.5);
    st.p10 = quantile(r, 0.1);
    st.p90 = quantile(r, 0.9);
    st.min = r.front();
    st.max = r.back();
  }
  if (c.ops > 0) st.allocs_per_op = static_cast<double>(c.allocs) / static_cast<double>(c.ops);
  if (c.ops > 0 && c.enters > 0) st.enters_per_op = static_cast<double>(c.enters) / static_cast<double>(c.ops);
  std::size_t n = std::min(c.lat_next, c.lat.size());
  if (n > 0) {
    std::vector<double> l(c.lat.begin(), c.lat.begin() + static_cast<std::ptrdiff_t>(n));
    std::sort(l.begin(), l.end());
    st.lat_p50_us = quantile(l, 0.5) * 1e-3;
    st.lat_p99_us = quantile(l, 0.99) * 1e-3;
    st.lat_samples = n;
  }
  for (const char* b : baseline_names) {
    auto it = std::find_if(all.begin(), all.end(), [&](const cell& o) { return o.impl->name == b; });
    if (it == all.end()) continue;
    std::vector<double> ratios;
    for (std::size_t i = 0; i < c.round_rates.size() && i < it->round_rates.size(); ++i) {
      double x = c.round_rates[i], y = it->round_rates[i];
      if (!std::isnan(x) && !std::isnan(y) && y > 0) ratios.push_back(x / y);
    }
    double m = NAN;
    if (!ratios.empty()) {
      std::sort(ratios.begin(), ratios.end());
      m = quantile(ratios, 0.5);
    }
    st.ratios.emplace_back(b, m);
  }
  return st;
}

std::string fmt_rate(double v, bool bytes) {
  char buf[64];
  if (std::isnan(v)) return "-";
  if (bytes)
    std::snprintf(buf, sizeof buf, "%.3f", v * 1e-9);
  else if (v >= 1e6)
    std::snprintf(buf, sizeof buf, "%.3fM", v * 1e-6);
  else if (v >= 1e3)
    std::snprintf(buf, sizeof buf, "%.1fk", v * 1e-3);
  else
    std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

std::string fmt(const char* f, double v) {
  if (std::isnan(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

void print_table(std::FILE* out, const workload& w, const std::vector<cell>& cells,
                 const std::vector<cell_stats>& stats, bool iterations_mode, const std::string& where) {
  const char* unit = w.rate_in_bytes ? "GB/s" : "/s";
  std::fprintf(out, "\n%s: %s  [%s%s%s%s]\n", w.name.c_str(), w.description.c_str(),
               w.rate_in_bytes ? "" : w.unit.c_str(), unit, where.empty() ? "" : "; ", where.c_str());
  int name_w = 16;
  for (const auto& c : cells) name_w = std::max(name_w, static_cast<int>(c.impl->name.size()));
  const bool enters = std::any_of(stats.begin(), stats.end(), [](const cell_stats& st) { return !std::isnan(st.enters_per_op); });
  std::fprintf(out, "  %-*s %9s %17s", name_w, "impl", "median", iterations_mode ? "" : "p10..p90");
  if (w.latency) std::fprintf(out, " %13s", "lat p50/p99us");
  std::fprintf(out, " %9s", "allocs/op");
  if (enters) std::fprintf(out, " %9s", "enters/op");
  // Ratio columns: "x" + baseline name, at least 6 wide.
  std::vector<int> widths;
  if (!stats.empty())
    for (const auto& [b, m] : stats.front().ratios) {
      widths.push_back(std::max(6, static_cast<int>(b.size()) + 1));
      std::fprintf(out, " %*s", widths.back(), ("x" + b).c_str());
    }
  std::fprintf(out, " %6s\n", "slices");
  for (std::size_t i = 0; i < cells.size(); ++i) {
    const cell& c = cells[i];
    const cell_stats& st = stats[i];
    std::fprintf(out, "  %-*s %9s", name_w, c.impl->name.c_str(), fmt_rate(st.median, w.rate_in_bytes).c_str());
    std::string spread = iterations_mode ? ""
                                         : fmt_rate(st.p10, w.rate_in_bytes) + ".." +
                                               fmt_rate(st.p90, w.rate_in_bytes);
    std::fprintf(out, " %17s", spread.c_str());
    if (w.latency)
      std::fprintf(out, " %13s", (fmt("%.2f", st.lat_p50_us) + "/" + fmt("%.2f", st.lat_p99_us)).c_str());
    std::fprintf(out, " %9s", fmt("%.3f", st.allocs_per_op).c_str());
    if (enters) std::fprintf(out, " %9s", fmt("%.2f", st.enters_per_op).c_str());
    for (std::size_t k = 0; k < st.ratios.size(); ++k)
      std::fprintf(out, " %*s", k < widths.size() ? widths[k] : 6, fmt("%.2f", st.ratios[k].second).c_str());
    std::fprintf(out, " %6zu", st.slices);
    if (!c.error.empty()) std::fprintf(out, "  ERROR: %s", c.error.c_str());
    std::fputc('\n', out);
  }
  std::fflush(out);
}

}  // namespace

// ---------------------------------------------------------------------------
int run_main(int argc, char** argv) {
  options o = parse(argc, argv);
  raise_nofile();
  auto impls = sorted_impls();
  const std::size_t fds_at_start = count_open_fds();
  g_have_mask = sched_getaffinity(0, sizeof g_original_mask, &g_original_mask) == 0;

  if (o.list) {
    for (const auto& w : workloads()) {
      std::printf("%-18s %s; implementations:", w.name.c_str(), w.description.c_str());
      for (const auto* i : impls)
        if (i->factories.count(w.k) != 0) std::printf(" %s", i->name.c_str());
      std::printf("\n");
    }
    for (const auto* i : impls) std::printf("impl %-14s %s\n", i->name.c_str(), i->description.c_str());
    return 0;
  }

  // Everything stops by itself: a global watchdog bounds the whole run.
  std::size_t nworkloads = workloads().size();
  double budget = o.iterations != 0 ? 3600.0
                                    : static_cast<double>(nworkloads) * (o.duration_s * 2.0 + 10.0) + 60.0;
  arm_watchdog(static_cast<unsigned>(budget), "ringsock_bench");

  std::FILE* out = o.json ? stderr : stdout;
  system_info si = get_system_info();
  std::fprintf(out, "ringsock_bench: kernel %s (%s %s), cpu %s x%ld, %s, liburing %s\n",
               si.kernel_release.c_str(), si.kernel_version.c_str(), si.machine.c_str(), si.cpu.c_str(),
               si.cpus, si.compiler.c_str(), RINGSOCK_BENCH_LIBURING_VERSION);
  if (o.iterations != 0)
    std::fprintf(out, "mode: --iterations %llu per cell, one run each (after a short warm-up)\n",
                 static_cast<unsigned long long>(o.iterations));
  else
    std::fprintf(out,
                 "mode: implementations interleaved round-robin in %.0f ms slices, %.1f s per workload;\n"
                 "      median and p10..p90 of per-slice rates; xNAME = median over rounds of\n"
                 "      (rate / NAME's rate in the same round)\n",
                 o.slice_ms, o.duration_s);
  int name_w = 16;
  for (const auto* i : impls) name_w = std::max(name_w, static_cast<int>(i->name.size()));
  for (const auto* i : impls) std::fprintf(out, "  %-*s %s\n", name_w, i->name.c_str(), i->description.c_str());
  std::fflush(out);

  std::string json = "{\n  \"kernel\": " + json_string(si.kernel_release) +
                     ",\n  \"kernel_version\": " + json_string(si.kernel_version) +
                     ",\n  \"cpu\": " + json_string(si.cpu) + ",\n  \"cpus\": " + std::to_string(si.cpus) +
                     ",\n  \"compiler\": " + json_string(si.compiler) +
                     ",\n  \"liburing\": " + json_string(RINGSOCK_BENCH_LIBURING_VERSION) +
                     ",\n  \"mode\": " + json_string(o.iterations != 0 ? "iterations" : "interleaved") +
                     ",\n  \"iterations\": " + std::to_string(o.iterations) +
                     ",\n  \"slice_ms\": " + json_number(o.slice_ms) +
                     ",\n  \"duration_s\": " + json_number(o.duration_s) + ",\n  \"results\": [";
  bool first_json = true;
  bool any_error = false;

  const auto slice_ns = static_cast<std::int64_t>(o.slice_ms * 1e6);
  for (const auto& w : workloads()) {
    bool any = false;
    for (const auto* impl : impls)
      any = any || (impl->factories.count(w.k) != 0 && matches(o, w.name + "/" + impl->name));
    if (!any) continue;
    const placement place = o.pin.value_or(w.place);
    const std::string where = apply_placement(place);
    std::vector<cell> cells;
    for (const auto* impl : impls) {
      auto f = impl->factories.find(w.k);
      if (f == impl->factories.end()) continue;
      std::string key = w.name + "/" + impl->name;
      if (!matches(o, key)) continue;
      cell c;
      c.w = &w;
      c.impl = impl;
      c.key = key;
      try {
        c.s = f->second(w);
        if (!c.s) continue;  // the implementation skips this workload
      } catch (const std::exception& e) {
        c.error = std::string("setup: ") + e.what();
      }
      if (w.latency) c.lat.assign(latency_capacity, 0);
      cells.push_back(std::move(c));
    }
    if (cells.empty()) continue;
    const std::size_t n = cells.size();

    if (o.iterations != 0) {
      for (auto& c : cells) {
        run_slice(c, 0, std::max<std::uint64_t>(1, std::min<std::uint64_t>(o.iterations / 10, 1000)), false);
        BENCH_CALLGRIND_ZERO();
        double rate = run_slice(c, 0, o.iterations, true);
        BENCH_CALLGRIND_DUMP(c.key.c_str());
        c.round_rates.push_back(rate);
      }
    } else {
      // Warm-up round (not recorded), then rounds until the duration is used up.
      for (auto& c : cells) run_slice(c, slice_ns / 2, 0, false);
      const double round_s = static_cast<double>(n) * o.slice_ms * 1e-3;
      const auto rounds = static_cast<std::size_t>(std::max(3.0, std::ceil(o.duration_s / round_s)));
      for (std::size_t r = 0; r < rounds; ++r) {
        for (auto& c : cells) c.round_rates.push_back(NAN);
        for (std::size_t j = 0; j < n; ++j) {
          cell& c = cells[(r + j) % n];  // rotate who goes first
          c.round_rates.back() = run_slice(c, slice_ns, 0, true);
        }
      }
    }
    for (auto& c : cells) {
      try {
        c.s.reset();  // stops peer threads, closes descriptors
      } catch (const std::exception& e) {
        if (c.error.empty()) c.error = std::string("teardown: ") + e.what();
      }
    }

    std::vector<cell_stats> stats;
    for (const auto& c : cells) stats.push_back(compute_stats(c, cells));
    print_table(out, w, cells, stats, o.iterations != 0, where);

    for (std::size_t i = 0; i < n; ++i) {
      const cell& c = cells[i];
      const cell_stats& st = stats[i];
      if (!c.error.empty()) any_error = true;
      json += first_json ? "\n    {" : ",\n    {";
      first_json = false;
      json += "\"workload\": " + json_string(w.name) + ", \"impl\": " + json_string(c.impl->name) +
              ", \"unit\": " + json_string(w.rate_in_bytes ? "bytes/s" : w.unit + "/s") +
              ", \"placement\": " + json_string(placement_name(place)) +
              ", \"median\": " + json_number(st.median) + ", \"p10\": " + json_number(st.p10) +
              ", \"p90\": " + json_number(st.p90) + ", \"min\": " + json_number(st.min) +
              ", \"max\": " + json_number(st.max) + ", \"slices\": " + std::to_string(st.slices) +
              ", \"ops\": " + std::to_string(c.ops) + ", \"bytes\": " + std::to_string(c.bytes) +
              ", \"seconds\": " + json_number(c.seconds) +
              ", \"allocs_per_op\": " + json_number(st.allocs_per_op) +
              ", \"enters_per_op\": " + json_number(st.enters_per_op);
      if (w.latency)
        json += ", \"latency_us\": {\"p50\": " + json_number(st.lat_p50_us) +
                ", \"p99\": " + json_number(st.lat_p99_us) +
                ", \"samples\": " + std::to_string(st.lat_samples) + "}";
      json += ", \"ratios\": {";
      bool first = true;
      for (const auto& [b, m] : st.ratios) {
        json += (first ? "" : ", ") + json_string(b) + ": " + json_number(m);
        first = false;
      }
      json += "}, \"error\": " + (c.error.empty() ? std::string("null") : json_string(c.error)) + "}";
    }
  }
  apply_placement(placement::none);
  if (std::size_t fds = count_open_fds(); fds != fds_at_start) {
    add_note("descriptor leak: " + std::to_string(fds_at_start) + " open at start, " + std::to_string(fds) +
             " at the end");
    any_error = true;
  }
  if (!notes().empty()) {
    std::fprintf(out, "\nnotes:\n");
    for (const auto& nt : notes()) std::fprintf(out, "  %s\n", nt.c_str());
  }
  json += "\n  ],\n  \"notes\": [";
  for (std::size_t i = 0; i < notes().size(); ++i) json += (i ? ", " : "") + json_string(notes()[i]);
  json += "]\n}\n";
  if (o.json) std::fputs(json.c_str(), stdout);
  alarm(0);
  return any_error ? 1 : 0;
}

}  // namespace bench
