/**
 * Helpers for passes that rewrite a {@link PlanGraph}: producers and consumers of values,
 * replacing a node, and removing nodes nothing needs.
 * @module
 */
import type { PlanGraph, PlanNode, ValueRef } from "../../backends/backend.ts";

/** The node that produces a value, or undefined for a leaf. */
export function producer(graph: PlanGraph, ref: ValueRef): PlanNode | undefined {
  return "node" in ref ? graph.nodes[ref.node] : undefined;
}

/** For each node index, the indices of the nodes that read it (outputs count as a reader -1). */
export function consumers(graph: PlanGraph): number[][] {
  const out: number[][] = graph.nodes.map(() => []);
  graph.nodes.forEach((n, i) => n.inputs.forEach((r) => "node" in r && out[r.node].push(i)));
  graph.outputs.forEach((r) => "node" in r && out[r.node].push(-1));
  return out;
}

/** True when two refs name the same value. */
export function sameRef(a: ValueRef, b: ValueRef): boolean {
  return "leaf" in a ? "leaf" in b && a.leaf === b.leaf : "node" in b && a.node === b.node;
}

/**
 * Drops nodes that no output depends on and renumbers the rest (keeping topological order).
 * Returns a new graph.
 */
export function removeDeadNodes(graph: PlanGraph): PlanGraph {
  const live = new Array<boolean>(graph.nodes.length).fill(false);
  const mark = (r: ValueRef) => {
    if ("node" in r) live[r.node] = true;
  };
  graph.outputs.forEach(mark);
  for (let i = graph.nodes.length - 1; i >= 0; i--) {
    if (live[i]) graph.nodes[i].inputs.forEach(mark);
  }
  const index = new Array<number>(graph.nodes.length).fill(-1);
  const nodes: PlanNode[] = [];
  const remap = (r: ValueRef): ValueRef => ("node" in r ? { node: index[r.node] } : r);
  graph.nodes.forEach((n, i) => {
    if (!live[i]) return;
    index[i] = nodes.length;
    nodes.push({ ...n, inputs: n.inputs.map(remap) });
  });
  return { ...graph, nodes, outputs: graph.outputs.map(remap) };
}
