/**
 * Graph passes, run on a structural graph before a backend lowers it. Each pass takes a
 * {@link PlanGraph} and returns an equivalent one.
 * @module
 */
import type { PlanGraph } from "../../backends/backend.ts";
import type { Node } from "../node.ts";

/** What a pass may read besides the structure: the graph nodes behind leaves and ops. */
export interface PassContext {
  /** Node of each leaf (realized values; `op` says which op produced it). */
  leafNodes: readonly Node[];
  /** Node of each op of the traced graph, before any pass (for call sites in messages). */
  nodes: readonly Node[];
}

/** A graph pass: returns an equivalent graph. */
export type GraphPass = (graph: PlanGraph, context: PassContext) => PlanGraph;

const passes: { name: string; pass: GraphPass }[] = [];

/** Registers a pass; passes run in registration order. */
export function registerPass(name: string, pass: GraphPass): void {
  passes.push({ name, pass });
}

/** Runs every registered pass in order. */
export function runPasses(graph: PlanGraph, context: PassContext): PlanGraph {
  let g = graph;
  for (const p of passes) g = p.pass(g, context);
  return g;
}
