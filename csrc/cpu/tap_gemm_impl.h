// Body of the tap-GEMM micro-kernel, included once per instruction set by tap_gemm_<isa>.cpp
// after defining:
//   FASTGEN_ISA            namespace and name of this copy (avx512, avx2, base)
//   FASTGEN_TARGET         the function attribute selecting the instruction set (or empty)
//   FASTGEN_VECTOR_BYTES   SIMD register width in bytes
//   FASTGEN_NR_MAX         widest tile that keeps 2 x NR accumulators + 3 operands in registers
//   FASTGEN_PAIR_NR        output channels of the two-tap kernel (6 x NR accumulators)
//   FASTGEN_PAIR_SPLIT     (optional) the two-tap kernel one product at a time (2 x NR accumulators)
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
  // Every loop over j unrolled: a rolled one makes the compiler keep the accumulators on the
  // stack around the k loop (zeroed with rep stos, copied out), which costs a quarter of a
  // K = 64 call.
#pragma GCC unroll 16
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
#pragma GCC unroll 16
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

// y[0, 2 VL) (+)= the two vectors lo | hi: one output row of a pair kernel.
template <typename T, typename V>
FASTGEN_TARGET __attribute__((always_inline)) inline void store_row(T* y, V lo, V hi, bool accumulate) {
  constexpr int64_t VL = sizeof(V) / sizeof(T);
  if (accumulate) {
    V old;
    std::memcpy(&old, y, sizeof(V));
    lo += old;
    std::memcpy(&old, y + VL, sizeof(V));
    hi += old;
  }
  std::memcpy(y, &lo, sizeof(V));
  std::memcpy(y + VL, &hi, sizeof(V));
}

template <typename T, int NR>
FASTGEN_TARGET void pair_kernel(int64_t K, const T* __restrict X, const T* __restrict W, const T* __restrict bias,
                                T* __restrict Y0, T* __restrict Y1, int64_t ldc, bool accumulate) {
  typedef T V __attribute__((vector_size(FASTGEN_VECTOR_BYTES)));
  constexpr int64_t VL = FASTGEN_VECTOR_BYTES / sizeof(T), MR = 2 * VL;
  // Flat arrays of vectors (not V[NR][2]), which the compiler keeps in registers.
  V m1l[NR], m1h[NR], m2l[NR], m2h[NR], m3l[NR], m3h[NR];
  for (int j = 0; j < NR; ++j) m1l[j] = m1h[j] = m2l[j] = m2h[j] = m3l[j] = m3h[j] = V{};
  for (int64_t k = 0; k < K; ++k) {
    const T* x = X + k * 3 * MR;
    const T* w = W + k * 3 * NR;
    V ul, uh, bl, bh, vl, vh;
    std::memcpy(&ul, x, sizeof(V));
    std::memcpy(&uh, x + VL, sizeof(V));
    std::memcpy(&bl, x + MR, sizeof(V));
    std::memcpy(&bh, x + MR + VL, sizeof(V));
    std::memcpy(&vl, x + 2 * MR, sizeof(V));
    std::memcpy(&vh, x + 2 * MR + VL, sizeof(V));
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const T wf = w[j], ws = w[NR + j], wl = w[2 * NR + j];
      m1l[j] += ul * wf;
      m1h[j] += uh * wf;
      m2l[j] += bl * ws;
      m2h[j] += bh * ws;
      m3l[j] += vl * wl;
      m3h[j] += vh * wl;
    }
  }
  for (int j = 0; j < NR; ++j) {
    const T bj = bias ? bias[j] : T(0);
    store_row(Y0 + j * ldc, m1l[j] + m2l[j] + bj, m1h[j] + m2h[j] + bj, accumulate);
    if (Y1) store_row(Y1 + j * ldc, m2l[j] + m3l[j] + bj, m2h[j] + m3h[j] + bj, accumulate);
  }
}

#ifdef FASTGEN_PAIR_SPLIT
// The pair kernel as its three products in turn, each a 2 x NR register tile (2 x NR
// accumulators, 2 loads and NR broadcasts per k), into a scratch tile that stays in L1,
// then y0 = m1 + m2 and y1 = m2 + m3. For 16-register ISAs (AVX2): the fused kernel's six
// accumulator sets fit there only for NR = 2, where it loads as often as it multiplies.
template <typename T, int NR>
FASTGEN_TARGET void pair_split_kernel(int64_t K, const T* __restrict X, const T* __restrict W,
                                      const T* __restrict bias, T* __restrict Y0, T* __restrict Y1, int64_t ldc,
                                      bool accumulate) {
  typedef T V __attribute__((vector_size(FASTGEN_VECTOR_BYTES)));
  constexpr int64_t VL = FASTGEN_VECTOR_BYTES / sizeof(T), MR = 2 * VL;
  V m[3][NR][2];
#pragma GCC unroll 1
  for (int r = 0; r < 3; ++r) {
    V acc0[NR], acc1[NR];
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) acc0[j] = acc1[j] = V{};
    const T* x = X + r * MR;
    const T* w = W + r * NR;
    for (int64_t k = 0; k < K; ++k, x += 3 * MR, w += 3 * NR) {
      V a0, a1;
      std::memcpy(&a0, x, sizeof(V));
      std::memcpy(&a1, x + VL, sizeof(V));
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) {
        const T wj = w[j];
        acc0[j] += a0 * wj;
        acc1[j] += a1 * wj;
      }
    }
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      m[r][j][0] = acc0[j];
      m[r][j][1] = acc1[j];
    }
  }
  for (int j = 0; j < NR; ++j) {
    const T bj = bias ? bias[j] : T(0);
    store_row(Y0 + j * ldc, m[0][j][0] + m[1][j][0] + bj, m[0][j][1] + m[1][j][1] + bj, accumulate);
    if (Y1) store_row(Y1 + j * ldc, m[1][j][0] + m[2][j][0] + bj, m[1][j][1] + m[2][j][1] + bj, accumulate);
  }
}
#define FASTGEN_PAIR_KERNEL pair_split_kernel
#else
#define FASTGEN_PAIR_KERNEL pair_kernel
#endif

template <typename T, int... NR>
constexpr TapGemm<T> make(std::integer_sequence<int, NR...>) {
  static_assert(sizeof...(NR) <= kMaxNR, "tile wider than kMaxNR");
  return TapGemm<T>{2 * FASTGEN_VECTOR_BYTES / static_cast<int64_t>(sizeof(T)),
                    sizeof...(NR),
                    {nullptr, &kernel<T, NR + 1, false>...},
                    {nullptr, &kernel<T, NR + 1, true>...},
                    FASTGEN_PAIR_NR,
                    &FASTGEN_PAIR_KERNEL<T, FASTGEN_PAIR_NR>};
}

}  // namespace FASTGEN_ISA

#define FASTGEN_CONCAT_(a, b) a##b
#define FASTGEN_CONCAT(a, b) FASTGEN_CONCAT_(a, b)
TapGemmSet FASTGEN_CONCAT(tap_gemm_, FASTGEN_ISA)() {
  using Tiles = std::make_integer_sequence<int, FASTGEN_NR_MAX>;
  return TapGemmSet{FASTGEN_ISA_NAME, FASTGEN_ISA::make<float>(Tiles{}), FASTGEN_ISA::make<double>(Tiles{})};
}

}  // namespace fastgen::cpu
