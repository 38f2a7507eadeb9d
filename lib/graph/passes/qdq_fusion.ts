/**
 * Q/DQ fusion: rotates dequantize past matmul so the product runs in low precision.
 *
 * Recognized (the form `tq.Linear` produces, and the same written by hand):
 *
 *     y = matmul(dequantize(quantize(x, sxq), sxd), permute(dequantize(quantize(W, swq), swd), [1, 0]))
 *         [+ bias [N]] [→ relu | gelu]
 *
 * - `qlinear` (weights and activations quantized, int8 or fp8): x quantized per tensor, W
 *   [N, K] per tensor or per output channel (dim 0). Computes `acc = Σ qx·qw` exactly (int32 or
 *   fp8 products) and `y = acc · sxd · swd[n] (+ b)` in float32 — the same function as the
 *   float fake-quant graph up to float32 rounding (and overflow: the fused op forms no 16-bit
 *   intermediate, so it gives a finite value where the unfused graph's overflows). Inputs
 *   `[x, sxq, sxd, W, swq, swd, bias?]`.
 * - `wlinear` (weight-only: x stays float): W quantized per tensor, per channel or block-wise
 *   (int8, int4, fp8). Inputs `[x, W, swq, swd, bias?]`. Block-wise weights may end in a
 *   shorter block (block size not dividing the blocked axis, as ONNX allows).
 *
 * A layer norm over the last dim whose only reader is a `qlinear` (through its quantize) is
 * folded into it, whatever the number of rows ({@link setNormFolding}): x becomes the norm's
 * input, attrs gain `norm: {eps, hasWeight, hasBias}` and the norm's weight and bias follow the
 * qlinear's inputs. The folded op computes the layer norm followed by the qlinear; backends save
 * the normalized values' round trip through memory (on CUDA the fused GEMV normalizes x itself
 * at up to 8 rows, and larger products read x's codes that the layer norm writes directly in
 * place of the quantize kernel). The same holds for a `wlinear` that reads the norm directly,
 * with x of at most {@link WLINEAR_NORM_FOLD_MAX_ROWS} rows (its own limit): inputs
 * `[x, W, swq, swd, bias?, lnWeight?, lnBias?]`.
 *
 * Both take the float weight W: backends quantize it once and cache the result per weight
 * buffer (weights are constants). A compressed weight (`Linear.compressWeight`) is already
 * its codes, `dequantize(codes, swd)`: the fused op then takes the codes as W (and swd in
 * swq's place) with attr `weightCodes`, and backends read them as they are. If the output of
 * a dequantize was evaluated before the matmul that reads it (printing it, say), the pattern is
 * gone: the result stays correct, and the pass warns once, naming the line.
 *
 * Float Linear layers are fused too, under their own switch ({@link setLinearFusion}):
 *
 *     y = matmul(x, permute(W, [1, 0])) [+ bias [N]] [→ relu | gelu]
 *
 * with W a 2-D float `[N, K]` weight that is not the output of a dequantize (those are the Q/DQ
 * patterns above, or fake-quant graphs left unfused on purpose) becomes `linear` with inputs
 * `[x, W, bias?]` and attrs `{hasBias, activation}`: the product, bias and activation rounded
 * once to the output dtype (the unfused graph rounds after each op, so results differ by float
 * rounding, and where an intermediate of the unfused graph overflows a 16-bit dtype, the fused
 * op gives the finite value, as PyTorch's `linear` does). Bias and activation are absorbed by
 * the same rules as for `qlinear`, and a layer norm that only it reads is folded at up to
 * {@link LINEAR_NORM_FOLD_MAX_ROWS} rows (inputs `[x, W, bias?, lnWeight?, lnBias?]`).
 * @module
 */
import type { PlanGraph, PlanNode, ValueRef } from "../../backends/backend.ts";
import { refInfo } from "../../backends/backend.ts";
import { checkBoolean, formatCallSite } from "../../errors.ts";
import { numel } from "../../shape.ts";
import type { Node } from "../node.ts";
import { type PassContext, registerPass } from "./mod.ts";
import { consumers, producer, removeDeadNodes } from "./rewrite.ts";

let enabled = true;

/** Turns Q/DQ fusion on or off (on by default); off evaluates the float fake-quant graph. */
export function setQdqFusion(on: boolean): void {
  enabled = checkBoolean("setQdqFusion", "on", on);
}

/** True when Q/DQ fusion is on. */
export function qdqFusionEnabled(): boolean {
  return enabled;
}

let linearEnabled = true;

/**
 * Turns float Linear fusion (`matmul(x, Wᵀ) [+ b] [→ act]` into one `linear` op) on or off
 * (on by default). Independent of {@link setQdqFusion}; plans are cached per setting.
 */
export function setLinearFusion(on: boolean): void {
  linearEnabled = checkBoolean("setLinearFusion", "on", on);
}

/** True when float Linear fusion is on. */
export function linearFusionEnabled(): boolean {
  return linearEnabled;
}

let normFolding = true;

/**
 * Turns the folding of a layer norm into the `qlinear` that reads it (any number of rows) and
 * into the decode-sized `wlinear` (up to 8 rows) and `linear` (up to 16 rows) that read it on
 * or off (on by default; off keeps `layerNorm` apart). Plans are cached per setting.
 */
export function setNormFolding(on: boolean): void {
  normFolding = checkBoolean("setNormFolding", "on", on);
}

/** True when layer norms are folded into the fused linear ops that read them. */
export function normFoldingEnabled(): boolean {
  return normFolding;
}

/**
 * Most rows of x for which a layer norm is folded into the `wlinear` reading it: the rows the
 * CUDA streaming GEMV takes (`WGEMV_MMA_MAX_ROWS`), which then normalizes x while staging it.
 * The `qlinear` fold has no such limit: a larger weight-only product would only run the
 * layer norm kernel into scratch memory first.
 */
export const WLINEAR_NORM_FOLD_MAX_ROWS = 8;

/**
 * Most rows of x for which a layer norm is folded into the float `linear` reading it: the rows
 * the CUDA GEMV takes (`FLINEAR_GEMV_MAX_ROWS`), which then normalizes x while staging it.
 * Larger products gain nothing from the fold (cuBLASLt reads x from memory).
 */
export const LINEAR_NORM_FOLD_MAX_ROWS = 16;

/** Most rows of x for which each fused op takes a folded layer norm. */
const NORM_FOLD_MAX_ROWS: Record<string, number> = {
  qlinear: Infinity,
  wlinear: WLINEAR_NORM_FOLD_MAX_ROWS,
  linear: LINEAR_NORM_FOLD_MAX_ROWS,
};

const FLOAT_WEIGHT_DTYPES = new Set(["float32", "float16", "bfloat16"]);

/**
 * True when `t` transposes a 2-D value: `permute(W, [1, 0])`, or the view that stands for it
 * when an extent is 1 (permute makes no copy then: `[1, K] → [K, 1]`).
 */
function isTranspose2d(g: PlanGraph, t: PlanNode | undefined): t is PlanNode {
  if (!t) return false;
  if (t.op === "permute") return JSON.stringify(t.attrs.axes) === "[1,0]";
  if (t.op !== "reshape" || t.shape.length !== 2) return false;
  const w = t.inputs[0];
  const shape = ("leaf" in w ? g.leaves[w.leaf] : g.nodes[w.node]).shape;
  return shape.length === 2 && (shape[0] === 1 || shape[1] === 1) &&
    t.shape[0] === shape[1] && t.shape[1] === shape[0];
}

/**
 * Matches `permute(W, [1, 0])` with W a 2-D float weight that no dequantize produced in this
 * graph, and `[N, K]` with K the last extent of the matmul's first input.
 */
function matchFloatWeight(g: PlanGraph, ref: ValueRef, k: number): ValueRef | undefined {
  const t = producer(g, ref);
  if (!isTranspose2d(g, t)) return undefined;
  const w = t.inputs[0];
  const info = "leaf" in w ? g.leaves[w.leaf] : g.nodes[w.node];
  if (info.shape.length !== 2 || info.shape[1] !== k) return undefined;
  if (!FLOAT_WEIGHT_DTYPES.has(info.dtype)) return undefined;
  if (producer(g, w)?.op === "dequantize") return undefined;
  return w;
}

const ACTIVATIONS: Record<string, (n: PlanNode) => string | undefined> = {
  relu: () => "relu",
  gelu: (n) => (n.attrs.approximate === "tanh" ? "gelu_tanh" : "gelu"),
};

interface WeightMatch {
  /** The float weight, or its codes when `codes`. */
  w: ValueRef;
  swq: ValueRef;
  swd: ValueRef;
  qdtype: string;
  mode: string;
  dim: number | null;
  blockSize: number | null;
  /** W is the weight's codes already (a compressed weight: no quantize in the graph). */
  codes: boolean;
}

const WEIGHT_CODE_DTYPES = new Set(["int8", "int4", "float8e4m3"]);

/**
 * Matches `permute(dequantize(quantize(W, swq), swd), [1, 0])` with W 2-D, or, for a
 * compressed weight, `permute(dequantize(codes, swd), [1, 0])` with codes `[N, K]` in int8,
 * int4 or float8e4m3 (swq then stands for swd: the fused ops read codes as they are).
 */
function matchWeight(g: PlanGraph, ref: ValueRef): WeightMatch | undefined {
  const t = producer(g, ref);
  if (!isTranspose2d(g, t)) return undefined;
  const dq = producer(g, t.inputs[0]);
  if (!dq || dq.op !== "dequantize") return undefined;
  const mode = dq.attrs.mode as string;
  const dim = dq.attrs.dim as number | null;
  const blockSize = dq.attrs.blockSize as number | null;
  const q = producer(g, dq.inputs[0]);
  if (q?.op !== "quantize") {
    const codes = refInfo(g, dq.inputs[0]);
    if (codes.shape.length !== 2 || !WEIGHT_CODE_DTYPES.has(codes.dtype)) return undefined;
    const [w, swd] = dq.inputs;
    return { w, swq: swd, swd, qdtype: codes.dtype, mode, dim, blockSize, codes: true };
  }
  if (q.shape.length !== 2) return undefined;
  if (q.attrs.mode !== mode || q.attrs.dim !== dim || q.attrs.blockSize !== blockSize) {
    return undefined;
  }
  return {
    w: q.inputs[0],
    swq: q.inputs[1],
    swd: dq.inputs[1],
    qdtype: q.dtype,
    mode,
    dim,
    blockSize,
    codes: false,
  };
}

/** matches `dequantize(quantize(x, sxq), sxd)` per tensor. */
function matchInput(g: PlanGraph, ref: ValueRef) {
  const dq = producer(g, ref);
  if (!dq || dq.op !== "dequantize" || dq.attrs.mode !== "tensor") return undefined;
  const q = producer(g, dq.inputs[0]);
  if (!q || q.op !== "quantize" || q.attrs.mode !== "tensor") return undefined;
  return { x: q.inputs[0], sxq: q.inputs[1], sxd: dq.inputs[1], qdtype: q.dtype };
}

const warned = new WeakSet<Node>();

function warnLostFusion(ctx: PassContext, g: PlanGraph, matmulIndex: number): void {
  for (const ref of g.nodes[matmulIndex].inputs) {
    let r = ref;
    // Look through a transpose of the weight.
    const t = producer(g, r);
    if (t?.op === "permute" || isTranspose2d(g, t)) r = t!.inputs[0];
    if (!("leaf" in r)) continue;
    const leaf = ctx.leafNodes[r.leaf];
    if (leaf.op !== "dequantize" || warned.has(leaf)) continue;
    warned.add(leaf);
    const mm = ctx.nodes[matmulIndex];
    console.warn(
      `tensorq: Q/DQ fusion lost: the output of dequantize created at ${
        formatCallSite(leaf.callSite)
      } was evaluated before the matmul at ${
        formatCallSite(mm?.callSite)
      } that reads it, so the product runs in floating point. Avoid evaluating or printing dequantized values that feed a matmul.`,
    );
  }
}

function fuse(graph: PlanGraph, ctx: PassContext): PlanGraph {
  if (!graph.nodes.some((n) => n.op === "matmul")) return graph;
  const g: PlanGraph = { ...graph, nodes: [...graph.nodes] };
  const users = consumers(g);
  let changed = false;
  for (let i = 0; i < g.nodes.length; i++) {
    const m = g.nodes[i];
    if (m.op !== "matmul") continue;
    // Original node order equals graph order until the first rewrite; only warn then.
    if (!changed && ctx.nodes.length === graph.nodes.length) warnLostFusion(ctx, g, i);
    const a = g.nodes[i].inputs[0];
    const aInfo = "leaf" in a ? g.leaves[a.leaf] : g.nodes[a.node];
    if (aInfo.shape.length < 1) continue;
    const w = enabled ? matchWeight(g, m.inputs[1]) : undefined;
    const floatW = !w && linearEnabled
      ? matchFloatWeight(g, m.inputs[1], aInfo.shape[aInfo.shape.length - 1])
      : undefined;
    if (!w && !floatW) continue;
    const input = w ? matchInput(g, a) : undefined;
    const fullQuant = w !== undefined && input !== undefined && input.qdtype === w.qdtype &&
      (w.qdtype === "int8" || w.qdtype === "float8e4m3") &&
      (w.mode === "tensor" || (w.mode === "channel" && w.dim === 0));

    // Absorb a bias add over the last dim, then an activation, when nothing else reads them.
    let last = i;
    let bias: ValueRef | undefined;
    const n = m.shape[m.shape.length - 1];
    const only = (k: number) => users[k].length === 1 && users[k][0] >= 0 ? users[k][0] : -1;
    const addIdx = only(last);
    if (addIdx >= 0 && g.nodes[addIdx].op === "add") {
      const add = g.nodes[addIdx];
      const other = "node" in add.inputs[0] && add.inputs[0].node === last
        ? add.inputs[1]
        : add.inputs[0];
      const info = "leaf" in other ? g.leaves[other.leaf] : g.nodes[other.node];
      if (info.shape.length === 1 && info.shape[0] === n && info.dtype === m.dtype) {
        bias = other;
        last = addIdx;
      }
    }
    let activation = "none";
    const actIdx = only(last);
    if (actIdx >= 0 && ACTIVATIONS[g.nodes[actIdx].op]) {
      activation = ACTIVATIONS[g.nodes[actIdx].op](g.nodes[actIdx])!;
      last = actIdx;
    }
    const out = g.nodes[last];
    if (!w) {
      const linear: PlanNode = {
        op: "linear",
        attrs: { hasBias: bias !== undefined, activation },
        shape: out.shape,
        dtype: out.dtype,
        inputs: [a, floatW!, ...(bias ? [bias] : [])],
      };
      if (normFolding) foldNorm(g, users, linear, a, i);
      g.nodes[last] = linear;
      changed = true;
      continue;
    }
    const common = {
      hasBias: bias !== undefined,
      activation,
      weightMode: w.mode,
      weightDim: w.dim,
      blockSize: w.blockSize,
      qdtype: w.qdtype,
      ...(w.codes ? { weightCodes: true } : {}),
    };
    const fused: PlanNode = fullQuant
      ? {
        op: "qlinear",
        attrs: common,
        shape: out.shape,
        dtype: out.dtype,
        inputs: [input!.x, input!.sxq, input!.sxd, w.w, w.swq, w.swd, ...(bias ? [bias] : [])],
      }
      : {
        op: "wlinear",
        attrs: common,
        shape: out.shape,
        dtype: out.dtype,
        inputs: [a, w.w, w.swq, w.swd, ...(bias ? [bias] : [])],
      };
    if (normFolding) foldNorm(g, users, fused, a, i);
    g.nodes[last] = fused;
    changed = true;
  }
  return changed ? removeDeadNodes(g) : g;
}

/**
 * Folds `layerNorm(x)` (over the last dim) into `fused`, the qlinear, wlinear or linear whose
 * matmul at `matmulIndex` reads it at `xRef` (a qlinear through `dequantize(quantize(·))`, the
 * others directly), when nothing else reads the norm (nor the quantize and dequantize) and x has
 * at least one row (a qlinear takes any number, a wlinear at most
 * {@link WLINEAR_NORM_FOLD_MAX_ROWS}, a linear {@link LINEAR_NORM_FOLD_MAX_ROWS}): x becomes the
 * norm's input, attrs `norm: {eps, hasWeight, hasBias}`, and the norm's weight and bias follow
 * the fused op's own inputs.
 */
function foldNorm(
  g: PlanGraph,
  users: number[][],
  fused: PlanNode,
  xRef: ValueRef,
  matmulIndex: number,
): void {
  const onlyReader = (k: number, reader: number) => users[k].length === 1 && users[k][0] === reader;
  let lnRef = xRef;
  let lnReader = matmulIndex;
  if (fused.op === "qlinear") {
    if (!("node" in xRef) || !onlyReader(xRef.node, matmulIndex)) return;
    const qRef = g.nodes[xRef.node].inputs[0];
    if (!("node" in qRef) || !onlyReader(qRef.node, xRef.node)) return;
    lnRef = g.nodes[qRef.node].inputs[0];
    lnReader = qRef.node;
  }
  if (!("node" in lnRef)) return;
  const ln = g.nodes[lnRef.node];
  if (ln.op !== "layerNorm" || ln.attrs.dims !== 1 || ln.shape.length < 1) return;
  if (!onlyReader(lnRef.node, lnReader)) return;
  const k = ln.shape[ln.shape.length - 1];
  const rows = k === 0 ? 0 : numel(ln.shape) / k;
  if (rows < 1 || rows > NORM_FOLD_MAX_ROWS[fused.op]) return;
  fused.attrs = {
    ...fused.attrs,
    norm: { eps: ln.attrs.eps, hasWeight: ln.attrs.hasWeight, hasBias: ln.attrs.hasBias },
  };
  fused.inputs = [ln.inputs[0], ...fused.inputs.slice(1), ...ln.inputs.slice(1)];
}

registerPass(
  "qdq-fusion",
  fuse,
  () =>
    `${enabled ? "on" : "off"}/linear-${linearEnabled ? "on" : "off"}/norm-${
      normFolding ? "on" : "off"
    }`,
);
