// Shape kernels: strided copies (permute, expand, slice), contiguous copies, 2-D block copies
// (concat), gathers (gather, embedding), triu/tril, the causal mask and sliceScatter.
//
// Every kernel moves raw bits. Byte-aligned data is copied in "units" of 1, 2, 4, 8 or 16
// bytes: the host widens the unit whenever the innermost run and every offset allow it, so a
// float32 row of 768 values moves as 192 16-byte units. int4 data that cannot be widened to
// whole bytes is handled by the *_i4 kernels: one thread per output byte assembles both
// nibbles (element 2i in the low nibble), so no two threads write the same byte.
//
// Kernels ending in _n32 index with 32-bit arithmetic (the host picks them when every
// element count and offset fits in int32); the others use 64-bit arithmetic.

#include <cstdint>

// ---------------------------------------------------------------------------------------------
// Units

template <int W>
struct Unit;
template <>
struct Unit<1> {
  typedef uint8_t T;
};
template <>
struct Unit<2> {
  typedef uint16_t T;
};
template <>
struct Unit<4> {
  typedef uint32_t T;
};
template <>
struct Unit<8> {
  typedef unsigned long long T;
};
template <>
struct Unit<16> {
  typedef uint4 T;
};

template <typename T>
__device__ __forceinline__ T zeroOf() {
  return T(0);
}
template <>
__device__ __forceinline__ uint4 zeroOf<uint4>() {
  return make_uint4(0u, 0u, 0u, 0u);
}

// The first global thread index and the grid-stride step.
template <typename U>
__device__ __forceinline__ U firstThread() {
  return (U)blockIdx.x * (U)blockDim.x + (U)threadIdx.x;
}
template <typename U>
__device__ __forceinline__ U gridStride() {
  return (U)gridDim.x * (U)blockDim.x;
}

// Nibble `e` of packed int4 storage.
__device__ __forceinline__ unsigned nibbleAt(const uint8_t* x, long long e) {
  return (x[e >> 1] >> ((unsigned)(e & 1) * 4u)) & 15u;
}

// ---------------------------------------------------------------------------------------------
// Geometry of a strided read: out is contiguous over sizes[0..R), and output element i reads
// input unit sum_d index_d(i) * stride[d] (relative to an already offset base pointer).

struct Geom {
  long long size[8];
  long long stride[8];
};

#define GEOM_PARAMS                                                                        \
  long long z0, long long z1, long long z2, long long z3, long long z4, long long z5,     \
      long long z6, long long z7, long long t0, long long t1, long long t2, long long t3, \
      long long t4, long long t5, long long t6, long long t7
#define GEOM_INIT                                      \
  Geom g;                                              \
  g.size[0] = z0;                                      \
  g.size[1] = z1;                                      \
  g.size[2] = z2;                                      \
  g.size[3] = z3;                                      \
  g.size[4] = z4;                                      \
  g.size[5] = z5;                                      \
  g.size[6] = z6;                                      \
  g.size[7] = z7;                                      \
  g.stride[0] = t0;                                    \
  g.stride[1] = t1;                                    \
  g.stride[2] = t2;                                    \
  g.stride[3] = t3;                                    \
  g.stride[4] = t4;                                    \
  g.stride[5] = t5;                                    \
  g.stride[6] = t6;                                    \
  g.stride[7] = t7

// Input offset of output element i for a compile-time rank R (U unsigned, S signed index).
template <int R, typename U, typename S>
__device__ __forceinline__ S offsetOf(U i, const Geom& g) {
  S off = 0;
#pragma unroll
  for (int d = R - 1; d > 0; d--) {
    const U size = (U)g.size[d];
    const U q = i / size;
    off += (S)(i - q * size) * (S)g.stride[d];
    i = q;
  }
  return off + (S)i * (S)g.stride[0];
}

// The same for a run-time rank, with sizes then strides in device memory (64-bit).
__device__ __forceinline__ long long offsetOfDyn(unsigned long long i, const long long* geom,
                                                 int rank) {
  long long off = 0;
  for (int d = rank - 1; d > 0; d--) {
    const unsigned long long size = (unsigned long long)geom[d];
    const unsigned long long q = i / size;
    off += (long long)(i - q * size) * geom[rank + d];
    i = q;
  }
  return off + (long long)i * geom[rank];
}

// out[i] = in[offset(i)] for i < n; four independent loads in flight per thread.
template <int W, int R, typename U, typename S>
__device__ __forceinline__ void stridedCopy(void* out, const void* in, U n, const Geom& g) {
  typedef typename Unit<W>::T T;
  T* o = (T*)out;
  const T* x = (const T*)in;
  const U step = gridStride<U>();
  U i = firstThread<U>();
  for (; i + 3 * step < n; i += 4 * step) {
    const T v0 = x[offsetOf<R, U, S>(i, g)];
    const T v1 = x[offsetOf<R, U, S>(i + step, g)];
    const T v2 = x[offsetOf<R, U, S>(i + 2 * step, g)];
    const T v3 = x[offsetOf<R, U, S>(i + 3 * step, g)];
    o[i] = v0;
    o[i + step] = v1;
    o[i + 2 * step] = v2;
    o[i + 3 * step] = v3;
  }
  for (; i < n; i += step) o[i] = x[offsetOf<R, U, S>(i, g)];
}

#define STRIDED_COPY(W, R)                                                                   \
  extern "C" __global__ void strided_copy_b##W##_r##R##_n32(void* out, const void* in,       \
                                                            long long n, GEOM_PARAMS) {      \
    GEOM_INIT;                                                                               \
    stridedCopy<W, R, unsigned, int>(out, in, (unsigned)n, g);                               \
  }

#define STRIDED_COPY_RANKS(W) \
  STRIDED_COPY(W, 1)          \
  STRIDED_COPY(W, 2)          \
  STRIDED_COPY(W, 3)          \
  STRIDED_COPY(W, 4)          \
  STRIDED_COPY(W, 5)          \
  STRIDED_COPY(W, 6)          \
  STRIDED_COPY(W, 7)          \
  STRIDED_COPY(W, 8)

STRIDED_COPY_RANKS(1)
STRIDED_COPY_RANKS(2)
STRIDED_COPY_RANKS(4)
STRIDED_COPY_RANKS(8)
STRIDED_COPY_RANKS(16)

// Any rank, 64-bit indexing; geom = sizes[rank] then strides[rank] in device memory.
template <int W>
__device__ __forceinline__ void stridedCopyDyn(void* out, const void* in, long long n,
                                               const long long* geom, int rank) {
  typedef typename Unit<W>::T T;
  T* o = (T*)out;
  const T* x = (const T*)in;
  const unsigned long long step = gridStride<unsigned long long>();
  for (unsigned long long i = firstThread<unsigned long long>(); i < (unsigned long long)n;
       i += step) {
    o[i] = x[offsetOfDyn(i, geom, rank)];
  }
}

#define STRIDED_COPY_DYN(W)                                                                   \
  extern "C" __global__ void strided_copy_b##W##_dyn(void* out, const void* in, long long n, \
                                                     const long long* geom, int rank) {      \
    stridedCopyDyn<W>(out, in, n, geom, rank);                                               \
  }

STRIDED_COPY_DYN(1)
STRIDED_COPY_DYN(2)
STRIDED_COPY_DYN(4)
STRIDED_COPY_DYN(8)
STRIDED_COPY_DYN(16)

// int4: output byte b holds elements 2b and 2b+1 (the high nibble is 0 past the end); element
// e reads input nibble base + offset(e).
template <int R>
__device__ __forceinline__ void stridedNibbles(uint8_t* out, const uint8_t* in, int base,
                                               unsigned n, const Geom& g) {
  const unsigned bytes = (n + 1) / 2;
  const unsigned step = gridStride<unsigned>();
  for (unsigned b = firstThread<unsigned>(); b < bytes; b += step) {
    const unsigned e = 2 * b;
    unsigned v = nibbleAt(in, base + offsetOf<R, unsigned, int>(e, g));
    if (e + 1 < n) v |= nibbleAt(in, base + offsetOf<R, unsigned, int>(e + 1, g)) << 4;
    out[b] = (uint8_t)v;
  }
}

#define STRIDED_NIBBLES(R)                                                                  \
  extern "C" __global__ void strided_copy_i4_r##R##_n32(uint8_t* out, const uint8_t* in,    \
                                                        long long base, long long n,        \
                                                        GEOM_PARAMS) {                      \
    GEOM_INIT;                                                                              \
    stridedNibbles<R>(out, in, (int)base, (unsigned)n, g);                                  \
  }

STRIDED_NIBBLES(1)
STRIDED_NIBBLES(2)
STRIDED_NIBBLES(3)
STRIDED_NIBBLES(4)
STRIDED_NIBBLES(5)
STRIDED_NIBBLES(6)
STRIDED_NIBBLES(7)
STRIDED_NIBBLES(8)

extern "C" __global__ void strided_copy_i4_dyn(uint8_t* out, const uint8_t* in, long long base,
                                               long long n, const long long* geom, int rank) {
  const unsigned long long bytes = ((unsigned long long)n + 1) / 2;
  const unsigned long long step = gridStride<unsigned long long>();
  for (unsigned long long b = firstThread<unsigned long long>(); b < bytes; b += step) {
    const unsigned long long e = 2 * b;
    unsigned v = nibbleAt(in, base + offsetOfDyn(e, geom, rank));
    if (e + 1 < (unsigned long long)n) v |= nibbleAt(in, base + offsetOfDyn(e + 1, geom, rank)) << 4;
    out[b] = (uint8_t)v;
  }
}

// ---------------------------------------------------------------------------------------------
// Contiguous copies: `bytes` bytes from src to dst, in V-byte units (both pointers V-aligned),
// then the tail bytes.

template <int V>
__device__ __forceinline__ void contiguousCopy(uint8_t* dst, const uint8_t* src,
                                               unsigned long long bytes) {
  typedef typename Unit<V>::T T;
  T* o = (T*)dst;
  const T* x = (const T*)src;
  const unsigned long long units = bytes / V;
  const unsigned long long step = gridStride<unsigned long long>();
  unsigned long long i = firstThread<unsigned long long>();
  for (; i + 3 * step < units; i += 4 * step) {
    const T v0 = x[i];
    const T v1 = x[i + step];
    const T v2 = x[i + 2 * step];
    const T v3 = x[i + 3 * step];
    o[i] = v0;
    o[i + step] = v1;
    o[i + 2 * step] = v2;
    o[i + 3 * step] = v3;
  }
  for (; i < units; i += step) o[i] = x[i];
  const unsigned long long t = firstThread<unsigned long long>();
  if (t < bytes - units * V) dst[units * V + t] = src[units * V + t];
}

#define CONTIGUOUS_COPY(V)                                                                 \
  extern "C" __global__ void contiguous_copy_v##V(uint8_t* dst, const uint8_t* src,       \
                                                  long long bytes) {                      \
    contiguousCopy<V>(dst, src, (unsigned long long)bytes);                               \
  }

CONTIGUOUS_COPY(1)
CONTIGUOUS_COPY(2)
CONTIGUOUS_COPY(4)
CONTIGUOUS_COPY(8)
CONTIGUOUS_COPY(16)

// ---------------------------------------------------------------------------------------------
// Tiled transpose: out[b][p][q] = in[b * batchStride + q * qStride + p] for out [B, P, Q]
// (contiguous). 32x32 tiles through shared memory: reads run along p, writes along q.
// Block (32, 8); grid (ceil(P/32), ceil(Q/32), min(B, 65535)).

template <typename T>
__device__ __forceinline__ void transposeTiles(T* out, const T* in, long long batches, long long P,
                                               long long Q, long long batchStride,
                                               long long qStride) {
  __shared__ T tile[32][33];
  const long long p0 = (long long)blockIdx.x * 32;
  const long long q0 = (long long)blockIdx.y * 32;
  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  for (long long b = blockIdx.z; b < batches; b += gridDim.z) {
    const T* src = in + b * batchStride;
    T* dst = out + b * P * Q;
#pragma unroll
    for (int j = 0; j < 32; j += 8) {
      const long long q = q0 + ty + j;
      const long long p = p0 + tx;
      if (q < Q && p < P) tile[ty + j][tx] = src[q * qStride + p];
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 32; j += 8) {
      const long long p = p0 + ty + j;
      const long long q = q0 + tx;
      if (p < P && q < Q) dst[p * Q + q] = tile[tx][ty + j];
    }
    __syncthreads();
  }
}

#define TRANSPOSE(W)                                                                          \
  extern "C" __global__ void transpose_b##W(void* out, const void* in, long long batches,     \
                                            long long P, long long Q, long long batchStride, \
                                            long long qStride) {                             \
    typedef Unit<W>::T T;                                                                    \
    transposeTiles<T>((T*)out, (const T*)in, batches, P, Q, batchStride, qStride);           \
  }

TRANSPOSE(1)
TRANSPOSE(2)
TRANSPOSE(4)
TRANSPOSE(8)

// ---------------------------------------------------------------------------------------------
// 2-D block copy (one concat part): dst[r * dstStride + c] = src[r * cols + c].

template <int W, typename U>
__device__ __forceinline__ void copy2d(void* dst, U dstStride, const void* src, U rows, U cols) {
  typedef typename Unit<W>::T T;
  T* o = (T*)dst;
  const T* x = (const T*)src;
  const U n = rows * cols;
  const U step = gridStride<U>();
  for (U i = firstThread<U>(); i < n; i += step) {
    const U r = i / cols;
    o[r * dstStride + (i - r * cols)] = x[i];
  }
}

#define COPY_2D(W)                                                                          \
  extern "C" __global__ void copy2d_b##W##_n32(void* dst, long long dstStride,              \
                                               const void* src, long long rows,             \
                                               long long cols) {                            \
    copy2d<W, unsigned>(dst, (unsigned)dstStride, src, (unsigned)rows, (unsigned)cols);     \
  }                                                                                         \
  extern "C" __global__ void copy2d_b##W##_n64(void* dst, long long dstStride,              \
                                               const void* src, long long rows,             \
                                               long long cols) {                            \
    copy2d<W, unsigned long long>(dst, (unsigned long long)dstStride, src,                  \
                                  (unsigned long long)rows, (unsigned long long)cols);      \
  }

COPY_2D(1)
COPY_2D(2)
COPY_2D(4)
COPY_2D(8)
COPY_2D(16)

// int4 concat part: output nibbles [r * total + colStart, + chunk) of each row r < rows come
// from src row r (chunk nibbles). One thread per touched output byte; a byte shared with
// another part keeps that part's nibble (read-modify-write: parts run one launch after
// another on the stream, and two rows of one part never share a byte because other parts
// lie between them). Nibbles at or past `count` (the output's padding) are written as 0.
extern "C" __global__ void concat_part_i4(uint8_t* out, const uint8_t* src, long long rows,
                                          long long chunk, long long total, long long colStart,
                                          long long count) {
  const long long perRow = chunk / 2 + 1;  // bytes one row's run can touch, at most
  const long long n = rows * perRow;
  const long long step = gridStride<long long>();
  for (long long i = firstThread<long long>(); i < n; i += step) {
    const long long r = i / perRow;
    const long long start = r * total + colStart;
    const long long end = start + chunk;
    const long long b = start / 2 + (i - r * perRow);
    if (b > (end - 1) / 2) continue;
    unsigned v = 0;
    bool readOld = false;
    unsigned old = 0;
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const long long e = 2 * b + h;
      unsigned nib = 0;
      if (e >= count) {
        nib = 0;
      } else if (e >= start && e < end) {
        nib = nibbleAt(src, r * chunk + (e - start));
      } else {
        if (!readOld) {
          old = out[b];
          readOld = true;
        }
        nib = (old >> (4 * h)) & 15u;
      }
      v |= nib << (4 * h);
    }
    out[b] = (uint8_t)v;
  }
}

// ---------------------------------------------------------------------------------------------
// Gather: x viewed as [outer, n, inner] units, out as [outer, m, inner]; out (o, j, k) reads
// x (o, idx[j] (+ n if negative and `wrap`), k). gather wraps negative indices as NumPy's take
// does; embedding does not (ids in [0, n), as torch's embedding). A bad index writes zeros and
// is reported in `flag`:
//   pos    (u64): smallest bad position of this launch (all ones: none); reset by the last block
//   first  (u64): position of the first reported bad index since the host last cleared it
//   value  (i64): its raw value
//   blocks (u32): blocks finished in this launch (the last one reports, then resets it)

struct GatherFlag {
  unsigned long long pos;
  unsigned long long first;
  long long value;
  unsigned int blocks;
};

__device__ __forceinline__ bool wrapIndex(long long& v, long long n, int wrap) {
  if (v < 0 && wrap) v += n;
  return v >= 0 && v < n;
}

// Run by every thread of every block once its work is done: the last block to finish records
// the raw value at the smallest bad position (all launches of one flag are stream-ordered).
template <typename Idx>
__device__ __forceinline__ void finishGather(GatherFlag* flag, const Idx* idx) {
  __shared__ bool isLast;
  __threadfence();  // this thread's atomicMin on pos is visible before the block counts as done
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    const unsigned done = atomicAdd(&flag->blocks, 1u);
    isLast = done == gridDim.x * gridDim.y - 1;
  }
  __syncthreads();
  if (isLast && threadIdx.x == 0 && threadIdx.y == 0) {
    __threadfence();
    const unsigned long long pos = atomicAdd(&flag->pos, 0ull);
    if (pos != ~0ull) {
      if (flag->first == ~0ull) {
        flag->first = pos;
        flag->value = (long long)idx[pos];
      }
      flag->pos = ~0ull;
    }
    flag->blocks = 0;
  }
}

template <int W, typename Idx, typename U>
__device__ __forceinline__ void gatherUnits(void* out, const void* x, const Idx* idx, U outer,
                                            U n, U m, U inner, GatherFlag* flag, int wrap) {
  typedef typename Unit<W>::T T;
  T* o = (T*)out;
  const T* src = (const T*)x;
  const U total = outer * m * inner;
  const U step = gridStride<U>();
  for (U i = firstThread<U>(); i < total; i += step) {
    const U t = i / inner;
    const U k = i - t * inner;
    U j = t;
    U row = 0;
    if (outer != 1) {
      row = t / m;
      j = t - row * m;
    }
    long long v = (long long)idx[j];
    if (wrapIndex(v, (long long)n, wrap)) {
      o[i] = src[(row * n + (U)v) * inner + k];
    } else {
      o[i] = zeroOf<T>();
      if (k == 0) atomicMin(&flag->pos, (unsigned long long)j);
    }
  }
  finishGather<Idx>(flag, idx);
}

#define GATHER(W, IB, Idx)                                                                      \
  extern "C" __global__ void gather_b##W##_idx##IB##_n32(void* out, const void* x,              \
                                                         const Idx* idx, long long outer,       \
                                                         long long n, long long m,              \
                                                         long long inner, GatherFlag* flag,     \
                                                         int wrap) {                            \
    gatherUnits<W, Idx, unsigned>(out, x, idx, (unsigned)outer, (unsigned)n, (unsigned)m,       \
                                  (unsigned)inner, flag, wrap);                                 \
  }                                                                                             \
  extern "C" __global__ void gather_b##W##_idx##IB##_n64(void* out, const void* x,              \
                                                         const Idx* idx, long long outer,       \
                                                         long long n, long long m,              \
                                                         long long inner, GatherFlag* flag,     \
                                                         int wrap) {                            \
    gatherUnits<W, Idx, unsigned long long>(out, x, idx, (unsigned long long)outer,             \
                                            (unsigned long long)n, (unsigned long long)m,       \
                                            (unsigned long long)inner, flag, wrap);             \
  }

#define GATHER_INDEX_TYPES(W) \
  GATHER(W, 32, int)          \
  GATHER(W, 64, long long)

GATHER_INDEX_TYPES(1)
GATHER_INDEX_TYPES(2)
GATHER_INDEX_TYPES(4)
GATHER_INDEX_TYPES(8)
GATHER_INDEX_TYPES(16)

// int4 gather (odd inner extents): one thread per output byte, elements 2b and 2b+1.
template <typename Idx>
__device__ __forceinline__ void gatherNibbles(uint8_t* out, const uint8_t* x, const Idx* idx,
                                              long long outer, long long n, long long m,
                                              long long inner, GatherFlag* flag, int wrap) {
  const long long total = outer * m * inner;
  const long long bytes = (total + 1) / 2;
  const long long step = gridStride<long long>();
  for (long long b = firstThread<long long>(); b < bytes; b += step) {
    unsigned v = 0;
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const long long e = 2 * b + h;
      if (e >= total) break;
      const long long t = e / inner;
      const long long k = e - t * inner;
      const long long row = t / m;
      const long long j = t - row * m;
      long long w = (long long)idx[j];
      if (wrapIndex(w, n, wrap)) {
        v |= nibbleAt(x, (row * n + w) * inner + k) << (4 * h);
      } else if (k == 0) {
        atomicMin(&flag->pos, (unsigned long long)j);
      }
    }
    out[b] = (uint8_t)v;
  }
  finishGather<Idx>(flag, idx);
}

extern "C" __global__ void gather_i4_idx32(uint8_t* out, const uint8_t* x, const int* idx,
                                           long long outer, long long n, long long m,
                                           long long inner, GatherFlag* flag, int wrap) {
  gatherNibbles<int>(out, x, idx, outer, n, m, inner, flag, wrap);
}
extern "C" __global__ void gather_i4_idx64(uint8_t* out, const uint8_t* x, const long long* idx,
                                           long long outer, long long n, long long m,
                                           long long inner, GatherFlag* flag, int wrap) {
  gatherNibbles<long long>(out, x, idx, outer, n, m, inner, flag, wrap);
}

// Index check alone, for gathers whose output is empty (the indices still must be valid).
template <typename Idx>
__device__ __forceinline__ void checkIndices(const Idx* idx, long long m, long long n,
                                             GatherFlag* flag, int wrap) {
  const long long step = gridStride<long long>();
  for (long long j = firstThread<long long>(); j < m; j += step) {
    long long v = (long long)idx[j];
    if (!wrapIndex(v, n, wrap)) atomicMin(&flag->pos, (unsigned long long)j);
  }
  finishGather<Idx>(flag, idx);
}

extern "C" __global__ void check_indices_idx32(const int* idx, long long m, long long n,
                                               GatherFlag* flag, int wrap) {
  checkIndices<int>(idx, m, n, flag, wrap);
}
extern "C" __global__ void check_indices_idx64(const long long* idx, long long m, long long n,
                                               GatherFlag* flag, int wrap) {
  checkIndices<long long>(idx, m, n, flag, wrap);
}

// ---------------------------------------------------------------------------------------------
// triu / tril over the last two dims [rows, cols]: keep where col - row >= k (upper) or
// <= k (lower), zero bits elsewhere.

__device__ __forceinline__ bool keepTriangle(long long row, long long col, long long k,
                                             int upper) {
  const long long d = col - row;
  return upper ? d >= k : d <= k;
}

template <int W, typename U>
__device__ __forceinline__ void triangle(void* out, const void* in, U n, U rows, U cols,
                                         long long k, int upper) {
  typedef typename Unit<W>::T T;
  T* o = (T*)out;
  const T* x = (const T*)in;
  const U step = gridStride<U>();
  for (U i = firstThread<U>(); i < n; i += step) {
    const U t = i / cols;
    const U col = i - t * cols;
    const U row = t % rows;
    o[i] = keepTriangle((long long)row, (long long)col, k, upper) ? x[i] : zeroOf<T>();
  }
}

#define TRIANGLE(W)                                                                         \
  extern "C" __global__ void triangle_b##W##_n32(void* out, const void* in, long long n,    \
                                                 long long rows, long long cols,            \
                                                 long long k, int upper) {                  \
    triangle<W, unsigned>(out, in, (unsigned)n, (unsigned)rows, (unsigned)cols, k, upper);  \
  }                                                                                         \
  extern "C" __global__ void triangle_b##W##_n64(void* out, const void* in, long long n,    \
                                                 long long rows, long long cols,            \
                                                 long long k, int upper) {                  \
    triangle<W, unsigned long long>(out, in, (unsigned long long)n,                         \
                                    (unsigned long long)rows, (unsigned long long)cols, k,  \
                                    upper);                                                 \
  }

TRIANGLE(1)
TRIANGLE(2)
TRIANGLE(4)
TRIANGLE(8)

extern "C" __global__ void triangle_i4(uint8_t* out, const uint8_t* in, long long n,
                                       long long rows, long long cols, long long k, int upper) {
  const long long bytes = (n + 1) / 2;
  const long long step = gridStride<long long>();
  for (long long b = firstThread<long long>(); b < bytes; b += step) {
    const unsigned byte = in[b];
    unsigned v = 0;
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const long long e = 2 * b + h;
      if (e >= n) break;
      const long long t = e / cols;
      if (keepTriangle(t % rows, e - t * cols, k, upper)) v |= byte & (15u << (4 * h));
    }
    out[b] = (uint8_t)v;
  }
}

// ---------------------------------------------------------------------------------------------
// Causal mask: bool [queries, keys], out[i][j] = j <= i + offset.

template <typename U>
__device__ __forceinline__ void causalMask(uint8_t* out, U n, U keys, long long offset) {
  const U step = gridStride<U>();
  for (U e = firstThread<U>(); e < n; e += step) {
    const U i = e / keys;
    const U j = e - i * keys;
    out[e] = (long long)j <= (long long)i + offset ? 1 : 0;
  }
}

extern "C" __global__ void causal_mask_n32(uint8_t* out, long long n, long long keys,
                                           long long offset) {
  causalMask<unsigned>(out, (unsigned)n, (unsigned)keys, offset);
}
extern "C" __global__ void causal_mask_n64(uint8_t* out, long long n, long long keys,
                                           long long offset) {
  causalMask<unsigned long long>(out, (unsigned long long)n, (unsigned long long)keys, offset);
}

// ---------------------------------------------------------------------------------------------
// sliceScatter: out = x, except out[row][start + r][k] = src[row][r][k] for r < m, with x and
// out viewed as [outer, n, inner] and src as [outer, m, inner]. The start is the launch
// parameter startValue (startKind 0) or is read from device memory as int32 (1) or int64 (2),
// once per thread, so a recorded CUDA graph writes at the current value on each replay. It is
// clamped into [0, n - m], as on the CPU.

__device__ __forceinline__ long long scatterStart(const void* startPtr, int startKind,
                                                  long long startValue, long long last) {
  long long s = startValue;
  if (startKind == 1) s = (long long)*static_cast<const int*>(startPtr);
  else if (startKind == 2) s = *static_cast<const long long*>(startPtr);
  return s < 0 ? 0 : (s > last ? last : s);
}

// The unit output unit i copies (i, n, m, inner and start in units of the unit's width).
template <typename T, typename U>
__device__ __forceinline__ const T* scatterSource(const T* x, const T* src, U i, U n, U m,
                                                  U inner, U start) {
  const U t = i / inner;
  const U k = i - t * inner;
  const U row = t / n;
  const U r = (t - row * n) - start;  // wraps to >= m for indices before the window
  return r < m ? src + ((row * m + r) * inner + k) : x + i;
}

// W-byte units; four independent loads in flight per thread.
template <int W, typename U>
__device__ __forceinline__ void sliceScatterUnits(void* out, const void* x, const void* src,
                                                  const void* startPtr, int startKind,
                                                  long long startValue, U total, U n, U m,
                                                  U inner) {
  typedef typename Unit<W>::T T;
  T* o = (T*)out;
  const T* a = (const T*)x;
  const T* b = (const T*)src;
  const U start = (U)scatterStart(startPtr, startKind, startValue, (long long)n - (long long)m);
  const U step = gridStride<U>();
  U i = firstThread<U>();
  for (; i + 3 * step < total; i += 4 * step) {
    const T v0 = *scatterSource<T, U>(a, b, i, n, m, inner, start);
    const T v1 = *scatterSource<T, U>(a, b, i + step, n, m, inner, start);
    const T v2 = *scatterSource<T, U>(a, b, i + 2 * step, n, m, inner, start);
    const T v3 = *scatterSource<T, U>(a, b, i + 3 * step, n, m, inner, start);
    o[i] = v0;
    o[i + step] = v1;
    o[i + 2 * step] = v2;
    o[i + 3 * step] = v3;
  }
  for (; i < total; i += step) o[i] = *scatterSource<T, U>(a, b, i, n, m, inner, start);
}

#define SLICE_SCATTER(W)                                                                        \
  extern "C" __global__ void slice_scatter_b##W##_n32(                                          \
      void* out, const void* x, const void* src, const void* startPtr, int startKind,           \
      long long startValue, long long total, long long n, long long m, long long inner) {       \
    sliceScatterUnits<W, unsigned>(out, x, src, startPtr, startKind, startValue,                \
                                   (unsigned)total, (unsigned)n, (unsigned)m, (unsigned)inner); \
  }                                                                                             \
  extern "C" __global__ void slice_scatter_b##W##_n64(                                          \
      void* out, const void* x, const void* src, const void* startPtr, int startKind,           \
      long long startValue, long long total, long long n, long long m, long long inner) {       \
    sliceScatterUnits<W, unsigned long long>(                                                   \
        out, x, src, startPtr, startKind, startValue, (unsigned long long)total,                \
        (unsigned long long)n, (unsigned long long)m, (unsigned long long)inner);               \
  }

SLICE_SCATTER(1)
SLICE_SCATTER(2)
SLICE_SCATTER(4)
SLICE_SCATTER(8)
SLICE_SCATTER(16)

// In place (out already holds x): only the window is written, one unit of src per thread
// step; `total` counts src's units.
template <int W, typename U>
__device__ __forceinline__ void sliceWriteUnits(void* out, const void* src, const void* startPtr,
                                                int startKind, long long startValue, U total,
                                                U n, U m, U inner) {
  typedef typename Unit<W>::T T;
  T* o = (T*)out;
  const T* b = (const T*)src;
  const U start = (U)scatterStart(startPtr, startKind, startValue, (long long)n - (long long)m);
  const U step = gridStride<U>();
  for (U i = firstThread<U>(); i < total; i += step) {
    const U t = i / inner;
    const U k = i - t * inner;
    const U row = t / m;
    const U r = t - row * m;
    o[(row * n + start + r) * inner + k] = b[i];
  }
}

#define SLICE_WRITE(W)                                                                         \
  extern "C" __global__ void slice_write_b##W##_n32(void* out, const void* src,                \
                                                    const void* startPtr, int startKind,       \
                                                    long long startValue, long long total,     \
                                                    long long n, long long m, long long inner) { \
    sliceWriteUnits<W, unsigned>(out, src, startPtr, startKind, startValue, (unsigned)total,   \
                                 (unsigned)n, (unsigned)m, (unsigned)inner);                   \
  }                                                                                            \
  extern "C" __global__ void slice_write_b##W##_n64(void* out, const void* src,                \
                                                    const void* startPtr, int startKind,       \
                                                    long long startValue, long long total,     \
                                                    long long n, long long m, long long inner) { \
    sliceWriteUnits<W, unsigned long long>(                                                    \
        out, src, startPtr, startKind, startValue, (unsigned long long)total,                  \
        (unsigned long long)n, (unsigned long long)m, (unsigned long long)inner);              \
  }

SLICE_WRITE(1)
SLICE_WRITE(2)
SLICE_WRITE(4)
SLICE_WRITE(8)
SLICE_WRITE(16)

// int4 with an odd inner extent (window rows start mid-byte): one thread per output byte
// assembles elements 2b and 2b+1 from x or src; the padding nibble past the end is 0.
extern "C" __global__ void slice_scatter_i4(uint8_t* out, const uint8_t* x, const uint8_t* src,
                                            const void* startPtr, int startKind,
                                            long long startValue, long long total, long long n,
                                            long long m, long long inner) {
  const long long start = scatterStart(startPtr, startKind, startValue, n - m);
  const long long bytes = (total + 1) / 2;
  const long long step = gridStride<long long>();
  for (long long b = firstThread<long long>(); b < bytes; b += step) {
    unsigned v = 0;
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const long long e = 2 * b + h;
      if (e >= total) break;
      const long long t = e / inner;
      const long long k = e - t * inner;
      const long long row = t / n;
      const long long r = (t - row * n) - start;
      const unsigned nibble =
          r >= 0 && r < m ? nibbleAt(src, (row * m + r) * inner + k) : nibbleAt(x, e);
      v |= nibble << (4 * h);
    }
    out[b] = (uint8_t)v;
  }
}
