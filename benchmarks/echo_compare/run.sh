#!/usr/bin/env bash
# Server CPU per echo round trip: ringsock's examples/echo_server against tokio,
# Boost.Asio (epoll and io_uring backends) and a plain epoll C server (issue 12).
# See the "echo_compare" section of benchmarks/README.md.
#
#   benchmarks/echo_compare/run.sh [--echo-server PATH] [--rounds N] [--duration SEC]
#       [--warmup SEC] [--pin split|same] [--conns "1 64"] [--servers LIST]
#       [--build-dir DIR] [--raw FILE] [--before PATH]
#
# --before PATH adds another echo_server build as the row "ringsock_before" (e.g. the
# previous commit's), so a change is measured against its predecessor in the same rounds.
# Builds what is missing into --build-dir (default: build-echo-compare/ at the top of
# the repository), then for each round starts each server in turn (the order rotated
# every round) pinned to CPU 0, runs the load generator pinned to CPU 1 (--pin same: both
# on CPU 0) once per connection count, and stops the server. The load generator samples
# the server's utime+stime from /proc/PID/stat after the warm-up and at the end; the
# table shows medians over the rounds.
#
# Packages (Debian 12): build-essential meson ninja-build pkg-config liburing-dev util-linux
# (taskset); for the Asio rows libboost1.81-dev (or libboost-dev); for the tokio row
# cargo librust-tokio-dev (built offline from Debian's crates). A missing optional
# peer is skipped with a message naming its packages.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

echo_server=""
rounds=5
duration=4
warmup=0.3
pin="split"
conns_list="1 64"
only=""
build="$root/build-echo-compare"
raw=""
before=""

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
    case "$1" in
        --echo-server) echo_server=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --pin) pin=$2; shift 2 ;;
        --conns) conns_list=$2; shift 2 ;;
        --servers) only=$2; shift 2 ;;
        --before) before=$2; shift 2 ;;
        --build-dir) build=$2; shift 2 ;;
        --raw) raw=$2; shift 2 ;;
        -h | --help) usage 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; usage 2 >&2 ;;
    esac
done
case "$pin" in split | same) ;; *) echo "run.sh: --pin is split or same" >&2; exit 2 ;; esac
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --rounds wants a positive number" >&2; exit 2; }

need() {  # need COMMAND PACKAGES: a tool without which nothing can run
    command -v "$1" >/dev/null || { echo "run.sh: $1 not found: apt-get install -y $2" >&2; exit 1; }
}
need cc build-essential
need taskset util-linux
mkdir -p "$build"
build=$(cd "$build" && pwd)

# stale OUTPUT INPUT...: true when OUTPUT is missing or older than an input.
stale() {
    local out=$1 f
    shift
    [[ -x "$out" ]] || return 0
    for f in "$@"; do [[ "$f" -nt "$out" ]] && return 0; done
    return 1
}

# --- build -----------------------------------------------------------------------------
declare -a names=() cmds=()
add_server() { names+=("$1"); cmds+=("$2"); }

if [[ -z "$echo_server" ]]; then
    need meson meson
    need ninja ninja-build
    if [[ ! -f "$build/ringsock/build.ninja" ]]; then
        echo "== meson setup $build/ringsock (release)"
        meson setup "$build/ringsock" "$root" --buildtype=release -Dtests=false -Dbenchmarks=false >/dev/null
    fi
    echo "== ninja examples/echo_server"
    ninja -C "$build/ringsock" -j1 examples/echo_server >/dev/null
    echo_server="$build/ringsock/examples/echo_server"
fi
[[ -x "$echo_server" ]] || { echo "run.sh: $echo_server is not an executable" >&2; exit 1; }
echo_server=$(cd "$(dirname "$echo_server")" && pwd)/$(basename "$echo_server")
add_server ringsock "$echo_server --threads 1"
if [[ -n "$before" ]]; then
    [[ -x "$before" ]] || { echo "run.sh: $before is not an executable" >&2; exit 1; }
    add_server ringsock_before "$(cd "$(dirname "$before")" && pwd)/$(basename "$before") --threads 1"
fi

if stale "$build/loadgen" "$here/loadgen.c"; then
    echo "== cc loadgen"
    cc -O2 -Wall -o "$build/loadgen" "$here/loadgen.c"
fi
if stale "$build/epoll_echo" "$here/epoll_echo.c"; then
    echo "== cc epoll_echo"
    cc -O2 -Wall -o "$build/epoll_echo" "$here/epoll_echo.c"
fi

if ! command -v cargo >/dev/null || ! compgen -G "/usr/share/cargo/registry/tokio-1*" >/dev/null; then
    echo "run.sh: skipping tokio: needs cargo and Debian's tokio crate: apt-get install -y cargo librust-tokio-dev" >&2
else
    src=(Cargo.toml .cargo/config.toml src/main.rs)
    if stale "$build/tokio_echo" "${src[@]/#/$here/tokio_echo/}"; then
        echo "== cargo build --release --offline tokio_echo (Debian's crates)"
        # A copy, so that Cargo.lock and target/ land in the build directory.
        rm -rf "$build/tokio_src"
        mkdir -p "$build/tokio_src/src" "$build/tokio_src/.cargo"
        for f in "${src[@]}"; do cp "$here/tokio_echo/$f" "$build/tokio_src/$f"; done
        if (cd "$build/tokio_src" && cargo build --release --offline -j1 -q); then
            cp "$build/tokio_src/target/release/tokio_echo" "$build/tokio_echo"
        else
            echo "run.sh: skipping tokio: cargo build failed (is librust-tokio-dev installed?)" >&2
        fi
    fi
    if [[ -x "$build/tokio_echo" ]]; then add_server tokio "$build/tokio_echo"; fi
fi

if [[ ! -f /usr/include/boost/asio.hpp ]] || ! command -v g++ >/dev/null; then
    echo "run.sh: skipping Asio: needs g++ and Boost headers: apt-get install -y g++ libboost1.81-dev" >&2
else
    if stale "$build/asio_epoll" "$here/asio_echo.cpp"; then
        echo "== g++ asio_echo (epoll reactor)"
        g++ -O2 -std=c++20 -o "$build/asio_epoll" "$here/asio_echo.cpp" || rm -f "$build/asio_epoll"
    fi
    if [[ -x "$build/asio_epoll" ]]; then add_server asio_epoll "$build/asio_epoll"; fi
    if [[ ! -f /usr/include/liburing.h ]]; then
        echo "run.sh: skipping asio_uring: needs liburing: apt-get install -y liburing-dev" >&2
    else
        if stale "$build/asio_uring" "$here/asio_echo.cpp"; then
            echo "== g++ asio_echo (io_uring backend)"
            g++ -O2 -std=c++20 -DBOOST_ASIO_HAS_IO_URING -DBOOST_ASIO_DISABLE_EPOLL \
                -o "$build/asio_uring" "$here/asio_echo.cpp" -luring || rm -f "$build/asio_uring"
        fi
        if [[ -x "$build/asio_uring" ]]; then add_server asio_uring "$build/asio_uring"; fi
    fi
fi
add_server epoll_c "$build/epoll_echo"

if [[ -n "$only" ]]; then  # --servers a,b: keep those (ringsock always, for the ratios)
    declare -a keep_n=() keep_c=()
    for i in "${!names[@]}"; do
        if [[ ${names[i]} == ringsock* || ",$only," == *",${names[i]},"* ]]; then
            keep_n+=("${names[i]}"); keep_c+=("${cmds[i]}")
        fi
    done
    names=("${keep_n[@]}"); cmds=("${keep_c[@]}")
fi

# --- run -------------------------------------------------------------------------------
server_cpu=0 gen_cpu=1
if [[ $pin == same ]]; then
    gen_cpu=0
elif (($(nproc) < 2)); then
    gen_cpu=0
    echo "run.sh: only one CPU: server and load generator share CPU 0" >&2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/echo_compare.XXXXXX")
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then kill -KILL "$server_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
[[ -n "$raw" ]] || raw="$build/last_raw.tsv"
: >"$raw"

stop_server() {
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

echo "== $(date -u '+%F %T UTC')  $(uname -r)  $(nproc) CPUs  server on CPU $server_cpu, load generator on CPU $gen_cpu"
echo "== echo_server: $echo_server"
echo "== load before: $(uptime)"
echo "== $rounds rounds x ${#names[@]} servers x conns {$conns_list}: ${warmup} s warm-up + ${duration} s each"
n=${#names[@]}
for ((r = 0; r < rounds; r++)); do
    order=""
    for ((k = 0; k < n; k++)); do
        i=$(((k + r) % n))
        name=${names[i]}
        order+=" $name"
        sock="$tmp/$name.sock"
        # shellcheck disable=SC2086  # the command carries its arguments
        taskset -c "$server_cpu" ${cmds[i]} "$sock" >"$tmp/$name.log" 2>&1 &
        server_pid=$!
        for _ in $(seq 100); do [[ -S "$sock" ]] && break; sleep 0.05; done
        if [[ ! -S "$sock" ]]; then
            echo "run.sh: $name did not listen on $sock:" >&2
            cat "$tmp/$name.log" >&2
            stop_server
            continue
        fi
        conns=$conns_list
        if ((r % 2)); then conns=$(echo "$conns_list" | tr ' ' '\n' | tac | tr '\n' ' '); fi
        for c in $conns; do
            if out=$(taskset -c "$gen_cpu" "$build/loadgen" "$sock" "$c" "$duration" "$warmup" "$server_pid"); then
                us=$(sed -n 's/.*server_us_per_rt=\([0-9.]*\).*/\1/p' <<<"$out")
                rtps=$(sed -n 's/.*rt_per_s=\([0-9.]*\).*/\1/p' <<<"$out")
                ticks=$(sed -n 's/.*server_ticks=\([0-9]*\).*/\1/p' <<<"$out")
                printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$name" "$c" "$us" "$rtps" "$ticks" >>"$raw"
            else
                echo "run.sh: round $r $name conns=$c: load generator failed" >&2
            fi
        done
        stop_server
    done
    echo "   round $((r + 1))/$rounds:$order"
done
echo "== load after:  $(uptime)"

# --- table -----------------------------------------------------------------------------
median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -F'\t' -v s="$1" -v c="$2" -v f="$3" '$2 == s && $3 == c {print $f}' "$raw"; }
# Per round: the server's us/rt over ringsock's in the same round (run minutes apart at most).
paired() {
    awk -F'\t' -v s="$1" -v c="$2" '$3 == c && $2 == "ringsock" {b[$1] = $4} $3 == c && $2 == s {o[$1] = $4}
        END {for (r in o) if (b[r] > 0) print o[r] / b[r]}' "$raw"
}

echo
printf '%-11s %5s %10s %14s %8s %6s %10s %8s\n' server conns "us CPU/rt" "(min..max)" "rt/s" ticks "x ringsock" "paired"
for c in $conns_list; do
    base=$(col ringsock "$c" 4 | median)
    for name in "${names[@]}"; do
        [[ -n "$(col "$name" "$c" 4)" ]] || { printf '%-11s %5s %14s\n' "$name" "$c" "no result"; continue; }
        us=$(col "$name" "$c" 4 | median)
        lo=$(col "$name" "$c" 4 | sort -g | head -1 | xargs printf '%.2f')
        hi=$(col "$name" "$c" 4 | sort -g | tail -1 | xargs printf '%.2f')
        rtps=$(col "$name" "$c" 5 | median)
        ticks=$(col "$name" "$c" 6 | median)
        ratio=$(awk -v a="$us" -v b="$base" 'BEGIN {if (b > 0 && a != "nan") printf "%.2f", a / b; else print "-"}')
        pr=$(paired "$name" "$c" | median | xargs printf '%.2f' 2>/dev/null || echo -)
        printf '%-11s %5s %10.3f %14s %8.0f %6.0f %10s %8s\n' "$name" "$c" "$us" "($lo..$hi)" "$rtps" "$ticks" "$ratio" "$pr"
    done
done
echo
echo "us CPU/rt: median over $rounds rounds of the server's utime+stime per round trip (in clock ticks of"
echo "1/$(getconf CLK_TCK) s; ticks: median count of one measurement). x ringsock: times more CPU per round trip"
echo "than ringsock's echo_server (ratio of the medians); paired: median over rounds of that ratio within"
echo "each round. Raw rows (round server conns us rt/s ticks): $raw"
exit 0
