// Helpers shared by every benchmark program (ringsock_bench and the scale programs):
// what machine the numbers come from, JSON formatting, descriptor counting, the
// RLIMIT_NOFILE raise and a watchdog that ends a hung run.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace bench {

struct system_info {
  std::string kernel_release, kernel_version, machine, cpu;
  long cpus = 0;
  std::string compiler;
};

system_info get_system_info();

// A JSON string literal (quoted, escaped) and a number (null for NaN/inf).
std::string json_string(std::string_view s);
std::string json_number(double v);

// Entries in /proc/self/fd (including the one opendir uses while counting).
std::size_t count_open_fds();

// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
std::size_t raise_nofile();

// After `seconds`, writes "<program>: watchdog expired, aborting" and _exit(3)s.
// `program` must outlive the process (a string literal).
void arm_watchdog(unsigned seconds, const char* program);

}  // namespace bench
