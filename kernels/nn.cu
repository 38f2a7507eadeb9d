// Softmax, log-softmax and layer norm. Math in float32, one rounding to the output dtype.
//
// Rows along the last axis (softmax, log-softmax) and the normalized trailing block (layer
// norm) are contiguous:
//  - *_warp: a warp per row, the row held in registers (VPT values per lane), so the input is
//    read once. `_v` variants use 16-byte loads and stores (the row length is a multiple of
//    the vector width, so every row is aligned); `_s` variants use scalar accesses.
//  - *_block: a block per row for longer rows; the row is cached in shared memory as float32
//    when it fits (`cached`), otherwise re-read from global memory in each pass.
// Softmax along another axis (softmax_cols) runs a thread per (outer, inner) column.
//
// Softmax is exp(x − max) / Σ exp(x − max) with the max taken first (NaN propagates: any NaN
// in a row makes the whole row NaN, as on the CPU); log-softmax is (x − max) − log Σ.
//
// layer_norm_quantize_<x>_<i8|e4m3>_<variant>: the layer norm of a qlinear's input folded into
// it (lib/backends/cuda/linear.ts), storing codes instead of x's dtype: each normalized value,
// computed exactly as the layer_norm kernel of the same variant computes it, is rounded to x's
// dtype and quantized as qlinear_quantize_<x>_<q> (kernels/linear.cu) quantizes it.

#include <stdint.h>

#include "common.cuh"
#include "qlinear.cuh"

#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

// max that lets a NaN win from either side.
__device__ __forceinline__ float nan_max(float a, float b) { return (b > a || b != b) ? b : a; }

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = nan_max(v, __shfl_xor_sync(FULL_MASK, v, m));
  return v;
}


// The block-wide max (MAX) or sum, returned to every thread. `scratch` holds 32 floats.
template <bool MAX> __device__ __forceinline__ float block_all(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  v = MAX ? warp_max(v) : warpSum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = MAX ? NEG_INF : 0.0f;
  for (int i = 0; i < warps; ++i) r = MAX ? nan_max(r, scratch[i]) : r + scratch[i];
  __syncthreads();  // scratch may be reused right after
  return r;
}

// VEC consecutive elements at p (16-byte aligned when VEC > 1) as float32.
template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&t)[VEC]) {
  if constexpr (VEC == 1) {
    t[0] = to_f(*p);
  } else {
    static_assert(VEC * sizeof(T) == 16, "16-byte vectors");
    const uint4 b = __ldg(reinterpret_cast<const uint4*>(p));
    T e[VEC];
    memcpy(e, &b, 16);
#pragma unroll
    for (int j = 0; j < VEC; ++j) t[j] = to_f(e[j]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const float (&t)[VEC]) {
  if constexpr (VEC == 1) {
    *p = from_f<T>(t[0]);
  } else {
    T e[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) e[j] = from_f<T>(t[j]);
    uint4 b;
    memcpy(&b, e, 16);
    *reinterpret_cast<uint4*>(p) = b;
  }
}

// Shared-memory row cache: float4 accesses for vectors (conflict-free), scalars otherwise.
template <int VEC> __device__ __forceinline__ void cache_store(float* p, const float (&t)[VEC]) {
  if constexpr (VEC == 1) {
    *p = t[0];
  } else {
#pragma unroll
    for (int q = 0; q < VEC / 4; ++q) {
      reinterpret_cast<float4*>(p)[q] = make_float4(t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
    }
  }
}

template <int VEC> __device__ __forceinline__ void cache_load(const float* p, float (&t)[VEC]) {
  if constexpr (VEC == 1) {
    t[0] = *p;
  } else {
#pragma unroll
    for (int q = 0; q < VEC / 4; ++q) {
      const float4 f = reinterpret_cast<const float4*>(p)[q];
      t[4 * q] = f.x;
      t[4 * q + 1] = f.y;
      t[4 * q + 2] = f.z;
      t[4 * q + 3] = f.w;
    }
  }
}

// Chunk c (VEC elements) of row xr in a later pass of a block kernel: from the shared-memory
// cache when the row is cached there, otherwise from global memory again.
template <typename T, int VEC>
__device__ __forceinline__ void reload_chunk(const T* __restrict__ xr, const float* cache, i64 c,
                                             bool cached, float (&t)[VEC]) {
  if (cached) {
    cache_load<VEC>(cache + c * VEC, t);
  } else {
    load_vec<T, VEC>(xr + c * VEC, t);
  }
}

// ---------------------------------------------------------------------------------------------
// Warp-per-row register layout: a lane's VPT values are VPT/VEC chunks of VEC consecutive
// elements; chunk c of lane l starts at element (c·32 + l)·VEC. Rows have length
// L <= 32·VPT, and L % VEC == 0, so a chunk is entirely inside the row or entirely outside.

template <typename T, int VPT, int VEC>
__device__ __forceinline__ void warp_load_row(const T* __restrict__ row, int L, int lane,
                                              float (&v)[VPT], float fill) {
#pragma unroll
  for (int c = 0; c < VPT / VEC; ++c) {
    const int k = (c * 32 + lane) * VEC;
    float t[VEC];
    if (k < L) {
      load_vec<T, VEC>(row + k, t);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) t[j] = fill;
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[c * VEC + j] = t[j];
  }
}

template <typename T, int VPT, int VEC>
__device__ __forceinline__ void softmax_warp(const T* __restrict__ x, T* __restrict__ y, i64 rows,
                                             int L, bool log) {
  const int lane = threadIdx.x & 31;
  const i64 warps = ((i64)gridDim.x * blockDim.x) >> 5;
  for (i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < rows; row += warps) {
    float v[VPT];
    warp_load_row<T, VPT, VEC>(x + row * L, L, lane, v, NEG_INF);
    float mx = NEG_INF;
#pragma unroll
    for (int i = 0; i < VPT; ++i) mx = nan_max(mx, v[i]);
    mx = warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < VPT / VEC; ++c) {
      if ((c * 32 + lane) * VEC < L) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float e = expf(v[c * VEC + j] - mx);
          sum += e;
          if (!log) v[c * VEC + j] = e;
        }
      }
    }
    sum = warpSum(sum);
    const float logSum = log ? logf(sum) : 0.0f;
    T* out = y + row * L;
#pragma unroll
    for (int c = 0; c < VPT / VEC; ++c) {
      const int k = (c * 32 + lane) * VEC;
      if (k < L) {
        float t[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float a = v[c * VEC + j];
          t[j] = log ? (a - mx) - logSum : a / sum;
        }
        store_vec<T, VEC>(out + k, t);
      }
    }
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void softmax_block(const T* __restrict__ x, T* __restrict__ y, i64 rows,
                                              i64 L, bool log, bool cached) {
  extern __shared__ float4 dynamic_smem[];
  float* cache = reinterpret_cast<float*>(dynamic_smem);
  __shared__ float scratch[32];
  const i64 chunks = L / VEC;
  for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * L;
    T* yr = y + row * L;
    float mx = NEG_INF;
    for (i64 c = threadIdx.x; c < chunks; c += blockDim.x) {
      float t[VEC];
      load_vec<T, VEC>(xr + c * VEC, t);
      if (cached) cache_store<VEC>(cache + c * VEC, t);
#pragma unroll
      for (int j = 0; j < VEC; ++j) mx = nan_max(mx, t[j]);
    }
    mx = block_all<true>(mx, scratch);
    // Each thread reads back only the cache entries it wrote: no barrier needed in between.
    float sum = 0.0f;
    for (i64 c = threadIdx.x; c < chunks; c += blockDim.x) {
      float t[VEC];
      reload_chunk<T, VEC>(xr, cache, c, cached, t);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float e = expf(t[j] - mx);
        sum += e;
        t[j] = e;
      }
      if (cached && !log) cache_store<VEC>(cache + c * VEC, t);
    }
    sum = block_all<false>(sum, scratch);
    const float logSum = log ? logf(sum) : 0.0f;
    for (i64 c = threadIdx.x; c < chunks; c += blockDim.x) {
      float t[VEC];
      reload_chunk<T, VEC>(xr, cache, c, cached, t);  // cached: x (log-softmax) or exp(x − max)
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if (log) {
          t[j] = (t[j] - mx) - logSum;
        } else {
          t[j] = (cached ? t[j] : expf(t[j] - mx)) / sum;
        }
      }
      store_vec<T, VEC>(yr + c * VEC, t);
    }
  }
}

// Softmax along an axis with `inner` > 1 elements after it: a thread per column.
template <typename T>
__device__ __forceinline__ void softmax_cols(const T* __restrict__ x, T* __restrict__ y, i64 outer,
                                             i64 L, i64 inner, bool log) {
  const i64 n = outer * inner;
  const i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < n; t += stride) {
    const i64 o = t / inner;
    const i64 base = o * L * inner + (t - o * inner);
    const T* xp = x + base;
    T* yp = y + base;
    float mx = NEG_INF;
    for (i64 k = 0; k < L; ++k) mx = nan_max(mx, to_f(xp[k * inner]));
    float sum = 0.0f;
    for (i64 k = 0; k < L; ++k) sum += expf(to_f(xp[k * inner]) - mx);
    const float logSum = log ? logf(sum) : 0.0f;
    for (i64 k = 0; k < L; ++k) {
      const float a = to_f(xp[k * inner]);
      yp[k * inner] = from_f<T>(log ? (a - mx) - logSum : expf(a - mx) / sum);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Layer norm over rows of D elements: two passes (mean, then squared deviations), population
// variance, y = (x − mean) / sqrt(var + eps) · weight + bias. weight / bias may be null.
//
// The arithmetic is spelled out with _rn intrinsics: nothing may be contracted into an FMA
// differently from one kernel (or one unrolled copy) to another, so every variant that shares
// the row reduction computes bit-identical values. `Out` receives them (put<VEC>(at, t): VEC
// values at element `at` of the output).

// Stores in x's dtype: the layer norm op.
template <typename T> struct NormValues {
  T* y;
  template <int VEC> __device__ __forceinline__ void put(i64 at, const float (&t)[VEC]) const {
    store_vec<T, VEC>(y + at, t);
  }
};

// Stores the codes of the values rounded to T and divided by the per-tensor scale, as
// quantizeActivations<T, Q> (kernels/linear.cu) computes them from values stored as T: int8
// codes (Q = XI8) or e4m3 codes (XE4M3), VEC bytes per store.
template <typename T, class Q> struct NormCodes {
  unsigned char* codes;
  ScaleQuotient scale;
  template <int VEC> __device__ __forceinline__ void put(i64 at, const float (&t)[VEC]) const {
    float q[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) q[j] = to_f(from_f<T>(t[j]));
    scale.divide(q);
    if constexpr (VEC == 1) {
      Q::store1(codes, at, q[0]);
    } else if constexpr (VEC == 4) {
      *reinterpret_cast<unsigned*>(codes + at) = Q::pack4(q);
    } else {
      static_assert(VEC == 8, "1, 4 or 8 codes a store");
      *reinterpret_cast<uint2*>(codes + at) =
          make_uint2(Q::pack4(q), Q::pack4(q + 4));
    }
  }
};

template <typename T, int VEC, class Out>
__device__ __forceinline__ void layer_norm_store(const Out& out, const T* __restrict__ w,
                                                 const T* __restrict__ b, i64 at, i64 k,
                                                 float (&t)[VEC], float mean, float inv) {
  float wt[VEC], bt[VEC];
  if (w) load_vec<T, VEC>(w + k, wt);
  if (b) load_vec<T, VEC>(b + k, bt);
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    float r = __fmul_rn(__fsub_rn(t[j], mean), inv);
    if (w && b) {
      r = __fmaf_rn(r, wt[j], bt[j]);
    } else if (w) {
      r = __fmul_rn(r, wt[j]);
    } else if (b) {
      r = __fadd_rn(r, bt[j]);
    }
    t[j] = r;
  }
  out.template put<VEC>(at, t);
}

// A lane's VPT values of one row in the warp-per-row layout, zeros past the row. Floats as
// loaded; float16 vectors stay packed (half the registers) and are widened, exactly, where a
// pass reads them: the layer-norm kernels then fit in 64 registers, eight 4-warp blocks share
// an SM, and a prefill's rows (4096 of 768) are resident at once instead of in 1.3 waves.
// (Packed bfloat16 rows took more registers than floats: the compiler widens them early.)
template <typename T, int VPT, int VEC, bool Packed = (std::is_same<T, __half>::value && VEC == 8)>
struct WarpRow {
  float v[VPT];
  __device__ __forceinline__ void load(const T* __restrict__ row, int L, int lane) {
    warp_load_row<T, VPT, VEC>(row, L, lane, v, 0.0f);
  }
  __device__ __forceinline__ void chunk(int c, float (&t)[VEC]) const {
#pragma unroll
    for (int j = 0; j < VEC; ++j) t[j] = v[c * VEC + j];
  }
};

template <typename T, int VPT, int VEC>
struct WarpRow<T, VPT, VEC, true> {
  uint4 raw[VPT / VEC];
  __device__ __forceinline__ void load(const T* __restrict__ row, int L, int lane) {
#pragma unroll
    for (int c = 0; c < VPT / VEC; ++c) {
      const int k = (c * 32 + lane) * VEC;
      raw[c] = k < L ? __ldg(reinterpret_cast<const uint4*>(row + k)) : make_uint4(0, 0, 0, 0);
    }
  }
  __device__ __forceinline__ void chunk(int c, float (&t)[VEC]) const {
    T e[VEC];
    memcpy(e, &raw[c], 16);
#pragma unroll
    for (int j = 0; j < VEC; ++j) t[j] = to_f(e[j]);
  }
};

template <typename T, int VPT, int VEC, class Out>
__device__ __forceinline__ void layer_norm_warp(const T* __restrict__ x, const T* __restrict__ w,
                                                const T* __restrict__ b, const Out& y, i64 rows,
                                                int D, float eps) {
  const int lane = threadIdx.x & 31;
  const i64 warps = ((i64)gridDim.x * blockDim.x) >> 5;
  for (i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < rows; row += warps) {
    WarpRow<T, VPT, VEC> v;
    v.load(x + row * D, D, lane);
    // Every value a lane holds is summed in order, the zeros past the row included.
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < VPT / VEC; ++c) {
      float t[VEC];
      v.chunk(c, t);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum = __fadd_rn(sum, t[j]);
    }
    const float mean = __fdiv_rn(warpSum(sum), (float)D);
    float sq = 0.0f;
#pragma unroll
    for (int c = 0; c < VPT / VEC; ++c) {
      if ((c * 32 + lane) * VEC < D) {
        float t[VEC];
        v.chunk(c, t);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float d = __fsub_rn(t[j], mean);
          sq = __fmaf_rn(d, d, sq);
        }
      }
    }
    const float inv = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(warpSum(sq), (float)D), eps)));
#pragma unroll
    for (int c = 0; c < VPT / VEC; ++c) {
      const int k = (c * 32 + lane) * VEC;
      if (k < D) {
        float t[VEC];
        v.chunk(c, t);
        layer_norm_store<T, VEC>(y, w, b, row * D + k, k, t, mean, inv);
      }
    }
  }
}

template <typename T, int VEC, class Out>
__device__ __forceinline__ void layer_norm_block(const T* __restrict__ x, const T* __restrict__ w,
                                                 const T* __restrict__ b, const Out& y, i64 rows,
                                                 i64 D, float eps, bool cached) {
  extern __shared__ float4 dynamic_smem[];
  float* cache = reinterpret_cast<float*>(dynamic_smem);
  __shared__ float scratch[32];
  const i64 chunks = D / VEC;
  for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * D;
    float sum = 0.0f;
    for (i64 c = threadIdx.x; c < chunks; c += blockDim.x) {
      float t[VEC];
      load_vec<T, VEC>(xr + c * VEC, t);
      if (cached) cache_store<VEC>(cache + c * VEC, t);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum = __fadd_rn(sum, t[j]);
    }
    const float mean = __fdiv_rn(block_all<false>(sum, scratch), (float)D);
    float sq = 0.0f;
    for (i64 c = threadIdx.x; c < chunks; c += blockDim.x) {
      float t[VEC];
      reload_chunk<T, VEC>(xr, cache, c, cached, t);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float d = __fsub_rn(t[j], mean);
        sq = __fmaf_rn(d, d, sq);
      }
    }
    const float inv =
        __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(block_all<false>(sq, scratch), (float)D), eps)));
    for (i64 c = threadIdx.x; c < chunks; c += blockDim.x) {
      float t[VEC];
      reload_chunk<T, VEC>(xr, cache, c, cached, t);
      layer_norm_store<T, VEC>(y, w, b, row * D + c * VEC, c * VEC, t, mean, inv);
    }
  }
}

// The quantizing kernels' other duties, spread over the grid: zero codes from `from` to `to`
// (the padding rows a GEMM reads), and `count` float32 copies of the scale at `rowScale` in
// `rowScales` (when not null: cuBLASLt's outer-vector fp8 scale of x).
__device__ __forceinline__ void layer_norm_codes_extras(unsigned char* codes, i64 from, i64 to,
                                                        float* rowScales,
                                                        const void* __restrict__ rowScale,
                                                        int rowScaleKind, int count) {
  const i64 first = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const i64 threads = (i64)gridDim.x * blockDim.x;
  for (i64 i = from + first; i < to; i += threads) codes[i] = 0;
  if (rowScales) {
    const float r = loadScale(rowScale, rowScaleKind, 0);
    for (i64 i = first; i < count; i += threads) rowScales[i] = r;
  }
}

// ---------------------------------------------------------------------------------------------
// Instantiations. Warp kernels: `_s<VPT>` scalar, `_v<VPT>` vectorized (VEC = 16 B / element).
// Scalar rows longer than 256 go to the block kernels. `log` selects log-softmax.

#define SOFTMAX_WARP(NAME, T, VPT, VEC)                                                       \
  extern "C" __global__ void __launch_bounds__(128)                                           \
      NAME(const T* __restrict__ x, T* __restrict__ y, i64 rows, int L, int log) {            \
    softmax_warp<T, VPT, VEC>(x, y, rows, L, log != 0);                                       \
  }

// Blocks an SM must hold of a warp-per-row layer-norm kernel: eight (64 registers), so that
// 4096 rows are resident at once on 132 SMs. bfloat16 rows do not fit 64 registers without
// spilling; they keep the register count they need.
#define LN_WARP_MIN_BLOCKS(T) (std::is_same<T, __nv_bfloat16>::value ? 1 : 8)

#define LAYER_NORM_WARP(NAME, T, VPT, VEC)                                                    \
  extern "C" __global__ void __launch_bounds__(128, LN_WARP_MIN_BLOCKS(T))                       \
      NAME(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,         \
           T* __restrict__ y, i64 rows, int D, float eps) {                                   \
    layer_norm_warp<T, VPT, VEC>(x, w, b, NormValues<T>{y}, rows, D, eps);                    \
  }

// The arguments after the layer norm's own of the quantizing kernels.
#define CODES_PARAMS                                                                          \
  const void *__restrict__ scale, int scaleKind, i64 padEnd, float *__restrict__ rowScales,   \
      const void *__restrict__ rowScale, int rowScaleKind, int rowScaleCount

#define CODES_OUT(T, Q)                                                                       \
  layer_norm_codes_extras(static_cast<unsigned char*>(codes), rows * D, padEnd, rowScales,   \
                          rowScale, rowScaleKind, rowScaleCount);                             \
  const NormCodes<T, Q> out{static_cast<unsigned char*>(codes),                              \
                            ScaleQuotient(loadScale(scale, scaleKind, 0))};

#define LAYER_NORM_QUANTIZE_WARP(NAME, T, Q, VPT, VEC)                                        \
  extern "C" __global__ void __launch_bounds__(128, LN_WARP_MIN_BLOCKS(T))                       \
      NAME(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,         \
           void* __restrict__ codes, i64 rows, int D, float eps, CODES_PARAMS) {              \
    CODES_OUT(T, Q)                                                                           \
    layer_norm_warp<T, VPT, VEC>(x, w, b, out, rows, D, eps);                                 \
  }

#define LAYER_NORM_QUANTIZE_WARP_I8(NAME, T, VPT, VEC) \
  LAYER_NORM_QUANTIZE_WARP(NAME, T, XI8, VPT, VEC)
#define LAYER_NORM_QUANTIZE_WARP_E4M3(NAME, T, VPT, VEC) \
  LAYER_NORM_QUANTIZE_WARP(NAME, T, XE4M3, VPT, VEC)

#define WARP_SCALAR(MACRO, PREFIX, T) \
  MACRO(PREFIX##_s1, T, 1, 1)         \
  MACRO(PREFIX##_s2, T, 2, 1)         \
  MACRO(PREFIX##_s4, T, 4, 1)         \
  MACRO(PREFIX##_s8, T, 8, 1)

#define WARP_VEC4(MACRO, PREFIX, T) \
  MACRO(PREFIX##_v4, T, 4, 4)       \
  MACRO(PREFIX##_v8, T, 8, 4)       \
  MACRO(PREFIX##_v16, T, 16, 4)     \
  MACRO(PREFIX##_v32, T, 32, 4)

#define WARP_VEC8(MACRO, PREFIX, T) \
  MACRO(PREFIX##_v8, T, 8, 8)       \
  MACRO(PREFIX##_v16, T, 16, 8)     \
  MACRO(PREFIX##_v32, T, 32, 8)

#define SOFTMAX_OTHER(NAME, T, VEC)                                                           \
  extern "C" __global__ void __launch_bounds__(512) NAME##_block_s(                           \
      const T* __restrict__ x, T* __restrict__ y, i64 rows, i64 L, int log, int cached) {     \
    softmax_block<T, 1>(x, y, rows, L, log != 0, cached != 0);                                \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(512) NAME##_block_v(                           \
      const T* __restrict__ x, T* __restrict__ y, i64 rows, i64 L, int log, int cached) {     \
    softmax_block<T, VEC>(x, y, rows, L, log != 0, cached != 0);                              \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(256) NAME##_cols(                              \
      const T* __restrict__ x, T* __restrict__ y, i64 outer, i64 L, i64 inner, int log) {     \
    softmax_cols<T>(x, y, outer, L, inner, log != 0);                                         \
  }

#define LAYER_NORM_BLOCK(NAME, T, VEC)                                                        \
  extern "C" __global__ void __launch_bounds__(512) NAME##_block_s(                           \
      const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,              \
      T* __restrict__ y, i64 rows, i64 D, float eps, int cached) {                            \
    layer_norm_block<T, 1>(x, w, b, NormValues<T>{y}, rows, D, eps, cached != 0);             \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(512) NAME##_block_v(                           \
      const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,              \
      T* __restrict__ y, i64 rows, i64 D, float eps, int cached) {                            \
    layer_norm_block<T, VEC>(x, w, b, NormValues<T>{y}, rows, D, eps, cached != 0);           \
  }

#define LAYER_NORM_QUANTIZE_BLOCK(NAME, T, Q, VEC)                                            \
  extern "C" __global__ void __launch_bounds__(512) NAME##_block_s(                           \
      const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,              \
      void* __restrict__ codes, i64 rows, i64 D, float eps, int cached, CODES_PARAMS) {       \
    CODES_OUT(T, Q)                                                                           \
    layer_norm_block<T, 1>(x, w, b, out, rows, D, eps, cached != 0);                          \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(512) NAME##_block_v(                           \
      const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,              \
      void* __restrict__ codes, i64 rows, i64 D, float eps, int cached, CODES_PARAMS) {       \
    CODES_OUT(T, Q)                                                                           \
    layer_norm_block<T, VEC>(x, w, b, out, rows, D, eps, cached != 0);                        \
  }

// The quantizing layer norms of one x dtype: the same variants as the layer norm's.
#define LAYER_NORM_QUANTIZE_KERNELS(SUFFIX, T, VECS)                                            \
  WARP_SCALAR(LAYER_NORM_QUANTIZE_WARP_I8, layer_norm_quantize_##SUFFIX##_i8_warp, T)           \
  VECS(LAYER_NORM_QUANTIZE_WARP_I8, layer_norm_quantize_##SUFFIX##_i8_warp, T)                  \
  WARP_SCALAR(LAYER_NORM_QUANTIZE_WARP_E4M3, layer_norm_quantize_##SUFFIX##_e4m3_warp, T)       \
  VECS(LAYER_NORM_QUANTIZE_WARP_E4M3, layer_norm_quantize_##SUFFIX##_e4m3_warp, T)              \
  LAYER_NORM_QUANTIZE_BLOCK(layer_norm_quantize_##SUFFIX##_i8, T, XI8, 16 / sizeof(T))          \
  LAYER_NORM_QUANTIZE_BLOCK(layer_norm_quantize_##SUFFIX##_e4m3, T, XE4M3, 16 / sizeof(T))

#define NN_KERNELS(SUFFIX, T, VECS)                             \
  WARP_SCALAR(SOFTMAX_WARP, softmax_##SUFFIX##_warp, T)         \
  VECS(SOFTMAX_WARP, softmax_##SUFFIX##_warp, T)                \
  WARP_SCALAR(LAYER_NORM_WARP, layer_norm_##SUFFIX##_warp, T)   \
  VECS(LAYER_NORM_WARP, layer_norm_##SUFFIX##_warp, T)          \
  SOFTMAX_OTHER(softmax_##SUFFIX, T, 16 / sizeof(T))            \
  LAYER_NORM_BLOCK(layer_norm_##SUFFIX, T, 16 / sizeof(T))      \
  LAYER_NORM_QUANTIZE_KERNELS(SUFFIX, T, VECS)

NN_KERNELS(f32, float, WARP_VEC4)
NN_KERNELS(f16, __half, WARP_VEC8)
NN_KERNELS(bf16, __nv_bfloat16, WARP_VEC8)
