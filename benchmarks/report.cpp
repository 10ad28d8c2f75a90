// Machine description, JSON formatting, descriptor counting, RLIMIT_NOFILE and the
// watchdog, shared by the benchmark programs (see report.hpp).
#include "report.hpp"

#include <dirent.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace bench {

namespace {

std::string read_cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) {
        auto s = line.substr(colon + 1);
        s.erase(0, s.find_first_not_of(' '));
        return s;
      }
    }
  }
  return "unknown";
}

char g_watchdog_msg[128];
std::size_t g_watchdog_len = 0;

extern "C" void watchdog_fired(int) {
  ssize_t r = ::write(2, g_watchdog_msg, g_watchdog_len);
  (void)r;
  _exit(3);
}

}  // namespace

system_info get_system_info() {
  system_info s;
  utsname u{};
  if (uname(&u) == 0) {
    s.kernel_release = u.release;
    s.kernel_version = u.version;
    s.machine = u.machine;
  }
  s.cpu = read_cpu_model();
  s.cpus = sysconf(_SC_NPROCESSORS_ONLN);
#if defined(__clang__)
  s.compiler = std::string("clang ") + __clang_version__;
#else
  s.compiler = std::string("g++ ") + __VERSION__;
#endif
  return s;
}

std::string json_string(std::string_view s) {
  std::string o = "\"";
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      o += '\\';
      o += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else {
      o += ch;
    }
  }
  return o + "\"";
}

std::string json_number(double v) {
  if (std::isnan(v) || std::isinf(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::size_t count_open_fds() {
  std::size_t n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') ++n;
    closedir(d);
  }
  return n;
}

std::size_t raise_nofile() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  if (rl.rlim_cur < rl.rlim_max) {
    rlimit want = rl;
    want.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &want) == 0) rl = want;
  }
  return static_cast<std::size_t>(rl.rlim_cur);
}

void arm_watchdog(unsigned seconds, const char* program) {
  int n = std::snprintf(g_watchdog_msg, sizeof g_watchdog_msg, "%s: watchdog expired, aborting\n", program);
  g_watchdog_len = n < 0 ? 0 : std::min(static_cast<std::size_t>(n), sizeof g_watchdog_msg - 1);
  struct sigaction sa {};
  sa.sa_handler = watchdog_fired;
  sigaction(SIGALRM, &sa, nullptr);
  alarm(seconds);
}

}  // namespace bench
