#!/usr/bin/env bash
# benchmarks/http_compare/run.sh: examples/http_server (--threads 1) against hyper 0.14
# (tokio current_thread) on the same keep-alive GET /info, over a Unix socket.
#
#   benchmarks/http_compare/run.sh [--build-dir DIR] [--rounds N] [--seconds S]
#                                  [--conns "1 64"] [--also NAME=BINARY]...
#
# Builds examples/http_server in DIR (meson, release; default build-http-compare at the
# repo root; an existing build dir is reused as it is configured), hyper_server with
# cargo offline from Debian's crate sources (apt-get install librust-hyper-dev
# librust-tokio-dev) and loadgen.c. --also adds another http_server binary (e.g. one
# built from an older commit) to the same rounds. Each round runs every server once
# per connection count, in a rotating order, server pinned to CPU 0 and loadgen to
# CPU 1 (when there are 2 CPUs). Per run: 1 s warm-up, then S seconds measured.
# Reported, median over the rounds: server CPU per request as utime+stime of all its
# threads (/proc/PID/stat: tick-sampled) and as the scheduler's exact run time
# (/proc/PID/task/*/schedstat), requests/s, p50 and p99 latency.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build="$root/build-http-compare"
rounds=3
seconds=5
conns="1 64"
declare -a names=() bins=()
while (($#)); do
    case "$1" in
        --build-dir) build=$(realpath -m "$2"); shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --conns) conns=$2; shift 2 ;;
        --also) names+=("${2%%=*}"); bins+=("$(realpath "${2#*=}")"); shift 2 ;;
        *) echo "usage: $0 [--build-dir DIR] [--rounds N] [--seconds S] [--conns \"1 64\"] [--also NAME=BINARY]..." >&2
           exit 2 ;;
    esac
done

echo "== building (ninja -j1, cargo -j1)" >&2
if [[ ! -f "$build/build.ninja" ]]; then
    meson setup "$build" "$root" --buildtype=release -Dtests=false -Dbenchmarks=false >&2
fi
ninja -C "$build" -j1 examples/http_server >&2
(cd "$here/hyper_server" && cargo build --release --offline -j1 --target-dir "$build/hyper_server" >&2)
cc -O2 -Wall -Wextra -o "$build/loadgen" "$here/loadgen.c"

names=(ringsock "${names[@]}" hyper)
bins=("$build/examples/http_server" "${bins[@]}" "$build/hyper_server/release/hyper_server")

server_cpu="" client_cpu=""
if (($(nproc) >= 2)); then server_cpu="taskset -c 0"; client_cpu="taskset -c 1"; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sock="$work/http.sock"

# run NAME BINARY CONNS: one measured run; appends "name conns fields..." to results.
run() {
    local name=$1 bin=$2 n=$3 pid line
    rm -f "$sock"
    if [[ $name == hyper ]]; then
        $server_cpu "$bin" "$sock" 2>/dev/null &
    else
        $server_cpu "$bin" "$sock" --threads 1 2>/dev/null &
    fi
    pid=$!
    for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
    line=$($client_cpu "$build/loadgen" "$sock" --conns "$n" --seconds "$seconds" --warmup 1 --pid "$pid") || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "$name conns=$n $line" | tee -a "$work/results" >&2
}

echo "== $rounds rounds, ${seconds} s each, conns: $conns" >&2
count=${#names[@]}
for ((r = 0; r < rounds; r++)); do
    for n in $conns; do
        for ((k = 0; k < count; k++)); do
            i=$(((k + r) % count))
            run "${names[i]}" "${bins[i]}" "$n"
        done
    done
done

median() { sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
field() { grep -o "$1=[0-9.-]*" | cut -d= -f2; }
printf '\n%-16s %6s %11s %13s %10s %10s %10s\n' server conns "cpu_us/req" "sched_us/req" "req/s" "p50_us" "p99_us"
for n in $conns; do
    for name in "${names[@]}"; do
        rows=$(grep "^$name conns=$n " "$work/results" || true)
        [[ -z $rows ]] && continue
        printf '%-16s %6s %11s %13s %10s %10s %10s\n' "$name" "$n" \
            "$(field cpu_us_per_req <<<"$rows" | median)" "$(field sched_us_per_req <<<"$rows" | median)" \
            "$(field rps <<<"$rows" | median)" \
            "$(field p50_us <<<"$rows" | median)" "$(field p99_us <<<"$rows" | median)"
    done
done
