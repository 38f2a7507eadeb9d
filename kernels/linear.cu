// Fused linear layers made by the Q/DQ fusion pass (lib/graph/passes/qdq_fusion.ts; CPU
// reference in lib/backends/cpu/linear.ts; lowering in lib/backends/cuda/linear.ts).
//
//   qlinear: y = act(Σ_k qx[m,k]·qw[n,k] · sxd · swd[n] + b[n])   (int8 or float8e4m3 products)
//   wlinear: y = act(Σ_k x[m,k] · dq(W)[n,k] + b[n])              (weight-only quantization)
//
// Weights are [N, K] row-major (output channels × input features), x is [M, K], y is [M, N].
//
// Kernels:
// - linear_quantize_weight_<q>: W → int8 / packed int4 / e4m3 with the quantize op's exact
//   semantics (true division, round half even, saturation). Runs once per weight.
// - linear_fakequant_weight_<q>_<x>: W → dequantize(quantize(W)) in x's dtype (also with no
//   dequant scale: the e4m3 codes' values as float32). Runs once per weight.
// - linear_dequantize_codes_<q>_<x>: the same from a compressed weight's codes. Runs on every
//   forward that needs float weights: eight elements a thread where the layout allows.
// - qlinear_quantize_<x>_<q>: per-tensor quantize of the activations (i8, e4m3, or e4m3 codes
//   written as float32 for the fallback product).
// - qlinear_gemm_i8: an exact int8 GEMM (int32 accumulation with __dp4a) for shapes cuBLASLt's
//   int8 kernels do not take.
// - qlinear_epilogue_<acc>_<out>: y = act(acc · sxd · swd[n] + b[n]) from int32 or float32
//   products, computed in double and rounded once (the CPU reference's function exactly for
//   none/relu), activations in float32.
// - wlinear_gemv_<q>_f32_m<MT>: weight-only products for float32 x and M ≤ MT ≤ 16 rows:
//   streams the quantized weight with 16-byte loads, dequantizes in registers exactly as
//   dequantize does, accumulates in float32 and applies bias and activation.
// - wlinear_gemv_mma_<q>_<x>_m<8|16>: the same for float16 / bfloat16 x, with the dequantized
//   weights multiplied on the tensor cores (mma.m16n8k16, float32 accumulators).
//
// Scale kinds (any scale may be float32 or the dtype of the tensor it scales): 0 float32,
// 1 float16, 2 bfloat16. Activation codes: 0 none, 1 relu, 2 gelu (erf), 3 gelu (tanh).
//
// Scale of weight element (n, k) for every quantization mode: index (n / nb)·sN + (k / kb)·sK
//   tensor: sN = sK = 0;  channel dim 0: sN = 1, sK = 0;  channel dim 1: sN = 0, kb = 1, sK = 1;
//   block dim 1 ([N, ceil(K/B)]): sN = ceil(K/B), kb = B, sK = 1;  block dim 0 ([ceil(N/B), K]):
//   nb = B, sN = K, kb = 1, sK = 1 (a last block may be shorter, as in ONNX).

#include "common.cuh"
#include "fp8.cuh"
#include "gemv.cuh"
#include "qlinear.cuh"

// ---------------------------------------------------------------------------------------------
// Conversions (floatsToE4m3x2, roundSat) and the float element types F32, F16, BF16: qlinear.cuh.

// Activations: activate() in common.cuh (the gelu formulas of the elementwise kernels).

// ---------------------------------------------------------------------------------------------
// Weight preparation (once per weight: simple grid-stride loops, one element or byte each) and
// the dequantization of compressed weights (every forward)

struct WeightIndex {
  i64 K, nb, sN, kb, sK;
  __device__ i64 scale(i64 e) const {
    const i64 n = e / K, k = e - n * K;
    return (n / nb) * sN + (k / kb) * sK;
  }
};

// Quantized types: the quotient x / s -> stored code, and the code's exact value.
struct WI8 {
  static constexpr bool kPacked = false;
  __device__ static void put(void* out, i64 e, float q) {
    static_cast<signed char*>(out)[e] = (signed char)roundSat<-128, 127>(q);
  }
  __device__ static float value(float q) { return (float)roundSat<-128, 127>(q); }
  __device__ static float codeValue(const void* codes, i64 e) {
    return (float)static_cast<const signed char*>(codes)[e];
  }
  // The values of codes 8c .. 8c + 7 (8-byte aligned).
  __device__ static void codeValues8(const void* codes, i64 c, float (&v)[8]) {
    const uint2 b = __ldg(reinterpret_cast<const uint2*>(codes) + c);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[j] = (float)(int)(signed char)(b.x >> (8 * j));
      v[4 + j] = (float)(int)(signed char)(b.y >> (8 * j));
    }
  }
};

struct WI4 {
  static constexpr bool kPacked = true;  // two per byte, element 2i in the low nibble
  __device__ static unsigned nibble(float q) { return (unsigned)roundSat<-8, 7>(q) & 0xfu; }
  __device__ static float value(float q) { return (float)roundSat<-8, 7>(q); }
  __device__ static float codeValue(const void* codes, i64 e) {
    const unsigned byte = static_cast<const unsigned char*>(codes)[e >> 1];
    const int nibble = (int)((e & 1) ? byte >> 4 : byte & 0xfu);
    return (float)((nibble << 28) >> 28);  // sign-extended
  }
  // The values of codes 8c .. 8c + 7: the four bytes at 4c (4-byte aligned).
  __device__ static void codeValues8(const void* codes, i64 c, float (&v)[8]) {
    const unsigned b = __ldg(reinterpret_cast<const unsigned*>(codes) + c);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = (float)((int)(b << (28 - 4 * j)) >> 28);
  }
};

struct WE4M3 {
  static constexpr bool kPacked = false;
  __device__ static void put(void* out, i64 e, float q) {
    static_cast<unsigned char*>(out)[e] = (unsigned char)(floatsToE4m3x2(q, 0.0f) & 0xffu);
  }
  __device__ static float value(float q) { return e4m3x2ToFloats(floatsToE4m3x2(q, 0.0f)).x; }
  __device__ static float codeValue(const void* codes, i64 e) {
    return e4m3x2ToFloats(static_cast<const unsigned char*>(codes)[e]).x;
  }
  // The values of codes 8c .. 8c + 7 (8-byte aligned).
  __device__ static void codeValues8(const void* codes, i64 c, float (&v)[8]) {
    const uint2 b = __ldg(reinterpret_cast<const uint2*>(codes) + c);
    const unsigned w[4] = {b.x, b.x >> 16, b.y, b.y >> 16};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = e4m3x2ToFloats(w[j]);
      v[2 * j] = f.x;
      v[2 * j + 1] = f.y;
    }
  }
};

// W is float32, float16 or bfloat16 (wKind, as a scale kind): preparation runs once per weight,
// so the dtype is a runtime switch rather than more kernels.
template <class Q>
__device__ __forceinline__ void quantizeWeight(void* __restrict__ out, const void* __restrict__ w,
                                               int wKind, const void* __restrict__ swq,
                                               int swqKind, i64 total, WeightIndex ix) {
  const i64 first = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const i64 threads = (i64)gridDim.x * blockDim.x;
  if constexpr (Q::kPacked) {
    const i64 bytes = (total + 1) / 2;
    for (i64 u = first; u < bytes; u += threads) {
      const i64 e = 2 * u;
      const float q0 = __fdiv_rn(loadScale(w, wKind, e), loadScale(swq, swqKind, ix.scale(e)));
      unsigned hi = 0;
      if (e + 1 < total) {
        const float q1 =
            __fdiv_rn(loadScale(w, wKind, e + 1), loadScale(swq, swqKind, ix.scale(e + 1)));
        hi = Q::nibble(q1);
      }
      static_cast<unsigned char*>(out)[u] = (unsigned char)(Q::nibble(q0) | (hi << 4));
    }
  } else {
    for (i64 e = first; e < total; e += threads) {
      Q::put(out, e, __fdiv_rn(loadScale(w, wKind, e), loadScale(swq, swqKind, ix.scale(e))));
    }
  }
}

// dequantize(quantize(W, swq), swd) in X: q · s in float32, then one rounding to X. With
// swdKind < 0 there is no dequant scale: the codes' values themselves (exact).
template <class Q, class X>
__device__ __forceinline__ void fakequantWeight(void* __restrict__ out, const void* __restrict__ w,
                                                int wKind, const void* __restrict__ swq,
                                                int swqKind, const void* __restrict__ swd,
                                                int swdKind, i64 total, WeightIndex ix) {
  const i64 first = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const i64 threads = (i64)gridDim.x * blockDim.x;
  for (i64 e = first; e < total; e += threads) {
    const i64 si = ix.scale(e);
    const float q = Q::value(__fdiv_rn(loadScale(w, wKind, e), loadScale(swq, swqKind, si)));
    X::store(out, e, swdKind < 0 ? q : __fmul_rn(q, loadScale(swd, swdKind, si)));
  }
}

// A compressed weight's codes (int8, packed int4, e4m3 bytes) → dequantize(codes, swd) in X:
// the code's value · s in float32, one rounding to X, as fakequantWeight from the same codes.
// With swdKind < 0 the codes' exact values. It runs on every forward that needs float weights
// (the codes are all a compressed weight keeps), so with `chunked` (K a multiple of 8, the
// codes aligned for 8-byte or, packed int4, 4-byte loads) a thread takes eight elements of one
// row at a time: one load of codes, one scale when the eight share it, two vector stores.
template <class Q, class X>
__device__ __forceinline__ void dequantizeCodes(void* __restrict__ out,
                                                const void* __restrict__ codes,
                                                const void* __restrict__ swd, int swdKind,
                                                i64 total, WeightIndex ix, bool chunked) {
  const i64 first = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const i64 threads = (i64)gridDim.x * blockDim.x;
  if (chunked) {
    // A chunk lies in one row (K % 8 == 0); its scales are one unless they vary along K in
    // groups narrower than 8 (per input channel).
    const bool shared = ix.sK == 0 || ix.kb % 8 == 0;
    for (i64 c = first; c < total / 8; c += threads) {
      const i64 e = 8 * c;
      float v[8];
      Q::codeValues8(codes, c, v);
      if (swdKind >= 0) {
        if (shared) {
          const float s = loadScale(swd, swdKind, ix.scale(e));
#pragma unroll
          for (int j = 0; j < 8; ++j) v[j] = __fmul_rn(v[j], s);
        } else {
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            v[j] = __fmul_rn(v[j], loadScale(swd, swdKind, ix.scale(e + j)));
          }
        }
      }
      const float lo[4] = {v[0], v[1], v[2], v[3]}, hi[4] = {v[4], v[5], v[6], v[7]};
      X::store4(out, e, lo);
      X::store4(out, e + 4, hi);
    }
    return;
  }
  for (i64 e = first; e < total; e += threads) {
    const float q = Q::codeValue(codes, e);
    X::store(out, e, swdKind < 0 ? q : __fmul_rn(q, loadScale(swd, swdKind, ix.scale(e))));
  }
}

#define WEIGHT_INDEX_PARAMS i64 N, i64 K, i64 nb, i64 sN, i64 kb, i64 sK

#define QUANTIZE_WEIGHT_KERNEL(Q_NAME, Q)                                                     \
  extern "C" __global__ void __launch_bounds__(256) linear_quantize_weight_##Q_NAME(          \
      void* __restrict__ out, const void* __restrict__ w, int wKind,                          \
      const void* __restrict__ swq, int swqKind, WEIGHT_INDEX_PARAMS) {                       \
    quantizeWeight<Q>(out, w, wKind, swq, swqKind, N * K, WeightIndex{K, nb, sN, kb, sK});    \
  }

#define FAKEQUANT_WEIGHT_KERNEL(Q_NAME, Q, X_NAME, X)                                         \
  extern "C" __global__ void __launch_bounds__(256) linear_fakequant_weight_##Q_NAME##_##X_NAME( \
      void* __restrict__ out, const void* __restrict__ w, int wKind,                           \
      const void* __restrict__ swq, int swqKind, const void* __restrict__ swd, int swdKind,    \
      WEIGHT_INDEX_PARAMS) {                                                                   \
    fakequantWeight<Q, X>(out, w, wKind, swq, swqKind, swd, swdKind, N * K,                    \
                          WeightIndex{K, nb, sN, kb, sK});                                     \
  }

#define DEQUANTIZE_CODES_KERNEL(Q_NAME, Q, X_NAME, X)                                        \
  extern "C" __global__ void __launch_bounds__(256) linear_dequantize_codes_##Q_NAME##_##X_NAME( \
      void* __restrict__ out, const void* __restrict__ codes, const void* __restrict__ swd,    \
      int swdKind, WEIGHT_INDEX_PARAMS, int chunked) {                                         \
    dequantizeCodes<Q, X>(out, codes, swd, swdKind, N * K, WeightIndex{K, nb, sN, kb, sK},     \
                          chunked != 0);                                                       \
  }

#define WEIGHT_KERNELS(Q_NAME, Q)                \
  QUANTIZE_WEIGHT_KERNEL(Q_NAME, Q)              \
  FAKEQUANT_WEIGHT_KERNEL(Q_NAME, Q, f32, F32)   \
  FAKEQUANT_WEIGHT_KERNEL(Q_NAME, Q, f16, F16)   \
  FAKEQUANT_WEIGHT_KERNEL(Q_NAME, Q, bf16, BF16) \
  DEQUANTIZE_CODES_KERNEL(Q_NAME, Q, f32, F32)   \
  DEQUANTIZE_CODES_KERNEL(Q_NAME, Q, f16, F16)   \
  DEQUANTIZE_CODES_KERNEL(Q_NAME, Q, bf16, BF16)

WEIGHT_KERNELS(i8, WI8)
WEIGHT_KERNELS(i4, WI4)
WEIGHT_KERNELS(e4m3, WE4M3)

// ---------------------------------------------------------------------------------------------
// Per-tensor activation quantize: 8 elements per step (16- or 32-byte loads), a scalar tail.

// XI8, XE4M3 (int8 / e4m3 codes of eight quotients): qlinear.cuh.

// The e4m3 codes' values as float32 (for the float32 fallback product).
struct XE4M3F32 {
  __device__ static void store8(void* out, i64 c, const float (&q)[8]) {
    float4* p = reinterpret_cast<float4*>(out) + 2 * c;
    const float2 a = e4m3x2ToFloats(floatsToE4m3x2(q[0], q[1]));
    const float2 b = e4m3x2ToFloats(floatsToE4m3x2(q[2], q[3]));
    const float2 d = e4m3x2ToFloats(floatsToE4m3x2(q[4], q[5]));
    const float2 e = e4m3x2ToFloats(floatsToE4m3x2(q[6], q[7]));
    p[0] = make_float4(a.x, a.y, b.x, b.y);
    p[1] = make_float4(d.x, d.y, e.x, e.y);
  }
  __device__ static void store1(void* out, i64 i, float q) {
    static_cast<float*>(out)[i] = e4m3x2ToFloats(floatsToE4m3x2(q, 0.0f)).x;
  }
};

// Also writes `rows` copies of the dequant scale `rowScale` to `rowScales` (when not null): the
// per-row scale vector cuBLASLt's outer-vector fp8 mode reads for B.
template <class In, class Out>
__device__ __forceinline__ void quantizeActivations(void* __restrict__ out,
                                                    const void* __restrict__ in,
                                                    const void* __restrict__ scale, int scaleKind,
                                                    i64 n, float* __restrict__ rowScales,
                                                    const void* __restrict__ rowScale,
                                                    int rowScaleKind, int rows) {
  const ScaleQuotient quotient(loadScale(scale, scaleKind, 0));
  const i64 first = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const i64 threads = (i64)gridDim.x * blockDim.x;
  if (rowScales) {
    const float r = loadScale(rowScale, rowScaleKind, 0);
    for (i64 i = first; i < rows; i += threads) rowScales[i] = r;
  }
  // 16-bit x: two chunks a thread per iteration, both loads issued before either is converted,
  // for twice the bytes in flight per resident thread (the kernel is a stream; the host sizes
  // the grid for two chunks a thread). float32 chunks are 32 bytes already: one at a time, as
  // two would not fit the registers.
  constexpr bool kPair = sizeof(typename In::Raw8) == 16;
  const i64 full = n / 8;
  float v[8];
  for (i64 c = first; c < full; c += (kPair ? 2 : 1) * threads) {
    const i64 c2 = c + threads;
    const typename In::Raw8 a = In::loadRaw8(in, c);
    typename In::Raw8 b;
    if (kPair && c2 < full) b = In::loadRaw8(in, c2);
    In::unpack8(a, v);
    quotient.divide(v);
    Out::store8(out, c, v);
    if (kPair && c2 < full) {
      In::unpack8(b, v);
      quotient.divide(v);
      Out::store8(out, c2, v);
    }
  }
  for (i64 i = full * 8 + first; i < n; i += threads) {
    Out::store1(out, i, quotient(In::load(in, i)));
  }
}

#define QUANTIZE_X_KERNEL(IN_NAME, IN, OUT_NAME, OUT)                                       \
  extern "C" __global__ void __launch_bounds__(256, 6) qlinear_quantize_##IN_NAME##_##OUT_NAME( \
      void* __restrict__ out, const void* __restrict__ in, const void* __restrict__ scale,   \
      int scaleKind, i64 n, float* __restrict__ rowScales, const void* __restrict__ rowScale, \
      int rowScaleKind, int rows) {                                                          \
    quantizeActivations<IN, OUT>(out, in, scale, scaleKind, n, rowScales, rowScale,          \
                                 rowScaleKind, rows);                                        \
  }

#define QUANTIZE_X_KERNELS(IN_NAME, IN)            \
  QUANTIZE_X_KERNEL(IN_NAME, IN, i8, XI8)          \
  QUANTIZE_X_KERNEL(IN_NAME, IN, e4m3, XE4M3)      \
  QUANTIZE_X_KERNEL(IN_NAME, IN, e4m3f32, XE4M3F32)

QUANTIZE_X_KERNELS(f32, F32)
QUANTIZE_X_KERNELS(f16, F16)
QUANTIZE_X_KERNELS(bf16, BF16)

// ---------------------------------------------------------------------------------------------
// Exact int8 GEMM for shapes cuBLASLt's int8 kernels do not take:
// C[m, n] = Σ_k A[m, k] · B[n, k], A [M, K] and B [N, K] int8 row-major, C [M, N] int32.
// 64 × 64 output tiles, 256 threads of 4 × 4 outputs, K in steps of 32 bytes (8 words).

#define GEMM_TILE 64
#define GEMM_KW 8

// Bytes k..k+3 of row `row` (zero past the edges) as one little-endian word.
__device__ __forceinline__ int gemmWord(const signed char* __restrict__ p, i64 row, i64 rows,
                                        i64 k, i64 K) {
  if (row >= rows || k >= K) return 0;
  const i64 at = row * K + k;
  if (k + 3 < K && (at & 3) == 0) return __ldg(reinterpret_cast<const int*>(p + at));
  unsigned w = 0;
#pragma unroll
  for (int b = 0; b < 4; b++) {
    if (k + b < K) w |= ((unsigned)(unsigned char)p[at + b]) << (8 * b);
  }
  return (int)w;
}

extern "C" __global__ void __launch_bounds__(256) qlinear_gemm_i8(
    int* __restrict__ c, const signed char* __restrict__ a, const signed char* __restrict__ b,
    int M, int N, int K) {
  __shared__ int as[GEMM_TILE][GEMM_KW + 1];
  __shared__ int bs[GEMM_TILE][GEMM_KW + 1];
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const i64 m0 = (i64)blockIdx.y * GEMM_TILE, n0 = (i64)blockIdx.x * GEMM_TILE;
  int acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
#pragma unroll
    for (int j = 0; j < 4; j++) acc[i][j] = 0;
  }
  for (int k0 = 0; k0 < K; k0 += 4 * GEMM_KW) {
    for (int w = threadIdx.x; w < GEMM_TILE * GEMM_KW; w += blockDim.x) {
      const int row = w / GEMM_KW, kw = w % GEMM_KW;
      as[row][kw] = gemmWord(a, m0 + row, M, k0 + 4 * kw, K);
      bs[row][kw] = gemmWord(b, n0 + row, N, k0 + 4 * kw, K);
    }
    __syncthreads();
#pragma unroll
    for (int kw = 0; kw < GEMM_KW; kw++) {
      int av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; i++) av[i] = as[ty * 4 + i][kw];
#pragma unroll
      for (int j = 0; j < 4; j++) bv[j] = bs[tx * 4 + j][kw];
#pragma unroll
      for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = __dp4a(av[i], bv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const i64 m = m0 + ty * 4 + i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const i64 n = n0 + tx * 4 + j;
      if (n < N) c[m * N + n] = acc[i][j];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Epilogue: y[m, n] = act(acc[m, n] · sxd · swd[n or 0] + b[n]) rounded once to Out.
// The scaled sum is formed in double (acc, the float32 scales and their product are exact
// there), as the CPU reference does; activations other than relu run in float32. sxd null:
// the products are already scaled (scale 1). Grid: x over columns (4 per thread when N % 4 ==
// 0), y over rows. `acc` may alias `out` (float32 products scaled in place): no __restrict__.

// Products of type T (int32 or float32; T4 its 4-vector) as doubles (exact).
template <class T, class T4>
struct Acc {
  __device__ static double load(const void* p, i64 i) {
    return (double)static_cast<const T*>(p)[i];
  }
  __device__ static void load4(const void* p, i64 i, double (&v)[4]) {
    const T4 a = *reinterpret_cast<const T4*>(static_cast<const T*>(p) + i);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
  }
};
typedef Acc<int, int4> AccI32;
typedef Acc<float, float4> AccF32;

template <class Acc, class Out>
__device__ __forceinline__ void epilogue(void* out, const void* acc, int M, int N,
                                         const void* __restrict__ sxd, int sxdKind,
                                         const void* __restrict__ swd, int swdKind,
                                         int swdPerChannel, const void* __restrict__ bias,
                                         int act) {
  const bool vec = (N & 3) == 0;
  const int per = vec ? 4 : 1;
  const int n0 = (blockIdx.x * blockDim.x + threadIdx.x) * per;
  if (n0 >= N) return;
  const double sx = sxd ? (double)loadScale(sxd, sxdKind, 0) : 1.0;
  double scale[4], b[4];
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const int n = j < per ? n0 + j : n0;
    const double sw = swd ? (double)loadScale(swd, swdKind, swdPerChannel ? n : 0) : 1.0;
    scale[j] = sx * sw;
    b[j] = bias ? (double)Out::load(bias, n) : 0.0;
  }
  for (int m = blockIdx.y; m < M; m += gridDim.y) {
    const i64 at = (i64)m * N + n0;
    if (vec) {
      double t[4];
      Acc::load4(acc, at, t);
#pragma unroll
      for (int j = 0; j < 4; j++) t[j] = __dadd_rn(__dmul_rn(t[j], scale[j]), b[j]);
      if (act >= 2) {
        float r[4];
#pragma unroll
        for (int j = 0; j < 4; j++) r[j] = activate(__double2float_rn(t[j]), act);
        Out::store4(out, at, r);
      } else {
        // none / relu: one rounding from the double value, like the CPU reference.
#pragma unroll
        for (int j = 0; j < 4; j++) t[j] = act == 1 && t[j] <= 0.0 ? 0.0 : t[j];
        Out::store4d(out, at, t);
      }
    } else {
      const double t = __dadd_rn(__dmul_rn(Acc::load(acc, at), scale[0]), b[0]);
      if (act >= 2) {
        Out::store(out, at, activate(__double2float_rn(t), act));
      } else {
        Out::storeDouble(out, at, act == 1 && t <= 0.0 ? 0.0 : t);
      }
    }
  }
}

#define EPILOGUE_KERNEL(ACC_NAME, ACC, OUT_NAME, OUT)                                          \
  extern "C" __global__ void __launch_bounds__(256) qlinear_epilogue_##ACC_NAME##_##OUT_NAME(   \
      void* out, const void* acc, int M, int N, const void* __restrict__ sxd, int sxdKind,      \
      const void* __restrict__ swd, int swdKind, int swdPerChannel,                            \
      const void* __restrict__ bias, int act) {                                                \
    epilogue<ACC, OUT>(out, acc, M, N, sxd, sxdKind, swd, swdKind, swdPerChannel, bias, act); \
  }

EPILOGUE_KERNEL(i32, AccI32, f32, F32)
EPILOGUE_KERNEL(i32, AccI32, f16, F16)
EPILOGUE_KERNEL(i32, AccI32, bf16, BF16)
EPILOGUE_KERNEL(f32, AccF32, f32, F32)
EPILOGUE_KERNEL(f32, AccF32, f16, F16)
EPILOGUE_KERNEL(f32, AccF32, bf16, BF16)

// ---------------------------------------------------------------------------------------------
// Weight-only GEMV for float32 x and M ≤ MT ≤ 16 rows (16-bit x: the tensor-core GEMV below).
//
// A block of GEMV_WARPS warps covers GEMV_WARPS / splitK groups of GEMV_ROWS output channels;
// the splitK warps of a group split K and add their sums through shared memory at the end.
// Each lane streams 16-byte chunks of its group's weight rows (E codes per chunk), two chunks
// in flight per row, and dequantizes them in registers exactly as dequantize does: the code's
// value (exact) times the float32 scale, rounded once to x's dtype. x is staged in shared memory
// as float32, KT columns at a time, permuted so that the float4 a lane reads for quad j of its
// chunk sits at slot (step · 8E + j · 32 + lane): a warp's reads are conflict-free.
//
// Requires K % E == 0 (rows start on 16-byte boundaries) and a scale that is constant over each
// chunk: index n · sN + (k / kb) · sK with kb % E == 0 or sK == 0. Staging, products and the
// final sums: gemv.cuh (shared with kernels/flinear.cu).

// int8 codes: 16 per chunk, quad j is word j. Bytes become exact floats through the float
// 2^23 + (b + 128) built with one byte permute (no int -> float conversion instruction).
struct GI8 {
  static constexpr int kElems = 16;
  static constexpr int kQuads = 4;
  __device__ static i64 rowBytes(int K) { return K; }
  __device__ static i64 byteOf(int k) { return k; }
  __device__ static void quad(const uint4& v, int j, float (&q)[4]) {
    const unsigned u = wordOf(v, j) ^ 0x80808080u;
    q[0] = __int_as_float(__byte_perm(u, 0x4b000000u, 0x7650)) - 8388736.0f;
    q[1] = __int_as_float(__byte_perm(u, 0x4b000000u, 0x7651)) - 8388736.0f;
    q[2] = __int_as_float(__byte_perm(u, 0x4b000000u, 0x7652)) - 8388736.0f;
    q[3] = __int_as_float(__byte_perm(u, 0x4b000000u, 0x7653)) - 8388736.0f;
  }
};

// Packed int4 codes: 32 per chunk, quad j is nibbles 4(j%2)..4(j%2)+3 of word j/2 (nibble t is
// element t). Biased nibbles (q + 8) are spread one per byte — even nibbles in `lo`, odd ones in
// `hi` — and each byte becomes the float 2^23 + q + 8 with one byte permute.
struct GI4 {
  static constexpr int kElems = 32;
  static constexpr int kQuads = 8;
  __device__ static i64 rowBytes(int K) { return K / 2; }
  __device__ static i64 byteOf(int k) { return k / 2; }
  __device__ static void quad(const uint4& v, int j, float (&q)[4]) {
    const unsigned u = wordOf(v, j >> 1) ^ 0x88888888u;
    const unsigned lo = u & 0x0f0f0f0fu, hi = (u >> 4) & 0x0f0f0f0fu;
    const unsigned b = (j & 1) * 2;  // first byte of this quad's nibble pairs
    q[0] = __int_as_float(__byte_perm(lo, 0x4b000000u, 0x7650 | b)) - 8388616.0f;
    q[1] = __int_as_float(__byte_perm(hi, 0x4b000000u, 0x7650 | b)) - 8388616.0f;
    q[2] = __int_as_float(__byte_perm(lo, 0x4b000000u, 0x7650 | (b + 1))) - 8388616.0f;
    q[3] = __int_as_float(__byte_perm(hi, 0x4b000000u, 0x7650 | (b + 1))) - 8388616.0f;
  }
};

// e4m3 codes: 16 per chunk, quad j is word j.
struct GE4M3 {
  static constexpr int kElems = 16;
  static constexpr int kQuads = 4;
  __device__ static i64 rowBytes(int K) { return K; }
  __device__ static i64 byteOf(int k) { return k; }
  __device__ static void quad(const uint4& v, int j, float (&q)[4]) {
    const unsigned w = wordOf(v, j);
    const float2 a = e4m3x2ToFloats(w), b = e4m3x2ToFloats(w >> 16);
    q[0] = a.x, q[1] = a.y, q[2] = b.x, q[3] = b.y;
  }
};

template <class Q>
__device__ __forceinline__ void gemvLoad(uint4 (&v)[GEMV_ROWS],
                                         const unsigned char* __restrict__ wq, i64 rowBytes,
                                         int n0, int N, int k) {
#pragma unroll
  for (int r = 0; r < GEMV_ROWS; r++) {
    v[r] = n0 + r < N ? __ldg(reinterpret_cast<const uint4*>(wq + (i64)(n0 + r) * rowBytes +
                                                              Q::byteOf(k)))
                      : make_uint4(0u, 0u, 0u, 0u);
  }
}

template <class Q, class X, int MT>
__device__ __forceinline__ void wlinearGemv(void* __restrict__ out, const void* __restrict__ x,
                                            const unsigned char* __restrict__ wq,
                                            const void* __restrict__ swd, int swdKind,
                                            const void* __restrict__ bias, int act, int M, int N,
                                            int K, i64 sN, int kb, int sK, int KT, int splitK) {
  constexpr int R = GEMV_ROWS;
  constexpr int E = Q::kElems;
  constexpr int STEP = 32 * E;     // elements one warp covers per step
  constexpr int STEP4 = STEP / 4;  // float4 slots per step and row
  // With many rows a quad's work is long enough to hide the loop; unrolling less keeps the
  // code (and the driver's JIT time) small.
  constexpr int QUAD_UNROLL = MT <= 2 ? Q::kQuads : 2;
  extern __shared__ float4 xs[];   // [MT][KT / 4], permuted within each step
  __shared__ float partial[GEMV_WARPS][R][MT];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kPart = warp % splitK;
  const int n0 = (blockIdx.x * (GEMV_WARPS / splitK) + warp / splitK) * R;
  const int KT4 = KT / 4;
  const i64 rowBytes = Q::rowBytes(K);
  const bool perRow = sK == 0;

  float acc[R][MT];
  float rowScale[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
#pragma unroll
    for (int m = 0; m < MT; m++) acc[r][m] = 0.0f;
    rowScale[r] = perRow && n0 + r < N ? loadScale(swd, swdKind, (i64)(n0 + r) * sN) : 0.0f;
  }

  for (int t0 = 0; t0 < K; t0 += KT) {
    const int tk = min(KT, K - t0);
    const int steps = (tk + STEP - 1) / STEP;
    // This lane's first chunks, requested before staging x so the loads overlap it.
    int s = kPart;
    bool have = n0 < N && s < steps && s * STEP + lane * E < tk;
    uint4 cur[R];
    if (have) gemvLoad<Q>(cur, wq, rowBytes, n0, N, t0 + s * STEP + lane * E);
    __syncthreads();  // the previous tile's x is no longer read
    gemvStageX<X, MT, E>(xs, x, M, K, t0, tk, steps, KT4, true);
    __syncthreads();
    if (n0 >= N) continue;
    while (s < steps) {
      const int sn = s + splitK;
      const bool haveNext = sn < steps && sn * STEP + lane * E < tk;
      uint4 nxt[R];
      if (haveNext) gemvLoad<Q>(nxt, wq, rowBytes, n0, N, t0 + sn * STEP + lane * E);
      if (have) {
        float sc[R];
        if (perRow) {
#pragma unroll
          for (int r = 0; r < R; r++) sc[r] = rowScale[r];
        } else {
          const i64 kIndex = (i64)((t0 + s * STEP + lane * E) / kb) * sK;
#pragma unroll
          for (int r = 0; r < R; r++) {
            sc[r] = n0 + r < N ? loadScale(swd, swdKind, (i64)(n0 + r) * sN + kIndex) : 0.0f;
          }
        }
        const float4* xv = xs + s * STEP4 + lane;
#pragma unroll QUAD_UNROLL
        for (int j = 0; j < Q::kQuads; j++) {
          float w[R][4];
#pragma unroll
          for (int r = 0; r < R; r++) {
            Q::quad(cur[r], j, w[r]);
#pragma unroll
            for (int t = 0; t < 4; t++) w[r][t] = __fmul_rn(w[r][t], sc[r]);
            X::round4(w[r]);
          }
          gemvFma<MT>(acc, w, xv, KT4, j);
        }
      }
#pragma unroll
      for (int r = 0; r < R; r++) cur[r] = nxt[r];
      have = haveNext;
      s = sn;
    }
  }

  gemvFinish<X, MT>(acc, partial, out, bias, act, M, N, n0, warp, lane, kPart, splitK);
}

#define GEMV_KERNEL(Q_NAME, Q, X_NAME, X, MT)                                                 \
  extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32, GEMV_MIN_BLOCKS(MT))         \
      wlinear_gemv_##Q_NAME##_##X_NAME##_m##MT(                                              \
          void* __restrict__ out, const void* __restrict__ x,                               \
          const unsigned char* __restrict__ wq, const void* __restrict__ swd, int swdKind,  \
          const void* __restrict__ bias, int act, int M, int N, int K, i64 sN, int kb,      \
          int sK, int KT, int splitK) {                                                     \
    wlinearGemv<Q, X, MT>(out, x, wq, swd, swdKind, bias, act, M, N, K, sN, kb, sK, KT,     \
                          splitK);                                                          \
  }

#define GEMV_KERNELS_QX(Q_NAME, Q, X_NAME, X)                                            \
  GEMV_KERNEL(Q_NAME, Q, X_NAME, X, 1)                                                   \
  GEMV_KERNEL(Q_NAME, Q, X_NAME, X, 2)                                                   \
  GEMV_KERNEL(Q_NAME, Q, X_NAME, X, 4)                                                   \
  GEMV_KERNEL(Q_NAME, Q, X_NAME, X, 8)                                                   \
  GEMV_KERNEL(Q_NAME, Q, X_NAME, X, 16)

GEMV_KERNELS_QX(i8, GI8, f32, F32)
GEMV_KERNELS_QX(i4, GI4, f32, F32)
GEMV_KERNELS_QX(e4m3, GE4M3, f32, F32)

// ---------------------------------------------------------------------------------------------
// Tensor-core weight-only GEMV for float16 / bfloat16 x and M ≤ 16 rows:
// wlinear_gemv_mma_<q>_<x>_m<8|16>.
//
// Why: at M ≤ 16 the product is a stream of the quantized weight, and dequantizing it in
// registers costs more instructions than the memory system leaves time for if every weight
// also needs M float32 FMAs. Here the dequantized weights become the A operand of
// mma.m16n8k16 (x's dtype in, float32 accumulators), so the multiply-adds of 16 output
// channels × 16 features × 8 rows of x are one instruction, and a weight costs only its
// dequantization: code → exact float (byte permute or LOP3 into a magic float, one FADD),
// × scale in float32 (one FMUL, the same rounding as dequantize), → x's dtype (one cvt per two).
// Products of two 16-bit values are exact in float32 and the tensor cores accumulate in
// float32, so the sums are float32 sums of exactly the values the fake-quant graph multiplies.
//
// Layout. A block of W warps (W = blockDim.x / 32, 1 to 16) computes 16 output channels
// (rows n0..n0+15 of W, the MMA's 16 rows); its warps split K. Lane l (g = l / 4, t = l % 4)
// streams 16-byte chunks of rows n0 + g and n0 + g + 8: in iteration i it reads chunk
// c = (i·W + warp)·4 + t of both rows, so the 4 lanes of a quad read 64 contiguous bytes of a
// row and the W warps of the block 64·W. The m16n8k16 fragments give lane (g, t) the k-slots
// {2t, 2t+1, 2t+8, 2t+9} of rows g, g+8 in A and of column g in B; any assignment of real
// features to slots works as long as A and B agree, so MMA j of a chunk maps its slots
// {2t, 2t+1, 2t+8, 2t+9} to features 4j..4j+3 of lane t's chunk: word j of an int8 / e4m3
// chunk, nibbles 4(j%2)..4(j%2)+3 of word j/2 of an int4 chunk, and x's words 2j, 2j+1 of
// the same features (read with 16-byte loads from L1, where x stays: the weights bypass it).
// Column g of B is x row g (row g + 8 in the second n8 tile of the m16 kernels); rows past M
// are zeros. Each lane keeps D chunk pairs in flight in a register ring (loads of iteration
// i + D - 1 are issued before iteration i is converted). The warps' float32 partial sums
// meet in shared memory; one thread per output adds them, the bias and the activation, and
// rounds once to x's dtype.
//
// Requires K % E == 0 (E codes per 16-byte chunk: rows start on 16-byte boundaries, and x's
// rows on 32-byte ones) and one scale per chunk: index n · sN + (k / kb) · sK with sK == 0 or
// kb % E == 0.

#define MMA_MAX_WARPS 16



// Codes → dequantized float32 values. values(v, j, s, w): the four values q · s (float32
// product, one rounding, as dequantize computes it) of features 4j..4j+3 of chunk v.

// int8: byte b of word j is feature 4j + b. (b ^ 0x80) in the low byte of the float
// 2^23 + (q + 128) (one byte permute), minus 2^23 + 128, is q exactly.
struct MI8 {
  static constexpr int kElems = 16;
  __device__ static void values(const uint4& v, int j, float s, float (&w)[4]) {
    const unsigned u = wordOf(v, j) ^ 0x80808080u;
#pragma unroll
    for (int b = 0; b < 4; b++) {
      const float f = __int_as_float(__byte_perm(u, 0x4b000000u, 0x7650 + b));
      w[b] = __fmul_rn(__fadd_rn(f, -8388736.0f), s);
    }
  }
};

// int4: nibble p of the 32-bit word j/2, shifted right by 16 for odd j, is feature 4j + p.
// The nibble stays at bit 4p and the exponent field is set to 150 - 4p, so one LOP3 makes the
// float 2^(23-4p) + (q + 8) (the XOR flips the nibble's sign bit: q + 8 = nibble ^ 8) and one
// FADD of -(2^(23-4p) + 8) gives q exactly (both operands are integers below 2^24).
struct MI4 {
  static constexpr int kElems = 32;
  __device__ static void values(const uint4& v, int j, float s, float (&w)[4]) {
    const unsigned word = wordOf(v, j >> 1);
    const unsigned src = (j & 1) ? word >> 16 : word;
#pragma unroll
    for (int p = 0; p < 4; p++) {
      const unsigned magicBits = ((150u - 4u * p) << 23) | (8u << (4 * p));
      const unsigned bits = (src & (0xfu << (4 * p))) ^ magicBits;
      const float magic = (float)((1 << (23 - 4 * p)) + 8);
      w[p] = __fmul_rn(__fadd_rn(__uint_as_float(bits), -magic), s);
    }
  }
};

// e4m3: byte b of word j is feature 4j + b; its value is exact in half and in float.
struct ME4M3 {
  static constexpr int kElems = 16;
  __device__ static void values(const uint4& v, int j, float s, float (&w)[4]) {
    const unsigned u = wordOf(v, j);
    const float2 a = e4m3x2ToFloats(u), b = e4m3x2ToFloats(u >> 16);
    w[0] = __fmul_rn(a.x, s), w[1] = __fmul_rn(a.y, s);
    w[2] = __fmul_rn(b.x, s), w[3] = __fmul_rn(b.y, s);
  }
};

// Chunk index c → index of its scale block along K (chunks per block a power of two: a shift).
struct ScaleBlocks {
  int chunks;  // chunks per scale block (block-wise modes only)
  int shift;   // log2(chunks), or -1
  __device__ int of(int c) const { return shift >= 0 ? c >> shift : c / chunks; }
};

template <class X>
struct IsBf16 {
  static constexpr bool value = false;
};
template <>
struct IsBf16<BF16> {
  static constexpr bool value = true;
};

template <class Q, class X, int NT, int D>
__device__ __forceinline__ void wlinearGemvMma(void* __restrict__ out, const void* __restrict__ x,
                                               const unsigned char* __restrict__ wq,
                                               const void* __restrict__ swd, int swdKind,
                                               const void* __restrict__ bias, int act, int M,
                                               int N, int K, i64 sN, int kb, int sK) {
  constexpr bool kBf16 = IsBf16<X>::value;
  constexpr int E = Q::kElems;
  constexpr int XV = E / 8;  // 16-byte x vectors per chunk and row of x
  constexpr int MT = 8 * NT;
  extern __shared__ float partial[];  // [warps][MT][16]
  const int warps = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * 16;
  const int rowA = n0 + g, rowB = n0 + g + 8;
  const bool okA = rowA < N, okB = rowB < N;
  const int chunks = K / E;  // per row
  const int quads = (chunks + 3) >> 2;
  const int iters = warp < quads ? (quads - 1 - warp) / warps + 1 : 0;
  const int firstChunk = warp * 4 + t, chunkStep = 4 * warps;
  const unsigned char* wA = wq + (i64)(okA ? rowA : 0) * chunks * 16;
  const unsigned char* wB = wq + (i64)(okB ? rowB : 0) * chunks * 16;
  const bool perRow = sK == 0;
  const float rowScaleA = perRow && okA ? loadScale(swd, swdKind, (i64)rowA * sN) : 0.0f;
  const float rowScaleB = perRow && okB ? loadScale(swd, swdKind, (i64)rowB * sN) : 0.0f;
  const i64 scaleA = (i64)rowA * sN, scaleB = (i64)rowB * sN;
  ScaleBlocks blocks{1, 0};
  if (!perRow) {
    blocks.chunks = kb / E;
    blocks.shift = (blocks.chunks & (blocks.chunks - 1)) == 0 ? __ffs(blocks.chunks) - 1 : -1;
  }
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);

  // This lane's rows of x (one per n8 tile; row 0 stands in for rows past M, never read), and
  // x's elements of chunk c in them: E of them, 32 or 64 bytes within one line. Offsets within
  // a row are below K < 2^31.
  const unsigned short* xRow[NT];
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    const int m = g + 8 * nt;
    xRow[nt] = static_cast<const unsigned short*>(x) + (m < M ? (i64)m * K : 0);
  }
  auto xChunk = [&](int nt, int c) { return xRow[nt] + (unsigned)c * (unsigned)E; };

  // The chunk pair (and, block-wise, the scales) of iteration i, zeros past the end, and x's
  // line for it into L1.
  auto load = [&](int i, uint4& a, uint4& b, float& sa, float& sb) {
    const int c = firstChunk + i * chunkStep;
    const bool ok = i < iters && c < chunks;
    a = ok && okA ? ldWeightChunk(wA + (unsigned)c * 16u) : zero;
    b = ok && okB ? ldWeightChunk(wB + (unsigned)c * 16u) : zero;
    if (!perRow) {
      const i64 at = (i64)blocks.of(c) * sK;
      sa = ok && okA ? loadScale(swd, swdKind, scaleA + at) : 0.0f;
      sb = ok && okB ? loadScale(swd, swdKind, scaleB + at) : 0.0f;
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
      if (ok && g + 8 * nt < M) prefetchL1(xChunk(nt, c));
    }
  };

  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
#pragma unroll
    for (int r = 0; r < 4; r++) acc[nt][r] = 0.0f;
  }

  // Multiplies iteration i's chunk pair into the accumulators. Invalid chunks and rows have
  // zero codes and scale 0 (so their values are 0 even with an infinite row scale) and zero x.
  auto compute = [&](int i, const uint4& a, const uint4& b, float sa, float sb) {
    const int c = firstChunk + i * chunkStep;
    const bool ok = c < chunks;
    const float sA = perRow ? (ok ? rowScaleA : 0.0f) : sa;
    const float sB = perRow ? (ok ? rowScaleB : 0.0f) : sb;
    uint4 xv[NT][XV];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
      const int m = g + 8 * nt;
      const uint4* xp = reinterpret_cast<const uint4*>(xChunk(nt, c));
#pragma unroll
      for (int q = 0; q < XV; q++) xv[nt][q] = ok && m < M ? __ldg(xp + q) : zero;
    }
#pragma unroll
    for (int j = 0; j < E / 4; j++) {
      float wa[4], wb[4];
      Q::values(a, j, sA, wa);
      Q::values(b, j, sB, wb);
      const unsigned a0 = X::pack(wa[0], wa[1]), a1 = X::pack(wb[0], wb[1]);
      const unsigned a2 = X::pack(wa[2], wa[3]), a3 = X::pack(wb[2], wb[3]);
#pragma unroll
      for (int nt = 0; nt < NT; nt++) {
        const uint4& xq = xv[nt][j >> 1];
        mma16816<kBf16>(acc[nt], a0, a1, a2, a3, wordOf(xq, 2 * (j & 1)),
                        wordOf(xq, 2 * (j & 1) + 1));
      }
    }
  };

  // Register ring: slot i % D holds iteration i; D - 1 iterations are in flight while one is
  // converted.
  uint4 ra[D], rb[D];
  float sa[D], sb[D];
#pragma unroll
  for (int j = 0; j < D; j++) sa[j] = sb[j] = 0.0f;
#pragma unroll
  for (int j = 0; j < D - 1; j++) load(j, ra[j], rb[j], sa[j], sb[j]);
  for (int i0 = 0; i0 < iters; i0 += D) {
#pragma unroll
    for (int j = 0; j < D; j++) {
      const int jn = (j + D - 1) % D;  // iteration i0 + j - 1's slot, already multiplied
      load(i0 + j + D - 1, ra[jn], rb[jn], sa[jn], sb[jn]);
      if (i0 + j < iters) compute(i0 + j, ra[j], rb[j], sa[j], sb[j]);
    }
  }

  // D's element r of tile nt: row g + 8 (r / 2), column (x row) 8 nt + 2t + r % 2.
  float* mine = partial + warp * MT * 16;
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
#pragma unroll
    for (int r = 0; r < 4; r++) {
      const int m = 8 * nt + 2 * t + (r & 1);
      if (m < M) mine[m * 16 + g + 8 * (r >> 1)] = acc[nt][r];
    }
  }
  __syncthreads();
  for (int o = threadIdx.x; o < M * 16; o += blockDim.x) {
    const int m = o >> 4, r = o & 15, n = n0 + r;
    if (n >= N) continue;
    float v = partial[m * 16 + r];
    for (int w = 1; w < warps; w++) v += partial[(w * MT + m) * 16 + r];
    const float b = bias ? X::load(bias, n) : 0.0f;
    X::store(out, (i64)m * N + n, activate(v + b, act));
  }
}

// Up to 16 warps a block at no more than 128 registers a thread (16 warps an SM at least).
#define GEMV_MMA_KERNEL(Q_NAME, Q, X_NAME, X, MT, D)                                          \
  extern "C" __global__ void __launch_bounds__(MMA_MAX_WARPS * 32, 1)                        \
      wlinear_gemv_mma_##Q_NAME##_##X_NAME##_m##MT(                                          \
          void* __restrict__ out, const void* __restrict__ x,                               \
          const unsigned char* __restrict__ wq, const void* __restrict__ swd, int swdKind,  \
          const void* __restrict__ bias, int act, int M, int N, int K, i64 sN, int kb,      \
          int sK) {                                                                         \
    wlinearGemvMma<Q, X, MT / 8, D>(out, x, wq, swd, swdKind, bias, act, M, N, K, sN, kb,   \
                                    sK);                                                    \
  }

#define GEMV_MMA_KERNELS_Q(Q_NAME, Q)                \
  GEMV_MMA_KERNEL(Q_NAME, Q, f16, F16, 8, 5)         \
  GEMV_MMA_KERNEL(Q_NAME, Q, f16, F16, 16, 4)        \
  GEMV_MMA_KERNEL(Q_NAME, Q, bf16, BF16, 8, 5)       \
  GEMV_MMA_KERNEL(Q_NAME, Q, bf16, BF16, 16, 4)

GEMV_MMA_KERNELS_Q(i8, MI8)
GEMV_MMA_KERNELS_Q(i4, MI4)
GEMV_MMA_KERNELS_Q(e4m3, ME4M3)
