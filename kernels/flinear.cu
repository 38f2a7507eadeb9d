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
//   applies bias and activation, and a folded residual when `residual` is not null
//   (y = round(round(act(...)) + residual), the unfused add: withResidual in gemv.cuh). Launch
//   shape from gemvShape (lib/backends/cuda/flinear.ts).
// - flinear_gemv_<x>_m<MT>_norm: the same for a linear whose x is the input of a layer norm
//   folded into it (lib/graph/passes/qdq_fusion.ts): it normalizes x itself while staging it,
//   exactly as the layer-norm kernel of the unfolded graph would (layerNormStats, gemv.cuh).
// - flinear_epilogue_<x>: y = act(acc + b) from float32 products (cuBLASLt's, or none when
//   K = 0); acc may be y itself (float32 outputs, in place).
// - flinear_edges_b<bytes>: copies into y the columns of each row that the row-class cuBLASLt
//   products leave out when N is not a whole number of 16-byte vectors (edgeColumns below).
//
// Activation codes: 0 none, 1 relu, 2 gelu (erf), 3 gelu (tanh).

#include "common.cuh"
#include "gemv.cuh"

// ---------------------------------------------------------------------------------------------
// Element types: 16-byte chunks of E elements, values as float, one RNE rounding on store.

// load, load4, store, store4 (and for 16-bit types one, fromFloat, unpack): common.cuh.

struct F32 : F32Base {
  static constexpr int kElems = 4;  // per 16-byte chunk
  static constexpr int kQuads = 1;  // float4 quads per chunk
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
};

template <bool Bf16>
struct Half16 : Half16Base<Bf16> {
  using Base = Half16Base<Bf16>;
  static constexpr int kElems = 8;
  static constexpr int kQuads = 2;
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
    const float2 a = Base::unpack(wordOf(v, 2 * j)), b = Base::unpack(wordOf(v, 2 * j + 1));
    q[0] = a.x, q[1] = a.y, q[2] = b.x, q[3] = b.y;
  }
  __device__ static void store4(void* p, i64 i, const float (&v)[4]) {
    *reinterpret_cast<uint2*>(static_cast<unsigned short*>(p) + i) =
        make_uint2(Base::fromFloat(v[0]) | ((unsigned)Base::fromFloat(v[1]) << 16),
                   Base::fromFloat(v[2]) | ((unsigned)Base::fromFloat(v[3]) << 16));
  }
};
typedef Half16<false> F16;
typedef Half16<true> BF16;

// Activations: activate() in common.cuh (the gelu formulas of the elementwise kernels).

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
// loads when K % 4 == 0. Staging, products and the final sums: gemv.cuh.

template <class X>
__device__ __forceinline__ void gemvLoad(uint4 (&v)[GEMV_ROWS], const void* __restrict__ w,
                                         int n0, int N, int K, int k, bool vec) {
#pragma unroll
  for (int r = 0; r < GEMV_ROWS; r++) {
    const i64 at = (i64)(n0 + r) * K + k;
    if (n0 + r >= N) {
      v[r] = make_uint4(0u, 0u, 0u, 0u);
    } else if (vec) {
      v[r] = ldStreamed(static_cast<const unsigned char*>(w) + at * (16 / X::kElems));
    } else {
      v[r] = X::chunkTail(w, at, min(X::kElems, K - k));
    }
  }
}

// kNorm: x is the input of a folded layer norm (weight lnWeight, bias lnBias, either null; eps;
// lnThreads: the threads its layer-norm kernel gives a row, see layerNormStats in gemv.cuh).
// Every block computes the rows' statistics while its first weight chunks load, and stages x
// normalized and rounded to X, the layer-norm kernel's output bit for bit. Needs K % E == 0
// (the kernel's vector variant).
template <class X, int MT, bool kNorm>
__device__ __forceinline__ void flinearGemv(void* __restrict__ out, const void* __restrict__ x,
                                            const void* __restrict__ w,
                                            const void* __restrict__ bias, int act, int M, int N,
                                            int K, int KT, int splitK,
                                            const void* __restrict__ residual,
                                            const void* __restrict__ lnWeight = nullptr,
                                            const void* __restrict__ lnBias = nullptr,
                                            float eps = 0.0f, int lnThreads = 0) {
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
    if constexpr (kNorm) {
      __shared__ float normRed[MT * 16];  // warp sums: M rows × lnThreads / 32 (≤ 512 threads)
      __shared__ float normMean[MT], normInv[MT];
      if (t0 == 0) {
        // The first tile's norm weight and bias are read when staging it.
        const i64 bytes = (i64)tk * (16 / E);
        prefetchL1(lnWeight, bytes);
        prefetchL1(lnBias, bytes);
        layerNormStats<E>(M, K, lnThreads, eps, normRed, normMean, normInv,
                          [&](int, int m, int u, float (&v)[E]) {
                            const uint4 c = X::chunk(x, (i64)m * K + (i64)u * E);
#pragma unroll
                            for (int j = 0; j < X::kQuads; j++) {
                              float q[4];
                              X::quad(c, j, q);
                              v[4 * j] = q[0], v[4 * j + 1] = q[1];
                              v[4 * j + 2] = q[2], v[4 * j + 3] = q[3];
                            }
                          });
      }
      // The layer norm's values, rounded to X as its kernel stores them.
      gemvStageX<X, MT, E>(xs, x, M, K, t0, tk, steps, KT4, xVec,
                           [&](int m, i64 k, float4& v) {
                             float t[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                             for (int j = 0; j < 4; j++) {
                               const float y = layerNormAffine(
                                   t[j], normMean[m], normInv[m], lnWeight != nullptr,
                                   lnWeight ? X::load(lnWeight, k + j) : 0.0f, lnBias != nullptr,
                                   lnBias ? X::load(lnBias, k + j) : 0.0f);
                               t[j] = roundedAs(static_cast<const X*>(nullptr), y);
                             }
                             v = make_float4(t[0], t[1], t[2], t[3]);
                           });
    } else {
      gemvStageX<X, MT, E>(xs, x, M, K, t0, tk, steps, KT4, xVec);
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
          gemvFma<MT>(acc, wq, xv, KT4, j);
        }
      }
#pragma unroll
      for (int r = 0; r < R; r++) cur[r] = nxt[r];
      have = haveNext;
      s = sn;
    }
  }

  gemvFinish<X, MT>(acc, partial, out, bias, act, M, N, n0, warp, lane, kPart, splitK,
                    residual);
}

#define GEMV_KERNEL(X_NAME, X, MT)                                                            \
  extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32, GEMV_MIN_BLOCKS(MT))         \
      flinear_gemv_##X_NAME##_m##MT(void* __restrict__ out, const void* __restrict__ x,      \
                                    const void* __restrict__ w,                             \
                                    const void* __restrict__ bias, int act, int M, int N,   \
                                    int K, int KT, int splitK,                              \
                                    const void* __restrict__ residual) {                    \
    flinearGemv<X, MT, false>(out, x, w, bias, act, M, N, K, KT, splitK, residual);          \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32, GEMV_MIN_BLOCKS(MT))         \
      flinear_gemv_##X_NAME##_m##MT##_norm(                                                   \
          void* __restrict__ out, const void* __restrict__ x, const void* __restrict__ w,     \
          const void* __restrict__ bias, int act, int M, int N, int K, int KT, int splitK,    \
          const void* __restrict__ residual, const void* __restrict__ lnWeight,              \
          const void* __restrict__ lnBias, float eps, int lnThreads) {                        \
    flinearGemv<X, MT, true>(out, x, w, bias, act, M, N, K, KT, splitK, residual, lnWeight,  \
                             lnBias, eps, lnThreads);                                         \
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

// ---------------------------------------------------------------------------------------------
// Edge columns. Where a row of N elements is not a whole number of 16-byte vectors, the lowering
// (rowClassProducts in lib/backends/cuda/flinear.ts) writes columns [c, c + W) of row r straight
// into y with cuBLASLt, c = (r mod P) · D, and columns [0, E) and [N − E, N) of every row into
// the scratch matrices `left` and `right` ([M, E] each). This kernel copies the rest of each row
// from them: [0, c) from left and [c + W, N) from right, N − W elements a row.

template <class T>
__device__ __forceinline__ void edgeColumns(T* __restrict__ y, const T* __restrict__ left,
                                            const T* __restrict__ right, i64 M, i64 N, i64 E,
                                            int P, i64 D, i64 W) {
  const i64 edges = N - W;
  const i64 total = M * edges;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (i64)gridDim.x * blockDim.x) {
    const i64 r = i / edges, e = i % edges;
    const i64 c = (r % P) * D;
    // Columns e < c lie left of the product's; the others are c + W + (e − c) = W + e.
    y[r * N + (e < c ? e : W + e)] = e < c ? left[r * E + e] : right[r * E + W + e - (N - E)];
  }
}

#define EDGES_KERNEL(NAME, T)                                                                  \
  extern "C" __global__ void __launch_bounds__(256) flinear_edges_##NAME(                      \
      T* __restrict__ y, const T* __restrict__ left, const T* __restrict__ right, i64 M, i64 N, \
      i64 E, int P, i64 D, i64 W) {                                                            \
    edgeColumns<T>(y, left, right, M, N, E, P, D, W);                                          \
  }

EDGES_KERNEL(b2, unsigned short)
EDGES_KERNEL(b4, unsigned)
