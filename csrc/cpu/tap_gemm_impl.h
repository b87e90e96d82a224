// Body of the tap-GEMM micro-kernel, included once per instruction set by tap_gemm_<isa>.cpp
// after defining:
//   FASTGEN_ISA            namespace and name of this copy (avx512, avx2, base)
//   FASTGEN_TARGET         the function attribute selecting the instruction set (or empty)
//   FASTGEN_VECTOR_BYTES   SIMD register width in bytes
//   FASTGEN_NR_MAX         widest tile that keeps 2 x NR accumulators + 3 operands in registers
// Everything lives in namespace FASTGEN_ISA so that the copies never merge at link time.
#include <cstring>

#include "tap_gemm.h"

namespace fastgen::cpu {
namespace FASTGEN_ISA {

template <typename T, int NR, bool GATHER>
FASTGEN_TARGET void kernel(int64_t K, const T* __restrict A, const int64_t* __restrict aoff, const T* __restrict B,
                           const int64_t* __restrict boff, int64_t ns, T* __restrict C, int64_t ldc, bool accumulate) {
  typedef T V __attribute__((vector_size(FASTGEN_VECTOR_BYTES)));
  constexpr int64_t VL = FASTGEN_VECTOR_BYTES / sizeof(T);
  V acc0[NR], acc1[NR];
  for (int j = 0; j < NR; ++j) {
    acc0[j] = V{};
    acc1[j] = V{};
  }
  for (int64_t k = 0; k < K; ++k) {
    const T* a = GATHER ? A + aoff[k] : A + k * 2 * VL;
    V a0, a1;
    std::memcpy(&a0, a, sizeof(V));
    std::memcpy(&a1, a + VL, sizeof(V));
    const T* b = B + boff[k];
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      const T bj = b[j * ns];
      acc0[j] += a0 * bj;
      acc1[j] += a1 * bj;
    }
  }
  for (int j = 0; j < NR; ++j) {
    T* c = C + j * ldc;
    if (accumulate) {
      V c0, c1;
      std::memcpy(&c0, c, sizeof(V));
      std::memcpy(&c1, c + VL, sizeof(V));
      acc0[j] += c0;
      acc1[j] += c1;
    }
    std::memcpy(c, &acc0[j], sizeof(V));
    std::memcpy(c + VL, &acc1[j], sizeof(V));
  }
}

template <typename T, int... NR>
constexpr TapGemm<T> make(std::integer_sequence<int, NR...>) {
  static_assert(sizeof...(NR) <= kMaxNR, "tile wider than kMaxNR");
  return TapGemm<T>{2 * FASTGEN_VECTOR_BYTES / static_cast<int64_t>(sizeof(T)), sizeof...(NR),
                    {nullptr, &kernel<T, NR + 1, false>...}, {nullptr, &kernel<T, NR + 1, true>...}};
}

}  // namespace FASTGEN_ISA

#define FASTGEN_CONCAT_(a, b) a##b
#define FASTGEN_CONCAT(a, b) FASTGEN_CONCAT_(a, b)
TapGemmSet FASTGEN_CONCAT(tap_gemm_, FASTGEN_ISA)() {
  using Tiles = std::make_integer_sequence<int, FASTGEN_NR_MAX>;
  return TapGemmSet{FASTGEN_ISA_NAME, FASTGEN_ISA::make<float>(Tiles{}), FASTGEN_ISA::make<double>(Tiles{})};
}

}  // namespace fastgen::cpu
