#!/usr/bin/env bash
# Builds and runs the three tiny consumer projects in tests/consumers/, proving each way
# a C++ project can use ringsock: as a Meson subproject (dependency('ringsock') through
# the override), installed through pkg-config, installed through CMake's
# find_package(ringsock) and ringsock::ringsock. Prints one line per consumer and exits
# non-zero if any failed.
#
#   scripts/check_consumers.sh DESTDIR [PREFIX]
#
# DESTDIR is where `meson install --destdir DESTDIR` staged the files ("/" or "" for a
# real installation); PREFIX is the Meson prefix (default /usr/local). CXX is honoured.
set -uo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 DESTDIR [PREFIX]" >&2
    exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
destdir=${1%/}
prefix=${2:-/usr/local}
root="$destdir$prefix"
work=$(mktemp -d /tmp/ringsock-consumers-XXXXXX)
trap 'rm -rf "$work"' EXIT
failed=0

run() {  # $1 = consumer name, rest = command; the log is shown only on failure
    local name=$1
    shift
    if "$@" >"$work/$name.log" 2>&1; then
        echo "consumer $name: ok"
    else
        echo "consumer $name: FAILED"
        sed 's/^/    /' "$work/$name.log" | tail -40
        failed=1
    fi
}

# 1. Meson subproject: needs no installation.
meson_subproject() {
    meson setup "$work/meson" "$repo/tests/consumers/meson_subproject" &&
        ninja -C "$work/meson" &&
        "$work/meson/app"
}
run meson-subproject meson_subproject

# 2. pkg-config, against the installed ringsock.pc.
pkgconfig_consumer() {
    local pc
    pc=$(find "$root" -name ringsock.pc -path '*pkgconfig*' 2>/dev/null | head -1)
    [ -n "$pc" ] || { echo "no ringsock.pc under $root"; return 1; }
    cp -r "$repo/tests/consumers/pkgconfig" "$work/pkgconfig"
    cp "$repo/tests/consumers/main.cpp" "$work/main.cpp"  # the Makefile builds ../main.cpp
    PKG_CONFIG_PATH="$(dirname "$pc")" PKG_CONFIG_SYSROOT_DIR="$destdir" \
        make -C "$work/pkgconfig" ${CXX:+CXX="$CXX"} &&
        "$work/pkgconfig/app"
}
run pkgconfig pkgconfig_consumer

# 3. CMake find_package, against the installed ringsockConfig.cmake.
cmake_consumer() {
    [ -n "$(find "$root" -name ringsockConfig.cmake 2>/dev/null | head -1)" ] ||
        { echo "no ringsockConfig.cmake under $root"; return 1; }
    cmake -S "$repo/tests/consumers/cmake" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$root" \
        ${CXX:+-DCMAKE_CXX_COMPILER="$CXX"} &&
        cmake --build "$work/cmake" &&
        "$work/cmake/app"
}
run cmake cmake_consumer

exit $failed
