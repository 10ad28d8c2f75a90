// ringsock_bench harness: a registry of (workload, implementation) cells that are
// measured side by side in one process, interleaved in short time slices.
//
// Adding an implementation (e.g. benchmarks/impl_ringsock.cpp):
//
//   #include "harness.hpp"
//   namespace {
//   class my_pingpong final : public bench::session {
//    public:
//     explicit my_pingpong(const bench::workload& w);   // set up sockets/threads here
//     bench::counts run(bench::slice& s) override;       // loop until s.done(ops)
//   };
//   const bench::registrar reg{{
//       .name = "ringsock",
//       .description = "ringsock coroutines",
//       .factories = {{bench::kind::pingpong, bench::make<my_pingpong>()}},
//   }};
//   }  // namespace
//
// and add the file to `bench_sources` in benchmarks/meson.build.  Every workload of a
// registered kind becomes a cell; a factory may return nullptr to skip one workload.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace bench {

// ---------------------------------------------------------------------------
// Workloads.  The harness defines the list (harness.cpp, `workloads()`); an
// implementation supplies one session type per kind it supports.
enum class kind {
  // N connected socketpairs (conns), one msg_size message bouncing on each, all
  // ends driven by ONE thread (the one calling run()).  One op = one round trip:
  // end A sends, end B receives and sends back, end A receives.
  // pingpong_1thread (conns = 1, latency sampled), conns_64, conns_1000.
  pingpong,
  // One socketpair; end A (client) on the thread calling run(), end B (echo server)
  // on a peer thread owned by the session.  One op = one round trip.
  pingpong_2thread,
  // One socketpair of sock_type; the thread calling run() writes msg_size chunks
  // (stream) or messages (seqpacket/dgram), a peer thread reads into a msg_size
  // buffer.  One op = one chunk/message written.  Before run() returns, everything
  // written must have been received: the reader publishes its byte count through a
  // bench::progress and run() ends with progress.wait_for(bytes_written).
  // stream_4k, stream_64k, stream_1m, seqpacket_64, dgram_64.
  one_way,
  // A listening SOCK_STREAM socket bound to a path in a temporary directory
  // (bench::temp_dir).  One op = socket + connect + accept + close both ends.
  accept,
  // One stream socketpair.  One op = a 1-byte message carrying one descriptor via
  // SCM_RIGHTS from A to B; B receives it (MSG_CMSG_CLOEXEC), parses every cmsg by
  // cmsg_len and closes each received descriptor.  Single thread.
  fd_passing,
};

// Where the thread calling run() and the sessions' peer threads run.  Default:
// same_cpu for workloads with a peer thread (on a 2-vCPU VM a cross-CPU wakeup
// costs tens of µs and the scheduler flips between placements, which makes the
// numbers bimodal); --pin overrides it for every workload.
enum class placement {
  none,        // let the scheduler decide
  same_cpu,    // main thread and peer threads pinned to one CPU
  split_cpus,  // main thread on one CPU, peer threads on another
};

struct workload {
  std::string name;         // e.g. "pingpong_1thread"
  kind k;
  int sock_type;            // SOCK_STREAM / SOCK_SEQPACKET / SOCK_DGRAM
  std::size_t msg_size;     // bytes per message / chunk
  std::size_t conns;        // concurrent socketpairs (pingpong)
  bool rate_in_bytes;       // report GB/s (bytes) instead of ops/s
  bool latency;             // the session should sample round-trip latency
  std::string unit;         // what one op is, e.g. "round trips", "messages"
  std::string description;
  placement place = placement::none;  // default thread placement (see placement)
  // one_way on message sockets: the reader uses recvmsg with a control buffer for
  // descriptors (bench::control_recv), as a receiver that must never lose a passed
  // descriptor does; otherwise a plain recv.
  bool recvmsg = false;
};

const std::vector<workload>& workloads();

// What run() returns: ops done in this slice (see kind) and payload bytes moved.
// enters: io_uring_enter calls made by all the session's threads during the slice,
// for sessions that count them (the raw_uring ones); 0 means "not counted" and
// the table shows "-".
struct counts {
  std::uint64_t ops = 0;
  std::uint64_t bytes = 0;
  std::uint64_t enters = 0;
};

// ---------------------------------------------------------------------------
// One slice of measurement, handed to session::run().  run() works until done()
// says stop; it may finish the op in progress (a little overrun is measured).
class slice {
 public:
  static constexpr std::int64_t no_deadline = std::numeric_limits<std::int64_t>::max();

  static std::int64_t now_ns() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
  }

  // True when the slice is over: ops_done reached the --iterations count, or the
  // time slice has ended.  Call it after every op (or batch of ops); it costs one
  // vDSO clock read, and none in --iterations mode.
  bool done(std::uint64_t ops_done) const noexcept {
    if (ops_done >= max_ops_) return true;
    return deadline_ns_ != no_deadline && now_ns() >= deadline_ns_;
  }

  // Latency sampling: for op number i (counting however the session likes),
  // take timestamps only when sample(i) is true (every 64th op), then
  // record_latency(end - start).  Never allocates.
  bool sample(std::uint64_t i) const noexcept { return lat_ != nullptr && (i & 63) == 0; }
  void record_latency(std::int64_t ns) noexcept;

  std::uint64_t max_ops() const noexcept { return max_ops_; }

  // Used by the harness.
  slice(std::int64_t deadline_ns, std::uint64_t max_ops, std::vector<std::int64_t>* lat,
        std::size_t* lat_next) noexcept
      : deadline_ns_(deadline_ns), max_ops_(max_ops), lat_(lat), lat_next_(lat_next) {}

 private:
  std::int64_t deadline_ns_;
  std::uint64_t max_ops_;
  std::vector<std::int64_t>* lat_;
  std::size_t* lat_next_;
};

// One implementation's state for one workload: created once per run (sockets,
// rings, peer threads), then run() is called for every slice, interleaved with
// other sessions' slices.  Between slices the session is idle: peer threads
// must be blocked (in recv, epoll_wait, io_uring_enter...), not spinning.
// The destructor stops and joins peer threads and closes every descriptor.
// Errors are reported by throwing (std::system_error / std::runtime_error).
class session {
 public:
  session() = default;
  session(const session&) = delete;
  session& operator=(const session&) = delete;
  virtual ~session() = default;
  virtual counts run(slice& s) = 0;
};

using factory = std::function<std::unique_ptr<session>(const workload&)>;

template <class Session>
factory make() {
  return [](const workload& w) -> std::unique_ptr<session> { return std::make_unique<Session>(w); };
}

struct implementation {
  std::string name;          // column/row name, e.g. "raw_uring_floor"
  std::string description;   // one line, printed in the header
  std::map<kind, factory> factories;
};

// Registration happens during static initialisation (bench::registrar) or from
// main() before bench::run_main; the table orders the baselines (baseline_names)
// first, then the rest by name.
void register_implementation(implementation impl);

struct registrar {
  explicit registrar(implementation impl) { register_implementation(std::move(impl)); }
};

// Every thread a session starts for the peer side must call this first: it
// applies the current workload's placement (bench::peer_thread does it).
void pin_peer_thread() noexcept;

// True under valgrind.  Its io_uring_enter wrapper (3.19) keeps valgrind's global
// lock while the call waits, so a peer thread waiting in io_uring_enter deadlocks
// the process: factories skip such cells (return nullptr) when this is true.
bool running_on_valgrind() noexcept;

// A line printed under the header (e.g. "raw_uring_floor: DEFER_TASKRUN unavailable").
void add_note(std::string note);

// Baselines that get a ratio column.  raw_uring_floor is the strongest raw
// liburing schedule (see impl_raw_uring.cpp): the one ringsock is judged against.
inline constexpr const char* baseline_names[] = {"blocking", "epoll", "raw_uring_preposted", "raw_uring_floor"};

// ---------------------------------------------------------------------------
// Helper for one_way sessions: the reader thread publishes bytes received; run()
// waits until the reader has caught up with everything written.
class progress {
 public:
  void add(std::uint64_t n) noexcept { bytes_.fetch_add(n, std::memory_order_release); }
  std::uint64_t get() const noexcept { return bytes_.load(std::memory_order_acquire); }
  // Spins (with sched_yield) until get() >= target, the peer failed, or 10 s passed
  // (then throws).
  void wait_for(std::uint64_t target) const;
  // The peer thread calls this when it stops early (error); wait_for then throws.
  void fail() noexcept { failed_.store(true, std::memory_order_release); }
  bool failed() const noexcept { return failed_.load(std::memory_order_acquire); }

 private:
  std::atomic<std::uint64_t> bytes_{0};
  std::atomic<bool> failed_{false};
};

// Heap allocations so far in this process (global operator new is replaced).
std::uint64_t allocation_count() noexcept;

int run_main(int argc, char** argv);

}  // namespace bench
