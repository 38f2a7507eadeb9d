#!/usr/bin/env python3
"""Writes ONNX Runtime's QuantizeLinear / DequantizeLinear (opset 21) results as test vectors.

    python3 tests/onnx/make_conformance.py OUT_FILE [SEED]

OUT_FILE is a safetensors file laid out like ../shared/fixtures/conformance.safetensors (same
tensor names, dtypes and conventions), plus extra cases under names of their own. Every `_q`,
`_bits` and `_dq` tensor is what ONNX Runtime (CPU, no graph optimizations) computed from the
file's own `x` and `_scale` tensors with a QuantizeLinear (attribute `output_dtype`, no zero
point) followed by a DequantizeLinear, both at opset 21: `q = saturate(roundHalfToEven(x /
scale))` with a true float32 division, `dq = q * scale` in float32. SEED (default 20261207)
draws the values and the shapes (within the ranges below), so other seeds also check other
shapes. tests/conformance_test.ts checks tensorq against the committed file
(tests/fixtures/onnx_conformance, seed 20261207) always, and against OUT_FILE when
TENSORQ_CONFORMANCE=OUT_FILE names it. Needs numpy, onnx and onnxruntime.

Conventions (the shared fixture's): scales F32; int8 and int4 codes I8, one value per element
(int4 in [-8, 7]); float8e4m3fn codes U8 bit patterns, named `_bits`; dequantized values F32.
Block-wise scales have x's rank, `ceil(x.shape[axis] / block)` along the axis (ONNX opset 21:
the last block may be shorter) and x's extents elsewhere; element `i` along the axis uses scale
`i // block`. Scales are `amax / qmax` of the normal samples (before the planted values below
go in): 127 for int8, 7 for int4, 448 for float8e4m3fn.

Planted values, beside normal samples: exact ties `(k + 0.5) * scale`, values near and beyond
the clamp (`126.5`, `127.4`, `127.5`, `-128.5`, `-128.6`, ... times the scale, and the int4
ones), +-1000, 0, -0, +-1e-30, and values where `x / scale` and `x * (1 / scale)` round to
different codes (so that matching proves a true division); for float8e4m3fn the saturation
points 448, 449, 464, 465, 480, 500 (times the scale and as they are), subnormal quotients and
their ties, NaN. +-inf only in `pt_x`, `fp8_x` and `fc_w`: ONNX Runtime 1.30 quantizes +inf to
-8 rather than the saturated 7 in per-axis and block-wise int4.

The shared fixture's cases (same names, dtypes and meaning; the shapes are drawn):

| tensors | meaning |
| --- | --- |
| `pt_x` F32 [N], `pt_scale` F32 [1], `pt_q` I8, `pt_dq` F32 | per-tensor int8; N = 500..599 normal samples x3, then 80 ties, the int4 ties, clamp values, extremes and division-sensitive values |
| `pc_w` F32 [R, C], `pc_scale` F32 [R], `pc_q` I8, `pc_dq` F32 | per-channel int8 along axis 0 (R 17..27, C 25..45) |
| `pc1_scale` F32 [C], `pc1_q`, `pc1_dq` | per-channel int8 of `pc_w` along axis 1 |
| `b4_w` F32 [32, 128], `b4_scale` F32 [32, 2], `b4_q` I8, `b4_dq` | block-wise int4 along axis 1, blocks of 64 |
| `b40_scale` F32 [2, 128], `b40_q`, `b40_dq` | block-wise int4 of `b4_w` along axis 0, blocks of 16 |
| `i4_scale` F32 [1], `i4_q` I8, `i4_dq` | per-tensor int4 of `pt_x` |
| `fp8_x` F32 [M], `fp8_scale` F32 [1], `fp8_bits` U8, `fp8_dq` F32 | per-tensor float8e4m3fn, saturating; M = 500..599 normal samples x100, then the fp8 points above |

Extra cases (ONNX opset 21 defines them and tensorq's quantize takes them):

| tensors | meaning |
| --- | --- |
| `ch3_x` F32 [A, B, C] | 3-D input: A 2..4, B 5..11, C 3..9 (odd extents likely) |
| `ch3_scale` F32 [B], `ch3_q` I8, `ch3_dq` | per-channel int8 along the middle axis (1) |
| `ch3i4_scale` F32 [C], `ch3i4_q` I8, `ch3i4_dq` | per-channel int4 along the last axis, given as axis -1 |
| `ch3f8_scale` F32 [B], `ch3f8_bits` U8, `ch3f8_dq` | per-channel float8e4m3fn along the middle axis |
| `bl_scale` F32 [A, B, 1], `bl_q` I8, `bl_dq` | block-wise int4 of `ch3_x` along axis 2, blocks of 16: one block longer than the axis |
| `fc_w` F32 [R, C], `fc_scale` F32 [R], `fc_bits` U8, `fc_dq` | per-channel float8e4m3fn along axis 0 (R 6..12, C 17..30), with the saturation points and subnormal quotients of each row's scale |
| `fc1_scale` F32 [C], `fc1_bits`, `fc1_dq` | per-channel float8e4m3fn of `fc_w` along axis 1 |
| `br_w` F32 [R, D] | R 17..21 (not a multiple of 16), D 65..90 (not a multiple of 32 or 64) |
| `br4_scale` F32 [R, ceil(D/64)], `br4_q` I8, `br4_dq` | block-wise int4 along axis 1, blocks of 64: a shorter last block |
| `br8_scale` F32 [R, ceil(D/32)], `br8_q` I8, `br8_dq` | block-wise int8 along axis 1, blocks of 32: a shorter last block |
| `br40_scale` F32 [ceil(R/16), D], `br40_q` I8, `br40_dq` | block-wise int4 along axis 0, blocks of 16: a shorter last block |
| `b3_x` F32 [A, D, C] | A 2..3, D 17..30 (not a multiple of 8), C 3..7 (not a multiple of 4) |
| `b3_scale` F32 [A, ceil(D/8), C], `b3_q` I8, `b3_dq` | block-wise int4 along the middle axis, blocks of 8: scales that change every element, a shorter last block |
| `b3l_scale` F32 [A, D, ceil(C/4)], `b3l_q` I8, `b3l_dq` | block-wise int8 along the last axis (given as axis -1), blocks of 4 |
| `ti_x` F32 [T], `ti_scale` F32 [] (rank 0, 0.125), `ti_q` I8, `ti_dq` | per-tensor int8 with a power-of-two scale: every tie `(k + 0.5) / 8` for k in -131..130 is exact, with its float32 neighbours |
| `ti4_scale` F32 [] (0.125), `ti4_q` I8, `ti4_dq` | per-tensor int4 of `ti_x` |
| `t8_x` F32 [E], `t8_scale` F32 [] (rank 0, 0.5), `t8_bits` U8, `t8_dq` | per-tensor float8e4m3fn: every midpoint between neighbouring e4m3fn values (exact ties) and its float32 neighbours, both signs, and the specials |

16-bit inputs: the same kinds of case with x, scale and the dequantized values in float16 (prefix
`h`, safetensors F16) and bfloat16 (prefix `bh`, BF16), as opset 21 types them (QuantizeLinear's
x and scale share a type; DequantizeLinear returns the scale's). Values and scales are drawn in
float32 and rounded to the 16-bit type (nearest, ties to even) before ONNX Runtime sees them. A
16-bit type ONNX Runtime's CPU provider has no kernel for is left out of the file, with a note
on stderr: ONNX Runtime 1.30 has none for bfloat16, so its files hold float16 cases only.

| tensors (P = `h` or `bh`) | meaning |
| --- | --- |
| `P_x` [N], `P_scale` [1], `P_q` I8, `P_dq` | per-tensor int8; N = 300..399 normal samples x3, then ties, clamp values and extremes of the scale as the 16-bit type holds them (no infinities: ONNX Runtime 1.30 quantizes float16 +inf to -128 and -8) |
| `P4_scale` [1], `P4_q` I8, `P4_dq` | per-tensor int4 of `P_x` |
| `Pt_x` [T], `Pt_scale` [] (0.125), `Pt_q` I8, `Pt_dq` | exact ties `(k + 0.5) / 8`, k in -128..127, each with its 16-bit neighbours |
| `Pt4_scale` [] (0.125), `Pt4_q` I8, `Pt4_dq` | per-tensor int4 of `Pt_x` |
| `Pf8_x` [M], `Pf8_scale` [1], `Pf8_bits` U8, `Pf8_dq` | per-tensor float8e4m3fn: normal samples x100, the fp8 points of the scale, +-inf, NaN |
| `Pc_w` [R, C], `Pc_scale` [R], `Pc_q` I8, `Pc_dq` | per-channel int8 along axis 0 (R 9..16, C 20..40) |
| `Pcf8_scale` [C], `Pcf8_bits` U8, `Pcf8_dq` | per-channel float8e4m3fn of `Pc_w` along axis 1 |
| `Pb_w` [R, D], `Pb4_scale` [R, ceil(D/32)], `Pb4_q` I8, `Pb4_dq` | block-wise int4 along axis 1, blocks of 32 (R 17..21, D 40..63 not a multiple of 32: a shorter last block) |
| `Pb8_scale` [ceil(R/16), D], `Pb8_q` I8, `Pb8_dq` | block-wise int8 of `Pb_w` along axis 0, blocks of 16 |
"""

import json
import struct
import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
except ImportError as missing:  # a clear line, and --help, without the packages
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    sys.exit(f"{sys.argv[0]}: needs numpy, onnx and onnxruntime ({missing})")

DEFAULT_SEED = 20261207
F32 = np.float32

# quantized type: (ONNX element type, qmax, low, high)
QTYPES = {
    "int8": (TensorProto.INT8, 127, -128, 127),
    "int4": (TensorProto.INT4, 7, -8, 7),
    "fp8": (TensorProto.FLOAT8E4M3FN, 448, -448, 448),
}


# 16-bit float types: (ONNX element type, safetensors dtype, file prefix).
HALF_TYPES = {
    "float16": (TensorProto.FLOAT16, "F16", "h"),
    "bfloat16": (TensorProto.BFLOAT16, "BF16", "bh"),
}


def to_half(values, ftype):
    """float32 values rounded to `ftype` (nearest, ties to even), returned as float32 (exact)."""
    a = np.asarray(values, dtype=F32)
    if ftype == "float16":
        with np.errstate(over="ignore"):
            return a.astype(np.float16).astype(F32)
    bits = a.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    out = rounded.astype(np.uint32).view(F32)
    return np.where(np.isnan(a), a, out).astype(F32)


def half_bits(values, ftype):
    """The 16-bit patterns of float32 values that `ftype` holds exactly (NaN kept as NaN)."""
    a = np.ascontiguousarray(values, dtype=F32)
    if ftype == "float16":
        bits = a.astype(np.float16).view(np.uint16)
    else:
        bits = (a.view(np.uint32) >> 16).astype(np.uint16)
    same = half_values(bits, ftype)
    assert np.array_equal(float_bits(same)[~np.isnan(a)], float_bits(a)[~np.isnan(a)]), ftype
    return bits


def half_values(bits, ftype):
    """float32 values of 16-bit patterns (exact)."""
    b = np.asarray(bits, dtype=np.uint16)
    if ftype == "float16":
        return b.view(np.float16).astype(F32)
    return (b.astype(np.uint32) << 16).view(F32)


def f32(values):
    return np.asarray(values, dtype=F32)


def reduce_amax(x, axis, block):
    """amax of |x| over everything but `axis` (block None), or per block along `axis`, as a
    scale of the ONNX shape for that mode (axis None: per tensor, shape [1])."""
    a = np.abs(x)
    if axis is None:
        return f32([a.max()])
    if block is None:
        other = tuple(i for i in range(x.ndim) if i != axis)
        return a.max(axis=other).astype(F32)
    extent = x.shape[axis]
    blocks = -(-extent // block)
    parts = [
        np.take(a, np.arange(b * block, min(extent, (b + 1) * block)), axis=axis).max(axis=axis, keepdims=True)
        for b in range(blocks)
    ]
    return np.concatenate(parts, axis=axis).astype(F32)


def scale_of(x, qtype, axis=None, block=None):
    amax = reduce_amax(x, axis, block)
    return (amax / F32(QTYPES[qtype][1])).astype(F32)


def expand_scale(scale, shape, axis, block):
    """The scale of every element of a tensor of `shape` (numpy broadcasting of ONNX's rule)."""
    if scale.size == 1:
        return np.broadcast_to(scale.reshape(()), shape)
    if block is None:
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return np.broadcast_to(scale.reshape(view), shape)
    idx = np.arange(shape[axis]) // block
    return np.take(scale, idx, axis=axis)


def reciprocal_sensitive(scale, qmax, count, rng):
    """Values x (float32) near ties of `scale` whose x / scale and x * (1 / scale) quantize to
    different codes (at most `count`)."""
    s = F32(scale)
    inv = F32(F32(1) / s)
    found = []
    ks = rng.permutation(np.arange(-qmax, qmax)) + 0.5
    for k in ks:
        tie = F32(F32(k) * s)
        for ulps in range(-3, 4):
            x = tie
            step = np.inf if ulps > 0 else -np.inf
            for _ in range(abs(ulps)):
                x = np.nextafter(x, F32(step), dtype=F32)
            a = np.rint(F32(x / s))
            b = np.rint(F32(x * inv))
            if a != b and abs(a) <= qmax and abs(b) <= qmax:
                found.append(x)
                break
        if len(found) >= count:
            break
    return found


def int_points(scale, qtype):
    """Ties and clamp values of an int type, times the scale (float32 products)."""
    qmax = QTYPES[qtype][1]
    lo = QTYPES[qtype][2]
    quotients = [qmax - 0.5, qmax - 0.4, qmax + 0.4, qmax + 0.5, qmax + 0.6, qmax + 1,
                 lo + 0.5, lo - 0.4, lo - 0.5, lo - 0.6, lo - 1, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5]
    return [F32(F32(q) * F32(scale)) for q in quotients]


FP8_POINTS = [448, 449, 464, 465, 480, 500, 1000, -448, -449, -464, -465, -500, 2.0**-9, 2.0**-10,
              3 * 2.0**-10, 1.5 * 2.0**-9, 2.0**-6, 2.0**-6 - 2.0**-10, 7.5 * 2.0**-9, -(2.0**-10),
              -(3 * 2.0**-10)]
FINITE_EXTREMES = [1000.0, -1000.0, 0.0, -0.0, 1e-30, -1e-30]
# Infinities go only into per-tensor and float8 cases: ONNX Runtime 1.30 quantizes +inf to -8
# (not the saturated 7) in per-axis and block-wise int4, a float-to-int conversion out of range.
EXTREMES = FINITE_EXTREMES + [np.inf, -np.inf]


def fp8_points(scale):
    """The fp8 saturation points and subnormal quotients, times the scale and as they are."""
    scaled = [F32(F32(v) * F32(scale)) for v in FP8_POINTS]
    return scaled + [F32(v) for v in FP8_POINTS[:7]] + [F32(1e-3), F32(1.4648438e-3)]


def e4m3_value(code):
    """The value of an e4m3fn code (no infinities; 0x7f and 0xff are NaN)."""
    sign = -1.0 if code & 0x80 else 1.0
    e, m = (code >> 3) & 0xF, code & 7
    if e == 15 and m == 7:
        return np.nan
    return sign * (m * 2.0**-9 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))


# The values of codes 0 .. 0x7e: 0 to 448, ascending.
E4M3_POSITIVE = np.array([e4m3_value(c) for c in range(0x7F)])


def e4m3_encode(values):
    """e4m3fn codes of float32 values: round to nearest, ties to the even code; |v| > 448 must
    be clipped first; NaN -> 0x7f (0xff with the sign bit); -0 -> 0x80."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    out = np.zeros(v.size, dtype=np.uint8)
    for i, x in enumerate(v):
        if np.isnan(x):
            out[i] = 0xFF if np.signbit(x) else 0x7F
            continue
        a = abs(x)
        assert a <= 448, "clip before encoding"
        hi = int(np.searchsorted(E4M3_POSITIVE, a))
        if E4M3_POSITIVE[hi] == a or hi == 0:
            code = hi
        else:
            below, above = a - E4M3_POSITIVE[hi - 1], E4M3_POSITIVE[hi] - a
            code = hi - 1 if below < above or (below == above and (hi - 1) % 2 == 0) else hi
        out[i] = code | (0x80 if np.signbit(x) else 0)
    return out.reshape(np.shape(values))


def e4m3_decode(bits):
    table = np.array([e4m3_value(c) for c in range(256)], dtype=F32)
    return table[np.asarray(bits, dtype=np.uint8)]


def e4m3_midpoints():
    """Every midpoint between neighbouring finite e4m3fn values (both signs), each with its
    float32 neighbours, then the specials."""
    values = E4M3_POSITIVE  # 0 .. 448, no NaN
    mids = (values[:-1] + values[1:]) / 2
    mids = np.append(mids, 464.0)  # between 448 and the 480 that e4m3fn lacks
    out = []
    for m in mids:
        m = F32(m)
        out += [m, np.nextafter(m, F32(np.inf), dtype=F32), np.nextafter(m, F32(-np.inf), dtype=F32)]
    out = out + [-v for v in out]
    out += [F32(v) for v in (0.0, -0.0, np.inf, -np.inf, np.nan, 448, -448, 2.0**-9, 1e-30)]
    return f32(out)


# ----------------------------------------------------------------------------------------------
# ONNX Runtime


def run_ort(x, scale, qtype, axis=None, block=None, ftype="float32"):
    """QuantizeLinear then DequantizeLinear (opset 21) on ONNX Runtime's CPU provider. Returns
    the codes (int8 values, or fp8 bit patterns as uint8) and the dequantized values (float32;
    for a 16-bit `ftype`, the exact values of the 16-bit results)."""
    elem = QTYPES[qtype][0]
    if axis is None:
        scale = scale.reshape(())  # per tensor: ONNX's scalar scale (the file keeps [1])
    attrs = {}
    if axis is not None:
        attrs["axis"] = axis
    if block is not None:
        attrs["block_size"] = block
    half = ftype != "float32"
    ftype_elem = HALF_TYPES[ftype][0] if half else TensorProto.FLOAT
    # float16 goes in and out as numpy float16. bfloat16 has no numpy type: it goes in as
    # float32 values it holds exactly, cast in the graph, and comes out cast to float32 (exact).
    io_elem = TensorProto.FLOAT16 if ftype == "float16" else TensorProto.FLOAT
    cast_in = ftype == "bfloat16"
    xin, sin = ("x_in", "scale_in") if cast_in else ("x", "scale")
    nodes = []
    if cast_in:
        nodes += [
            helper.make_node("Cast", ["x_in"], ["x"], to=ftype_elem),
            helper.make_node("Cast", ["scale_in"], ["scale"], to=ftype_elem),
        ]
    nodes += [
        helper.make_node("QuantizeLinear", ["x", "scale"], ["q"], output_dtype=elem, **attrs),
        helper.make_node("DequantizeLinear", ["q", "scale"], ["dq_t" if cast_in else "dq"], **attrs),
        # The codes' values, read as float32 (exact): int4 and fp8 outputs need no numpy type.
        helper.make_node("DequantizeLinear", ["q", "one"], ["qv"]),
    ]
    if cast_in:
        nodes.append(helper.make_node("Cast", ["dq_t"], ["dq"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        "qdq",
        [
            helper.make_tensor_value_info(xin, io_elem, list(x.shape)),
            helper.make_tensor_value_info(sin, io_elem, list(scale.shape)),
        ],
        [
            helper.make_tensor_value_info("q", elem, list(x.shape)),
            helper.make_tensor_value_info("dq", io_elem, list(x.shape)),
            helper.make_tensor_value_info("qv", TensorProto.FLOAT, list(x.shape)),
        ],
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    # Shape inference checks the scale's shape against axis and block_size (ONNX's rule).
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    if ftype == "float16":
        feeds = {"x": x.astype(np.float16), "scale": scale.astype(np.float16)}
    else:
        feeds = {xin: x, sin: scale}
    dq, qv = session.run(["dq", "qv"], feeds)
    if ftype == "float16":
        dq = half_values(dq.view(np.uint16), ftype)
    if qtype != "fp8":
        codes = qv.astype(np.int8)
        assert np.array_equal(codes.astype(F32), qv), "integer codes"
        return codes, dq
    bits = None
    try:
        (q,) = session.run(["q"], feeds)
        if q.dtype.itemsize == 1 and q.size == x.size:
            bits = q.view(np.uint8).reshape(x.shape)
    except Exception as error:  # no numpy type for the output: take the values' encoding
        print(f"  (fp8 output not readable directly: {error}; bits from the values)", file=sys.stderr)
    from_values = e4m3_encode(qv)
    if bits is None:
        bits = from_values
    else:
        same = (bits == from_values) | (np.isnan(qv) & ((bits & 0x7F) == 0x7F))
        assert same.all(), "fp8 bit patterns disagree with their values"
    return bits, dq


# ----------------------------------------------------------------------------------------------
# A numpy model of the same function: a cross-check printed as a report, never written.


def numpy_reference(x, scale, qtype, axis, block, ftype="float32"):
    """Codes from a float32 division of the (exact) values, dequantized values `q * s` in
    float32 rounded once to `ftype`."""
    codes, dq = numpy_reference_f32(x, scale, qtype, axis, block)
    return codes, (dq if ftype == "float32" else to_half(dq, ftype))


def numpy_reference_f32(x, scale, qtype, axis, block):
    s = expand_scale(scale, x.shape, axis, block).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        quotient = (x / s).astype(F32)
    if qtype == "fp8":
        clipped = np.where(np.isnan(quotient), quotient, np.clip(quotient, -448, 448)).astype(F32)
        bits = e4m3_encode(clipped)
        return bits, (e4m3_decode(bits) * s).astype(F32)
    _, _, lo, hi = QTYPES[qtype]
    codes = np.clip(np.nan_to_num(np.rint(quotient), nan=0.0), lo, hi).astype(np.int8)
    return codes, (codes.astype(F32) * s).astype(F32)


def float_bits(a):
    return np.ascontiguousarray(a, dtype=F32).view(np.uint32)


# ----------------------------------------------------------------------------------------------
# Inputs


def plant(x, positions, values):
    flat = x.reshape(-1)
    for p, v in zip(positions, values):
        flat[p] = v


def plant_points(x, rng, scale_fn, points_fn, count, exclude):
    """Sets `count` free positions of x to points of their own element's scale."""
    flat = x.reshape(-1)
    free = [p for p in rng.permutation(flat.size) if p not in exclude]
    placed = []
    for p in free:
        if len(placed) >= count:
            break
        pts = points_fn(scale_fn(p))
        flat[p] = pts[len(placed) % len(pts)]
        placed.append(p)
    exclude.update(placed)


def element_scale(scale, shape, axis, block):
    full = expand_scale(scale, shape, axis, block).reshape(-1)
    return lambda p: full[p]


def build(seed):
    rng = np.random.default_rng(seed)
    tensors = {}
    cases = []  # (prefix, x name, qtype, axis, block)

    # Per-tensor int8 / int4 of pt_x.
    normal = f32(rng.standard_normal(int(rng.integers(500, 600))) * 3)
    pt_scale = scale_of(normal, "int8")
    i4_scale = scale_of(normal, "int4")
    s = pt_scale[0]
    ties = [F32(F32(k + 0.5) * s) for k in range(-40, 40)]
    ties4 = [F32(F32(k + 0.5) * i4_scale[0]) for k in range(-9, 9)]
    sensitive = reciprocal_sensitive(s, 127, 8, rng) + reciprocal_sensitive(i4_scale[0], 7, 4, rng)
    extra = ties + ties4 + int_points(s, "int8") + int_points(i4_scale[0], "int4") + EXTREMES + sensitive
    tensors["pt_x"] = np.concatenate([normal, f32(extra)])
    tensors["pt_scale"] = pt_scale
    tensors["i4_scale"] = i4_scale
    cases += [("pt", "pt_x", "int8", None, None), ("i4", "pt_x", "int4", None, None)]

    # Per-channel int8 of pc_w along axis 0 and 1.
    r, c = int(rng.integers(17, 28)), int(rng.integers(25, 46))
    w = f32(rng.standard_normal((r, c)))
    pc_scale, pc1_scale = scale_of(w, "int8", 0), scale_of(w, "int8", 1)
    taken = set()
    ipts = lambda q: lambda sc: int_points(sc, q)  # noqa: E731
    plant_points(w, rng, element_scale(pc_scale, w.shape, 0, None), ipts("int8"), 40, taken)
    plant_points(w, rng, element_scale(pc1_scale, w.shape, 1, None), ipts("int8"), 40, taken)
    plant_points(w, rng, lambda p: 1.0, lambda _: FINITE_EXTREMES, 6, taken)
    tensors.update(pc_w=w, pc_scale=pc_scale, pc1_scale=pc1_scale)
    cases += [("pc", "pc_w", "int8", 0, None), ("pc1", "pc_w", "int8", 1, None)]

    # Block-wise int4 of b4_w: along axis 1 in blocks of 64, along axis 0 in blocks of 16.
    w = f32(rng.standard_normal((32, 128)))
    b4_scale, b40_scale = scale_of(w, "int4", 1, 64), scale_of(w, "int4", 0, 16)
    taken = set()
    plant_points(w, rng, element_scale(b4_scale, w.shape, 1, 64), ipts("int4"), 60, taken)
    plant_points(w, rng, element_scale(b40_scale, w.shape, 0, 16), ipts("int4"), 60, taken)
    plant_points(w, rng, lambda p: 1.0, lambda _: FINITE_EXTREMES, 6, taken)
    tensors.update(b4_w=w, b4_scale=b4_scale, b40_scale=b40_scale)
    cases += [("b4", "b4_w", "int4", 1, 64), ("b40", "b4_w", "int4", 0, 16)]

    # Per-tensor fp8.
    normal = f32(rng.standard_normal(int(rng.integers(500, 600))) * 100)
    fp8_scale = scale_of(normal, "fp8")
    tensors["fp8_x"] = np.concatenate([normal, f32(fp8_points(fp8_scale[0]) + EXTREMES + [np.nan])])
    tensors["fp8_scale"] = fp8_scale
    cases.append(("fp8", "fp8_x", "fp8", None, None))

    # Extras: a 3-D tensor per channel (int8, int4, fp8) and a block longer than its axis.
    shape = (int(rng.integers(2, 5)), int(rng.integers(5, 12)), int(rng.integers(3, 10)))
    x = f32(rng.standard_normal(shape) * 2)
    ch3, ch3i4, ch3f8 = scale_of(x, "int8", 1), scale_of(x, "int4", 2), scale_of(x, "fp8", 1)
    bl = scale_of(x, "int4", 2, 16)
    taken = set()
    plant_points(x, rng, element_scale(ch3, shape, 1, None), ipts("int8"), 12, taken)
    plant_points(x, rng, element_scale(ch3i4, shape, 2, None), ipts("int4"), 12, taken)
    plant_points(x, rng, element_scale(ch3f8, shape, 1, None), lambda sc: fp8_points(sc)[:7], 10, taken)
    plant_points(x, rng, element_scale(bl, shape, 2, 16), ipts("int4"), 12, taken)
    plant_points(x, rng, lambda p: 1.0, lambda _: FINITE_EXTREMES, 6, taken)
    tensors.update(ch3_x=x, ch3_scale=ch3, ch3i4_scale=ch3i4, ch3f8_scale=ch3f8, bl_scale=bl)
    cases += [
        ("ch3", "ch3_x", "int8", 1, None),
        ("ch3i4", "ch3_x", "int4", -1, None),
        ("ch3f8", "ch3_x", "fp8", 1, None),
        ("bl", "ch3_x", "int4", 2, 16),
    ]

    # fp8 per channel of a weight, along each axis.
    r, c = int(rng.integers(6, 13)), int(rng.integers(17, 31))
    w = f32(rng.standard_normal((r, c)) * 10)
    fc, fc1 = scale_of(w, "fp8", 0), scale_of(w, "fp8", 1)
    taken = set()
    plant_points(w, rng, element_scale(fc, w.shape, 0, None), fp8_points, 3 * r, taken)
    plant_points(w, rng, element_scale(fc1, w.shape, 1, None), fp8_points, 2 * c, taken)
    plant_points(w, rng, lambda p: 1.0, lambda _: EXTREMES + [np.nan], 9, taken)
    tensors.update(fc_w=w, fc_scale=fc, fc1_scale=fc1)
    cases += [("fc", "fc_w", "fp8", 0, None), ("fc1", "fc_w", "fp8", 1, None)]

    # Shorter last blocks.
    r = int(rng.choice([v for v in range(17, 22) if v % 16]))
    d = int(rng.choice([v for v in range(65, 91) if v % 32]))
    w = f32(rng.standard_normal((r, d)))
    br4, br8, br40 = scale_of(w, "int4", 1, 64), scale_of(w, "int8", 1, 32), scale_of(w, "int4", 0, 16)
    taken = set()
    plant_points(w, rng, element_scale(br4, w.shape, 1, 64), ipts("int4"), 40, taken)
    plant_points(w, rng, element_scale(br8, w.shape, 1, 32), ipts("int8"), 40, taken)
    plant_points(w, rng, element_scale(br40, w.shape, 0, 16), ipts("int4"), 40, taken)
    plant_points(w, rng, lambda p: 1.0, lambda _: FINITE_EXTREMES, 6, taken)
    tensors.update(br_w=w, br4_scale=br4, br8_scale=br8, br40_scale=br40)
    cases += [
        ("br4", "br_w", "int4", 1, 64),
        ("br8", "br_w", "int8", 1, 32),
        ("br40", "br_w", "int4", 0, 16),
    ]

    shape = (
        int(rng.integers(2, 4)),
        int(rng.choice([v for v in range(17, 31) if v % 8])),
        int(rng.choice([3, 5, 6, 7])),
    )
    x = f32(rng.standard_normal(shape))
    b3, b3l = scale_of(x, "int4", 1, 8), scale_of(x, "int8", 2, 4)
    taken = set()
    plant_points(x, rng, element_scale(b3, shape, 1, 8), ipts("int4"), 30, taken)
    plant_points(x, rng, element_scale(b3l, shape, 2, 4), ipts("int8"), 30, taken)
    plant_points(x, rng, lambda p: 1.0, lambda _: FINITE_EXTREMES, 6, taken)
    tensors.update(b3_x=x, b3_scale=b3, b3l_scale=b3l)
    cases += [("b3", "b3_x", "int4", 1, 8), ("b3l", "b3_x", "int8", -1, 4)]

    # Exact ties: power-of-two scales.
    ti = []
    for k in range(-131, 131):
        m = F32((k + 0.5) / 8)
        ti += [m, np.nextafter(m, F32(np.inf), dtype=F32), np.nextafter(m, F32(-np.inf), dtype=F32)]
    tensors["ti_x"] = f32(ti + [0.0, -0.0])
    tensors["ti_scale"] = f32(0.125)
    tensors["ti4_scale"] = f32(0.125)
    tensors["t8_x"] = (e4m3_midpoints() * F32(0.5)).astype(F32)
    tensors["t8_scale"] = f32(0.5)
    cases += [("ti", "ti_x", "int8", None, None), ("ti4", "ti_x", "int4", None, None),
              ("t8", "t8_x", "fp8", None, None)]

    # 16-bit inputs, from a stream of their own (the float32 cases above stay as they were).
    for ftype in HALF_TYPES:
        half_tensors, half_cases = build_half(np.random.default_rng([seed, 16]), ftype)
        tensors.update(half_tensors)
        cases += half_cases
    return tensors, cases


def build_half(rng, ftype):
    """The 16-bit cases of `ftype` (see the module's table): tensors hold float32 values that
    `ftype` holds exactly; cases are (prefix, x name, qtype, axis, block, ftype)."""
    p = HALF_TYPES[ftype][2]
    h = lambda values: to_half(values, ftype)  # noqa: E731
    tensors, cases = {}, []

    def scale16(x, qtype, axis=None, block=None):
        return h(scale_of(x, qtype, axis, block))

    def int16_points(sc, qtype):
        return list(h(int_points(sc, qtype)))

    normal = h(rng.standard_normal(int(rng.integers(300, 400))) * 3)
    s8, s4 = scale16(normal, "int8"), scale16(normal, "int4")
    ties = list(h([F32(F32(k + 0.5) * s8[0]) for k in range(-40, 40)]))
    # No infinities: ONNX Runtime 1.30 quantizes float16 +inf to -128 (-8 for int4).
    extra = ties + int16_points(s8[0], "int8") + int16_points(s4[0], "int4") + list(h(FINITE_EXTREMES))
    tensors[f"{p}_x"] = np.concatenate([normal, f32(extra)])
    tensors[f"{p}_scale"], tensors[f"{p}4_scale"] = s8, s4
    cases += [(p, f"{p}_x", "int8", None, None, ftype), (f"{p}4", f"{p}_x", "int4", None, None, ftype)]

    # Exact ties of a power-of-two scale, with their neighbours in the 16-bit type.
    step = np.float16 if ftype == "float16" else None
    ti = []
    for k in range(-128, 128):
        m = F32((k + 0.5) / 8)
        if step is not None:
            up = F32(np.nextafter(np.float16(m), np.float16(np.inf)))
            down = F32(np.nextafter(np.float16(m), np.float16(-np.inf)))
        else:
            # bfloat16 is float32's top half: a neighbour is 2^16 float32 patterns away.
            bits = int(np.array([m], dtype=F32).view(np.uint32)[0])
            away = 0x10000 if m > 0 else -0x10000  # towards +inf
            up, down = (np.array([bits + d], dtype=np.uint32).view(F32)[0] for d in (away, -away))
        ti += [m, up, down]
    tensors[f"{p}t_x"] = h(ti + [0.0, -0.0])
    assert np.array_equal(tensors[f"{p}t_x"][:3], f32(ti[:3])), "ties exact in the 16-bit type"
    tensors[f"{p}t_scale"] = f32(0.125)
    tensors[f"{p}t4_scale"] = f32(0.125)
    cases += [(f"{p}t", f"{p}t_x", "int8", None, None, ftype),
              (f"{p}t4", f"{p}t_x", "int4", None, None, ftype)]

    normal = h(rng.standard_normal(int(rng.integers(300, 400))) * 100)
    sf8 = scale16(normal, "fp8")
    tensors[f"{p}f8_x"] = np.concatenate([normal, h(fp8_points(sf8[0]) + EXTREMES + [np.nan])])
    tensors[f"{p}f8_scale"] = sf8
    cases.append((f"{p}f8", f"{p}f8_x", "fp8", None, None, ftype))

    r, c = int(rng.integers(9, 17)), int(rng.integers(20, 41))
    w = h(rng.standard_normal((r, c)) * 4)
    sc, scf8 = scale16(w, "int8", 0), scale16(w, "fp8", 1)
    taken = set()
    plant_points(w, rng, element_scale(sc, w.shape, 0, None), lambda v: int16_points(v, "int8"), 30, taken)
    plant_points(w, rng, element_scale(scf8, w.shape, 1, None), lambda v: list(h(fp8_points(v)[:7])), 20, taken)
    plant_points(w, rng, lambda _: 1.0, lambda _: list(h(FINITE_EXTREMES)), 6, taken)
    tensors.update({f"{p}c_w": w, f"{p}c_scale": sc, f"{p}cf8_scale": scf8})
    cases += [(f"{p}c", f"{p}c_w", "int8", 0, None, ftype), (f"{p}cf8", f"{p}c_w", "fp8", 1, None, ftype)]

    r = int(rng.choice([v for v in range(17, 22) if v % 16]))
    d = int(rng.choice([v for v in range(40, 64) if v % 32]))
    w = h(rng.standard_normal((r, d)))
    sb4, sb8 = scale16(w, "int4", 1, 32), scale16(w, "int8", 0, 16)
    taken = set()
    plant_points(w, rng, element_scale(sb4, w.shape, 1, 32), lambda v: int16_points(v, "int4"), 30, taken)
    plant_points(w, rng, element_scale(sb8, w.shape, 0, 16), lambda v: int16_points(v, "int8"), 30, taken)
    plant_points(w, rng, lambda _: 1.0, lambda _: list(h(FINITE_EXTREMES)), 6, taken)
    tensors.update({f"{p}b_w": w, f"{p}b4_scale": sb4, f"{p}b8_scale": sb8})
    cases += [(f"{p}b4", f"{p}b_w", "int4", 1, 32, ftype), (f"{p}b8", f"{p}b_w", "int8", 0, 16, ftype)]
    return tensors, cases


# ----------------------------------------------------------------------------------------------
# Output

ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8"}


def write_safetensors(path, tensors, half=None):
    """A safetensors file (names sorted; data 8-byte aligned), without the safetensors package.
    `half` maps names of float32 tensors to the 16-bit type they are written in."""
    half = half or {}
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dtype = ST_DTYPES[a.dtype]
        if name in half:
            dtype = HALF_TYPES[half[name]][1]
            a = half_bits(a, half[name])
        data = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    out = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) == 3 else DEFAULT_SEED
    tensors, cases = build(seed)
    report = []
    half = {}  # tensor name -> 16-bit type it is written in
    unsupported = set()
    for prefix, x_name, qtype, axis, block, *rest in cases:
        ftype = rest[0] if rest else "float32"
        if ftype in unsupported:
            continue
        x, scale = tensors[x_name], tensors[f"{prefix}_scale"]
        try:
            codes, dq = run_ort(x, scale, qtype, axis, block, ftype)
        except Exception as error:
            if ftype == "float32":
                raise
            # No kernel for this 16-bit type: its cases leave the file, all of them.
            print(f"{ftype}: left out, ONNX Runtime failed on {prefix}: {error}", file=sys.stderr)
            unsupported.add(ftype)
            continue
        tensors[f"{prefix}_bits" if qtype == "fp8" else f"{prefix}_q"] = codes
        tensors[f"{prefix}_dq"] = dq
        if ftype != "float32":
            for name in (x_name, f"{prefix}_scale", f"{prefix}_dq"):
                half[name] = ftype
        ref_codes, ref_dq = numpy_reference(
            x, scale, qtype, None if axis is None else axis % x.ndim, block, ftype)
        nan = np.isnan(dq) & np.isnan(ref_dq)
        report.append({
            "case": prefix,
            "x": x_name,
            "shape": list(x.shape),
            "scale": list(scale.shape),
            "qtype": qtype,
            "axis": axis,
            "block": block,
            "float": ftype,
            "numpy_code_mismatches": int((codes != ref_codes).sum()),
            "numpy_dq_bit_mismatches": int(((float_bits(dq) != float_bits(ref_dq)) & ~nan).sum()),
        })
    for prefix, x_name, qtype, _, _, *rest in cases:
        if rest and rest[0] in unsupported:
            for name in (x_name, f"{prefix}_scale", f"{prefix}_q", f"{prefix}_bits", f"{prefix}_dq"):
                tensors.pop(name, None)
                half.pop(name, None)
            report = [r for r in report if r["case"] != prefix]
    write_safetensors(out, tensors, half)
    for line in report:
        print(json.dumps(line))
    print(json.dumps({"file": out, "seed": seed, "tensors": len(tensors), "onnxruntime": ort.__version__,
                      "onnx": onnx.__version__}))


if __name__ == "__main__":
    main()
