// cross_ring: what handing work between rings costs. Two measurements, each with the
// MSG_RING wake (io_context::options::msg_ring = true) and with the eventfd fallback
// that kernels without IORING_OP_MSG_RING use:
//  - ping-pong: ring A posts to ring B, which posts back; round trips per second and
//    the mean round-trip time (each hop wakes a sleeping ring);
//  - burst: a plain thread posts N functions to one ring; posts per second until the
//    last one ran (one wake covers every post made before the ring's next turn).
//
//   cross_ring [--quick]
#include <ringsock/ringsock.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <thread>

namespace {

using clock_type = std::chrono::steady_clock;

struct pingpong {
    ringsock::context_pool* pool;
    long left;
    std::promise<void> done;
    void hop(std::size_t to) {
        if (--left <= 0) {
            done.set_value();
            return;
        }
        ringsock::post((*pool)[to], [this, to] { hop(1 - to); });
    }
};

double ping_pong(bool msg_ring, long trips) {
    ringsock::io_context::options opts;
    opts.msg_ring = msg_ring;
    ringsock::context_pool pool(2, opts);
    pingpong pp{&pool, trips * 2, {}};
    auto finished = pp.done.get_future();
    const auto t0 = clock_type::now();
    ringsock::post(pool[0], [&pp] { pp.hop(1); });
    finished.wait();
    const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
    pool.stop();
    pool.join();
    return static_cast<double>(trips) / secs;
}

double burst(bool msg_ring, long n) {
    ringsock::io_context::options opts;
    opts.msg_ring = msg_ring;
    ringsock::context_pool pool(1, opts);
    std::atomic<long> ran{0};
    std::promise<void> all;
    auto finished = all.get_future();
    const auto t0 = clock_type::now();
    for (long i = 0; i < n; ++i)
        ringsock::post(pool[0], [&ran, &all, n] {
            if (ran.fetch_add(1, std::memory_order_relaxed) + 1 == n) all.set_value();
        });
    finished.wait();
    const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
    pool.stop();
    pool.join();
    return static_cast<double>(n) / secs;
}

}  // namespace

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    const long trips = quick ? 20'000 : 200'000;
    const long posts = quick ? 200'000 : 2'000'000;
    std::printf("%-10s %18s %14s %18s\n", "wake", "round trips/s", "us/round trip", "burst posts/s");
    for (int rep = 0; rep < (quick ? 1 : 3); ++rep) {
        for (bool msg_ring : {true, false}) {
            const double rt = ping_pong(msg_ring, trips);
            const double b = burst(msg_ring, posts);
            std::printf("%-10s %18.0f %14.2f %18.0f\n", msg_ring ? "msg_ring" : "eventfd", rt, 1e6 / rt, b);
            std::printf("{\"bench\":\"cross_ring\",\"wake\":\"%s\",\"round_trips_per_s\":%.0f,\"burst_posts_per_s\":%.0f}\n",
                        msg_ring ? "msg_ring" : "eventfd", rt, b);
        }
    }
    return 0;
}
