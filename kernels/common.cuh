// Device helpers shared by the kernel files: 16-bit float decoding, scale loads, 16-byte chunk
// words, float32 conversions of the storage types, and the activations of the fused layers.
// Everything here is inlined; nothing is emitted unless a kernel uses it.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef long long i64;
typedef unsigned long long u64;

// ---------------------------------------------------------------------------------------------
// Raw 16-bit float bits -> float (exact)

__device__ __forceinline__ float f16BitsToFloat(unsigned short b) {
  return __half2float(__ushort_as_half(b));
}

__device__ __forceinline__ float bf16BitsToFloat(unsigned short b) {
  return __uint_as_float(((unsigned)b) << 16);
}

// Scale i of a float32 (kind 0), float16 (1) or bfloat16 (2) scale tensor, as float (exact).
__device__ __forceinline__ float loadScale(const void* __restrict__ scale, int kind, i64 i) {
  if (kind == 0) return __ldg(static_cast<const float*>(scale) + i);
  const unsigned short b = __ldg(static_cast<const unsigned short*>(scale) + i);
  return kind == 1 ? f16BitsToFloat(b) : bf16BitsToFloat(b);
}

// loadScale in two steps, for a load whose latency should hide behind other work: the raw bits
// (zero-extended 16-bit values for kinds 1 and 2), then their value. Converted right after the
// load, a scale makes the thread wait for the load there.
__device__ __forceinline__ unsigned loadScaleBits(const void* __restrict__ scale, int kind,
                                                  i64 i) {
  if (kind == 0) return __ldg(static_cast<const unsigned*>(scale) + i);
  return __ldg(static_cast<const unsigned short*>(scale) + i);
}

__device__ __forceinline__ float scaleFromBits(unsigned bits, int kind) {
  if (kind == 0) return __uint_as_float(bits);
  return kind == 1 ? f16BitsToFloat((unsigned short)bits) : bf16BitsToFloat((unsigned short)bits);
}

// ---------------------------------------------------------------------------------------------
// Float element types (raw storage behind void pointers): values load as exact floats and
// store with one RNE rounding. The kernel files extend them with their own accessors.

struct F32Base {
  __device__ static float load(const void* p, i64 i) {
    return __ldg(static_cast<const float*>(p) + i);
  }
  // Four values at i (i a multiple of 4).
  __device__ static float4 load4(const void* p, i64 i) {
    return __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(p) + i));
  }
  __device__ static void store(void* p, i64 i, float v) { static_cast<float*>(p)[i] = v; }
  __device__ static void store4(void* p, i64 i, const float (&v)[4]) {
    *reinterpret_cast<float4*>(static_cast<float*>(p) + i) = make_float4(v[0], v[1], v[2], v[3]);
  }
};

// float16 (Bf16 false) and bfloat16 (true) as raw 16-bit words.
template <bool Bf16>
struct Half16Base {
  __device__ static float one(unsigned short b) {
    return Bf16 ? bf16BitsToFloat(b) : f16BitsToFloat(b);
  }
  __device__ static unsigned short fromFloat(float v) {
    return Bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v))
                : __half_as_ushort(__float2half_rn(v));
  }
  // Two floats -> one word (a in the low half), each rounded once.
  __device__ static unsigned pack(float a, float b) {
    if (Bf16) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
      return *reinterpret_cast<const unsigned*>(&h);
    }
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const unsigned*>(&h);
  }
  __device__ static float2 unpack(unsigned w) {
    return make_float2(one((unsigned short)(w & 0xffffu)), one((unsigned short)(w >> 16)));
  }
  __device__ static float load(const void* p, i64 i) {
    return one(__ldg(static_cast<const unsigned short*>(p) + i));
  }
  // Four values at i (i a multiple of 4).
  __device__ static float4 load4(const void* p, i64 i) {
    const uint2 w =
        __ldg(reinterpret_cast<const uint2*>(static_cast<const unsigned short*>(p) + i));
    const float2 a = unpack(w.x), b = unpack(w.y);
    return make_float4(a.x, a.y, b.x, b.y);
  }
  __device__ static void store(void* p, i64 i, float v) {
    static_cast<unsigned short*>(p)[i] = fromFloat(v);
  }
};

// ---------------------------------------------------------------------------------------------
// Words of a 16-byte chunk by index

__device__ __forceinline__ unsigned wordOf(const uint4& v, int j) {
  return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}

__device__ __forceinline__ void setWord(uint4& v, int j, unsigned w) {
  if (j == 0) v.x = w;
  else if (j == 1) v.y = w;
  else if (j == 2) v.z = w;
  else v.w = w;
}

// ---------------------------------------------------------------------------------------------
// float32 <-> the float storage types (one RNE rounding to 16 bits)

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// ---------------------------------------------------------------------------------------------
// Activations

// The largest finite float. gelu(-inf) is the limit -0, but the formulas multiply -inf by a
// factor that is exactly 0 there; the leading factor x is taken as fmaxf(x, -kMaxFloat),
// which changes only -inf (and keeps NaN: the other factor is NaN then).
constexpr float kMaxFloat = 3.40282347e38f;

// 0.5 x (1 + erf(x / sqrt 2)), written with erfc so the negative tail keeps its precision.
__device__ __forceinline__ float gelu_erf(float x) {
  return 0.5f * fmaxf(x, -kMaxFloat) * erfcf(-x * 0.70710678118654752f);
}

// 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)) with u = sqrt(2/pi) (x + 0.044715 x^3): no
// cancellation for negative x.
__device__ __forceinline__ float gelu_tanh(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * (x * x * x));
  return fmaxf(x, -kMaxFloat) / (1.0f + expf(-2.0f * u));
}

// Activation codes of the fused layers: 0 none, 1 relu (NaN stays NaN), 2 gelu (erf),
// 3 gelu (tanh).
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

// D (16 x 8, float32) += A (16 x 16) · B (16 x 8), both float16 (Bf16 false) or bfloat16.
template <bool Bf16>
__device__ __forceinline__ void mma16816(float (&d)[4], unsigned a0, unsigned a1, unsigned a2,
                                         unsigned a3, unsigned b0, unsigned b1) {
  if constexpr (Bf16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// Sum over the 32 lanes of a warp (every lane gets it).
__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// 16 bytes of weight codes: read once, so they bypass L1 (x stays there); the L2 fetches
// 256-byte blocks, which the block's other warps read next. volatile keeps the load where it
// is written: the compiler must not sink it to its use several iterations later.
__device__ __forceinline__ uint4 ldWeightChunk(const unsigned char* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// 16 bytes of a stream read once per step through more data than the L2 holds (a float weight
// matrix such as the vocabulary projection, a KV cache). `.cs` allocates its lines evict-first
// in L1 and L2, so the stream does not push out what the next step reads again.
__device__ __forceinline__ uint4 ldStreamed(const void* p) {
  uint4 v;
  asm("ld.global.cs.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// Brings the 128-byte line at p into L1 ahead of its use.
__device__ __forceinline__ void prefetchL1(const void* p) {
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}
