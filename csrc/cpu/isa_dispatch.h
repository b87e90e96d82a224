// Run-time instruction-set dispatch for fastgen's element-wise CPU kernels
// (flow_elementwise.cpp, mixture_cdf.cpp).
//
// A kernel is written once as always-inline code (a lambda marked FASTGEN_INLINE_LAMBDA, calling
// FASTGEN_INLINE helpers such as those of vec_math.h) and run through run_on<ISA>(f) or
// with_isa(f): f is inlined into a function with the AVX-512, AVX2 + FMA or no target attribute
// (tap_gemm.h's FASTGEN_TARGET_*), so its loops and vector operations are compiled for that
// instruction set. The copy that runs is the one of the instruction set the tap-GEMM kernels
// chose for this CPU (tap_gemm_set(): the best one supported, or FASTGEN_CPU_ISA), so that the
// variable selects it for every CPU kernel alike. Off x86-64 only the baseline copy exists.
#pragma once

#include <string_view>

#include "tap_gemm.h"

// Every function that runs under an instruction-set copy must be inlined into it: one that is
// not is compiled once, for the baseline.
#define FASTGEN_INLINE __attribute__((always_inline)) inline
#define FASTGEN_INLINE_LAMBDA __attribute__((always_inline))

namespace fastgen::cpu {

enum class Isa { base, avx2, avx512 };

// The instruction set of tap_gemm_set(), decided once per process.
inline Isa isa_in_use() {
  static const Isa isa = [] {
    const std::string_view name = tap_gemm_set().isa;
    return name == "avx512" ? Isa::avx512 : name == "avx2" ? Isa::avx2 : Isa::base;
  }();
  return isa;
}

// Width of an instruction set's SIMD registers, in bytes (baseline: SSE2 on x86-64, NEON on ARM).
constexpr int vector_bytes(Isa isa) { return isa == Isa::avx512 ? 64 : isa == Isa::avx2 ? 32 : 16; }

template <class F>
void run_base(const F& f) {
  f();
}
#ifdef FASTGEN_X86_ISAS
template <class F>
FASTGEN_TARGET_AVX2 void run_avx2(const F& f) {
  f();
}
template <class F>
FASTGEN_TARGET_AVX512 void run_avx512(const F& f) {
  f();
}
#endif

// f() in the copy compiled for ISA.
template <Isa ISA, class F>
FASTGEN_INLINE void run_on(const F& f) {
#ifdef FASTGEN_X86_ISAS
  if constexpr (ISA == Isa::avx512)
    run_avx512(f);
  else if constexpr (ISA == Isa::avx2)
    run_avx2(f);
  else
#endif
    run_base(f);
}

// f.template operator()<ISA>() with the instruction set in use, outside its copy: for code that
// picks types by instruction set (vectors of its register width) and then enters run_on<ISA>.
template <class F>
void dispatch_isa(const F& f) {
#ifdef FASTGEN_X86_ISAS
  switch (isa_in_use()) {
    case Isa::avx512:
      return f.template operator()<Isa::avx512>();
    case Isa::avx2:
      return f.template operator()<Isa::avx2>();
    case Isa::base:
      break;
  }
#endif
  f.template operator()<Isa::base>();
}

// f() in the copy of the instruction set in use.
template <class F>
void with_isa(const F& f) {
  dispatch_isa([&]<Isa ISA>() { run_on<ISA>(f); });
}

}  // namespace fastgen::cpu
