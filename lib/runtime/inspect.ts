/**
 * Looking at what evaluation will run: the op list after the graph passes (fusions visible).
 * @module
 */
import { checkTensor } from "../ops/op.ts";
import type { Tensor } from "../tensor.ts";
import { plannedGraph } from "./evaluate.ts";

/** A summary of the graph that evaluating a tensor would run. */
export interface GraphSummary {
  /** Op names in execution order, after the passes. */
  ops: string[];
  /** Number of inputs (realized values) the graph reads. */
  leaves: number;
}

/** Describes the ops that evaluating `t` would run, after fusion passes; runs nothing. */
export function inspectGraph(t: Tensor): GraphSummary {
  checkTensor("inspectGraph", "t", t);
  const g = plannedGraph([t.node]);
  return { ops: g.nodes.map((n) => n.op), leaves: g.leaves.length };
}
