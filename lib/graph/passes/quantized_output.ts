/**
 * Quantized-output fusion: the op whose output a `qlinear` quantizes writes the codes itself,
 * so the activations never make a round trip through memory in float only to be read back by
 * the quantize kernel.
 *
 * Rule: a `qlinear` (made by the Q/DQ fusion pass, lib/graph/passes/qdq_fusion.ts) without a
 * folded layer norm, whose x has more than {@link QUANTIZED_OUTPUT_MIN_ROWS} rows, and whose x
 * is the output of a producer P, directly or through `reshape`s, where
 *
 * - P is an `attention`, `linear`, `qlinear` or `wlinear` node with a float output and no
 *   residual folded in,
 * - P and every reshape between have one reader (the next op of the chain; not a graph output),
 * - the qlinear's input quantize scale is a leaf or made before P.
 *
 * P then computes its output as before, rounded to its float dtype, and writes
 * `quantize(that, sxq)` (the qlinear's own per-tensor quantize: true division, round half to
 * even, saturation) in the qlinear's code dtype. P gains attr `codesOut` (the float dtype it
 * computes in) and the qlinear's input quantize scale as its LAST input:
 *
 *     attention [q, k, v, kvLength?, sxq]
 *     linear    [x, W, bias?, sxq]
 *     qlinear   [x, sxq, sxd, W, swq, swd, bias?, lnWeight?, lnBias?, sxq']
 *     wlinear   [x, W, swq, swd, bias?, lnWeight?, lnBias?, sxq]
 *
 * The reshapes carry the codes (their dtype becomes the code dtype) and the qlinear gains attr
 * `codesIn: true`: its x is already quantized with its `sxq`.
 *
 * Every backend computes the unfused graph's codes exactly: an op without a kernel of its own
 * for this runs its plain kernel and the quantize kernel after it (the backends' `codesOut`
 * fallbacks); the CUDA flash attention and int8 GEMM kernels quantize in their epilogue, after
 * the output's rounding. Only cuBLASLt's fp8 product with an fp8 output (used for a `qlinear`
 * float8e4m3 producer) multiplies by the scale's reciprocal without the intermediate rounding,
 * and may differ by one code step where a value lies within rounding error of a step's edge
 * (see lib/backends/cuda/linear.ts).
 *
 * Small x (at most {@link QUANTIZED_OUTPUT_MIN_ROWS} rows) is left alone: there the fused GEMV
 * quantizes x while it loads it, and nothing would be saved.
 *
 * Switch: {@link setQuantizedOutputFusion}; plans are cached per setting. It is OFF by default:
 * on an H200 the epilogues that quantize are slower than the separate quantize launches they
 * save (GPT-2 small prefill, 8 × 512 tokens: the int8 GELU GEMM with int8 codes out took
 * 60.4 µs against 32.3 µs for float16 out plus about 15 µs of quantize kernel, and the flash
 * attention with codes out 26.2 µs against 22.0 + 3.5 µs; bench/RESULTS.md), so a prefill ran
 * 4% slower with it. The codes are exact either way.
 * @module
 */
import type { PlanGraph, PlanNode, ValueRef } from "../../backends/backend.ts";
import { numel } from "../../shape.ts";
// Imported for their registration: these passes must run first (they make the linear ops,
// fold residuals, and give attention its output layout).
import "./qdq_fusion.ts";
import "./residual_fusion.ts";
import "./attention_views.ts";
import { registerPass } from "./mod.ts";
import { consumers } from "./rewrite.ts";

let enabled = false;

/**
 * Turns quantized-output fusion (the producer of a `qlinear`'s x writes x's codes) on or off
 * (off by default: see the module's notes). Plans are cached per setting.
 */
export function setQuantizedOutputFusion(on: boolean): void {
  enabled = on;
}

/** True when producers write the codes of the `qlinear`s that read them. */
export function quantizedOutputFusionEnabled(): boolean {
  return enabled;
}

/**
 * Most rows of a `qlinear`'s x that are left to the qlinear's own quantize (the fused GEMV's
 * row limit, `QGEMV_MAX_ROWS` on CUDA).
 */
export const QUANTIZED_OUTPUT_MIN_ROWS = 8;

const PRODUCERS = new Set(["attention", "linear", "qlinear", "wlinear"]);
const FLOAT_DTYPES = new Set(["float32", "float16", "bfloat16"]);

function fuse(graph: PlanGraph): PlanGraph {
  if (!enabled || !graph.nodes.some((n) => n.op === "qlinear")) return graph;
  const g: PlanGraph = { ...graph, nodes: [...graph.nodes] };
  const users = consumers(g);
  const onlyReader = (k: number, reader: number) => users[k].length === 1 && users[k][0] === reader;
  let changed = false;
  for (let i = 0; i < g.nodes.length; i++) {
    const q = g.nodes[i];
    if (q.op !== "qlinear" || q.attrs.norm !== undefined || q.attrs.codesIn === true) continue;
    const qdtype = q.attrs.qdtype as string;
    const x = q.inputs[0];
    if (!("node" in x)) continue;
    const k = g.nodes[x.node].shape.at(-1) ?? 0;
    if (k === 0 || numel(g.nodes[x.node].shape) / k <= QUANTIZED_OUTPUT_MIN_ROWS) continue;
    // Walk back through reshapes, each read by the next op of the chain only.
    const chain: number[] = [];
    let ref: ValueRef = x;
    let reader = i;
    while ("node" in ref && g.nodes[ref.node].op === "reshape" && onlyReader(ref.node, reader)) {
      chain.push(ref.node);
      reader = ref.node;
      ref = g.nodes[ref.node].inputs[0];
    }
    if (!("node" in ref) || !onlyReader(ref.node, reader)) continue;
    const p = g.nodes[ref.node];
    if (!PRODUCERS.has(p.op) || !FLOAT_DTYPES.has(p.dtype)) continue;
    if (p.attrs.residual === true || p.attrs.codesOut !== undefined) continue;
    // P will read the scale: it must exist before P (a leaf, or a node made earlier).
    const sxq = q.inputs[1];
    if ("node" in sxq && sxq.node >= ref.node) continue;
    g.nodes[ref.node] = {
      ...p,
      dtype: qdtype as PlanNode["dtype"],
      attrs: { ...p.attrs, codesOut: p.dtype },
      inputs: [...p.inputs, sxq],
    };
    for (const r of chain) g.nodes[r] = { ...g.nodes[r], dtype: qdtype as PlanNode["dtype"] };
    g.nodes[i] = { ...q, attrs: { ...q.attrs, codesIn: true } };
    changed = true;
  }
  return changed ? g : graph;
}

registerPass("quantized-output", fuse, () => (enabled ? "on" : "off"));
