"""Latency figures from a load tool's output, as `metric value` lines (µs).

    percentiles.py h2load LOG   # h2load --log-file: start µs, status, latency µs
    percentiles.py wrk OUT      # wrk --latency: rps, p50/p90/p99, non-2xx
"""

import re
import sys


def quantile(sorted_values, q):
    if not sorted_values:
        return 0
    i = min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def h2load(path):
    latencies = []
    failed = 0
    with open(path) as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) < 3:
                continue
            if cols[1].strip() != "200":
                failed += 1
                continue
            latencies.append(int(cols[2]))
    latencies.sort()
    for name, q in (("p50_us", 0.5), ("p90_us", 0.9), ("p99_us", 0.99)):
        print(name, quantile(latencies, q))
    print("logged", len(latencies))
    print("logged_failed", failed)


UNITS = {"us": 1, "ms": 1000, "s": 1_000_000}


def wrk(path):
    text = open(path).read()
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    print("rps", m.group(1) if m else 0)
    for pct, name in (("50", "p50_us"), ("90", "p90_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        print(name, round(float(m.group(1)) * UNITS[m.group(2)]) if m else 0)
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    print("non_2xx", m.group(1) if m else 0)
    m = re.search(r"Socket errors:.*", text)
    print("socket_errors", 0 if not m else sum(int(x) for x in re.findall(r"\d+", m.group(0))))


if __name__ == "__main__":
    {"h2load": h2load, "wrk": wrk}[sys.argv[1]](sys.argv[2])
