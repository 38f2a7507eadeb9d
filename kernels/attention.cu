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
// j < L and, when causal, j <= i + (L - T). A query with no visible key outputs zeros; one whose
// visible scores are all -inf outputs NaN (its softmax is undefined), as on the CPU.
//
// Scores are float32 dot products, multiplied by scale·log2(e) so the softmax uses exp2f; the
// running max / sum / output accumulators are float32 and the output is rounded once.
//
// Kernels:
//  - attention_flash_<f16|bf16>_d<64|128> (D == Dv): flash-attention-2 forward (the codes
//    variants, writing the result's int8 / e4m3 codes, are in attention_codes.cu). One CTA of 4
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

#include "attention.cuh"

FLASH_KERNEL(attention_flash_f16_d64, false, 64)
FLASH_KERNEL(attention_flash_f16_d128, false, 128)
FLASH_KERNEL(attention_flash_bf16_d64, true, 64)
FLASH_KERNEL(attention_flash_bf16_d128, true, 128)

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
          mx = maxNaN(mx, s[t][u]);
        }
        const float newMax = maxNaN(m[t], mx);
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
            for (int u = 0; u < U; ++u) {
              // With several queries, a key hidden from this one by causality was loaded for
              // another: its weight is 0, and 0 · (NaN or ±inf) must not reach this row. (One
              // query loads only its visible keys.)
              if (TQ == 1 || base + u * G + group < limit[t]) a = fmaf(p[u], vf[u][e], a);
            }
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
    for (int gi = 0; gi < G; ++gi) mx = maxNaN(mx, groupMax[gi][t]);
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
      // sum >= 1 (the largest weight is 1), so the fast division is within 2 ulps; sum 0 means
      // no visible key (zeros) or only -inf scores (NaN), a NaN sum a NaN score (NaN).
      E::store(oh, (i64)t * st.oT + d,
               sum != 0.0f ? __fdividef(a, sum) : emptyRowFactor(t, T, L, causal));
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
    for (int sp = 0; sp < nSplit; ++sp) mx = maxNaN(mx, splitWeight[sp * T + tid]);
    if (mx == NEG_INF) mx = INFINITY;  // every split empty: exp2(-inf - inf) = 0 weights
    float sum = 0.0f;
    for (int sp = 0; sp < nSplit; ++sp) {
      const int i = sp * T + tid;
      const float w = fastExp2(splitWeight[i] - mx);
      sum = fmaf(__ldcg(partSum + first + i), w, sum);
      splitWeight[i] = w;
    }
    const float inv = sum != 0.0f ? __fdividef(1.0f, sum) : emptyRowFactor(tid, T, L, causal);
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
      const float newMax = maxNaN(m, warpMax(s));
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
      if (d < Dv) {
        E::store(out, r * Dv + d, l != 0.0f ? acc[a] / l : emptyRowFactor(i, T, L, causal));
      }
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
