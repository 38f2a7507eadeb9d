// float8 e4m3fn conversions shared by the kernel files.

#pragma once

#include <cuda_fp8.h>
#include <string.h>

#include "common.cuh"

// float -> e4m3fn bits: RNE, saturating to +-448 (Inf included), NaN -> 0x7f, the sign of
// zero kept. Used where the hardware conversion is missing (before sm_89).
__host__ __device__ __forceinline__ unsigned floatToE4m3Soft(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  const unsigned sign = (u >> 24) & 0x80u;
  const unsigned a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7fu;          // NaN
  if (a >= 0x43e00000u) return sign | 0x7eu;  // >= 448 (and Inf): saturate
  if (a < 0x3c800000u) {
    // Below 2^-6: fp8 subnormals step by 2^-9. Scaling by 2^9 is exact and rintf rounds half
    // to even; 8 is the smallest normal (0x08).
    float mag;
    memcpy(&mag, &a, 4);
    return sign | (unsigned)rintf(mag * 512.0f);
  }
  // Normal: round the 23-bit mantissa to 3 bits (half to even at bit 20); a carry moves into
  // the exponent. Rebias 127 -> 7. Below 448 the result is at most 448 (0x7e).
  const unsigned r = (a + 0x7ffffu + ((a >> 20) & 1u)) >> 20;
  return sign | (r - (120u << 3));
}

// Two floats -> two e4m3fn bytes (a in the low byte): RNE, |x| > 448 -> +-448; a NaN may come
// out as 0xff (e4m3Canonical makes it 0x7f).
__device__ __forceinline__ unsigned e4m3x2Saturated(float a, float b) {
#if __CUDA_ARCH__ >= 890
  // cvt.rn.satfinite.e4m3x2.f32: RNE, |x| > 448 -> +-448, NaN -> NaN.
  return (unsigned)__nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
#else
  return floatToE4m3Soft(a) | (floatToE4m3Soft(b) << 8);
#endif
}

// Clears the sign bit of every NaN byte (low seven bits all ones) of four packed e4m3fn
// values, so that NaN is always 0x7f: adding 1 to the low seven bits carries into bit 7
// exactly for those bytes.
__device__ __forceinline__ unsigned e4m3Canonical(unsigned w) {
  const unsigned nan = ((w & 0x7f7f7f7fu) + 0x01010101u) & 0x80808080u;
  return w & ~nan;
}

// Two e4m3fn bytes (low byte first) -> two exact floats.
__device__ __forceinline__ float2 e4m3x2ToFloats(unsigned w) {
  const __half2_raw h =
      __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w & 0xffffu), __NV_E4M3);
  return make_float2(f16BitsToFloat(h.x), f16BitsToFloat(h.y));
}
