// int8 GEMM on Hopper tensor cores (wgmma) with the qlinear epilogue fused (lowering in
// lib/backends/cuda/wgmma.ts; the unfused path in kernels/linear.cu computes the same function).
//
//   y[m, n] = act(acc[m, n] · sxd · swd[n or 0] + b[n])     acc = Σ_k xq[m, k] · wq[n, k] (int32)
//
// xq int8 [M, K] row-major, wq int8 [N, K] row-major, y [M, N] row-major float32 / float16 /
// bfloat16. Scales and the bias are float32 (kind 0), float16 (1) or bfloat16 (2), read with
// loadScale (common.cuh). Activations: none / relu (runtime act 0 / 1) and, for 16-bit
// outputs, gelu in its tanh form (the _gelu_tanh kernels).
//
// With a residual r (not null: [M, N] of y's dtype, 16-byte aligned) the kernel stores
// round(round(y) + r), the unfused `add` of the residual fusion pass: the output rounded as it
// would be stored, plus r in float32, rounded once.
//
// Epilogue arithmetic, by output dtype:
// - float32: the scaled sum is formed in double and rounded once, exactly like
//   qlinear_epilogue_i32_<out> (kernels/linear.cu): acc, sxd · swd (both float values) and
//   their product are exact in double, then one __dmul_rn, one __dadd_rn and one rounding;
//   relu maps t <= 0 to +0 before it.
// - float16 / bfloat16: float32: one FMA with sxd · swd rounded to float, relu or gelu in
//   float32 (gelu with the special-function unit's 2^x and reciprocal, geluTanhFast), one
//   rounding. The result is within one output ulp of the double epilogue's (equal except
//   where t lies within float32 rounding error of a rounding boundary). The double epilogue's
//   arithmetic and conversions, unrolled over the tile, made the kernel's code too large for
//   the instruction cache and its epilogue as long as the main loop at K = 768.
//
// Structure: persistent CTAs (grid = min(tiles, SMs)) of 384 threads: one producer warpgroup
// (one thread issues the TMA tile loads of both operands, tile after tile: 128-byte K slices,
// 128B swizzle, out of bounds rows and columns read as zero) and two consumer warpgroups
// issuing wgmma.m64nBNk32.s32.s8.s8 from shared-memory descriptors, per-stage full / empty
// mbarriers. Cooperative tiles: both consumer warpgroups work on each tile, BM/2 rows each.
// Ping-pong tiles (pp): each consumer warpgroup takes every other tile whole, and the two take
// turns on the tensor cores, so one's epilogue overlaps the other's main loop. Each consumer
// warpgroup loads its tile's column scales and biases into registers before the tile's main
// loop, as raw bits converted after it (the load latency hides behind it), and stages them
// (doubles, or floats) in its own shared-memory slice after it, so the epilogue reads shared
// memory only. The epilogue goes from the accumulator fragments to global memory while the
// producer already prefetches the next tile.
//
// Kernels: wgmma_i8_<tile>_<out> for tiles 128x256, 128x192, 128x128, 256x128, 128x64,
// pp128x128, pp64x256 and out f32, f16, bf16 (act 0 none or 1 relu), and
// wgmma_i8_<tile>_<f16|bf16>_gelu_tanh.
// Parameters: (CUtensorMap tmX, CUtensorMap tmW, y, sxd, sxdKind, swd, swdKind, swdPerChannel,
// bias, biasKind, act, M, N, K, tilesM, tilesN, groupM, residual); tmX: box {128, BM} over xq as
// a 2-D uint8 tensor {K, M}, tmW: box {128, BN} over wq {K, N}. K must be a multiple of 16 (TMA row
// strides) and N even (float32 outputs are stored in pairs) or a multiple of 8 (16-bit outputs
// are stored 8 at a time). Only the sm_90a build has bodies: the compute_80 build compiles empty stubs that are never launched.

#include <cuda.h>

#include "common.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WGMMA_I8_SM90 1
#else
#define WGMMA_I8_SM90 0
#endif

// Bounded mbarrier waits: a pipeline deadlock traps (after ~2^32 cycles) instead of hanging.
#ifndef WGMMA_I8_TIMEOUT
#define WGMMA_I8_TIMEOUT 1
#endif

namespace wgi8 {

constexpr int kBK = 128;  // bytes (= int8 elements) of K per pipeline stage: one swizzle row
constexpr int kThreads = 384;
// Row pitch of a warp's output scratch: 64 16-bit outputs (128 bytes) and 16 bytes of padding,
// so that the fragment writes (8 rows at once) and the 16-byte row reads hit distinct banks.
constexpr int kScratchPitch = 144;

template <int BM, int BN, int STAGES>
struct Cfg {
  static constexpr unsigned A_BYTES = BM * kBK;
  static constexpr unsigned B_BYTES = BN * kBK;
  static constexpr unsigned STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr unsigned BAR_OFFSET = STAGES * STAGE_BYTES;
  static constexpr unsigned EPI_OFFSET = BAR_OFFSET + 256;
  // Per consumer warpgroup: BN column scales and BN biases as doubles.
  static constexpr unsigned EPI_BYTES = 2 * 2 * BN * 8;
  // Per consumer warp: the 16 × 64 outputs it stores next, in rows of kScratchPitch bytes.
  static constexpr unsigned SCRATCH_OFFSET = EPI_OFFSET + EPI_BYTES;
  static constexpr unsigned SCRATCH_BYTES = 8 * 16 * kScratchPitch;
  static constexpr unsigned SMEM = 1024 /* alignment slack */ + SCRATCH_OFFSET + SCRATCH_BYTES;
  static_assert(BM == 64 || BM == 128 || BM == 256, "BM");
  static_assert(BN % 64 == 0 && BN >= 64 && BN <= 256, "BN");
  static_assert(2 * STAGES * 8 <= 256, "barriers");
  static_assert(SMEM <= 232448, "shared memory");
};

// Output element types: float32 from double (the exact epilogue), 16-bit pairs from floats
// (the float32 epilogue, see gemm()).
struct OutF32 {
  typedef float T;
  static constexpr bool kFloatEpilogue = false;
  __device__ static T fromD(double v) { return __double2float_rn(v); }
};
template <bool Bf16>
struct OutH16 {
  typedef unsigned short T;
  static constexpr bool kFloatEpilogue = true;
  // Two floats rounded and packed (low half first) by one conversion instruction.
  __device__ static unsigned pack(float a, float b) {
    if constexpr (Bf16) {
      const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
      return *reinterpret_cast<const unsigned*>(&v);
    } else {
      const __half2 v = __floats2half2_rn(a, b);
      return *reinterpret_cast<const unsigned*>(&v);
    }
  }
  // Two packed outputs (rounded) plus two packed residuals: summed in float32 and rounded once,
  // the unfused `add` (float32 holds the exact sum's correct rounding, see gemv.cuh).
  __device__ static unsigned addPacked(unsigned v, unsigned r) {
    float2 a, b;
    if constexpr (Bf16) {
      a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v));
      b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&r));
    } else {
      a = __half22float2(*reinterpret_cast<const __half2*>(&v));
      b = __half22float2(*reinterpret_cast<const __half2*>(&r));
    }
    return pack(a.x + b.x, a.y + b.y);
  }
};
typedef OutH16<false> OutF16;
typedef OutH16<true> OutBF16;

__device__ __forceinline__ void storePair(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}

#if WGMMA_I8_SM90

// gelu (tanh form), x · sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3) (common.cuh
// gelu_tanh), as x / (1 + 2^z) where z = -2u · log2(e) = x (k0 + k1 x^2): three FMA-pipe
// operations, the special-function unit's 2^z and reciprocal (flushing subnormals: 2^z below
// 2^-126 leaves 1 + 2^z = 1, and the reciprocal's argument is at least 1), and one product.
// The epilogue of a GELU layer is a latency-bound chain of about twenty instructions per output
// on one warp per scheduler (Nsight Compute on GPT-2's c_fc); the IEEE-safe exp2 and division
// sequences were half of it. The relative error (a few 1e-6 where 2^z is large) is far below
// a 16-bit output's half ulp; x → -inf gives -0 (fmaxf as in common.cuh), NaN stays NaN.
__device__ __forceinline__ float ex2Ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float rcpFtz(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float geluTanhFast(float x) {
  constexpr float k0 = -2.302208198144325f;    // -2 sqrt(2/pi) log2(e)
  constexpr float k1 = -0.1029432395800235f;   // k0 · 0.044715
  const float z = __fmul_rn(x, __fmaf_rn(k1, __fmul_rn(x, x), k0));
  return __fmul_rn(fmaxf(x, -kMaxFloat), rcpFtz(__fadd_rn(1.0f, ex2Ftz(z))));
}

// int32 -> double without a 64-bit conversion instruction (those run at a quarter of the
// double add rate): 2^52 + 2^31 + a is exact in double, and so is the difference.
__device__ __forceinline__ double intToDouble(int a) {
  return __dsub_rn(__hiloint2double(0x43300000, a ^ (int)0x80000000), 4503601774854144.0);
}

__device__ __forceinline__ unsigned smemU32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbarInit(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void fenceBarrierInit() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

__device__ __forceinline__ void mbarArriveExpectTx(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbarArrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

__device__ __forceinline__ unsigned mbarTryWait(unsigned bar, unsigned parity) {
  unsigned ok;
  asm volatile(
      "{\n.reg .pred P1;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%1], %2;\n"
      "selp.b32 %0, 1, 0, P1;\n}\n"
      : "=r"(ok)
      : "r"(bar), "r"(parity)
      : "memory");
  return ok;
}

// Waits until the phase with parity `parity` has completed.
__device__ __forceinline__ void mbarWait(unsigned bar, unsigned parity) {
  if (mbarTryWait(bar, parity)) return;
#if WGMMA_I8_TIMEOUT
  const long long t0 = clock64();
#endif
  while (!mbarTryWait(bar, parity)) {
#if WGMMA_I8_TIMEOUT
    if (clock64() - t0 > (1ll << 32)) asm volatile("trap;");
#endif
  }
}

// Barrier over the 128 threads of one consumer warpgroup (ids 1 and 2; 0 is __syncthreads).
__device__ __forceinline__ void warpgroupBarrier(int id) {
  asm volatile("bar.sync %0, 128;" ::"r"(id) : "memory");
}

// Named barrier `id` of `count` threads: arrive without waiting, or arrive and wait (the
// ping-pong order barriers 3 and 4: one warpgroup arrives, the other waits).
__device__ __forceinline__ void namedBarrierArrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void namedBarrierSync(int id, int count) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory");
}

__device__ __forceinline__ void prefetchL2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<u64>(p)));
}

__device__ __forceinline__ void prefetchTensorMap(const CUtensorMap* m) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<u64>(m)) : "memory");
}

// 2-D TMA tile load: box {128 bytes of K, rows} at (c0 = k, c1 = row), completing on `bar`.
__device__ __forceinline__ void tmaLoad2d(unsigned dst, const CUtensorMap* m, unsigned bar, int c0,
                                          int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, "
      "{%2, %3}], [%4];" ::"r"(dst),
      "l"(reinterpret_cast<u64>(m)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}

__device__ __forceinline__ void wgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
template <int R>
__device__ __forceinline__ void setmaxnregInc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R));
}
template <int R>
__device__ __forceinline__ void setmaxnregDec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R));
}

// Keeps the compiler from moving accumulator accesses across wgmma fences and waits.
template <int N>
__device__ __forceinline__ void fenceOperands(int (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

// Stores four 8 × 8 matrices of 16-bit values from their mma fragments (register i: thread t
// holds row t / 4, columns 2 (t % 4) and + 1 of matrix i); lane l gives the shared-memory
// address of row l % 8 of matrix l / 8 (16 bytes, 16-byte aligned).
__device__ __forceinline__ void stmatrixX4(void* p, unsigned r0, unsigned r1, unsigned r2,
                                           unsigned r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};"
               :
               : "r"(smemU32(p)), "r"(r0), "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}

// Shared-memory matrix descriptor of a K-major operand in the 128B-swizzle layout: rows of 128
// bytes, 8-row atoms of 1024 bytes stacked contiguously (stride byte offset 1024), leading byte
// offset unused (16), swizzle mode 1 (128B) in bits 62-63. Moving along K inside the 128-byte
// row adds bytes to the start address (the swizzle applies to the absolute address bits).
__device__ __forceinline__ u64 descSw128(unsigned smemAddr) {
  u64 d = 0;
  d |= (u64)((smemAddr & 0x3FFFFu) >> 4);
  d |= (u64)1 << 16;
  d |= (u64)(1024 >> 4) << 32;
  d |= (u64)1 << 62;
  return d;
}

// wgmma.mma_async m64nNk32, s32 += s8 · s8, A and B from descriptors (both K-major). scaleD 0:
// D = A·B, else D += A·B. Fragment of thread t of the warpgroup (w = t / 32, l = t % 32):
// d[4j + 2h + e] is row 16w + l/4 + 8h, column 8j + 2(l % 4) + e.
template <int N>
struct Wgmma;
template <>
struct Wgmma<64> {
  static __device__ __forceinline__ void mma(int (&d)[32], u64 da, u64 db, int scaleD) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p;\n}\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
        : "l"(da), "l"(db), "r"(scaleD));
  }
};
template <>
struct Wgmma<128> {
  static __device__ __forceinline__ void mma(int (&d)[64], u64 da, u64 db, int scaleD) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p;\n}\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
        : "l"(da), "l"(db), "r"(scaleD));
  }
};
template <>
struct Wgmma<192> {
  static __device__ __forceinline__ void mma(int (&d)[96], u64 da, u64 db, int scaleD) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n192k32.s32.s8.s8 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95}, %96, %97, p;\n}\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]), "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]), "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]), "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]), "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95])
        : "l"(da), "l"(db), "r"(scaleD));
  }
};
template <>
struct Wgmma<256> {
  static __device__ __forceinline__ void mma(int (&d)[128], u64 da, u64 db, int scaleD) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p;\n}\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]), "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]), "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]), "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]), "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95]), "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103]), "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]), "+r"(d[112]), "+r"(d[113]), "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]), "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127])
        : "l"(da), "l"(db), "r"(scaleD));
  }
};

// Tile t of the CTA's walk -> (tile row, tile column): groupM tile rows go down one tile column
// before the next column, so consecutive CTAs share operand tiles in L2.
__device__ __forceinline__ void tileCoords(int t, int tilesM, int tilesN, int groupM, int& tm,
                                           int& tn) {
  const int perGroup = groupM * tilesN;
  const int g = t / perGroup;
  const int firstM = g * groupM;
  const int size = min(tilesM - firstM, groupM);
  const int r = t - g * perGroup;
  tm = firstM + r % size;
  tn = r / size;
}

#endif  // WGMMA_I8_SM90

template <int BM, int BN, int STAGES, bool PP, class O, bool GELU>
__device__ __forceinline__ void gemm(const CUtensorMap* tmX, const CUtensorMap* tmW, void* y,
                                     const void* sxd, int sxdKind, const void* swd, int swdKind,
                                     int swdPerChannel, const void* bias, int biasKind, int act,
                                     int M, int N, int K, int tilesM, int tilesN, int groupM,
                                     const void* residual) {
#if WGMMA_I8_SM90
  using C = Cfg<BM, BN, STAGES>;
  typedef typename O::T T;
  // Cooperative (PP false): both consumer warpgroups work on every tile, BM / 2 rows each.
  // Ping-pong (PP true): consumer warpgroup c takes the CTA's tiles c, c + 2, ... whole, and
  // the two take turns on the tensor cores (order barriers 3 and 4), so one's epilogue runs
  // while the other's main loop does: at K = 768 the main loop is short and a cooperative
  // tile's epilogue left the tensor cores idle for about as long.
  constexpr int WG_ROWS = PP ? BM : BM / 2;  // tile rows of one consumer warpgroup
  constexpr int MB = WG_ROWS / 64;           // m64 blocks per consumer warpgroup
  static_assert(MB >= 1 && MB * (BN / 2) <= 128, "accumulator registers");
  constexpr int NACC = BN / 2;           // accumulators per thread per m64 block
  constexpr int NPT = (BN + 127) / 128;  // tile columns per consumer thread in the staging
  extern __shared__ __align__(1024) unsigned char smemRaw[];
  const unsigned smemBase = (smemU32(smemRaw) + 1023u) & ~1023u;
  unsigned char* smem = smemRaw + (smemBase - smemU32(smemRaw));
  const unsigned fullBar = smemBase + C::BAR_OFFSET;
  const unsigned emptyBar = fullBar + STAGES * 8;
  const int tid = threadIdx.x;
  const int wg = tid >> 7;
  const int kBlocks = (K + kBK - 1) / kBK;
  const int numTiles = tilesM * tilesN;

  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbarInit(fullBar + 8 * s, 1);   // the producer's arrive.expect_tx (+ the TMA bytes)
      // Lane 0 of each consumer warp that reads the stage: 8 (both warpgroups), or 4.
      mbarInit(emptyBar + 8 * s, PP ? 4 : 8);
    }
    fenceBarrierInit();
  }
  if (tid == 32) {
    prefetchTensorMap(tmX);
    prefetchTensorMap(tmW);
  }
  __syncthreads();

  if (wg == 0) {
    // Producer warpgroup: one thread issues the loads.
    setmaxnregDec<40>();
    if (tid == 0) {
      int stage = 0;
      unsigned phase = 0;
      for (int t = blockIdx.x; t < numTiles; t += gridDim.x) {
        int tm, tn;
        tileCoords(t, tilesM, tilesN, groupM, tm, tn);
        for (int kb = 0; kb < kBlocks; ++kb) {
          mbarWait(emptyBar + 8 * stage, phase ^ 1);  // a fresh barrier passes parity 1
          const unsigned fb = fullBar + 8 * stage;
          mbarArriveExpectTx(fb, C::STAGE_BYTES);  // zero-filled bytes count too
          const unsigned sa = smemBase + stage * C::STAGE_BYTES;
          tmaLoad2d(sa, tmX, fb, kb * kBK, tm * BM);
          tmaLoad2d(sa + C::A_BYTES, tmW, fb, kb * kBK, tn * BN);
          if (++stage == STAGES) {
            stage = 0;
            phase ^= 1;
          }
        }
      }
    }
  } else {
    // Consumer warpgroups.
    setmaxnregInc<232>();
    const int cw = wg - 1;  // cooperative: rows [cw·BM/2, (cw + 1)·BM/2) of each tile
    const int wtid = tid & 127;
    const int warp = wtid >> 5;
    const int lane = tid & 31;
    const double sx = (double)loadScale(sxd, sxdKind, 0);
    // This warpgroup's slice of the epilogue staging (2·BN doubles, or 2·BN floats).
    double* sScale = reinterpret_cast<double*>(smem + C::EPI_OFFSET) + cw * 2 * BN;
    double* sBias = sScale + BN;
    float* fScale = reinterpret_cast<float*>(sScale);
    float* fBias = fScale + BN;

    int acc[MB][NACC];
#pragma unroll
    for (int m = 0; m < MB; ++m) {
#pragma unroll
      for (int i = 0; i < NACC; ++i) acc[m][i] = 0;
      fenceOperands(acc[m]);
    }

    // The CTA's tiles are t = blockIdx.x + ct · gridDim.x (ct = 0, 1, ...); the producer fills
    // their k-blocks in order, k-block kb of tile ct as fill number ct · kBlocks + kb of the
    // stage ring.
    for (int ct = PP ? cw : 0;; ct += PP ? 2 : 1) {
      const int t = blockIdx.x + ct * gridDim.x;
      if (t >= numTiles) break;
      int tm, tn;
      tileCoords(t, tilesM, tilesN, groupM, tm, tn);

      // This tile's column scales and biases, loaded now and converted after the main loop, so
      // that the loads stay in flight during it (zero bits are 0 in every kind).
      unsigned swBits[NPT], bBits[NPT];
#pragma unroll
      for (int r = 0; r < NPT; ++r) {
        const int i = wtid + 128 * r;
        const int n = tn * BN + i;
        swBits[r] = 0;
        bBits[r] = 0;
        if (i < BN && n < N) {
          swBits[r] = loadScaleBits(swd, swdKind, swdPerChannel ? n : 0);
          if (bias != nullptr) bBits[r] = loadScaleBits(bias, biasKind, n);
        }
      }
      // The tile's residual rows, fetched into L2 while the main loop runs: the epilogue's reads
      // then wait for L2, not for DRAM.
      if (residual != nullptr) {
        constexpr int LINES = BN * (int)sizeof(T) / 128;  // 128-byte lines per tile row
        const int row0 = tm * BM + (PP ? 0 : cw * (BM / 2));
        for (int i = wtid; i < WG_ROWS * LINES; i += 128) {
          const int row = row0 + i / LINES;
          const int col = tn * BN + (i % LINES) * (128 / (int)sizeof(T));
          if (row < M && col < N) {
            prefetchL2(static_cast<const T*>(residual) + ((i64)row * N + col));
          }
        }
      }

      // Ping-pong: wait until the other warpgroup's main loop on tile ct - 1 is done. Besides
      // taking turns, this keeps every full-barrier wait below at most one phase ahead of the
      // barrier (the previous fill of each stage was waited for, by one warpgroup or the
      // other), which the parity waits need.
      if (PP && ct > 0) namedBarrierSync(3 + ((ct - 1) & 1), 256);
      int prevStage = 0;
      for (int kb = 0; kb < kBlocks; ++kb) {
        const int fill = ct * kBlocks + kb;
        const int stage = fill % STAGES;
        mbarWait(fullBar + 8 * stage, (fill / STAGES) & 1);
        const unsigned sa =
            smemBase + stage * C::STAGE_BYTES + (PP ? 0 : cw * (BM / 2) * kBK);
        const unsigned sb = smemBase + stage * C::STAGE_BYTES + C::A_BYTES;
        wgmmaFence();
#pragma unroll
        for (int k = 0; k < kBK / 32; ++k) {
          const u64 db = descSw128(sb + k * 32);
#pragma unroll
          for (int m = 0; m < MB; ++m) {
            const u64 da = descSw128(sa + m * 64 * kBK + k * 32);
            Wgmma<BN>::mma(acc[m], da, db, (kb > 0 || k > 0) ? 1 : 0);
          }
        }
        wgmmaCommit();
        wgmmaWait<1>();  // the previous stage's wgmmas are done: release its buffers
        if (kb > 0 && lane == 0) mbarArrive(emptyBar + 8 * prevStage);
        prevStage = stage;
      }
      wgmmaWait<0>();
      if (lane == 0) mbarArrive(emptyBar + 8 * prevStage);
      // Ping-pong: hand the tensor cores to the other warpgroup's tile ct + 1, if there is one
      // (every arrive has its matching sync).
      if (PP && blockIdx.x + (ct + 1) * gridDim.x < numTiles) {
        namedBarrierArrive(3 + (ct & 1), 256);
      }
#pragma unroll
      for (int m = 0; m < MB; ++m) fenceOperands(acc[m]);

      // Stage the scales and biases: the first barrier waits for the previous tile's epilogue
      // reads, the second publishes the writes. sxd · swd is exact in double; the float32
      // epilogue takes it rounded to float.
      warpgroupBarrier(1 + cw);
#pragma unroll
      for (int r = 0; r < NPT; ++r) {
        const int i = wtid + 128 * r;
        if (i < BN) {
          const double sc = sx * (double)scaleFromBits(swBits[r], swdKind);
          const float b = scaleFromBits(bBits[r], biasKind);
          if constexpr (O::kFloatEpilogue) {
            fScale[i] = __double2float_rn(sc);
            fBias[i] = b;
          } else {
            sScale[i] = sc;
            sBias[i] = (double)b;
          }
        }
      }
      warpgroupBarrier(1 + cw);

      // First row of this warp's 16-row slabs (one per m64 block).
      const int rowW = tm * BM + (PP ? 0 : cw * (BM / 2)) + warp * 16;
      if constexpr (O::kFloatEpilogue) {
        // 16-bit outputs: t = acc · s + b in float32 (one FMA; acc is exact up to 2^24, s is
        // sxd · swd rounded), relu or gelu in float32, one rounding to the output dtype.
        // Against the double epilogue the result is at most one output ulp away, and only
        // where t lies within float32 rounding error of a rounding boundary. (A second FMA
        // with the rest of sxd · swd was ~1 % of the GEMM's time at GPT-2's prefill shapes and
        // changed only outputs on such boundaries.)
        //
        // The outputs go through the warp's shared-memory scratch, 16 rows × 64 columns at a
        // time, so that global memory receives whole 128-byte row pieces in 16-byte stores
        // (N % 8 == 0): straight from the fragments, each store instruction wrote 8 rows × 16
        // bytes, four times the write requests, and the epilogue outlasted a K = 768 main
        // loop.
        unsigned char* scratch =
            smem + C::SCRATCH_OFFSET + (cw * 4 + warp) * 16 * kScratchPitch;
#pragma unroll
        for (int m = 0; m < MB; ++m) {
#pragma unroll
          for (int c = 0; c < BN / 64; ++c) {
            // packed[jj][h]: the pair of row lane / 4 + 8h, columns 8jj + 2 (lane % 4) + {0, 1}
            // of the slab: the fragment of an 8 × 8 matrix, as stmatrix takes it.
            unsigned packed[8][2];
#pragma unroll
            for (int jj = 0; jj < 8; ++jj) {
              const int j = 8 * c + jj;
              const int cl = 8 * j + 2 * (lane & 3);
              const float2 sc = *reinterpret_cast<const float2*>(fScale + cl);
              const float2 b = *reinterpret_cast<const float2*>(fBias + cl);
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                const float f0 = __int2float_rn(acc[m][4 * j + 2 * h]);
                const float f1 = __int2float_rn(acc[m][4 * j + 2 * h + 1]);
                float t0 = fmaf(f0, sc.x, b.x);
                float t1 = fmaf(f1, sc.y, b.y);
                if constexpr (GELU) {
                  t0 = geluTanhFast(t0);
                  t1 = geluTanhFast(t1);
                } else if (act == 1) {
                  t0 = t0 <= 0.0f ? 0.0f : t0;
                  t1 = t1 <= 0.0f ? 0.0f : t1;
                }
                packed[jj][h] = O::pack(t0, t1);
              }
            }
            // Four stmatrix .x4, each four 8 × 8 matrices: (jj, h) = (2q, 0), (2q, 1),
            // (2q + 1, 0), (2q + 1, 1). Lane l gives the address of row l % 8 of matrix l / 8.
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              const int k = lane >> 3;
              const int row = (lane & 7) + 8 * (k & 1);
              const int col = 8 * (2 * q + (k >> 1));
              stmatrixX4(scratch + row * kScratchPitch + col * 2, packed[2 * q][0],
                         packed[2 * q][1], packed[2 * q + 1][0], packed[2 * q + 1][1]);
            }
            __syncwarp();
            // Lane l stores 16 bytes (8 outputs) of slab row 4p + l / 8, piece l % 8; with a
            // residual, its four pieces are read first, all in flight at once.
            uint4 rv[4];
            if (residual != nullptr) {
#pragma unroll
              for (int p4 = 0; p4 < 4; ++p4) {
                const int row = rowW + m * 64 + 4 * p4 + (lane >> 3);
                const int col = tn * BN + 64 * c + 8 * (lane & 7);
                rv[p4] = row < M && col < N
                    ? *reinterpret_cast<const uint4*>(static_cast<const T*>(residual) +
                                                      ((i64)row * N + col))
                    : make_uint4(0, 0, 0, 0);
              }
            }
#pragma unroll
            for (int p4 = 0; p4 < 4; ++p4) {
              const int r = 4 * p4 + (lane >> 3), q = lane & 7;
              const int row = rowW + m * 64 + r;
              const int col = tn * BN + 64 * c + 8 * q;
              uint4 v = *reinterpret_cast<const uint4*>(scratch + r * kScratchPitch + 16 * q);
              if (row < M && col < N) {
                if (residual != nullptr) {
                  v = make_uint4(O::addPacked(v.x, rv[p4].x), O::addPacked(v.y, rv[p4].y),
                                 O::addPacked(v.z, rv[p4].z), O::addPacked(v.w, rv[p4].w));
                }
                *reinterpret_cast<uint4*>(static_cast<T*>(y) + ((i64)row * N + col)) = v;
              }
            }
            __syncwarp();  // the scratch is rewritten next
          }
        }
      } else {
        // float32 outputs: t = acc · scale + b in double (one __dmul_rn, one __dadd_rn),
        // relu, one rounding; stored straight from the fragments.
        const int row0 = rowW + (lane >> 2);
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          const int cl = 8 * j + 2 * (lane & 3);
          const int col = tn * BN + cl;
          if (col < N) {
            const double2 s = *reinterpret_cast<const double2*>(sScale + cl);
            const double2 b = *reinterpret_cast<const double2*>(sBias + cl);
#pragma unroll
            for (int m = 0; m < MB; ++m) {
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                const int row = row0 + m * 64 + 8 * h;
                if (row < M) {
                  double t0 = __dadd_rn(__dmul_rn(intToDouble(acc[m][4 * j + 2 * h]), s.x), b.x);
                  double t1 =
                      __dadd_rn(__dmul_rn(intToDouble(acc[m][4 * j + 2 * h + 1]), s.y), b.y);
                  if (act == 1) {
                    t0 = t0 <= 0.0 ? 0.0 : t0;
                    t1 = t1 <= 0.0 ? 0.0 : t1;
                  }
                  const i64 at = (i64)row * N + col;
                  float y0 = O::fromD(t0), y1 = O::fromD(t1);
                  if (residual != nullptr) {
                    // The unfused add: the rounded output plus the residual, rounded once.
                    const float2 rv = *reinterpret_cast<const float2*>(
                        static_cast<const float*>(residual) + at);
                    y0 += rv.x;
                    y1 += rv.y;
                  }
                  storePair(static_cast<T*>(y) + at, y0, y1);
                }
              }
            }
          }
        }
      }
    }
  }
#endif  // WGMMA_I8_SM90
}

}  // namespace wgi8

#define WGMMA_I8_KERNEL(TILE, BM, BN, STAGES, PP, NAME, OUT, GELU)                              \
  extern "C" __global__ void __launch_bounds__(wgi8::kThreads, 1) wgmma_i8_##TILE##_##NAME(       \
      const __grid_constant__ CUtensorMap tmX, const __grid_constant__ CUtensorMap tmW, void* y, \
      const void* sxd, int sxdKind, const void* swd, int swdKind, int swdPerChannel,             \
      const void* bias, int biasKind, int act, int M, int N, int K, int tilesM, int tilesN,      \
      int groupM, const void* residual) {                                                        \
    wgi8::gemm<BM, BN, STAGES, PP, wgi8::OUT, GELU>(&tmX, &tmW, y, sxd, sxdKind, swd, swdKind,    \
                                                    swdPerChannel, bias, biasKind, act, M, N, K, \
                                                    tilesM, tilesN, groupM, residual);           \
  }

// Per tile: none / relu (act 0 / 1) for every output dtype, gelu (tanh form) for 16-bit ones.
#define WGMMA_I8_TILE(TILE, BM, BN, STAGES, PP)                                \
  WGMMA_I8_KERNEL(TILE, BM, BN, STAGES, PP, f32, OutF32, false)                \
  WGMMA_I8_KERNEL(TILE, BM, BN, STAGES, PP, f16, OutF16, false)                \
  WGMMA_I8_KERNEL(TILE, BM, BN, STAGES, PP, bf16, OutBF16, false)              \
  WGMMA_I8_KERNEL(TILE, BM, BN, STAGES, PP, f16_gelu_tanh, OutF16, true)       \
  WGMMA_I8_KERNEL(TILE, BM, BN, STAGES, PP, bf16_gelu_tanh, OutBF16, true)

// Tiles and pipeline depths (stages × (BM + BN) × 128 bytes of shared memory, at most ~200 KB);
// pp: ping-pong (one consumer warpgroup a tile).
WGMMA_I8_TILE(128x256, 128, 256, 4, false)
WGMMA_I8_TILE(128x192, 128, 192, 5, false)
WGMMA_I8_TILE(128x128, 128, 128, 6, false)
WGMMA_I8_TILE(256x128, 256, 128, 4, false)
WGMMA_I8_TILE(128x64, 128, 64, 8, false)
WGMMA_I8_TILE(pp128x128, 128, 128, 6, true)
WGMMA_I8_TILE(pp64x256, 64, 256, 4, true)
