/**
 * Graph passes, run on a structural graph before a backend lowers it. Each pass takes a
 * {@link PlanGraph} and returns an equivalent one.
 * @module
 */
import type { PlanGraph } from "../../backends/backend.ts";
import type { Node } from "../node.ts";

/** A graph pass: may read the leaf nodes (e.g. which op produced a realized value). */
export type GraphPass = (graph: PlanGraph, leafNodes: readonly Node[]) => PlanGraph;

const passes: { name: string; pass: GraphPass }[] = [];

/** Registers a pass; passes run in registration order. */
export function registerPass(name: string, pass: GraphPass): void {
  passes.push({ name, pass });
}

/** Runs every registered pass in order. */
export function runPasses(graph: PlanGraph, leafNodes: readonly Node[]): PlanGraph {
  let g = graph;
  for (const p of passes) g = p.pass(g, leafNodes);
  return g;
}
