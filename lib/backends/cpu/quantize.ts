/**
 * CPU kernels (placeholder until written).
 * @module
 */
export {};
