// Streaming weight-only GEMV for a few rows of x (lowering: lib/backends/cuda/wgemv.ts; the op
// `wlinear` is defined in lib/graph/passes/qdq_fusion.ts, its CPU reference is in
// lib/backends/cpu/linear.ts):
//
//   y[m, n] = act(Σ_k x[m, k] · q[n, k] · s(n, k) + b[n])
//
// with q the int8 / int4 (packed two per byte, element 2i in the low nibble) / float8e4m3
// weight codes, [N, K] row-major, and s(n, k) one float32, float16 or bfloat16 (swdKind 0, 1,
// 2) dequantize scale per 16-byte chunk of a row: swd[n · sN] per tensor or per output channel
// (sK = 0), or swd[n · sN + (o >> scaleShift) · sK] for the code at byte offset o of a row, for
// blocks of a power-of-two number of bytes along K.
//
// At a few rows the product is a stream of the weight, so the kernels are built around memory
// parallelism: every lane keeps several 16-byte weight loads in flight (a register ring of D
// iterations, loads bypassing L1 and fetching 256-byte L2 blocks), and decoding and multiplying
// cost few instructions per code:
//
// - wgemv_mma_<q>_<x> (float16 / bfloat16 x, M ≤ 8): the codes are turned into exact 16-bit
//   values in x's type (magic-number tricks: a byte permute or LOP3 and one packed subtract per
//   two codes; e4m3: one cvt per two) and multiplied on the tensor cores (mma.m16n8k16, float32
//   accumulators). The scale multiplies float32 partial sums, once per quad of chunks: each
//   MMA's 16 inputs lie in one quad (64 bytes of a row), so scale blocks must span 64 bytes or
//   more (int4 blocks of 128, int8 of 64).
// - wgemv_fma_<q>_<x>_m<M> (M = 1..4 rows; float32 x, and 16-bit x with int8 / int4 blocks of
//   16 or 32 bytes): codes to exact float32 values, float32 FMAs into per-chunk sums, scaled
//   once per chunk.
//
// Both differ from the fake-quant reference (which rounds q · s to x's dtype before the
// product) only by that rounding of the weights, and sum in float32.
//
// wgemv_mma_<q>_<x>_norm and wgemv_fma_<q>_f32_m<M>_norm: the same products for a wlinear whose
// x is the input of a layer norm folded into it (lib/graph/passes/qdq_fusion.ts). Every block
// computes the norm's row statistics and stages x, normalized and rounded to x's dtype, in
// shared memory (stageNormalized), then multiplies it as the plain kernels multiply x. The
// statistics are summed in the order of the layer-norm kernel the unfused graph runs
// (layer_norm_<x>_warp_v* or _block_v, kernels/nn.cu; lnThreads says which), with its float32
// operations: the staged values are bit-identical to that kernel's output, so the folded and the
// unfolded graph give identical results. They are separate instantiations: the plain kernels
// keep their registers.
//
// Layout (both kernels). A block computes 16 output channels n0..n0+15 with W = blockDim.x / 32
// warps splitting K. Lane l (g = l / 4, t = l % 4) streams rows n0 + g and n0 + g + 8. A row is
// K / E 16-byte chunks (E codes each), grouped in quads of 4 chunks; iteration i of warp w takes
// quad i · W + w, and lane t its chunk 4 · quad + t: the 4 lanes of a quad read 64 contiguous
// bytes of a row, and the W warps of the block neighbouring 64-byte pieces. The lanes that read
// the same inputs (same t) read the same x, which L1 broadcasts; x lines are prefetched into L1
// with the weights. The warps' float32 sums meet in shared memory; one thread per output adds
// the bias and the activation and rounds once to x's dtype.
//
// MMA fragments (m16n8k16, row.col): lane (g, t) holds A rows g, g + 8 at k-slots {2t, 2t + 1,
// 2t + 8, 2t + 9} and B column g at the same slots. MMA j of a chunk maps lane t's slots to
// features 4j..4j+3 of its chunk (word j of an int8 / e4m3 chunk; bytes 2(j%2), 2(j%2) + 1 of
// word j/2 of an int4 chunk) and B column g is x row g (zeros for g ≥ M), read as the x words
// 2j, 2j + 1 of the chunk's inputs. D element r is channel g + 8(r / 2), x row 2t + r % 2.
//
// Rows past N read row N - 1 instead (their sums are never written), so the weight loads need
// no row predicate. Requires K % E == 0 (rows start on 16-byte boundaries, x rows on 32-byte
// ones).
//
// `residual` (after scaleShift in every kernel; null: none): a residual add folded into the
// wlinear (lib/graph/passes/residual_fusion.ts), [M, N] of x's dtype: y = round(round(act(...))
// + residual), the unfused graph's add after the wlinear's rounding (withResidual, gemv.cuh).

#include "common.cuh"
#include "fp8.cuh"
#include "gemv.cuh"

#define WGEMV_MAX_WARPS 16
#define WGEMV_TILE 16      // output channels per block
#define WGEMV_MMA_ROWS 8   // rows of x the tensor-core kernels take (the MMA's n8)
// Iterations in the register ring (D - 1 chunk pairs a lane has in flight). The kernels run at
// 16 warps an SM (up to 128 registers a thread), so the ring takes what the other values leave:
// 6 for the tensor-core kernels and the one-row FMA kernels (112-128 registers), fewer for the
// FMA kernels of more rows, whose per-row sums and x values take more.
#define WGEMV_MMA_DEPTH 6
#define WGEMV_FMA_DEPTH(MT) ((MT) == 1 ? 6 : (MT) == 2 ? 4 : 3)

// ---------------------------------------------------------------------------------------------
// Memory access


// v, computed once: the compiler may not recompute it at each use (it would, to save a
// register, in the main loop).
template <class T>
__device__ __forceinline__ T pinned(T v) {
  static_assert(sizeof(T) == 8, "64-bit values only");
  asm("" : "+l"(v));
  return v;
}


// ---------------------------------------------------------------------------------------------
// x types: exact float loads, one RNE rounding on store (common.cuh), and 8 values at i (i a
// multiple of 8) as floats.

struct XF32 : F32Base {
  static constexpr int kBytes = 4;
  static constexpr bool kBf16 = false;
  // A 16-byte vector (kVec values) as floats, and floats back into one (one RNE rounding).
  static constexpr int kVec = 4;
  __device__ static void unpackVec(const uint4& w, float (&v)[kVec]) {
    v[0] = __uint_as_float(w.x), v[1] = __uint_as_float(w.y);
    v[2] = __uint_as_float(w.z), v[3] = __uint_as_float(w.w);
  }
  __device__ static uint4 packVec(const float (&v)[kVec]) {
    return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]),
                      __float_as_uint(v[3]));
  }
  __device__ static void load8(const void* p, i64 i, float (&v)[8]) {
    const float4* q = reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
    const float4 a = __ldg(q), b = __ldg(q + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
};

template <bool Bf16>
struct XHalf : Half16Base<Bf16> {
  static constexpr int kBytes = 2;
  static constexpr bool kBf16 = Bf16;
  static constexpr int kVec = 8;
  __device__ static void unpackVec(const uint4& w, float (&v)[kVec]) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const float2 f = Half16Base<Bf16>::unpack(wordOf(w, j));
      v[2 * j] = f.x, v[2 * j + 1] = f.y;
    }
  }
  // Rounded as the layer-norm kernel stores (from_f: __float2half_rn / __float2bfloat16_rn).
  __device__ static uint4 packVec(const float (&v)[kVec]) {
    unsigned w[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
      w[j] = (unsigned)Half16Base<Bf16>::fromFloat(v[2 * j]) |
             ((unsigned)Half16Base<Bf16>::fromFloat(v[2 * j + 1]) << 16);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
  __device__ static void load8(const void* p, i64 i, float (&v)[8]) {
    const uint4 w =
        __ldg(reinterpret_cast<const uint4*>(static_cast<const unsigned short*>(p) + i));
    const float2 a = Half16Base<Bf16>::unpack(w.x), b = Half16Base<Bf16>::unpack(w.y);
    const float2 c = Half16Base<Bf16>::unpack(w.z), d = Half16Base<Bf16>::unpack(w.w);
    v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y, v[4] = c.x, v[5] = c.y, v[6] = d.x, v[7] = d.y;
  }
};
typedef XHalf<false> XF16;
typedef XHalf<true> XBF16;

// ---------------------------------------------------------------------------------------------
// Packed 16-bit arithmetic (exact here: the operands and results are small integers)

__device__ __forceinline__ unsigned subF16x2(unsigned a, unsigned b) {
  unsigned d;
  asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

__device__ __forceinline__ unsigned subBf16x2(unsigned a, unsigned b) {
  unsigned d;
#if __CUDA_ARCH__ >= 900
  asm("sub.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
#else
  // a · 1 - b
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(0x3f803f80u), "r"(b ^ 0x80008000u));
#endif
  return d;
}

template <bool Bf16>
__device__ __forceinline__ unsigned sub16x2(unsigned a, unsigned b) {
  return Bf16 ? subBf16x2(a, b) : subF16x2(a, b);
}

// The high halves of two floats (a's in the low half): their bfloat16 values, exact when the
// floats have at most 8 significant bits.
__device__ __forceinline__ unsigned highHalves(float a, float b) {
  return __byte_perm(__float_as_uint(a), __float_as_uint(b), 0x7632);
}

// Two e4m3 bytes (low byte first) -> their exact float16 values, packed.
__device__ __forceinline__ unsigned e4m3x2ToHalf2Bits(unsigned w) {
  const __half2_raw h =
      __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w & 0xffffu), __NV_E4M3);
  return (unsigned)h.x | ((unsigned)h.y << 16);
}

// ---------------------------------------------------------------------------------------------
// Codes. pairs<Bf16>(v, j, lo, hi): features 4j, 4j + 1 (lo) and 4j + 2, 4j + 3 (hi) of chunk
// v as exact 16-bit values of x's type, packed (the first in the low half). floats8(v, h, f):
// features 8h..8h+7 as exact floats.

// int8: byte b of word j is feature 4j + b; u = byte ^ 0x80 = q + 128.
struct QI8 {
  static constexpr int kElems = 16;
  template <bool Bf16>
  __device__ static void pairs(const uint4& v, int j, unsigned& lo, unsigned& hi) {
    const unsigned u = wordOf(v, j) ^ 0x80808080u;
    if constexpr (!Bf16) {
      // float16 0x64uu = 1024 + u; minus 1152 (0x6480) is q.
      lo = subF16x2(__byte_perm(u, 0x64646464u, 0x4140), 0x64806480u);
      hi = subF16x2(__byte_perm(u, 0x64646464u, 0x4342), 0x64806480u);
    } else {
      // bfloat16 holds 8 significant bits, too few for 1024 + u: go through the float
      // 2^23 + u (one byte permute), minus 2^23 + 128, and keep its high half.
      float f[4];
#pragma unroll
      for (int b = 0; b < 4; b++) {
        f[b] = __int_as_float(__byte_perm(u, 0x4b000000u, 0x7650 | b)) - 8388736.0f;
      }
      lo = highHalves(f[0], f[1]);
      hi = highHalves(f[2], f[3]);
    }
  }
  __device__ static void floats8(const uint4& v, int h, float (&f)[8]) {
#pragma unroll
    for (int w = 0; w < 2; w++) {
      const unsigned u = wordOf(v, 2 * h + w) ^ 0x80808080u;
#pragma unroll
      for (int b = 0; b < 4; b++) {
        f[4 * w + b] = __int_as_float(__byte_perm(u, 0x4b000000u, 0x7650 | b)) - 8388736.0f;
      }
    }
  }
};

// int4: nibble p of word j / 2 is feature 8(j / 2) + p. A nibble n holds q + 8 as n ^ 8.
struct QI4 {
  static constexpr int kElems = 32;
  template <bool Bf16>
  __device__ static void pairs(const uint4& v, int j, unsigned& lo, unsigned& hi) {
    // Byte b of w holds features (2b, 2b + 1) in its low and high nibble; byte b of w >> 4
    // holds feature 2b + 1 in its low nibble. One permute puts byte b of w in the low half
    // and byte b of w >> 4 in the high half; one LOP3 keeps the low nibbles, flips their sign
    // bit and sets the exponent of 1024 (float16) or 128 (bfloat16), whose units step by 1:
    // the halves are 1024 + q + 8 (128 + q + 8), and one packed subtract gives (q, q').
    constexpr unsigned kMagic = Bf16 ? 0x43084308u : 0x64086408u;
    const unsigned w = wordOf(v, j >> 1), w4 = w >> 4;
    const unsigned b = (j & 1) * 2;
    const unsigned sel = b | (b << 4) | ((b + 4) << 8) | ((b + 4) << 12);
    lo = sub16x2<Bf16>((__byte_perm(w, w4, sel) & 0x000f000fu) ^ kMagic, kMagic);
    hi = sub16x2<Bf16>((__byte_perm(w, w4, sel + 0x1111u) & 0x000f000fu) ^ kMagic, kMagic);
  }
  __device__ static void floats8(const uint4& v, int h, float (&f)[8]) {
    // Nibble p of a 16-bit half stays at bit 4p under the exponent of 2^(23 - 4p): one LOP3
    // makes the float 2^(23-4p) + q + 8, one FADD gives q (both integers below 2^24).
    const unsigned w = wordOf(v, h);
#pragma unroll
    for (int half = 0; half < 2; half++) {
      const unsigned src = half ? w >> 16 : w;
#pragma unroll
      for (int p = 0; p < 4; p++) {
        const unsigned magicBits = ((150u - 4u * p) << 23) | (8u << (4 * p));
        const float magic = (float)((1 << (23 - 4 * p)) + 8);
        f[4 * half + p] = __uint_as_float((src & (0xfu << (4 * p))) ^ magicBits) - magic;
      }
    }
  }
};

// e4m3: byte b of word j is feature 4j + b; every value is exact in float16 and bfloat16.
struct QE4M3 {
  static constexpr int kElems = 16;
  template <bool Bf16>
  __device__ static void pairs(const uint4& v, int j, unsigned& lo, unsigned& hi) {
    const unsigned u = wordOf(v, j);
    lo = e4m3x2ToHalf2Bits(u);
    hi = e4m3x2ToHalf2Bits(u >> 16);
    if constexpr (Bf16) {
      // float16 -> float (exact) -> its high half (at most 4 significant bits: exact).
      lo = highHalves(f16BitsToFloat(lo & 0xffffu), f16BitsToFloat(lo >> 16));
      hi = highHalves(f16BitsToFloat(hi & 0xffffu), f16BitsToFloat(hi >> 16));
    }
  }
  __device__ static void floats8(const uint4& v, int h, float (&f)[8]) {
#pragma unroll
    for (int w = 0; w < 2; w++) {
      const unsigned u = wordOf(v, 2 * h + w);
      const float2 a = e4m3x2ToFloats(u), b = e4m3x2ToFloats(u >> 16);
      f[4 * w] = a.x, f[4 * w + 1] = a.y, f[4 * w + 2] = b.x, f[4 * w + 3] = b.y;
    }
  }
};


// ---------------------------------------------------------------------------------------------
// Norm kernels: x normalized into shared memory

// Where x's values sit in shared memory: row m at byte m · pitch, and the row's 16-byte vectors
// (X::kVec values each) in the order the lanes read them, a quad of chunks at a time: vector v of
// the inputs of chunk c (XV vectors a chunk) at byte 64 · XV · floor(c / 4) + 64 v + 16 (c % 4).
// The 4 lanes of a quad (t = c % 4) that read vector v read 64 consecutive bytes, and with
// pitch ≡ 64 (mod 128) rows g and g + 1, read in the same phase of a 16-byte load, use the other
// half of the banks: the MMA's reads are conflict-free (the FMA's lanes all read one row).
template <class Q, class X>
struct Staged {
  static constexpr unsigned XV = Q::kElems * X::kBytes / 16;  // x vectors a chunk: 2, 4 or 8
  // Byte of x vector u of a row.
  __device__ static unsigned at(unsigned u) {
    const unsigned c = u / XV, v = u % XV;
    return (c & ~3u) * (16u * XV) + v * 64u + (c & 3u) * 16u;
  }
  // Byte of the first x vector of the chunk at code byte offset off of a row.
  __device__ static unsigned chunkAt(unsigned off) { return (off & ~63u) * XV + (off & 48u); }
  // x values 8h..8h+7 of the chunk whose first vector is at p (16-byte x vectors 64 bytes apart).
  __device__ static void load8(const unsigned char* p, int h, float (&v)[8]) {
    constexpr int per = 8 / X::kVec;  // vectors per 8 values: 1 (16-bit x) or 2 (float32)
#pragma unroll
    for (int s = 0; s < per; s++) {
      float f[X::kVec];
      X::unpackVec(*reinterpret_cast<const uint4*>(p + (h * per + s) * 64), f);
#pragma unroll
      for (int j = 0; j < X::kVec; j++) v[s * X::kVec + j] = f[j];
    }
  }
};

// The layer norm of x's M rows (K values each; lnWeight / lnBias of x's dtype or null) into
// shared memory at xs (Staged layout, row pitch `pitch`), as the layer-norm kernel computes it
// (kernels/nn.cu: two passes, population variance, (x − mean) · inv · w + b, rounded once to x's
// dtype). lnThreads is the number of threads that kernel gives a row: 32 for layer_norm_*_warp_v*
// (a warp per row), its block size for layer_norm_*_block_v. Its thread i sums the row's
// vectors i, i + lnThreads, ... value by value, each warp adds its threads' sums by warpSum, and
// the lnThreads / 32 warp sums are added in order from 0 (block_all; a warp kernel's one sum is
// unchanged by that): here the warps of the block play those threads in turn (warp w the
// virtual warps w, w + warps, ...), with the same operations in the same order. red holds
// WGEMV_MMA_ROWS · 16 floats, stats 2 · WGEMV_MMA_ROWS. Ends with the staged values written by
// every thread (the caller synchronizes).
template <class Q, class X>
__device__ __forceinline__ void stageNormalized(unsigned char* xs, int pitch,
                                                const void* __restrict__ x, int M, int K,
                                                int lnThreads, const void* __restrict__ lnWeight,
                                                const void* __restrict__ lnBias, float eps,
                                                float* red, float* stats) {
  typedef Staged<Q, X> S;
  constexpr int VEC = X::kVec;
  const int vecs = K / VEC;  // 16-byte vectors a row
  const int perRow = lnThreads >> 5;
  const int virtualWarps = M * perRow;
  const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* mean = stats;
  float* inv = stats + WGEMV_MMA_ROWS;

  // 1. x into shared memory, and the row sums.
#pragma unroll 1
  for (int vw = warp; vw < virtualWarps; vw += warps) {
    const int m = vw / perRow, first = (vw - m * perRow) * 32 + lane;
    const uint4* xr = reinterpret_cast<const uint4*>(static_cast<const char*>(x) +
                                                     (i64)m * K * X::kBytes);
    unsigned char* row = xs + m * pitch;
    float sum = 0.0f;
#pragma unroll 1
    for (int u = first; u < vecs; u += lnThreads) {
      const uint4 raw = __ldg(xr + u);
      *reinterpret_cast<uint4*>(row + S::at(u)) = raw;
      float v[VEC];
      X::unpackVec(raw, v);
#pragma unroll
      for (int j = 0; j < VEC; j++) sum = __fadd_rn(sum, v[j]);
    }
    sum = warpSum(sum);
    if (lane == 0) red[vw] = sum;
  }
  __syncthreads();
  if (threadIdx.x < M) {
    float total = 0.0f;
    for (int i = 0; i < perRow; i++) total = __fadd_rn(total, red[threadIdx.x * perRow + i]);
    mean[threadIdx.x] = __fdiv_rn(total, (float)K);
  }
  __syncthreads();

  // 2. The squared deviations.
#pragma unroll 1
  for (int vw = warp; vw < virtualWarps; vw += warps) {
    const int m = vw / perRow, first = (vw - m * perRow) * 32 + lane;
    const unsigned char* row = xs + m * pitch;
    const float mu = mean[m];
    float sq = 0.0f;
#pragma unroll 1
    for (int u = first; u < vecs; u += lnThreads) {
      float v[VEC];
      X::unpackVec(*reinterpret_cast<const uint4*>(row + S::at(u)), v);
#pragma unroll
      for (int j = 0; j < VEC; j++) {
        const float d = __fsub_rn(v[j], mu);
        sq = __fmaf_rn(d, d, sq);
      }
    }
    sq = warpSum(sq);
    if (lane == 0) red[vw] = sq;
  }
  __syncthreads();
  if (threadIdx.x < M) {
    float total = 0.0f;
    for (int i = 0; i < perRow; i++) total = __fadd_rn(total, red[threadIdx.x * perRow + i]);
    inv[threadIdx.x] = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(total, (float)K), eps)));
  }
  __syncthreads();

  // 3. Normalized in place (layer_norm_store), rounded to x's dtype.
#pragma unroll 1
  for (int m = 0; m < M; m++) {
    unsigned char* row = xs + m * pitch;
    const float mu = mean[m], r = inv[m];
#pragma unroll 1
    for (int u = threadIdx.x; u < vecs; u += blockDim.x) {
      uint4* p = reinterpret_cast<uint4*>(row + S::at(u));
      float v[VEC], w[VEC], b[VEC];
      X::unpackVec(*p, v);
      if (lnWeight) X::unpackVec(__ldg(static_cast<const uint4*>(lnWeight) + u), w);
      if (lnBias) X::unpackVec(__ldg(static_cast<const uint4*>(lnBias) + u), b);
#pragma unroll
      for (int j = 0; j < VEC; j++) {
        float t = __fmul_rn(__fsub_rn(v[j], mu), r);
        if (lnWeight && lnBias) {
          t = __fmaf_rn(t, w[j], b[j]);
        } else if (lnWeight) {
          t = __fmul_rn(t, w[j]);
        } else if (lnBias) {
          t = __fadd_rn(t, b[j]);
        }
        v[j] = t;
      }
      *p = X::packVec(v);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The kernel body. kMma: tensor-core products (16-bit x, M ≤ 8); otherwise float32 FMAs
// (M == MT). sK == 0: one scale per row, swd[row · sN]; otherwise the scale of the code at byte
// offset o of a row is swd[row · sN + (o >> scaleShift) · sK] (a scale block spans
// 2^scaleShift bytes of a row: at least a quad of chunks for the MMA, a chunk for the FMA).
// kNorm: x is a folded layer norm's input (lnWeight, lnBias, eps, lnThreads: see
// stageNormalized), normalized into shared memory (Staged layout, row pitch `pitch` bytes, M rows
// of dynamic shared memory) before the products, which read it there.

template <class Q, class X, bool kMma, int MT, int D, bool kNorm>
__device__ __forceinline__ void wgemv(void* __restrict__ out, const void* __restrict__ x,
                                      const unsigned char* __restrict__ wq,
                                      const void* __restrict__ swd, int swdKind,
                                      const void* __restrict__ bias, int act, int M, int N,
                                      int K, i64 sN, int sK, int scaleShift,
                                      const void* __restrict__ residual,
                                      const void* __restrict__ lnWeight,
                                      const void* __restrict__ lnBias, float eps, int lnThreads,
                                      int pitch) {
  constexpr int E = Q::kElems;
  constexpr int XB = X::kBytes;
  constexpr unsigned X_PER_BYTE = E * XB / 16;  // bytes of an x row per byte of a code row
  typedef Staged<Q, X> S;
  __shared__ float partial[WGEMV_MAX_WARPS][MT][WGEMV_TILE];
  extern __shared__ uint4 wgemvStaged[];  // kNorm: x normalized, M rows of `pitch` bytes
  unsigned char* const xs = reinterpret_cast<unsigned char*>(wgemvStaged);
  const int warps = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * WGEMV_TILE;
  const unsigned rowBytes = (unsigned)(K / E) * 16u;
  const int quads = (int)((rowBytes + 63u) >> 6);
  const int iters = warp < quads ? (quads - 1 - warp) / warps + 1 : 0;
  // Rows past N read row N - 1 instead (never written): no predicate on the loads.
  const int rowA = min(n0 + g, N - 1), rowB = min(n0 + g + 8, N - 1);
  const unsigned char* wA = pinned(wq + (i64)rowA * rowBytes);
  const unsigned char* wB = pinned(wq + (i64)rowB * rowBytes);
  // Byte offset of this lane's chunk in iteration i: first + i · step.
  const unsigned first = (unsigned)(warp * 4 + t) * 16u, step = (unsigned)warps * 64u;
  const bool perRow = sK == 0;
  const i64 scaleRowA = pinned((i64)rowA * sN), scaleRowB = pinned((i64)rowB * sN);
  const float rowScaleA = perRow ? loadScale(swd, swdKind, scaleRowA) : 0.0f;
  const float rowScaleB = perRow ? loadScale(swd, swdKind, scaleRowB) : 0.0f;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  // Row g of x (row 0 stands in for g >= M, never read): the row this lane prefetches and,
  // for the MMA, multiplies. Offsets within a row are below 2^31.
  const bool xRow = g < M;
  const char* xLane = pinned(static_cast<const char*>(x) + (xRow ? (i64)g * K * XB : 0));
  // kNorm: the lane's row of the staged x, at its chunk's place t in a quad.
  const unsigned char* xsLane = xs + (xRow ? g * pitch : 0) + t * 16;

  // Byte offsets in a row of the next chunk to load and of the next to multiply: the chunk
  // of iteration i is at first + i · step.
  unsigned loadOff = first, computeOff = first;

  // The next iteration's chunk pair (zeros past the row's end) and, block-wise, its scales
  // (the quad's for the MMA: every lane of a quad needs them); x's line for it into L1.
  auto load = [&](uint4& a, uint4& b, float& sa, float& sb) {
    const unsigned off = loadOff;
    loadOff += step;
    const bool ok = off < rowBytes;
    a = ok ? ldWeightChunk(wA + off) : zero;
    b = ok ? ldWeightChunk(wB + off) : zero;
    if (!perRow) {
      const bool sOk = kMma ? (off & ~63u) < rowBytes : ok;
      const i64 at = (i64)(off >> scaleShift) * sK;
      sa = sOk ? loadScale(swd, swdKind, scaleRowA + at) : 0.0f;
      sb = sOk ? loadScale(swd, swdKind, scaleRowB + at) : 0.0f;
    }
    if constexpr (!kNorm) {
      if (ok && xRow) prefetchL1(xLane + off * X_PER_BYTE);
    }
  };

  // MMA: acc[r] is channel g + 8(r / 2), x row 2t + r % 2. FMA: acc[r][m] is channel g + 8r,
  // x row m, summed over this lane's chunks only.
  float acc[kMma ? 4 : 2][kMma ? 1 : MT];
#pragma unroll
  for (int r = 0; r < (kMma ? 4 : 2); r++) {
#pragma unroll
    for (int m = 0; m < (kMma ? 1 : MT); m++) acc[r][m] = 0.0f;
  }

  auto compute = [&](const uint4& a, const uint4& b, float sa, float sb) {
    const unsigned off = computeOff;
    computeOff += step;
    const bool ok = off < rowBytes;
    const float sA = perRow ? rowScaleA : sa;
    const float sB = perRow ? rowScaleB : sb;
    if constexpr (kMma) {
      // Every lane runs the MMAs (warp-synchronous); lanes past the row's end contribute zero
      // codes and zero x, lanes past M zero x.
      constexpr int XV = E / 8;  // 16-byte vectors of x per chunk
      uint4 xv[XV];
      const bool xOk = ok && xRow;
      if constexpr (kNorm) {
        const unsigned char* sp = xsLane + (off & ~63u) * S::XV;
#pragma unroll
        for (int v = 0; v < XV; v++) {
          xv[v] = xOk ? *reinterpret_cast<const uint4*>(sp + v * 64) : zero;
        }
      } else {
        const uint4* xp = reinterpret_cast<const uint4*>(xLane + off * X_PER_BYTE);
#pragma unroll
        for (int v = 0; v < XV; v++) xv[v] = xOk ? __ldg(xp + v) : zero;
      }
      float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < E / 4; j++) {
        unsigned a0, a1, a2, a3;
        Q::template pairs<X::kBf16>(a, j, a0, a2);
        Q::template pairs<X::kBf16>(b, j, a1, a3);
        const uint4& xq = xv[j >> 1];
        mma16816<X::kBf16>(d, a0, a1, a2, a3, wordOf(xq, 2 * (j & 1)),
                           wordOf(xq, 2 * (j & 1) + 1));
      }
      acc[0][0] = fmaf(d[0], sA, acc[0][0]);
      acc[1][0] = fmaf(d[1], sA, acc[1][0]);
      acc[2][0] = fmaf(d[2], sB, acc[2][0]);
      acc[3][0] = fmaf(d[3], sB, acc[3][0]);
    } else {
      if (!ok) return;
      const i64 xAt = (i64)(off / 16u) * E;  // x column of the chunk's first code
      float pa[MT], pb[MT];
#pragma unroll
      for (int m = 0; m < MT; m++) pa[m] = pb[m] = 0.0f;
      // At 3-4 rows, one group of 8 codes at a time (else the compiler hoists every x load).
      constexpr int GROUP_UNROLL = MT <= 2 ? E / 8 : 1;
#pragma unroll GROUP_UNROLL
      for (int h = 0; h < E / 8; h++) {
        float wa[8], wb[8];
        Q::floats8(a, h, wa);
        Q::floats8(b, h, wb);
#pragma unroll
        for (int m = 0; m < MT; m++) {
          float xv[8];
          if constexpr (kNorm) {
            S::load8(xs + m * pitch + S::chunkAt(off), h, xv);
          } else {
            X::load8(x, (i64)m * K + xAt + h * 8, xv);
          }
#pragma unroll
          for (int e = 0; e < 8; e++) {
            pa[m] = fmaf(wa[e], xv[e], pa[m]);
            pb[m] = fmaf(wb[e], xv[e], pb[m]);
          }
        }
      }
#pragma unroll
      for (int m = 0; m < MT; m++) {
        acc[0][m] = fmaf(pa[m], sA, acc[0][m]);
        acc[1][m] = fmaf(pb[m], sB, acc[1][m]);
      }
    }
  };

  // Register ring: slot i % D holds iteration i; D - 1 iterations are in flight while one is
  // multiplied.
  uint4 ra[D], rb[D];
  float sa[D], sb[D];
#pragma unroll
  for (int j = 0; j < D; j++) sa[j] = sb[j] = 0.0f;
#pragma unroll
  for (int j = 0; j < D - 1; j++) load(ra[j], rb[j], sa[j], sb[j]);
  if constexpr (kNorm) {
    // While the first loads fly: x normalized into shared memory.
    __shared__ float normRed[WGEMV_MMA_ROWS * 16];  // warp sums: M rows × lnThreads / 32
    __shared__ float normStats[2 * WGEMV_MMA_ROWS];
    stageNormalized<Q, X>(xs, pitch, x, M, K, lnThreads, lnWeight, lnBias, eps, normRed,
                          normStats);
    __syncthreads();
  }
  for (int i0 = 0; i0 < iters; i0 += D) {
#pragma unroll
    for (int j = 0; j < D; j++) {
      const int jn = (j + D - 1) % D;  // iteration i0 + j - 1's slot, already multiplied
      load(ra[jn], rb[jn], sa[jn], sb[jn]);
      if (i0 + j < iters) compute(ra[j], rb[j], sa[j], sb[j]);
    }
  }

  // The warp's sums per (x row, channel) into shared memory.
  if constexpr (kMma) {
#pragma unroll
    for (int r = 0; r < 4; r++) {
      const int m = 2 * t + (r & 1);
      if (m < M) partial[warp][m][g + 8 * (r >> 1)] = acc[r][0];
    }
  } else {
#pragma unroll
    for (int r = 0; r < 2; r++) {
#pragma unroll
      for (int m = 0; m < MT; m++) {
        float v = acc[r][m];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        if (t == 0) partial[warp][m][g + 8 * r] = v;
      }
    }
  }
  __syncthreads();
  for (int o = threadIdx.x; o < M * WGEMV_TILE; o += blockDim.x) {
    const int m = o / WGEMV_TILE, r = o % WGEMV_TILE, n = n0 + r;
    if (n >= N) continue;
    float v = partial[0][m][r];
    for (int w = 1; w < warps; w++) v += partial[w][m][r];
    const float b = bias ? X::load(bias, n) : 0.0f;
    const i64 at = (i64)m * N + n;
    const float y = activate(v + b, act);
    X::store(out, at, residual ? withResidual<X>(y, residual, at) : y);
  }
}

// At most 512 threads a block, so at most 128 registers a thread: 16 warps of any block size fit
// on an SM, which the lowering's choice of warps per block relies on (every block resident at
// once).
#define WGEMV_PARAMS                                                                         \
  void *__restrict__ out, const void *__restrict__ x, const unsigned char *__restrict__ wq, \
      const void *__restrict__ swd, int swdKind, const void *__restrict__ bias, int act,    \
      int M, int N, int K, i64 sN, int sK, int scaleShift, const void *__restrict__ residual
#define WGEMV_ARGS out, x, wq, swd, swdKind, bias, act, M, N, K, sN, sK, scaleShift, residual
#define WGEMV_PLAIN_ARGS WGEMV_ARGS, nullptr, nullptr, 0.0f, 0, 0
// The norm kernels' parameters after the plain ones'.
#define WGEMV_NORM_PARAMS                                                                     \
  WGEMV_PARAMS, const void *__restrict__ lnWeight, const void *__restrict__ lnBias, float eps, \
      int lnThreads, int pitch
#define WGEMV_NORM_ARGS WGEMV_ARGS, lnWeight, lnBias, eps, lnThreads, pitch

#define WGEMV_MMA_KERNEL(Q_NAME, Q, X_NAME, X)                                                 \
  extern "C" __global__ void __launch_bounds__(WGEMV_MAX_WARPS * 32, 1)                       \
      wgemv_mma_##Q_NAME##_##X_NAME(WGEMV_PARAMS) {                                           \
    wgemv<Q, X, true, WGEMV_MMA_ROWS, WGEMV_MMA_DEPTH, false>(WGEMV_PLAIN_ARGS);              \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(WGEMV_MAX_WARPS * 32, 1)                       \
      wgemv_mma_##Q_NAME##_##X_NAME##_norm(WGEMV_NORM_PARAMS) {                               \
    wgemv<Q, X, true, WGEMV_MMA_ROWS, WGEMV_MMA_DEPTH, true>(WGEMV_NORM_ARGS);                \
  }

#define WGEMV_FMA_KERNEL(Q_NAME, Q, X_NAME, X, MT)                                             \
  extern "C" __global__ void __launch_bounds__(WGEMV_MAX_WARPS * 32, 1)                       \
      wgemv_fma_##Q_NAME##_##X_NAME##_m##MT(WGEMV_PARAMS) {                                   \
    wgemv<Q, X, false, MT, WGEMV_FMA_DEPTH(MT), false>(WGEMV_PLAIN_ARGS);                     \
  }

// Norm FMA kernels exist for float32 x only (16-bit x takes the MMA kernels but for small
// int8 / int4 scale blocks, where a folded norm runs the layer-norm kernel first).
#define WGEMV_FMA_NORM_KERNEL(Q_NAME, Q, MT)                                                   \
  extern "C" __global__ void __launch_bounds__(WGEMV_MAX_WARPS * 32, 1)                       \
      wgemv_fma_##Q_NAME##_f32_m##MT##_norm(WGEMV_NORM_PARAMS) {                              \
    wgemv<Q, XF32, false, MT, WGEMV_FMA_DEPTH(MT), true>(WGEMV_NORM_ARGS);                    \
  }

#define WGEMV_FMA_KERNELS(Q_NAME, Q, X_NAME, X) \
  WGEMV_FMA_KERNEL(Q_NAME, Q, X_NAME, X, 1)     \
  WGEMV_FMA_KERNEL(Q_NAME, Q, X_NAME, X, 2)     \
  WGEMV_FMA_KERNEL(Q_NAME, Q, X_NAME, X, 3)     \
  WGEMV_FMA_KERNEL(Q_NAME, Q, X_NAME, X, 4)

#define WGEMV_FMA_NORM_KERNELS(Q_NAME, Q) \
  WGEMV_FMA_NORM_KERNEL(Q_NAME, Q, 1)     \
  WGEMV_FMA_NORM_KERNEL(Q_NAME, Q, 2)     \
  WGEMV_FMA_NORM_KERNEL(Q_NAME, Q, 3)     \
  WGEMV_FMA_NORM_KERNEL(Q_NAME, Q, 4)

#define WGEMV_KERNELS(Q_NAME, Q)                \
  WGEMV_MMA_KERNEL(Q_NAME, Q, f16, XF16)        \
  WGEMV_MMA_KERNEL(Q_NAME, Q, bf16, XBF16)      \
  WGEMV_FMA_KERNELS(Q_NAME, Q, f32, XF32)       \
  WGEMV_FMA_KERNELS(Q_NAME, Q, f16, XF16)       \
  WGEMV_FMA_KERNELS(Q_NAME, Q, bf16, XBF16)     \
  WGEMV_FMA_NORM_KERNELS(Q_NAME, Q)

WGEMV_KERNELS(i8, QI8)
WGEMV_KERNELS(i4, QI4)
// float8e4m3 weights are never block-wise: 16-bit x always takes the MMA kernels.
WGEMV_MMA_KERNEL(e4m3, QE4M3, f16, XF16)
WGEMV_MMA_KERNEL(e4m3, QE4M3, bf16, XBF16)
WGEMV_FMA_KERNELS(e4m3, QE4M3, f32, XF32)
WGEMV_FMA_NORM_KERNELS(e4m3, QE4M3)
