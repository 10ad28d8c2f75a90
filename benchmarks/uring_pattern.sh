#!/bin/sh
# Kernel-side pattern per operation of ringsock_bench cells: io_uring_enter calls,
# poll arms, task-work items, CQEs posted and plain send/recv syscalls, counted with
# perf tracepoints (needs root or perf_event_paranoid <= -1 and tracefs).
#
#   benchmarks/uring_pattern.sh [--bench PATH] [--iterations N] [--json] CELL...
#   benchmarks/uring_pattern.sh pingpong_1thread/raw_uring_floor pingpong_1thread/ringsock
#
# Each CELL (workload/impl, matched exactly) runs twice with --iterations N and 2N;
# the difference divided by N cancels setup and warm-up.  Counts are for the whole
# process (all threads).  One line per cell:
#   CELL enters=2.00 poll_arms=0.00 task_work=0.00 cqes=2.00 sends=0.00 recvs=0.00
set -eu

bench=${BENCH:-build-rel/benchmarks/ringsock_bench}
n=100000
json=0
cells=""
while [ $# -gt 0 ]; do
  case $1 in
    --bench) bench=$2; shift 2 ;;
    --iterations) n=$2; shift 2 ;;
    --json) json=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) cells="$cells $1"; shift ;;
  esac
done
[ -n "$cells" ] || cells="pingpong_1thread/raw_uring_preposted pingpong_1thread/raw_uring_floor pingpong_1thread/ringsock"
[ -x "$bench" ] || { echo "uring_pattern.sh: $bench not found (build it, or pass --bench)" >&2; exit 2; }
command -v perf >/dev/null || { echo "uring_pattern.sh: perf not found" >&2; exit 2; }

events=syscalls:sys_enter_io_uring_enter,io_uring:io_uring_poll_arm,io_uring:io_uring_task_add,io_uring:io_uring_complete,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvmsg,syscalls:sys_enter_epoll_wait
names="enters poll_arms task_work cqes sends recvs sendmsgs recvmsgs epoll_waits"

count() {  # count CELL ITERATIONS -> space-separated counts in $events order
  out=$(perf stat -x, -e "$events" -- "$bench" --iterations "$2" --filter "$1\$" 2>&1 >/dev/null) ||
    { echo "uring_pattern.sh: perf/bench failed for $1:" >&2; echo "$out" >&2; exit 1; }
  echo "$out" | awk -F, '$3 ~ /^(syscalls|io_uring):/ { printf "%s ", ($1 ~ /^[0-9]+$/ ? $1 : "nan") }'
}

first=1
[ "$json" = 1 ] && printf '{"iterations": %s, "cells": {' "$n"
for cell in $cells; do
  a=$(count "$cell" "$n")
  b=$(count "$cell" $((2 * n)))
  line=$(printf '%s\n%s\n%s\n' "$names" "$a" "$b" | awk -v n="$n" -v json="$json" '
    NR == 1 { for (i = 1; i <= NF; i++) name[i] = $i; k = NF }
    NR == 2 { for (i = 1; i <= NF; i++) a[i] = $i }
    NR == 3 { for (i = 1; i <= k; i++) {
        v = (b = $i) - a[i]; s = sprintf("%.2f", v / n)
        out = out (json ? sprintf("%s\"%s\": %s", (i > 1 ? ", " : ""), name[i], s) : sprintf(" %s=%s", name[i], s)) } }
    END { print out }')
  if [ "$json" = 1 ]; then
    [ $first = 1 ] || printf ', '
    printf '"%s": {%s}' "$cell" "$line"
  else
    echo "$cell$line"
  fi
  first=0
done
[ "$json" = 1 ] && printf '}}\n'
exit 0
