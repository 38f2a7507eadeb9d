#!/usr/bin/env python3
"""Sums the kernel durations of an Nsight Compute raw CSV by kernel name, per profiled region.

    python3 bench/ncu_kernels.py NCU_CSV MODES [TOP]

NCU_CSV: `ncu ... --metrics gpu__time_duration.sum --csv --page raw --log-file NCU_CSV` of
bench/gpt2_profile.ts, whose regions (a prefill, then a decode step, per mode in MODES, a
comma-separated list) each end with an int64 `abs` kernel. Prints, per region, the kernel
count, the total, and the TOP (default 25) kernels by total time: total, count, average.
"""
import collections
import csv
import sys


def main():
    if len(sys.argv) < 3 or {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0 if {"-h", "--help"} & set(sys.argv[1:]) else 2)
    path, modes = sys.argv[1], sys.argv[2].split(",")
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    with open(path) as f:
        rows = csv.reader([line for line in f if line.startswith('"')])
        header = next(rows)
        name_at = header.index("Kernel Name")
        time_at = header.index("gpu__time_duration.sum")
        kernels = []
        for row in rows:
            try:
                kernels.append((row[name_at], float(row[time_at].replace(",", ""))))
            except ValueError:
                pass  # the units row
    regions, current = [], []
    for name, ns in kernels:
        if "abs_i64" in name:
            regions.append(current)
            current = []
        else:
            current.append((name, ns))
    labels = [f"{mode} {phase}" for mode in modes for phase in ("prefill", "decode")]
    for label, region in zip(labels, regions):
        total, count = collections.defaultdict(float), collections.Counter()
        for name, ns in region:
            total[name[:80]] += ns
            count[name[:80]] += 1
        print(f"== {label}: {len(region)} kernels, sum {sum(total.values()) / 1e3:.1f} us")
        for name, ns in sorted(total.items(), key=lambda item: -item[1])[:top]:
            print(f"{ns / 1e3:9.1f} us {count[name]:4d}x {ns / 1e3 / count[name]:8.2f}  {name}")


if __name__ == "__main__":
    main()
