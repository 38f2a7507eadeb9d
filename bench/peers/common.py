"""Helpers shared by the PyTorch peers in this directory: logging, sample statistics, CUDA-event
timing, JSON output and the command line's common parts.

The peers run as `python3 bench/peers/NAME.py`, so this directory is first on sys.path and
they import this module as `common`. Needs only torch.
"""

import argparse
import json
import math
import sys
import time

try:
    import torch
except ImportError as missing:  # a clear line, and --help, without the packages
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    sys.exit(f"{sys.argv[0]}: needs torch ({missing})")

# L2 cache size assumed when rotating inputs past it (the H200's is 60 MB).
L2_BYTES = 60e6


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo = int(math.floor(pos))
    hi = min(len(sorted_values) - 1, lo + 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples, unit="us"):
    """Median, 10th and 90th percentiles and minimum of samples in `unit` (key suffix)."""
    s = sorted(samples)
    return {
        f"median_{unit}": percentile(s, 0.5),
        f"p10_{unit}": percentile(s, 0.1),
        f"p90_{unit}": percentile(s, 0.9),
        f"min_{unit}": s[0] if s else float("nan"),
        "samples": len(s),
    }


def rotation_count(bytes_per_set, factor=3, max_sets=16, min_sets=1):
    """Input sets that together span `factor` times the L2 cache (min_sets to max_sets)."""
    n = math.ceil(L2_BYTES * factor / max(1, bytes_per_set))
    return max(min_sets, min(max_sets, n))


def time_gpu(fn, warmup, reps):
    """CUDA events around each call of fn(i), enqueued back to back; i counts warm-up too."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    t0 = time.perf_counter()
    for r in range(reps):
        starts[r].record()
        fn(warmup + r)
        ends[r].record()
    host_us = (time.perf_counter() - t0) * 1e6 / reps
    torch.cuda.synchronize()
    out = summarize([s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)])
    out["host_us"] = host_us
    return out


def clean(value):
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def make_parser(doc):
    """An argument parser whose help is the peer's docstring `doc`, as written."""
    return argparse.ArgumentParser(description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def cuda_missing():
    """True, after printing the JSON error line, when torch cannot use CUDA."""
    if torch.cuda.is_available():
        return False
    print(json.dumps({"error": "CUDA is not available to torch"}))
    return True


def print_result(result, one_line):
    """Prints `result` as JSON: one line (--json) or indented."""
    print(json.dumps(clean(result)) if one_line else json.dumps(clean(result), indent=2))
