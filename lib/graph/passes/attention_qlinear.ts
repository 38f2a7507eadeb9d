/**
 * Attention into qlinear: folds an `attention` whose only reader is a `qlinear` (GPT-2's
 * attention output projection, quantized) into that qlinear, so that the attention kernel
 * writes x's int8 or e4m3 codes itself instead of a float16 result that the qlinear's quantize
 * kernel then reads back.
 *
 * The pattern, after Q/DQ fusion and attention view fusion:
 *
 *     y = qlinear(reshape(attention(q, k, v[, kvLength]) with outputLayout "bthd"), ...)
 *
 * with any number of reshapes between the two, each read by nothing but the next step (the
 * `bthd` result `[B, T, H, Dv]` is row-major `[B·T, H·Dv]` already, so they are aliases), and
 * an attention problem the flash kernel takes ({@link attentionKernelKind}: float16 or
 * bfloat16, D = Dv in {64, 128}, more queries than the decode kernel's). The qlinear then has
 * attrs `attention: {scale, causal, hasKvLength, views?, shape}` (the attention's attrs and
 * its `[B, T, H, Dv]` result shape); its input 0 is q, and k, v (and kvLength) follow the
 * qlinear's own inputs, before a folded residual. The folded op computes the attention, rounded
 * to its dtype as the attention op rounds it, then the qlinear: results equal the unfused
 * graph's bit for bit on every backend.
 * @module
 */
import { checkBoolean } from "../../errors.ts";
import type { PlanGraph, ValueRef } from "../../backends/backend.ts";
import { refInfo } from "../../backends/backend.ts";
import type { Attrs } from "../node.ts";
import { attentionKernelKind } from "../../ops/attention.ts";
import { registerPass } from "./mod.ts";
import { consumers, removeDeadNodes } from "./rewrite.ts";

let enabled = true;

/**
 * Turns the folding of an attention into the `qlinear` that reads it on or off (on by
 * default; off keeps the attention apart, its result quantized by the qlinear). Plans are
 * cached per setting.
 */
export function setAttentionQlinearFusion(on: boolean): void {
  enabled = checkBoolean("setAttentionQlinearFusion", "on", on);
}

/** True when an attention is folded into the qlinear that reads it. */
export function attentionQlinearFusionEnabled(): boolean {
  return enabled;
}

/** What a qlinear with a folded attention records of it (attr `attention`). */
export interface FoldedAttention {
  /** The attention's score scale. */
  scale: number;
  /** Causal masking. */
  causal: boolean;
  /** Whether a kvLength input follows v. */
  hasKvLength: boolean;
  /** The attention's input views (attention view fusion), if any. */
  views?: unknown;
  /** The attention's result shape `[B, T, H, Dv]` (layout `bthd`). */
  shape: number[];
}

/** What the backends run of a qlinear's folded attention (attr `attention`). */
export interface UnfoldedAttention {
  /** The `attention` op's attrs (layout `bthd`). */
  attrs: Attrs;
  /** The attention's result shape `[B, T, H, Dv]`. */
  shape: number[];
  /**
   * The attention's operands out of the qlinear's (inputs, infos or buffers alike): q, which is
   * the qlinear's input 0, then k, v (and kvLength), which follow the qlinear's own inputs.
   */
  attentionOperands<T>(qlinear: readonly T[]): T[];
  /**
   * The qlinear's operands without the fold: `x` (the attention's result) first, then its own
   * inputs and a folded residual, if any.
   */
  qlinearOperands<T>(x: T, qlinear: readonly T[]): T[];
  /** x's shape: the qlinear's output shape with the input features `k` last. */
  xShape(outShape: readonly number[], k: number): number[];
}

/** Splits a qlinear with a folded attention into the attention and the qlinear without it. */
export function unfoldedAttention(qlinearAttrs: Attrs): UnfoldedAttention {
  const a = qlinearAttrs.attention as unknown as FoldedAttention;
  // [q, sxq, sxd, W, swq, swd, bias?, k, v, kvLength?, residual?]
  const start = qlinearAttrs.hasBias ? 7 : 6;
  const end = start + (a.hasKvLength ? 3 : 2);
  return {
    attrs: {
      scale: a.scale,
      causal: a.causal,
      hasKvLength: a.hasKvLength,
      views: a.views,
      outputLayout: "bthd",
    },
    shape: a.shape,
    attentionOperands: (list) => [list[0], ...list.slice(start, end)],
    qlinearOperands: (x, list) => [x, ...list.slice(1, start), ...list.slice(end)],
    xShape: (outShape, k) => [...outShape.slice(0, -1), k],
  };
}

/**
 * The attention node behind qlinear input `ref` (read by node `reader`), through reshapes that
 * only it reads, when it writes the `bthd` layout and nothing else reads it (a node read twice
 * by the qlinear, as x and as its residual say, has two readers and stays).
 */
function attentionBehind(
  g: PlanGraph,
  users: number[][],
  ref: ValueRef,
  reader: number,
): number | undefined {
  let cur = ref;
  let next = reader;
  while ("node" in cur) {
    const readers = users[cur.node];
    if (readers.length !== 1 || readers[0] !== next) return undefined;
    const node = g.nodes[cur.node];
    if (node.op === "attention") {
      return node.attrs.outputLayout === "bthd" && node.shape.length === 4 ? cur.node : undefined;
    }
    if (node.op !== "reshape") return undefined;
    next = cur.node;
    cur = node.inputs[0];
  }
  return undefined;
}

function fuse(graph: PlanGraph): PlanGraph {
  if (!enabled || !graph.nodes.some((n) => n.op === "qlinear")) return graph;
  if (!graph.nodes.some((n) => n.op === "attention")) return graph;
  const g: PlanGraph = { ...graph, nodes: [...graph.nodes] };
  const users = consumers(g);
  let changed = false;
  for (let i = 0; i < g.nodes.length; i++) {
    const node = g.nodes[i];
    if (node.op !== "qlinear" || node.attrs.norm !== undefined || node.attrs.attention) continue;
    const at = attentionBehind(g, users, node.inputs[0], i);
    if (at === undefined) continue;
    const attention = g.nodes[at];
    const q = refInfo(g, attention.inputs[0]);
    const [, t, , dv] = attention.shape;
    const views = attention.attrs.views as { shape: number[] }[] | undefined;
    const qShape = views?.[0]?.shape ?? q.shape;
    const d = qShape[qShape.length - 1];
    if (attentionKernelKind(q.dtype, t, d, dv) !== "flash") continue;
    const end = node.inputs.length - (node.attrs.residual === true ? 1 : 0);
    const folded: FoldedAttention = {
      scale: attention.attrs.scale as number,
      causal: attention.attrs.causal as boolean,
      hasKvLength: attention.attrs.hasKvLength as boolean,
      ...(views ? { views } : {}),
      shape: [...attention.shape],
    };
    g.nodes[i] = {
      ...node,
      attrs: { ...node.attrs, attention: folded },
      inputs: [
        attention.inputs[0],
        ...node.inputs.slice(1, end),
        ...attention.inputs.slice(1),
        ...node.inputs.slice(end),
      ],
    };
    changed = true;
  }
  return changed ? removeDeadNodes(g) : g;
}

registerPass("attention-qlinear", fuse, () => (enabled ? "on" : "off"));
