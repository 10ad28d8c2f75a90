// loadgen PATH CONNS SECONDS WARMUP_SECONDS SERVER_PID
// Opens CONNS connections to the echo server on the Unix stream socket PATH and keeps
// exactly one 64-byte message outstanding on each: send 64 B, read 64 B back, repeat.
// One connection is driven with blocking calls, more with epoll (level-triggered).
// After WARMUP_SECONDS it samples the server's utime+stime from /proc/SERVER_PID/stat,
// counts the round trips completed in the next SECONDS and samples again. Prints one
// line: round_trips=N seconds=T rt_per_s=R server_ticks=K clk_tck=C server_us_per_rt=U
// Exits 1 on any error (connect, short read, wrong bytes, the server gone).
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { msg_size = 64 };

static char msg[msg_size];

static void die(const char* what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, errno ? strerror(errno) : "failed");
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

// utime + stime of every thread of the process, in clock ticks.
static long long server_ticks(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE* f = fopen(path, "r");
    if (!f) die("open /proc/PID/stat");
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char* p = strrchr(buf, ')');  // the command name may hold spaces
    if (!p) die("parse /proc/PID/stat");
    unsigned long long utime = 0, stime = 0;
    // After ") ": state(3) ... utime is field 14, stime field 15.
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        die("parse utime/stime");
    return (long long)(utime + stime);
}

static int connect_to(const char* path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) die("socket path too long");
    strcpy(a.sun_path, path);
    if (connect(fd, (struct sockaddr*)&a, sizeof a) != 0) die("connect");
    return fd;
}

static void send_msg(int fd) {
    ssize_t w = send(fd, msg, msg_size, MSG_NOSIGNAL);
    if (w != msg_size) die("send");
}

// Reads what is there (at most what is still missing of the echo); returns 1 once the
// whole 64 bytes are back and were the bytes sent.
static int take_reply(int fd, char* got, int* have, int flags) {
    ssize_t r = recv(fd, got + *have, (size_t)(msg_size - *have), flags);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    if (r <= 0) {
        if (r == 0) errno = 0;
        die(r == 0 ? "server closed the connection" : "recv");
    }
    *have += (int)r;
    if (*have < msg_size) return 0;
    if (memcmp(got, msg, msg_size) != 0) {
        errno = 0;
        die("echo differs from what was sent");
    }
    *have = 0;
    return 1;
}

struct conn {
    int fd;
    int have;
    char got[msg_size];
};

// Runs until `until`; returns the round trips completed.
static long long run_one(struct conn* c, double until) {
    long long done = 0;
    while (now() < until) {
        send_msg(c->fd);
        while (!take_reply(c->fd, c->got, &c->have, 0)) {
        }
        ++done;
    }
    return done;
}

static long long run_many(int ep, struct conn* cs, int n, double until) {
    long long done = 0;
    struct epoll_event evs[256];
    while (now() < until) {
        int k = epoll_wait(ep, evs, 256, 1000);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) die(k == 0 ? "no reply for 1 s" : "epoll_wait");
        for (int i = 0; i < k; ++i) {
            struct conn* c = &cs[evs[i].data.u32];
            if (take_reply(c->fd, c->got, &c->have, MSG_DONTWAIT)) {
                ++done;
                send_msg(c->fd);
            }
        }
    }
    (void)n;
    return done;
}

int main(int argc, char** argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: loadgen PATH CONNS SECONDS WARMUP_SECONDS SERVER_PID\n");
        return 2;
    }
    const char* path = argv[1];
    int n = atoi(argv[2]);
    double secs = atof(argv[3]), warm = atof(argv[4]);
    int pid = atoi(argv[5]);
    if (n < 1 || n > 4096 || secs <= 0 || warm < 0 || pid <= 0) {
        fprintf(stderr, "loadgen: bad arguments\n");
        return 2;
    }
    for (int i = 0; i < msg_size; ++i) msg[i] = (char)('a' + i % 26);

    struct conn* cs = calloc((size_t)n, sizeof *cs);
    if (!cs) die("calloc");
    int ep = -1;
    for (int i = 0; i < n; ++i) cs[i].fd = connect_to(path);
    if (n > 1) {
        ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep < 0) die("epoll_create1");
        for (int i = 0; i < n; ++i) {
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (unsigned)i};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev) != 0) die("epoll_ctl");
            send_msg(cs[i].fd);  // one message outstanding per connection from here on
        }
    }

    double t0 = now();
    if (n == 1) run_one(&cs[0], t0 + warm);
    else run_many(ep, cs, n, t0 + warm);

    long long ticks0 = server_ticks(pid);
    double start = now();
    long long done = n == 1 ? run_one(&cs[0], start + secs) : run_many(ep, cs, n, start + secs);
    long long ticks1 = server_ticks(pid);
    double elapsed = now() - start;

    long tck = sysconf(_SC_CLK_TCK);
    double cpu_us = (double)(ticks1 - ticks0) * 1e6 / (double)tck;
    printf("round_trips=%lld seconds=%.3f rt_per_s=%.0f server_ticks=%lld clk_tck=%ld server_us_per_rt=%.4f\n",
           done, elapsed, (double)done / elapsed, ticks1 - ticks0, tck, done ? cpu_us / (double)done : 0.0);

    for (int i = 0; i < n; ++i) close(cs[i].fd);  // the outstanding echoes are dropped
    if (ep >= 0) close(ep);
    free(cs);
    return 0;
}
