#!/usr/bin/env python3
"""PyTorch peer of bench/gpu_gpt2.ts: transformers' GPT2LMHeadModel, fp16, eager PyTorch.

Usage:
    python3 bench/peers/gpt2_torch.py [--json] [--quick] [--batch 8] [--seq 512]
        [--context 512] [--steps 32] [--attn sdpa|eager]

A GPT-2-small-shaped model (12 layers, 768 wide, 12 heads, 50257 vocab, 1024 positions) with
random weights (seed 0), float16 on the GPU, run eagerly (no torch.compile):
  - prefill: one forward over `batch x seq` random tokens, wall time per forward with a
    synchronize after each;
  - decode: after an untimed prefill of `context` tokens (batch 1), `steps` greedy steps fed
    on the device (argmax of the last logits), wall time per token over the steps, one
    synchronize at the end of each batch of steps.
Logs go to stderr; with --json the last stdout line is one JSON object. Needs torch and
transformers only.
"""

import sys
import time

try:
    import torch
except ImportError as missing:  # a clear line, and --help, without the packages
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    sys.exit(f"{sys.argv[0]}: needs torch and transformers ({missing})")

from common import cuda_missing, log, make_parser, print_result, summarize


def build_model(attn):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12,
                        n_head=12)
    if attn:
        # transformers reads the choice from the config (a property in recent versions).
        try:
            config._attn_implementation = attn
        except Exception as e:  # noqa: BLE001 - fall back to the default implementation
            log(f"could not select attention implementation {attn!r}: {e}")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = GPT2LMHeadModel(config)
    model = model.to(device="cuda", dtype=torch.float16).eval()
    impl = getattr(model.config, "_attn_implementation", None)
    return model, impl


def time_prefill(model, batch, seq, warmup, reps):
    g = torch.Generator(device="cuda")
    g.manual_seed(1)
    ids = torch.randint(0, 50257, (batch, seq), generator=g, device="cuda")
    samples = []
    for r in range(warmup + reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(input_ids=ids)
        torch.cuda.synchronize()
        if r >= warmup:
            samples.append((time.perf_counter() - t0) * 1e3)
        del out
    res = summarize(samples, "ms")
    res["shape"] = [batch, seq]
    return res


def time_decode(model, context, steps, warmup, reps):
    g = torch.Generator(device="cuda")
    g.manual_seed(2)
    prompt = torch.randint(0, 50257, (1, context), generator=g, device="cuda")
    samples = []
    for r in range(warmup + reps):
        # Untimed prefill: the cache object is extended in place by each step, so start over.
        out = model(input_ids=prompt, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(dim=-1)
        del out
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(dim=-1)
        torch.cuda.synchronize()
        if r >= warmup:
            samples.append((time.perf_counter() - t0) * 1e3 / steps)
        del out, past
    res = summarize(samples, "ms")
    res["context"] = context
    res["steps"] = steps
    return res


def main():
    parser = make_parser(__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--attn", default=None,
                        help="attention implementation (default: transformers' choice)")
    args = parser.parse_args()
    if cuda_missing():
        return 1
    import transformers

    t0 = time.perf_counter()
    model, impl = build_model(args.attn)
    log(f"gpt2 peer: transformers {transformers.__version__}, attention {impl}, "
        f"built in {time.perf_counter() - t0:.1f} s")
    result = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": impl,
        "device": torch.cuda.get_device_name(0),
        "dtype": "float16",
    }
    with torch.inference_mode():
        try:
            warm, reps = (1, 3) if args.quick else (2, 10)
            result["prefill"] = time_prefill(model, args.batch, args.seq, warm, reps)
            log(f"prefill {args.batch}x{args.seq}: {result['prefill']['median_ms']:.2f} ms")
        except Exception as e:  # noqa: BLE001 - report and go on
            log(f"prefill failed: {type(e).__name__}: {e}")
            result["prefill"] = {"error": f"{type(e).__name__}: {e}"}
        torch.cuda.empty_cache()
        try:
            warm, reps = (1, 2) if args.quick else (1, 5)
            result["decode"] = time_decode(model, args.context, args.steps, warm, reps)
            log(f"decode at {args.context} context: "
                f"{result['decode']['median_ms']:.2f} ms/token")
        except Exception as e:  # noqa: BLE001
            log(f"decode failed: {type(e).__name__}: {e}")
            result["decode"] = {"error": f"{type(e).__name__}: {e}"}
    result["seconds"] = time.perf_counter() - t0
    print_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
