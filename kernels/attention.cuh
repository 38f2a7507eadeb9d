// Shared by kernels/attention.cu and kernels/attention_codes.cu: element types, strides, the
// flash-attention forward (namespace flash) and its kernel macros. See kernels/attention.cu for
// the layouts, masking and arithmetic.

#pragma once

#include <stdint.h>

#include <type_traits>

#include "common.cuh"
#include "qlinear.cuh"

#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

// The valid key count: *kvLen clamped to [0, S], or S.
__device__ __forceinline__ int validKeys(const int* kvLen, int S) {
  if (kvLen == nullptr) return S;
  return min(max(*kvLen, 0), S);
}

// Keys visible to query i: 0 .. limit-1 (limit <= 0: none).
__device__ __forceinline__ int visibleLimit(int i, int T, int L, bool causal) {
  return causal ? min(L, i + L - T + 1) : L;
}

// The factor of a row whose softmax sum is 0: 0 when the row has no visible key (its output
// is zeros), NaN when it has some but every visible score was -inf (softmax is undefined).
__device__ __forceinline__ float emptyRowFactor(int i, int T, int L, bool causal) {
  return visibleLimit(i, T, L, causal) > 0 ? __int_as_float(0x7fc00000) : 0.0f;
}

// max that propagates NaN (fmaxf drops it): a NaN score makes its row NaN, as the CPU's and
// PyTorch's softmax do, instead of a row that the NaN silently leaves out.
__device__ __forceinline__ float maxNaN(float a, float b) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = maxNaN(v, __shfl_xor_sync(FULL_MASK, v, m));
  return v;
}


// ---------------------------------------------------------------------------------------------
// Element types: scalar loads / stores (common.cuh) and 16-byte chunks as floats.

struct AF32 : F32Base {
  using Raw = float;
  static constexpr int VEC = 4;
  __device__ static void unpack(const uint4& w, float (&f)[4]) {
    f[0] = __uint_as_float(w.x);
    f[1] = __uint_as_float(w.y);
    f[2] = __uint_as_float(w.z);
    f[3] = __uint_as_float(w.w);
  }
};

template <bool Bf16>
struct AH16 : Half16Base<Bf16> {
  using Raw = unsigned short;
  static constexpr int VEC = 8;
  __device__ static void unpack(const uint4& w, float (&f)[8]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 p = Half16Base<Bf16>::unpack(wordOf(w, j));
      f[2 * j] = p.x;
      f[2 * j + 1] = p.y;
    }
  }
};

using AF16 = AH16<false>;
using ABF16 = AH16<true>;

// 2^x with one MUFU.EX2: results below 2^-126 flush to zero. Only softmax weights go through
// it, and every row's largest weight is 1, so a flushed weight changes nothing measurable.
__device__ __forceinline__ float fastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint4 ldg16(const void* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

// Element strides of a batch, a head and a position of q, k, v and the output (flash and
// decode kernels), passed as 12 kernel parameters. Position strides are 32-bit (products with
// a position index are widened).
struct Strides {
  i64 qB, qH;
  int qT;
  i64 kB, kH;
  int kT;
  i64 vB, vH;
  int vT;
  i64 oB, oH;
  int oT;
};
#define STRIDE_PARAMS                                                                          \
  i64 qB, i64 qH, int qT, i64 kB, i64 kH, int kT, i64 vB, i64 vH, int vT, i64 oB, i64 oH, \
      int oT
#define STRIDE_ARGS {qB, qH, qT, kB, kH, kT, vB, vH, vT, oB, oH, oT}

// =============================================================================================
// Flash-attention-2 forward (float16 / bfloat16, D == Dv in {64, 128})

namespace flash {

constexpr int BM = 64;  // queries per CTA: 4 warps x 16 rows
constexpr int BN = 64;  // keys per tile
constexpr int THREADS = 128;

__device__ __forceinline__ unsigned smemAddress(const void* p) {
  return (unsigned)__cvta_generic_to_shared(p);
}

// 16 bytes global -> shared, bypassing L1; an invalid chunk is zero-filled (nothing is read).
__device__ __forceinline__ void cpAsync16(unsigned dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void cpAsyncCommit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cpAsyncWait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrixX4(unsigned address, unsigned (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
__device__ __forceinline__ void ldmatrixX4Trans(unsigned address, unsigned (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// D (16 x 8, float32) += A (16 x 16, row) · B (16 x 8, col) in the 16-bit input type, A as an
// array (common.cuh has the instruction).
template <bool Bf16>
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1) {
  ::mma16816<Bf16>(d, a[0], a[1], a[2], a[3], b0, b1);
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a [rows][D] 16-bit tile. The chunk index
// is XORed with the row's low 3 bits, so the 8 rows an ldmatrix 8x8 matrix reads (same logical
// chunk) land on 8 different bank groups: no bank conflicts for rows of 128 or 256 bytes.
template <int D>
__device__ __forceinline__ unsigned tileOffset(int row, int chunk) {
  return (unsigned)((row * (D / 8) + (chunk ^ (row & 7))) * 16);
}

// Starts copying rows 0 .. rows-1 (at most 64) of a [64][D] tile from g (rows `stride`
// elements apart, a multiple of 8); rows past `rows` are zero-filled. Call only with
// rows >= 1.
template <int D>
__device__ __forceinline__ void loadTile(unsigned tile, const unsigned short* g, int stride,
                                         int rows, int tid) {
  constexpr int CH = D / 8;
  constexpr int PER_THREAD = BN * CH / THREADS;
#pragma unroll
  for (int i = 0; i < PER_THREAD; ++i) {
    const int idx = tid + i * THREADS;
    const int row = idx / CH, chunk = idx % CH;
    const bool valid = row < rows;
    const unsigned short* src = valid ? g + (i64)row * stride + chunk * 8 : g;
    cpAsync16(tile + tileOffset<D>(row, chunk), src, valid);
  }
}

// Codes: void writes the 16-bit result; XI8 or XE4M3 (qlinear.cuh) write the per-tensor int8
// or e4m3 codes of the rounded result instead, `codeScale` (a scale of kind `codeScaleKind`)
// dividing it as the quantize op does: one byte per element at the same element offsets. With
// `rowScales` (the `bthd` layout only), the CTAs of head 0 also write a float32 copy of
// `rowScale` for each of their rows b·T + t (cuBLASLt's outer-vector scale of those codes).
template <bool Bf16, int D, class Codes>
__device__ __forceinline__ void forward(const unsigned short* __restrict__ q,
                                        const unsigned short* __restrict__ k,
                                        const unsigned short* __restrict__ v,
                                        void* __restrict__ out, const int* __restrict__ kvLen,
                                        int BH, int H, int T, int S, float scaleLog2, bool causal,
                                        int mTiles, const Strides& st,
                                        const void* __restrict__ codeScale, int codeScaleKind,
                                        float* __restrict__ rowScales,
                                        const void* __restrict__ rowScale, int rowScaleKind) {
  static_assert(D % 16 == 0 && BM == 64 && BN == 64, "tile shape");
  constexpr int CH = D / 8;                      // 16-byte chunks per row
  constexpr unsigned TILE_BYTES = 64 * D * 2;    // one [64][D] tile
  constexpr int KSTEPS = D / 16;                 // k-steps of S = Q·Kᵀ
  constexpr int OTILES = D / 8;                  // n8 tiles of O
  extern __shared__ uint4 flashSmem[];
  // [Q | K0 | K1 | V0 | V1], each [64][D] with swizzled chunks.
  const unsigned sQ = smemAddress(flashSmem);
  const auto sK = [&](int buffer) { return sQ + (1 + buffer) * TILE_BYTES; };
  const auto sV = [&](int buffer) { return sQ + (3 + buffer) * TILE_BYTES; };

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  // Heaviest (last) query tiles first: under causality they see the most keys.
  const int bh = blockIdx.x % BH;
  const int m0 = (mTiles - 1 - (int)(blockIdx.x / BH)) * BM;
  const int L = validKeys(kvLen, S);
  const int shift = L - T;  // query i sees keys j <= i + shift when causal
  // Keys any query of this tile may see: 0 .. kvEnd-1.
  const int kvEnd = causal ? min(L, m0 + BM + shift) : L;
  const int nTiles = kvEnd > 0 ? (kvEnd + BN - 1) / BN : 0;

  const int batch = bh / H, head = bh - batch * H;
  const unsigned short* kg = k + batch * st.kB + head * st.kH;
  const unsigned short* vg = v + batch * st.vB + head * st.vH;

  loadTile<D>(sQ, q + batch * st.qB + head * st.qH + (i64)m0 * st.qT, st.qT, T - m0, tid);
  cpAsyncCommit();
  if (nTiles > 0) {
    loadTile<D>(sK(0), kg, st.kT, L, tid);
    loadTile<D>(sV(0), vg, st.vT, L, tid);
  }
  cpAsyncCommit();
  cpAsyncWait<1>();  // Q has landed (this thread's copies)
  __syncthreads();   // ... and every thread's

  // Q fragments (A operand, 16 x 16 per k-step): matrices (rows 0-7 | 8-15) x (chunk 2kk | +1),
  // lane l addressing row l % 16 of chunk 2kk + l / 16.
  unsigned qa[KSTEPS][4];
#pragma unroll
  for (int kk = 0; kk < KSTEPS; ++kk) {
    ldmatrixX4(sQ + tileOffset<D>(warp * 16 + (lane & 15), 2 * kk + (lane >> 4)), qa[kk]);
  }

  // This lane's accumulator rows: g and g + 8 of the warp's 16; columns 2t, 2t + 1 of each n8.
  const int g = lane >> 2, t4 = lane & 3;
  const int row0 = m0 + warp * 16 + g;
  float o[OTILES][4];
#pragma unroll
  for (int n = 0; n < OTILES; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float rowMax[2] = {NEG_INF, NEG_INF};
  float rowSum[2] = {0.0f, 0.0f};  // this lane's columns only; the quad adds them at the end

  for (int j = 0; j < nTiles; ++j) {
    if (j + 1 < nTiles) {
      // Buffer (j + 1) & 1 held tile j - 1, released by the barrier that ended iteration j - 1.
      const int next = (j + 1) * BN;
      loadTile<D>(sK((j + 1) & 1), kg + (i64)next * st.kT, st.kT, L - next, tid);
      loadTile<D>(sV((j + 1) & 1), vg + (i64)next * st.vT, st.vT, L - next, tid);
    }
    cpAsyncCommit();   // possibly empty: keeps the group count uniform
    cpAsyncWait<1>();  // tile j has landed
    __syncthreads();
    const unsigned kTile = sK(j & 1), vTile = sV(j & 1);
    const int n0 = j * BN;

    // S = Q·Kᵀ for 16 rows x 64 keys: 8 n8 tiles. K rows are B's columns ("col" layout), so
    // ldmatrix without .trans; one x4 gives (keys 16np + 0-7 | 8-15) x (chunk 2kk | +1).
    float s[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        unsigned b[4];
        const int key = np * 16 + ((lane >> 4) << 3) + (lane & 7);
        ldmatrixX4(kTile + tileOffset<D>(key, 2 * kk + ((lane >> 3) & 1)), b);
        mma16816<Bf16>(s[2 * np], qa[kk], b[0], b[1]);
        mma16816<Bf16>(s[2 * np + 1], qa[kk], b[2], b[3]);
      }
    }

    // To the log2 domain; hide invisible keys where the tile crosses the mask's edge.
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] *= scaleLog2;
    }
    if (n0 + BN > L || (causal && n0 + BN - 1 > m0 + shift)) {
      // Visible columns of this tile for rows g and g + 8, relative to this lane's column 2t.
      const int first = n0 + 2 * t4;
      const int visible[2] = {visibleLimit(row0, T, L, causal) - first,
                              visibleLimit(row0 + 8, T, L, causal) - first};
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (n * 8 + (e & 1) >= visible[e >> 1]) s[n][e] = NEG_INF;
        }
      }
    }

    // Online softmax per row (elements 0, 1: row g; 2, 3: row g + 8).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = NEG_INF;
#pragma unroll
      for (int n = 0; n < 8; ++n) mx = maxNaN(mx, maxNaN(s[n][2 * r], s[n][2 * r + 1]));
      mx = maxNaN(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
      mx = maxNaN(mx, __shfl_xor_sync(FULL_MASK, mx, 2));
      const float newMax = maxNaN(rowMax[r], mx);
      // A row with nothing visible yet keeps p = 0 (no -inf - -inf).
      const float base = newMax == NEG_INF ? 0.0f : newMax;
      const float correction = fastExp2(rowMax[r] - base);
      rowMax[r] = newMax;
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const float p0 = fastExp2(s[n][2 * r] - base);
        const float p1 = fastExp2(s[n][2 * r + 1] - base);
        s[n][2 * r] = p0;
        s[n][2 * r + 1] = p1;
        sum += p0 + p1;
      }
      rowSum[r] = rowSum[r] * correction + sum;
#pragma unroll
      for (int n = 0; n < OTILES; ++n) {
        o[n][2 * r] *= correction;
        o[n][2 * r + 1] *= correction;
      }
    }

    // O += P·V. The S accumulators of n8 tiles 2kk, 2kk + 1 are exactly the A fragment of
    // k-step kk (keys 16kk .. 16kk + 15), rounded to the 16-bit type. V rows are B's rows, so
    // ldmatrix .trans; one x4 gives (keys 16kk + 0-7 | 8-15) x (chunk 2np | +1).
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      unsigned pa[4];
      pa[0] = Half16Base<Bf16>::pack(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = Half16Base<Bf16>::pack(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = Half16Base<Bf16>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = Half16Base<Bf16>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int np = 0; np < OTILES / 2; ++np) {
        unsigned b[4];
        const int key = kk * 16 + (((lane >> 3) & 1) << 3) + (lane & 7);
        ldmatrixX4Trans(vTile + tileOffset<D>(key, 2 * np + (lane >> 4)), b);
        mma16816<Bf16>(o[2 * np], pa, b[0], b[1]);
        mma16816<Bf16>(o[2 * np + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();  // buffer j & 1 is refilled in the next iteration
  }

  // Normalize, round once, and stage the warp's 16 rows in its own rows of the Q tile (read
  // only by this warp) for 16-byte stores. A sum of 0 is a row without visible keys (zeros) or
  // one whose visible scores are all -inf (NaN, as softmax gives); a NaN sum stays NaN.
  // The block and thread indices are read afresh here, and the valid key count reloaded, so
  // that nothing of them stays live (in registers) through the main loop.
  unsigned ctaid, tidx;
  asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(ctaid));
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(tidx));
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = rowSum[r];
    sum += __shfl_xor_sync(FULL_MASK, sum, 1);
    sum += __shfl_xor_sync(FULL_MASK, sum, 2);
    if (sum != 0.0f) {
      inv[r] = 1.0f / sum;
    } else {
      const int tile = mTiles - 1 - (int)(ctaid / (unsigned)BH);
      const int row = tile * BM + (int)(tidx >> 5) * 16 + (int)((tidx & 31) >> 2) + 8 * r;
      inv[r] = emptyRowFactor(row, T, validKeys(kvLen, S), causal);
    }
  }
  unsigned char* stage = reinterpret_cast<unsigned char*>(flashSmem);
#pragma unroll
  for (int n = 0; n < OTILES; ++n) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const unsigned word =
          Half16Base<Bf16>::pack(o[n][2 * r] * inv[r], o[n][2 * r + 1] * inv[r]);
      const int row = warp * 16 + g + 8 * r;
      *reinterpret_cast<unsigned*>(stage + tileOffset<D>(row, n) + t4 * 4) = word;
    }
  }
  __syncwarp();
  // The output head, from the fresh read of the block index above.
  const int outBh = (int)(ctaid % (unsigned)BH);
  const int outBatch = outBh / H, outHead = outBh - outBatch * H;
  const i64 outHeadAt = outBatch * st.oB + outHead * st.oH;  // elements
  if constexpr (std::is_void<Codes>::value) {
    unsigned short* og = static_cast<unsigned short*>(out) + outHeadAt;
#pragma unroll
    for (int i = 0; i < 16 * CH / 32; ++i) {
      const int idx = lane + i * 32;
      const int r = idx / CH, chunk = idx % CH;
      const int row = m0 + warp * 16 + r;
      if (row < T) {
        const uint4 w =
            *reinterpret_cast<const uint4*>(stage + tileOffset<D>(warp * 16 + r, chunk));
        *reinterpret_cast<uint4*>(og + (i64)row * st.oT + chunk * 8) = w;
      }
    }
  } else {
    // Eight rounded values -> eight codes at byte (element) offset 8·c; every offset here is a
    // multiple of 8 (D is, and so are the output strides).
    const ScaleQuotient quotient(loadScale(codeScale, codeScaleKind, 0));
    if (rowScales != nullptr && outHead == 0) {
      const float copy = loadScale(rowScale, rowScaleKind, 0);
      for (int r = tid; r < BM && m0 + r < T; r += THREADS) {
        rowScales[(i64)outBatch * T + m0 + r] = copy;
      }
    }
#pragma unroll
    for (int i = 0; i < 16 * CH / 32; ++i) {
      const int idx = lane + i * 32;
      const int r = idx / CH, chunk = idx % CH;
      const int row = m0 + warp * 16 + r;
      if (row < T) {
        float x[8];
        Half16<Bf16>::unpack8(
            *reinterpret_cast<const uint4*>(stage + tileOffset<D>(warp * 16 + r, chunk)), x);
        quotient.divide(x);
        Codes::store8(out, (outHeadAt + (i64)row * st.oT + chunk * 8) / 8, x);
      }
    }
  }
}

}  // namespace flash

// D = 64 fits 128 registers: 4 CTAs (16 warps) per SM.
#define FLASH_KERNEL(NAME, BF16, D)                                                              \
  extern "C" __global__ void __launch_bounds__(flash::THREADS, D == 64 ? 4 : 2)                \
      NAME(const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,         \
           const unsigned short* __restrict__ v, unsigned short* __restrict__ out,             \
           const int* __restrict__ kvLen, int BH, int H, int T, int S, float scaleLog2,        \
           int causal, int mTiles, STRIDE_PARAMS) {                                            \
    const Strides st = STRIDE_ARGS;                                                            \
    flash::forward<BF16, D, void>(q, k, v, out, kvLen, BH, H, T, S, scaleLog2, causal != 0,    \
                                  mTiles, st, nullptr, 0, nullptr, nullptr, 0);                \
  }

// The same, writing the codes of the result (a qlinear's x; lib/graph/passes/attention_qlinear.ts).
#define FLASH_CODES_KERNEL(NAME, BF16, D, CODES)                                                 \
  extern "C" __global__ void __launch_bounds__(flash::THREADS, D == 64 ? 4 : 2)                \
      NAME(const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,         \
           const unsigned short* __restrict__ v, void* __restrict__ out,                       \
           const int* __restrict__ kvLen, int BH, int H, int T, int S, float scaleLog2,        \
           int causal, int mTiles, STRIDE_PARAMS, const void* __restrict__ codeScale,          \
           int codeScaleKind, float* __restrict__ rowScales, const void* __restrict__ rowScale, \
           int rowScaleKind) {                                                                 \
    const Strides st = STRIDE_ARGS;                                                            \
    flash::forward<BF16, D, CODES>(q, k, v, out, kvLen, BH, H, T, S, scaleLog2, causal != 0,   \
                                   mTiles, st, codeScale, codeScaleKind, rowScales, rowScale,  \
                                   rowScaleKind);                                              \
  }
