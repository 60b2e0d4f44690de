"""Per-check figures from a callgrind profile of a server that answered N
checks between `callgrind_control -z` and `-d`: instructions and heap
allocations (calls into mimalloc's allocating entry points, which Rust's
allocations go through, and into libc's malloc, which C code such as aws-lc
calls), each divided by N. Prints "metric value" lines.

    callgrind_counts.py CALLGRIND_OUT N
"""

import re
import subprocess
import sys

path, n = sys.argv[1], int(sys.argv[2])
text = subprocess.run(
    ["callgrind_annotate", "--inclusive=yes", "--tree=caller", path],
    check=True, capture_output=True, text=True,
).stdout
lines = text.split("\n")
total = next(
    int(m.group(1).replace(",", ""))
    for m in (re.match(r"\s*([\d,]+) .*PROGRAM TOTALS", line) for line in lines)
    if m
)
print("instructions_per_check", round(total / n))


def calls_into(function):
    """Sums the call counts of the callers listed above FUNCTION's entry."""
    for i, line in enumerate(lines):
        if re.search(r"\*\s+\S*" + re.escape(function), line):
            count, j = 0, i - 1
            while j >= 0 and lines[j].strip():
                m = re.search(r"\(([\d,]+)x\)", lines[j])
                if m:
                    count += int(m.group(1).replace(",", ""))
                j -= 1
            return count
    return 0


ALLOCATORS = ("malloc.c:malloc [", ":mi_malloc_aligned [", ":mi_zalloc_aligned [")
print("mallocs_per_check", round(sum(calls_into(f) for f in ALLOCATORS) / n, 1))
