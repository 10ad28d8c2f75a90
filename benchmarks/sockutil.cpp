#include "sockutil.hpp"

#include <sys/stat.h>

#include <cstdlib>
#include <cstring>

namespace bench {

temp_dir::temp_dir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/ringsock-bench-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw_errno("mkdtemp");
  dir_ = tmpl;
}

temp_dir::~temp_dir() {
  // Only our own socket files live here; remove them, then the directory.
  for (const char* name : {"listen.sock"}) ::unlink(path(name).c_str());
  ::rmdir(dir_.c_str());
}

fd_send_msg::fd_send_msg(int fd) {
  iov.iov_base = &byte;
  iov.iov_len = 1;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
}

control_recv::control_recv(void* buf, std::size_t len) {
  iov.iov_base = buf;
  iov.iov_len = len;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  reset();
}

std::size_t control_recv::finish(ssize_t n) {
  for_each_rights_fd(msg, [](int fd) { ::close(fd); });
  if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 || static_cast<std::size_t>(n) > iov.iov_len)
    throw std::runtime_error("recvmsg: message or control data truncated");
  reset();
  return static_cast<std::size_t>(n);
}

fd_recv_msg::fd_recv_msg() {
  iov.iov_base = &byte;
  iov.iov_len = 1;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  reset();
}

unsigned fd_recv_msg::close_fds(int flags) {
  unsigned n = for_each_fd([](int fd) { ::close(fd); });
  if ((flags & MSG_CTRUNC) != 0) throw std::runtime_error("recvmsg: MSG_CTRUNC, descriptors lost");
  if (n == 0) throw std::runtime_error("recvmsg: no descriptor arrived");
  return n;
}

unix_addr::unix_addr(const std::string& path) {
  sun.sun_family = AF_UNIX;
  if (path.size() >= sizeof(sun.sun_path)) throw std::system_error(ENAMETOOLONG, std::generic_category(), path);
  std::memcpy(sun.sun_path, path.c_str(), path.size() + 1);
  len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
}

unique_fd make_listener(const unix_addr& addr, int extra_flags, int backlog) {
  unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | extra_flags, 0));
  if (!fd) throw_errno("socket");
  if (::fchmod(fd.get(), 0600) != 0) throw_errno("fchmod");
  if (::bind(fd.get(), addr.get(), addr.len) != 0) throw_errno("bind");
  if (::listen(fd.get(), backlog) != 0) throw_errno("listen");
  return fd;
}

}  // namespace bench
