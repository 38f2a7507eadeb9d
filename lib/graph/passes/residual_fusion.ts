/**
 * Residual fusion: folds a residual add into the fused linear op that produces one of its
 * operands, so that the product's kernel writes `linear(x) + residual` itself (at decode sizes
 * one launch instead of the product and an add).
 *
 * Rule: `add(a, b)` where one operand is the output of a `linear`, `qlinear` or `wlinear` node
 * (made by the Q/DQ fusion pass, lib/graph/passes/qdq_fusion.ts, which runs first) that
 *
 * - nothing else reads (no other op input, not a graph output), and
 * - has no residual folded in already, and whose output shape is the add's,
 *
 * and whose other operand, the residual, has exactly the add's output shape (no broadcasting)
 * and the linear output's dtype, and is not the linear's own output. The add becomes the linear
 * node with attr `residual: true` and the residual as its LAST input (after the bias and a
 * folded layer norm's weight and bias):
 *
 *     linear  [x, W, bias?, lnWeight?, lnBias?, residual]
 *     qlinear [x, sxq, sxd, W, swq, swd, bias?, lnWeight?, lnBias?, residual]
 *     wlinear [x, W, swq, swd, bias?, lnWeight?, lnBias?, residual]
 *
 * When b qualifies it is taken as the linear (the `x + f(x)` form), else a. The residual cannot
 * depend on the linear's output: the linear has the add as its only reader. The fused node
 * takes the add's place in the graph, after the residual and the linear's own inputs.
 *
 * The fused op computes the unfused graph's function bit for bit: the linear's result rounded to
 * its dtype (as the op alone writes it), then `out = round(y + residual)` as the `add` op
 * computes it (float32 / float64 sum of the two values, rounded once to the dtype). One
 * exception: an fp8 `qlinear` on CUDA's e4m3 tensor cores whose 16-bit output cuBLASLt writes
 * takes the residual as cuBLASLt's C and rounds once, `round(product + bias + residual)`; its
 * product already differs from the unfused graph's in the sums' last bits.
 *
 * Switch: {@link setResidualFusion} (on by default); plans are cached per setting.
 * @module
 */
import { checkBoolean } from "../../errors.ts";
import type { PlanGraph, PlanNode, ValueRef } from "../../backends/backend.ts";
import { sameShape } from "../../shape.ts";
// Imported for its registration: the Q/DQ fusion pass must run first (it makes the linear ops).
import "./qdq_fusion.ts";
import { registerPass } from "./mod.ts";
import { consumers, removeDeadNodes, sameRef } from "./rewrite.ts";

let enabled = true;

/**
 * Turns residual fusion (an `add` of a fused linear op's output and a same-shaped residual into
 * the linear op) on or off (on by default). Plans are cached per setting.
 */
export function setResidualFusion(on: boolean): void {
  enabled = checkBoolean("setResidualFusion", "on", on);
}

/** True when residual adds are folded into the fused linear ops. */
export function residualFusionEnabled(): boolean {
  return enabled;
}

const LINEAR_OPS = new Set(["linear", "qlinear", "wlinear"]);

function infoOf(g: PlanGraph, ref: ValueRef): { shape: readonly number[]; dtype: string } {
  return "leaf" in ref ? g.leaves[ref.leaf] : g.nodes[ref.node];
}

/**
 * The index of the linear node that `add` (node `addIdx`) may absorb through its operand `at`,
 * or -1.
 */
function foldableLinear(g: PlanGraph, users: number[][], addIdx: number, at: number): number {
  const add = g.nodes[addIdx];
  const ref = add.inputs[at];
  const residual = add.inputs[1 - at];
  if (!("node" in ref)) return -1;
  const lin = g.nodes[ref.node];
  if (!LINEAR_OPS.has(lin.op) || lin.attrs.residual === true) return -1;
  // Read by this add alone (an add of the value with itself reads it twice).
  if (users[ref.node].length !== 1 || users[ref.node][0] !== addIdx) return -1;
  if (sameRef(residual, ref)) return -1;
  if (!sameShape(lin.shape, add.shape)) return -1;
  const r = infoOf(g, residual);
  if (!sameShape(r.shape, add.shape) || r.dtype !== lin.dtype || add.dtype !== lin.dtype) {
    return -1;
  }
  return ref.node;
}

function fuse(graph: PlanGraph): PlanGraph {
  if (!enabled || !graph.nodes.some((n) => LINEAR_OPS.has(n.op))) return graph;
  const g: PlanGraph = { ...graph, nodes: [...graph.nodes] };
  const users = consumers(g);
  let changed = false;
  for (let i = 0; i < g.nodes.length; i++) {
    const add = g.nodes[i];
    if (add.op !== "add" || add.inputs.length !== 2) continue;
    let at = 1;
    let linIdx = foldableLinear(g, users, i, at);
    if (linIdx < 0) linIdx = foldableLinear(g, users, i, at = 0);
    if (linIdx < 0) continue;
    const lin = g.nodes[linIdx];
    const fused: PlanNode = {
      op: lin.op,
      attrs: { ...lin.attrs, residual: true },
      shape: add.shape,
      dtype: add.dtype,
      inputs: [...lin.inputs, add.inputs[1 - at]],
    };
    g.nodes[i] = fused;
    changed = true;
  }
  return changed ? removeDeadNodes(g) : g;
}

registerPass("residual-fusion", fuse, () => (enabled ? "on" : "off"));
