// Fused scaled-dot-product attention (rule in lib/ops/attention.ts, CPU reference in
// lib/backends/cpu/attention.ts, launches in lib/backends/cuda/attention.ts).
//
// Layout: q [BH, T, D], k [BH, S, D], v [BH, S, Dv], out [BH, T, Dv]. The generic kernel takes
// them contiguous. The flash and decode kernels take, per tensor, the element strides of a
// batch, a head and a position (the batch·head index bh = b·H + h), the feature dim being
// contiguous and the strides multiples of 16 bytes: q, k, v can be strided views of a packed
// projection (the pointers already point at the first element), and the output can be written
// as [B, T, H, Dv] (heads merged). Only addresses change: the arithmetic is the same.
//
// With L the valid key count (*kvLen clamped to [0, S], or S when kvLen is null; read here, at
// run time, so a recorded graph replays with a new value), key j is visible to query i when
// j < L and, when causal, j <= i + (L - T). A query with no visible key outputs zeros.
//
// Scores are float32 dot products, multiplied by scale·log2(e) so the softmax uses exp2f; the
// running max / sum / output accumulators are float32 and the output is rounded once.
//
// Kernels:
//  - attention_flash_<f16|bf16>_d<64|128>[_i8|_e4m3] (D == Dv): flash-attention-2 forward (the
//    suffixed kernels write the per-tensor int8 / e4m3 codes of the result instead). One CTA of 4
//    warps per (batch·head, 64-query tile), each warp owning 16 query rows with Q in registers;
//    K/V tiles of 64 keys are staged in shared memory with cp.async, double buffered (the next
//    tile loads while this one is used). S = Q·Kᵀ and O += P·V run on mma.m16n8k16 (float32
//    accumulators) with operands read by ldmatrix (.trans for V); P is rounded to the input's
//    16-bit type before the P·V product, as flash attention does (the row sums use the float32
//    P). Key tiles entirely hidden by causality or kvLength are skipped; the mask is applied
//    elementwise only on the tiles that cross its edge.
//  - attention_decode_<f32|f16|bf16>_d<64|128>_t<1|4|8> (D == Dv, T <= 1|4|8): flash-decoding
//    for few queries. The L keys of a batch·head are split over `nSplit` CTAs so that even a
//    few heads fill the GPU. In a CTA, groups of D/VEC lanes each own a key at a time (one
//    16-byte chunk of its K and V rows per lane, several keys in flight) and keep a partial
//    (max, sum, acc) per query; the groups merge in shared memory, the splits in global memory:
//    the last CTA of a batch·head to finish (an atomic counter, reset by that CTA) combines
//    the partials and writes the output.
//  - attention_generic_<f32|f16|bf16>_v<64|128|256> (any D, Dv <= 64|128|256): a warp per
//    query on the CUDA cores. Lanes score 32 keys at once (one key each), then walk those keys
//    adding p·v to their Dv/32 output columns.

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

__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, m));
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
      for (int n = 0; n < 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 2));
      const float newMax = fmaxf(rowMax[r], mx);
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

  // Normalize (rows without visible keys have sum 0 and stay 0), round once, and stage the
  // warp's 16 rows in its own rows of the Q tile (read only by this warp) for 16-byte stores.
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = rowSum[r];
    sum += __shfl_xor_sync(FULL_MASK, sum, 1);
    sum += __shfl_xor_sync(FULL_MASK, sum, 2);
    inv[r] = sum > 0.0f ? 1.0f / sum : 0.0f;
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
  // The output head, from a fresh read of the block index: nothing of it stays live (in
  // registers) through the main loop.
  unsigned ctaid;
  asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(ctaid));
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

#define FLASH_KERNELS(TYPE, BF16, D)                                       \
  FLASH_KERNEL(attention_flash_##TYPE##_d##D, BF16, D)                     \
  FLASH_CODES_KERNEL(attention_flash_##TYPE##_d##D##_i8, BF16, D, XI8)     \
  FLASH_CODES_KERNEL(attention_flash_##TYPE##_d##D##_e4m3, BF16, D, XE4M3)

FLASH_KERNELS(f16, false, 64)
FLASH_KERNELS(f16, false, 128)
FLASH_KERNELS(bf16, true, 64)
FLASH_KERNELS(bf16, true, 128)

// =============================================================================================
// Flash-decoding (T <= TQ, D == Dv in {64, 128})

namespace decode {

constexpr int WARPS = 4;
// Most CTAs per batch·head (MAX_SPLITS in lib/backends/cuda/attention.ts).
constexpr int MAX_SPLITS = 64;

// partial holds, per (batch·head, split, query): max (log2 domain), sum, then D accumulators:
// [BH·nSplit·T] maxima, [BH·nSplit·T] sums, [BH·nSplit·T·D] accumulators.
template <class E, int D, int TQ>
__device__ __forceinline__ void decode(const typename E::Raw* __restrict__ q,
                                       const typename E::Raw* __restrict__ k,
                                       const typename E::Raw* __restrict__ v,
                                       typename E::Raw* __restrict__ out,
                                       const int* __restrict__ kvLen, float* __restrict__ partial,
                                       int* __restrict__ counters, int BH, int H, int T,
                                       int S, float scaleLog2, bool causal, int nSplit,
                                       const Strides& st) {
  constexpr int VEC = E::VEC;     // elements per 16-byte chunk
  constexpr int C = D / VEC;      // lanes per key: one chunk each
  constexpr int KPW = 32 / C;     // keys per warp at a time
  constexpr int G = WARPS * KPW;  // key groups per CTA
  constexpr int U = TQ >= 8 ? 2 : 4;  // keys per group per step (loads in flight)
  static_assert(C <= 32 && 32 % C == 0, "a key's chunks must tile a warp");
  __shared__ float groupMax[G][TQ];
  __shared__ float groupSum[G][TQ];
  __shared__ float groupAcc[G][TQ][D];
  __shared__ float splitWeight[MAX_SPLITS * TQ];
  __shared__ int isLast;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int c = lane % C;
  const int group = warp * KPW + lane / C;
  const int split = blockIdx.x % nSplit;
  const int bh = blockIdx.x / nSplit;
  const int batch = bh / H, head = bh - batch * H;
  const typename E::Raw* qh = q + batch * st.qB + head * st.qH + c * VEC;
  typename E::Raw* oh = out + batch * st.oB + head * st.oH;
  const int L = validKeys(kvLen, S);
  const int perSplit = (L + nSplit - 1) / nSplit;
  const int kb = split * perSplit;
  const int ke = min(L, kb + perSplit);

  // This lane's chunk of each query, scaled into the log2 domain.
  float qf[TQ][VEC];
  int limit[TQ];
#pragma unroll
  for (int t = 0; t < TQ; ++t) {
    limit[t] = 0;
#pragma unroll
    for (int e = 0; e < VEC; ++e) qf[t][e] = 0.0f;
    if (t < T) {
      E::unpack(ldg16(qh + (i64)t * st.qT), qf[t]);
#pragma unroll
      for (int e = 0; e < VEC; ++e) qf[t][e] *= scaleLog2;
      limit[t] = visibleLimit(t, T, L, causal);
    }
  }
  float m[TQ], l[TQ], acc[TQ][VEC];
#pragma unroll
  for (int t = 0; t < TQ; ++t) {
    m[t] = NEG_INF;
    l[t] = 0.0f;
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[t][e] = 0.0f;
  }

  const typename E::Raw* kRows = k + batch * st.kB + head * st.kH + c * VEC;
  const typename E::Raw* vRows = v + batch * st.vB + head * st.vH + c * VEC;
  for (int base = kb; base < ke; base += G * U) {
    uint4 kw[U], vw[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int key = base + u * G + group;
      kw[u] = vw[u] = make_uint4(0u, 0u, 0u, 0u);
      if (key < ke) {
        kw[u] = ldStreamed(kRows + (i64)key * st.kT);
        vw[u] = ldStreamed(vRows + (i64)key * st.vT);
      }
    }
    float s[TQ][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[VEC];
      E::unpack(kw[u], kf);
#pragma unroll
      for (int t = 0; t < TQ; ++t) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) dot = fmaf(qf[t][e], kf[e], dot);
        s[t][u] = dot;
      }
    }
    // Sum over the C lanes of the key (xor offsets below C stay inside the group).
#pragma unroll
    for (int off = C / 2; off > 0; off >>= 1) {
#pragma unroll
      for (int t = 0; t < TQ; ++t) {
#pragma unroll
        for (int u = 0; u < U; ++u) s[t][u] += __shfl_xor_sync(FULL_MASK, s[t][u], off);
      }
    }
    float vf[U][VEC];
#pragma unroll
    for (int u = 0; u < U; ++u) E::unpack(vw[u], vf[u]);
#pragma unroll
    for (int t = 0; t < TQ; ++t) {
      if (t < T) {
        float mx = NEG_INF;
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int key = base + u * G + group;
          if (key >= ke || key >= limit[t]) s[t][u] = NEG_INF;
          mx = fmaxf(mx, s[t][u]);
        }
        const float newMax = fmaxf(m[t], mx);
        if (newMax != NEG_INF) {
          const float correction = fastExp2(m[t] - newMax);
          float p[U], sum = 0.0f;
#pragma unroll
          for (int u = 0; u < U; ++u) {
            p[u] = fastExp2(s[t][u] - newMax);
            sum += p[u];
          }
          l[t] = l[t] * correction + sum;
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            float a = acc[t][e] * correction;
#pragma unroll
            for (int u = 0; u < U; ++u) a = fmaf(p[u], vf[u][e], a);
            acc[t][e] = a;
          }
          m[t] = newMax;
        }
      }
    }
  }

  // Merge the groups of the CTA.
#pragma unroll
  for (int t = 0; t < TQ; ++t) {
    if (t < T) {
      if (c == 0) {
        groupMax[group][t] = m[t];
        groupSum[group][t] = l[t];
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) groupAcc[group][t][c * VEC + e] = acc[t][e];
    }
  }
  __syncthreads();
  const i64 rows = (i64)BH * nSplit * T;
  float* partMax = partial;
  float* partSum = partial + rows;
  float* partAcc = partial + 2 * rows;
  for (int idx = tid; idx < T * D; idx += blockDim.x) {
    const int t = idx / D, d = idx % D;
    float mx = NEG_INF;
#pragma unroll
    for (int gi = 0; gi < G; ++gi) mx = fmaxf(mx, groupMax[gi][t]);
    float sum = 0.0f, a = 0.0f;
    if (mx != NEG_INF) {
#pragma unroll
      for (int gi = 0; gi < G; ++gi) {
        const float w = fastExp2(groupMax[gi][t] - mx);
        sum = fmaf(groupSum[gi][t], w, sum);
        a = fmaf(groupAcc[gi][t][d], w, a);
      }
    }
    if (nSplit == 1) {
      // sum >= 1 (the largest weight is 1), so the fast division is within 2 ulps.
      E::store(oh, (i64)t * st.oT + d, sum > 0.0f ? __fdividef(a, sum) : 0.0f);
    } else {
      const i64 row = ((i64)bh * nSplit + split) * T + t;
      partAcc[row * D + d] = a;
      if (d == 0) {
        partMax[row] = mx;
        partSum[row] = sum;
      }
    }
  }
  if (nSplit == 1) return;

  // The last CTA of this batch·head to finish merges the splits.
  __threadfence();  // this CTA's partials are visible device-wide before it is counted
  __syncthreads();
  if (tid == 0) isLast = atomicAdd(&counters[bh], 1) == nSplit - 1;
  __syncthreads();
  if (!isLast) return;
  __threadfence();
  // Split sp of query t is row first + sp·T + t. Its weight exp2(max_sp − max) / total goes
  // to shared memory, then every (query, column) adds the splits' accumulators with it.
  const i64 first = (i64)bh * nSplit * T;
  for (int i = tid; i < nSplit * T; i += blockDim.x) splitWeight[i] = __ldcg(partMax + first + i);
  __syncthreads();
  if (tid < T) {
    float mx = NEG_INF;
    for (int sp = 0; sp < nSplit; ++sp) mx = fmaxf(mx, splitWeight[sp * T + tid]);
    if (mx == NEG_INF) mx = INFINITY;  // every split empty: exp2(-inf - inf) = 0 weights
    float sum = 0.0f;
    for (int sp = 0; sp < nSplit; ++sp) {
      const int i = sp * T + tid;
      const float w = fastExp2(splitWeight[i] - mx);
      sum = fmaf(__ldcg(partSum + first + i), w, sum);
      splitWeight[i] = w;
    }
    const float inv = sum > 0.0f ? __fdividef(1.0f, sum) : 0.0f;
    for (int sp = 0; sp < nSplit; ++sp) splitWeight[sp * T + tid] *= inv;
  }
  __syncthreads();
  for (int idx = tid; idx < T * D; idx += blockDim.x) {
    const int t = idx / D, d = idx % D;
    float a = 0.0f;
    for (int sp = 0; sp < nSplit; ++sp) {
      a = fmaf(__ldcg(partAcc + (first + sp * T + t) * D + d), splitWeight[sp * T + t], a);
    }
    E::store(oh, (i64)t * st.oT + d, a);
  }
  if (tid == 0) counters[bh] = 0;  // ready for the next launch
}

}  // namespace decode

#define DECODE_KERNEL(NAME, E, D, TQ)                                                            \
  extern "C" __global__ void __launch_bounds__(decode::WARPS * 32)                             \
      NAME(const E::Raw* __restrict__ q, const E::Raw* __restrict__ k,                         \
           const E::Raw* __restrict__ v, E::Raw* __restrict__ out,                             \
           const int* __restrict__ kvLen, float* __restrict__ partial,                         \
           int* __restrict__ counters, int BH, int H, int T, int S, float scaleLog2,           \
           int causal, int nSplit, STRIDE_PARAMS) {                                            \
    const Strides st = STRIDE_ARGS;                                                            \
    decode::decode<E, D, TQ>(q, k, v, out, kvLen, partial, counters, BH, H, T, S, scaleLog2,   \
                             causal != 0, nSplit, st);                                         \
  }

#define DECODE_KERNELS(SUFFIX, E)                              \
  DECODE_KERNEL(attention_decode_##SUFFIX##_d64_t1, E, 64, 1)   \
  DECODE_KERNEL(attention_decode_##SUFFIX##_d64_t4, E, 64, 4)   \
  DECODE_KERNEL(attention_decode_##SUFFIX##_d64_t8, E, 64, 8)   \
  DECODE_KERNEL(attention_decode_##SUFFIX##_d128_t1, E, 128, 1) \
  DECODE_KERNEL(attention_decode_##SUFFIX##_d128_t4, E, 128, 4) \
  DECODE_KERNEL(attention_decode_##SUFFIX##_d128_t8, E, 128, 8)

DECODE_KERNELS(f32, AF32)
DECODE_KERNELS(f16, AF16)
DECODE_KERNELS(bf16, ABF16)

// =============================================================================================
// Generic: a warp per query (any D; Dv <= 32·ACC)

namespace generic {

constexpr int WARPS = 4;

template <class E, int ACC>
__device__ __forceinline__ void attend(const typename E::Raw* __restrict__ q,
                                       const typename E::Raw* __restrict__ k,
                                       const typename E::Raw* __restrict__ v,
                                       typename E::Raw* __restrict__ out,
                                       const int* __restrict__ kvLen, i64 rows, int T, int S,
                                       int D, int Dv, float scaleLog2, bool causal) {
  extern __shared__ float genericSmem[];  // [WARPS][D]: each warp's query, scaled
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* query = genericSmem + warp * D;
  const int L = validKeys(kvLen, S);
  for (i64 r = (i64)blockIdx.x * WARPS + warp; r < rows; r += (i64)gridDim.x * WARPS) {
    const i64 bh = r / T;
    const int i = (int)(r - bh * T);
    const int limit = visibleLimit(i, T, L, causal);
    const typename E::Raw* kh = k + bh * S * D;
    const typename E::Raw* vh = v + bh * S * Dv;
    __syncwarp();  // the previous row's reads of `query` are done
    for (int e = lane; e < D; e += 32) query[e] = E::load(q, r * D + e) * scaleLog2;
    __syncwarp();
    float m = NEG_INF, l = 0.0f, acc[ACC];
#pragma unroll
    for (int a = 0; a < ACC; ++a) acc[a] = 0.0f;
    for (int j0 = 0; j0 < limit; j0 += 32) {
      const int j = j0 + lane;
      float s = NEG_INF;
      if (j < limit) {
        float dot = 0.0f;
        const i64 kj = (i64)j * D;
        for (int e = 0; e < D; ++e) dot = fmaf(query[e], E::load(kh, kj + e), dot);
        s = dot;
      }
      const float newMax = fmaxf(m, warpMax(s));
      const float base = newMax == NEG_INF ? 0.0f : newMax;
      const float correction = exp2f(m - base);
      const float p = exp2f(s - base);
      l = l * correction + warpSum(p);
#pragma unroll
      for (int a = 0; a < ACC; ++a) acc[a] *= correction;
      const int n = min(32, limit - j0);
      for (int jj = 0; jj < n; ++jj) {
        const float pj = __shfl_sync(FULL_MASK, p, jj);
        const i64 vj = (i64)(j0 + jj) * Dv;
#pragma unroll
        for (int a = 0; a < ACC; ++a) {
          const int d = lane + 32 * a;
          if (d < Dv) acc[a] = fmaf(pj, E::load(vh, vj + d), acc[a]);
        }
      }
      m = newMax;
    }
#pragma unroll
    for (int a = 0; a < ACC; ++a) {
      const int d = lane + 32 * a;
      if (d < Dv) E::store(out, r * Dv + d, l > 0.0f ? acc[a] / l : 0.0f);
    }
  }
}

}  // namespace generic

#define GENERIC_KERNEL(NAME, E, ACC)                                                             \
  extern "C" __global__ void __launch_bounds__(generic::WARPS * 32)                            \
      NAME(const E::Raw* __restrict__ q, const E::Raw* __restrict__ k,                         \
           const E::Raw* __restrict__ v, E::Raw* __restrict__ out,                             \
           const int* __restrict__ kvLen, i64 rows, int T, int S, int D, int Dv,               \
           float scaleLog2, int causal) {                                                      \
    generic::attend<E, ACC>(q, k, v, out, kvLen, rows, T, S, D, Dv, scaleLog2, causal != 0);   \
  }

#define GENERIC_KERNELS(SUFFIX, E)                       \
  GENERIC_KERNEL(attention_generic_##SUFFIX##_v64, E, 2)  \
  GENERIC_KERNEL(attention_generic_##SUFFIX##_v128, E, 4) \
  GENERIC_KERNEL(attention_generic_##SUFFIX##_v256, E, 8)

GENERIC_KERNELS(f32, AF32)
GENERIC_KERNELS(f16, AF16)
GENERIC_KERNELS(bf16, ABF16)
