// Fused quantized GEMV of `qlinear` for a few rows of x (lowering: lib/backends/cuda/qgemv.ts;
// the op is made by lib/graph/passes/qdq_fusion.ts, its CPU reference is in
// lib/backends/cpu/linear.ts):
//
//   y[m, n] = act(Σ_k qx[m, k] · qw[n, k] · sxd · swd[n or 0] + b[n]),   M ≤ 8,
//   qx[m, k] = the int8 / e4m3 code of x[m, k] / sxq (per-tensor input quantize),
//
// in ONE launch: the unfused path quantizes x, multiplies on the tensor cores and runs an
// epilogue kernel (three launches and two round trips through memory). At decode sizes the
// product is a stream of the weight codes, so the kernel is built to keep many 16-byte weight
// loads in flight from its first instructions.
//
// Two kernel families compute it. The mma kernels (qgemv_mma_*, the lowering's default where
// they run: int8 everywhere, e4m3 with the sm_90a PTX) multiply on warp-level tensor-core MMAs;
// they are described in their own section below. The ring kernels described here stay for
// e4m3 elsewhere and as the comparison.
//
// Kernels: qgemv_i8 and qgemv_e4m3 (the code type), and qgemv_i8_norm / qgemv_e4m3_norm for a
// qlinear whose input is a layer norm's output (folded in by lib/graph/passes/qdq_fusion.ts):
// x is then the layer norm's input, and each block normalizes it (row mean and population
// variance in float32, two passes, (x − mean) / sqrt(var + eps) · lnWeight + lnBias rounded to
// x's dtype) before quantizing, with the operations of the layer-norm kernel the unfolded graph
// would run, in its order (`lnThreads`: the threads that kernel gives a row), so the codes are
// the unfolded graph's; lnWeight / lnBias (x's dtype) may be null, and eps is the layer norm's.
// The float activation never goes to memory, and the layer norm's launch is gone. x's dtype
// (xKind) and the output's (outKind: y and the bias) are runtime arguments, numbered as
// loadScale numbers float kinds (0 float32, 1 float16, 2 bfloat16); so are the scales' kinds
// and the activation (0 none, 1 relu, 2 gelu erf, 3 gelu tanh).
//
// `residual` (every kernel's last argument; null: none): a residual add folded into the qlinear
// (lib/graph/passes/residual_fusion.ts), [M, N] of the output's dtype: y = round(round(t) +
// residual), the unfused graph's add after the qlinear's rounding (withResidual, gemv.cuh).
//
// Layout. W: [N, K] codes row-major (int8 or e4m3 bytes, rows on 16-byte boundaries: K % 16
// == 0); x: [M, K]; y: [M, N]; bias: [N]. A group of L lanes (L = 2^logL, 4 to 32) computes
// one output channel n; a warp holds 32 / L channels, a block blockDim.x / L (up to 1024
// threads, at most 64 registers each). Lane i of a group streams chunks i, i + L, i + 2L, ...
// of its row (chunk c is bytes 16c..16c+15) through a ring of 8 registers:
//
//   1. the lane issues its first 8 chunk loads (L1-bypassing, ldWeightChunk), then the block
//      prefetches x's lines and each channel's scale and bias into L1;
//   2. the block quantizes all of x into shared memory (int8: M·K code bytes, row m at byte
//      m·K; e4m3: the codes' float32 values in four planes a row, see QE4M3) with the rule of
//      the unfused path (x / sxq with IEEE division, then round half to even and saturate for
//      int8, RNE satfinite for e4m3: XI8 and floatsToE4m3x2 of qlinear.cuh) while the weight
//      loads fly;
//   3. after a barrier each lane multiplies its chunks by x's codes of the same features for
//      every row m < M; once slot j is multiplied, the chunk 8L further along the row is
//      loaded into it (rows of more than 8L chunks);
//   4. the L lanes' sums meet by xor-shuffles; lane i then finishes rows m ≡ i (mod L) with the
//      epilogue of kernels/linear.cu: t = acc · ((double)sxd · (double)swd) + b in double,
//      none / relu rounded once from t to the output dtype (equal to the CPU reference),
//      gelu applied in float32 to t rounded to float.
//
// int8 products: __dp4a into one int32 sum per row of x (exact). e4m3: the codes' values are
// exact in float32 and so are their products; sums are float32 (FMAs in feature order per
// lane, then the shuffle tree).
//
// Every block quantizes all of x (M·K divisions): the lowering makes blocks as large as still
// spreads the weight over the SMs, so that this is done as few times as possible.
//
// Rows past N read row N - 1 (never stored), so the weight loads need no row predicate. The
// lowering checks M ≤ 8, K % 16 == 0 and the shared memory (int8 M·K ≤ 48 KiB; e4m3 4·M·K ≤
// 192 KiB, opted into).

#include "common.cuh"
#include "fp8.cuh"
#include "gemv.cuh"
#include "qlinear.cuh"

#define QGEMV_MAX_ROWS 8     // rows of x (the accumulators are unrolled over this many)
#define QGEMV_RING 8         // 16-byte weight chunks a lane keeps in flight
#define QGEMV_MAX_THREADS 1024

// ---------------------------------------------------------------------------------------------
// Codes. Each type has its layout of x's codes in shared memory (row m in bytes m·K..m·K+K-1):
// - store8(xs, c, q, rowSteps, K): the codes of the eight quotients q of x elements 8c..8c+7
//   (row m = c / rowSteps, rowSteps = K / 8);
// - chunkAt(c): where chunk c of row 0 starts, in the layout's terms (passed to dot);
// - dot(w, xc, K, M, acc): acc[m] += Σ over the 16 features of weight chunk w times x's codes
//   of the same features in row m, for m < M (xc = xs + chunkAt(c)).
// The layouts make a warp's shared-memory reads conflict-free: the lanes of a group read
// consecutive chunks (groups of one warp read the same ones).

// int8: x's codes in order; a lane reads a row's 16 codes as one 16-byte word (8 lanes of a
// quarter warp read 128 consecutive bytes) and multiplies them with __dp4a.
struct QI8 {
  typedef int Acc;
  static constexpr int kStep = 8;  // elements quantizeX codes per step (store8)
  __device__ static void store8(unsigned char* xs, int c, const float (&q)[8], int rowSteps,
                                int K) {
    XI8::store8(xs, c, q);
  }
  __device__ static int chunkAt(int c) { return 16 * c; }
  __device__ static void dot(const uint4& w, const unsigned char* xc, int K, int M,
                             int (&acc)[QGEMV_MAX_ROWS]) {
#pragma unroll
    for (int m = 0; m < QGEMV_MAX_ROWS; m++) {
      if (m < M) {
        const uint4 v = *reinterpret_cast<const uint4*>(xc + m * K);
        int a = acc[m];
        a = __dp4a((int)w.x, (int)v.x, a);
        a = __dp4a((int)w.y, (int)v.y, a);
        a = __dp4a((int)w.z, (int)v.z, a);
        a = __dp4a((int)w.w, (int)v.w, a);
        acc[m] = a;
      }
    }
  }
};

// e4m3 weight code b -> its exact float32 value with integer and float32 arithmetic (the
// conversion instructions run at a fraction of the FMA rate, and the inner loop decodes every
// weight code): the 7 magnitude bits placed at float bit 20 are the value / 2^120 (for
// subnormal codes a float32 subnormal), so one exact multiply by 2^120 scales it back; the
// sign bit is moved to bit 31. 0x7f / 0xff (NaN) give NaN.
__device__ __forceinline__ float e4m3Value(unsigned b) {
  const unsigned mag = b & 0x7fu;
  const float v = __uint_as_float(mag << 20) * __uint_as_float(0x7b800000u);  // · 2^120
  const float sv = __uint_as_float(__float_as_uint(v) | ((b & 0x80u) << 24));
  return mag == 0x7fu ? __uint_as_float(0x7fffffffu) : sv;
}

// Two e4m3fn bytes (low byte first) -> two exact floats: the conversion instruction from sm_89
// on, e4m3Value before it (cuda_fp8's emulation needs more registers than the ring leaves).
__device__ __forceinline__ float2 e4m3x2Values(unsigned w) {
#if __CUDA_ARCH__ >= 890
  return e4m3x2ToFloats(w);
#else
  return make_float2(e4m3Value(w & 0xffu), e4m3Value((w >> 8) & 0xffu));
#endif
}

// e4m3: x is stored as the float32 values of its codes (4 bytes an element, decoded once per
// block instead of once per output channel), each row as 4 planes of K / 4 floats: floats
// 4j..4j+3 of chunk c at plane j, float 4c (so that the lanes' 16-byte reads of plane j are
// consecutive). Products of two e4m3 values are exact in float32.
struct QE4M3 {
  typedef float Acc;
  static constexpr int kStep = 8;
  __device__ static void store8(unsigned char* xs, int c, const float (&q)[8], int rowSteps,
                                int K) {
    const int m = c / rowSteps, step = c - m * rowSteps;  // elements 8·step.. of row m
    const int chunk = step >> 1, word = 2 * (step & 1);
    float* plane = reinterpret_cast<float*>(xs) + (i64)m * K + word * (K >> 2) + 4 * chunk;
    float v[8];
#pragma unroll
    for (int i = 0; i < 8; i += 2) {
      const float2 f = e4m3x2Values(floatsToE4m3x2(q[i], q[i + 1]));
      v[i] = f.x;
      v[i + 1] = f.y;
    }
    *reinterpret_cast<float4*>(plane) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(plane + (K >> 2)) = make_float4(v[4], v[5], v[6], v[7]);
  }
  __device__ static int chunkAt(int c) { return 16 * c; }  // bytes: float 4c of a plane
  __device__ static void dot(const uint4& w, const unsigned char* xc, int K, int M,
                             float (&acc)[QGEMV_MAX_ROWS]) {
    const float* xf = reinterpret_cast<const float*>(xc);
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const unsigned ww = wordOf(w, j);
      const float w0 = e4m3Value(ww & 0xffu), w1 = e4m3Value((ww >> 8) & 0xffu);
      const float w2 = e4m3Value((ww >> 16) & 0xffu), w3 = e4m3Value(ww >> 24);
#pragma unroll
      for (int m = 0; m < QGEMV_MAX_ROWS; m++) {
        if (m < M) {
          const float4 xv = *reinterpret_cast<const float4*>(xf + (i64)m * K + j * (K >> 2));
          float s = acc[m];
          s = fmaf(w0, xv.x, s);
          s = fmaf(w1, xv.y, s);
          s = fmaf(w2, xv.z, s);
          s = fmaf(w3, xv.w, s);
          acc[m] = s;
        }
      }
    }
  }
};

// The sum as the epilogue's double (exact for int32 and float32).
__device__ __forceinline__ double accToDouble(int v) { return (double)v; }
__device__ __forceinline__ double accToDouble(float v) { return (double)v; }

// Float kinds of x and the output, as loadScale numbers them: 0 float32, 1 float16,
// 2 bfloat16. They are runtime arguments (uniform branches around the x quantize loop and the
// stores) so that the module holds two kernels rather than eighteen.

// The layer norm whose output this qlinear reads, folded in (lib/graph/passes/qdq_fusion.ts):
// per row of x its mean and 1 / sqrt(var + eps), and the optional weight and bias (x's dtype).
struct Norm {
  const float* mean;  // shared memory, M values
  const float* inv;
  const void* weight;
  const void* bias;
};

// Codes of x (element type X) into shared memory in Q's layout, Q::kStep (8 or 4) elements per
// step (Q::store8 or Q::store4): x / s as the IEEE division rounds it (ScaleQuotient,
// qlinear.cuh), then Q's rounding. With a norm, x is
// first normalized with the layer-norm kernel's operations (layerNormAffine: (x − mean) · inv ·
// weight + bias in float32) and rounded to X, the layer norm's output dtype. pitch is passed on
// to Q's store (the ring kernels' layouts take K, the mma kernels' their padded row pitch).
template <class X, class Q, bool kNorm>
__device__ __forceinline__ void quantizeX(unsigned char* xs, const void* __restrict__ x,
                                          float s, int steps, int rowSteps, int pitch,
                                          const Norm& norm) {
  constexpr int W = Q::kStep;
  const ScaleQuotient quotient(s);
#pragma unroll 1
  for (int c = threadIdx.x; c < steps; c += blockDim.x) {
    float v[W];
    if constexpr (W == 8) {
      X::load8(x, c, v);
    } else {
      const float4 q = X::load4(x, (i64)c * 4);
      v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    }
    if constexpr (kNorm) {
      const int m = c / rowSteps;
      const i64 k0 = (i64)(c - m * rowSteps) * W;  // feature of v[0]
      const float mean = norm.mean[m], inv = norm.inv[m];
      // Weight and bias one value at a time (L1 hits after the first block's): few registers
      // while the weight ring holds its 32. One FMA whatever the affine form: a missing weight
      // is 1 and a missing bias −0, which leave t · w, t + b and t exactly as the layer-norm
      // kernel rounds them (layerNormAffine), signed zeros included.
#pragma unroll
      for (int e = 0; e < W; e++) {
        const float t = __fmul_rn(__fsub_rn(v[e], mean), inv);
        const float w = norm.weight ? X::load(norm.weight, k0 + e) : 1.0f;
        const float b = norm.bias ? X::load(norm.bias, k0 + e) : -0.0f;
        v[e] = __fmaf_rn(t, w, b);
      }
#pragma unroll
      for (int h = 0; h < W; h += 4) {
        float quad[4] = {v[h], v[h + 1], v[h + 2], v[h + 3]};
        X::round4(quad);
#pragma unroll
        for (int e = 0; e < 4; e++) v[h + e] = quad[e];
      }
    }
    quotient.divide(v);
    if constexpr (W == 8) {
      Q::store8(xs, c, v, rowSteps, pitch);
    } else {
      Q::store4(xs, c, v, rowSteps, pitch);
    }
  }
}

// Values of x's 16-byte vectors: the layer-norm kernels' vector width.
__device__ constexpr int vectorValues(const F32Base*) { return 4; }
template <bool Bf16>
__device__ constexpr int vectorValues(const Half16Base<Bf16>*) { return 8; }

// Shared memory of a folded norm's statistics (one instance a kernel, whatever x's dtype): each
// warp's own copy when every warp computes them, or the block's.
union NormScratch {
  struct {
    float mean[QGEMV_MAX_THREADS / 32][QGEMV_MAX_ROWS];
    float inv[QGEMV_MAX_THREADS / 32][QGEMV_MAX_ROWS];
  } warps;
  struct {
    float mean[QGEMV_MAX_ROWS], inv[QGEMV_MAX_ROWS];
    float red[QGEMV_MAX_ROWS * 16];  // warp sums: M rows × lnThreads / 32 (lnThreads ≤ 512)
  } block;
};

__device__ __forceinline__ NormScratch& normScratch() {
  __shared__ NormScratch scratch;
  return scratch;
}

// All M rows of x (K features each) quantized into xs (see quantizeX; pitch: Q's layout
// argument), normalized first when kNorm: each row's mean and 1 / sqrt(var + eps) summed as the
// layer-norm kernel that gives a row lnThreads threads sums them (layerNormStats, gemv.cuh), over
// its 16-byte vectors, so the codes equal those of the unfolded layer norm and quantize.
template <class X, class Q, bool kNorm>
__device__ __forceinline__ void quantizeRows(unsigned char* xs, const void* __restrict__ x,
                                             float s, int M, int K, int pitch,
                                             const void* lnWeight, const void* lnBias,
                                             float eps, int lnThreads) {
  const int steps = M * K / Q::kStep, rowSteps = K / Q::kStep;
  if constexpr (kNorm) {
    constexpr int VEC = vectorValues(static_cast<const X*>(nullptr));
    // Vector u of row m as floats.
    auto read = [&](int m, int u, float (&v)[VEC]) {
      const i64 at = (i64)m * K + (i64)u * VEC;
      if constexpr (VEC == 4) {
        const float4 q = X::load4(x, at);
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
      } else {
        X::load8(x, at >> 3, v);
      }
    };
    if (lnThreads == 32) {
      // A warp per row in the layer-norm kernel: every warp computes each row's statistics
      // itself, with layerNormStats' operations for one warp a row (x's lines are in L1), and
      // keeps them in its own slots. No block barrier.
      auto& own = normScratch().warps;
      const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
      const int vecs = K / VEC;
#pragma unroll 1
      for (int m = 0; m < M; m++) {
        // The row's sum, then its squared deviations (layerNormStats' two passes).
        float mean = 0.0f, var = 0.0f;
#pragma unroll
        for (int pass = 0; pass < 2; pass++) {
          float sum = 0.0f;
#pragma unroll 3
          for (int u = lane; u < vecs; u += 32) {
            float v[VEC];
            read(m, u, v);
            sum = layerNormPassAdd<VEC>(pass, sum, v, mean);
          }
          const float t = __fdiv_rn(__fadd_rn(0.0f, warpSum(sum)), (float)K);
          if (pass == 0) {
            mean = t;
          } else {
            var = t;
          }
        }
        if (lane == 0) {
          own.mean[warp][m] = mean;
          own.inv[warp][m] = __frcp_rn(__fsqrt_rn(__fadd_rn(var, eps)));
        }
      }
      __syncwarp();
      quantizeX<X, Q, true>(xs, x, s, steps, rowSteps, pitch,
                            Norm{own.mean[warp], own.inv[warp], lnWeight, lnBias});
      return;
    }
    // Several warps a row: the block shares the work (layerNormStats, one vector at a time: the
    // weight ring holds most registers).
    auto& shared = normScratch().block;
    layerNormStats<VEC, 1>(M, K, lnThreads, eps, shared.red, shared.mean, shared.inv,
                           [&](int, int m, int u, float (&v)[VEC]) { read(m, u, v); });
    quantizeX<X, Q, true>(xs, x, s, steps, rowSteps, pitch,
                          Norm{shared.mean, shared.inv, lnWeight, lnBias});
  } else {
    quantizeX<X, Q, false>(xs, x, s, steps, rowSteps, pitch, Norm{});
  }
}

// y[at] from the epilogue's double t: none / relu rounded once from t (as the CPU reference
// does), gelu in float32 from t rounded to float; with a residual, that value plus
// residual[at] (withResidual).
template <class Out>
__device__ __forceinline__ void storeOutput(void* out, i64 at, double t, int act,
                                            const void* __restrict__ residual) {
  if (act >= 2) {
    const float v = activate(__double2float_rn(t), act);
    Out::store(out, at, residual ? withResidual<Out>(v, residual, at) : v);
  } else {
    const double v = act == 1 && t <= 0.0 ? 0.0 : t;
    if (residual) {
      Out::store(out, at, withResidual<Out>(v, residual, at));
    } else {
      Out::storeDouble(out, at, v);
    }
  }
}

// storeOutput for the output kind outKind (0 float32, 1 float16, 2 bfloat16).
__device__ __forceinline__ void storeOutputOf(int outKind, void* out, i64 at, double t, int act,
                                              const void* __restrict__ residual) {
  if (outKind == 0) {
    storeOutput<F32>(out, at, t, act, residual);
  } else if (outKind == 1) {
    storeOutput<F16>(out, at, t, act, residual);
  } else {
    storeOutput<BF16>(out, at, t, act, residual);
  }
}

// ---------------------------------------------------------------------------------------------
// The kernel body (Q: QI8 or QE4M3; kNorm: a layer norm folded in, its own kernels so that the
// plain ones keep every register for the weight ring).

template <class Q, bool kNorm>
__device__ __forceinline__ void qgemv(void* __restrict__ out, const void* __restrict__ x,
                                      int xKind, const void* __restrict__ sxq, int sxqKind,
                                      const void* __restrict__ sxd, int sxdKind,
                                      const unsigned char* __restrict__ wq,
                                      const void* __restrict__ swd, int swdKind,
                                      int swdPerChannel, const void* __restrict__ bias,
                                      int outKind, int act, int M, int N, int K, int logL,
                                      const void* __restrict__ lnWeight,
                                      const void* __restrict__ lnBias, float eps, int lnThreads,
                                      const void* __restrict__ residual) {
  typedef typename Q::Acc Acc;
  extern __shared__ uint4 xsChunks[];  // [M][K / 16] chunks of x's codes
  unsigned char* xs = reinterpret_cast<unsigned char*>(xsChunks);
  const int L = 1 << logL;
  const int lig = threadIdx.x & (L - 1);  // lane in the group
  const i64 n = (i64)blockIdx.x * (blockDim.x >> logL) + (threadIdx.x >> logL);
  const i64 row = n < N ? n : N - 1;
  const int chunks = K >> 4;  // per row
  const unsigned char* wRow = wq + row * K;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);

  // 1. The first ring of weight chunks.
  uint4 w[QGEMV_RING];
#pragma unroll
  for (int j = 0; j < QGEMV_RING; j++) {
    const int c = lig + j * L;
    w[j] = c < chunks ? ldWeightChunk(wRow + c * 16) : zero;
  }
  // x's lines into L1 (the quantize loop then waits on L1, not on a round trip to L2 per
  // step), and the epilogue's scale and bias: they are loaded after the products, when the
  // ring no longer takes the registers.
  const int xBytes = xKind == 0 ? 4 : 2;
  const int xLines = (M * K * xBytes + 127) >> 7;
  for (int l = threadIdx.x; l < xLines; l += blockDim.x) {
    prefetchL1(static_cast<const char*>(x) + l * 128);
  }
  const i64 swdAt = swdPerChannel ? row : 0;
  prefetchL1(sxd);
  prefetchL1(static_cast<const char*>(swd) + swdAt * (swdKind == 0 ? 4 : 2));
  if (bias) prefetchL1(static_cast<const char*>(bias) + row * (outKind == 0 ? 4 : 2));

  // 2. x's codes into shared memory (M·K is a multiple of 16), x normalized first when a
  // layer norm is folded in.
  const float s = loadScale(sxq, sxqKind, 0);
  if (xKind == 0) {
    quantizeRows<F32, Q, kNorm>(xs, x, s, M, K, K, lnWeight, lnBias, eps, lnThreads);
  } else if (xKind == 1) {
    quantizeRows<F16, Q, kNorm>(xs, x, s, M, K, K, lnWeight, lnBias, eps, lnThreads);
  } else {
    quantizeRows<BF16, Q, kNorm>(xs, x, s, M, K, K, lnWeight, lnBias, eps, lnThreads);
  }
  __syncthreads();

  // 3. Products; slot j holds chunk lig + (8r + j)·L in round r, and once multiplied, the
  // chunk of round r + 1.
  Acc acc[QGEMV_MAX_ROWS];
#pragma unroll
  for (int m = 0; m < QGEMV_MAX_ROWS; m++) acc[m] = 0;
  const int rounds = (chunks + QGEMV_RING * L - 1) / (QGEMV_RING * L);
  for (int r = 0; r < rounds; r++) {
#pragma unroll
    for (int j = 0; j < QGEMV_RING; j++) {
      const int c = lig + (r * QGEMV_RING + j) * L;
      if (c < chunks) {
        Q::dot(w[j], xs + Q::chunkAt(c), K, M, acc);
        const int next = c + QGEMV_RING * L;
        if (next < chunks) w[j] = ldWeightChunk(wRow + next * 16);
      }
    }
  }

  // 4. Group sums (every lane of the warp takes part: M is uniform), then the epilogue of
  // kernels/linear.cu: lane lig finishes rows m ≡ lig (mod L).
#pragma unroll
  for (int m = 0; m < QGEMV_MAX_ROWS; m++) {
    if (m < M) {
      for (int o = L >> 1; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], o);
    }
  }
  if (n >= N) return;
  // sxd · swd is exact in double; the bias is in the output dtype (kind outKind).
  const double scale =
      (double)loadScale(sxd, sxdKind, 0) * (double)loadScale(swd, swdKind, swdAt);
  const double b = bias ? (double)loadScale(bias, outKind, row) : 0.0;
#pragma unroll
  for (int m = 0; m < QGEMV_MAX_ROWS; m++) {
    if (m < M && (m & (L - 1)) == lig) {
      const double t = __dadd_rn(__dmul_rn(accToDouble(acc[m]), scale), b);
      storeOutputOf(outKind, out, (i64)m * N + n, t, act, residual);
    }
  }
}

#define QGEMV_KERNEL(NAME, Q, NORM)                                                            \
  extern "C" __global__ void __launch_bounds__(QGEMV_MAX_THREADS, 1) NAME(                     \
      void* __restrict__ out, const void* __restrict__ x, int xKind,                           \
      const void* __restrict__ sxq, int sxqKind, const void* __restrict__ sxd, int sxdKind,    \
      const unsigned char* __restrict__ wq, const void* __restrict__ swd, int swdKind,         \
      int swdPerChannel, const void* __restrict__ bias, int outKind, int act, int M, int N,    \
      int K, int logL, const void* __restrict__ lnWeight, const void* __restrict__ lnBias,     \
      float eps, int lnThreads, const void* __restrict__ residual) {                           \
    qgemv<Q, NORM>(out, x, xKind, sxq, sxqKind, sxd, sxdKind, wq, swd, swdKind, swdPerChannel, \
                   bias, outKind, act, M, N, K, logL, lnWeight, lnBias, eps, lnThreads,        \
                   residual);                                                                  \
  }

QGEMV_KERNEL(qgemv_i8, QI8, false)
QGEMV_KERNEL(qgemv_e4m3, QE4M3, false)
QGEMV_KERNEL(qgemv_i8_norm, QI8, true)
QGEMV_KERNEL(qgemv_e4m3_norm, QE4M3, true)

// =============================================================================================
// The tensor-core kernels: qgemv_mma_i8, qgemv_mma_e4m3 (+ _norm), the same function as the
// ring kernels above (same x quantize rule, norm folding and epilogue) with the products on
// warp-level MMA: mma.sync.m16n8k32 with int8 operands and exact int32 sums (sm_80 on), or
// e4m3 operands and float32 sums (sm_89 on; the compute_80 PTX holds a trapping stub).
//
// Fragments of m16n8k32 with 8-bit A (row) and B (col) (PTX ISA, "Matrix fragments for
// mma.m16n8k32"); lane = 4g + t:
//   a0: A[g][4t..4t+3]      a1: A[g+8][4t..4t+3]   a2: A[g][16+4t..+3]   a3: A[g+8][16+4t..+3]
//   b0: B[4t..4t+3][g]      b1: B[16+4t..+3][g]
//   c0: C[g][2t]  c1: C[g][2t+1]  c2: C[g+8][2t]  c3: C[g+8][2t+1]
// A is x (rows 0..7 = x's rows; rows 8..15 are zero registers), B is 8 output channels' weight
// codes (column j = channel n0 + j). The k order of a sum does not matter, so each lane feeds
// one 16-byte chunk of its own: lane (g, t) loads chunk c of channel n0 + g's row (features
// 16c..16c+15) and x row g's codes of the same chunk, and
//   mma 1: b0 = w bytes 0-3, b1 = w bytes 4-7,    a0 = x bytes 0-3, a2 = x bytes 4-7
//   mma 2: b0 = w bytes 8-11, b1 = w bytes 12-15, a0 = x bytes 8-11, a2 = x bytes 12-15.
// In mma 1, k-slot 4t + i holds feature 16c_t + i and k-slot 16 + 4t + i feature 16c_t + 4 + i
// (c_t: the chunk of the lanes with that t) on BOTH sides: B column g's slots come from lane
// (g, t) and A row g's slots from the same lane, so every product pairs x[row][f] with
// w[n][f], and the 32 slots cover the 4 lanes' 8-byte halves once (mma 2: the other halves).
// One step of a warp is 4 consecutive chunks (64 bytes) of 8 rows: the lanes t = 0..3 take
// chunks 4s + t. c0 / c1 of a lane are x row g's sums of channels n0 + 2t, n0 + 2t + 1.
//
// Geometry (lowering: qgemvMmaShape in lib/backends/cuda/qgemv.ts). A block has
// groupsPerBlock · splits warps; group q of the block is channels n0 = 8 (blockIdx.x ·
// groupsPerBlock + q) .. n0 + 7, and its `splits` warps share its rows' steps: warp split s
// takes steps s, s + splits, s + 2 splits, ... (together a contiguous 64 · splits bytes of
// each row per round, which the L2's 256-byte fetches serve). Each lane keeps a ring of 6
// chunk loads (L1-bypassing) in flight (6, not 8: the norm kernels then need no spills):
//   1. the ring's first loads go out, then x's lines and the epilogue's scales are prefetched;
//   2. the block quantizes x into shared memory as raw codes, row m at byte m · pitch (pitch:
//      K rounded up to 64 bytes, plus 64 when that is a multiple of 128, so that the two rows a
//      quarter warp reads fall in different banks), as the ring kernels do (quantizeRows);
//   3. per step two MMAs into two accumulator pairs (shorter dependency chains), and the
//      chunk 6 steps further is loaded into the freed slot;
//   4. each warp writes its 8 × 8 sums to shared memory; after a barrier one thread per
//      (group, row < M, channel < N) adds the group's splits in order (deterministic) and
//      finishes with the ring kernels' epilogue.
// Rows g ≥ M of x read row M − 1 and channels past N read row N − 1 (never stored); chunks
// past the row end (K not a multiple of 64) feed zeros on both sides (never x's padding: a
// stale e4m3 NaN code times a zero weight would still be NaN).
//
// Shared memory: M · pitch bytes of codes, then warps · 64 partial sums (4 bytes each).

#define QGEMV_MMA_RING 6           // 16-byte weight chunks a lane keeps in flight
#define QGEMV_MMA_MAX_THREADS 512  // 16 warps; two blocks an SM at 64 registers a thread

// x's codes row-major with row pitch `pitch` (bytes): the eight codes of elements 8c..8c+7 of
// x (row m = c / rowSteps) at byte m · pitch + 8 (c − m · rowSteps). Codes: XI8 or XE4M3.
template <class Codes>
struct QRows {
  // Four elements a step: x's quantize then runs on twice the threads of eight-element steps,
  // and its chain of divisions is half as long (at decode sizes it is on the critical path).
  static constexpr int kStep = 4;
  __device__ static void store4(unsigned char* xs, int c, const float (&q)[4], int rowSteps,
                                int pitch) {
    const int m = c / rowSteps;
    *reinterpret_cast<unsigned*>(xs + (i64)m * pitch + 4 * (c - m * rowSteps)) = Codes::pack4(q);
  }
};

// D[g][2t], D[g][2t + 1] += Σ over 32 k-slots of x (a0, a2) times weights (b0, b1); A's rows
// 8..15 and C's are zeros, D's are dropped.
struct MmaI8 {
  typedef int Acc;
  typedef QRows<XI8> Store;
  __device__ static void mma(int (&d)[2], unsigned a0, unsigned a2, unsigned b0, unsigned b1) {
    [[maybe_unused]] int unused2, unused3;
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %5}, "
        "{%7, %8}, {%0, %1, %5, %5};"
        : "+r"(d[0]), "+r"(d[1]), "=r"(unused2), "=r"(unused3)
        : "r"(a0), "r"(0), "r"(a2), "r"(b0), "r"(b1));
  }
};

struct MmaE4M3 {
  typedef float Acc;
  typedef QRows<XE4M3> Store;
  __device__ static void mma(float (&d)[2], unsigned a0, unsigned a2, unsigned b0,
                             unsigned b1) {
#if __CUDA_ARCH__ >= 890
    [[maybe_unused]] float unused2, unused3;
    asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %5}, {%7, %8}, {%0, %1, %9, %9};"
        : "+f"(d[0]), "+f"(d[1]), "=f"(unused2), "=f"(unused3)
        : "r"(a0), "r"(0), "r"(a2), "r"(b0), "r"(b1), "f"(0.0f));
#else
    __trap();
#endif
  }
};

template <class Q, bool kNorm>
__device__ __forceinline__ void qgemvMma(void* __restrict__ out, const void* __restrict__ x,
                                         int xKind, const void* __restrict__ sxq, int sxqKind,
                                         const void* __restrict__ sxd, int sxdKind,
                                         const unsigned char* __restrict__ wq,
                                         const void* __restrict__ swd, int swdKind,
                                         int swdPerChannel, const void* __restrict__ bias,
                                         int outKind, int act, int M, int N, int K, int splits,
                                         int pitch, const void* __restrict__ lnWeight,
                                         const void* __restrict__ lnBias, float eps,
                                         int lnThreads, const void* __restrict__ residual) {
  typedef typename Q::Acc Acc;
  extern __shared__ uint4 mmaShared[];
  unsigned char* xs = reinterpret_cast<unsigned char*>(mmaShared);
  Acc* part = reinterpret_cast<Acc*>(xs + (i64)M * pitch);  // [warp][row g][channel j]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int groupsPerBlock = (blockDim.x >> 5) / splits;
  const int q = warp / splits, split = warp - q * splits;
  const i64 n0 = ((i64)blockIdx.x * groupsPerBlock + q) * 8;
  const i64 row = n0 + g < N ? n0 + g : N - 1;
  const unsigned char* wRow = wq + row * K;
  const int chunks = K >> 4, steps = (chunks + 3) >> 2;
  // This warp's steps (warp-uniform; none for a group wholly past N).
  const int mine = n0 < N && split < steps ? (steps - split + splits - 1) / splits : 0;
  // The lane's chunk of its j-th step: first + j · stride.
  const int first = 4 * split + t, stride = 4 * splits;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);

  // 1. The first ring of weight chunks.
  uint4 w[QGEMV_MMA_RING];
#pragma unroll
  for (int j = 0; j < QGEMV_MMA_RING; j++) {
    const int c = first + j * stride;
    w[j] = j < mine && c < chunks ? ldWeightChunk(wRow + 16 * c) : zero;
  }
  // x's lines into L1 for the quantize loop; the epilogue's scales and biases for later.
  const int xBytes = xKind == 0 ? 4 : 2;
  const int xLines = (M * K * xBytes + 127) >> 7;
  for (int l = threadIdx.x; l < xLines; l += blockDim.x) {
    prefetchL1(static_cast<const char*>(x) + l * 128);
  }
  if (split == 0 && t == 0) {
    prefetchL1(static_cast<const char*>(swd) + (swdPerChannel ? row : 0) * (swdKind == 0 ? 4 : 2));
    if (bias) prefetchL1(static_cast<const char*>(bias) + row * (outKind == 0 ? 4 : 2));
  }
  if (threadIdx.x == 0) prefetchL1(sxd);

  // 2. x's codes into shared memory, x normalized first when a layer norm is folded in.
  const float s = loadScale(sxq, sxqKind, 0);
  if (xKind == 0) {
    quantizeRows<F32, typename Q::Store, kNorm>(xs, x, s, M, K, pitch, lnWeight, lnBias, eps,
                                                 lnThreads);
  } else if (xKind == 1) {
    quantizeRows<F16, typename Q::Store, kNorm>(xs, x, s, M, K, pitch, lnWeight, lnBias, eps,
                                                 lnThreads);
  } else {
    quantizeRows<BF16, typename Q::Store, kNorm>(xs, x, s, M, K, pitch, lnWeight, lnBias, eps,
                                                 lnThreads);
  }
  __syncthreads();

  // 3. Products: slot j holds the chunk of step 6r + j in round r, then that of round r + 1.
  const unsigned char* xRow = xs + (i64)(g < M ? g : M - 1) * pitch;
  Acc lo[2] = {0, 0}, hi[2] = {0, 0};
  for (int r = 0; r * QGEMV_MMA_RING < mine; r++) {
#pragma unroll
    for (int j = 0; j < QGEMV_MMA_RING; j++) {
      const int step = r * QGEMV_MMA_RING + j;
      if (step < mine) {  // warp-uniform: every lane takes part in the MMAs
        const int c = first + step * stride;
        const uint4 xv = c < chunks ? *reinterpret_cast<const uint4*>(xRow + 16 * c) : zero;
        Q::mma(lo, xv.x, xv.y, w[j].x, w[j].y);
        Q::mma(hi, xv.z, xv.w, w[j].z, w[j].w);
        if (step + QGEMV_MMA_RING < mine) {
          const int next = c + QGEMV_MMA_RING * stride;
          w[j] = next < chunks ? ldWeightChunk(wRow + 16 * next) : zero;
        }
      }
    }
  }

  // 4. The warps' sums to shared memory; then per (group, row, channel) the splits in order
  // and the epilogue of the ring kernels.
  Acc* mySums = part + warp * 64 + g * 8 + 2 * t;
  mySums[0] = lo[0] + hi[0];
  mySums[1] = lo[1] + hi[1];
  __syncthreads();
  const double sx = (double)loadScale(sxd, sxdKind, 0);
  for (int i = threadIdx.x; i < groupsPerBlock * 64; i += blockDim.x) {
    const int gi = i >> 6, m = (i >> 3) & 7, j = i & 7;
    const i64 n = ((i64)blockIdx.x * groupsPerBlock + gi) * 8 + j;
    if (m >= M || n >= N) continue;
    const Acc* sums = part + gi * splits * 64 + m * 8 + j;
    Acc acc = sums[0];
    for (int p = 1; p < splits; p++) acc += sums[p * 64];
    // sxd · swd is exact in double; the bias is in the output dtype (kind outKind).
    const double scale = sx * (double)loadScale(swd, swdKind, swdPerChannel ? n : 0);
    const double b = bias ? (double)loadScale(bias, outKind, n) : 0.0;
    const double tv = __dadd_rn(__dmul_rn(accToDouble(acc), scale), b);
    storeOutputOf(outKind, out, (i64)m * N + n, tv, act, residual);
  }
}

#define QGEMV_MMA_ARGS                                                                         \
  void* __restrict__ out, const void* __restrict__ x, int xKind, const void* __restrict__ sxq, \
      int sxqKind, const void* __restrict__ sxd, int sxdKind,                                  \
      const unsigned char* __restrict__ wq, const void* __restrict__ swd, int swdKind,         \
      int swdPerChannel, const void* __restrict__ bias, int outKind, int act, int M, int N,    \
      int K, int splits, int pitch, const void* __restrict__ lnWeight,                         \
      const void* __restrict__ lnBias, float eps, int lnThreads, const void* __restrict__ residual
#define QGEMV_MMA_CALL(Q, NORM)                                                               \
  qgemvMma<Q, NORM>(out, x, xKind, sxq, sxqKind, sxd, sxdKind, wq, swd, swdKind,              \
                    swdPerChannel, bias, outKind, act, M, N, K, splits, pitch, lnWeight, lnBias, \
                    eps, lnThreads, residual)

extern "C" __global__ void __launch_bounds__(QGEMV_MMA_MAX_THREADS, 2)
    qgemv_mma_i8(QGEMV_MMA_ARGS) {
  QGEMV_MMA_CALL(MmaI8, false);
}
extern "C" __global__ void __launch_bounds__(QGEMV_MMA_MAX_THREADS, 2)
    qgemv_mma_i8_norm(QGEMV_MMA_ARGS) {
  QGEMV_MMA_CALL(MmaI8, true);
}
// The e4m3 MMA exists from sm_89 on: the compute_80 PTX holds stubs that trap (the lowering
// only picks these kernels where the sm_90a PTX is loaded).
extern "C" __global__ void __launch_bounds__(QGEMV_MMA_MAX_THREADS, 2)
    qgemv_mma_e4m3(QGEMV_MMA_ARGS) {
#if __CUDA_ARCH__ >= 890
  QGEMV_MMA_CALL(MmaE4M3, false);
#else
  __trap();
#endif
}
extern "C" __global__ void __launch_bounds__(QGEMV_MMA_MAX_THREADS, 2)
    qgemv_mma_e4m3_norm(QGEMV_MMA_ARGS) {
#if __CUDA_ARCH__ >= 890
  QGEMV_MMA_CALL(MmaE4M3, true);
#else
  __trap();
#endif
}
