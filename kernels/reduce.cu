// Reductions: sum, mean, var, max, min, argmax, argmin over arbitrary axes.
//
// The host coalesces the input into kept and reduced dim groups. Output element o starts at
// base(o) (its kept multi-index times the kept strides); reduced element k sits at base(o) +
// off(k). Three kernels per op and dtype:
//  - reduce_rows: the innermost reduced group is the last dim (stride 1). A warp or a block per
//    output walks the contiguous segments with 16-byte loads; the outer reduced dims (if any)
//    pick the segment. Can split one output's reduced range over several blocks (partial
//    states go to a workspace, reduce_finish combines them).
//  - reduce_cols: the last dim is kept (or the reduced extent is short). threadIdx.x walks
//    adjacent outputs (coalesced), threadIdx.y splits the reduced range, shared memory
//    combines; blockIdx.y splits long reduced ranges the same way as reduce_rows.
//  - reduce_finish: combines the partial states of each output and finalizes.
//
// Every op is a state with identity, update (folds the next element; each thread meets its
// elements in increasing index order), combine (associative and commutative, so any tree order
// gives the same answer up to float rounding) and finalize. Floats accumulate in float32.

#include <stdint.h>

#include "common.cuh"

#define FULL_MASK 0xffffffffu
#define MAX_DIMS 8

// ---------------------------------------------------------------------------------------------
// Value conversions (to_f / from_f in common.cuh)

// The type values are compared in: float for float dtypes, the integer itself otherwise.
template <typename T> struct Cmp {
  typedef float type;
  static __device__ __forceinline__ float of(T v) { return to_f(v); }
  static __device__ __forceinline__ T back(float v) { return from_f<T>(v); }
  static __device__ __forceinline__ float lowest() { return __int_as_float(0xff800000); }
  static __device__ __forceinline__ float highest() { return __int_as_float(0x7f800000); }
};
template <> struct Cmp<int8_t> {
  typedef int type;
  static __device__ __forceinline__ int of(int8_t v) { return v; }
  static __device__ __forceinline__ int8_t back(int v) { return (int8_t)v; }
  static __device__ __forceinline__ int lowest() { return -128; }
  static __device__ __forceinline__ int highest() { return 127; }
};
template <> struct Cmp<int> {
  typedef int type;
  static __device__ __forceinline__ int of(int v) { return v; }
  static __device__ __forceinline__ int back(int v) { return v; }
  static __device__ __forceinline__ int lowest() { return (int)0x80000000u; }
  static __device__ __forceinline__ int highest() { return 0x7fffffff; }
};
template <> struct Cmp<i64> {
  typedef i64 type;
  static __device__ __forceinline__ i64 of(i64 v) { return v; }
  static __device__ __forceinline__ i64 back(i64 v) { return v; }
  static __device__ __forceinline__ i64 lowest() { return (i64)0x8000000000000000ull; }
  static __device__ __forceinline__ i64 highest() { return 0x7fffffffffffffffll; }
};

template <typename C> __device__ __forceinline__ bool is_nan(C v) { return v != v; }

// ---------------------------------------------------------------------------------------------
// Ops. `param` is the reduced count for mean and N − correction for var.

template <typename T> struct SumF {
  typedef float State;
  typedef T Out;
  static __device__ __forceinline__ State identity() { return 0.0f; }
  static __device__ __forceinline__ State combine(State a, State b) { return a + b; }
  static __device__ __forceinline__ State update(State a, T v, i64) { return a + to_f(v); }
  static __device__ __forceinline__ Out finalize(State s, double) { return from_f<T>(s); }
};

template <typename T> struct MeanF : SumF<T> {
  static __device__ __forceinline__ T finalize(float s, double count) {
    return from_f<T>(s / (float)count);  // 0 / 0 = NaN for an empty reduction
  }
};

// int8 and int32 sum to int32, wrapping: unsigned arithmetic wraps without undefined behaviour.
template <typename T> struct SumI32 {
  typedef unsigned State;
  typedef int Out;
  static __device__ __forceinline__ State identity() { return 0u; }
  static __device__ __forceinline__ State combine(State a, State b) { return a + b; }
  static __device__ __forceinline__ State update(State a, T v, i64) { return a + (unsigned)(int)v; }
  static __device__ __forceinline__ Out finalize(State s, double) { return (int)s; }
};

struct SumI64 {
  typedef u64 State;
  typedef i64 Out;
  static __device__ __forceinline__ State identity() { return 0ull; }
  static __device__ __forceinline__ State combine(State a, State b) { return a + b; }
  static __device__ __forceinline__ State update(State a, i64 v, i64) { return a + (u64)v; }
  static __device__ __forceinline__ Out finalize(State s, double) { return (i64)s; }
};

// max / min: NaN wins (any NaN; the state keeps the first one it meets).
template <typename T, bool MAX> struct Extreme {
  typedef typename Cmp<T>::type State;
  typedef T Out;
  static __device__ __forceinline__ State identity() {
    return MAX ? Cmp<T>::lowest() : Cmp<T>::highest();
  }
  static __device__ __forceinline__ State combine(State a, State b) {
    if (is_nan(a)) return a;
    if (is_nan(b)) return b;
    return (MAX ? b > a : b < a) ? b : a;
  }
  static __device__ __forceinline__ State update(State a, T v, i64) {
    return combine(a, Cmp<T>::of(v));
  }
  static __device__ __forceinline__ Out finalize(State s, double) { return Cmp<T>::back(s); }
};

template <typename C> struct ArgState {
  C v;
  i64 i;
};

// argmax / argmin: the best (NaN first, then the extreme value) with the smallest index. This
// is a total order, so combine is associative and commutative: the first occurrence wins in
// any reduction order.
template <typename T, bool MAX> struct Arg {
  typedef ArgState<typename Cmp<T>::type> State;
  typedef int Out;
  static constexpr i64 EMPTY = 0x7fffffffffffffffll;  // the identity's index: after every real one
  static __device__ __forceinline__ State identity() {
    State s;
    s.v = MAX ? Cmp<T>::lowest() : Cmp<T>::highest();
    s.i = EMPTY;
    return s;
  }
  static __device__ __forceinline__ State combine(State a, State b) {
    const bool an = is_nan(a.v), bn = is_nan(b.v);
    if (an || bn) {
      if (an && bn) return a.i <= b.i ? a : b;
      return an ? a : b;
    }
    if (MAX ? b.v > a.v : b.v < a.v) return b;
    if (MAX ? a.v > b.v : a.v < b.v) return a;
    return a.i <= b.i ? a : b;
  }
  // Elements reach update in increasing k: the first element, or a strictly better value,
  // replaces the state (the first test matters when every value equals the identity's).
  static __device__ __forceinline__ State update(State a, T v, i64 k) {
    const typename Cmp<T>::type c = Cmp<T>::of(v);
    if (a.i == EMPTY || (MAX ? c > a.v : c < a.v) || (is_nan(c) && !is_nan(a.v))) {
      a.v = c;
      a.i = k;
    }
    return a;
  }
  static __device__ __forceinline__ Out finalize(State s, double) { return (int)s.i; }
};

struct VarState {
  float mean;
  float m2;  // sum of squared deviations from mean
  i64 n;
};

// Variance by Welford's update, merged with Chan et al.'s formula.
template <typename T> struct Var {
  typedef VarState State;
  typedef T Out;
  static __device__ __forceinline__ State identity() {
    State s;
    s.mean = 0.0f;
    s.m2 = 0.0f;
    s.n = 0;
    return s;
  }
  static __device__ __forceinline__ State combine(State a, State b) {
    if (b.n == 0) return a;
    if (a.n == 0) return b;
    State s;
    s.n = a.n + b.n;
    const float delta = b.mean - a.mean;
    const float fb = (float)b.n / (float)s.n;
    s.mean = a.mean + delta * fb;
    s.m2 = a.m2 + b.m2 + delta * delta * ((float)a.n * fb);
    return s;
  }
  static __device__ __forceinline__ State update(State a, T v, i64) {
    const float t = to_f(v);
    a.n += 1;
    const float delta = t - a.mean;
    a.mean += delta * __frcp_rn((float)a.n);
    a.m2 += delta * (t - a.mean);
    return a;
  }
  static __device__ __forceinline__ Out finalize(State s, double denom) {
    if (!(denom > 0.0)) return from_f<T>(__int_as_float(0x7fffffff));
    return from_f<T>(s.m2 / (float)denom);
  }
};

// ---------------------------------------------------------------------------------------------
// Group reductions

template <typename S> __device__ __forceinline__ S shfl_xor_state(S s, int mask) {
  static_assert(sizeof(S) % 4 == 0, "states are whole 32-bit words");
  constexpr int W = sizeof(S) / 4;
  unsigned w[W];
  memcpy(w, &s, sizeof(S));
#pragma unroll
  for (int i = 0; i < W; ++i) w[i] = __shfl_xor_sync(FULL_MASK, w[i], mask);
  S r;
  memcpy(&r, w, sizeof(S));
  return r;
}

// Not inlined: it runs once per output, and inlining it at every call site made the module
// (and its load-time JIT) much larger.
template <typename Op> __device__ __noinline__ typename Op::State warp_reduce(
    typename Op::State s) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) s = Op::combine(s, shfl_xor_state(s, m));
  return s;
}

// The block's combined state, valid in thread 0. Every thread of the block must call it.
template <typename Op> __device__ __forceinline__ typename Op::State block_reduce(
    typename Op::State s) {
  __shared__ typename Op::State partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  s = warp_reduce<Op>(s);
  if (lane == 0) partial[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < warps ? partial[lane] : Op::identity();
    s = warp_reduce<Op>(s);
  }
  __syncthreads();  // partial[] may be reused right after
  return s;
}

// ---------------------------------------------------------------------------------------------
// Index arithmetic

// Offset of row-major index `idx` over dims `size[0..n)` with strides `stride[0..n)`.
// `stride0` is stride[0] in a register: zero or one dim (the common layouts) needs no memory.
// The general case reads the dims from shared memory (see DIMS_TO_SHARED): kernel parameters
// cannot be indexed dynamically without a per-thread local copy.
__device__ __forceinline__ i64 offset_of(i64 idx, int n, i64 stride0, const i64* size,
                                         const i64* stride) {
  if (n <= 1) return n == 0 ? 0 : idx * stride0;
  i64 off = 0;
#pragma unroll 1
  for (int d = n - 1; d >= 1; --d) {
    const i64 q = idx / size[d];
    off += (idx - q * size[d]) * stride[d];
    idx = q;
  }
  return off + idx * stride0;
}

#define DIM_PARAMS(p) \
  i64 p##0, i64 p##1, i64 p##2, i64 p##3, i64 p##4, i64 p##5, i64 p##6, i64 p##7
#define STORE_DIMS(dst, p)                                                                 \
  dst[0] = p##0, dst[1] = p##1, dst[2] = p##2, dst[3] = p##3, dst[4] = p##4, dst[5] = p##5, \
  dst[6] = p##6, dst[7] = p##7
// Copies the four dim lists into shared memory when a layout needs them (uniform across the
// block, so the barrier is safe).
#define DIMS_TO_SHARED(na, a, b, nb, c, d)                                           \
  __shared__ i64 dims[4 * MAX_DIMS];                                                 \
  if (na > 1 || nb > 1) {                                                            \
    if (threadIdx.x == 0 && threadIdx.y == 0) {                                      \
      STORE_DIMS(dims, a);                                                           \
      STORE_DIMS((dims + MAX_DIMS), b);                                              \
      STORE_DIMS((dims + 2 * MAX_DIMS), c);                                          \
      STORE_DIMS((dims + 3 * MAX_DIMS), d);                                          \
    }                                                                                \
    __syncthreads();                                                                 \
  }

// ---------------------------------------------------------------------------------------------
// Kernels

// Folds seg[r0..r1) into acc (thread gt of a group of G threads); element r has index kbase + r.
// 16-byte loads in the aligned middle, scalar head and tail; two loads in flight per thread.
template <typename T, typename Op>
__device__ __forceinline__ void visit_segment(const T* __restrict__ seg, i64 r0, i64 r1,
                                              i64 kbase, int gt, int G,
                                              typename Op::State& acc) {
  constexpr int VEC = 16 / sizeof(T);
  const T* p = seg + r0;
  const i64 n = r1 - r0;
  const i64 k0 = kbase + r0;
  i64 head = (i64)(((16u - ((unsigned)(uintptr_t)p & 15u)) & 15u) / sizeof(T));
  if (head > n) head = n;
  for (i64 r = gt; r < head; r += G) acc = Op::update(acc, p[r], k0 + r);
  const uint4* pv = reinterpret_cast<const uint4*>(p + head);
  const i64 nv = (n - head) / VEC;
  const i64 kv = k0 + head;
  i64 v = gt;
  for (; v + G < nv; v += 2 * (i64)G) {
    uint4 b[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) b[u] = __ldg(pv + v + u * (i64)G);
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      T e[VEC];
      memcpy(e, &b[u], 16);
      const i64 kk = kv + (v + u * (i64)G) * VEC;
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc = Op::update(acc, e[j], kk + j);
    }
  }
  for (; v < nv; v += G) {
    const uint4 b = __ldg(pv + v);
    T e[VEC];
    memcpy(e, &b, 16);
    const i64 kk = kv + v * VEC;
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc = Op::update(acc, e[j], kk + j);
  }
  for (i64 r = head + nv * VEC + gt; r < n; r += G) acc = Op::update(acc, p[r], k0 + r);
}

// Writes output o's final value (splits == 1) or its partial state `item` (splits > 1).
template <typename Op>
__device__ __forceinline__ void store_result(void* dst, i64 o, i64 item, int splits,
                                             typename Op::State s, double param) {
  if (splits == 1) {
    reinterpret_cast<typename Op::Out*>(dst)[o] = Op::finalize(s, param);
  } else {
    reinterpret_cast<typename Op::State*>(dst)[item] = s;
  }
}

// Reduced space = [Q, rowLen]: Q indexes the outer reduced dims (nq dims, strides qt), rowLen is
// the contiguous last dim. Work item (o, s) covers flat reduced indices [s·chunk, (s+1)·chunk).
// warpMode: a warp per item; otherwise a block per item.
template <typename T, typename Op>
__device__ __forceinline__ void reduce_rows_impl(
    const T* __restrict__ x, void* __restrict__ dst, i64 M, i64 rowLen, i64 Q, i64 chunk,
    int splits, int warpMode, double param, int nk, i64 kt0, const i64* ks, const i64* kt, int nq,
    i64 qt0, const i64* qs, const i64* qt) {
  int G, gt;
  i64 g, groups;
  if (warpMode) {
    G = 32;
    gt = threadIdx.x & 31;
    g = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    groups = ((i64)gridDim.x * blockDim.x) >> 5;
  } else {
    G = blockDim.x;
    gt = threadIdx.x;
    g = blockIdx.x;
    groups = gridDim.x;
  }
  const i64 R = Q * rowLen;
  const i64 items = M * splits;
  for (i64 item = g; item < items; item += groups) {
    const i64 o = item / splits;
    const i64 s = item - o * splits;
    const i64 base = offset_of(o, nk, kt0, ks, kt);
    const i64 k1 = min(R, (s + 1) * chunk);
    typename Op::State acc = Op::identity();
    for (i64 k = s * chunk; k < k1;) {
      const i64 q = k / rowLen;
      const i64 r0 = k - q * rowLen;
      const i64 r1 = min(rowLen, r0 + (k1 - k));
      const T* seg = x + base + offset_of(q, nq, qt0, qs, qt);
      visit_segment<T, Op>(seg, r0, r1, q * rowLen, gt, G, acc);
      k += r1 - r0;
    }
    acc = warpMode ? warp_reduce<Op>(acc) : block_reduce<Op>(acc);
    if (gt == 0) store_result<Op>(dst, o, item, splits, acc, param);
  }
}

// Block (TX, TY) with TX·TY == 256: x over outputs, y over the reduced range; blockIdx.y is the
// split. Reduced element k of output o is at offset_of(o, kept) + offset_of(k, reduced).
template <typename T, typename Op>
__device__ __forceinline__ void reduce_cols_impl(
    const T* __restrict__ x, void* __restrict__ dst, i64 M, i64 R, i64 chunk, int splits,
    double param, int nk, i64 kt0, const i64* ks, const i64* kt, int nr, i64 rt0, const i64* rs,
    const i64* rt) {
  typedef typename Op::State State;
  __shared__ State sh[256];
  const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x, TY = blockDim.y;
  const i64 o = (i64)blockIdx.x * TX + tx;
  const i64 s = blockIdx.y;
  State acc = Op::identity();
  if (o < M) {
    const T* xo = x + offset_of(o, nk, kt0, ks, kt);
    const i64 k1 = min(R, (s + 1) * chunk);
    if (nr <= 1) {
      const i64 step = nr == 1 ? rt0 : 0;
#pragma unroll 4
      for (i64 k = s * chunk + ty; k < k1; k += TY) acc = Op::update(acc, xo[k * step], k);
    } else {
#pragma unroll 2
      for (i64 k = s * chunk + ty; k < k1; k += TY) {
        acc = Op::update(acc, xo[offset_of(k, nr, rt0, rs, rt)], k);
      }
    }
  }
  sh[ty * TX + tx] = acc;
  __syncthreads();
  for (int h = TY >> 1; h > 0; h >>= 1) {
    if (ty < h) sh[ty * TX + tx] = Op::combine(sh[ty * TX + tx], sh[(ty + h) * TX + tx]);
    __syncthreads();
  }
  if (ty == 0 && o < M) store_result<Op>(dst, o, o * splits + s, splits, sh[tx], param);
}

// Combines `splits` partial states per output (a warp per output) and finalizes.
template <typename Op>
__device__ __forceinline__ void reduce_finish_impl(const typename Op::State* __restrict__ states,
                                                   typename Op::Out* __restrict__ out, i64 M,
                                                   int splits, double param) {
  const int lane = threadIdx.x & 31;
  const i64 warps = ((i64)gridDim.x * blockDim.x) >> 5;
  for (i64 o = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; o < M; o += warps) {
    typename Op::State acc = Op::identity();
    for (int i = lane; i < splits; i += 32) acc = Op::combine(acc, states[o * splits + i]);
    acc = warp_reduce<Op>(acc);
    if (lane == 0) out[o] = Op::finalize(acc, param);
  }
}

#define REDUCE_KERNELS(NAME, T, OP)                                                           \
  extern "C" __global__ void __launch_bounds__(512) reduce_rows_##NAME(                       \
      const T* __restrict__ x, void* __restrict__ dst, i64 M, i64 rowLen, i64 Q, i64 chunk,   \
      int splits, int warpMode, double param, int nk, DIM_PARAMS(ks), DIM_PARAMS(kt), int nq, \
      DIM_PARAMS(qs), DIM_PARAMS(qt)) {                                                       \
    DIMS_TO_SHARED(nk, ks, kt, nq, qs, qt)                                                    \
    reduce_rows_impl<T, OP>(x, dst, M, rowLen, Q, chunk, splits, warpMode, param, nk, kt0,     \
                            dims, dims + MAX_DIMS, nq, qt0, dims + 2 * MAX_DIMS,              \
                            dims + 3 * MAX_DIMS);                                             \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(256) reduce_cols_##NAME(                       \
      const T* __restrict__ x, void* __restrict__ dst, i64 M, i64 R, i64 chunk, int splits,   \
      double param, int nk, DIM_PARAMS(ks), DIM_PARAMS(kt), int nr, DIM_PARAMS(rs),           \
      DIM_PARAMS(rt)) {                                                                       \
    DIMS_TO_SHARED(nk, ks, kt, nr, rs, rt)                                                    \
    reduce_cols_impl<T, OP>(x, dst, M, R, chunk, splits, param, nk, kt0, dims,                \
                            dims + MAX_DIMS, nr, rt0, dims + 2 * MAX_DIMS,                    \
                            dims + 3 * MAX_DIMS);                                             \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(256) reduce_finish_##NAME(                     \
      const OP::State* __restrict__ states, OP::Out* __restrict__ out, i64 M, int splits,     \
      double param) {                                                                         \
    reduce_finish_impl<OP>(states, out, M, splits, param);                                    \
  }

template <typename T> using MaxOp = Extreme<T, true>;
template <typename T> using MinOp = Extreme<T, false>;
template <typename T> using ArgMaxOp = Arg<T, true>;
template <typename T> using ArgMinOp = Arg<T, false>;

// Ops every numeric dtype has.
#define ORDER_KERNELS(SUFFIX, T)                  \
  REDUCE_KERNELS(max_##SUFFIX, T, MaxOp<T>)       \
  REDUCE_KERNELS(min_##SUFFIX, T, MinOp<T>)       \
  REDUCE_KERNELS(argmax_##SUFFIX, T, ArgMaxOp<T>) \
  REDUCE_KERNELS(argmin_##SUFFIX, T, ArgMinOp<T>)

#define FLOAT_KERNELS(SUFFIX, T)             \
  REDUCE_KERNELS(sum_##SUFFIX, T, SumF<T>)   \
  REDUCE_KERNELS(mean_##SUFFIX, T, MeanF<T>) \
  REDUCE_KERNELS(var_##SUFFIX, T, Var<T>)    \
  ORDER_KERNELS(SUFFIX, T)

FLOAT_KERNELS(f32, float)
FLOAT_KERNELS(f16, __half)
FLOAT_KERNELS(bf16, __nv_bfloat16)

REDUCE_KERNELS(sum_i8, int8_t, SumI32<int8_t>)
REDUCE_KERNELS(sum_i32, int, SumI32<int>)
REDUCE_KERNELS(sum_i64, i64, SumI64)
ORDER_KERNELS(i8, int8_t)
ORDER_KERNELS(i32, int)
ORDER_KERNELS(i64, i64)
