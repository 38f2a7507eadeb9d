// Pieces shared by the GEMV kernels of kernels/flinear.cu (float weights) and kernels/linear.cu
// (weight-only quantized, float32 x): y[m, n] = act(Σ_k x[m, k] · W[n, k] + b[n]) for
// M ≤ MT ≤ 16 rows of x.
//
// A block of GEMV_WARPS warps covers GEMV_WARPS / splitK groups of GEMV_ROWS output channels;
// the splitK warps of a group split K and add their sums through shared memory at the end.
// Lanes accumulate acc[r][m] (group row r, x row m) over their slice of K.
//
// Also the residual epilogue shared by every GEMV of the fused linear ops (kernels/flinear.cu,
// kernels/qgemv.cu, kernels/wgemv.cu): withResidual.

#pragma once

#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// Residual epilogue. A fused linear op with a residual folded in (lib/graph/passes/
// residual_fusion.ts) computes what the unfused graph computes: the linear's value v rounded
// once to the output type X (as its store alone would), then the `add` op's sum of that value
// and the residual r in float32, rounded once more by X::store. float32 holds the exact sum's
// correct rounding to X for 16-bit X (24 >= 2 · 11 + 2 bits), so this equals the CPU's float64
// add bit for bit.

// v rounded to X's precision, as a float (exact): from a float, or from a double in one step
// (the qgemv epilogue's storeDouble). X derives from F32Base or Half16Base (common.cuh).
__device__ __forceinline__ float roundedAs(const F32Base*, float v) { return v; }
__device__ __forceinline__ float roundedAs(const F32Base*, double v) {
  return __double2float_rn(v);
}
template <bool Bf16>
__device__ __forceinline__ float roundedAs(const Half16Base<Bf16>*, float v) {
  return Half16Base<Bf16>::one(Half16Base<Bf16>::fromFloat(v));
}
template <bool Bf16>
__device__ __forceinline__ float roundedAs(const Half16Base<Bf16>*, double v) {
  return Bf16 ? __bfloat162float(__double2bfloat16(v)) : __half2float(__double2half(v));
}

// The float to X::store at element `at` of a fused linear's output whose value is v (float or
// double, not yet rounded) and whose residual is X's tensor `residual` ([M, N] like the output):
// round(v) + residual[at], summed in float32.
template <class X, class V>
__device__ __forceinline__ float withResidual(V v, const void* __restrict__ residual, i64 at) {
  return roundedAs(static_cast<const X*>(nullptr), v) + X::load(residual, at);
}

#define GEMV_WARPS 4
#define GEMV_ROWS 4

// Register budget: up to 128 per thread for a few rows (several blocks per SM), 255 for 8+.
#define GEMV_MIN_BLOCKS(MT) ((MT) <= 4 ? 4 : 2)

// x staged as it is.
struct StageAsIs {
  __device__ void operator()(int, i64, float4&) const {}
};

// Stages columns t0..t0 + tk of x's rows (zeros past M and tk) in shared memory as float32:
// the float4 a lane reads for quad j of its chunk of step st (E elements per lane and chunk)
// sits at slot (st · 8E + j · 32 + lane), so a warp's reads are conflict-free. xVec (K % 4 ==
// 0): x is read four elements at a time. `map(m, k, v)` may change the four values of row m
// from column k on before they are staged (it sees only columns inside K, four at a time, so
// a map other than StageAsIs needs xVec).
template <class X, int MT, int E, class Map = StageAsIs>
__device__ __forceinline__ void gemvStageX(float4* xs, const void* __restrict__ x, int M, int K,
                                           int t0, int tk, int steps, int KT4, bool xVec,
                                           Map map = Map()) {
  constexpr int STEP = 32 * E;     // elements one warp covers per step
  constexpr int STEP4 = STEP / 4;  // float4 slots per step and row
  for (int m = 0; m < MT; m++) {
    for (int g = threadIdx.x; g < steps * STEP4; g += blockDim.x) {
      const int st = g / STEP4, rem = g % STEP4;
      const int e0 = st * STEP + (rem % 32) * E + (rem / 32) * 4;
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (m < M && e0 < tk) {
        const i64 at = (i64)m * K + t0 + e0;
        if (xVec) {
          v = X::load4(x, at);  // tk % 4 == 0: all four are inside
        } else {
          const int valid = tk - e0;
          v.x = X::load(x, at);
          if (valid > 1) v.y = X::load(x, at + 1);
          if (valid > 2) v.z = X::load(x, at + 2);
          if (valid > 3) v.w = X::load(x, at + 3);
        }
        map(m, t0 + e0, v);
      }
      xs[m * KT4 + g] = v;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Layer norms folded into a GEMV (lib/graph/passes/qdq_fusion.ts): the kernel normalizes x
// itself with the float32 operations of the layer-norm kernel the unfolded graph runs
// (kernels/nn.cu, layer_norm_warp / layer_norm_block of a vector variant), in its order, so the
// normalized values equal that kernel's output bit for bit.

// layer_norm_store's value for x value v: (v − mean) · inv, then the affine weight w and bias b
// where the norm has them.
__device__ __forceinline__ float layerNormAffine(float v, float mean, float inv, bool hasWeight,
                                                 float w, bool hasBias, float b) {
  const float t = __fmul_rn(__fsub_rn(v, mean), inv);
  if (hasWeight && hasBias) return __fmaf_rn(t, w, b);
  if (hasWeight) return __fmul_rn(t, w);
  if (hasBias) return __fadd_rn(t, b);
  return t;
}

// Asks for `bytes` bytes from p (when not null) in L1, 128-byte lines spread over the block's
// threads: a folded norm's weight and bias, which the kernel reads after the statistics.
__device__ __forceinline__ void prefetchL1(const void* p, i64 bytes) {
  if (p == nullptr) return;
  for (i64 at = (i64)threadIdx.x * 128; at < bytes; at += (i64)blockDim.x * 128) {
    prefetchL1(static_cast<const char*>(p) + at);
  }
}

// One vector's part of a layer-norm pass's running sum, in order: its values (pass 0) or their
// squared deviations from the row mean mu (pass 1), as the layer-norm kernel adds them.
template <int VEC>
__device__ __forceinline__ float layerNormPassAdd(int pass, float s, const float (&v)[VEC],
                                                  float mu) {
#pragma unroll
  for (int j = 0; j < VEC; j++) {
    if (pass == 0) {
      s = __fadd_rn(s, v[j]);
    } else {
      const float d = __fsub_rn(v[j], mu);
      s = __fmaf_rn(d, d, s);
    }
  }
  return s;
}

// The mean and inverse deviation of M rows of K values (K a multiple of VEC, the values of a
// 16-byte vector) as the layer-norm kernel that gives a row lnThreads threads computes them:
// 32 for layer_norm_*_warp_v* (a warp per row), its block size for layer_norm_*_block_v. Its
// thread i sums the row's vectors i, i + lnThreads, ... value by value, each warp adds its
// threads' sums by warpSum, and the lnThreads / 32 warp sums are added in order from 0
// (block_all; a warp kernel's one sum is unchanged by that); then the same for the squared
// deviations from the mean. Here the warps of the block play those threads in turn (warp w the
// virtual warps w, w + warps, ...), with the same operations in the same order.
// (kernels/wgemv.cu's stageNormalized does the same with its own loops, copying x into shared
// memory on the first pass: written with this helper, its kernels measured about 0.5 µs slower
// a launch on the H200.) read(pass, m, u, v) gives the VEC values of vector u of row m (pass 0:
// the sums, 1: the deviations); BATCH vectors are read before any is summed (fewer where
// registers are short: the order of the sums does not change). red holds M · lnThreads / 32
// floats. Every thread of the block calls it; it ends with mean[m] and inv[m] visible to all.
template <int VEC, int BATCH = 4, class Read>
__device__ __forceinline__ void layerNormStats(int M, int K, int lnThreads, float eps,
                                               float* red, float* mean, float* inv, Read read) {
  const int vecs = K / VEC;
  const int perRow = lnThreads >> 5;
  const int virtualWarps = M * perRow;
  const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll 1
  for (int pass = 0; pass < 2; pass++) {
#pragma unroll 1
    for (int vw = warp; vw < virtualWarps; vw += warps) {
      const int m = vw / perRow, first = (vw - m * perRow) * 32 + lane;
      const float mu = pass == 0 ? 0.0f : mean[m];
      float s = 0.0f;
      // BATCH vectors read before any is summed (one memory round trip, not BATCH); summed in
      // order.
#pragma unroll 1
      for (int u0 = first; u0 < vecs; u0 += BATCH * lnThreads) {
        float v[BATCH][VEC];
#pragma unroll
        for (int b = 0; b < BATCH; b++) {
          if (u0 + b * lnThreads < vecs) read(pass, m, u0 + b * lnThreads, v[b]);
        }
#pragma unroll
        for (int b = 0; b < BATCH; b++) {
          if (u0 + b * lnThreads >= vecs) break;
          s = layerNormPassAdd<VEC>(pass, s, v[b], mu);
        }
      }
      s = warpSum(s);
      if (lane == 0) red[vw] = s;
    }
    __syncthreads();
    if (threadIdx.x < M) {
      float total = 0.0f;
      for (int i = 0; i < perRow; i++) total = __fadd_rn(total, red[threadIdx.x * perRow + i]);
      if (pass == 0) {
        mean[threadIdx.x] = __fdiv_rn(total, (float)K);
      } else {
        inv[threadIdx.x] = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(total, (float)K), eps)));
      }
    }
    __syncthreads();
  }
}

// acc[r][m] += w[r] · x quad, for the four weights w[r] of quad j of row r's chunk and x row
// m's float4 of that quad at xv[m · KT4 + 32 j] (x staged in shared memory).
template <int MT>
__device__ __forceinline__ void gemvFma(float (&acc)[GEMV_ROWS][MT],
                                        const float (&w)[GEMV_ROWS][4], const float4* xv,
                                        int KT4, int j) {
#pragma unroll
  for (int m = 0; m < MT; m++) {
    const float4 xq = xv[m * KT4 + j * 32];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) {
      acc[r][m] = fmaf(w[r][0], xq.x, acc[r][m]);
      acc[r][m] = fmaf(w[r][1], xq.y, acc[r][m]);
      acc[r][m] = fmaf(w[r][2], xq.z, acc[r][m]);
      acc[r][m] = fmaf(w[r][3], xq.w, acc[r][m]);
    }
  }
}

// The end of a GEMV: sums acc over the lanes (every lane ends with the totals), then over the
// splitK warps of the group (through `partial`, in shared memory), and writes the group's
// outputs y[m, n0 + r] = act(acc[r][m] + b[n0 + r]) rounded once to X (with a `residual`,
// [M, N] of X, plus residual[m, n0 + r]: withResidual). Every thread of the block calls it (it
// has a barrier when splitK > 1).
template <class X, int MT>
__device__ __forceinline__ void gemvFinish(float (&acc)[GEMV_ROWS][MT],
                                           float (&partial)[GEMV_WARPS][GEMV_ROWS][MT],
                                           void* __restrict__ out,
                                           const void* __restrict__ bias, int act, int M, int N,
                                           int n0, int warp, int lane, int kPart, int splitK,
                                           const void* __restrict__ residual = nullptr) {
  constexpr int R = GEMV_ROWS;
#pragma unroll
  for (int r = 0; r < R; r++) {
#pragma unroll
    for (int m = 0; m < MT; m++) {
      float v = acc[r][m];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      acc[r][m] = v;
    }
  }
  if (splitK > 1) {
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < R; r++) {
#pragma unroll
        for (int m = 0; m < MT; m++) partial[warp][r][m] = acc[r][m];
      }
    }
    __syncthreads();
    if (kPart != 0) return;
    for (int p = 1; p < splitK; p++) {
#pragma unroll
      for (int r = 0; r < R; r++) {
#pragma unroll
        for (int m = 0; m < MT; m++) acc[r][m] += partial[warp + p][r][m];
      }
    }
  }
  if (n0 >= N) return;
  // Lane l writes outputs l, l + 32, ... of the group (index r · MT + m); the value is picked
  // with compile-time indices so acc stays in registers.
#pragma unroll
  for (int pass = 0; pass < (R * MT + 31) / 32; pass++) {
    const int idx = pass * 32 + lane;
    float v = 0.0f;
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
      for (int m = 0; m < MT; m++) v = idx == r * MT + m ? acc[r][m] : v;
    }
    const int r = idx / MT, m = idx % MT, n = n0 + r;
    if (idx < R * MT && m < M && n < N) {
      const float b = bias ? X::load(bias, n) : 0.0f;
      const i64 at = (i64)m * N + n;
      const float y = activate(v + b, act);
      X::store(out, at, residual ? withResidual<X>(y, residual, at) : y);
    }
  }
}
