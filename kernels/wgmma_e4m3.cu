// float8 e4m3 GEMMs on Hopper tensor cores with the qlinear epilogue fused:
// wgmma.m64nBNk32.f32.e4m3.e4m3, each 128-wide K slice summed by the tensor cores and added to
// float32 accumulators (CodesE4m3 in kernels/wgmma.cuh, which holds the kernel, its epilogue
// arithmetic and its parameters); lowering in lib/backends/cuda/wgmma.ts.
//
// Kernels: wgmma_e4m3_<tile>_<out> for tiles 128x128, 128x64, pp64x128, pp128x64, pp64x64 and
// out f32, f16, bf16 (act 0 none or 1 relu), and wgmma_e4m3_<tile>_<f16|bf16>_gelu_tanh. Only
// tiles of at most 64 accumulators per thread: the slices' sums take as many registers again
// (twice as many at 32 accumulators, where two slices are in flight).

#include "wgmma.cuh"

WGMMA_TILE(wgmma_e4m3, CodesE4m3, 128x128, 128, 128, 6, false)
WGMMA_TILE(wgmma_e4m3, CodesE4m3, 128x64, 128, 64, 8, false)
WGMMA_TILE(wgmma_e4m3, CodesE4m3, pp64x128, 64, 128, 8, true)
WGMMA_TILE(wgmma_e4m3, CodesE4m3, pp128x64, 128, 64, 8, true)
WGMMA_TILE(wgmma_e4m3, CodesE4m3, pp64x64, 64, 64, 8, true)
