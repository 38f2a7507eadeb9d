/**
 * CUDA lowerings (placeholder until written).
 * @module
 */
export {};
