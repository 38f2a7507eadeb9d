// Elementwise kernels: binary arithmetic and comparisons with broadcasting, unary math and
// activations, where, and cast between every dtype. The math matches the CPU backend
// (lib/backends/cpu/elementwise.ts, lib/dtype.ts `encode`):
//  - float32/float16/bfloat16 compute in float32 and round once to the output (RNE). For
//    + - * / sqrt that single float32 rounding followed by RNE to float16/bfloat16 equals the
//    CPU's one rounding from float64 (24 >= 2p + 2 bits). rsqrt runs in double like the CPU.
//  - Integers wrap (computed in the unsigned type), divide truncating, x / 0 = 0.
//  - NaN results on float16/bfloat16/float8e4m3 use the CPU's NaN patterns.
//
// Kernel families (names are `<op>_<dtype>`, e.g. add_f32, cast_f16_i8):
//  <op>_<t>(out, a, b, n)                 both inputs have the output's element count
//  <op>_<t>_scalar(out, x, s, n, first)   s is one element; first != 0 computes op(s, x)
//  <op>_<t>_bcast(out, a, b, n, rank, dims[8], a strides[8], b strides[8])
//  compare_<t>[_scalar|_bcast](..., mask)  the six comparisons (see OpCompare)
//  <op>_<t>(out, x, n)                    unary ops
//  cast_<from>_<to>(out, x, n)
//  where_b{8,16,32,64}(out, cond, a, b, n) and _bcast; where_i4 (packed int4, strided form)
// Strided forms take the collapsed output shape innermost first, with per-input element
// strides (0 on broadcast dims); unused dims are 1 with stride 0.

#include "common.cuh"

template <class A, class B>
struct is_same {
  static constexpr bool value = false;
};
template <class A>
struct is_same<A, A> {
  static constexpr bool value = true;
};

#define BLOCK 256

// ---------------------------------------------------------------------------------------------
// Scalar conversions.

// Canonical NaN bit patterns of the CPU encoders.
#define F32_NAN __uint_as_float(0x7fc00000u)
#define F16_NAN ((unsigned short)0x7e00)
#define BF16_NAN ((unsigned short)0x7fc0)
#define F8_NAN ((unsigned char)0x7f)

// float -> OCP e4m3fn with RNE, saturating to +-448 (Inf included); NaN -> 0x7f.
__device__ __forceinline__ unsigned char float_to_e4m3(float x) {
  const unsigned char sign = (unsigned char)((__float_as_uint(x) >> 24) & 0x80u);
  const float a = fabsf(x);
  if (a != a) return F8_NAN;
  if (a >= 448.0f) return sign | 0x7e;
  if (a < 0.015625f) {
    // Below 2^-6 the grid is 2^-9; a result of 8 is the smallest normal, encoded as 8.
    return sign | (unsigned char)rintf(a * 512.0f);
  }
  const int e = (int)((__float_as_uint(a) >> 23) & 0xffu) - 127;  // -6..8
  // Scaling by 2^(3-e) is exact; q in [8, 16] carries into the exponent by plain addition.
  const int q = (int)rintf(a * __uint_as_float((unsigned)(130 - e) << 23));
  return sign | (unsigned char)((e + 6) * 8 + q);
}

__device__ __forceinline__ float e4m3_to_float(unsigned char b) {
  if ((b & 0x7f) == 0x7f) return F32_NAN;
  const unsigned e = (b >> 3) & 0xf, m = b & 7;
  // Subnormals are m * 2^-9; normals rebias the exponent from 7 to 127.
  const float mag =
      e == 0 ? (float)m * 0.001953125f : __uint_as_float(((e + 120) << 23) | (m << 20));
  return __uint_as_float(__float_as_uint(mag) | ((unsigned)(b & 0x80) << 24));
}

// Round-to-odd into float32: a later RNE to a format of <= 22 bits then rounds exactly once.
__device__ __forceinline__ float odd(float f, bool inexact) {
  return inexact ? __uint_as_float(__float_as_uint(f) | 1u) : f;
}
__device__ __forceinline__ float to_float_odd(int x) {
  const float f = __int2float_rz(x);
  return odd(f, __float2int_rz(f) != x);
}
__device__ __forceinline__ float to_float_odd(i64 x) {
  const float f = __ll2float_rz(x);
  return odd(f, __float2ll_rz(f) != x);
}
__device__ __forceinline__ float to_float_odd(double d) {
  const float f = __double2float_rz(d);
  return odd(f, d == d && (double)f != d);
}

// ---------------------------------------------------------------------------------------------
// Dtype traits. S: storage element. Floats: load() gives the exact float value, store()
// rounds a float once, store_double() rounds a double once. Integers: load() gives the value
// as Val (int, or i64 for int64); U is the unsigned type used for wrapping arithmetic.
// from_float / from_int implement the cast rules.

struct F32 {
  typedef float S;
  static constexpr bool kFloat = true;
  static __device__ __forceinline__ float load(S s) { return s; }
  static __device__ __forceinline__ S store(float f) { return f; }
  static __device__ __forceinline__ S store_double(double d) { return __double2float_rn(d); }
  static __device__ __forceinline__ S from_float(float f) { return f; }
  static __device__ __forceinline__ S from_int(int v) { return __int2float_rn(v); }
  static __device__ __forceinline__ S from_int(i64 v) { return __ll2float_rn(v); }
};

struct F16 {
  typedef unsigned short S;
  static constexpr bool kFloat = true;
  static __device__ __forceinline__ float load(S s) { return __half2float(__ushort_as_half(s)); }
  static __device__ __forceinline__ S store(float f) {
    return f != f ? F16_NAN : __half_as_ushort(__float2half_rn(f));
  }
  static __device__ __forceinline__ S store_double(double d) { return store(to_float_odd(d)); }
  static __device__ __forceinline__ S from_float(float f) { return store(f); }
  static __device__ __forceinline__ S from_int(int v) { return store(to_float_odd(v)); }
  static __device__ __forceinline__ S from_int(i64 v) { return store(to_float_odd(v)); }
};

struct BF16 {
  typedef unsigned short S;
  static constexpr bool kFloat = true;
  static __device__ __forceinline__ float load(S s) { return __uint_as_float((unsigned)s << 16); }
  static __device__ __forceinline__ S store(float f) {
    return f != f ? BF16_NAN : __bfloat16_as_ushort(__float2bfloat16_rn(f));
  }
  static __device__ __forceinline__ S store_double(double d) { return store(to_float_odd(d)); }
  static __device__ __forceinline__ S from_float(float f) { return store(f); }
  static __device__ __forceinline__ S from_int(int v) { return store(to_float_odd(v)); }
  static __device__ __forceinline__ S from_int(i64 v) { return store(to_float_odd(v)); }
};

struct F8 {
  typedef unsigned char S;
  static constexpr bool kFloat = true;
  static __device__ __forceinline__ float load(S s) { return e4m3_to_float(s); }
  static __device__ __forceinline__ S store(float f) { return float_to_e4m3(f); }
  static __device__ __forceinline__ S from_float(float f) { return store(f); }
  static __device__ __forceinline__ S from_int(int v) { return store(to_float_odd(v)); }
  static __device__ __forceinline__ S from_int(i64 v) { return store(to_float_odd(v)); }
};

template <typename T, typename UT, typename V, i64 MIN, i64 MAX>
struct IntTraits {
  typedef T S;
  typedef UT U;
  typedef V Val;
  static constexpr bool kFloat = false;
  static __device__ __forceinline__ Val load(S s) { return s; }
  // Truncate toward zero, saturate (Inf included), NaN -> 0. The bounds are exact floats
  // (-2^k) or round up to 2^k, so `>=` saturates exactly the values past the range.
  static __device__ __forceinline__ S from_float(float f) {
    if (f != f) return 0;
    if (f <= (float)MIN) return (S)MIN;
    if (f >= (float)MAX) return (S)MAX;
    return (S)f;
  }
  static __device__ __forceinline__ S from_int(i64 v) {
    return v < MIN ? (S)MIN : v > MAX ? (S)MAX : (S)v;
  }
  static __device__ __forceinline__ S from_int(int v) { return from_int((i64)v); }
};

struct I8 : IntTraits<signed char, unsigned char, int, -128, 127> {};
struct I32 : IntTraits<int, unsigned, int, -2147483647LL - 1, 2147483647LL> {};
struct I64 : IntTraits<i64, u64, i64, (-9223372036854775807LL - 1), 9223372036854775807LL> {};
// int4 values (one per S); packing to nibbles is done by the int4 kernels.
struct I4 : IntTraits<signed char, unsigned char, int, -8, 7> {};

struct Bool {
  typedef unsigned char S;
  typedef int Val;
  static constexpr bool kFloat = false;
  static __device__ __forceinline__ Val load(S s) { return s; }
  static __device__ __forceinline__ S from_float(float f) { return f != 0.0f; }  // NaN -> 1
  static __device__ __forceinline__ S from_int(int v) { return v != 0; }
  static __device__ __forceinline__ S from_int(i64 v) { return v != 0; }
};

// ---------------------------------------------------------------------------------------------
// Binary ops: functors on storage values.

#define BINARY_OP(Name, HEAVY, FLOAT_EXPR, INT_EXPR)                                  \
  template <class D>                                                                  \
  struct Name {                                                                       \
    typedef typename D::S Out;                                                        \
    static constexpr bool kHeavy = HEAVY;                                             \
    __device__ __forceinline__ Out operator()(typename D::S a, typename D::S b) const { \
      if constexpr (D::kFloat) {                                                      \
        const float x = D::load(a), y = D::load(b);                                   \
        return D::store(FLOAT_EXPR);                                                  \
      } else {                                                                        \
        typedef typename D::U U;                                                      \
        return (Out)(INT_EXPR);                                                       \
      }                                                                               \
    }                                                                                 \
  };

BINARY_OP(OpAdd, false, x + y, (U)a + (U)b)
BINARY_OP(OpSub, false, x - y, (U)a - (U)b)
BINARY_OP(OpMul, false, x * y, (U)a * (U)b)
// -1 is special-cased so MIN / -1 wraps (to MIN) instead of trapping.
BINARY_OP(OpDiv, true, x / y, b == 0 ? (U)0 : b == (typename D::S)-1 ? (U)0 - (U)a : (U)(a / b))
BINARY_OP(OpMaximum, false, x != x || y != y ? F32_NAN : x > y ? x : y, a > b ? a : b)
BINARY_OP(OpMinimum, false, x != x || y != y ? F32_NAN : x < y ? x : y, a < b ? a : b)

// C's powf (IEEE 754 pow, as NumPy and ONNX): 1 ** y is 1 for every y, NaN included, and
// (-1) ** +-Inf is 1 (the CPU backend's ieeePow follows it).
BINARY_OP(OpPow, true, powf(x, y), 0)

// All six comparisons in one functor: `mask` selects which outcomes give true (bit 0: a < b,
// bit 1: a == b, bit 2: a > b, bit 3: unordered, i.e. a NaN operand). Branch-free, so one
// kernel per dtype serves every comparison.
template <class D>
struct OpCompare {
  typedef unsigned char Out;
  static constexpr bool kHeavy = false;
  unsigned mask;
  __device__ __forceinline__ Out operator()(typename D::S a, typename D::S b) const {
    unsigned r;
    if constexpr (D::kFloat) {
      const float x = D::load(a), y = D::load(b);
      r = (unsigned)(x < y) | (unsigned)(x == y) << 1 | (unsigned)(x > y) << 2 |
          (unsigned)(x != x || y != y) << 3;
    } else {
      r = (unsigned)(a < b) | (unsigned)(a == b) << 1 | (unsigned)(a > b) << 2;
    }
    return (r & mask) != 0;
  }
};

// ---------------------------------------------------------------------------------------------
// Unary ops.

#define UNARY_OP(Name, HEAVY, FLOAT_EXPR, INT_EXPR)                      \
  template <class D>                                                     \
  struct Name {                                                          \
    typedef typename D::S Out;                                           \
    static constexpr bool kHeavy = HEAVY;                                \
    __device__ __forceinline__ Out operator()(typename D::S v) const {   \
      if constexpr (D::kFloat) {                                         \
        const float x = D::load(v);                                      \
        return D::store(FLOAT_EXPR);                                     \
      } else {                                                           \
        typedef typename D::U U;                                         \
        return (Out)(INT_EXPR);                                          \
      }                                                                  \
    }                                                                    \
  };

__device__ __forceinline__ float sigmoidf(float x) {
  // e^x / (1 + e^x) for x < 0 keeps e^-x from overflowing and stays accurate in the tail.
  if (x < 0.0f) {
    const float e = expf(x);
    return e / (1.0f + e);
  }
  return 1.0f / (1.0f + expf(-x));
}

// gelu_erf, gelu_tanh: common.cuh.
UNARY_OP(OpNeg, false, -x, (U)0 - (U)v)
UNARY_OP(OpAbs, false, fabsf(x), v < 0 ? (U)0 - (U)v : (U)v)
UNARY_OP(OpRelu, false, x > 0.0f ? x : x != x ? x : 0.0f, v > 0 ? v : 0)
UNARY_OP(OpExp, true, expf(x), 0)
UNARY_OP(OpLog, true, logf(x), 0)
UNARY_OP(OpSqrt, false, sqrtf(x), 0)
UNARY_OP(OpTanh, true, tanhf(x), 0)
UNARY_OP(OpSigmoid, true, sigmoidf(x), 0)
UNARY_OP(OpGelu, true, gelu_erf(x), 0)
UNARY_OP(OpGeluTanh, true, gelu_tanh(x), 0)

// 1 / sqrt(x) in double, rounded once to the output, exactly as the CPU computes it.
template <class D>
struct OpRsqrt {
  typedef typename D::S Out;
  static constexpr bool kHeavy = true;
  __device__ __forceinline__ Out operator()(typename D::S v) const {
    return D::store_double(1.0 / sqrt((double)D::load(v)));
  }
};

template <class From, class To>
struct OpCast {
  typedef typename To::S Out;
  // float8 encoding and decoding are branchy: keep them out of the 16-byte unrolled form.
  static constexpr bool kHeavy = is_same<From, F8>::value || is_same<To, F8>::value;
  __device__ __forceinline__ Out operator()(typename From::S v) const {
    if constexpr (From::kFloat) return To::from_float(From::load(v));
    else return To::from_int(From::load(v));
  }
};

// ---------------------------------------------------------------------------------------------
// Contiguous loops: grid-stride over packs of V elements (16-byte accesses for cheap ops), then
// a scalar tail of fewer than V elements.

template <typename T, int V>
struct alignas(sizeof(T) * V < 16 ? sizeof(T) * V : 16) Pack {
  T v[V];
};

// Elements per pack. Cheap ops use 16-byte accesses of the narrower type (at most 64 bytes
// of the wider one); heavy math takes two elements at a time (one for 8-byte types), which
// keeps the code small where the math, not the memory, sets the speed. packSize() in the
// lowering mirrors V.
template <class In, class Out, bool Heavy>
struct Vec {
  static constexpr int kMin = sizeof(In) < sizeof(Out) ? sizeof(In) : sizeof(Out);
  static constexpr int kMax = sizeof(In) < sizeof(Out) ? sizeof(Out) : sizeof(In);
  static constexpr int V = Heavy ? (kMax <= 4 ? 2 : 1)
                                 : (16 / kMin < 64 / kMax ? 16 / kMin : 64 / kMax);
};

__device__ __forceinline__ i64 thread_index() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 thread_count() { return (i64)gridDim.x * blockDim.x; }

// out[i] = f(x[i]) for i < n.
template <bool Heavy, class In, class Out, class F>
__device__ __forceinline__ void map1(Out* __restrict__ out, const In* __restrict__ x, i64 n, F f) {
  constexpr int V = Vec<In, Out, Heavy>::V;
  typedef Pack<In, V> PI;
  typedef Pack<Out, V> PO;
  const i64 nv = n / V, tid = thread_index(), step = thread_count();
#pragma unroll 1
  for (i64 i = tid; i < nv; i += step) {
    const PI p = reinterpret_cast<const PI*>(x)[i];
    PO r;
#pragma unroll
    for (int k = 0; k < V; k++) r.v[k] = f(p.v[k]);
    reinterpret_cast<PO*>(out)[i] = r;
  }
  const i64 t = nv * V + tid;
  if (t < n) out[t] = f(x[t]);
}

// out[i] = f(a[i], b[i]) for i < n.
template <bool Heavy, class In, class Out, class F>
__device__ __forceinline__ void map2(Out* __restrict__ out, const In* __restrict__ a,
                                     const In* __restrict__ b, i64 n, F f) {
  constexpr int V = Vec<In, Out, Heavy>::V;
  typedef Pack<In, V> PI;
  typedef Pack<Out, V> PO;
  const i64 nv = n / V, tid = thread_index(), step = thread_count();
#pragma unroll 1
  for (i64 i = tid; i < nv; i += step) {
    const PI pa = reinterpret_cast<const PI*>(a)[i];
    const PI pb = reinterpret_cast<const PI*>(b)[i];
    PO r;
#pragma unroll
    for (int k = 0; k < V; k++) r.v[k] = f(pa.v[k], pb.v[k]);
    reinterpret_cast<PO*>(out)[i] = r;
  }
  const i64 t = nv * V + tid;
  if (t < n) out[t] = f(a[t], b[t]);
}

// ---------------------------------------------------------------------------------------------
// Strided (broadcast) loops.

#define DIM_PARAMS(p) \
  i64 p##0, i64 p##1, i64 p##2, i64 p##3, i64 p##4, i64 p##5, i64 p##6, i64 p##7
#define DIM_LIST(p) \
  { p##0, p##1, p##2, p##3, p##4, p##5, p##6, p##7 }

// Output dims innermost first, and each input's element strides (rank >= 1).
template <int NIN>
struct Strided {
  int rank;
  i64 dims[8];
  i64 strides[NIN][8];
};

// Copies the kernel's dims into shared memory, where the per-element loop can index them.
#define STAGE_STRIDED(NIN, g, ...)                  \
  __shared__ Strided<NIN> g;                        \
  if (threadIdx.x == 0) g = Strided<NIN>{__VA_ARGS__}; \
  __syncthreads();

// Adds the element offsets of flat output index i in each input to off. 64-bit math: the
// compiler divides in 32 bits whenever both operands fit.
template <int NIN>
__device__ __forceinline__ void offsets_of(u64 i, const Strided<NIN>& g, u64 (&off)[NIN]) {
  const int last = g.rank - 1;
#pragma unroll 1
  for (int d = 0; d < last; d++) {
    const u64 dim = (u64)g.dims[d];
    const u64 q = i / dim;
    const u64 c = i - q * dim;
    i = q;
#pragma unroll
    for (int k = 0; k < NIN; k++) off[k] += c * (u64)g.strides[k][d];
  }
#pragma unroll
  for (int k = 0; k < NIN; k++) off[k] += i * (u64)g.strides[k][last];
}

template <class In, class Out, class F>
__device__ __forceinline__ void map2_strided(Out* __restrict__ out, const In* __restrict__ a,
                                             const In* __restrict__ b, i64 n,
                                             const Strided<2>& g, F f) {
  const u64 step = (u64)thread_count();
#pragma unroll 1
  for (u64 i = (u64)thread_index(); i < (u64)n; i += step) {
    u64 off[2] = {0, 0};
    offsets_of(i, g, off);
    out[i] = f(a[off[0]], b[off[1]]);
  }
}

// ---------------------------------------------------------------------------------------------
// Binary kernels.

#define BINARY_KERNELS(NAME, OP, D)                                                           \
  extern "C" __global__ void __launch_bounds__(BLOCK)                                         \
      NAME(OP<D>::Out* __restrict__ out, const D::S* __restrict__ a,                          \
           const D::S* __restrict__ b, i64 n) {                                               \
    map2<OP<D>::kHeavy>(out, a, b, n, OP<D>());                                               \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(BLOCK)                                         \
      NAME##_scalar(OP<D>::Out* __restrict__ out, const D::S* __restrict__ x,                 \
                    const D::S* __restrict__ s, i64 n, int scalar_first) {                    \
    const D::S sv = *s;                                                                       \
    const OP<D> f{};                                                                          \
    map1<OP<D>::kHeavy>(out, x, n, [&](D::S v) {                                              \
      /* Select the operands, not the call: one inlined copy of the op per element. */        \
      const D::S l = scalar_first ? sv : v, r = scalar_first ? v : sv;                        \
      return f(l, r);                                                                         \
    });                                                                                       \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(BLOCK)                                         \
      NAME##_bcast(OP<D>::Out* __restrict__ out, const D::S* __restrict__ a,                  \
                   const D::S* __restrict__ b, i64 n, int rank, DIM_PARAMS(d),                \
                   DIM_PARAMS(sa), DIM_PARAMS(sb)) {                                          \
    STAGE_STRIDED(2, g, rank, DIM_LIST(d), {DIM_LIST(sa), DIM_LIST(sb)})                      \
    map2_strided(out, a, b, n, g, OP<D>());                                                   \
  }

#define NUMERIC_BINARY(NAME, OP)      \
  BINARY_KERNELS(NAME##_f32, OP, F32) \
  BINARY_KERNELS(NAME##_f16, OP, F16) \
  BINARY_KERNELS(NAME##_bf16, OP, BF16) \
  BINARY_KERNELS(NAME##_i8, OP, I8)   \
  BINARY_KERNELS(NAME##_i32, OP, I32) \
  BINARY_KERNELS(NAME##_i64, OP, I64)

NUMERIC_BINARY(add, OpAdd)
NUMERIC_BINARY(sub, OpSub)
NUMERIC_BINARY(mul, OpMul)
NUMERIC_BINARY(div, OpDiv)
NUMERIC_BINARY(maximum, OpMaximum)
NUMERIC_BINARY(minimum, OpMinimum)
BINARY_KERNELS(pow_f32, OpPow, F32)
BINARY_KERNELS(pow_f16, OpPow, F16)
BINARY_KERNELS(pow_bf16, OpPow, BF16)

// Comparisons: compare_<t>(..., mask) with OpCompare's outcome mask as the last argument.
#define COMPARE_KERNELS(NAME, D)                                                              \
  extern "C" __global__ void __launch_bounds__(BLOCK)                                         \
      NAME(unsigned char* __restrict__ out, const D::S* __restrict__ a,                       \
           const D::S* __restrict__ b, i64 n, unsigned mask) {                                \
    map2<false>(out, a, b, n, OpCompare<D>{mask});                                            \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(BLOCK)                                         \
      NAME##_scalar(unsigned char* __restrict__ out, const D::S* __restrict__ x,              \
                    const D::S* __restrict__ s, i64 n, int scalar_first, unsigned mask) {     \
    const D::S sv = *s;                                                                       \
    const OpCompare<D> f{mask};                                                               \
    map1<false>(out, x, n, [&](D::S v) {                                                      \
      const D::S l = scalar_first ? sv : v, r = scalar_first ? v : sv;                        \
      return f(l, r);                                                                         \
    });                                                                                       \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(BLOCK)                                         \
      NAME##_bcast(unsigned char* __restrict__ out, const D::S* __restrict__ a,               \
                   const D::S* __restrict__ b, i64 n, int rank, DIM_PARAMS(d),                \
                   DIM_PARAMS(sa), DIM_PARAMS(sb), unsigned mask) {                           \
    STAGE_STRIDED(2, g, rank, DIM_LIST(d), {DIM_LIST(sa), DIM_LIST(sb)})                      \
    map2_strided(out, a, b, n, g, OpCompare<D>{mask});                                        \
  }

COMPARE_KERNELS(compare_f32, F32)
COMPARE_KERNELS(compare_f16, F16)
COMPARE_KERNELS(compare_bf16, BF16)
COMPARE_KERNELS(compare_i8, I8)
COMPARE_KERNELS(compare_i32, I32)
COMPARE_KERNELS(compare_i64, I64)
COMPARE_KERNELS(compare_bool, Bool)

// ---------------------------------------------------------------------------------------------
// Unary kernels.

#define UNARY_KERNEL(NAME, OP)                                                               \
  extern "C" __global__ void __launch_bounds__(BLOCK)                                        \
      NAME(OP::Out* __restrict__ out, const OP::Out* __restrict__ x, i64 n) {                \
    map1<OP::kHeavy>(out, x, n, OP());                                                       \
  }

#define FLOAT_UNARY(NAME, OP)                \
  UNARY_KERNEL(NAME##_f32, OP<F32>)          \
  UNARY_KERNEL(NAME##_f16, OP<F16>)          \
  UNARY_KERNEL(NAME##_bf16, OP<BF16>)
#define NUMERIC_UNARY(NAME, OP) \
  FLOAT_UNARY(NAME, OP)         \
  UNARY_KERNEL(NAME##_i8, OP<I8>) \
  UNARY_KERNEL(NAME##_i32, OP<I32>) \
  UNARY_KERNEL(NAME##_i64, OP<I64>)

NUMERIC_UNARY(neg, OpNeg)
NUMERIC_UNARY(abs, OpAbs)
NUMERIC_UNARY(relu, OpRelu)
FLOAT_UNARY(exp, OpExp)
FLOAT_UNARY(log, OpLog)
FLOAT_UNARY(sqrt, OpSqrt)
FLOAT_UNARY(rsqrt, OpRsqrt)
FLOAT_UNARY(tanh, OpTanh)
FLOAT_UNARY(sigmoid, OpSigmoid)
FLOAT_UNARY(gelu, OpGelu)
FLOAT_UNARY(gelu_tanh, OpGeluTanh)

// ---------------------------------------------------------------------------------------------
// Casts. int4 is packed: element 2i in the low nibble of byte i, 2i+1 in the high nibble.

__device__ __forceinline__ int sign_extend4(unsigned nibble) {
  return (int)((nibble & 0xfu) ^ 8u) - 8;
}

#define CAST_KERNEL(NAME, FROM, TO)                                                        \
  extern "C" __global__ void __launch_bounds__(BLOCK)                                      \
      NAME(TO::S* __restrict__ out, const FROM::S* __restrict__ x, i64 n) {                \
    map1<OpCast<FROM, TO>::kHeavy>(out, x, n, OpCast<FROM, TO>());                         \
  }

// Eight elements (four packed bytes) per unit; the tail is done byte by byte.
template <class From>
__device__ __forceinline__ void cast_to_int4(unsigned char* __restrict__ out,
                                             const typename From::S* __restrict__ x, i64 n) {
  typedef Pack<typename From::S, 8> PI;
  const OpCast<From, I4> f{};
  const i64 units = n / 8, tid = thread_index(), step = thread_count();
#pragma unroll 1
  for (i64 u = tid; u < units; u += step) {
    const PI p = reinterpret_cast<const PI*>(x)[u];
    unsigned word = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) word |= ((unsigned)f(p.v[k]) & 0xfu) << (4 * k);
    reinterpret_cast<unsigned*>(out)[u] = word;
  }
  const i64 j = units * 4 + tid;  // byte index
  if (j < (n + 1) / 2) {
    const unsigned lo = (unsigned)f(x[2 * j]) & 0xfu;
    const unsigned hi = 2 * j + 1 < n ? (unsigned)f(x[2 * j + 1]) & 0xfu : 0u;
    out[j] = (unsigned char)(lo | (hi << 4));
  }
}

template <class To>
__device__ __forceinline__ void cast_from_int4(typename To::S* __restrict__ out,
                                               const unsigned char* __restrict__ x, i64 n) {
  typedef Pack<typename To::S, 8> PO;
  const i64 units = n / 8, tid = thread_index(), step = thread_count();
#pragma unroll 1
  for (i64 u = tid; u < units; u += step) {
    const unsigned word = reinterpret_cast<const unsigned*>(x)[u];
    PO r;
#pragma unroll
    for (int k = 0; k < 8; k++) r.v[k] = To::from_int(sign_extend4(word >> (4 * k)));
    reinterpret_cast<PO*>(out)[u] = r;
  }
  const i64 e = units * 8 + tid;
  if (e < n) out[e] = To::from_int(sign_extend4(x[e >> 1] >> ((e & 1) * 4)));
}

#define CAST_TO_INT4(NAME, FROM)                                                            \
  extern "C" __global__ void __launch_bounds__(BLOCK)                                       \
      NAME(unsigned char* __restrict__ out, const FROM::S* __restrict__ x, i64 n) {         \
    cast_to_int4<FROM>(out, x, n);                                                          \
  }
#define CAST_FROM_INT4(NAME, TO)                                                            \
  extern "C" __global__ void __launch_bounds__(BLOCK)                                       \
      NAME(TO::S* __restrict__ out, const unsigned char* __restrict__ x, i64 n) {           \
    cast_from_int4<TO>(out, x, n);                                                          \
  }

// Every ordered pair of distinct dtypes (same-dtype casts are aliases in the lowering):
// CASTS_FROM(from, the seven other non-int4 dtypes in order) makes the casts from `from` to
// int4 and back, then those to each of the seven.
#define CASTS_FROM(F, FROM, A, TA, B, TB, C, TC, D, TD, E, TE, G, TG, H, TH) \
  CAST_TO_INT4(cast_##F##_i4, FROM)                                        \
  CAST_FROM_INT4(cast_i4_##F, FROM)                                        \
  CAST_KERNEL(cast_##F##_##A, FROM, TA)                                    \
  CAST_KERNEL(cast_##F##_##B, FROM, TB)                                    \
  CAST_KERNEL(cast_##F##_##C, FROM, TC)                                    \
  CAST_KERNEL(cast_##F##_##D, FROM, TD)                                    \
  CAST_KERNEL(cast_##F##_##E, FROM, TE)                                    \
  CAST_KERNEL(cast_##F##_##G, FROM, TG)                                    \
  CAST_KERNEL(cast_##F##_##H, FROM, TH)

CASTS_FROM(f32, F32, f16, F16, bf16, BF16, f8e4m3, F8, i8, I8, i32, I32, i64, I64, bool, Bool)
CASTS_FROM(f16, F16, f32, F32, bf16, BF16, f8e4m3, F8, i8, I8, i32, I32, i64, I64, bool, Bool)
CASTS_FROM(bf16, BF16, f32, F32, f16, F16, f8e4m3, F8, i8, I8, i32, I32, i64, I64, bool, Bool)
CASTS_FROM(f8e4m3, F8, f32, F32, f16, F16, bf16, BF16, i8, I8, i32, I32, i64, I64, bool, Bool)
CASTS_FROM(i8, I8, f32, F32, f16, F16, bf16, BF16, f8e4m3, F8, i32, I32, i64, I64, bool, Bool)
CASTS_FROM(i32, I32, f32, F32, f16, F16, bf16, BF16, f8e4m3, F8, i8, I8, i64, I64, bool, Bool)
CASTS_FROM(i64, I64, f32, F32, f16, F16, bf16, BF16, f8e4m3, F8, i8, I8, i32, I32, bool, Bool)
CASTS_FROM(bool, Bool, f32, F32, f16, F16, bf16, BF16, f8e4m3, F8, i8, I8, i32, I32, i64, I64)

// ---------------------------------------------------------------------------------------------
// where(cond, a, b): a bit copy, so one kernel per element width serves every dtype.

template <typename T>
__device__ __forceinline__ void where_contig(T* __restrict__ out,
                                             const unsigned char* __restrict__ c,
                                             const T* __restrict__ a, const T* __restrict__ b,
                                             i64 n) {
  constexpr int V = Vec<T, T, false>::V;
  typedef Pack<T, V> P;
  typedef Pack<unsigned char, V> PC;
  const i64 nv = n / V, tid = thread_index(), step = thread_count();
#pragma unroll 1
  for (i64 i = tid; i < nv; i += step) {
    const PC pc = reinterpret_cast<const PC*>(c)[i];
    const P pa = reinterpret_cast<const P*>(a)[i];
    const P pb = reinterpret_cast<const P*>(b)[i];
    P r;
#pragma unroll
    for (int k = 0; k < V; k++) r.v[k] = pc.v[k] ? pa.v[k] : pb.v[k];
    reinterpret_cast<P*>(out)[i] = r;
  }
  const i64 t = nv * V + tid;
  if (t < n) out[t] = c[t] ? a[t] : b[t];
}

template <typename T>
__device__ __forceinline__ void where_strided(T* __restrict__ out,
                                              const unsigned char* __restrict__ c,
                                              const T* __restrict__ a, const T* __restrict__ b,
                                              i64 n, const Strided<3>& g) {
  const u64 step = (u64)thread_count();
#pragma unroll 1
  for (u64 i = (u64)thread_index(); i < (u64)n; i += step) {
    u64 off[3] = {0, 0, 0};
    offsets_of(i, g, off);
    out[i] = c[off[0]] ? a[off[1]] : b[off[2]];
  }
}

#define WHERE_KERNELS(NAME, T)                                                               \
  extern "C" __global__ void __launch_bounds__(BLOCK)                                        \
      NAME(T* __restrict__ out, const unsigned char* __restrict__ c, const T* __restrict__ a, \
           const T* __restrict__ b, i64 n) {                                                 \
    where_contig(out, c, a, b, n);                                                           \
  }                                                                                          \
  extern "C" __global__ void __launch_bounds__(BLOCK)                                        \
      NAME##_bcast(T* __restrict__ out, const unsigned char* __restrict__ c,                 \
                   const T* __restrict__ a, const T* __restrict__ b, i64 n, int rank,        \
                   DIM_PARAMS(d), DIM_PARAMS(sc), DIM_PARAMS(sa), DIM_PARAMS(sb)) {          \
    STAGE_STRIDED(3, g, rank, DIM_LIST(d), {DIM_LIST(sc), DIM_LIST(sa), DIM_LIST(sb)})       \
    where_strided(out, c, a, b, n, g);                                                       \
  }

WHERE_KERNELS(where_b8, unsigned char)
WHERE_KERNELS(where_b16, unsigned short)
WHERE_KERNELS(where_b32, unsigned)
WHERE_KERNELS(where_b64, u64)

// Packed int4: one thread per output byte (two elements), so no two threads share a byte.
extern "C" __global__ void __launch_bounds__(BLOCK)
    where_i4(unsigned char* __restrict__ out, const unsigned char* __restrict__ c,
             const unsigned char* __restrict__ a, const unsigned char* __restrict__ b, i64 n,
             int rank, DIM_PARAMS(d), DIM_PARAMS(sc), DIM_PARAMS(sa), DIM_PARAMS(sb)) {
  STAGE_STRIDED(3, g, rank, DIM_LIST(d), {DIM_LIST(sc), DIM_LIST(sa), DIM_LIST(sb)})
  auto pick = [&](u64 e) -> unsigned {
    u64 off[3] = {0, 0, 0};
    offsets_of(e, g, off);
    const unsigned char* src = c[off[0]] ? a : b;
    const u64 o = c[off[0]] ? off[1] : off[2];
    return (src[o >> 1] >> ((o & 1) * 4)) & 0xfu;
  };
  const i64 nbytes = (n + 1) / 2, step = thread_count();
#pragma unroll 1
  for (i64 j = thread_index(); j < nbytes; j += step) {
    const unsigned lo = pick(2 * (u64)j);
    const unsigned hi = 2 * j + 1 < n ? pick(2 * (u64)j + 1) : 0u;
    out[j] = (unsigned char)(lo | (hi << 4));
  }
}
