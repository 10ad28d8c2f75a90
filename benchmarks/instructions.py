#!/usr/bin/env python3
"""User-space instructions per operation of ringsock_bench cells, with callgrind.

    python3 benchmarks/instructions.py                      # default cells
    python3 benchmarks/instructions.py --json
    python3 benchmarks/instructions.py pingpong_1thread/ringsock conns_64/raw_uring_floor

`perf stat -e instructions:u` is not available on our VMs, so this runs
`valgrind --tool=callgrind ringsock_bench --iterations N --json --filter CELL$...`
once. The benchmark zeroes callgrind's counters before each cell's measured ops
and dumps them after (one dump part per cell, named workload/impl), so setup,
warm-up and the other cells are excluded; all threads are counted. Each part's
`totals:` (or `summary:`) line divided by the ops the benchmark reports for that
cell is printed, one line per cell:

    pingpong_1thread/raw_uring_floor 574.1 instructions/op

Only cells that run under valgrind are measured: io_uring cells whose peer thread
waits in io_uring_enter (pingpong_2thread, stream_*, seqpacket_*, dgram_*) are
skipped by the benchmark (valgrind 3.19 deadlocks there); they are reported as
skipped. Kernel work is not counted (see uring_pattern.sh for the kernel side).
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

DEFAULT_CELLS = [
    "pingpong_1thread/blocking",
    "pingpong_1thread/raw_uring_preposted",
    "pingpong_1thread/raw_uring_floor",
    "pingpong_1thread/ringsock",
]


TRIGGER = "desc: Trigger: Client Request: "


def parse_dump(path):
    """(trigger name, instruction count) of one callgrind dump part."""
    name, totals, summary = None, None, None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(TRIGGER):
                name = line[len(TRIGGER):].strip()
            elif line.startswith("totals:"):
                totals = int(line.split()[1])
            elif line.startswith("summary:"):
                summary = int(line.split()[1])
    return name, totals if totals is not None else summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cells", nargs="*", help="workload/impl cells (default: " + ", ".join(DEFAULT_CELLS) + ")")
    ap.add_argument("--bench", default="build-rel/benchmarks/ringsock_bench", help="ringsock_bench binary")
    ap.add_argument("--iterations", type=int, default=20000, help="ops per cell (default 20000)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of lines")
    ap.add_argument("--keep", metavar="DIR", help="keep the callgrind dumps in DIR")
    args = ap.parse_args()

    cells = args.cells or DEFAULT_CELLS
    if not os.access(args.bench, os.X_OK):
        sys.exit(f"instructions.py: {args.bench} not found (build it, or pass --bench)")
    if shutil.which("valgrind") is None:
        sys.exit("instructions.py: valgrind not found (apt-get install valgrind)")

    tmp = args.keep or tempfile.mkdtemp(prefix="ringsock-callgrind-")
    os.makedirs(tmp, exist_ok=True)
    try:
        out_file = os.path.join(tmp, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", args.bench,
               "--iterations", str(args.iterations), "--json", "--filter", ",".join(c + "$" for c in cells)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            sys.exit(f"instructions.py: no JSON from the benchmark (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        ops = {f"{r['workload']}/{r['impl']}": r for r in report["results"]}
        counts = {}
        for path in glob.glob(out_file + "*"):
            name, total = parse_dump(path)
            if name is not None and total is not None:
                counts[name] = total
        rows = []
        for c in cells:
            r = ops.get(c)
            if r is None:
                rows.append({"cell": c, "instructions_per_op": None, "unit": None, "ops": 0,
                             "note": "not run (unknown cell, or skipped under valgrind)"})
            elif r.get("error"):
                rows.append({"cell": c, "instructions_per_op": None, "unit": r["unit"], "ops": r["ops"],
                             "note": "error: " + r["error"]})
            elif c not in counts or not r["ops"]:
                rows.append({"cell": c, "instructions_per_op": None, "unit": r["unit"], "ops": r["ops"],
                             "note": "no callgrind dump for this cell"})
            else:
                rows.append({"cell": c, "instructions_per_op": counts[c] / r["ops"], "unit": r["unit"],
                             "ops": r["ops"], "instructions": counts[c], "note": None})
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        print(json.dumps({"iterations": args.iterations, "tool": "callgrind (user space, all threads)",
                          "cells": rows}, indent=2))
    else:
        for r in rows:
            if r["instructions_per_op"] is None:
                print(f"{r['cell']} - instructions/op  # {r['note']}")
            else:
                what = r["unit"].removesuffix("/s") if r["unit"] else "op"
                print(f"{r['cell']} {r['instructions_per_op']:.1f} instructions/op  # per {what.rstrip('s')}, "
                      f"{r['ops']} ops")
    return 0 if all(r["instructions_per_op"] is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
