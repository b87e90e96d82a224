// Vectorizable math for fastgen's element-wise CPU kernels (flow_elementwise.cpp,
// mixture_cdf.cpp): exp, exp2, log and the pieces of the logistic sigmoid, written once as
// templates generic in T, which is either a scalar (float, double: the loops of
// flow_elementwise.cpp, which GCC vectorizes under `#pragma omp simd`) or a GCC vector-extension
// type of them (the explicit vector kernels of mixture_cdf.cpp). They are plain arithmetic, bit
// casts and select() (a call to std::exp would keep a loop scalar), never trap, and are
// always-inline, so they are compiled for the instruction set of the copy that calls them
// (isa_dispatch.h). A comparison gives a bool on scalars and a lane mask on vectors; select()
// takes either.
//
// exp: x = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite: n ln2 in two parts, the first exact),
// e^r = 1 + r P(r) (so exp(0) = 1 exactly) and 2^n put in the exponent bits. The variants differ
// on purpose, in range and (float only) in the degree of P:
//   vexp               the whole range: subnormal results, 0 below, inf above (2^n as two
//                      factors); P of degree 5 (float) or 10 (double);
//   vexp_saturating    never overflows: about 2^126 (float) / 2^1022 (double) above the normal
//                      range, 0 below it, for terms that are summed, compared or multiplied into
//                      finite ones (the mixture kernels); P_FAST, degree 4 for float (one FMA
//                      less in the bisection's inner loop), P for double;
//   vexp2_saturating   2^t saturating at 2^(+-126) / 2^(+-1022) at both ends, for 1 + 2^t: P_FAST
//                      with its coefficients scaled by powers of ln2, t - round(t) exact.
// log: fdlibm's form (as in musl): x = 2^k m with m in [sqrt(1/2), sqrt(2)), log m = log1p(f)
// from s = f / (2 + f) and k ln2 in two parts; vlog sorts out zero, negatives, inf, NaN and
// subnormals on the bits with integer compares, vlog_positive is the bare reduction for
// positive normal x.
// Errors against the correctly rounded result, every float32 input and 5e6 random float64 ones,
// with FMA (the AVX2 and AVX-512 copies) / without (the baseline copy): vexp 0.98 / 1.24 ulp
// (float), 0.88 / 1.16 (double), subnormal results included; vexp_saturating and vexp2_saturating
// 2.04 / 2.31 (float), 0.89 / 1.16 (double), in the normal range; vlog 0.86 / 0.85 (float),
// 0.81 / 0.83 (double). Special values are exact: exp gives 0 at -inf, inf at inf (vexp) and NaN
// for NaN; log gives -inf at +-0, NaN below 0 and for NaN, inf at inf.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <type_traits>

#include "isa_dispatch.h"

namespace fastgen::cpu {

// ------------------------------------------------------------------------------ lane types

// The bit layout of a floating-point scalar.
template <typename S>
struct FloatBits;
template <>
struct FloatBits<float> {
  using Int = int32_t;
  using UInt = uint32_t;
  static constexpr int MANT = 23;
};
template <>
struct FloatBits<double> {
  using Int = int64_t;
  using UInt = uint64_t;
  static constexpr int MANT = 52;
};

// T's lanes: T itself for a scalar, its elements for a GCC vector type; Int and UInt are the
// integers of the same width, lane for lane.
template <typename T>
struct Lanes {
  using Scalar = std::remove_cvref_t<decltype(std::declval<T>()[0])>;
  typedef typename FloatBits<Scalar>::Int Int __attribute__((vector_size(sizeof(T))));
  typedef typename FloatBits<Scalar>::UInt UInt __attribute__((vector_size(sizeof(T))));
  static constexpr int count = sizeof(T) / sizeof(Scalar);
};
template <typename T>
  requires std::is_floating_point_v<T>
struct Lanes<T> {
  using Scalar = T;
  using Int = typename FloatBits<T>::Int;
  using UInt = typename FloatBits<T>::UInt;
  static constexpr int count = 1;
};

template <typename T>
using ScalarOf = typename Lanes<T>::Scalar;
template <typename T>
using IntOf = typename Lanes<T>::Int;
template <typename T>
using UIntOf = typename Lanes<T>::UInt;

// A GCC vector of BYTES bytes of S.
template <typename S, int BYTES>
struct VectorOf {
  typedef S type __attribute__((vector_size(BYTES)));
};

// Bit patterns of S (as FloatBits<S>::UInt).
template <typename S>
struct FloatConsts {
  using UInt = typename FloatBits<S>::UInt;
  static constexpr int MANT = FloatBits<S>::MANT;
  static constexpr UInt SIGN = UInt(1) << (8 * sizeof(S) - 1);
  static constexpr UInt MANT_MASK = (UInt(1) << MANT) - 1;
  static constexpr UInt EXP_MASK = ~(SIGN | MANT_MASK);  // +inf
  static constexpr UInt MIN_NORMAL = UInt(1) << MANT;
  static constexpr UInt ONE = std::bit_cast<UInt>(S(1));
  static constexpr UInt BIAS = ONE >> MANT;
};

// --------------------------------------------------------------------------------- helpers

template <typename T>
FASTGEN_INLINE T splat(ScalarOf<T> s) {
  if constexpr (std::is_floating_point_v<T>)
    return s;
  else
    return T{} + s;
}

// The same bits as another type of the same size (lane for lane: float <-> int <-> unsigned).
// Vectors by a vector cast: std::bit_cast of a vector wider than the baseline's registers goes
// through memory (it is lowered before the function is inlined into its instruction set's copy).
template <typename To, typename From>
FASTGEN_INLINE To bits_as(From x) {
  if constexpr (std::is_arithmetic_v<From>)
    return std::bit_cast<To>(x);
  else
    return (To)x;
}

template <typename T>
FASTGEN_INLINE T to_float(IntOf<T> i) {
  if constexpr (std::is_floating_point_v<T>)
    return T(i);
  else
    return __builtin_convertvector(i, T);
}

// All ones in the lanes where the comparison c holds, zero elsewhere.
template <typename T, typename M>
FASTGEN_INLINE UIntOf<T> mask_bits(M c) {
  if constexpr (std::is_floating_point_v<T>)
    return UIntOf<T>(0) - UIntOf<T>(c);
  else
    return bits_as<UIntOf<T>>(c);
}

// c ? a : b, lane by lane. On scalars bitwise: with ?:, GCC threads jumps through the compares
// and sinks arithmetic into one side of a branch, which it then cannot if-convert (a division or
// a multiplication may raise a floating-point flag), and the loop stays scalar.
template <typename T>
  requires std::is_floating_point_v<T>
FASTGEN_INLINE T select(bool c, T a, T b) {
  const UIntOf<T> m = mask_bits<T>(c);
  return bits_as<T>((bits_as<UIntOf<T>>(a) & m) | (bits_as<UIntOf<T>>(b) & ~m));
}
template <typename T, typename M>
  requires(!std::is_arithmetic_v<T>)
FASTGEN_INLINE T select(M c, T a, T b) {
  return c ? a : b;
}

// |x|, by clearing the sign bit (NaN stays NaN).
template <typename T>
FASTGEN_INLINE T vabs(T x) {
  return bits_as<T>(bits_as<UIntOf<T>>(x) & ~FloatConsts<ScalarOf<T>>::SIGN);
}

// a > b ? a : b and a < b ? a : b: a NaN b is returned, a NaN a is not (as maxps, minps).
template <typename T>
FASTGEN_INLINE T vmax(T a, T b) {
  return select(a > b, a, b);
}
template <typename T>
FASTGEN_INLINE T vmin(T a, T b) {
  return select(a < b, a, b);
}

// NaN stays NaN (a comparison with NaN is false). Two selects rather than one on a combined
// mask (a < lo | a > hi), which GCC scalarizes.
template <typename T>
FASTGEN_INLINE T clamp(T a, ScalarOf<T> lo, ScalarOf<T> hi) {
  a = select(a < lo, splat<T>(lo), a);
  return select(a > hi, splat<T>(hi), a);
}

// c[0] x^(N-1) + ... + c[N-1]; the coefficients, of any floating type, are converted to T's.
template <typename T, typename Coeffs>
FASTGEN_INLINE T horner(T x, const Coeffs& c) {
  using S = ScalarOf<T>;
  T p = splat<T>(S(c[0]));
  for (std::size_t i = 1; i < std::size(c); ++i) p = p * x + S(c[i]);
  return p;
}

// --------------------------------------------------------------------------------------- exp

template <typename S>
struct ExpConsts;
template <>
struct ExpConsts<float> {
  // Beyond these exp is 0 or inf: vexp clamps to them, which keeps n in range.
  static constexpr float LO = -104, HI = 89;
  static constexpr int SATURATE = 126;  // 2^126: the largest power of two whose inverse is normal
  // ln2 split in a head with trailing zero bits (n * head is exact for |n| < 2^9) and a tail.
  static constexpr float LN2_HI = 0.693145751953125f, LN2_LO = 1.428606765330187045e-06f;
  // P, highest degree first, with e^r = 1 + r P(r) on |r| <= ln2/2: degree 5, relative error of
  // e^r 5.1e-9 (a Chebyshev-node least-squares fit, mpmath.chebyfit, 50 digits).
  static constexpr double P[] = {0.0013933641117472883976, 0.0083691485592966215981, 0.041666465005270031865,
                                 0.16666505259791664742,   0.50000000134578042103,   1.0000000107716318254};
  // The same, degree 4: relative error 9.5e-8 (minimax of the relative error, Lawson's algorithm).
  static constexpr double P_FAST[] = {0.008290314639937253, 0.041897929781219645, 0.166676361987034,
                                      0.49999149527155323, 0.9999997071876778};
};
template <>
struct ExpConsts<double> {
  static constexpr double LO = -746, HI = 710;
  static constexpr int SATURATE = 1022;
  static constexpr double LN2_HI = 6.93147180369123816490e-01, LN2_LO = 1.90821492927058770002e-10;
  // As for float, degree 10: relative error of e^r 8.4e-18. The saturating variants take it too
  // (the degree the mixture kernels' exp2 always had).
  static constexpr double P[] = {2.5105206475334833836e-8, 2.7626357373278977393e-7, 2.7557255425502901999e-6,
                                 2.4801504346680998664e-5, 1.9841269874800683939e-4, 1.3888888932488847803e-3,
                                 8.3333333333261408291e-3, 4.1666666666573141897e-2, 0.16666666666666670986,
                                 0.5000000000000005617,    1.0};
  static constexpr const double (&P_FAST)[std::size(P)] = P;
};

constexpr double kLog2e = 1.4426950408889634074;

namespace vec_math_detail {

constexpr long double kLn2 = 0.693147180559945309417232121458176568L;

// P2 with 2^r = 1 + r P2(r), from P_FAST: 2^r = e^(r ln2), so P2's coefficient of r^d is
// P_FAST's times ln2^(d + 1).
template <typename S>
struct Exp2Poly {
  static constexpr std::size_t N = std::size(ExpConsts<S>::P_FAST);
  static constexpr std::array<S, N> make() {
    std::array<S, N> q{};
    long double scale = kLn2;
    for (std::size_t i = N; i-- > 0;) {
      q[i] = S(ExpConsts<S>::P_FAST[i] * scale);
      scale *= kLn2;
    }
    return q;
  }
  static constexpr auto c = make();
};

// The pieces pass plain T values, not a struct of them: GCC 12 copied such a struct (of 32-byte
// vectors, returned by value) through memory in the AVX2 copy, doubling the mixture kernels' time.

template <typename S>
constexpr S kShifter = S(3) * S(1ull << (FloatBits<S>::MANT - 1));

// t + SHIFTER: t rounded to the nearest integer n (|t| < 2^(MANT - 2)), which the low mantissa
// bits hold (adding 1.5 * 2^MANT leaves no fraction bits); n = shifted - SHIFTER.
template <typename T>
FASTGEN_INLINE T round_shifted(T t) {
  return t + kShifter<ScalarOf<T>>;
}

// n as an integer, from shifted = n + SHIFTER.
template <typename T>
FASTGEN_INLINE IntOf<T> shifted_int(T shifted) {
  using S = ScalarOf<T>;
  using U = UIntOf<T>;
  return bits_as<IntOf<T>>(U(bits_as<U>(shifted) - std::bit_cast<typename FloatBits<S>::UInt>(kShifter<S>)));
}

// 2^n from shifted = n + SHIFTER, for n in the normal exponent range.
template <typename T>
FASTGEN_INLINE T shifted_pow2(T shifted) {
  using S = ScalarOf<T>;
  using U = UIntOf<T>;
  return bits_as<T>(U((bits_as<U>(shifted) << FloatBits<S>::MANT) + FloatConsts<S>::ONE));
}

// 2^n for n in the normal exponent range.
template <typename T>
FASTGEN_INLINE T pow2(IntOf<T> n) {
  using C = FloatConsts<ScalarOf<T>>;
  return bits_as<T>(UIntOf<T>(bits_as<UIntOf<T>>(n) + C::BIAS) << C::MANT);
}

// x = n ln2 + r: returns r, |r| <= ln2 / 2 (slightly more after rounding), and sets shifted to
// n + SHIFTER (see round_shifted).
template <typename T>
FASTGEN_INLINE T exp_reduce(T x, T& shifted) {
  using S = ScalarOf<T>;
  using E = ExpConsts<S>;
  shifted = round_shifted(x * S(kLog2e));
  const T n = shifted - kShifter<S>;
  const T r = x - n * E::LN2_HI;
  return r - n * E::LN2_LO;
}

// e^r for |r| <= ln2 / 2, with P or (FAST) P_FAST.
template <bool FAST, typename T>
FASTGEN_INLINE T exp_poly(T r) {
  using E = ExpConsts<ScalarOf<T>>;
  if constexpr (FAST)
    return 1 + r * horner(r, E::P_FAST);
  else
    return 1 + r * horner(r, E::P);
}

}  // namespace vec_math_detail

// exp(x) on the whole range. 2^n is applied as two factors so that results in the subnormal
// range come out right and overflow gives inf.
template <typename T>
FASTGEN_INLINE T vexp(T x) {
  using namespace vec_math_detail;
  using E = ExpConsts<ScalarOf<T>>;
  T shifted;
  const T r = exp_reduce(clamp(x, E::LO, E::HI), shifted);
  const IntOf<T> n = shifted_int(shifted), n1 = n >> 1;
  return exp_poly<false>(r) * pow2<T>(n1) * pow2<T>(n - n1);
}

// exp(x) that never overflows, for terms that are summed, compared or multiplied into finite
// ones: about 2^SATURATE for x beyond SATURATE ln2, 0 below -SATURATE ln2 (where exp(x) is below
// the smallest normal), NaN for NaN. With P_FAST.
template <typename T>
FASTGEN_INLINE T vexp_saturating(T x) {
  using namespace vec_math_detail;
  using S = ScalarOf<T>;
  constexpr S LIMIT = S(ExpConsts<S>::SATURATE * kLn2);
  const auto below = x < -LIMIT;
  T shifted;
  const T r = exp_reduce(select(x > LIMIT, splat<T>(LIMIT), x), shifted);
  return select(below, splat<T>(0), exp_poly<true>(r) * shifted_pow2(shifted));
}

// 2^t, saturating at 2^(+-SATURATE) (the normal range) instead of overflowing or flushing to
// 0: for callers that only add the result to 1 or to larger terms. NaN stays NaN. With P_FAST.
template <typename T>
FASTGEN_INLINE T vexp2_saturating(T t) {
  using namespace vec_math_detail;
  using S = ScalarOf<T>;
  t = clamp(t, S(-ExpConsts<S>::SATURATE), S(ExpConsts<S>::SATURATE));
  const T shifted = round_shifted(t);
  const T r = t - (shifted - kShifter<S>);  // in [-1/2, 1/2], exact
  return (1 + r * horner(r, Exp2Poly<S>::c)) * shifted_pow2(shifted);
}

// --------------------------------------------------------------------------------------- log

template <typename S>
struct LogConsts;
template <>
struct LogConsts<float> {
  static constexpr float LN2_HI = 6.9313812256e-01f, LN2_LO = 9.0580006145e-06f;
  static constexpr int SUBNORMAL_SCALE = 25;  // log2 of the factor that makes subnormals normal
  // R(z) / z, highest degree first, with log1p(f) = 2s + s R(s^2), z = s^2 in
  // [0, ((sqrt 2 - 1) / (sqrt 2 + 1))^2]: a Chebyshev-node least-squares fit (mpmath.chebyfit,
  // 50 digits), degree 2, relative error of the log below 3e-9 (musl's degree 3 costs an FMA
  // more and gains 0.03 ulp).
  static constexpr float R[] = {0.29579949378967285f, 0.3998878002166748f, 0.6666668653488159f};
};
template <>
struct LogConsts<double> {
  static constexpr double LN2_HI = 6.93147180369123816490e-01, LN2_LO = 1.90821492927058770002e-10;
  static constexpr int SUBNORMAL_SCALE = 54;
  // musl's Lg7 .. Lg1 (degree 6).
  static constexpr double R[] = {1.479819860511658591e-01, 1.531383769920937332e-01, 1.818357216161805012e-01,
                                 2.222219843214978396e-01, 2.857142874366239149e-01, 3.999999999940941908e-01,
                                 6.666666666666735130e-01};
};

namespace vec_math_detail {

// log x from the bits of x = 2^k m, m in [sqrt(1/2), sqrt(2)) (offsetting the bits by those of
// sqrt(1/2) moves the exponent's boundary there; the exponent field may be negative, see vlog):
// f = m - 1, s = f / (2 + f), log1p(f) = f - f^2/2 + s (f^2/2 + R(s^2)).
template <typename T>
FASTGEN_INLINE T log_of_bits(UIntOf<T> bits) {
  using S = ScalarOf<T>;
  using U = UIntOf<T>;
  using C = FloatConsts<S>;
  using L = LogConsts<S>;
  constexpr typename C::UInt SQRT_HALF = std::bit_cast<typename C::UInt>(S(0.70710678118654752440));
  const U offset = bits - SQRT_HALF;
  const IntOf<T> k = bits_as<IntOf<T>>(offset) >> C::MANT;  // arithmetic shift: signed
  const T f = bits_as<T>(U((offset & C::MANT_MASK) + SQRT_HALF)) - 1;
  const T s = f / (2 + f), z = s * s;
  const T R = z * horner(z, L::R);
  const T hfsq = S(0.5) * f * f, dk = to_float<T>(k);
  return s * (hfsq + R) + dk * L::LN2_LO - hfsq + f + dk * L::LN2_HI;
}

}  // namespace vec_math_detail

// log x for positive normal x only (anything else gives garbage, NaN included).
template <typename T>
FASTGEN_INLINE T vlog_positive(T x) {
  return vec_math_detail::log_of_bits<T>(bits_as<UIntOf<T>>(x));
}

// log x: -inf at +-0, NaN below 0 and for NaN, inf at inf; subnormals are fine.
template <typename T>
FASTGEN_INLINE T vlog(T x) {
  using S = ScalarOf<T>;
  using U = UIntOf<T>;
  using C = FloatConsts<S>;
  using UI = typename C::UInt;
  constexpr UI SUB = LogConsts<S>::SUBNORMAL_SCALE;
  const U bits = bits_as<U>(x);
  // Positive subnormals (and +0, sorted out below) as the bits of x 2^SUB less SUB in the
  // exponent field (negative then), picked with mask arithmetic (a select here becomes a branch
  // that GCC then cannot if-convert).
  const U scaled = U(bits_as<U>(x * S(UI(1) << SUB)) - (SUB << C::MANT));
  const U subnormal = mask_bits<T>(bits < C::MIN_NORMAL);
  const T r = vec_math_detail::log_of_bits<T>(U((scaled & subnormal) | (bits & ~subnormal)));
  // Negative (-0 included, fixed next), +inf or NaN: NaN for negatives, else x itself.
  const T special = select(bits > C::SIGN, splat<T>(std::numeric_limits<S>::quiet_NaN()), x);
  const T out = select(bits >= C::EXP_MASK, special, r);
  return select((bits & ~C::SIGN) == 0, splat<T>(-std::numeric_limits<S>::infinity()), out);
}

// --------------------------------------------------------------------------------- sigmoid

// The pieces of the logistic sigmoid s = 1 / (1 + exp(-z)) from e = exp(-|z|) in [0, 1], never
// exp of a positive number: no overflow, no cancellation.
template <typename T>
struct Sigmoid {
  T s;          // sigmoid(z)
  T s_neg;      // 1 - s = sigmoid(-z)
  T log1p_e;    // log(1 + e): log s = min(z, 0) - log1p_e, log(1 - s) = min(-z, 0) - log1p_e
  T inv_s;      // 1 / s = 1 + exp(-z): 1 + e for z >= 0, (1 + e) / e below
  T tanh_half;  // tanh(|z| / 2) = (1 - e) / (1 + e)
  FASTGEN_INLINE T log_s(T z) const { return select(z < 0, z, splat<T>(0)) - log1p_e; }
};

// Which exp e comes from: vexp, or vexp_saturating (e = 0 where it would be subnormal, |z| > 87
// for float: then s = 0 rather than subnormal and 1 / s = inf).
enum class SigmoidExp { full, saturating };

// Only what a caller reads is computed: the rest is dead code once inlined.
template <SigmoidExp EXP = SigmoidExp::full, typename T>
FASTGEN_INLINE Sigmoid<T> sigmoid_parts(T z) {
  const T e = EXP == SigmoidExp::full ? vexp(-vabs(z)) : vexp_saturating(-vabs(z));
  const T d = 1 + e, inv = 1 / d, e_inv = e * inv;
  const auto nonneg = z >= 0;
  Sigmoid<T> p;
  p.s = select(nonneg, inv, e_inv);
  p.s_neg = select(nonneg, e_inv, inv);
  // log1p(e) = log(d) + (e - (d - 1)) / d: the second term restores what rounding 1 + e lost (and
  // carries a NaN z, which vlog_positive would not); d is in [1, 2].
  p.log1p_e = vlog_positive(d) + (e - (d - 1)) * inv;
  p.inv_s = select(nonneg, d, d / e);
  p.tanh_half = (1 - e) * inv;
  return p;
}

}  // namespace fastgen::cpu
