// Portable copy of the tap-GEMM micro-kernel (SSE2 on x86-64, NEON on ARM: 16-byte vectors),
// and the selection of the best copy for this CPU.
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "tap_gemm.h"

#define FASTGEN_ISA base
#define FASTGEN_ISA_NAME "base"
#define FASTGEN_TARGET
#define FASTGEN_VECTOR_BYTES 16
#define FASTGEN_NR_MAX 6
#define FASTGEN_PAIR_NR 2
#include "tap_gemm_impl.h"

namespace fastgen::cpu {
namespace {

struct Selection {
  TapGemmSet set;
  std::string description;
};

Selection select() {
  const char* requested = std::getenv("FASTGEN_CPU_ISA");
  std::string want = requested ? requested : "";
#ifdef FASTGEN_X86_ISAS
  __builtin_cpu_init();
  const bool has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vl");
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (want == "avx512" && has_avx512) return {tap_gemm_avx512(), "avx512"};
  if (want == "avx2" && has_avx2) return {tap_gemm_avx2(), "avx2"};
  if (want == "base") return {tap_gemm_base(), "base"};
  Selection best = has_avx512 ? Selection{tap_gemm_avx512(), "avx512"}
                   : has_avx2 ? Selection{tap_gemm_avx2(), "avx2"}
                              : Selection{tap_gemm_base(), "base"};
#else
  if (want == "base") return {tap_gemm_base(), "base"};
  Selection best{tap_gemm_base(), "base"};
#endif
  if (!want.empty()) best.description += " (FASTGEN_CPU_ISA=" + want + " is unknown or not supported by this CPU)";
  return best;
}

const Selection& selection() {
  static const Selection s = select();
  return s;
}

}  // namespace

const TapGemmSet& tap_gemm_set() { return selection().set; }
const char* tap_gemm_description() { return selection().description.c_str(); }

}  // namespace fastgen::cpu
