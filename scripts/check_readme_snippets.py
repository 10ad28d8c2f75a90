#!/usr/bin/env python3
"""Checks that every ```cpp block in README.md appears verbatim (ignoring indentation
and blank lines) in one of examples/*.cpp, so README code is code that CI compiles."""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
readme = (root / "README.md").read_text()
def norm(text):
    return [l.strip() for l in text.splitlines() if l.strip()]
sources = {p.name: norm(p.read_text()) for p in sorted((root / "examples").glob("*.cpp"))}
blocks = re.findall(r"```cpp\n(.*?)```", readme, re.S)
bad = 0
for i, block in enumerate(blocks, 1):
    lines = [l for l in norm(block) if l != "// ..."]
    found = False
    for name, src in sources.items():
        # every line of the block, in order, as a subsequence of contiguous runs
        pos = 0
        ok = True
        for l in lines:
            try:
                pos = src.index(l, pos) + 1
            except ValueError:
                ok = False
                break
        if ok:
            found = True
            break
    if not found:
        bad += 1
        print(f"README cpp block {i} is not in any examples/*.cpp:\n{block}", file=sys.stderr)
print(f"{len(blocks) - bad} passed, {bad} failed")
sys.exit(1 if bad else 0)
