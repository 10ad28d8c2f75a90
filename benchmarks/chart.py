#!/usr/bin/env python3
"""Turns `ringsock_bench --json` output into a bar chart (PNG or SVG) with gnuplot.

    build/benchmarks/ringsock_bench --json > results.json
    python3 benchmarks/chart.py results.json -o chart.png
    python3 benchmarks/chart.py run1.json run2.json run3.json -o chart.png   # medians over the runs

One cluster per workload, one bar per implementation, each bar the implementation's
median divided by the baseline's median in the same run (the number the table prints
in its xraw_uring_floor column), so 1.0 is the strongest hand-written liburing
schedule; a dashed line marks the 0.95 target. --baseline picks another ratio
column (e.g. raw_uring_preposted); results from before the split, whose only raw
baseline was "raw_uring", use that. With several results each bar is the median of the
same-run ratios over the runs. Needs gnuplot (Debian: gnuplot-nox).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

# The first of these that the results have a ratio for is the 1.0 line.
BASELINES = ["raw_uring_floor", "raw_uring"]
# Bars in this order, when present.
DEFAULT_IMPLS = ["ringsock", "raw_uring_coro", "raw_uring_preposted", "raw_uring_mshot", "asio", "epoll", "blocking"]
LABELS = {
    "ringsock": "ringsock",
    "ringsock_nodt": "ringsock, no DEFER_TASKRUN",
    "raw_uring_floor": "raw liburing, recv behind send (floor)",
    "raw_uring_preposted": "raw liburing, recv pre-posted",
    "raw_uring_preposted_nodt": "raw liburing, pre-posted, no DEFER_TASKRUN",
    "raw_uring_mshot": "raw liburing, multishot + buffer ring",
    "raw_uring_coro": "floor schedule, minimal coroutines",
    "raw_uring": "raw liburing",
    "raw_uring_nodt": "raw liburing, no DEFER_TASKRUN",
    "asio": "Boost.Asio (io_uring)",
    "epoll": "epoll",
    "blocking": "blocking syscalls",
}


def load(path):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if "results" not in data:
        sys.exit(f"chart.py: {path}: no 'results' (is it ringsock_bench --json output?)")
    return data


def pick_baseline(data):
    for b in BASELINES:
        if any(r.get("ratios", {}).get(b) is not None for r in data["results"]):
            return b
    sys.exit(f"chart.py: no result has a ratio to any of {', '.join(BASELINES)}; run the benchmark without --filter")


def ratios(runs, impls, baseline):
    """{workload: {impl: ratio}} in the order workloads first appear; with several runs,
    the median of each cell's same-run ratios."""
    samples = {}
    for data in runs:
        for r in data["results"]:
            if r.get("error"):
                continue
            ratio = r.get("ratios", {}).get(baseline)
            if ratio is None:
                continue
            samples.setdefault(r["workload"], {}).setdefault(r["impl"], []).append(ratio)
    table = {w: {i: statistics.median(xs) for i, xs in cells.items()} for w, cells in samples.items()}
    workloads = [w for w in table if any(i in table[w] for i in impls)]
    if not workloads:
        sys.exit(f"chart.py: no result has a ratio to {baseline}; run the benchmark without --filter")
    return workloads, table


def gnuplot_script(datafile, out, fmt, title, impls, n_workloads, baseline):
    width = max(900, 95 * n_workloads + 200)
    term = (f"pngcairo size {width},560 font 'Sans,10'" if fmt == "png"
            else f"svg size {width},560 font 'Sans,10' background rgb 'white'")
    lines = [
        f"set terminal {term}",
        f"set output '{out}'",
        f"set title \"{title}\" noenhanced",
        "set style data histograms",
        "set style histogram clustered gap 1",
        "set style fill solid 0.85 border -1",
        "set boxwidth 0.9",
        "set datafile separator '\\t'",
        "set datafile missing '-'",
        "set key outside top center horizontal noenhanced",
        f"set ylabel 'rate / {LABELS.get(baseline, baseline)} rate, same run' noenhanced",
        "set yrange [0:*]",
        "set grid ytics",
        "set xtics rotate by 30 right noenhanced",
        "set arrow from graph 0, first 1 to graph 1, first 1 nohead lw 2 lc rgb 'black' front",
        "set arrow from graph 0, first 0.95 to graph 1, first 0.95 nohead dt 2 lw 1 lc rgb 'red' front",
    ]
    plots = []
    for k, impl in enumerate(impls):
        label = LABELS.get(impl, impl)
        xt = ":xtic(1)" if k == 0 else ""
        plots.append(f"'{datafile}' using {k + 2}{xt} title \"{label}\"")
    lines.append("plot " + ", \\\n     ".join(plots))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="output of ringsock_bench --json (several: medians over the runs)")
    ap.add_argument("-o", "--output", required=True, help="chart file: .png or .svg")
    ap.add_argument("--impl", action="append", help="implementations to draw (repeatable); default: "
                    + ", ".join(DEFAULT_IMPLS))
    ap.add_argument("--baseline", help="ratio column that is the 1.0 line (default: the first of "
                    + ", ".join(BASELINES) + " present)")
    ap.add_argument("--title", help="chart title (default: from the run's machine description)")
    args = ap.parse_args()

    fmt = os.path.splitext(args.output)[1].lower().lstrip(".")
    if fmt not in ("png", "svg"):
        sys.exit("chart.py: --output must end in .png or .svg")
    gnuplot = shutil.which("gnuplot")
    if gnuplot is None:
        sys.exit("chart.py: gnuplot not found (apt-get install gnuplot-nox)")

    runs = [load(p) for p in args.json]
    data = runs[0]
    baseline = args.baseline or pick_baseline(data)
    wanted = args.impl or ([i for i in DEFAULT_IMPLS if i != baseline] +
                           (["raw_uring_nodt"] if baseline == "raw_uring" else []))
    workloads, table = ratios(runs, wanted, baseline)
    impls = [i for i in wanted if any(i in table[w] for w in workloads)]
    title = args.title or (f"ringsock vs {LABELS.get(baseline, baseline)}: {data.get('cpu', '?')} x{data.get('cpus', '?')}, "
                           f"Linux {data.get('kernel', '?')}, {data.get('compiler', '?')}, "
                           f"liburing {data.get('liburing', '?')}")

    with tempfile.TemporaryDirectory(prefix="ringsock-chart-") as tmp:
        datafile = os.path.join(tmp, "ratios.tsv")
        with open(datafile, "w", encoding="utf-8") as f:
            for w in workloads:
                cells = [f"{table[w][i]:.4f}" if i in table[w] else "-" for i in impls]
                f.write("\t".join([w] + cells) + "\n")
        script = os.path.join(tmp, "chart.gp")
        with open(script, "w", encoding="utf-8") as f:
            f.write(gnuplot_script(datafile, os.path.abspath(args.output), fmt, title, impls, len(workloads), baseline))
        proc = subprocess.run([gnuplot, script], capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(args.output) or os.path.getsize(args.output) == 0:
            sys.exit(f"chart.py: gnuplot failed ({proc.returncode}): {proc.stderr.strip()}")
    print(f"chart.py: wrote {args.output}: {len(workloads)} workloads x {len(impls)} implementations")


if __name__ == "__main__":
    main()
