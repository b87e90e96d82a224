// The register-tiled micro-kernel under every "tap convolution" of fastgen's CPU ops.
//
//   C[j * ldc + m] (+)= sum_{k < K} A_k[m] * B[boff[k] + j * ns]     j < NR, m < MR
//
// Each k costs two SIMD loads of A_k (MR = two vectors), NR broadcasts from B and 2 x NR
// FMAs into accumulators that stay in registers for the whole k loop. B is read at an
// arbitrary offset per k (a tap and channel of a convolution input, or a pixel) and a
// fixed stride between the NR columns (1 for neighbouring pixels of a row or neighbouring
// packed channels, a channel plane for neighbouring input channels). A_k is either packed
// (A + k * MR: weights, channel blocks) or gathered (A + aoff[k]: a run of MR pixels of an
// input row), so the MR lanes can hold output channels or pixels, whichever fills them.
//
// One copy is compiled per instruction set (tap_gemm_<isa>.cpp, no torch headers, so they
// build fast); tap_gemm() picks the best one the CPU supports, once.
#pragma once

#include <cstdint>
#include <vector>

namespace fastgen::cpu {

template <typename T>
using TapGemmFn = void (*)(int64_t K, const T* A, const int64_t* aoff, const T* B, const int64_t* boff, int64_t ns,
                           T* C, int64_t ldc, bool accumulate);

constexpr int kMaxNR = 16;

// The two-tap Winograd kernel of two_tap_conv.h, on MR (= TapGemm::mr) consecutive times
// and PAIR_NR output channels:
//   y0[j, m] (+)= bias[j] + sum_k m1 + m2,   y1[j, m] (+)= bias[j] + sum_k m2 + m3
//   m1 = W[k, 0, j] * (a - b),  m2 = W[k, 1, j] * b,  m3 = W[k, 2, j] * (c - b)
// with a, b, c = X[k * 3MR + {0, MR, 2MR} + m] (a packed column block of input channel k)
// and W (K, 3, PAIR_NR) packed [Wf, Wf + Ws, Ws]. Row j of y0 is Y0 + j * ldc, of y1
// Y1 + j * ldc (not written when Y1 is null); bias may be null.
template <typename T>
using PairGemmFn = void (*)(int64_t K, const T* X, const T* W, const T* bias, T* Y0, T* Y1, int64_t ldc,
                            bool accumulate);

template <typename T>
struct TapGemm {
  int64_t mr;                       // lanes of A per k (SIMD width x 2)
  int64_t nr_max;                   // widest register tile
  TapGemmFn<T> packed[kMaxNR + 1];  // [nr] for 1 <= nr <= nr_max: A_k = A + k * mr (aoff unused)
  TapGemmFn<T> gather[kMaxNR + 1];  // [nr]: A_k = A + aoff[k]
  int64_t pair_nr;                  // output channels of the two-tap kernel
  PairGemmFn<T> pair;
};

struct TapGemmSet {
  const char* isa;
  TapGemm<float> f32;
  TapGemm<double> f64;
};

// One per instruction set; the ISA ones exist only on x86-64 with GCC/Clang.
TapGemmSet tap_gemm_base();
#if defined(__x86_64__) && defined(__GNUC__)
#define FASTGEN_X86_ISAS 1
// The function attributes that compile a copy for each instruction set (these kernels, and
// the element-wise ones through isa_dispatch.h); tap_gemm_set() checks the same features.
#define FASTGEN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define FASTGEN_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma")))
TapGemmSet tap_gemm_avx2();
TapGemmSet tap_gemm_avx512();
#endif

// The selected kernels: the best ISA this CPU supports, or FASTGEN_CPU_ISA (avx512, avx2,
// base) when set and supported. Decided once per process.
const TapGemmSet& tap_gemm_set();
// "avx512", "avx2" or "base", plus a note when FASTGEN_CPU_ISA asked for something else.
const char* tap_gemm_description();

template <typename T>
const TapGemm<T>& tap_gemm();

template <>
inline const TapGemm<float>& tap_gemm<float>() { return tap_gemm_set().f32; }
template <>
inline const TapGemm<double>& tap_gemm<double>() { return tap_gemm_set().f64; }

struct Tile {
  int64_t start, size;
};

// n split into ceil(n / max_width) register tiles of nearly equal width: a wide tile keeps
// more FMAs per load than a full tile followed by a sliver.
inline std::vector<Tile> tiles(int64_t start, int64_t n, int64_t max_width) {
  std::vector<Tile> out;
  if (n <= 0) return out;
  const int64_t count = (n + max_width - 1) / max_width, base = n / count, extra = n % count;
  for (int64_t i = 0; i < count; ++i) {
    out.push_back({start, base + (i < extra ? 1 : 0)});
    start += out.back().size;
  }
  return out;
}

}  // namespace fastgen::cpu
