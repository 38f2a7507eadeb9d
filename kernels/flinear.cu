// Fused float Linear layers made by the fusion pass (lib/graph/passes/qdq_fusion.ts; CPU
// reference in lib/backends/cpu/linear.ts; lowering in lib/backends/cuda/flinear.ts):
//
//   linear: y[m, n] = act(Σ_k x[m, k] · W[n, k] + b[n])
//
// x is [M, K], W [N, K] (output channels × input features), y [M, N], all row-major and of one
// float dtype X (float32, float16 or bfloat16). Sums are float32; bias and activation are
// applied in float32 and the result is rounded once to X.
//
// Kernels:
// - flinear_gemv_<x>_m<MT>: M ≤ MT ≤ 16 rows (decode-sized): streams W with 16-byte loads and
//   applies bias and activation. Launch shape from gemvShape (lib/backends/cuda/flinear.ts).
// - flinear_epilogue_<x>: y = act(acc + b) from float32 products (cuBLASLt's, or none when
//   K = 0); acc may be y itself (float32 outputs, in place).
//
// Activation codes: 0 none, 1 relu, 2 gelu (erf), 3 gelu (tanh).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef long long i64;

// ---------------------------------------------------------------------------------------------
// Element types: 16-byte chunks of E elements, values as float, one RNE rounding on store.

__device__ __forceinline__ float f16BitsToFloat(unsigned short b) {
  return __half2float(__ushort_as_half(b));
}

__device__ __forceinline__ float bf16BitsToFloat(unsigned short b) {
  return __uint_as_float(((unsigned)b) << 16);
}

__device__ __forceinline__ unsigned wordOf(const uint4& v, int j) {
  return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}

__device__ __forceinline__ void setWord(uint4& v, int j, unsigned w) {
  if (j == 0) v.x = w;
  else if (j == 1) v.y = w;
  else if (j == 2) v.z = w;
  else v.w = w;
}

struct F32 {
  static constexpr int kElems = 4;  // per 16-byte chunk
  static constexpr int kQuads = 1;  // float4 quads per chunk
  __device__ static float load(const void* p, i64 i) {
    return __ldg(static_cast<const float*>(p) + i);
  }
  // Four values at i (i a multiple of 4).
  __device__ static float4 load4(const void* p, i64 i) {
    return __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(p) + i));
  }
  // Element i's raw bits (as the chunk word that holds it).
  __device__ static unsigned bits(const void* p, i64 i) {
    return __ldg(static_cast<const unsigned*>(p) + i);
  }
  // Chunk with elements i..i+3 (i a multiple of 4), or only those below `end`, zero after.
  __device__ static uint4 chunk(const void* p, i64 i) {
    return __ldg(reinterpret_cast<const uint4*>(static_cast<const float*>(p) + i));
  }
  __device__ static uint4 chunkTail(const void* p, i64 i, int valid) {
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
    for (int e = 0; e < 4; e++) {
      if (e < valid) setWord(v, e, bits(p, i + e));
    }
    return v;
  }
  __device__ static void quad(const uint4& v, int j, float (&q)[4]) {
    q[0] = __uint_as_float(v.x), q[1] = __uint_as_float(v.y);
    q[2] = __uint_as_float(v.z), q[3] = __uint_as_float(v.w);
  }
  __device__ static void store(void* p, i64 i, float v) { static_cast<float*>(p)[i] = v; }
  __device__ static void store4(void* p, i64 i, const float (&v)[4]) {
    *reinterpret_cast<float4*>(static_cast<float*>(p) + i) = make_float4(v[0], v[1], v[2], v[3]);
  }
};

template <bool Bf16>
struct Half16 {
  static constexpr int kElems = 8;
  static constexpr int kQuads = 2;
  __device__ static float one(unsigned short b) {
    return Bf16 ? bf16BitsToFloat(b) : f16BitsToFloat(b);
  }
  __device__ static unsigned short fromFloat(float v) {
    return Bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v))
                : __half_as_ushort(__float2half_rn(v));
  }
  __device__ static float2 unpack(unsigned w) {
    return make_float2(one((unsigned short)(w & 0xffffu)), one((unsigned short)(w >> 16)));
  }
  __device__ static float load(const void* p, i64 i) {
    return one(__ldg(static_cast<const unsigned short*>(p) + i));
  }
  __device__ static float4 load4(const void* p, i64 i) {
    const uint2 w =
        __ldg(reinterpret_cast<const uint2*>(static_cast<const unsigned short*>(p) + i));
    const float2 a = unpack(w.x), b = unpack(w.y);
    return make_float4(a.x, a.y, b.x, b.y);
  }
  __device__ static uint4 chunk(const void* p, i64 i) {
    return __ldg(reinterpret_cast<const uint4*>(static_cast<const unsigned short*>(p) + i));
  }
  __device__ static uint4 chunkTail(const void* p, i64 i, int valid) {
    const unsigned short* q = static_cast<const unsigned short*>(p) + i;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
    for (int w = 0; w < 4; w++) {
      const unsigned lo = 2 * w < valid ? (unsigned)__ldg(q + 2 * w) : 0u;
      const unsigned hi = 2 * w + 1 < valid ? (unsigned)__ldg(q + 2 * w + 1) : 0u;
      setWord(v, w, lo | (hi << 16));
    }
    return v;
  }
  // Quad j: elements 4j..4j+3, words 2j and 2j + 1.
  __device__ static void quad(const uint4& v, int j, float (&q)[4]) {
    const float2 a = unpack(wordOf(v, 2 * j)), b = unpack(wordOf(v, 2 * j + 1));
    q[0] = a.x, q[1] = a.y, q[2] = b.x, q[3] = b.y;
  }
  __device__ static void store(void* p, i64 i, float v) {
    static_cast<unsigned short*>(p)[i] = fromFloat(v);
  }
  __device__ static void store4(void* p, i64 i, const float (&v)[4]) {
    *reinterpret_cast<uint2*>(static_cast<unsigned short*>(p) + i) =
        make_uint2(fromFloat(v[0]) | ((unsigned)fromFloat(v[1]) << 16),
                   fromFloat(v[2]) | ((unsigned)fromFloat(v[3]) << 16));
  }
};
typedef Half16<false> F16;
typedef Half16<true> BF16;

// ---------------------------------------------------------------------------------------------
// Activations (the formulas of kernels/elementwise.cu)

// 0.5 x (1 + erf(x / sqrt 2)), written with erfc so the negative tail keeps its precision.
__device__ __forceinline__ float gelu_erf(float x) {
  return 0.5f * x * erfcf(-x * 0.70710678118654752f);
}

// 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)) with u = sqrt(2/pi) (x + 0.044715 x^3).
__device__ __forceinline__ float gelu_tanh(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * (x * x * x));
  return x / (1.0f + expf(-2.0f * u));
}

__device__ __forceinline__ float activate(float x, int act) {
  switch (act) {
    case 1:
      return x > 0.0f ? x : (x != x ? x : 0.0f);
    case 2:
      return gelu_erf(x);
    case 3:
      return gelu_tanh(x);
    default:
      return x;
  }
}

// ---------------------------------------------------------------------------------------------
// GEMV for M ≤ MT ≤ 16 rows.
//
// A block of GEMV_WARPS warps covers GEMV_WARPS / splitK groups of GEMV_ROWS output channels;
// the splitK warps of a group split K (step s goes to warp s % splitK) and add their sums
// through shared memory at the end. Per step a warp covers STEP = 32·E elements of K: lane l
// reads the 16-byte chunk at l·E of each of its rows, and the next step's chunks are requested
// before this step's products. x is staged in shared memory as float32, KT columns at a time,
// permuted so that the float4 a lane reads for quad j of its chunk sits at slot
// (step · 8E + j · 32 + lane): a warp's reads are conflict-free.
//
// `vec` (K % E == 0): rows start on 16-byte boundaries and are read with 16-byte loads;
// otherwise chunks are gathered element by element (zeros past K). x rows use float4 / 8-byte
// loads when K % 4 == 0.

#define GEMV_WARPS 4
#define GEMV_ROWS 4

template <class X>
__device__ __forceinline__ void gemvLoad(uint4 (&v)[GEMV_ROWS], const void* __restrict__ w,
                                         int n0, int N, int K, int k, bool vec) {
#pragma unroll
  for (int r = 0; r < GEMV_ROWS; r++) {
    const i64 at = (i64)(n0 + r) * K + k;
    if (n0 + r >= N) {
      v[r] = make_uint4(0u, 0u, 0u, 0u);
    } else if (vec) {
      v[r] = X::chunk(w, at);
    } else {
      v[r] = X::chunkTail(w, at, min(X::kElems, K - k));
    }
  }
}

template <class X, int MT>
__device__ __forceinline__ void flinearGemv(void* __restrict__ out, const void* __restrict__ x,
                                            const void* __restrict__ w,
                                            const void* __restrict__ bias, int act, int M, int N,
                                            int K, int KT, int splitK) {
  constexpr int R = GEMV_ROWS;
  constexpr int E = X::kElems;
  constexpr int STEP = 32 * E;     // elements one warp covers per step
  constexpr int STEP4 = STEP / 4;  // float4 slots per step and row
  extern __shared__ float4 xs[];   // [MT][KT / 4], permuted within each step
  __shared__ float partial[GEMV_WARPS][R][MT];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kPart = warp % splitK;
  const int n0 = (blockIdx.x * (GEMV_WARPS / splitK) + warp / splitK) * R;
  const int KT4 = KT / 4;
  const bool vec = K % E == 0;
  const bool xVec = (K & 3) == 0;

  float acc[R][MT];
#pragma unroll
  for (int r = 0; r < R; r++) {
#pragma unroll
    for (int m = 0; m < MT; m++) acc[r][m] = 0.0f;
  }

  for (int t0 = 0; t0 < K; t0 += KT) {
    const int tk = min(KT, K - t0);
    const int steps = (tk + STEP - 1) / STEP;
    // This lane's first chunks, requested before staging x so the loads overlap it.
    int s = kPart;
    bool have = n0 < N && s < steps && s * STEP + lane * E < tk;
    uint4 cur[R];
    if (have) gemvLoad<X>(cur, w, n0, N, K, t0 + s * STEP + lane * E, vec);
    __syncthreads();  // the previous tile's x is no longer read
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
        }
        xs[m * KT4 + g] = v;
      }
    }
    __syncthreads();
    if (n0 >= N) continue;
    while (s < steps) {
      const int sn = s + splitK;
      const bool haveNext = sn < steps && sn * STEP + lane * E < tk;
      uint4 nxt[R];
      if (haveNext) gemvLoad<X>(nxt, w, n0, N, K, t0 + sn * STEP + lane * E, vec);
      if (have) {
        const float4* xv = xs + s * STEP4 + lane;
#pragma unroll
        for (int j = 0; j < X::kQuads; j++) {
          float wq[R][4];
#pragma unroll
          for (int r = 0; r < R; r++) X::quad(cur[r], j, wq[r]);
#pragma unroll
          for (int m = 0; m < MT; m++) {
            const float4 xq = xv[m * KT4 + j * 32];
#pragma unroll
            for (int r = 0; r < R; r++) {
              acc[r][m] = fmaf(wq[r][0], xq.x, acc[r][m]);
              acc[r][m] = fmaf(wq[r][1], xq.y, acc[r][m]);
              acc[r][m] = fmaf(wq[r][2], xq.z, acc[r][m]);
              acc[r][m] = fmaf(wq[r][3], xq.w, acc[r][m]);
            }
          }
        }
      }
#pragma unroll
      for (int r = 0; r < R; r++) cur[r] = nxt[r];
      have = haveNext;
      s = sn;
    }
  }

  // Sum over the lanes (every lane ends with the totals), then over the K parts.
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
      X::store(out, (i64)m * N + n, activate(v + b, act));
    }
  }
}

// Register budget: up to 128 per thread for a few rows (several blocks per SM), 255 for 8+.
#define GEMV_MIN_BLOCKS(MT) ((MT) <= 4 ? 4 : 2)

#define GEMV_KERNEL(X_NAME, X, MT)                                                            \
  extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32, GEMV_MIN_BLOCKS(MT))         \
      flinear_gemv_##X_NAME##_m##MT(void* __restrict__ out, const void* __restrict__ x,      \
                                    const void* __restrict__ w,                             \
                                    const void* __restrict__ bias, int act, int M, int N,   \
                                    int K, int KT, int splitK) {                            \
    flinearGemv<X, MT>(out, x, w, bias, act, M, N, K, KT, splitK);                           \
  }

#define GEMV_KERNELS(X_NAME, X) \
  GEMV_KERNEL(X_NAME, X, 1)     \
  GEMV_KERNEL(X_NAME, X, 2)     \
  GEMV_KERNEL(X_NAME, X, 4)     \
  GEMV_KERNEL(X_NAME, X, 8)     \
  GEMV_KERNEL(X_NAME, X, 16)

GEMV_KERNELS(f32, F32)
GEMV_KERNELS(f16, F16)
GEMV_KERNELS(bf16, BF16)

// ---------------------------------------------------------------------------------------------
// Epilogue: y[m, n] = act(acc[m, n] + b[n]) rounded once to X, from float32 products `acc`
// ([M, N]; null: all zero, K = 0). Grid-stride over the elements, four at a time when
// N % 4 == 0. `acc` may alias `out` (float32 outputs, in place): no __restrict__ on them.

template <class X>
__device__ __forceinline__ void flinearEpilogue(void* out, const float* acc, i64 M, i64 N,
                                                const void* __restrict__ bias, int act) {
  const i64 total = M * N;
  const i64 first = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const i64 threads = (i64)gridDim.x * blockDim.x;
  if ((N & 3) == 0) {
    for (i64 q = first; q < total / 4; q += threads) {
      const i64 e = 4 * q;
      const i64 n = e % N;
      float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (acc) {
        const float4 a = *reinterpret_cast<const float4*>(acc + e);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
      }
#pragma unroll
      for (int j = 0; j < 4; j++) {
        v[j] = activate(v[j] + (bias ? X::load(bias, n + j) : 0.0f), act);
      }
      X::store4(out, e, v);
    }
  } else {
    for (i64 e = first; e < total; e += threads) {
      const float a = acc ? acc[e] : 0.0f;
      X::store(out, e, activate(a + (bias ? X::load(bias, e % N) : 0.0f), act));
    }
  }
}

#define EPILOGUE_KERNEL(X_NAME, X)                                                           \
  extern "C" __global__ void __launch_bounds__(256) flinear_epilogue_##X_NAME(               \
      void* out, const float* acc, i64 M, i64 N, const void* __restrict__ bias, int act) {   \
    flinearEpilogue<X>(out, acc, M, N, bias, act);                                           \
  }

EPILOGUE_KERNEL(f32, F32)
EPILOGUE_KERNEL(f16, F16)
EPILOGUE_KERNEL(bf16, BF16)
