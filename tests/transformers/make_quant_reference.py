#!/usr/bin/env python3
"""Writes a quantized-GPT-2 reference set (the format of ../shared/fixtures) for any checkpoint.

    python3 tests/transformers/make_quant_reference.py MODEL_DIR OUT_DIR [--text FILE]
        [--seed N] [--windows W] [--positions P] [--device cpu|cuda] [--ids-from FILE]
        [--attention sdpa|eager] [--compare-to DIR] [--w4-block B]

MODEL_DIR is a Hugging Face GPT2LMHeadModel directory (one model.safetensors or a sharded
checkpoint with its index; float16 / bfloat16 files are run in float32). OUT_DIR receives the
three files that tests/accuracy_test.ts reads (`TENSORQ_ACCURACY_MODEL=MODEL_DIR
TENSORQ_ACCURACY_FIXTURES=OUT_DIR`), with exactly the tensor names, dtypes and keys of the
shared fixtures (../shared/fixtures/README.md):

- `reference.safetensors`:
  - `input_ids` int32 [W, P]: the evaluated windows; `calib_ids` int32 [W, P]: the
    calibration windows. With `--text` and a byte-level model (vocabulary 256, token = byte),
    W windows of P bytes at seeded random offsets, `input_ids` from the last 10% of the file
    and `calib_ids` from the first 90% (the split at int(0.9 * bytes), as the shared set's);
    otherwise seeded random token ids. `--ids-from FILE` takes both from an existing
    reference.safetensors instead (W and P are then theirs).
  - `logits` float32 [W, P, V]: the float32 model on `input_ids`.
  - `logits_w8a8`, `logits_w8`, `logits_w4_b128`, `logits_fp8` float32 [W, P, V]: every Conv1D
    (not lm_head, not the embeddings) fake-quantized in float32 (quantize, dequantize, then the
    float32 product): w8a8 = int8 weights per output channel (scale = amax / 127) and int8
    inputs per tensor (scale = input_amax / 127); w8 = the weights alone; w4_b128 = int4
    weights in blocks of 128 consecutive input features of each output channel (scale = block
    amax / 7; when 128 does not divide the input features the last block is shorter, as ONNX
    opset 21 blocks are; `--w4-block B` makes blocks of B instead, named `logits_w4_bB`, which
    tests/accuracy_test.ts then checks); fp8 = e4m3 weights per output channel (amax / 448) and inputs per
    tensor (input_amax / 448), saturating to +-448.
- `calibration_amax.safetensors`: for each Conv1D NAME (`transformer.h.0.attn.c_attn`, ...),
  `NAME.input_amax` float32 [1], the max |input| over the float32 model's forward of
  `calib_ids` (max calibration), and `NAME.weight_amax` float32 [out], max |W| of each output
  channel. The fake-quantized logits use exactly these ranges.
- `report.json`: `fp32_loss` and, for each MODE of w8a8, w8, w4_b128, fp8, `MODE_loss` and
  `MODE_max_abs_logit_diff_vs_fp32` (max |logits_MODE - logits|); `note` says how the set was
  made. A loss is the mean next-token cross entropy in nats over `input_ids` (the logits of
  positions 0..P-2 against the ids of 1..P-1, every window), computed in float32.

Quantization is ONNX's QuantizeLinear / DequantizeLinear: q = saturate(round_half_even(x /
scale)) with a true float32 division, dq = q * scale; a scale whose amax is 0, NaN or infinite
(or whose quotient underflows) is 1, as in tensorq's scaleFromAmax. Scales and quotients are
float64 quotients rounded to float32, which are the float32 quotients on every device (on CUDA,
PyTorch's `amax / 127` multiplies by the float32 reciprocal instead, which can be 1 ulp off;
the shared fixtures' scales were made that way, so from their ids this script on CUDA differs
from them where that ulp moves a tie: one weight of logits_w4_b128). Matmuls run in float32 with
TF32 off; attention is transformers' default (SDPA) unless `--attention eager`. The model is in
eval mode (no dropout). `--compare-to DIR` prints, after writing, the max |diff| of every
logits tensor and the largest relative amax differences against another set (made from the
same ids, e.g. with `--ids-from DIR/reference.safetensors`). Needs torch, transformers and
safetensors.
"""

import argparse
import json
import math
import os
import sys

try:
    import torch
    import torch.nn.functional as F
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers import GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D
except ImportError as missing:  # a clear line, and --help, without the packages
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    sys.exit(f"{sys.argv[0]}: needs torch, transformers and safetensors ({missing})")

BLOCK = 128  # w4's block along the input features (--w4-block)


def modes():
    """The quantized variants, w4 named by the block size in use."""
    return ["w8a8", "w8", f"w4_b{BLOCK}", "fp8"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir")
    p.add_argument("out_dir")
    p.add_argument("--text", help="a text file, for a byte-level model (vocabulary 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--positions", type=int, help="default: min(256, n_positions)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--ids-from", help="take input_ids and calib_ids from this reference.safetensors")
    p.add_argument("--attention", choices=["sdpa", "eager"], default="sdpa")
    p.add_argument("--compare-to", help="a directory holding another set to compare with")
    p.add_argument("--w4-block", type=int, default=BLOCK,
                   help="w4's block size (default 128); names the set logits_w4_b<B>, w4_b<B>_loss")
    return p.parse_args()


def divide(x, y):
    """x / y correctly rounded to float32 on any device. (On CUDA, PyTorch divides a tensor by
    a Python number as a product with its float32 reciprocal: amax / 7 there can be 1 ulp off
    the quotient. A float64 quotient rounded to float32 is the float32 quotient.)"""
    y = y.double() if isinstance(y, torch.Tensor) else float(y)
    return (x.double() / y).float()


def scale_from_amax(amax, qmax):
    """amax / qmax in float32; 1 where amax is 0, NaN or infinite or the quotient is 0."""
    amax = amax.float()
    scale = divide(amax, qmax)
    bad = ~torch.isfinite(amax) | (amax == 0) | (scale == 0)
    return torch.where(bad, torch.ones_like(scale), scale)


def fake_quant_int(x, scale, bits):
    qmax = 2 ** (bits - 1) - 1
    # torch.round rounds half to even; x / scale is a true float32 division.
    return torch.clamp(torch.round(divide(x, scale)), -qmax - 1, qmax) * scale


def fake_quant_fp8(x, scale):
    # Saturate, then cast (round to nearest even) to e4m3fn and back.
    q = torch.clamp(divide(x, scale), -448.0, 448.0).to(torch.float8_e4m3fn)
    return q.to(torch.float32) * scale


def fake_quant_weight(w, weight_amax, mode):
    """w: a Conv1D weight [in, out] (output channels are columns)."""
    if mode in ("w8a8", "w8"):
        return fake_quant_int(w, scale_from_amax(weight_amax, 127.0)[None, :], 8)
    if mode == "fp8":
        return fake_quant_fp8(w, scale_from_amax(weight_amax, 448.0)[None, :])
    assert mode == f"w4_b{BLOCK}"
    inp, out = w.shape
    blocks = math.ceil(inp / BLOCK)
    rows = w.t()  # [out, in]: blocks run along the input features of each output channel
    padded = torch.zeros(out, blocks * BLOCK, dtype=w.dtype, device=w.device)
    padded[:, :inp] = rows  # zero padding changes no block amax (a ragged last block)
    padded = padded.reshape(out, blocks, BLOCK)
    scale = scale_from_amax(padded.abs().amax(dim=2), 7.0)  # [out, blocks]
    dq = fake_quant_int(padded, scale[:, :, None], 4).reshape(out, blocks * BLOCK)[:, :inp]
    return dq.t().contiguous()


def conv1d_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Conv1D)]


def load_model(model_dir, attention, device):
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation=attention,
                                            dtype=torch.float32)
    return model.to(device).eval()


def windows_of(data, count, length, generator):
    """`count` windows of `length` bytes of `data` at seeded random offsets."""
    if len(data) < length:
        raise SystemExit(f"a split of {len(data)} bytes is shorter than a window of {length}")
    starts = torch.randint(0, len(data) - length + 1, (count,), generator=generator).tolist()
    return torch.stack([torch.tensor(list(data[s:s + length]), dtype=torch.int32) for s in starts])


def make_ids(args, config):
    """input_ids, calib_ids (int32 [W, P]) and a description of where they came from."""
    if args.ids_from:
        ref = load_file(args.ids_from)
        ids, calib = ref["input_ids"].to(torch.int32), ref["calib_ids"].to(torch.int32)
        return ids, calib, f"ids from {os.path.abspath(args.ids_from)}"
    positions = args.positions if args.positions is not None else min(256, config.n_positions)
    if not 2 <= positions <= config.n_positions:
        raise SystemExit(f"--positions must be in [2, n_positions = {config.n_positions}]")
    if args.windows < 1:
        raise SystemExit("--windows must be at least 1")
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.windows, positions)
    if args.text and config.vocab_size == 256:
        data = open(args.text, "rb").read()
        split = int(0.9 * len(data))
        ids = windows_of(data[split:], args.windows, positions, generator)
        calib = windows_of(data[:split], args.windows, positions, generator)
        where = f"{shape} byte windows of {os.path.basename(args.text)} at seeded offsets"
        return ids, calib, where
    if args.text:
        print(f"vocabulary {config.vocab_size}, not bytes: --text ignored, random ids",
              file=sys.stderr)
    ids = torch.randint(0, config.vocab_size, shape, generator=generator, dtype=torch.int64)
    calib = torch.randint(0, config.vocab_size, shape, generator=generator, dtype=torch.int64)
    return ids.to(torch.int32), calib.to(torch.int32), f"{shape} random ids"


def loss_of(logits, ids):
    """Mean next-token cross entropy (nats), float32, over every window."""
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(),
                           ids[:, 1:].reshape(-1).long()).item()


def calibrate(model, calib_ids):
    """Max calibration: NAME.input_amax [1] and NAME.weight_amax [out] of every Conv1D."""
    input_amax = {}
    hooks = []
    for name, module in conv1d_layers(model):
        def hook(_module, inputs, name=name):
            m = inputs[0].detach().abs().amax().float()
            input_amax[name] = m if name not in input_amax else torch.maximum(input_amax[name], m)
        hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(calib_ids)
    for h in hooks:
        h.remove()
    amax = {}
    for name, module in conv1d_layers(model):
        amax[f"{name}.input_amax"] = input_amax[name].reshape(1).cpu().contiguous()
        amax[f"{name}.weight_amax"] = module.weight.detach().abs().amax(dim=0).float().cpu()
    return amax


def quantized_logits(model, ids, amax, mode):
    """The logits with every Conv1D fake-quantized for `mode`; the model is restored after."""
    device = ids.device
    saved, hooks = {}, []
    for name, module in conv1d_layers(model):
        w = module.weight.data
        saved[name] = w.clone()
        w.copy_(fake_quant_weight(w, amax[f"{name}.weight_amax"].to(device), mode))
        if mode in ("w8a8", "fp8"):
            qmax = 127.0 if mode == "w8a8" else 448.0
            scale = scale_from_amax(amax[f"{name}.input_amax"].to(device), qmax)

            def hook(_module, inputs, scale=scale):
                x = inputs[0]
                q = fake_quant_int(x, scale, 8) if mode == "w8a8" else fake_quant_fp8(x, scale)
                return (q,) + tuple(inputs[1:])
            hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            return model(ids).logits.float()
    finally:
        for h in hooks:
            h.remove()
        for name, module in conv1d_layers(model):
            module.weight.data.copy_(saved[name])


def compare(out_dir, other_dir):
    ours = load_file(os.path.join(out_dir, "reference.safetensors"))
    theirs = load_file(os.path.join(other_dir, "reference.safetensors"))
    for key in ["input_ids", "calib_ids"]:
        same = ours[key].shape == theirs[key].shape and torch.equal(ours[key], theirs[key])
        print(f"{key}: {'identical' if same else 'DIFFERENT'}")
    for key in ["logits"] + [f"logits_{m}" for m in modes()]:
        if ours[key].shape != theirs[key].shape:
            print(f"{key}: shapes differ {list(ours[key].shape)} vs {list(theirs[key].shape)}")
            continue
        d = (ours[key].double() - theirs[key].double()).abs()
        print(f"{key}: max |diff| {d.max().item():.3e}, mean {d.mean().item():.3e}")
    a = load_file(os.path.join(out_dir, "calibration_amax.safetensors"))
    b = load_file(os.path.join(other_dir, "calibration_amax.safetensors"))
    if sorted(a) != sorted(b):
        print("calibration_amax: names differ")
        return
    for kind in ["input_amax", "weight_amax"]:
        worst, where = 0.0, ""
        for k in a:
            if k.endswith(kind):
                r = ((a[k].double() - b[k].double()).abs() / b[k].double().abs().clamp_min(1e-30))
                if r.max().item() >= worst:
                    worst, where = r.max().item(), k
        print(f"{kind}: worst relative diff {worst:.3e} ({where})")
    ra = json.load(open(os.path.join(out_dir, "report.json")))
    rb = json.load(open(os.path.join(other_dir, "report.json")))
    for k in rb:
        if k != "note":
            print(f"report {k}: {ra.get(k)} vs {rb[k]} (diff {ra.get(k, math.nan) - rb[k]:.2e})")


def main():
    global BLOCK
    args = parse_args()
    if args.w4_block < 1:
        raise SystemExit("--w4-block must be a positive integer")
    BLOCK = args.w4_block
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is usable")
    model = load_model(args.model_dir, args.attention, args.device)
    config = model.config
    input_ids, calib_ids, where = make_ids(args, config)
    ids = input_ids.long().to(args.device)
    if int(input_ids.max()) >= config.vocab_size or int(calib_ids.max()) >= config.vocab_size:
        raise SystemExit("ids beyond the model's vocabulary")

    with torch.no_grad():
        logits = model(ids).logits.float()
    amax = calibrate(model, calib_ids.long().to(args.device))
    report = {"fp32_loss": loss_of(logits, ids)}
    tensors = {"logits": logits.cpu().contiguous()}
    for mode in modes():
        q = quantized_logits(model, ids, amax, mode)
        report[f"{mode}_loss"] = loss_of(q, ids)
        report[f"{mode}_max_abs_logit_diff_vs_fp32"] = (q - logits).abs().max().item()
        tensors[f"logits_{mode}"] = q.cpu().contiguous()
    tensors["input_ids"] = input_ids.contiguous()
    tensors["calib_ids"] = calib_ids.contiguous()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    report["note"] = (
        f"make_quant_reference.py: {os.path.basename(os.path.normpath(args.model_dir))}, {where}, "
        f"seed {args.seed}; max calibration on calib_ids; q = saturate(round_half_even(x / "
        f"scale)), weights per output channel (w4: blocks of {BLOCK} input features), inputs per "
        f"tensor; {args.attention} attention, TF32 off, {device_name}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )

    os.makedirs(args.out_dir, exist_ok=True)
    save_file(tensors, os.path.join(args.out_dir, "reference.safetensors"))
    save_file(amax, os.path.join(args.out_dir, "calibration_amax.safetensors"))
    with open(os.path.join(args.out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "note"}))
    if args.compare_to:
        compare(args.out_dir, args.compare_to)


if __name__ == "__main__":
    main()
