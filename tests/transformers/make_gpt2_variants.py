#!/usr/bin/env python3
"""Writes small random GPT-2 checkpoints in unusual shapes with transformers' own outputs.

    python3 tests/transformers/make_gpt2_variants.py OUT_DIR [SEED]

Each OUT_DIR/NAME is a Hugging Face model directory as `save_pretrained` writes it, plus
`reference.safetensors` (transformers, float32, eager attention, CPU):

- `ids` int64 [2, T] and `logits` float32 [2, T, V]: a batched forward;
- `gen_ids` int64 [1, P + N]: a prompt of P tokens and N greedy tokens (`generate`, KV cache);
- `gen_logits` float32 [1, P + N, V]: the full forward of `gen_ids`.

The variants cover head sizes 8 to 128, sharded files, untied `lm_head`, float16 and bfloat16
checkpoints, a checkpoint without the `transformer.` prefix (GPT2Model), every MLP activation
tensorq takes, and the attention-scaling options. tests/transformers_variants_test.ts reads
them: the set in tests/fixtures/gpt2_variants (seed 20261130) always, another set when
TENSORQ_GPT2_VARIANTS=OUT_DIR names it. SEED (default 20261130) draws other weights and ids.
Needs torch, transformers and safetensors.
"""

import json
import os
import sys

try:
    import torch
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model
except ImportError as missing:  # a clear line, and --help, without the packages
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    sys.exit(f"{sys.argv[0]}: needs torch, transformers and safetensors ({missing})")

# name, config fields, how to save. Small enough to keep in the repository
# (tests/fixtures/gpt2_variants, about 1 MB together).
VARIANTS = [
    ("sharded_hd16", dict(vocab_size=200, n_positions=48, n_embd=32, n_layer=2, n_head=2), dict(shard="40KB")),
    (
        "untied_gelu_inner",
        dict(
            vocab_size=150, n_positions=40, n_embd=64, n_layer=2, n_head=1, n_inner=48,
            activation_function="gelu", layer_norm_epsilon=1e-6,
            scale_attn_by_inverse_layer_idx=True, tie_word_embeddings=False,
        ),
        dict(),
    ),
    (
        "float16_relu_unscaled",
        dict(vocab_size=260, n_positions=40, n_embd=40, n_layer=2, n_head=5, activation_function="relu",
             scale_attn_weights=False),
        dict(dtype=torch.float16),
    ),
    (
        "bfloat16_hd128_silu",
        dict(vocab_size=128, n_positions=32, n_embd=128, n_layer=1, n_head=1, n_inner=64,
             activation_function="silu", reorder_and_upcast_attn=True),
        dict(dtype=torch.bfloat16, shard="100KB"),
    ),
    (
        "no_prefix_hd8_tanh",
        dict(vocab_size=200, n_positions=32, n_embd=32, n_layer=2, n_head=4, activation_function="tanh"),
        dict(trunk_only=True),
    ),
    (
        "pytorch_tanh_hd32",
        dict(vocab_size=200, n_positions=80, n_embd=64, n_layer=2, n_head=2, n_inner=128,
             activation_function="gelu_pytorch_tanh"),
        dict(),
    ),
]


def randomize(model, generator):
    """Weights far from GPT-2's tiny init, so that logits differ clearly between tokens."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=generator))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=generator))


def logits_of(model, ids, trunk_only):
    with torch.no_grad():
        if trunk_only:
            hidden = model(ids).last_hidden_state
            return hidden @ model.wte.weight.T
        return model(ids).logits


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    out = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) == 3 else 20261130
    generator = torch.Generator().manual_seed(seed)
    for name, fields, save in VARIANTS:
        config = GPT2Config(**fields)
        trunk_only = save.get("trunk_only", False)
        model = (GPT2Model if trunk_only else GPT2LMHeadModel)(config).eval()
        randomize(model, generator)
        directory = os.path.join(out, name)
        dtype = save.get("dtype", torch.float32)
        kwargs = {"max_shard_size": save["shard"]} if "shard" in save else {}
        model.to(dtype).save_pretrained(directory, **kwargs)
        # The reference runs the saved (possibly rounded) weights in float32.
        cls = GPT2Model if trunk_only else GPT2LMHeadModel
        ref = cls.from_pretrained(directory, attn_implementation="eager").float().eval()
        t = min(config.n_positions, 24)
        ids = torch.randint(0, config.vocab_size, (2, t), generator=generator)
        logits = logits_of(ref, ids, trunk_only)
        prompt = torch.randint(0, config.vocab_size, (1, 5), generator=generator)
        if trunk_only:
            gen = prompt  # no head to generate with
        else:
            with torch.no_grad():
                gen = ref.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True,
                                   pad_token_id=0, attention_mask=torch.ones_like(prompt))
        gen_logits = logits_of(ref, gen, trunk_only)
        save_file(
            {
                "ids": ids.contiguous(),
                "logits": logits.float().contiguous(),
                "gen_ids": gen.contiguous(),
                "gen_logits": gen_logits.float().contiguous(),
            },
            os.path.join(directory, "reference.safetensors"),
        )
        files = sorted(os.listdir(directory))
        print(json.dumps({"variant": name, "files": files, "logits_absmax": float(logits.abs().max())}))


if __name__ == "__main__":
    main()
