/**
 * Fused scaled-dot-product attention: `softmax(q·kᵀ·scale + mask)·v` as one op. Rule here;
 * CPU kernel in lib/backends/cpu/attention.ts, CUDA kernels in kernels/attention.cu.
 *
 * Inputs are `[q, k, v]`, plus `kvLength` when given (then `[q, k, v, kvLength]`). Attrs:
 * `{scale, causal, hasKvLength}` (`scale` already defaulted, so the attrs fully determine the
 * kernel).
 *
 * The attention-view pass (lib/graph/passes/attention_views.ts) may add two attrs that change
 * only where the kernels read and write:
 * - `views: [q, k, v]`, each null or an {@link AttentionView}: that input is then the source
 *   value of a chain of slices, permutes and reshapes, read as a strided view;
 * - `outputLayout: "bthd"`: a rank-4 result `[B, H, T, Dv]` is written as `[B, T, H, Dv]` (the
 *   node's shape is then `[B, T, H, Dv]`).
 * Only problems for which {@link attentionTakesViews} holds get them.
 * @module
 */
import type { DType } from "../dtype.ts";
import { checkFiniteNumber, describeValue, optionsOf } from "../shape.ts";
import { fmtShape, TensorqError } from "../errors.ts";
import type { Tensor } from "../tensor.ts";
import {
  checkDTypeIn,
  checkSameDevice,
  checkSameDType,
  checkTensor,
  FLOAT_DTYPES,
  makeOp,
} from "./op.ts";

/** Options of {@link attention}. */
export interface AttentionOptions {
  /** Factor applied to the scores `q·k` (default `1/√D`, or 1 when `D` is 0). */
  scale?: number;
  /**
   * Causal masking, bottom-right aligned: query `i` sees key `j` only when
   * `j <= i + (L − T)` (default false).
   */
  causal?: boolean;
  /**
   * The number of valid keys `L` as an int32 tensor of shape `[1]` on the inputs' device. Its
   * value is read when the op runs (a compiled function can be called again with a new value);
   * values outside `[0, S]` are clamped to that range. Default: all `S` keys.
   */
  kvLength?: Tensor;
}

const ATTENTION_OPTIONS = ["scale", "causal", "kvLength"];

function shapeError(
  message: string,
  argument: string,
  expected: string,
  actual: readonly number[],
): TensorqError {
  return new TensorqError(message, {
    op: "attention",
    kind: "shape",
    argument,
    expected,
    actual: `shape ${fmtShape(actual)}`,
  });
}

/**
 * Scaled-dot-product attention of queries `q [..., H, T, D]` over keys `k [..., H, S, D]`
 * and values `v [..., H, S, Dv]`, giving `[..., H, T, Dv]` in q's dtype.
 *
 * The scores `s[i, j] = (q_i · k_j) · scale` and their softmax over `j` are computed in at
 * least float32 (float64 on the CPU), and the output `Σ_j p[i, j] · v_j` is rounded once to
 * the dtype. With `L` the clamped `kvLength` (or `S`), key `j` is visible to query `i` when
 * `j < L` and, if `causal`, `j <= i + (L − T)`: with `T == S` that is the usual lower
 * triangle, and a single query over `L` cached keys sees all of them. A query with no visible
 * key (for instance `L == 0`, or the first `T − L` queries of a causal call with `T > L`)
 * outputs zeros. A NaN in a query, or in a key or value it sees, makes its row NaN (a score of
 * +∞ too: its softmax is undefined), and so does a row whose visible scores are all −∞ (an
 * infinite query or key). Hidden keys do not enter a row, with one exception: CUDA's
 * tensor-core kernel (float16 / bfloat16, head size 64 or 128, more than 8 queries) weighs
 * keys hidden by causality 0 in the 64-key tiles the mask crosses, so a NaN or infinite value
 * there (in v at a later position) can turn earlier rows of that tile NaN.
 *
 * All three tensors must have rank 3 or more, equal leading dims, one dtype among float32,
 * float16 and bfloat16, and one device.
 */
export function attention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options: AttentionOptions = {},
): Tensor {
  const op = "attention";
  checkTensor(op, "q", q);
  checkTensor(op, "k", k);
  checkTensor(op, "v", v);
  // A misspelt option (PyTorch's `isCausal`, a `mask`) would otherwise be ignored silently.
  options = optionsOf<AttentionOptions>(op, options, ATTENTION_OPTIONS);
  const { kvLength } = options;
  if (kvLength !== undefined) checkTensor(op, "kvLength", kvLength);
  for (const [name, t] of [["q", q], ["k", k], ["v", v]] as const) {
    if (t.rank < 3) {
      throw shapeError(
        "attention inputs need rank 3 or more ([..., heads, positions, features])",
        name,
        "a tensor of rank 3 or more",
        t.node.shape,
      );
    }
  }
  const qs = q.node.shape;
  const ks = k.node.shape;
  const vs = v.node.shape;
  const rank = qs.length;
  const lead = qs.slice(0, rank - 2);
  const t = qs[rank - 2];
  const d = qs[rank - 1];
  const leadText = lead.join(", ");
  const sameLead = (s: readonly number[]) => s.length === rank && lead.every((e, i) => e === s[i]);
  if (!sameLead(ks)) {
    throw shapeError(
      "k must have q's leading (batch and head) dims",
      "k",
      `shape [${leadText}, S, ${d}] (the leading dims of q ${fmtShape(qs)})`,
      ks,
    );
  }
  const s = ks[rank - 2];
  if (ks[rank - 1] !== d) {
    throw shapeError(
      "k must have q's feature size D",
      "k",
      `shape [${leadText}, ${s}, ${d}] (D = ${d} as in q ${fmtShape(qs)})`,
      ks,
    );
  }
  if (!sameLead(vs)) {
    throw shapeError(
      "v must have q's leading (batch and head) dims",
      "v",
      `shape [${leadText}, ${s}, Dv] (the leading dims of q ${fmtShape(qs)})`,
      vs,
    );
  }
  if (vs[rank - 2] !== s) {
    throw shapeError(
      "v must have one row per key",
      "v",
      `shape [${leadText}, ${s}, ${vs[rank - 1]}] (S = ${s} keys as in k ${fmtShape(ks)})`,
      vs,
    );
  }
  checkDTypeIn(op, "q", q, FLOAT_DTYPES);
  checkSameDType(op, ["q", "k", "v"], [q, k, v]);
  const inputs = [q, k, v];
  const names = ["q", "k", "v"];
  if (kvLength !== undefined) {
    if (kvLength.dtype !== "int32") {
      throw new TensorqError("kvLength must be an int32 tensor", {
        op,
        kind: "dtype",
        argument: "kvLength",
        expected: "int32",
        actual: kvLength.dtype,
      });
    }
    const ls = kvLength.node.shape;
    if (ls.length !== 1 || ls[0] !== 1) {
      throw shapeError("kvLength must hold one value", "kvLength", "shape [1]", ls);
    }
    inputs.push(kvLength);
    names.push("kvLength");
  }
  checkSameDevice(op, names, inputs);
  const scale = options.scale === undefined
    ? d > 0 ? 1 / Math.sqrt(d) : 1
    : checkFiniteNumber(op, "scale", options.scale);
  const causal = options.causal ?? false;
  if (typeof causal !== "boolean") {
    throw new TensorqError("causal must be a boolean", {
      op,
      kind: "argument",
      argument: "causal",
      expected: "true or false",
      actual: describeValue(causal),
    });
  }
  return makeOp(
    op,
    inputs,
    { scale, causal, hasKvLength: kvLength !== undefined },
    [...lead, t, vs[rank - 1]],
    q.dtype,
  );
}

/** Most queries per head that the CUDA decode kernels take. */
export const ATTENTION_DECODE_MAX_QUERIES = 8;

/**
 * The CUDA kernel family that serves an attention problem: `decode` (D == Dv in {64, 128},
 * T <= {@link ATTENTION_DECODE_MAX_QUERIES}), `flash` (float16 / bfloat16, D == Dv in
 * {64, 128}, larger T) or `generic` (everything else).
 *
 * @param dtype Element type of q, k, v.
 * @param queries Queries per head (T).
 * @param dim Feature size of q and k (D).
 * @param valueDim Feature size of v (Dv).
 * @returns The kernel family.
 */
export function attentionKernelKind(
  dtype: DType,
  queries: number,
  dim: number,
  valueDim: number,
): "decode" | "flash" | "generic" {
  const fast = dim === valueDim && (dim === 64 || dim === 128);
  if (fast && queries <= ATTENTION_DECODE_MAX_QUERIES) return "decode";
  if (fast && (dtype === "float16" || dtype === "bfloat16")) return "flash";
  return "generic";
}

/**
 * True when the kernels of an attention problem read strided input views and write the
 * `bthd` output layout: the decode and flash kernels, not the generic one (see
 * {@link attentionKernelKind}). Only float dtypes qualify.
 *
 * @param dtype Element type of q, k, v.
 * @param queries Queries per head (T).
 * @param dim Feature size of q and k (D).
 * @param valueDim Feature size of v (Dv).
 * @returns Whether views may be folded into the problem.
 */
export function attentionTakesViews(
  dtype: DType,
  queries: number,
  dim: number,
  valueDim: number,
): boolean {
  if (dtype !== "float32" && dtype !== "float16" && dtype !== "bfloat16") return false;
  return attentionKernelKind(dtype, queries, dim, valueDim) !== "generic";
}

/**
 * An attention input read as a strided view of another value (attr `views`): element
 * `[i0, ..., in]` of the logical input (of shape `shape`) is element
 * `offset + Σ i_k · strides[k]` of the source's row-major buffer. Offsets and strides are in
 * elements.
 */
export interface AttentionView {
  /** The input's logical shape `[..., H, T, D]`. */
  shape: number[];
  /** First element, in the source's buffer. */
  offset: number;
  /** Element step per index of each dim. */
  strides: number[];
}

/** Strides (in elements) of a `[..., H, T, D]` layout seen as `[B, H, T, D]`. */
export interface AttentionHeadStrides {
  /** Step between batches (the leading dims before H, merged). */
  batch: number;
  /** Step between heads. */
  head: number;
  /** Step between positions. */
  row: number;
}

/**
 * Splits the strides of a `[..., H, T, D]` layout into batch, head and row strides, the
 * leading dims before `H` merged into one batch dim. Returns undefined when those leading dims
 * do not merge (their strides are not nested); extent-1 dims never matter.
 *
 * @param shape The layout's shape (rank 3 or more).
 * @param strides Its strides in elements.
 * @returns The three strides, or undefined.
 */
export function attentionHeadStrides(
  shape: readonly number[],
  strides: readonly number[],
): AttentionHeadStrides | undefined {
  const rank = shape.length;
  let batch = 0;
  let inner = -1; // the innermost leading dim of extent > 1 seen so far
  for (let i = rank - 4; i >= 0; i--) {
    if (shape[i] === 1) continue;
    if (inner < 0) batch = strides[i];
    else if (strides[i] !== strides[inner] * shape[inner]) return undefined;
    inner = i;
  }
  return { batch, head: strides[rank - 3], row: strides[rank - 2] };
}
