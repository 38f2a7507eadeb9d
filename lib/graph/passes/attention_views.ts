/**
 * Attention view fusion: folds the slices, permutes and reshapes that carve q, k and v out of
 * a packed projection, and the permute that merges the heads of the result, into the
 * `attention` node, so that its kernels read and write those layouts directly instead of
 * through materialized copies.
 *
 * The pattern (GPT-2's attention block):
 *
 *     q, k, v = split(qkv [B, T, 3·H·D], 3, 2).map((z) => permute(reshape(z, [B, T, H, D]), [0, 2, 1, 3]))
 *     y = reshape(permute(attention(q, k, v), [0, 2, 1, 3]), [B, T, H·D])
 *
 * Inputs: from each of q, k and v the pass walks up through `reshape`, `permute` and `slice`
 * nodes, each read by nothing but the next step of the chain, and composes their element
 * mappings. A chain folds from its source value when every step is a view of the layout so
 * far (a slice with positive steps; any permute; a reshape that only splits or merges dims
 * whose strides nest) and the result, with extent-1 dims ignored, satisfies the alignment rule:
 * the last dim has stride 1, and the offset and every other stride are multiples of 8
 * elements (16-byte aligned rows for 16-bit types, so the CUDA kernels' 16-byte vector loads
 * stay legal), and the dims before H merge into one batch dim. The longest foldable chain
 * wins. The input then references the source directly and attr `views[i]` holds an
 * {@link AttentionView} (`{shape, offset, strides}`, offset and strides in elements).
 *
 * Output: when the attention result `[B, H, T, Dv]` (rank 4) has one reader, a
 * `permute(·, [0, 2, 1, 3])`, the attention node takes the permute's place with attr
 * `outputLayout: "bthd"` and the permute's shape `[B, T, H, Dv]` (a following reshape is then
 * a plain alias).
 *
 * Only problems whose kernels take views fold ({@link attentionTakesViews}: the CUDA decode
 * and flash kernels); the rewrite changes memory access only, so results are bit-identical to
 * the unfused graph on every backend.
 * @module
 */
import { checkBoolean } from "../../errors.ts";
import type { PlanGraph, PlanNode, ValueRef } from "../../backends/backend.ts";
import { refInfo } from "../../backends/backend.ts";
import {
  attentionHeadStrides,
  attentionTakesViews,
  type AttentionView,
} from "../../ops/attention.ts";
import { numel, stridesOf } from "../../shape.ts";
import { registerPass } from "./mod.ts";
import { consumers, removeDeadNodes } from "./rewrite.ts";

let enabled = true;

/**
 * Turns attention view fusion on or off (on by default): folding the slices, permutes and
 * reshapes around an `attention` node into strided reads and a head-merging write. Plans are
 * cached per setting.
 */
export function setAttentionViewFusion(on: boolean): void {
  enabled = checkBoolean("setAttentionViewFusion", "on", on);
}

/** True when attention view fusion is on. */
export function attentionViewFusionEnabled(): boolean {
  return enabled;
}

/** Offsets and strides must be multiples of this many elements (16 bytes of 16-bit types). */
const ALIGN = 8;

/** A strided layout over a source buffer. */
interface Layout {
  shape: number[];
  offset: number;
  strides: number[];
}

/**
 * Strides that view `layout` as `shape` (a reshape that only splits and merges dims whose
 * strides nest), or undefined when the reshape needs a copy. PyTorch's `computeStride`.
 */
function reshapeStrides(layout: Layout, shape: readonly number[]): number[] | undefined {
  const old = layout.shape;
  if (numel(old) === 0) return undefined;
  if (old.length === 0) return shape.map(() => 0);
  const strides = new Array<number>(shape.length).fill(0);
  let viewD = shape.length - 1;
  let chunkStride = layout.strides[old.length - 1];
  let tensorNumel = 1;
  let viewNumel = 1;
  for (let d = old.length - 1; d >= 0; d--) {
    tensorNumel *= old[d];
    // End of a chunk of dims that are contiguous with each other.
    if (d === 0 || (old[d - 1] !== 1 && layout.strides[d - 1] !== tensorNumel * chunkStride)) {
      while (viewD >= 0 && (viewNumel < tensorNumel || shape[viewD] === 1)) {
        strides[viewD] = viewNumel * chunkStride;
        viewNumel *= shape[viewD];
        viewD--;
      }
      if (viewNumel !== tensorNumel) return undefined;
      if (d > 0) {
        chunkStride = layout.strides[d - 1];
        tensorNumel = 1;
        viewNumel = 1;
      }
    }
  }
  return viewD === -1 ? strides : undefined;
}

/** `layout` after one chain step, or undefined when the step is not a view of it. */
function applyStep(layout: Layout, step: PlanNode): Layout | undefined {
  if (step.op === "reshape") {
    const strides = reshapeStrides(layout, step.shape);
    return strides && { shape: [...step.shape], offset: layout.offset, strides };
  }
  if (step.op === "permute") {
    const axes = step.attrs.axes as number[];
    return {
      shape: axes.map((a) => layout.shape[a]),
      offset: layout.offset,
      strides: axes.map((a) => layout.strides[a]),
    };
  }
  // slice: starts, positive steps, counts per dim.
  const starts = step.attrs.starts as number[];
  const steps = step.attrs.steps as number[];
  if (steps.some((s) => s <= 0)) return undefined;
  let offset = layout.offset;
  starts.forEach((s, d) => offset += s * layout.strides[d]);
  return {
    shape: [...step.shape],
    offset,
    strides: steps.map((s, d) => s * layout.strides[d]),
  };
}

/** The layout as the kernels get it (extent-1 strides zeroed), or undefined if not aligned. */
function alignedView(layout: Layout): AttentionView | undefined {
  const { shape } = layout;
  const rank = shape.length;
  if (numel(shape) === 0) return undefined;
  const strides = layout.strides.map((s, d) => (shape[d] === 1 ? 0 : s));
  if (shape[rank - 1] !== 1 && strides[rank - 1] !== 1) return undefined;
  if (layout.offset % ALIGN !== 0) return undefined;
  if (strides.some((s, d) => d < rank - 1 && s % ALIGN !== 0)) return undefined;
  if (!attentionHeadStrides(shape, strides)) return undefined;
  return { shape: [...shape], offset: layout.offset, strides };
}

const VIEW_OPS = new Set(["reshape", "permute", "slice"]);

/**
 * The longest foldable chain above attention input `ref` (read by node `reader`): the source
 * to read instead and the view of it, or undefined.
 */
function foldInput(
  g: PlanGraph,
  users: number[][],
  ref: ValueRef,
  reader: number,
): { source: ValueRef; view: AttentionView } | undefined {
  // chain[0] is the step nearest the attention input.
  const chain: number[] = [];
  let cur = ref;
  let next = reader;
  while ("node" in cur) {
    const node = g.nodes[cur.node];
    if (!VIEW_OPS.has(node.op)) break;
    const readers = users[cur.node];
    if (readers.length !== 1 || readers[0] !== next) break;
    chain.push(cur.node);
    next = cur.node;
    cur = node.inputs[0];
  }
  // Try sources from the farthest: the input of chain[start]. A chain of reshapes alone is
  // left as it is (reshapes are aliases already).
  for (let start = chain.length - 1; start >= 0; start--) {
    if (chain.slice(0, start + 1).every((c) => g.nodes[c].op === "reshape")) break;
    const source = g.nodes[chain[start]].inputs[0];
    const shape = [...refInfo(g, source).shape];
    let layout: Layout | undefined = { shape, offset: 0, strides: stridesOf(shape) };
    for (let i = start; i >= 0 && layout; i--) layout = applyStep(layout, g.nodes[chain[i]]);
    const view = layout && alignedView(layout);
    if (view) return { source, view };
  }
  return undefined;
}

function fuse(graph: PlanGraph): PlanGraph {
  if (!enabled || !graph.nodes.some((n) => n.op === "attention")) return graph;
  const g: PlanGraph = { ...graph, nodes: [...graph.nodes] };
  const users = consumers(g);
  let changed = false;
  for (let i = 0; i < g.nodes.length; i++) {
    const node = g.nodes[i];
    if (node.op !== "attention" || node.attrs.views || node.attrs.outputLayout) continue;
    const q = refInfo(g, node.inputs[0]);
    const v = refInfo(g, node.inputs[2]);
    const rank = q.shape.length;
    const t = q.shape[rank - 2];
    if (!attentionTakesViews(q.dtype, t, q.shape[rank - 1], v.shape[rank - 1])) continue;
    const inputs = [...node.inputs];
    const views: (AttentionView | null)[] = [null, null, null];
    for (let k = 0; k < 3; k++) {
      const fold = foldInput(g, users, node.inputs[k], i);
      if (!fold) continue;
      inputs[k] = fold.source;
      views[k] = fold.view;
    }
    let attrs = views.some((x) => x) ? { ...node.attrs, views } : node.attrs;
    let at = i;
    let shape = node.shape;
    const readers = users[i];
    if (rank === 4 && readers.length === 1 && readers[0] >= 0) {
      const p = g.nodes[readers[0]];
      if (p.op === "permute" && JSON.stringify(p.attrs.axes) === "[0,2,1,3]") {
        attrs = { ...attrs, outputLayout: "bthd" };
        at = readers[0];
        shape = p.shape;
      }
    }
    if (attrs === node.attrs) continue;
    // At the permute's index the node still follows all its inputs.
    g.nodes[at] = { ...node, attrs, shape, inputs };
    changed = true;
  }
  return changed ? removeDeadNodes(g) : g;
}

registerPass("attention-views", fuse, () => (enabled ? "on" : "off"));
