#!/usr/bin/env python3
"""Writes one random Hugging Face GPT-2 checkpoint of any shape (for accuracy sets and demos).

    python3 tests/transformers/make_random_gpt2.py OUT_DIR [--layers L] [--width D]
        [--heads H] [--vocab V] [--positions P] [--dtype float32|float16|bfloat16]
        [--shard-size SIZE] [--scale S] [--seed N]

The weights are transformers' own initialization of `GPT2LMHeadModel` (seeded), every
parameter multiplied by `--scale` (default 1; larger values give a model with large
activations and logits, a harder case for float32 rounding), saved with `save_pretrained` in
`--dtype`, split into shards of at most `--shard-size` (e.g. "300MB"; default one file).
Defaults are GPT-2 small's shape: 12 layers, width 768, 12 heads, vocabulary 50257, 1024
positions. Then, e.g.:

    python3 tests/transformers/make_quant_reference.py OUT_DIR SET_DIR --device cuda
    TENSORQ_ACCURACY_MODEL=OUT_DIR TENSORQ_ACCURACY_FIXTURES=SET_DIR deno test ... tests/accuracy_test.ts

Needs torch and transformers.
"""

import argparse
import sys

try:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
except ImportError as missing:  # a clear line, and --help, without the packages
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    sys.exit(f"{sys.argv[0]}: needs torch and transformers ({missing})")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--positions", type=int, default=1024)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--shard-size", help='largest shard, e.g. "300MB" (default: one file)')
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.width % args.heads != 0:
        p.error(f"--width {args.width} is not a multiple of --heads {args.heads}")

    torch.manual_seed(args.seed)
    config = GPT2Config(
        vocab_size=args.vocab,
        n_positions=args.positions,
        n_embd=args.width,
        n_layer=args.layers,
        n_head=args.heads,
    )
    model = GPT2LMHeadModel(config).eval()
    if args.scale != 1.0:
        with torch.no_grad():
            for param in model.parameters():
                param.mul_(args.scale)
    kwargs = {"max_shard_size": args.shard_size} if args.shard_size else {}
    model.to(DTYPES[args.dtype]).save_pretrained(args.out_dir, **kwargs)
    n = sum(param.numel() for param in model.parameters())
    print(f"{args.out_dir}: {args.layers} layers, width {args.width}, {args.heads} heads, "
          f"vocabulary {args.vocab}, {n / 1e6:.2f}M parameters, {args.dtype}, seed {args.seed}, "
          f"scale {args.scale}")


if __name__ == "__main__":
    main()
