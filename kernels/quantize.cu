// quantize / dequantize (rules in lib/ops/quantize.ts, CPU reference in
// lib/backends/cpu/quantize.ts).
//
//   quantize:   q = saturate(rint(x / s)), x / s a true IEEE float32 division (never x * (1/s)),
//               rint = round half to even; int8 [-128, 127], int4 [-8, 7], NaN -> 0;
//               float8e4m3 = RNE of the float32 quotient, saturating to +-448, NaN -> 0x7f.
//   dequantize: x = q * s in float32 (one rounding), then RNE to the output dtype.
//
// The kernels are memory-bound. They move 16-byte vectors of the float side: a "unit" of 4
// float32 or 8 float16/bfloat16 elements (the quantized side of a unit is 2 to 8 bytes). In a
// grid-stride loop each thread handles 16 elements a step, as 4 (float32) or 2 (16-bit) units
// one grid stride apart, loaded together before any is computed; so every vector access of a
// warp covers 32 consecutive units (fully coalesced) and each thread keeps four (float32)
// 16-byte loads in flight. int4 is packed two per byte (element 2i in the low nibble); units
// start at even elements, so no two threads write the same byte. The last n % U elements, and
// units whose elements use different scales, go element pair by element pair.
//
// Per-tensor quantize has its own fast path (quantize_tensor_*), because it is the one that
// runs on activations at full tensor size and must stream at the memory's rate:
// - Layout: a warp works on steps of 32 x FAST_VECTORS (4) consecutive 16-byte input vectors;
//   lane l takes vectors l, l + 32, l + 64, l + 96 of the step. Every load instruction of the
//   warp then covers 512 contiguous bytes (four full 128-byte lines), and every store 32
//   consecutive units' outputs (128 bytes from float32 to int8 / e4m3, 256 from 16-bit). The
//   alternative, 4 contiguous vectors per lane and one 16-byte store, makes each load
//   instruction touch every 128-byte line only a quarter, and the output traffic is a fifth of
//   the input's: the loads are what must be perfect.
// - Bytes in flight: HBM needs ~40+ KB of reads in flight per SM. The steps are a grid-stride
//   loop over a resident grid (4 blocks of 256 threads per SM); each thread keeps a ring of
//   ASYNC_STAGES (3) steps in shared memory, filled with cp.async, so while one step is divided
//   the next two (128 bytes a thread, 128 KB an SM) are in flight without costing registers.
//   A thread reads back only what it copied itself: no barriers.
// - Streaming hints: cp.async.cg bypasses L1; stores are st.global.cs (evict-first in L2).
// - The division stays __fdiv_rn. Its ~10 instructions an element fit the issue budget at full
//   bandwidth; what the old kernel lacked was loads in flight while it divided, which the ring
//   provides. (qlinear's activation quantize, which ran short of issue slots, divides with
//   ScaleQuotient in kernels/qlinear.cuh: x * (1/s) and Markstein's correction, with guards.)
// Variants of the benchmarked conversions stay available for side-by-side timing (suffix _v0:
// the plain grid-stride kernel below; _v1: the next step loaded into registers instead).
//
// Scales: per-tensor (one value, read once per thread), per-channel (1-D, index
// (i / inner) % extent) or block-wise (with t = i / inner, index
// ((t / extent) * ceil(extent / block) + (t % extent) / block) * inner + i % inner: ONNX's,
// where block need not divide extent and a row's last block may be shorter). A scale is
// float32, float16 or bfloat16 (scaleKind 0/1/2), decoded exactly to float32. Scale indices
// are stepped incrementally: the loops do no integer division.
//
// Kernel names: <op>_<mode>_<in>_<out>, e.g. quantize_tensor_f32_i8, dequantize_block_i4_f32.
// Every kernel takes
//   (void* out, const void* in, const void* scale, int scaleKind,
//    long long n, long long inner, long long extent, long long block)
// and runs with 256 threads a block; quantize_tensor_* (not _v0 / _v1) also takes
// ASYNC_STAGES x FAST_VECTORS x 16 bytes of dynamic shared memory a thread (48 KB a block).

#include "common.cuh"
#include "fp8.cuh"

// Elements a thread handles per grid-stride step.
#define CHUNK 16

// Scalar conversions come from common.cuh (f16BitsToFloat, bf16BitsToFloat) and fp8.cuh
// (floatToE4m3Soft, e4m3x2Saturated, e4m3Canonical, e4m3x2ToFloats).

// ---------------------------------------------------------------------------------------------
// Scales (loadScale: common.cuh)

// Scale-index walkers. pos(i) is the position of flat element i; next(p) steps one element;
// add(p, d) steps p by the offset whose position (from 0) is d; run(p) is a lower bound (at
// least 1) on how many elements from p on share p's scale.

struct TensorMode {
  static constexpr bool perTensor = true;
  struct Pos {};
  __device__ TensorMode(i64, i64, i64) {}
  __device__ Pos pos(i64) const { return Pos{}; }
  __device__ void next(Pos&) const {}
  __device__ void add(Pos&, const Pos&) const {}
  __device__ i64 index(const Pos&) const { return 0; }
};

// Per-channel: index = (i / inner) % extent.
struct ChannelMode {
  static constexpr bool perTensor = false;
  struct Pos {
    i64 in;  // i % inner
    i64 c;   // (i / inner) % extent
  };
  i64 inner, extent;
  __device__ ChannelMode(i64 inner_, i64 extent_, i64) : inner(inner_), extent(extent_) {}
  __device__ Pos pos(i64 i) const {
    const i64 t = i / inner;
    return Pos{i - t * inner, t % extent};
  }
  __device__ void next(Pos& p) const {
    if (++p.in == inner) {
      p.in = 0;
      if (++p.c == extent) p.c = 0;
    }
  }
  __device__ void add(Pos& p, const Pos& d) const {
    p.in += d.in;
    i64 carry = 0;
    if (p.in >= inner) {
      p.in -= inner;
      carry = 1;
    }
    p.c += d.c + carry;  // < 2 * extent
    if (p.c >= extent) p.c -= extent;
  }
  __device__ i64 index(const Pos& p) const { return p.c; }
  __device__ i64 run(const Pos& p) const { return inner - p.in; }
};

// Block-wise along dim (ONNX opset 21): with t = i / inner, o = t / extent (the outer index)
// and d = t % extent (the position along dim), index = (o * blocks + d / block) * inner +
// i % inner, blocks = ceil(extent / block). The last block of each row may be shorter than
// block (block need not divide extent), so the walker carries d and starts the blocks again
// at every row; it does no integer division after pos(). The positions along dim are 32-bit
// (the host checks extent < 2^31 and passes block <= extent), which keeps the walker in
// registers.
struct BlockMode {
  static constexpr bool perTensor = false;
  struct Pos {
    i64 in;      // i % inner
    i64 row;     // o * blocks + d / block: the scale row
    unsigned d;  // t % extent
    unsigned r;  // d % block
  };
  i64 inner;
  unsigned extent, block;
  unsigned part;  // extent % block: the width of a short last block (0: none)
  __device__ BlockMode(i64 inner_, i64 extent_, i64 block_)
      : inner(inner_),
        extent((unsigned)extent_),
        block((unsigned)block_),
        part((unsigned)(extent_ % block_)) {}
  __device__ Pos pos(i64 i) const {
    const i64 t = i / inner;
    const i64 o = t / extent;
    const unsigned d = (unsigned)(t - o * extent);
    const unsigned b = d / block;
    const i64 blocks = extent / block + (part > 0 ? 1 : 0);
    return Pos{i - t * inner, o * blocks + b, d, d - b * block};
  }
  __device__ void next(Pos& p) const {
    if (++p.in == inner) {
      p.in = 0;
      ++p.d;
      // The end of the row starts the next row's first block, as the end of a block does.
      if (++p.r == block || p.d == extent) {
        p.r = 0;
        ++p.row;
        if (p.d == extent) p.d = 0;
      }
    }
  }
  // p + the offset whose position is dp (dp.d < extent: one row wrap at most).
  __device__ void add(Pos& p, const Pos& dp) const {
    p.in += dp.in;
    unsigned carry = 0;
    if (p.in >= inner) {
      p.in -= inner;
      carry = 1;
    }
    p.row += dp.row;
    p.d += dp.d + carry;  // < 2 * extent < 2^32
    p.r += dp.r + carry;  // < 2 * block
    if (p.r >= block) {
      p.r -= block;
      ++p.row;
    }
    if (p.d >= extent) {
      // Into the next row at d - extent: with extent = whole * block + part, its block is
      // whole blocks on from the one d - extent would be in this row, at r - part.
      p.d -= extent;
      if (part > 0) {
        if (p.r >= part) {
          p.r -= part;
          ++p.row;
        } else {
          p.r += block - part;
        }
      }
    }
  }
  __device__ i64 index(const Pos& p) const { return p.row * inner + p.in; }
  // With inner > 1 the index moves with every element; with inner = 1 it holds to the end of
  // the block or of the row (a short last block), whichever comes first.
  __device__ i64 run(const Pos& p) const {
    return inner == 1 ? (i64)min(block - p.r, extent - p.d) : 1;
  }
};

// ---------------------------------------------------------------------------------------------
// Element types. Memory is accessed in "units" of U consecutive elements, U chosen so that a
// unit of the float side is one 16-byte vector: U = 4 for float32, 8 for float16/bfloat16.
// load<U>(base, u, v) reads unit u as U exact floats; store<U>(base, u, v) writes unit u from U
// floats (float types: one RNE rounding each; quantized types: encoding the quotients).
// loadPair/storePair handle elements i and i + 1 (i even; `two` false when i + 1 is past the
// end).

struct F32 {
  static constexpr int U = 4;
  template <int N>
  __device__ static void load(const void* __restrict__ base, i64 u, float* v) {
    static_assert(N == U, "float32 units are 4 elements");
    const float4 a = __ldg(static_cast<const float4*>(base) + u);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
  }
  template <int N>
  __device__ static void store(void* __restrict__ base, i64 u, const float* v) {
    static_assert(N == U, "float32 units are 4 elements");
    static_cast<float4*>(base)[u] = make_float4(v[0], v[1], v[2], v[3]);
  }
  __device__ static float2 loadPair(const void* __restrict__ base, i64 i, bool two) {
    const float* p = static_cast<const float*>(base) + i;
    return make_float2(p[0], two ? p[1] : 0.0f);
  }
  __device__ static void storePair(void* __restrict__ base, i64 i, float2 v, bool two) {
    float* p = static_cast<float*>(base) + i;
    p[0] = v.x;
    if (two) p[1] = v.y;
  }
};

// float16 and bfloat16: a unit is one uint4 of 8 packed halves. one() and pack() come from
// Half16Base (common.cuh); load and store here move whole units.
template <bool Bf16>
struct Half16 : Half16Base<Bf16> {
  using Base = Half16Base<Bf16>;
  static constexpr int U = 8;
  // Two outputs -> one word, NaN written as the CPU backend and ONNX Runtime write it (0x7e00,
  // 0x7fc0) rather than the conversion instruction's 0x7fff (only fp8 codes dequantize to NaN).
  __device__ static unsigned pack(float a, float b) {
    constexpr unsigned nan = Bf16 ? 0x7fc0u : 0x7e00u;
    const unsigned w = Base::pack(a, b);
    const unsigned lo = a != a ? nan : (w & 0xffffu);
    const unsigned hi = b != b ? nan : (w >> 16);
    return lo | (hi << 16);
  }
  template <int N>
  __device__ static void load(const void* __restrict__ base, i64 u, float* v) {
    static_assert(N == U, "16-bit float units are 8 elements");
    const uint4 a = __ldg(static_cast<const uint4*>(base) + u);
    const unsigned w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
      v[2 * k] = Base::one((unsigned short)(w[k] & 0xffffu));
      v[2 * k + 1] = Base::one((unsigned short)(w[k] >> 16));
    }
  }
  template <int N>
  __device__ static void store(void* __restrict__ base, i64 u, const float* v) {
    static_assert(N == U, "16-bit float units are 8 elements");
    static_cast<uint4*>(base)[u] = make_uint4(pack(v[0], v[1]), pack(v[2], v[3]),
                                              pack(v[4], v[5]), pack(v[6], v[7]));
  }
  __device__ static float2 loadPair(const void* __restrict__ base, i64 i, bool two) {
    const unsigned short* p = static_cast<const unsigned short*>(base) + i;
    return make_float2(Base::one(p[0]), two ? Base::one(p[1]) : 0.0f);
  }
  __device__ static void storePair(void* __restrict__ base, i64 i, float2 v, bool two) {
    unsigned short* p = static_cast<unsigned short*>(base) + i;
    const unsigned w = pack(v.x, v.y);
    p[0] = (unsigned short)(w & 0xffffu);
    if (two) p[1] = (unsigned short)(w >> 16);
  }
};
typedef Half16<false> F16;
typedef Half16<true> BF16;

// Round half to even, saturate to [lo, hi]; NaN -> 0 (cvt.rni.s32.f32 maps NaN to 0 and
// saturates +-Inf to the int32 range).
template <int Lo, int Hi>
__device__ __forceinline__ unsigned roundSat(float q) {
  return (unsigned)min(max(__float2int_rn(q), Lo), Hi);
}

// One-byte codes (int8, float8e4m3): a unit is U bytes (a 32-bit word for U = 4, two for
// U = 8), encoded and decoded four at a time by C::pack4 and C::unpack4.
template <class C>
struct ByteUnits {
  template <int U>
  __device__ static void store(void* __restrict__ base, i64 u, const float* q) {
    if constexpr (U == 4) {
      static_cast<unsigned*>(base)[u] = C::pack4(q);
    } else {
      static_cast<uint2*>(base)[u] = make_uint2(C::pack4(q), C::pack4(q + 4));
    }
  }
  template <int U>
  __device__ static void load(const void* __restrict__ base, i64 u, float* v) {
    if constexpr (U == 4) {
      C::unpack4(__ldg(static_cast<const unsigned*>(base) + u), v);
    } else {
      const uint2 w = __ldg(static_cast<const uint2*>(base) + u);
      C::unpack4(w.x, v);
      C::unpack4(w.y, v + 4);
    }
  }
};

// int8.
struct I8 : ByteUnits<I8> {
  __device__ static unsigned pack4(const float* q) {
    return (roundSat<-128, 127>(q[0]) & 0xffu) | ((roundSat<-128, 127>(q[1]) & 0xffu) << 8) |
           ((roundSat<-128, 127>(q[2]) & 0xffu) << 16) | (roundSat<-128, 127>(q[3]) << 24);
  }
  __device__ static float one(unsigned w, int k) { return (float)((int)(w << (24 - 8 * k)) >> 24); }
  __device__ static void unpack4(unsigned w, float* v) {
#pragma unroll
    for (int k = 0; k < 4; k++) v[k] = one(w, k);
  }
  __device__ static float2 loadPair(const void* __restrict__ base, i64 i, bool two) {
    const signed char* p = static_cast<const signed char*>(base) + i;
    return make_float2((float)p[0], two ? (float)p[1] : 0.0f);
  }
  __device__ static void storePair(void* __restrict__ base, i64 i, float2 q, bool two) {
    signed char* p = static_cast<signed char*>(base) + i;
    p[0] = (signed char)roundSat<-128, 127>(q.x);
    if (two) p[1] = (signed char)roundSat<-128, 127>(q.y);
  }
};

// Packed int4: element k of a unit is nibble k of its U / 2 bytes (little endian), so element
// 2i is the low nibble of byte i. Units start at even elements: no byte is shared.
struct I4 {
  template <int U>
  __device__ static unsigned pack(const float* q) {
    unsigned w = 0;
#pragma unroll
    for (int k = 0; k < U; k++) w |= (roundSat<-8, 7>(q[k]) & 0xfu) << (4 * k);
    return w;
  }
  __device__ static float one(unsigned w, int k) { return (float)((int)(w << (28 - 4 * k)) >> 28); }
  template <int U>
  __device__ static void store(void* __restrict__ base, i64 u, const float* q) {
    if constexpr (U == 4) {
      static_cast<unsigned short*>(base)[u] = (unsigned short)pack<4>(q);
    } else {
      static_cast<unsigned*>(base)[u] = pack<8>(q);
    }
  }
  template <int U>
  __device__ static void load(const void* __restrict__ base, i64 u, float* v) {
    unsigned w;
    if constexpr (U == 4) {
      w = __ldg(static_cast<const unsigned short*>(base) + u);
    } else {
      w = __ldg(static_cast<const unsigned*>(base) + u);
    }
#pragma unroll
    for (int k = 0; k < U; k++) v[k] = one(w, k);
  }
  __device__ static float2 loadPair(const void* __restrict__ base, i64 i, bool two) {
    const unsigned byte = static_cast<const unsigned char*>(base)[i / 2];
    return make_float2(one(byte, 0), two ? one(byte, 1) : 0.0f);
  }
  // An odd count pads the last byte's high nibble with 0.
  __device__ static void storePair(void* __restrict__ base, i64 i, float2 q, bool two) {
    const unsigned lo = roundSat<-8, 7>(q.x) & 0xfu;
    const unsigned hi = two ? roundSat<-8, 7>(q.y) & 0xfu : 0u;
    static_cast<unsigned char*>(base)[i / 2] = (unsigned char)(lo | (hi << 4));
  }
};

// float8e4m3.
struct FP8 : ByteUnits<FP8> {
  __device__ static unsigned pack4(const float* q) {
    return e4m3Canonical(e4m3x2Saturated(q[0], q[1]) | (e4m3x2Saturated(q[2], q[3]) << 16));
  }
  __device__ static void unpack4(unsigned w, float* v) {
    const float2 a = e4m3x2ToFloats(w), b = e4m3x2ToFloats(w >> 16);
    v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
  }
  __device__ static float2 loadPair(const void* __restrict__ base, i64 i, bool two) {
    const unsigned char* p = static_cast<const unsigned char*>(base) + i;
    const float2 f = e4m3x2ToFloats(p[0] | (two ? (unsigned)p[1] << 8 : 0u));
    return make_float2(f.x, two ? f.y : 0.0f);
  }
  __device__ static void storePair(void* __restrict__ base, i64 i, float2 q, bool two) {
    unsigned char* p = static_cast<unsigned char*>(base) + i;
    const unsigned w = e4m3Canonical(e4m3x2Saturated(q.x, q.y));
    p[0] = (unsigned char)(w & 0xffu);
    if (two) p[1] = (unsigned char)(w >> 8);
  }
};

// ---------------------------------------------------------------------------------------------
// The kernel body, shared by quantize (In: a float type, Out: a quantized type, division) and
// dequantize (In: a quantized type, Out: a float type, multiplication).

// The float-side type of an op: In for quantize, Out for dequantize.
template <bool Quantize, class In, class Out>
struct FloatSide {
  typedef In type;
};
template <class In, class Out>
struct FloatSide<false, In, Out> {
  typedef Out type;
};

// A float32 NaN as the CPU backend (and ONNX Runtime) writes it, 0x7fc00000, rather than the
// GPU arithmetic's 0x7fffffff; other values unchanged. Integer operations, so that the compiler
// keeps the payload.
__device__ __forceinline__ float quietNan(float v) {
  const unsigned b = __float_as_uint(v);
  return __uint_as_float((b & 0x7fffffffu) > 0x7f800000u ? 0x7fc00000u : b);
}

// x / s (quantize) or q * s (dequantize). Dequantized e4m3fn NaN codes (0x7f, 0xff) give
// 0x7fc00000, so that float32 outputs equal the CPU's bit for bit (int8 / int4 codes and the
// checked scales make no NaN).
template <bool Quantize, class In>
__device__ __forceinline__ float apply(float v, float s) {
  if constexpr (Quantize) {
    return __fdiv_rn(v, s);
  } else if constexpr (std::is_same<In, FP8>::value) {
    return quietNan(__fmul_rn(v, s));
  } else {
    return __fmul_rn(v, s);
  }
}

// Elements [start, start + count) pair by pair, p at start: the tail, and units whose elements
// use several scales.
template <bool Quantize, class Mode, class In, class Out>
__device__ __noinline__ void runPairs(void* __restrict__ out, const void* __restrict__ in,
                                      const void* __restrict__ scale, int scaleKind, Mode mode,
                                      typename Mode::Pos p, i64 start, int count) {
#pragma unroll 1
  for (int j = 0; j < count; j += 2) {
    const bool two = j + 1 < count;
    float2 v = In::loadPair(in, start + j, two);
    v.x = apply<Quantize, In>(v.x, loadScale(scale, scaleKind, mode.index(p)));
    mode.next(p);
    // Past the end the scale index may be out of range: not read, and the value stays 0.
    if (two) v.y = apply<Quantize, In>(v.y, loadScale(scale, scaleKind, mode.index(p)));
    mode.next(p);
    Out::storePair(out, start + j, v, two);
  }
}

// Units u, u + threads, ..., u + (K - 1) threads into v (U values each; zeros for units past
// the end), all K loads issued first so that they are in flight together.
template <class In, int U, int K>
__device__ __forceinline__ void loadUnits(const void* __restrict__ in, i64 u, i64 threads,
                                          i64 units, float* v) {
#pragma unroll
  for (int k = 0; k < K; k++) {
    if (u + k * threads < units) {
      In::template load<U>(in, u + k * threads, v + k * U);
    } else {
#pragma unroll
      for (int j = 0; j < U; j++) v[k * U + j] = 0.0f;
    }
  }
}

template <bool Quantize, class Mode, class In, class Out>
__device__ __forceinline__ void run(void* __restrict__ out, const void* __restrict__ in,
                                    const void* __restrict__ scale, int scaleKind, i64 n,
                                    i64 inner, i64 extent, i64 block) {
  // A unit is one 16-byte vector of the float side; a thread takes K units a step, one grid
  // stride apart, so each vector access of a warp covers 32 consecutive units.
  constexpr int U = FloatSide<Quantize, In, Out>::type::U;
  constexpr int K = CHUNK / U;
  const Mode mode(inner, extent, block);
  const i64 units = n / U;
  const int rest = (int)(n - units * U);
  const i64 first = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const i64 threads = (i64)gridDim.x * blockDim.x;
  float v[CHUNK];
  if constexpr (Mode::perTensor) {
    const float s = loadScale(scale, scaleKind, 0);
    for (i64 u = first; u < units; u += K * threads) {
      loadUnits<In, U, K>(in, u, threads, units, v);
#pragma unroll
      for (int j = 0; j < CHUNK; j++) v[j] = apply<Quantize, In>(v[j], s);
#pragma unroll
      for (int k = 0; k < K; k++) {
        if (u + k * threads < units) Out::template store<U>(out, u + k * threads, v + k * U);
      }
    }
  } else {
    // The scale position of this thread's next unit, and the step of one grid stride (K of
    // them make a step of the loop).
    typename Mode::Pos p = mode.pos(first * U);
    const typename Mode::Pos step = mode.pos(threads * U);
    for (i64 u = first; u < units; u += K * threads) {
      loadUnits<In, U, K>(in, u, threads, units, v);
#pragma unroll
      for (int k = 0; k < K; k++) {
        const i64 uk = u + k * threads;
        if (uk < units) {
          if (mode.run(p) >= U) {
            // One scale for the whole unit (per-channel with a long inner extent, block-wise
            // along the last dim): the vector path.
            const float s = loadScale(scale, scaleKind, mode.index(p));
#pragma unroll
            for (int j = 0; j < U; j++) v[k * U + j] = apply<Quantize, In>(v[k * U + j], s);
            Out::template store<U>(out, uk, v + k * U);
          } else {
            runPairs<Quantize, Mode, In, Out>(out, in, scale, scaleKind, mode, p, uk * U, U);
          }
        }
        mode.add(p, step);
      }
    }
  }
  if (rest > 0 && first == threads - 1) {
    runPairs<Quantize, Mode, In, Out>(out, in, scale, scaleKind, mode, mode.pos(units * U),
                                      units * U, rest);
  }
}

// ---------------------------------------------------------------------------------------------
// Per-tensor quantize: the fast path (layout in the note at the top of this file).

// Streaming accesses: the input is read once (no L1 allocation; volatile keeps the next
// step's loads ahead of this step's divisions), the output written once (evict-first in L2, so
// it does not push out lines still to be read; nothing in the kernel reads it back).
__device__ __forceinline__ uint4 ldStream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ void stStream(unsigned short* p, unsigned v) {
  asm volatile("st.global.cs.u16 [%0], %1;" ::"l"(p), "h"((unsigned short)v));
}
__device__ __forceinline__ void stStream(unsigned* p, unsigned v) {
  asm volatile("st.global.cs.u32 [%0], %1;" ::"l"(p), "r"(v));
}
__device__ __forceinline__ void stStream(uint2* p, uint2 v) {
  asm volatile("st.global.cs.v2.u32 [%0], {%1, %2};" ::"l"(p), "r"(v.x), "r"(v.y));
}

// The U elements of a 16-byte input vector as floats (exact).
__device__ __forceinline__ void unpackVector(const F32&, const uint4& w, float* v) {
  v[0] = __uint_as_float(w.x), v[1] = __uint_as_float(w.y);
  v[2] = __uint_as_float(w.z), v[3] = __uint_as_float(w.w);
}
template <bool Bf16>
__device__ __forceinline__ void unpackVector(const Half16<Bf16>&, const uint4& w, float* v) {
  const unsigned u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int k = 0; k < 4; k++) {
    v[2 * k] = Half16<Bf16>::one((unsigned short)(u[k] & 0xffffu));
    v[2 * k + 1] = Half16<Bf16>::one((unsigned short)(u[k] >> 16));
  }
}

// Unit u's U quotients, encoded, with one streaming store (U / 2 to U bytes).
template <int U, class C>
__device__ __forceinline__ void storeStream(const ByteUnits<C>&, void* out, i64 u,
                                            const float* q) {
  if constexpr (U == 4) {
    stStream(static_cast<unsigned*>(out) + u, C::pack4(q));
  } else {
    stStream(static_cast<uint2*>(out) + u, make_uint2(C::pack4(q), C::pack4(q + 4)));
  }
}
template <int U>
__device__ __forceinline__ void storeStream(const I4&, void* out, i64 u, const float* q) {
  if constexpr (U == 4) {
    stStream(static_cast<unsigned short*>(out) + u, I4::pack<4>(q));
  } else {
    stStream(static_cast<unsigned*>(out) + u, I4::pack<8>(q));
  }
}

// 16-byte asynchronous copy global -> shared (L2 only), and its group bookkeeping.
__device__ __forceinline__ void cpAsync16(void* smem, const void* gmem) {
  const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cpAsyncCommit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cpAsyncWait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// The last n % U elements (fewer than one vector), by the grid's last thread.
template <class In, class Out>
__device__ __forceinline__ void quantizeTensorTail(void* __restrict__ out,
                                                   const void* __restrict__ in,
                                                   const void* __restrict__ scale,
                                                   int scaleKind, i64 n, i64 done) {
  const int rest = (int)(n - done);
  if (rest > 0 && blockIdx.x == gridDim.x - 1 && threadIdx.x == blockDim.x - 1) {
    const TensorMode mode(1, 1, 1);
    runPairs<true, TensorMode, In, Out>(out, in, scale, scaleKind, mode, mode.pos(done), done,
                                        rest);
  }
}

// Vectors a lane loads per step.
#define FAST_VECTORS 4
// Steps a thread's shared-memory ring holds (the default kernel): ASYNC_STAGES - 1 in flight.
#define ASYNC_STAGES 3

// Variant v1: the next step's vectors are loaded into registers while this step's are divided.
template <class In, class Out>
__device__ __forceinline__ void quantizeTensorPipelined(void* __restrict__ out,
                                                        const void* __restrict__ in,
                                                        const void* __restrict__ scale,
                                                        int scaleKind, i64 n) {
  constexpr int U = In::U;
  constexpr int V = FAST_VECTORS;
  const float s = loadScale(scale, scaleKind, 0);
  const i64 units = n / U;
  const int lane = threadIdx.x & 31;
  const i64 warp = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const i64 stride = (((i64)gridDim.x * blockDim.x) >> 5) * (32 * V);  // vectors per grid step
  const uint4* src = static_cast<const uint4*>(in);
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  // Vector v of this lane's step at `first` is first + 32 v: each load instruction of the warp
  // reads 512 contiguous bytes.
  i64 first = warp * (32 * V) + lane;
  uint4 cur[V];
#pragma unroll
  for (int v = 0; v < V; v++) {
    cur[v] = first + 32 * v < units ? ldStream(src + first + 32 * v) : zero;
  }
  for (; first < units; first += stride) {
    // The next step's loads go out before this step's divisions.
    uint4 next[V];
    const i64 after = first + stride;
#pragma unroll
    for (int v = 0; v < V; v++) {
      next[v] = after + 32 * v < units ? ldStream(src + after + 32 * v) : zero;
    }
#pragma unroll
    for (int v = 0; v < V; v++) {
      const i64 u = first + 32 * v;
      if (u < units) {
        float q[U];
        unpackVector(In{}, cur[v], q);
#pragma unroll
        for (int j = 0; j < U; j++) q[j] = __fdiv_rn(q[j], s);
        storeStream<U>(Out{}, out, u, q);
      }
    }
#pragma unroll
    for (int v = 0; v < V; v++) cur[v] = next[v];
  }
  quantizeTensorTail<In, Out>(out, in, scale, scaleKind, n, units * U);
}

// The default: a ring of ASYNC_STAGES steps in shared memory filled by cp.async, so that the
// steps in flight cost no registers. Each thread reads back only the vectors it copied itself
// (cp.async.wait_group makes them visible to it), so no barrier is needed.
template <class In, class Out>
__device__ __forceinline__ void quantizeTensorAsync(void* __restrict__ out,
                                                    const void* __restrict__ in,
                                                    const void* __restrict__ scale,
                                                    int scaleKind, i64 n) {
  constexpr int U = In::U;
  constexpr int V = FAST_VECTORS;
  constexpr int S = ASYNC_STAGES;
  extern __shared__ uint4 ring[];  // [S][V][blockDim.x]
  const float s = loadScale(scale, scaleKind, 0);
  const i64 units = n / U;
  const int lane = threadIdx.x & 31;
  const int threads = blockDim.x, tid = threadIdx.x;
  const i64 warp = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const i64 stride = (((i64)gridDim.x * blockDim.x) >> 5) * (32 * V);
  const uint4* src = static_cast<const uint4*>(in);
  // One commit group per step (empty past the end, which keeps the group count uniform).
  auto issue = [&](i64 at, int slot) {
#pragma unroll
    for (int v = 0; v < V; v++) {
      if (at + 32 * v < units) cpAsync16(&ring[(slot * V + v) * threads + tid], src + at + 32 * v);
    }
    cpAsyncCommit();
  };
  i64 first = warp * (32 * V) + lane;
#pragma unroll
  for (int k = 0; k < S - 1; k++) issue(first + k * stride, k);
  int slot = 0;
  for (; first < units; first += stride) {
    // Refill the slot read in the previous step (its values are already in registers and
    // used), then wait for this step's group: S - 1 newer groups may stay in flight.
    issue(first + (S - 1) * stride, slot == 0 ? S - 1 : slot - 1);
    cpAsyncWait<S - 1>();
    uint4 w[V];
#pragma unroll
    for (int v = 0; v < V; v++) w[v] = ring[(slot * V + v) * threads + tid];
#pragma unroll
    for (int v = 0; v < V; v++) {
      const i64 u = first + 32 * v;
      if (u < units) {
        float q[U];
        unpackVector(In{}, w[v], q);
#pragma unroll
        for (int j = 0; j < U; j++) q[j] = __fdiv_rn(q[j], s);
        storeStream<U>(Out{}, out, u, q);
      }
    }
    slot = slot + 1 == S ? 0 : slot + 1;
  }
  cpAsyncWait<0>();
  quantizeTensorTail<In, Out>(out, in, scale, scaleKind, n, units * U);
}

// ---------------------------------------------------------------------------------------------
// Entry points. __launch_bounds__ caps the registers so that MIN_BLOCKS blocks of 256 threads
// fit on an SM; the host launches one resident wave of that many blocks per SM
// (lib/backends/cuda/quantize.ts keeps the same numbers): per-tensor quantize 4 (their 48 KB
// shared-memory rings: 192 KB an SM; the _v1 variants by registers; the _v0 ones 5, as the
// division's slow path needs registers), per-tensor dequantize 8 (6 from fp8, whose portable
// software decoding needs more), per-channel and block-wise 3 (their scale walkers). No
// kernel spills, and even 3 blocks keep 48 KB of loads in flight per SM.

#define QUANT_PARAMS                                                                      \
  (void* __restrict__ out, const void* __restrict__ in, const void* __restrict__ scale, \
   int scaleKind, i64 n, i64 inner, i64 extent, i64 block)

#define QUANT_KERNEL(NAME, Q, MODE, IN, OUT, MIN_BLOCKS)                                \
  extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS) NAME QUANT_PARAMS {     \
    run<Q, MODE, IN, OUT>(out, in, scale, scaleKind, n, inner, extent, block);          \
  }

#define Q_TENSOR(IN_NAME, IN, OUT_NAME, OUT)                                       \
  extern "C" __global__ void __launch_bounds__(256, 4)                               \
      quantize_tensor_##IN_NAME##_##OUT_NAME QUANT_PARAMS {                          \
    quantizeTensorAsync<IN, OUT>(out, in, scale, scaleKind, n);                      \
  }
// Other per-tensor quantize kernels of the benchmarked conversions, for side-by-side timing
// (bench/gpu_quantize.ts --variants): v0 the grid-stride kernel the fast path replaced, v1 the
// register-pipelined fast path.
#define Q_TENSOR_VARIANTS(IN_NAME, IN, OUT_NAME, OUT)                                   \
  QUANT_KERNEL(quantize_tensor_##IN_NAME##_##OUT_NAME##_v0, true, TensorMode, IN, OUT, 5) \
  extern "C" __global__ void __launch_bounds__(256, 4)                                  \
      quantize_tensor_##IN_NAME##_##OUT_NAME##_v1 QUANT_PARAMS {                        \
    quantizeTensorPipelined<IN, OUT>(out, in, scale, scaleKind, n);                     \
  }
#define Q_CHANNEL(IN_NAME, IN, OUT_NAME, OUT) \
  QUANT_KERNEL(quantize_channel_##IN_NAME##_##OUT_NAME, true, ChannelMode, IN, OUT, 3)
#define Q_BLOCK(IN_NAME, IN, OUT_NAME, OUT) \
  QUANT_KERNEL(quantize_block_##IN_NAME##_##OUT_NAME, true, BlockMode, IN, OUT, 3)
#define DQ_TENSOR(IN_NAME, IN, OUT_NAME, OUT) \
  QUANT_KERNEL(dequantize_tensor_##IN_NAME##_##OUT_NAME, false, TensorMode, IN, OUT, 8)
#define DQ_TENSOR_FP8(OUT_NAME, OUT) \
  QUANT_KERNEL(dequantize_tensor_fp8_##OUT_NAME, false, TensorMode, FP8, OUT, 6)
#define DQ_CHANNEL(IN_NAME, IN, OUT_NAME, OUT) \
  QUANT_KERNEL(dequantize_channel_##IN_NAME##_##OUT_NAME, false, ChannelMode, IN, OUT, 3)
#define DQ_BLOCK(IN_NAME, IN, OUT_NAME, OUT) \
  QUANT_KERNEL(dequantize_block_##IN_NAME##_##OUT_NAME, false, BlockMode, IN, OUT, 3)

// Block-wise float8e4m3 is rejected by the op, so fp8 has tensor and channel kernels only.
#define QUANT_FLOAT(F_NAME, F)                                           \
  Q_TENSOR(F_NAME, F, i8, I8) Q_CHANNEL(F_NAME, F, i8, I8) Q_BLOCK(F_NAME, F, i8, I8)       \
  Q_TENSOR(F_NAME, F, i4, I4) Q_CHANNEL(F_NAME, F, i4, I4) Q_BLOCK(F_NAME, F, i4, I4)       \
  Q_TENSOR(F_NAME, F, fp8, FP8) Q_CHANNEL(F_NAME, F, fp8, FP8)                              \
  DQ_TENSOR(i8, I8, F_NAME, F) DQ_CHANNEL(i8, I8, F_NAME, F) DQ_BLOCK(i8, I8, F_NAME, F)    \
  DQ_TENSOR(i4, I4, F_NAME, F) DQ_CHANNEL(i4, I4, F_NAME, F) DQ_BLOCK(i4, I4, F_NAME, F)    \
  DQ_TENSOR_FP8(F_NAME, F) DQ_CHANNEL(fp8, FP8, F_NAME, F)

QUANT_FLOAT(f32, F32)
QUANT_FLOAT(f16, F16)
QUANT_FLOAT(bf16, BF16)
Q_TENSOR_VARIANTS(f32, F32, i8, I8)
Q_TENSOR_VARIANTS(f32, F32, fp8, FP8)
Q_TENSOR_VARIANTS(bf16, BF16, fp8, FP8)

// ---------------------------------------------------------------------------------------------
// check_scale (op checkScale, rule in lib/ops/quantize.ts): a scale computed in the graph,
// copied through bit for bit, with the smallest flat index of a value that is not positive and
// finite recorded in `flag` (unless an earlier launch recorded one) for the host to raise at its
// next read (lib/backends/cuda/deferred_checks.ts). One block of 1024 threads: scales are small.
// scaleKind as for the quantize kernels (0 float32, 1 float16, 2 bfloat16).

struct ScaleFlag {
  long long pos;  // -1: nothing recorded
  float value;
  int unused;
};

extern "C" __global__ void __launch_bounds__(1024) check_scale(void* __restrict__ out,
                                                               const void* __restrict__ in,
                                                               int scaleKind, i64 n,
                                                               ScaleFlag* __restrict__ flag) {
  constexpr long long NONE = 0x7fffffffffffffffLL;
  long long bad = NONE;
  for (i64 i = threadIdx.x; i < n; i += blockDim.x) {
    if (scaleKind == 0) {
      static_cast<unsigned*>(out)[i] = static_cast<const unsigned*>(in)[i];
    } else {
      static_cast<unsigned short*>(out)[i] = static_cast<const unsigned short*>(in)[i];
    }
    const float v = loadScale(in, scaleKind, i);
    if (!(v > 0.0f && v <= 0x1.fffffep127f) && i < bad) bad = i;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) bad = min(bad, __shfl_down_sync(0xffffffffu, bad, o));
  __shared__ long long warpBad[32];
  if ((threadIdx.x & 31) == 0) warpBad[threadIdx.x >> 5] = bad;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (int)(blockDim.x + 31) / 32; w++) bad = min(bad, warpBad[w]);
    if (bad != NONE && flag->pos < 0) {
      flag->pos = bad;
      flag->value = loadScale(in, scaleKind, bad);
    }
  }
}
