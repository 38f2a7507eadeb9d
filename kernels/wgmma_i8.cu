// int8 GEMMs on Hopper tensor cores with the qlinear epilogue fused: wgmma.m64nBNk32.s32.s8.s8,
// exact int32 sums. The kernel itself, its epilogue arithmetic and its parameters are in
// kernels/wgmma.cuh; lowering in lib/backends/cuda/wgmma.ts.
//
// Kernels: wgmma_i8_<tile>_<out> for tiles 128x256, 128x192, 128x128, 256x128, 128x64,
// pp128x128, pp64x256 and out f32, f16, bf16 (act 0 none or 1 relu), and
// wgmma_i8_<tile>_<f16|bf16>_gelu_tanh.

#include "wgmma.cuh"

// Tiles and pipeline depths (stages × (BM + BN) × 128 bytes of shared memory, at most ~200 KB);
// pp: ping-pong (one consumer warpgroup a tile).
WGMMA_TILE(wgmma_i8, CodesI8, 128x256, 128, 256, 4, false)
WGMMA_TILE(wgmma_i8, CodesI8, 128x192, 128, 192, 5, false)
WGMMA_TILE(wgmma_i8, CodesI8, 128x128, 128, 128, 6, false)
WGMMA_TILE(wgmma_i8, CodesI8, 256x128, 256, 128, 4, false)
WGMMA_TILE(wgmma_i8, CodesI8, 128x64, 128, 64, 8, false)
WGMMA_TILE(wgmma_i8, CodesI8, pp128x128, 128, 128, 6, true)
WGMMA_TILE(wgmma_i8, CodesI8, pp64x256, 64, 256, 4, true)
