// AVX2 + FMA copy of the tap-GEMM micro-kernel: 16 ymm registers hold 2 x 6 accumulators
// (the two-tap kernel too, one product at a time).
#include <utility>

#include "tap_gemm.h"
#ifdef FASTGEN_X86_ISAS
#define FASTGEN_ISA avx2
#define FASTGEN_ISA_NAME "avx2"
#define FASTGEN_TARGET FASTGEN_TARGET_AVX2
#define FASTGEN_VECTOR_BYTES 32
#define FASTGEN_NR_MAX 6
#define FASTGEN_PAIR_NR 6
#define FASTGEN_PAIR_SPLIT 1
#include "tap_gemm_impl.h"
#endif
