// epoll_echo PATH: single-threaded echo server on a Unix stream socket, the floor
// reference of run.sh. Level-triggered epoll, non-blocking sockets, a 16 KiB buffer per
// connection. On readiness it reads until the socket is drained (a short read or
// EAGAIN: a short read saves the extra recv that would only say EAGAIN, and level
// triggering reports anything that arrives later) and writes every byte back; a write
// that would block keeps the rest and waits for EPOLLOUT. SIGTERM/SIGINT end it.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { buf_size = 16 * 1024 };

struct conn {
    int fd;
    size_t pending, off;  // bytes of buf still to write back, from off
    char buf[buf_size];
};

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void drop(struct conn* c) {
    close(c->fd);  // also removes it from the epoll set
    free(c);
}

// Writes back what is pending; returns -1 on error, 0 if blocked, 1 if all written.
static int flush(struct conn* c) {
    while (c->pending > 0) {
        ssize_t w = send(c->fd, c->buf + c->off, c->pending, MSG_NOSIGNAL);
        if (w < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        c->off += (size_t)w;
        c->pending -= (size_t)w;
    }
    return 1;
}

static void serve(int ep, struct conn* c, unsigned events) {
    struct epoll_event ev = {.data.ptr = c};
    if (c->pending > 0) {  // waiting for EPOLLOUT
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int f = flush(c);
        if (f < 0) return drop(c);
        if (f == 0) return;
        ev.events = EPOLLIN;
        if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) return drop(c);
    }
    for (;;) {
        ssize_t r = recv(c->fd, c->buf, buf_size, 0);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (r <= 0) return drop(c);  // end of stream or error
        c->off = 0;
        c->pending = (size_t)r;
        int f = flush(c);
        if (f < 0) return drop(c);
        if (f == 0) {
            ev.events = EPOLLOUT;
            if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) drop(c);
            return;
        }
        if ((size_t)r < buf_size) return;  // drained for now
    }
}

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: epoll_echo PATH\n");
        return 2;
    }
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof a.sun_path) {
        fprintf(stderr, "epoll_echo: path too long\n");
        return 2;
    }
    strcpy(a.sun_path, argv[1]);
    signal(SIGTERM, on_signal);  // no SA_RESTART: epoll_wait returns EINTR
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    unlink(a.sun_path);
    if (lfd < 0 || bind(lfd, (struct sockaddr*)&a, sizeof a) != 0 || listen(lfd, 1024) != 0) {
        perror("epoll_echo: listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) != 0) {
        perror("epoll_echo: epoll");
        return 1;
    }
    struct epoll_event evs[256];
    while (!stop) {
        int k = epoll_wait(ep, evs, 256, -1);
        if (k < 0) {
            if (errno == EINTR) continue;
            perror("epoll_echo: epoll_wait");
            break;
        }
        for (int i = 0; i < k; ++i) {
            if (evs[i].data.ptr) {
                serve(ep, evs[i].data.ptr, evs[i].events);
                continue;
            }
            int fd;
            while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                struct conn* c = malloc(sizeof *c);
                if (!c) {
                    close(fd);
                    continue;
                }
                c->fd = fd;
                c->pending = c->off = 0;
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) drop(c);
            }
        }
    }
    unlink(a.sun_path);
    return 0;
}
