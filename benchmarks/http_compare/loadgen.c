// loadgen: closed-loop HTTP/1.1 keep-alive load over a Unix socket, for
// benchmarks/http_compare. N connections; each sends one GET, waits for the whole
// response (head up to the blank line, then Content-Length bytes of body), records the
// latency and sends the next. One thread, epoll. After a warm-up it measures for a fixed
// time and prints one line:
//   requests=… rps=… p50_us=… p99_us=… errors=… cpu_us_per_req=… sched_us_per_req=…
// Both per-request CPU figures need --pid: the server's CPU time over the measured
// window divided by the requests completed in it. cpu_us_per_req: utime+stime from
// /proc/PID/stat (all threads; charged a whole tick to whoever runs at each tick, so
// biased for a server that sleeps between short bursts). sched_us_per_req: the
// scheduler's exact run time, summed over /proc/PID/task/*/schedstat.
//
//   loadgen PATH [--conns N] [--seconds S] [--warmup S] [--target /info] [--pid PID]
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    char buf[4096];
    size_t len;
    uint64_t sent_ns;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// utime+stime of process `pid` in clock ticks, or -1.
static long long cpu_ticks(int pid) {
    char path[64], line[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE* f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = '\0';
    char* p = strrchr(line, ')');  // the command name may hold spaces
    if (!p) return -1;
    unsigned long long ut = 0, st = 0;
    // After ')': state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15)
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2) return -1;
    return (long long)(ut + st);
}

// Nanoseconds all threads of `pid` have run (first field of each task's schedstat), or -1.
static long long run_ns(int pid) {
    char path[96];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR* d = opendir(path);
    if (!d) return -1;
    long long total = 0;
    for (struct dirent* e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/proc/%d/task/%.16s/schedstat", pid, e->d_name);
        FILE* f = fopen(path, "r");
        if (!f) continue;  // a thread that just ended
        long long ns = 0;
        if (fscanf(f, "%lld", &ns) == 1) total += ns;
        fclose(f);
    }
    closedir(d);
    return total;
}

static int cmp_u64(const void* a, const void* b) {
    uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
    return x < y ? -1 : x > y;
}

static void die(const char* what) {
    perror(what);
    exit(1);
}

// Bytes of the complete response at the start of `b`, 0 if incomplete, -1 if malformed.
static long response_length(const char* b, size_t len, int* status) {
    const char* end = memmem(b, len, "\r\n\r\n", 4);
    if (!end) return 0;
    if (len < 12 || memcmp(b, "HTTP/1.1 ", 9) != 0) return -1;
    *status = atoi(b + 9);
    size_t head = (size_t)(end - b) + 4;
    long body = 0;
    for (const char* p = b; p < end;) {
        const char* eol = memmem(p, (size_t)(end - p) + 2, "\r\n", 2);
        if (!eol) break;
        if ((size_t)(eol - p) > 15 && strncasecmp(p, "content-length:", 15) == 0) body = atol(p + 15);
        p = eol + 2;
    }
    return (long)head + body;
}

int main(int argc, char** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: loadgen PATH [--conns N] [--seconds S] [--warmup S] [--target /info] [--pid PID]\n");
        return 2;
    }
    const char* path = argv[1];
    int conns = 1, pid = 0;
    double seconds = 5, warmup = 1;
    const char* target = "/info";
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--conns")) conns = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--warmup")) warmup = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--target")) target = argv[i + 1];
        else if (!strcmp(argv[i], "--pid")) pid = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "loadgen: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (conns < 1 || conns > 4096 || !(seconds > 0)) return 2;
    char req[512];
    int req_len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", target);

    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) return 2;
    strcpy(sa.sun_path, path);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct conn* cs = calloc((size_t)conns, sizeof *cs);
    for (int i = 0; i < conns; ++i) {
        cs[i].fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (cs[i].fd < 0) die("socket");
        if (connect(cs[i].fd, (struct sockaddr*)&sa, sizeof sa) != 0) die("connect");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev) != 0) die("epoll_ctl");
    }

    size_t cap = 1 << 20, count = 0;
    uint64_t* lat = malloc(cap * sizeof *lat);
    long errors = 0;
    const uint64_t t0 = now_ns();
    const uint64_t measure_from = t0 + (uint64_t)(warmup * 1e9);
    const uint64_t measure_to = measure_from + (uint64_t)(seconds * 1e9);
    long long cpu0 = -1, run0 = -1;
    for (int i = 0; i < conns; ++i) {
        cs[i].sent_ns = now_ns();
        if (write(cs[i].fd, req, (size_t)req_len) != req_len) die("write");
    }
    struct epoll_event evs[256];
    int measuring = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (!measuring && t >= measure_from) {
            measuring = 1;
            count = 0;
            errors = 0;
            if (pid) {
                cpu0 = cpu_ticks(pid);
                run0 = run_ns(pid);
            }
        }
        if (t >= measure_to) break;
        int n = epoll_wait(ep, evs, 256, 100);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("epoll_wait");
        for (int k = 0; k < n; ++k) {
            struct conn* c = &cs[evs[k].data.u32];
            ssize_t got = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
            if (got <= 0) {
                fprintf(stderr, "loadgen: connection closed by the server (%s)\n", got < 0 ? strerror(errno) : "EOF");
                return 1;
            }
            c->len += (size_t)got;
            int status = 0;
            long whole = response_length(c->buf, c->len, &status);
            if (whole < 0 || (size_t)whole > sizeof c->buf) {
                fprintf(stderr, "loadgen: malformed or oversized response\n");
                return 1;
            }
            if (whole == 0 || (size_t)whole > c->len) continue;  // not complete yet
            uint64_t done = now_ns();
            if (status != 200) ++errors;
            if (count == cap) {
                cap *= 2;
                lat = realloc(lat, cap * sizeof *lat);
            }
            lat[count++] = done - c->sent_ns;
            memmove(c->buf, c->buf + whole, c->len - (size_t)whole);
            c->len -= (size_t)whole;
            c->sent_ns = done;
            if (write(c->fd, req, (size_t)req_len) != req_len) die("write");
        }
    }
    long long cpu1 = pid ? cpu_ticks(pid) : -1, run1 = pid ? run_ns(pid) : -1;
    const double window = (double)(now_ns() - measure_from) / 1e9;
    qsort(lat, count, sizeof *lat, cmp_u64);
    double p50 = count ? (double)lat[count / 2] / 1e3 : 0;
    double p99 = count ? (double)lat[(size_t)((double)count * 0.99)] / 1e3 : 0;
    double cpu_per_req = -1, run_per_req = -1;
    if (pid && cpu0 >= 0 && cpu1 >= 0 && count)
        cpu_per_req = (double)(cpu1 - cpu0) * 1e6 / (double)sysconf(_SC_CLK_TCK) / (double)count;
    if (pid && run0 >= 0 && run1 >= 0 && count) run_per_req = (double)(run1 - run0) / 1e3 / (double)count;
    printf("requests=%zu rps=%.0f p50_us=%.1f p99_us=%.1f errors=%ld cpu_us_per_req=%.3f sched_us_per_req=%.3f\n",
           count, (double)count / window, p50, p99, errors, cpu_per_req, run_per_req);
    for (int i = 0; i < conns; ++i) close(cs[i].fd);
    return errors ? 1 : 0;
}
