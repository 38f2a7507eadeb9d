// Pieces of the quantized linear kernels shared by kernels/linear.cu, kernels/qgemv.cu and the
// quantizing layer norm (kernels/nn.cu): the float -> code conversions (e4m3 pairs, rounded and
// saturated integers), the float element types with one-rounding stores from float or double,
// the division by a per-tensor scale (ScaleQuotient), and the activation code packers of the
// per-tensor input quantize (XI8, XE4M3). Everything is inlined.

#pragma once

#include "common.cuh"
#include "fp8.cuh"

// ---------------------------------------------------------------------------------------------
// Conversions and scales (f16BitsToFloat, bf16BitsToFloat, loadScale: common.cuh;
// e4m3x2Saturated, e4m3Canonical, e4m3x2ToFloats: fp8.cuh)

// Two floats -> two e4m3fn bytes (a in the low byte), NaN as 0x7f.
__device__ __forceinline__ unsigned floatsToE4m3x2(float a, float b) {
  return e4m3Canonical(e4m3x2Saturated(a, b));
}

// Round half to even, saturate to [Lo, Hi]; NaN -> 0 (cvt.rni.s32.f32 maps NaN to 0).
template <int Lo, int Hi>
__device__ __forceinline__ int roundSat(float q) {
  return min(max(__float2int_rn(q), Lo), Hi);
}

// ---------------------------------------------------------------------------------------------
// Float element types: load as float, store with one RNE rounding (from float or double).
// load, load4, store, store4 (and for 16-bit types one, fromFloat, pack, unpack): common.cuh.

struct F32 : F32Base {
  // Eight values at 8c: as loaded (Raw8: what a thread holds while the load is in flight), and
  // as floats.
  struct Raw8 {
    float4 a, b;
  };
  __device__ static Raw8 loadRaw8(const void* p, i64 c) {
    const float4* q = reinterpret_cast<const float4*>(p) + 2 * c;
    return Raw8{__ldg(q), __ldg(q + 1)};
  }
  __device__ static void unpack8(const Raw8& r, float (&v)[8]) {
    v[0] = r.a.x, v[1] = r.a.y, v[2] = r.a.z, v[3] = r.a.w;
    v[4] = r.b.x, v[5] = r.b.y, v[6] = r.b.z, v[7] = r.b.w;
  }
  __device__ static void load8(const void* p, i64 c, float (&v)[8]) { unpack8(loadRaw8(p, c), v); }
  __device__ static void storeDouble(void* p, i64 i, double v) {
    static_cast<float*>(p)[i] = __double2float_rn(v);
  }
  __device__ static void store4d(void* p, i64 i, const double (&v)[4]) {
    *reinterpret_cast<float4*>(static_cast<float*>(p) + i) =
        make_float4(__double2float_rn(v[0]), __double2float_rn(v[1]), __double2float_rn(v[2]),
                    __double2float_rn(v[3]));
  }
  // The value as this dtype holds it (the fake-quant graph dequantizes to the matmul's dtype).
  __device__ static void round4(float (&v)[4]) {}
};

template <bool Bf16>
struct Half16 : Half16Base<Bf16> {
  using Base = Half16Base<Bf16>;
  __device__ static unsigned short fromDouble(double v) {
    return Bf16 ? __bfloat16_as_ushort(__double2bfloat16(v)) : __half_as_ushort(__double2half(v));
  }
  typedef uint4 Raw8;
  __device__ static Raw8 loadRaw8(const void* p, i64 c) {
    return __ldg(reinterpret_cast<const uint4*>(p) + c);
  }
  __device__ static void unpack8(const Raw8& w, float (&v)[8]) {
    const float2 a = Base::unpack(w.x), b = Base::unpack(w.y);
    const float2 d = Base::unpack(w.z), e = Base::unpack(w.w);
    v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y, v[4] = d.x, v[5] = d.y, v[6] = e.x, v[7] = e.y;
  }
  __device__ static void load8(const void* p, i64 c, float (&v)[8]) { unpack8(loadRaw8(p, c), v); }
  __device__ static void storeDouble(void* p, i64 i, double v) {
    static_cast<unsigned short*>(p)[i] = fromDouble(v);
  }
  __device__ static void store4(void* p, i64 i, const float (&v)[4]) {
    *reinterpret_cast<uint2*>(static_cast<unsigned short*>(p) + i) =
        make_uint2(Base::pack(v[0], v[1]), Base::pack(v[2], v[3]));
  }
  __device__ static void store4d(void* p, i64 i, const double (&v)[4]) {
    *reinterpret_cast<uint2*>(static_cast<unsigned short*>(p) + i) =
        make_uint2(fromDouble(v[0]) | ((unsigned)fromDouble(v[1]) << 16),
                   fromDouble(v[2]) | ((unsigned)fromDouble(v[3]) << 16));
  }
  __device__ static void round4(float (&v)[4]) {
    const float2 a = Base::unpack(Base::pack(v[0], v[1]));
    const float2 b = Base::unpack(Base::pack(v[2], v[3]));
    v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
  }
};
typedef Half16<false> F16;
typedef Half16<true> BF16;

// x / s for one scale s and many x, equal to the IEEE division __fdiv_rn(x, s) wherever it can
// change a code, in five FMA-pipe instructions instead of the division's reciprocal-unit
// sequence (which kept the activation quantize kernels busy issuing). q0 = x·r with r = 1/s
// correctly rounded is within one ulp of x / s; Markstein's step q0 + (x − q0·s)·r, whose
// remainder an FMA computes exactly, then rounds the quotient correctly (r within half an ulp
// of 1/s). Guards, all exact: |s| outside [2^-90, 2^90] takes the division itself (uniform over
// a launch; inside, the remainder of every quotient of magnitude 2^-12 or more is exact, and
// smaller quotients are code ±0 either way); an infinite or NaN q0 stands (x·r
// overflows only where the code saturates, and inf or NaN x give inf or NaN like the
// division); zeros keep q0's sign (the step alone would turn −0 into +0).
struct ScaleQuotient {
  float s, r;
  bool fast;
  __device__ __forceinline__ explicit ScaleQuotient(float scale)
      : s(scale),
        r(__frcp_rn(scale)),
        fast(fabsf(scale) >= 0x1p-90f && fabsf(scale) <= 0x1p90f) {}
  // The quotient by the multiply and correction (valid where `fast`).
  __device__ __forceinline__ float fastQuotient(float x) const {
    const float q0 = __fmul_rn(x, r);
    const float q = copysignf(__fmaf_rn(__fmaf_rn(-q0, s, x), r, q0), q0);
    return fabsf(q0) <= 0x1.fffffep127f ? q : q0;
  }
  __device__ __forceinline__ float operator()(float x) const {
    return fast ? fastQuotient(x) : __fdiv_rn(x, s);
  }
  // N quotients in place behind one branch (per element, the branches split the code the
  // compiler schedules, and the kernels got slower than with the division).
  template <int N> __device__ __forceinline__ void divide(float (&v)[N]) const {
    if (fast) {
#pragma unroll
      for (int j = 0; j < N; j++) v[j] = fastQuotient(v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < N; j++) v[j] = __fdiv_rn(v[j], s);
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Activation codes: eight quotients x / s -> eight codes at byte 8c (store8), one at byte i
// (store1), with the quantize op's rounding and saturation.

struct XI8 {
  __device__ static unsigned pack4(const float* q) {
    return ((unsigned)roundSat<-128, 127>(q[0]) & 0xffu) |
           (((unsigned)roundSat<-128, 127>(q[1]) & 0xffu) << 8) |
           (((unsigned)roundSat<-128, 127>(q[2]) & 0xffu) << 16) |
           ((unsigned)roundSat<-128, 127>(q[3]) << 24);
  }
  __device__ static void store8(void* out, i64 c, const float (&q)[8]) {
    reinterpret_cast<uint2*>(out)[c] = make_uint2(pack4(q), pack4(q + 4));
  }
  __device__ static void store1(void* out, i64 i, float q) {
    static_cast<signed char*>(out)[i] = (signed char)roundSat<-128, 127>(q);
  }
};

struct XE4M3 {
  __device__ static unsigned pack4(const float* q) {
    return floatsToE4m3x2(q[0], q[1]) | (floatsToE4m3x2(q[2], q[3]) << 16);
  }
  __device__ static void store8(void* out, i64 c, const float (&q)[8]) {
    reinterpret_cast<uint2*>(out)[c] = make_uint2(pack4(q), pack4(q + 4));
  }
  __device__ static void store1(void* out, i64 i, float q) {
    static_cast<unsigned char*>(out)[i] = (unsigned char)(floatsToE4m3x2(q, 0.0f) & 0xffu);
  }
};
