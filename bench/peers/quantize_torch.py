#!/usr/bin/env python3
"""PyTorch peers of bench/gpu_quantize.ts: per-tensor quantization of 2^N elements.

Usage:
    python3 bench/peers/quantize_torch.py [--size-log2 28] [--iters 50] [--quick] [--json]
                                          [--scale S] [--check-dir DIR]

Figures (CUDA-event medians per call; warm-up first; inputs rotate among at least two
torch.randn buffers, each larger than the 60 MB L2 cache; scale S, default 4/127):
    f32_i8    torch.quantize_per_tensor(x, S, 0, torch.qint8); a torch.compile'd
              torch.clamp(torch.round(x / S), -128, 127).to(torch.int8); the same eager
    f32_fp8   torch.compile'd (x / S).clamp(-448, 448).to(torch.float8_e4m3fn); eager
    bf16_fp8  torch.compile'd (x.float() / S).clamp(-448, 448).to(torch.float8_e4m3fn); eager
Effective rate = bytes read + written per call (5, 5 and 3 bytes per element) / time.

--check-dir DIR: also reads DIR/x_f32.bin (float32, little endian) and DIR/x_bf16.bin
(bfloat16 bits), computes each path on those values and writes the raw results (int8, or
fp8 e4m3fn bytes) as DIR/<path>.bin for the caller to compare with its own:
    eager_f32_i8     torch.clamp(torch.round(x / s), -128, 127).to(torch.int8), s a 0-dim CUDA
                     tensor: a true IEEE division (a Python float divisor makes PyTorch
                     multiply by its reciprocal instead)
    compile_f32_i8   the compiled function (S a Python float constant)
    qpt_f32_i8       torch.quantize_per_tensor(...).int_repr()
    eager_f32_fp8, compile_f32_fp8, eager_bf16_fp8, compile_bf16_fp8   likewise for fp8
The compiled functions run on a full-size buffer whose first elements are the check values,
so they are not recompiled for another shape.

Logs go to stderr; with --json the last stdout line is one JSON object
{"cases": {NAME: {PATH: stats}}, "n": N, "sets": K, "torch": VERSION, "device": NAME}.
Needs only torch.
"""

import os
import sys
import time

try:
    import torch
except ImportError as missing:  # a clear line, and --help, without the packages
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    sys.exit(f"{sys.argv[0]}: needs torch ({missing})")

import common
from common import cuda_missing, log, make_parser, print_result


def rotation_count(bytes_per_set):
    """At least two sets, spanning three times the L2 cache."""
    return common.rotation_count(bytes_per_set, min_sets=2)


def time_gpu(fn, warmup, reps):
    """common.time_gpu, and whether the host's enqueueing set the pace."""
    out = common.time_gpu(fn, warmup, reps)
    out["host_bound"] = out["host_us"] >= 0.9 * out["median_us"]
    return out


def with_rate(stats, bytes_per_call):
    stats["bytes_per_call"] = bytes_per_call
    stats["tb_per_s"] = bytes_per_call / (stats["median_us"] * 1e-6) / 1e12
    return stats


def main():
    parser = make_parser(__doc__)
    parser.add_argument("--size-log2", type=int, default=28)
    parser.add_argument("--iters", type=int, default=0, help="timed calls (default 50, quick 30)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    parser.add_argument("--scale", type=float, default=4.0 / 127.0)
    parser.add_argument("--check-dir", default=None)
    args = parser.parse_args()
    if cuda_missing():
        return 1

    n = 1 << args.size_log2
    reps = args.iters or (30 if args.quick else 50)
    warmup = 5
    # The same float32 value the caller uses.
    scale = float(torch.tensor(args.scale, dtype=torch.float32))
    scale_t = torch.tensor(scale, dtype=torch.float32, device="cuda")
    sets = rotation_count(4 * n)
    g = torch.Generator(device="cuda")
    g.manual_seed(1234)
    log(f"quantize_torch: n = 2^{args.size_log2}, {sets} input sets, {reps} reps, "
        f"scale {scale!r}")
    # Standard deviation 0.5, as the caller's data: int8 saturates beyond 8 sigma.
    xs = [torch.randn(n, generator=g, device="cuda") * 0.5 for _ in range(sets)]
    xs_bf16 = [x.to(torch.bfloat16) for x in xs]

    def q_i8(x):
        return torch.clamp(torch.round(x / scale), -128, 127).to(torch.int8)

    def q_fp8(x):
        return (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn)

    def q_bf16_fp8(x):
        return (x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)

    compiled = {}
    compile_seconds = {}
    for name, fn, inputs in (("f32_i8", q_i8, xs), ("f32_fp8", q_fp8, xs),
                             ("bf16_fp8", q_bf16_fp8, xs_bf16)):
        t0 = time.perf_counter()
        c = torch.compile(fn, fullgraph=True, dynamic=False)
        c(inputs[0])
        torch.cuda.synchronize()
        compiled[name] = c
        compile_seconds[name] = time.perf_counter() - t0
        log(f"  compiled {name} in {compile_seconds[name]:.1f} s")

    # No inference_mode: the compiled functions guard on the grad mode they were compiled in,
    # and the inputs do not require grad anyway.
    cases = {}
    cases["f32_i8"] = {
        "compile": with_rate(time_gpu(lambda i: compiled["f32_i8"](xs[i % sets]),
                                      warmup, reps), 5 * n),
        "quantize_per_tensor": with_rate(time_gpu(
            lambda i: torch.quantize_per_tensor(xs[i % sets], scale, 0, torch.qint8),
            warmup, reps), 5 * n),
        "eager": with_rate(time_gpu(lambda i: q_i8(xs[i % sets]), warmup, reps), 5 * n),
    }
    cases["f32_fp8"] = {
        "compile": with_rate(time_gpu(lambda i: compiled["f32_fp8"](xs[i % sets]),
                                      warmup, reps), 5 * n),
        "eager": with_rate(time_gpu(lambda i: q_fp8(xs[i % sets]), warmup, reps), 5 * n),
    }
    cases["bf16_fp8"] = {
        "compile": with_rate(time_gpu(lambda i: compiled["bf16_fp8"](xs_bf16[i % sets]),
                                      warmup, reps), 3 * n),
        "eager": with_rate(time_gpu(lambda i: q_bf16_fp8(xs_bf16[i % sets]), warmup, reps),
                           3 * n),
    }
    for name, paths in cases.items():
        log(f"  {name}: " + ", ".join(
            f"{p} {s['median_us']:.1f} us ({s['tb_per_s']:.2f} TB/s)" for p, s in paths.items()))

    written = []
    if args.check_dir:
        written = write_checks(args.check_dir, compiled, scale, scale_t, xs[0], xs_bf16[0])

    summary = {
        "cases": cases,
        "compile_seconds": compile_seconds,
        "n": n,
        "sets": sets,
        "scale": scale,
        "checks_written": written,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
    }
    print_result(summary, args.json)
    return 0


def read_values(path, dtype):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    # Read as raw 16- or 32-bit words, then reinterpret (frombuffer need not know bfloat16).
    raw = torch.frombuffer(data, dtype=torch.int16 if dtype.itemsize == 2 else torch.int32)
    return raw.view(dtype).to("cuda")


def write_raw(path, t):
    data = t.contiguous().view(torch.uint8).cpu()
    try:
        raw = data.numpy().tobytes()
    except (ImportError, RuntimeError):  # torch without numpy
        raw = bytes(data.tolist())
    with open(path, "wb") as f:
        f.write(raw)


def in_full(buffer, values):
    """`buffer` (full size) with `values` in its first elements, so compiled code is reused."""
    full = buffer.clone()
    full[: values.numel()] = values
    return full


def write_checks(directory, compiled, scale, scale_t, x_full, x_full_bf16):
    x = read_values(os.path.join(directory, "x_f32.bin"), torch.float32)
    xb = read_values(os.path.join(directory, "x_bf16.bin"), torch.bfloat16)
    m, mb = x.numel(), xb.numel()
    results = {
        "eager_f32_i8": torch.clamp(torch.round(x / scale_t), -128, 127).to(torch.int8),
        "qpt_f32_i8": torch.quantize_per_tensor(x, scale, 0, torch.qint8).int_repr(),
        "eager_f32_fp8": (x / scale_t).clamp(-448, 448).to(torch.float8_e4m3fn),
        "eager_bf16_fp8": (xb.float() / scale_t).clamp(-448, 448).to(torch.float8_e4m3fn),
    }
    # The compiled functions only see full-size buffers (no recompilation for the check).
    if m <= x_full.numel() and mb <= x_full_bf16.numel():
        results["compile_f32_i8"] = compiled["f32_i8"](in_full(x_full, x))[:m]
        results["compile_f32_fp8"] = compiled["f32_fp8"](in_full(x_full, x))[:m]
        results["compile_bf16_fp8"] = compiled["bf16_fp8"](in_full(x_full_bf16, xb))[:mb]
    for name, t in results.items():
        write_raw(os.path.join(directory, name + ".bin"), t)
    return sorted(results)


if __name__ == "__main__":
    sys.exit(main())
