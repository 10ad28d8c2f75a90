#!/usr/bin/env python3
"""README table from a ringsock_bench --json result: one row per workload, ringsock's
rate and its ratio to each baseline measured in the same run.

    python3 benchmarks/table.py benchmarks/results/2026-12-02.json
    python3 benchmarks/table.py after.json --before before.json   # adds a column: ringsock's xepoll before
    python3 benchmarks/table.py run1.json run2.json run3.json     # each cell the median over the runs

With several results, each ratio is the median of the ratios measured within each run
(never a ratio of medians taken from different runs), and the rate the median rate.
"""

import argparse
import json
import statistics

LABELS = {
    "pingpong_1thread": "ping-pong 64 B, 1 thread",
    "pingpong_2thread": "ping-pong 64 B, 2 threads",
    "stream_4k": "stream 4 KiB",
    "stream_64k": "stream 64 KiB",
    "stream_1m": "stream 1 MiB",
    "conns_64": "64 connections ping-pong",
    "conns_1000": "1000 connections ping-pong",
    "accept_rate": "connect+accept+close",
    "fd_passing": "SCM_RIGHTS, 1 fd/msg",
    "seqpacket_64": "seqpacket 64 B (`receive_bytes`)",
    "dgram_64": "datagram 64 B (`receive_bytes`)",
    "seqpacket_64_recvmsg": "seqpacket 64 B (`receive`, recvmsg)",
    "dgram_64_recvmsg": "datagram 64 B (`receive`, recvmsg)",
}
BASELINES = [("epoll", "×epoll"), ("blocking", "×blocking"), ("raw_uring_floor", "×raw floor"),
             ("raw_uring_preposted", "×raw preposted"), ("asio", "×Asio"), ("raw_uring_coro", "×raw coro")]


def rate(r):
    m, unit = r["median"], r["unit"]
    if unit.startswith("bytes"):
        return f"{m / 1e9:.2f} GB/s"
    what = {"round trips/s": "rt/s", "connections/s": "/s", "descriptors/s": "fds/s", "messages/s": "msg/s"}
    return f"{m / 1e3:.0f}k {what.get(unit, unit)}"


def ringsock_rows(path):
    data = json.load(open(path, encoding="utf-8"))
    rows = {}
    for r in data["results"]:
        if r["impl"] == "ringsock" and not r.get("error"):
            rows[r["workload"]] = r
    # Ratios the benchmark does not print (Asio) come from the medians of the same run.
    medians = {(r["workload"], r["impl"]): r["median"] for r in data["results"] if not r.get("error")}
    for w, r in rows.items():
        for impl, _ in BASELINES:
            if impl not in r["ratios"] and medians.get((w, impl)):
                r["ratios"][impl] = r["median"] / medians[(w, impl)]
    return data, rows, set(medians)


def median_rows(paths):
    """ringsock_rows over several runs: per workload, the median rate and the median of
    each same-run ratio (over the runs that measured it)."""
    runs = [ringsock_rows(p) for p in paths]
    data, impls = runs[0][0], set().union(*(r[2] for r in runs))
    rows = {}
    for w in LABELS:
        per_run = [r[1][w] for r in runs if w in r[1]]
        if not per_run:
            continue
        row = dict(per_run[0])
        row["median"] = statistics.median(r["median"] for r in per_run)
        row["ratios"] = {}
        for impl, _ in BASELINES:
            xs = [r["ratios"][impl] for r in per_run if r["ratios"].get(impl)]
            if xs:
                row["ratios"][impl] = statistics.median(xs)
        rows[w] = row
    return data, rows, impls


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", nargs="+")
    ap.add_argument("--before", help="an earlier result: its ringsock ×epoll is shown beside")
    args = ap.parse_args()
    data, rows, impls = median_rows(args.result)
    before = ringsock_rows(args.before)[1] if args.before else {}
    head = ["workload", "ringsock"] + [label for _, label in BASELINES]
    if before:
        head.append("×epoll before")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for w, label in LABELS.items():
        r = rows.get(w)
        if r is None:
            continue
        cells = [label, rate(r)]
        for impl, _ in BASELINES:
            x = r["ratios"].get(impl) if (w, impl) in impls else None
            cells.append(f"{x:.2f}" if x else "–")
        if before:
            b = before.get(w)
            cells.append(f"{b['ratios']['epoll']:.2f}" if b and b["ratios"].get("epoll") else "–")
        print("| " + " | ".join(cells) + " |")
    print(f"\n{data.get('cpu', '?')}, {data.get('cpus', '?')} CPUs, Linux {data.get('kernel', '?')}, "
          f"{data.get('compiler', '?')}, liburing {data.get('liburing', '?')}")


if __name__ == "__main__":
    main()
