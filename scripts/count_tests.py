#!/usr/bin/env python3
"""Counts Catch2 test cases from a Meson test log (meson-logs/testlog.json).

Prints "P F S" (passed, failed, skipped test cases). A test program that failed
without a Catch2 summary (crash, timeout, fd leak) counts as one failed case.
"""
import json
import re
import sys

passed = failed = skipped = 0
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    line = line.strip()
    if not line:
        continue
    t = json.loads(line)
    out = t.get("stdout", "") or ""
    if t.get("stderr"):
        out += "\n" + t["stderr"]
    result = t.get("result", "")
    if result == "SKIP":
        skipped += 1
        continue
    m_all = re.search(r"All tests passed \((\d+) assertions? in (\d+) test cases?\)", out)
    m_mix = re.search(r"test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed", out)
    m_fail = re.search(r"test cases:\s*(\d+)\s*\|\s*(\d+) failed", out)
    if m_all:
        passed += int(m_all.group(2))
    elif m_mix:
        passed += int(m_mix.group(2))
        failed += int(m_mix.group(3))
    elif m_fail:
        failed += int(m_fail.group(2))
    elif result == "OK":
        passed += 1  # a non-Catch2 test (e.g. the fuzzer) that passed
    if result not in ("OK", "SKIP", "EXPECTEDFAIL") and not (m_mix or m_fail):
        failed += 1  # crashed, timed out, leaked descriptors, or no summary at all
    elif result not in ("OK", "SKIP", "EXPECTEDFAIL") and "FD LEAK" in out:
        failed += 1
print(passed, failed, skipped)
