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

const passes: { name: string; pass: GraphPass; config?: () => string }[] = [];

/**
 * Registers a pass; passes run in registration order. `config` describes the pass's current
 * settings: plans are cached per configuration, so changing a setting never reuses a plan
 * made under another.
 */
export function registerPass(name: string, pass: GraphPass, config?: () => string): void {
  passes.push({ name, pass, config });
}

/** The current configuration of all passes, as part of a plan cache key. */
export function passConfigKey(): string {
  return passes.map((p) => `${p.name}=${p.config?.() ?? ""}`).join(",");
}

/** Runs every registered pass in order. */
export function runPasses(graph: PlanGraph, context: PassContext): PlanGraph {
  let g = graph;
  for (const p of passes) g = p.pass(g, context);
  return g;
}
