// The flash-attention kernels that write a qlinear's x codes
// (lib/graph/passes/attention_qlinear.ts; launches in lib/backends/cuda/attention.ts):
// attention_flash_<f16|bf16>_d<64|128>_<i8|e4m3> are kernels/attention.cu's flash kernels,
// except that they round the result to its dtype, divide it by the per-tensor input scale as
// the quantize op does, and store the int8 / e4m3 codes (and, for cuBLASLt's outer-vector fp8
// products, the per-row scale copies). A module of their own: a process that never runs them
// never loads them.

#include "attention.cuh"

#define FLASH_CODES_KERNELS(TYPE, BF16, D)                                 \
  FLASH_CODES_KERNEL(attention_flash_##TYPE##_d##D##_i8, BF16, D, XI8)     \
  FLASH_CODES_KERNEL(attention_flash_##TYPE##_d##D##_e4m3, BF16, D, XE4M3)

FLASH_CODES_KERNELS(f16, false, 64)
FLASH_CODES_KERNELS(f16, false, 128)
FLASH_CODES_KERNELS(bf16, true, 64)
FLASH_CODES_KERNELS(bf16, true, 128)
