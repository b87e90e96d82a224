// AVX-512 copy of the tap-GEMM micro-kernel: 32 zmm registers hold 2 x 14 accumulators.
#include <utility>

#include "tap_gemm.h"
#ifdef FASTGEN_X86_ISAS
#define FASTGEN_ISA avx512
#define FASTGEN_ISA_NAME "avx512"
#define FASTGEN_TARGET FASTGEN_TARGET_AVX512
#define FASTGEN_VECTOR_BYTES 64
#define FASTGEN_NR_MAX 14
#define FASTGEN_PAIR_NR 4
#include "tap_gemm_impl.h"
#endif
