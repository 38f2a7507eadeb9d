"""How reproducible are fake-quantized GPT-2 logits at all? PyTorch against itself.

Runs the reference fixtures' w8a8 and fp8 models (every Conv1D: weight per output channel,
input per tensor with the calibration amax; lm_head and embeddings in float) three ways on the
same inputs: PyTorch float32 on the GPU (TF32 off), PyTorch float32 on the CPU, and PyTorch
float64 on the CPU. The three compute the same function and differ only in float32 rounding
(summation order, tanh, exp); each activation value that rounding moves across a quantization
boundary changes by a whole step, and attention carries that to every later position. Prints
mean and max |logit difference| between the runs and against the fixtures' logits.

With --variants it also runs, on the GPU, the other ways a fake-quantizing script may have
written the same model, against the fixtures: the quotient as x · (qmax / amax) instead of
x / (amax / qmax) (ModelOpt's form; dequantized by dividing by that factor), and eager instead
of SDPA attention.

    python3 bench/peers/quant_reproducibility.py MODEL_DIR FIXTURES_DIR [--variants]

MODEL_DIR: the Hugging Face GPT-2 directory the fixtures were made from; FIXTURES_DIR: holds
reference.safetensors and calibration_amax.safetensors.
"""
import sys

try:
    import torch
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel
except ImportError as missing:  # a clear line, and --help, without the packages
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    sys.exit(f"{sys.argv[0]}: needs torch, safetensors and transformers ({missing})")


def fake_quant_int8(x, scale):
    # torch.round rounds half to even, as the fixtures' quantize does.
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


def fake_quant_fp8(x, scale):
    return torch.clamp(x / scale, -448, 448).to(torch.float8_e4m3fn).to(x.dtype) * scale


def fake_quant_int8_by_factor(x, factor):
    # ModelOpt's form: x times qmax / amax, rounded, divided by the same factor.
    return torch.clamp(torch.round(x * factor), -128, 127) / factor


def fake_quant_fp8_by_factor(x, factor):
    return torch.clamp(x * factor, -448, 448).to(torch.float8_e4m3fn).to(x.dtype) / factor


def logits(model_dir, ids, amax, device, dtype, mode, by_factor=False, attention="sdpa"):
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation=attention)
    model = model.to(device=device, dtype=dtype).eval()
    qmax, fake_quant = (127.0, fake_quant_int8) if mode == "w8a8" else (448.0, fake_quant_fp8)
    if by_factor:
        fake_quant = fake_quant_int8_by_factor if mode == "w8a8" else fake_quant_fp8_by_factor
    for name, module in model.named_modules():
        if type(module).__name__ != "Conv1D":
            continue
        sx = amax[f"{name}.input_amax"].to(device, dtype) / qmax
        sw = amax[f"{name}.weight_amax"].to(device, dtype) / qmax  # per output channel
        if by_factor:
            sx = qmax / amax[f"{name}.input_amax"].to(device, dtype)
            sw = qmax / amax[f"{name}.weight_amax"].to(device, dtype)
        with torch.no_grad():
            # Conv1D stores its weight [in, out]: output channels are columns.
            module.weight.copy_(fake_quant(module.weight, sw[None, :]))

        def forward(x, module=module, sx=sx):
            xq = fake_quant(x, sx).reshape(-1, x.shape[-1])
            return torch.addmm(module.bias, xq, module.weight).reshape(*x.shape[:-1], -1)

        module.forward = forward
    with torch.no_grad():
        return model(ids.to(device)).logits.double().cpu()


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    model_dir, fixtures = sys.argv[1], sys.argv[2]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    reference = load_file(f"{fixtures}/reference.safetensors")
    amax = load_file(f"{fixtures}/calibration_amax.safetensors")
    ids = reference["input_ids"].long()

    def diff(a, b):
        d = (a - b).abs()
        return f"mean {float(d.mean()):.2e}, max {float(d.max()):.2e}"

    if "--variants" in sys.argv[3:]:
        for mode in ["w8a8", "fp8"]:
            fixture = reference[f"logits_{mode}"].double()
            for by_factor in [False, True]:
                for attention in ["sdpa", "eager"]:
                    gpu = logits(model_dir, ids, amax, "cuda", torch.float32, mode, by_factor,
                                 attention)
                    form = "x * (qmax / amax)" if by_factor else "x / (amax / qmax)"
                    print(f"{mode}: PyTorch GPU float32, {form}, {attention} attention, vs the "
                          f"fixture: {diff(gpu, fixture)}")
        return
    for mode in ["w8a8", "fp8"]:
        gpu = logits(model_dir, ids, amax, "cuda", torch.float32, mode)
        cpu = logits(model_dir, ids, amax, "cpu", torch.float32, mode)
        f64 = logits(model_dir, ids, amax, "cpu", torch.float64, mode)
        fixture = reference[f"logits_{mode}"].double()
        print(f"{mode}: PyTorch GPU float32 vs the fixture: {diff(gpu, fixture)}")
        print(f"{mode}: PyTorch CPU float32 vs the fixture: {diff(cpu, fixture)}")
        print(f"{mode}: PyTorch CPU float32 vs PyTorch GPU float32: {diff(cpu, gpu)}")
        print(f"{mode}: PyTorch CPU float64 vs PyTorch GPU float32: {diff(f64, gpu)}")


if __name__ == "__main__":
    main()
