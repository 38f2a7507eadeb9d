/**
 * tensorq: lazy tensors and quantized inference for Deno, on the CPU and on NVIDIA GPUs.
 *
 * ```ts
 * import * as tq from "jsr:@tensorq/tensorq";
 * const x = tq.randn([2, 3], { seed: 0 });
 * const w = tq.randn([3, 4], { seed: 1 });
 * const y = x.matmul(w).relu();
 * console.log(y); // evaluates: a 2 × 4 float32 tensor
 * ```
 * @module
 */
export {
  arange,
  type CreateOptions,
  formatTensor,
  full,
  linspace,
  type NestedArray,
  ones,
  Tensor,
  tensor,
  type TensorData,
  type TensorInput,
  type TensorOptions,
  type TypedArrayInput,
  zeros,
} from "./lib/tensor.ts";
export { manualSeed, rand, randn, type RandomOptions, RandomStream } from "./lib/random.ts";
export { type DType, type DTypeInfo, dtypeInfo, DTYPES, type StorageArray } from "./lib/dtype.ts";
export type { Attrs, DeviceBuffer, Node } from "./lib/graph/node.ts";
export type { Shape } from "./lib/shape.ts";
export {
  type SafetensorsDType,
  type SafetensorsEntry,
  SafetensorsFile,
} from "./lib/io/safetensors.ts";
export { type CallSite, type ErrorKind, TensorqError } from "./lib/errors.ts";
export type { Device } from "./lib/device.ts";
export type { TensorLike } from "./lib/ops/op.ts";
export {
  abs,
  add,
  cast,
  div,
  equal,
  exp,
  gelu,
  type GeluOptions,
  greater,
  greaterEqual,
  less,
  lessEqual,
  log,
  maximum,
  minimum,
  mul,
  neg,
  notEqual,
  pow,
  relu,
  rsqrt,
  sigmoid,
  sqrt,
  sub,
  tanh,
  where,
} from "./lib/ops/elementwise.ts";
export {
  causalMask,
  type CausalMaskOptions,
  concat,
  embedding,
  expand,
  flatten,
  gather,
  permute,
  reshape,
  slice,
  type SliceRange,
  sliceScatter,
  split,
  squeeze,
  stack,
  transpose,
  tril,
  triu,
  unsqueeze,
} from "./lib/ops/shape.ts";
export { argmax, argmin, max, mean, min, sum, variance as var } from "./lib/ops/reduce.ts";
export { layerNorm, logSoftmax, softmax } from "./lib/ops/nn.ts";
export { attention, type AttentionOptions } from "./lib/ops/attention.ts";
export { matmul } from "./lib/ops/matmul.ts";
export {
  clearPlanCache,
  DEFAULT_PLAN_CACHE_LIMIT,
  type PlanCacheStats,
  planCacheStats,
  setPlanCacheLimit,
} from "./lib/runtime/evaluate.ts";
export {
  type LoadOptions,
  loadSafetensors,
  SafetensorsTensors,
  saveSafetensors,
} from "./lib/io/tensors.ts";
export {
  type LoadStateDictOptions,
  type LoadStateDictResult,
  Module,
  type ParameterSpec,
} from "./lib/nn/module.ts";
export {
  Embedding,
  type EmbeddingOptions,
  GELU,
  LayerNorm,
  type LayerNormOptions,
  Linear,
  type LinearOptions,
  ReLU,
  Sequential,
  withoutInitialization,
} from "./lib/nn/layers.ts";
export { dequantize, type QuantDType, quantize, type QuantizeOptions } from "./lib/ops/quantize.ts";
export { maxBound, scaleFromAmax } from "./lib/quant/scale.ts";
export * as cuda from "./lib/cuda.ts";
export { type GraphSummary, inspectGraph } from "./lib/runtime/inspect.ts";
export {
  linearFusionEnabled,
  normFoldingEnabled,
  qdqFusionEnabled,
  setLinearFusion,
  setNormFolding,
  setQdqFusion,
} from "./lib/graph/passes/qdq_fusion.ts";
export { residualFusionEnabled, setResidualFusion } from "./lib/graph/passes/residual_fusion.ts";
export {
  attentionViewFusionEnabled,
  setAttentionViewFusion,
} from "./lib/graph/passes/attention_views.ts";
export {
  attentionQlinearFusionEnabled,
  setAttentionQlinearFusion,
} from "./lib/graph/passes/attention_qlinear.ts";
export {
  type AmaxObserver,
  type EntropyOptions,
  type HistogramMethod,
  HistogramObserver,
  type HistogramObserverOptions,
  MaxObserver,
  type MseOptions,
  PerChannelMaxObserver,
} from "./lib/quant/observers.ts";
export {
  calibrate,
  type CalibrateOptions,
  type Calibration,
  type CalibrationMethod,
  findModule,
  type LayerCalibration,
  namedLinears,
  namedModules,
  weightAmaxPerBlock,
  weightAmaxPerColumn,
  weightAmaxPerRow,
} from "./lib/quant/calibrate.ts";
export {
  compressWeights,
  type CompressWeightsOptions,
  importAmax,
  type ImportAmaxOptions,
  type QuantizationMode,
  type QuantizedLayerInfo,
  quantizeModel,
  type QuantizeModelOptions,
} from "./lib/quant/quantize_model.ts";
export {
  smoothingScales,
  smoothQuant,
  type SmoothQuantOptions,
  type SmoothQuantPair,
} from "./lib/quant/smoothquant.ts";
export { HfCheckpoint, loadHfCheckpoint } from "./lib/io/hf.ts";
export {
  decodeBytes,
  encodeBytes,
  generate,
  type GenerateOptions,
  type GPT2Activation,
  GPT2Attention,
  type GPT2AttentionOptions,
  GPT2Block,
  type GPT2Config,
  gpt2Config,
  type GPT2ForwardOptions,
  GPT2LMHeadModel,
  type GPT2LoadOptions,
  GPT2MLP,
  GPT2Model,
  type GPT2ModuleOptions,
  type GPT2RandomOptions,
  gpt2SmoothQuantPairs,
  KVCache,
  type LayerKV,
  lossFromLogits,
  type LossOptions,
  parseGPT2Config,
} from "./lib/models/gpt2.ts";
export {
  buildStaticDecoder,
  cloneState,
  type DecodeState,
  decodeStepFunction,
  disposeState,
  type PrefillResult,
  type StaticDecoder,
  type StaticDecoderOptions,
  type StepResult,
} from "./lib/models/gpt2_decoder.ts";
export {
  compile,
  type CompileOptions,
  type DimSpec,
  type Executable,
  type InputInfo,
  inputInfo,
} from "./lib/runtime/compile.ts";
