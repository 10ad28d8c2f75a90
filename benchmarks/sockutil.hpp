// Small socket helpers shared by the benchmark implementations (not timed code
// paths, except send_all/recv_exact used by the blocking implementation).
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

namespace bench {

[[noreturn]] inline void throw_errno(const char* what, int err = errno) {
  throw std::system_error(err, std::generic_category(), what);
}

class unique_fd {
 public:
  unique_fd() = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~unique_fd() { reset(); }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

struct fd_pair {
  unique_fd a, b;
};

// socketpair(AF_UNIX, type | SOCK_CLOEXEC | extra_flags).
inline fd_pair make_socketpair(int type, int extra_flags = 0) {
  int sv[2];
  if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC | extra_flags, 0, sv) != 0) throw_errno("socketpair");
  return {unique_fd(sv[0]), unique_fd(sv[1])};
}

// Blocking helpers; throw on error, and on EOF (recv_exact).
inline void send_all(int fd, const void* p, std::size_t n) {
  auto* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t r = ::send(fd, c, n, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw_errno("send");
    }
    c += r;
    n -= static_cast<std::size_t>(r);
  }
}

// Returns false on a clean EOF before any byte, throws on EOF mid-message.
inline bool recv_exact(int fd, void* p, std::size_t n) {
  auto* c = static_cast<char*>(p);
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::recv(fd, c + got, n - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw_errno("recv");
    }
    if (r == 0) {
      if (got == 0) return false;
      throw std::runtime_error("recv: EOF in the middle of a message");
    }
    got += static_cast<std::size_t>(r);
  }
  return true;
}

// A 1-byte message carrying one descriptor in SCM_RIGHTS (fd_passing workload).
// Not copyable: msg points into the object.
struct fd_send_msg {
  char byte = 'F';
  iovec iov{};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))]{};
  msghdr msg{};
  explicit fd_send_msg(int fd);
  fd_send_msg(const fd_send_msg&) = delete;
  fd_send_msg& operator=(const fd_send_msg&) = delete;
};

// Receive side: a control buffer with slack (several fds plus SCM_CREDENTIALS /
// SCM_PIDFD / SCM_INQ).  Use with recvmsg(..., MSG_CMSG_CLOEXEC).
// Walks every cmsg of a received msghdr by cmsg_len and calls f(fd) for each
// SCM_RIGHTS descriptor (unknown cmsgs are skipped); returns how many.
template <class F>
unsigned for_each_rights_fd(msghdr& msg, F&& f) {
  unsigned n = 0;
  if (msg.msg_controllen == 0) return 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      f(fd);
      ++n;
    }
  }
  return n;
}

// One message into a caller's buffer with room for 253 descriptors, received with
// recvmsg(MSG_CMSG_CLOEXEC | MSG_TRUNC) (the *_recvmsg workloads).
struct control_recv {
  iovec iov{};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 253)]{};
  msghdr msg{};
  static constexpr int flags = MSG_CMSG_CLOEXEC | MSG_TRUNC;
  control_recv(void* buf, std::size_t len);
  control_recv(const control_recv&) = delete;
  control_recv& operator=(const control_recv&) = delete;
  void reset() noexcept {
    msg.msg_controllen = sizeof control;
    msg.msg_flags = 0;
  }
  // After a recvmsg that returned n: closes every descriptor that came, throws on a
  // truncated message or control buffer; returns n.
  std::size_t finish(ssize_t n);
};

struct fd_recv_msg {
  char byte = 0;
  iovec iov{};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8) + 128]{};
  msghdr msg{};
  fd_recv_msg();
  fd_recv_msg(const fd_recv_msg&) = delete;
  fd_recv_msg& operator=(const fd_recv_msg&) = delete;
  // Restore msg_controllen/msg_flags before the next recvmsg.
  void reset() noexcept {
    msg.msg_controllen = sizeof control;
    msg.msg_flags = 0;
  }
  // Walks every cmsg by cmsg_len and calls f(fd) for each SCM_RIGHTS descriptor
  // (unknown cmsgs are skipped); returns how many.
  template <class F>
  unsigned for_each_fd(F&& f) {
    return for_each_rights_fd(msg, f);
  }
  // close(2)s every received descriptor; returns how many.  `flags` is the
  // msg_flags to test (recvmsg writes it to msg).  Throws on MSG_CTRUNC (after
  // closing what arrived) or when no descriptor arrived.
  unsigned close_fds(int flags);
};

// A private temporary directory (mkdtemp) holding one socket path; removed on
// destruction.
class temp_dir {
 public:
  temp_dir();
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::string& dir() const noexcept { return dir_; }
  std::string path(const char* name) const { return dir_ + "/" + name; }

 private:
  std::string dir_;
};

// sockaddr_un for a filesystem path; len is exact (offsetof + strlen + 1).
struct unix_addr {
  sockaddr_un sun{};
  socklen_t len = 0;
  explicit unix_addr(const std::string& path);
  const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&sun); }
};

// A listening SOCK_STREAM socket bound to `addr` (blocking unless extra_flags says).
unique_fd make_listener(const unix_addr& addr, int extra_flags = 0, int backlog = 128);

// The peer side of a two-thread session.  start() runs fn on a new thread; an
// exception ends the thread, is stored, and calls on_error (which should wake the
// main side, e.g. shutdown() its socket or progress::fail()).  stop_and_join()
// calls shutdown(SHUT_RDWR) on `wake_fd` (the peer's own socket, which makes its
// blocked recv/epoll_wait/io_uring wait return EOF, also for dgram) and joins.
class peer_thread {
 public:
  peer_thread() = default;
  peer_thread(const peer_thread&) = delete;
  peer_thread& operator=(const peer_thread&) = delete;
  ~peer_thread() { stop_and_join(); }

  void start(int wake_fd, std::function<void()> fn, std::function<void()> on_error = {});
  void stop_and_join() noexcept;
  // Rethrows the peer's exception, if it failed.
  void check() const;
  bool failed() const noexcept { return failed_.load(std::memory_order_acquire); }

 private:
  std::thread thread_;
  int wake_fd_ = -1;
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
};

}  // namespace bench
