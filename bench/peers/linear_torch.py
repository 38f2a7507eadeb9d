#!/usr/bin/env python3
"""PyTorch peers of bench/gpu_linear.ts: the same Linear figures, the PyTorch way.

Usage:
    python3 bench/peers/linear_torch.py --case NAME[,NAME...] [--json] [--quick]

Cases:
    w8a8_8192        quantize x per tensor, torch._int_mm(x8, w8.t()), .float() * (sx*sw) + b
    gpt2_768x2304    fp16 F.linear and the PyTorch W8A8 path at M=4096, K=768, N=2304
    gpt2_768x3072    ... K=768, N=3072
    gpt2_3072x768    ... K=3072, N=768
    fp8_8192         torch._scaled_mm, e4m3, rowwise scales + bf16 bias, 8192^3
    wo_m1_8192       fp16 F.linear M=1, 8192x8192 (and weight-only int8/int4 attempts)
    stack15          15 x Linear(256, 256), batch 1, fp32, wall per call: eager,
                     torch.compile default and mode="reduce-overhead"

Device times are CUDA-event medians per call (warm-up first, inputs rotated past the L2
cache, random normal data); wall times are per call over batches that end in a synchronize.
Logs go to stderr; with --json the last stdout line is one JSON object
{"cases": {NAME: {...}}, "torch": VERSION, "device": NAME}.
Needs only torch.
"""

import math
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError as missing:  # a clear line, and --help, without the packages
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    sys.exit(f"{sys.argv[0]}: needs torch ({missing})")

from common import (cuda_missing, log, make_parser, print_result, rotation_count, summarize,
                    time_gpu)


def time_wall(fn, warmup, reps, batch):
    """Wall time per call over batches of `batch` calls, each ending in a synchronize."""
    warmup_batches = max(1, math.ceil(warmup / batch))
    batches = max(1, math.ceil(reps / batch))
    samples = []
    call = 0
    for b in range(warmup_batches + batches):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(batch):
            fn(call)
            call += 1
        torch.cuda.synchronize()
        per_call = (time.perf_counter() - t0) * 1e6 / batch
        if b >= warmup_batches:
            samples.append(per_call)
    out = summarize(samples)
    out["batch"] = batch
    out["calls"] = batches * batch
    return out


def gen(seed):
    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    return g


def randn(shape, seed, dtype=torch.float32, std=1.0):
    t = torch.randn(shape, generator=gen(seed), device="cuda", dtype=torch.float32) * std
    return t.to(dtype)


def quantize_int8(x, scale):
    return torch.clamp(torch.round(x / scale), -128, 127).to(torch.int8)


# ---------------------------------------------------------------------------------------------


def case_w8a8_8192(quick):
    m = n = k = 8192
    x = randn((m, k), 1)
    w = randn((n, k), 2)
    b = randn((n,), 3, std=0.1)
    sx = x.abs().max() / 127.0
    sw = w.abs().amax(dim=1) / 127.0
    w8 = quantize_int8(w, sw[:, None])
    scale = sx * sw
    sets = rotation_count(m * k * 4)
    xs = [x] + [randn((m, k), 10 + i) for i in range(sets - 1)]

    def full_path(i):
        x8 = quantize_int8(xs[i % sets], sx)
        return torch._int_mm(x8, w8.t()).float() * scale + b

    x8s = [quantize_int8(t, sx) for t in xs]

    def int_mm_only(i):
        return torch._int_mm(x8s[i % sets], w8.t())

    warm, reps = (3, 10) if quick else (5, 30)
    res = time_gpu(full_path, warm, reps)
    res_mm = time_gpu(int_mm_only, warm, reps)
    ops = 2.0 * m * n * k
    res["tops"] = ops / (res["median_us"] * 1e-6) / 1e12
    res["int_mm_only"] = res_mm
    res["int_mm_only"]["tops"] = ops / (res_mm["median_us"] * 1e-6) / 1e12
    res["what"] = "quantize x (per tensor) + torch._int_mm(x8, w8.t()) + .float()*(sx*sw) + b"
    res["rotation_sets"] = sets
    log(f"w8a8_8192: {res['median_us']:.1f} us ({res['tops']:.0f} TOP/s); "
        f"_int_mm alone {res_mm['median_us']:.1f} us")
    return res


def gpt2_case(k, n, quick):
    m = 4096
    sets = rotation_count(m * k * 2 + m * n * 2 + n * k * 2)
    xs = [randn((m, k), 100 + i, torch.float16) for i in range(sets)]
    ws = [randn((n, k), 200 + i, torch.float16, std=0.02) for i in range(sets)]
    bs = [randn((n,), 300 + i, torch.float16, std=0.02) for i in range(sets)]
    sx = [t.abs().max().float() / 127.0 for t in xs]
    sw = [w.abs().amax(dim=1).float() / 127.0 for w in ws]
    w8 = [quantize_int8(w.float(), s[:, None]) for w, s in zip(ws, sw)]
    scales = [a * b for a, b in zip(sx, sw)]

    def fp16(i):
        j = i % sets
        return F.linear(xs[j], ws[j], bs[j])

    def w8a8(i):
        j = i % sets
        x8 = quantize_int8(xs[j].float(), sx[j])
        return (torch._int_mm(x8, w8[j].t()).float() * scales[j] + bs[j].float()).half()

    warm, reps = (5, 30) if quick else (20, 200)
    res = time_gpu(fp16, warm, reps)
    ops = 2.0 * m * n * k
    res["tflops"] = ops / (res["median_us"] * 1e-6) / 1e12
    res_q = time_gpu(w8a8, warm, reps)
    res_q["tops"] = ops / (res_q["median_us"] * 1e-6) / 1e12
    res["w8a8_torch"] = res_q
    res["what"] = f"fp16 F.linear x[{m},{k}] w[{n},{k}] + bias"
    res["rotation_sets"] = sets
    log(f"gpt2 {k}->{n}: fp16 F.linear {res['median_us']:.1f} us ({res['tflops']:.0f} TFLOP/s); "
        f"torch W8A8 {res_q['median_us']:.1f} us")
    return res


def case_fp8_8192(quick):
    m = n = k = 8192
    e4m3 = torch.float8_e4m3fn
    x = randn((m, k), 1, torch.bfloat16)
    w = randn((n, k), 2, torch.bfloat16)
    b = randn((n,), 3, torch.bfloat16, std=0.1)
    sx = (x.abs().amax(dim=1, keepdim=True).float() / 448.0).clamp(min=1e-12)  # [m, 1]
    sw = (w.abs().amax(dim=1).float() / 448.0).clamp(min=1e-12)  # [n]
    w8 = (w.float() / sw[:, None]).to(e4m3)
    sets = rotation_count(m * k)
    xs = [x] + [randn((m, k), 10 + i, torch.bfloat16) for i in range(sets - 1)]
    sxs = [sx] + [(t.abs().amax(dim=1, keepdim=True).float() / 448.0).clamp(min=1e-12)
                  for t in xs[1:]]
    x8s = [(t.float() / s).to(e4m3) for t, s in zip(xs, sxs)]
    sw_row = sw.view(1, -1)

    def gemm(fast):
        def run(i):
            j = i % sets
            return torch._scaled_mm(x8s[j], w8.t(), scale_a=sxs[j], scale_b=sw_row, bias=b,
                                    out_dtype=torch.bfloat16, use_fast_accum=fast)
        return run

    def with_quant(i):
        j = i % sets
        s = xs[j].abs().amax(dim=1, keepdim=True).float() / 448.0
        x8 = (xs[j].float() / s).to(e4m3)
        return torch._scaled_mm(x8, w8.t(), scale_a=s, scale_b=sw_row, bias=b,
                                out_dtype=torch.bfloat16)

    warm, reps = (3, 10) if quick else (5, 30)
    ops = 2.0 * m * n * k
    variants = {}
    for fast in (False, True):
        try:
            r = time_gpu(gemm(fast), warm, reps)
            r["tflops"] = ops / (r["median_us"] * 1e-6) / 1e12
            variants["fast_accum" if fast else "default"] = r
        except Exception as e:  # noqa: BLE001 - report and go on
            log(f"fp8 _scaled_mm use_fast_accum={fast} failed: {e}")
    if not variants:
        raise RuntimeError("torch._scaled_mm rowwise failed in every variant")
    best_name = min(variants, key=lambda v: variants[v]["median_us"])
    res = dict(variants[best_name])
    res["variant"] = best_name
    res["variants"] = variants
    try:
        q = time_gpu(with_quant, warm, reps)
        q["tflops"] = ops / (q["median_us"] * 1e-6) / 1e12
        res["with_row_quantization"] = q
    except Exception as e:  # noqa: BLE001
        log(f"fp8 with quantization failed: {e}")
    res["what"] = ("torch._scaled_mm e4m3 rowwise (per-row x, per-channel w) + bf16 bias, "
                   "bf16 out; x pre-quantized (faster of use_fast_accum False/True)")
    res["rotation_sets"] = sets
    log(f"fp8_8192: {res['median_us']:.1f} us ({res['tflops']:.0f} TFLOP/s, {best_name})")
    return res


def case_wo_m1_8192(quick):
    n = k = 8192
    sets = rotation_count(n * k * 2)
    x = randn((1, k), 1, torch.float16)
    ws = [randn((n, k), 20 + i, torch.float16, std=0.02) for i in range(sets)]
    bs = [randn((n,), 40 + i, torch.float16, std=0.02) for i in range(sets)]

    def fp16(i):
        j = i % sets
        return F.linear(x, ws[j], bs[j])

    warm, reps = (10, 50) if quick else (20, 200)
    res = time_gpu(fp16, warm, reps)
    res["weight_tbps"] = n * k * 2 / (res["median_us"] * 1e-6) / 1e12
    res["what"] = "fp16 F.linear x[1,8192] w[8192,8192] + bias"
    res["rotation_sets"] = sets

    # The naive weight-only int8 path (dequantize, then fp16 linear), for reference.
    sw = [w.abs().amax(dim=1).float() / 127.0 for w in ws]
    w8 = [quantize_int8(w.float(), s[:, None]) for w, s in zip(ws, sw)]

    def naive_int8(i):
        j = i % sets
        return F.linear(x, (w8[j].half() * sw[j][:, None].half()), bs[j])

    res["int8_dequant_then_linear"] = time_gpu(naive_int8, warm, reps)

    # tinygemm int4 (what gpt-fast uses), if this build has it: group size 128, bf16.
    try:
        res["int4_tinygemm_bf16"] = int4_tinygemm(x, ws, sets, warm, reps)
    except Exception as e:  # noqa: BLE001 - optional reference
        log(f"int4 tinygemm reference unavailable: {type(e).__name__}: {e}")
    log(f"wo_m1_8192: fp16 F.linear {res['median_us']:.1f} us "
        f"({res['weight_tbps']:.2f} TB/s of weights)")
    return res


def int4_tinygemm(x, ws, sets, warm, reps):
    group = 128
    packed, szs = [], []
    for w in ws:
        wf = w.float()
        n, k = wf.shape
        g = wf.view(n, k // group, group)
        wmin = g.amin(dim=2, keepdim=True)
        wmax = g.amax(dim=2, keepdim=True)
        scale = ((wmax - wmin) / 15.0).clamp(min=1e-6)
        zero = wmin + scale * 8.0
        q = torch.clamp(torch.round((g - wmin) / scale), 0, 15).to(torch.int32).view(n, k)
        q_u8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        packed.append(torch.ops.aten._convert_weight_to_int4pack(q_u8, 8))
        sz = torch.cat([scale, zero], dim=2).view(n, k // group, 2)
        szs.append(sz.transpose(0, 1).contiguous().to(torch.bfloat16))
    xb = x.to(torch.bfloat16)

    def run(i):
        j = i % sets
        return torch.ops.aten._weight_int4pack_mm(xb, packed[j], group, szs[j])

    return time_gpu(run, warm, reps)


class Stack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(15)])

    def forward(self, x):
        return self.layers(x)


def case_stack15(quick, skip_default_compile=False):
    torch.manual_seed(0)
    model = Stack().cuda().eval()
    x = torch.randn(1, 256, device="cuda")
    batch = 100
    reps = 1000 if quick else 3000
    res = {"what": "15 x Linear(256, 256), batch 1, float32, wall per call", "batch": batch}
    with torch.inference_mode():
        res["eager"] = time_wall(lambda i: model(x), 2 * batch, reps, batch)
        log(f"stack15 eager: {res['eager']['median_us']:.1f} us/call")
        modes = [("reduce-overhead", "reduce_overhead")]
        if not skip_default_compile:
            modes.insert(0, ("default", "compile_default"))
        for mode, key in modes:
            try:
                torch._dynamo.reset()
                t0 = time.perf_counter()
                compiled = torch.compile(model, mode=mode)
                for _ in range(5):
                    compiled(x)
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - t0
                r = time_wall(lambda i: compiled(x), 3 * batch, reps, batch)
                r["compile_s"] = compile_s
                res[key] = r
                log(f"stack15 torch.compile {mode}: {r['median_us']:.1f} us/call "
                    f"(compiled in {compile_s:.1f} s)")
            except Exception as e:  # noqa: BLE001 - report and go on
                log(f"stack15 torch.compile {mode} failed: {type(e).__name__}: {e}")
                res[key] = {"error": f"{type(e).__name__}: {e}"}
    best = res.get("reduce_overhead", {})
    res["median_us"] = best.get("median_us", float("nan"))
    return res


CASES = {
    "w8a8_8192": lambda a: case_w8a8_8192(a.quick),
    "gpt2_768x2304": lambda a: gpt2_case(768, 2304, a.quick),
    "gpt2_768x3072": lambda a: gpt2_case(768, 3072, a.quick),
    "gpt2_3072x768": lambda a: gpt2_case(3072, 768, a.quick),
    "fp8_8192": lambda a: case_fp8_8192(a.quick),
    "wo_m1_8192": lambda a: case_wo_m1_8192(a.quick),
    "stack15": lambda a: case_stack15(a.quick, a.skip_default_compile),
}


def main():
    parser = make_parser(__doc__)
    parser.add_argument("--case", required=True, help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--skip-default-compile", action="store_true",
                        help="stack15: only mode=reduce-overhead")
    args = parser.parse_args()
    names = [c.strip() for c in args.case.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {list(CASES)}")
    if cuda_missing():
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    results = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                results[name] = CASES[name](args)
        except Exception as e:  # noqa: BLE001 - one failing case must not hide the others
            log(f"{name} failed: {type(e).__name__}: {e}")
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        results[name]["seconds"] = time.perf_counter() - t0
        torch.cuda.empty_cache()
    summary = {
        "cases": results,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
    }
    print_result(summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
