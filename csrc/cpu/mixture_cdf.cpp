// Mixture CDF ops on the CPU: mixture_cdf (u and log_pdf) and its backward, mixture_icdf
// (bisection with a fixed iteration count) and its implicit-function backward. The math is
// in fastgen/ops/mixture_cdf.py.
//
// Layout. Elements are processed in blocks of BLOCK = B * W: B SIMD vectors of W lanes (16
// float32 or 8 float64 with AVX-512), one element per lane, so that B independent dependency
// chains hide the latency of the long exp -> divide chain of each bisection step. A block's
// K parameters are transposed once into [K][BLOCK] scratch, after which every loop over the
// components is a vertical vector operation. mixture_icdf computes the softmax weights and
// each component's affine map once per element and then runs all its iterations on that
// scratch (L1) and on registers.
//
// Math is written with GCC vector extensions, generic in the vector type: exp, exp2, log and
// the sigmoid's pieces are vec_math.h's (shared with flow_elementwise.cpp; this file uses the
// saturating exp variants where a term must not overflow), the normal CDF is an erfc fit here.
// Each always_inline kernel is instantiated with vectors of the register width (64, 32, 16
// bytes) and run through run_on<ISA> (isa_dispatch.h) in the copy compiled for that
// instruction set (AVX-512, AVX2, baseline), picked at run time with the instruction set of
// fastgen's other CPU kernels (tap_gemm_set(), so FASTGEN_CPU_ISA selects here too).
//
// Polynomial coefficients are Chebyshev-node least-squares fits (mpmath.chebyfit, 50 digits)
// rounded to the working precision; each table states its function, interval and error.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

// The generic kernels pass wide vectors by value between always_inline functions (here and in
// vec_math.h) that are only ever inlined into the target-attributed copies: no call crosses an ABI.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "vec_math.h"

namespace fastgen::cpu {
namespace {

enum class Kind { Logistic, Gaussian };

// Per scalar type: the erfc fit and the quantile's Newton steps.
template <typename T>
struct Consts;

template <>
struct Consts<float> {
  // Erfc's argument is clamped here: its square stays finite and erfc is 0 long before.
  static constexpr float kErfcArgLimit = 1e18f;
  // G(y) with erfc(a) = (1 + y) / 2 exp(-a^2 + G(y)), y = (2 - a) / (2 + a) in [-1, 1] for a >= 0
  // (Numerical Recipes' form), degree 11: absolute error 1.4e-8, i.e. relative in erfc.
  static constexpr float kErfc[] = {-9.246457921108231e-05f, 8.508316568622831e-06f, 0.0005880717071704566f,
                                    -0.00022919225739315152f, -0.002303143497556448f, 0.001795201445929706f,
                                    0.008815157227218151f, -0.009880431927740574f, -0.04689478129148483f,
                                    0.047343939542770386f, 0.6726431846618652f, -0.6717941164970398f};
  // Newton steps after the 4.5e-4 start of the normal quantile: the error squares each step.
  static constexpr int kQuantileNewtonSteps = 2;
};

template <>
struct Consts<double> {
  static constexpr double kErfcArgLimit = 1e150;
  // As for float, degree 25: absolute error 1.7e-16.
  static constexpr double kErfc[] = {
      -1.1141466421901909e-09, -1.2776506237493277e-08, 3.675878538183882e-08,   7.746001345360312e-08,
      -3.086559820402206e-07,  -4.1484920834124593e-08, 1.3137199073509803e-06,  -1.4094127307024207e-06,
      -2.994294118363313e-06,  8.662494482986981e-06,   1.6080205095439494e-07,  -3.023780825572967e-05,
      3.1737328155349395e-05,  7.141808767204543e-05,   -0.00017430116360991256, -9.373894209180262e-05,
      0.0006736785371369921,   -0.00014624628859718252, -0.0023458124784660516,  0.0017589335075480397,
      0.00882493855611383,     -0.00987268936410846,    -0.046895610231160824,   0.047343306841863754,
      0.6726432239776567,      -0.6717940840566922};
  static constexpr int kQuantileNewtonSteps = 3;
};

// Elements per block: independent vectors in flight, to hide the exp -> divide latency.
constexpr int kVectorsPerBlock = 4;
template <class V>
constexpr int kBlock = kVectorsPerBlock * Lanes<V>::count;

constexpr double kSqrtHalf = 0.7071067811865476;
constexpr double kSqrt2Pi = 2.5066282746310002;
constexpr double kHalfLog2Pi = 0.9189385332046728;

// ------------------------------------------------------------------------- vector helpers

template <class V>
FASTGEN_INLINE V load(const ScalarOf<V>* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <class V>
FASTGEN_INLINE void store(ScalarOf<V>* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// erfc(c) = t exp(g - c^2) for c = |a|, with t = (1 + y) / 2 = 2 / (2 + c) and g = G(y): the
// pieces, so that callers can also take its log or its ratio to exp(-c^2) without under- or
// overflow. c is clamped: huge arguments give erfc = 0 either way, and c^2 and y stay finite.
template <class V>
FASTGEN_INLINE void erfc_parts(V a, V& t, V& g, V& c2) {
  using C = Consts<ScalarOf<V>>;
  const V c = clamp(vabs(a), 0, C::kErfcArgLimit);
  const V inv = 1 / (2 + c);
  t = 2 * inv;
  g = horner((2 - c) * inv, C::kErfc);
  c2 = c * c;
}

// The standard normal CDF Phi at z, given a = -z / sqrt(2): Phi = erfc(a) / 2, with the upper
// half as 1 - erfc(|a|) / 2 so that the lower tail keeps its relative accuracy.
template <class V>
FASTGEN_INLINE V normal_cdf_of_scaled(V a) {
  V t, g, c2;
  erfc_parts(a, t, g, c2);
  const V half_erfc = ScalarOf<V>(0.5) * t * vexp_saturating(g - c2);
  return a >= 0 ? half_erfc : 1 - half_erfc;
}

// ---------------------------------------------------------------------------- components

// One standard component at z: its CDF F, log-density log f and score d log f / dz.
template <class V, Kind kind>
struct Component;

template <class V>
struct Component<V, Kind::Logistic> {
  using T = ScalarOf<V>;
  // F = sigmoid(z), log f = -|z| - 2 log(1 + e), score = -tanh(z / 2), with e = exp(-|z|) <= 1
  // (vec_math.h's sigmoid pieces; e saturates at 0 below the normal range, where F < 1e-38
  // (float) is negligible in the mixture).
  static FASTGEN_INLINE void eval(V z, V& F, V& log_f, V& score) {
    const Sigmoid<V> p = sigmoid_parts<SigmoidExp::saturating>(z);
    F = p.s;
    log_f = -vabs(z) - 2 * p.log1p_e;
    score = z >= 0 ? -p.tanh_half : p.tanh_half;
  }
  // The bisection's CDF at mid from the affine map t = mid * A + B = -z log2(e).
  static FASTGEN_INLINE void affine(V loc, V inv_scale, V& A, V& B) {
    A = inv_scale * T(-kLog2e);
    B = loc * inv_scale * T(kLog2e);
  }
  // exp2 saturates for |z| > 87 (float) where sigmoid is 1 or below 1e-38: negligible in F.
  static FASTGEN_INLINE V cdf_of_affine(V t) { return 1 / (1 + vexp2_saturating(t)); }
};

template <class V>
struct Component<V, Kind::Gaussian> {
  using T = ScalarOf<V>;
  // F = Phi(z), log f = -z^2 / 2 - log(2 pi) / 2, score = -z.
  static FASTGEN_INLINE void eval(V z, V& F, V& log_f, V& score) {
    F = normal_cdf_of_scaled(z * T(-kSqrtHalf));
    log_f = T(-0.5) * z * z - T(kHalfLog2Pi);
    score = -z;
  }
  // a = -z / sqrt(2) = mid * A + B.
  static FASTGEN_INLINE void affine(V loc, V inv_scale, V& A, V& B) {
    A = inv_scale * T(-kSqrtHalf);
    B = loc * inv_scale * T(kSqrtHalf);
  }
  static FASTGEN_INLINE V cdf_of_affine(V a) { return normal_cdf_of_scaled(a); }
};

// The standard component's quantile at u in [tiny, 1 - eps/2].
template <class V, Kind kind>
FASTGEN_INLINE V component_quantile(V u) {
  using T = ScalarOf<V>;
  if constexpr (kind == Kind::Logistic) {
    return vlog(u / (1 - u));
  } else {
    // Phi^-1(u) = -Phi^-1(1 - u): work on p = min(u, 1 - u) <= 1/2 (1 - u is exact for u >= 1/2)
    // from Abramowitz & Stegun 26.2.23 (|error| < 4.5e-4), refined by Newton steps on
    // h(q) = log Phi(q) - log p, h' = phi / Phi, with log Phi and Phi / phi from erfc's pieces
    // (finite deep in the tail, where Phi and phi themselves underflow).
    const V one_minus = 1 - u;
    const V p = u < one_minus ? u : one_minus;
    const V log_p = vlog(p);
    const V s = vexp_saturating(T(0.5) * vlog(T(-2) * log_p));  // sqrt(-2 log p)
    const V num = T(2.515517) + s * (T(0.802853) + s * T(0.010328));
    const V den = 1 + s * (T(1.432788) + s * (T(0.189269) + s * T(0.001308)));
    V q = num / den - s;
    for (int step = 0; step < Consts<ScalarOf<V>>::kQuantileNewtonSteps; ++step) {
      const V a = q * T(-kSqrtHalf);
      V t, g, c2;
      erfc_parts(a, t, g, c2);
      // q <= 0 (a >= 0): Phi = t exp(g - c2) / 2 and phi = exp(-c2) / sqrt(2 pi). A start just
      // above 0 (p near 1/2) takes the direct form, where nothing underflows.
      const V lower_log_phi = vlog(T(0.5) * t) + g - c2;
      const V lower_ratio = T(0.5 * kSqrt2Pi) * t * vexp_saturating(g);
      const V upper_phi = 1 - T(0.5) * t * vexp_saturating(g - c2);
      const V upper_ratio = upper_phi * T(kSqrt2Pi) * vexp_saturating(c2);
      const V log_phi = a >= 0 ? lower_log_phi : vlog(upper_phi);
      const V ratio = a >= 0 ? lower_ratio : upper_ratio;
      q -= (log_phi - log_p) * ratio;
    }
    return u < one_minus ? q : -q;
  }
}

// ------------------------------------------------------------------------------- blocks

// dst[k * BL + l] = src[l * K + k] for l < n, pad for n <= l < BL.
template <int BL, typename T>
void gather_block(const T* src, int64_t K, int64_t n, T pad, T* dst) {
  for (int64_t l = 0; l < n; ++l)
    for (int64_t k = 0; k < K; ++k) dst[k * BL + l] = src[l * K + k];
  for (int64_t l = n; l < BL; ++l)
    for (int64_t k = 0; k < K; ++k) dst[k * BL + l] = pad;
}

// dst[l * K + k] = src[k * BL + l] for l < n.
template <int BL, typename T>
void scatter_block(const T* src, int64_t K, int64_t n, T* dst) {
  for (int64_t l = 0; l < n; ++l)
    for (int64_t k = 0; k < K; ++k) dst[l * K + k] = src[k * BL + l];
}

// The mixture's parameters, (N, K) contiguous.
template <typename T>
struct Mixture {
  const T* logits;
  const T* loc;
  const T* log_scale;
  int64_t N, K;
};

// Scratch of one thread: `arrays` [K][BL] arrays, the block's parameters among them.
template <int BL, typename T>
struct Scratch {
  Scratch(int64_t K, int arrays) : K(K), data(static_cast<size_t>(K) * BL * arrays) {}
  T* array(int i) { return data.data() + static_cast<size_t>(i) * K * BL; }
  int64_t K;
  std::vector<T> data;
};

// Loads block [e0, e0 + n) into scratch arrays 0, 1, 2 (logits, loc, log_scale); padding
// lanes get a harmless standard component.
template <int BL, typename T>
void load_mixture(const Mixture<T>& m, int64_t e0, int64_t n, Scratch<BL, T>& s) {
  gather_block<BL>(m.logits + e0 * m.K, m.K, n, T(0), s.array(0));
  gather_block<BL>(m.loc + e0 * m.K, m.K, n, T(0), s.array(1));
  gather_block<BL>(m.log_scale + e0 * m.K, m.K, n, T(0), s.array(2));
}

// A block's elements as kVectorsPerBlock vectors. The loops below run over a block's vectors
// innermost: their dependency chains (exp -> divide -> log per component) are independent,
// and interleaving them keeps the pipelines full.
template <class V>
using Group = std::array<V, kVectorsPerBlock>;

template <class V>
FASTGEN_INLINE Group<V> load_group(const ScalarOf<V>* p) {
  Group<V> g;
  for (int v = 0; v < kVectorsPerBlock; ++v) g[v] = load<V>(p + v * Lanes<V>::count);
  return g;
}

template <class V>
FASTGEN_INLINE void store_group(ScalarOf<V>* p, const Group<V>& g) {
  for (int v = 0; v < kVectorsPerBlock; ++v) store(p + v * Lanes<V>::count, g[v]);
}

// Per element: the logits' max, and exp(logit - max) into `weights` (unnormalized); returns
// their sum. Arrays [K][BL].
template <class V>
FASTGEN_INLINE Group<V> softmax_parts(const ScalarOf<V>* logits, int64_t K, ScalarOf<V>* weights, Group<V>& max) {
  constexpr int BL = kBlock<V>;
  max = load_group<V>(logits);
  for (int64_t k = 1; k < K; ++k) {
    const Group<V> l = load_group<V>(logits + k * BL);
    for (int v = 0; v < kVectorsPerBlock; ++v) max[v] = vmax(max[v], l[v]);
  }
  Group<V> sum{};
  for (int64_t k = 0; k < K; ++k) {
    Group<V> e = load_group<V>(logits + k * BL);
    for (int v = 0; v < kVectorsPerBlock; ++v) {
      e[v] = vexp_saturating(e[v] - max[v]);
      sum[v] += e[v];
    }
    store_group(weights + k * BL, e);
  }
  return sum;
}

// Per element: log sum_k exp(terms_k) given their max (an all -inf set gives -inf, not NaN).
template <class V>
FASTGEN_INLINE Group<V> log_sum_exp(const ScalarOf<V>* terms, int64_t K, Group<V> max) {
  constexpr int BL = kBlock<V>;
  for (int v = 0; v < kVectorsPerBlock; ++v) max[v] = max[v] == -std::numeric_limits<ScalarOf<V>>::infinity() ? V{} : max[v];
  Group<V> sum{};
  for (int64_t k = 0; k < K; ++k) {
    const Group<V> t = load_group<V>(terms + k * BL);
    for (int v = 0; v < kVectorsPerBlock; ++v) sum[v] += vexp_saturating(t[v] - max[v]);
  }
  for (int v = 0; v < kVectorsPerBlock; ++v) sum[v] = max[v] + vlog(sum[v]);
  return sum;
}

// Per element at x: sum_k w_k F_k and the log-density terms a_k = log w_k + log f(z_k) -
// log_scale_k (into `terms`, which holds the unnormalized weights on entry; their max into
// `max`), F_k into `cdfs` when given. Arrays [K][BL]: 0 logits, 1 loc, 2 log_scale.
template <class V, Kind kind>
FASTGEN_INLINE Group<V> mixture_terms(ScalarOf<V>* const* arr, int64_t K, const Group<V>& x, const Group<V>& logit_max,
                                      const Group<V>& sum_w, ScalarOf<V>* terms, ScalarOf<V>* cdfs, Group<V>& max) {
  constexpr int BL = kBlock<V>, W = Lanes<V>::count;
  Group<V> log_norm, u{};
  for (int v = 0; v < kVectorsPerBlock; ++v) {
    log_norm[v] = logit_max[v] + vlog(sum_w[v]);
    max[v] = splat<V>(-std::numeric_limits<ScalarOf<V>>::infinity());
  }
  for (int64_t k = 0; k < K; ++k) {
    for (int v = 0; v < kVectorsPerBlock; ++v) {
      const int64_t o = k * BL + v * W;
      const V log_scale = load<V>(arr[2] + o);
      const V z = (x[v] - load<V>(arr[1] + o)) * vexp_saturating(-log_scale);
      V F, log_f, score;
      Component<V, kind>::eval(z, F, log_f, score);
      u[v] += load<V>(terms + o) * F;
      const V a = load<V>(arr[0] + o) - log_norm[v] + log_f - log_scale;
      store(terms + o, a);
      if (cdfs != nullptr) store(cdfs + o, F);
      max[v] = vmax(max[v], a);
    }
  }
  for (int v = 0; v < kVectorsPerBlock; ++v) u[v] /= sum_w[v];
  return u;
}

// ------------------------------------------------------------------------------ kernels
// Each kernel runs blocks [b0, b1) of kBlock<V> elements; `run` is inlined into the wrapper
// of its instruction set.

template <class V, Kind kind>
struct CdfForward {
  using T = ScalarOf<V>;
  static constexpr int BL = kBlock<V>;
  const Mixture<T>& m;
  const T* x;
  T* u;
  T* log_pdf;

  FASTGEN_INLINE void run(int64_t b0, int64_t b1) const {
    Scratch<BL, T> s(m.K, 4);
    T* arr[3] = {s.array(0), s.array(1), s.array(2)};
    T* terms = s.array(3);
    T xb[BL], ub[BL], lb[BL];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t e0 = b * BL, n = std::min<int64_t>(BL, m.N - e0);
      load_mixture(m, e0, n, s);
      gather_block<BL>(x + e0, 1, n, T(0), xb);
      Group<V> logit_max, max;
      const Group<V> sum_w = softmax_parts<V>(arr[0], m.K, terms, logit_max);
      store_group(ub, mixture_terms<V, kind>(arr, m.K, load_group<V>(xb), logit_max, sum_w, terms, nullptr, max));
      store_group(lb, log_sum_exp<V>(terms, m.K, max));
      scatter_block<BL>(ub, 1, n, u + e0);
      scatter_block<BL>(lb, 1, n, log_pdf + e0);
    }
  }
};

// Gradients of (x, logits, loc, log_scale) from those of u and log_pdf (either may be absent):
// with responsibilities r_k = w_k f_k / (s_k p) = exp(a_k - log_pdf), p = exp(log_pdf),
//   du/dx = p,               dlog_pdf/dx = sum_k r_k score_k / s_k
//   du/dloc_k = -p r_k,      dlog_pdf/dloc_k = -r_k score_k / s_k
//   du/dlog_s_k = -p r_k (x - loc_k),   dlog_pdf/dlog_s_k = -r_k (score_k z_k + 1)
//   du/dlogit_k = w_k (F_k - u),        dlog_pdf/dlogit_k = r_k - w_k
template <class V, Kind kind>
struct CdfBackward {
  using T = ScalarOf<V>;
  static constexpr int BL = kBlock<V>, W = Lanes<V>::count;
  const Mixture<T>& m;
  const T *grad_u, *grad_log_pdf, *x, *u, *log_pdf;
  T *grad_x, *grad_logits, *grad_loc, *grad_log_scale;  // null when not requested

  FASTGEN_INLINE void run(int64_t b0, int64_t b1) const {
    Scratch<BL, T> s(m.K, 4);
    T* arr[3] = {s.array(0), s.array(1), s.array(2)};
    T* weights = s.array(3);
    T gub[BL] = {}, glb[BL] = {}, xb[BL], ub[BL], lb[BL];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t e0 = b * BL, n = std::min<int64_t>(BL, m.N - e0);
      load_mixture(m, e0, n, s);
      gather_block<BL>(x + e0, 1, n, T(0), xb);
      gather_block<BL>(u + e0, 1, n, T(0), ub);
      gather_block<BL>(log_pdf + e0, 1, n, T(0), lb);
      if (grad_u != nullptr) gather_block<BL>(grad_u + e0, 1, n, T(0), gub);
      if (grad_log_pdf != nullptr) gather_block<BL>(grad_log_pdf + e0, 1, n, T(0), glb);
      Group<V> logit_max;
      const Group<V> sum_w = softmax_parts<V>(arr[0], m.K, weights, logit_max);
      const Group<V> xv = load_group<V>(xb), uv = load_group<V>(ub), L = load_group<V>(lb);
      const Group<V> gu = load_group<V>(gub), gl = load_group<V>(glb);
      Group<V> inv_sum_w, log_norm, gu_p, gx;
      for (int v = 0; v < kVectorsPerBlock; ++v) {
        inv_sum_w[v] = 1 / sum_w[v];
        log_norm[v] = logit_max[v] + vlog(sum_w[v]);
        gx[v] = gu_p[v] = gu[v] * vexp_saturating(L[v]);
      }
      for (int64_t k = 0; k < m.K; ++k) {
        for (int v = 0; v < kVectorsPerBlock; ++v) {
          const int64_t o = k * BL + v * W;
          const V logit = load<V>(arr[0] + o), log_scale = load<V>(arr[2] + o);
          const V w = load<V>(weights + o) * inv_sum_w[v];
          const V inv_scale = vexp_saturating(-log_scale);
          const V d = xv[v] - load<V>(arr[1] + o), z = d * inv_scale;
          V F, log_f, score;
          Component<V, kind>::eval(z, F, log_f, score);
          const V r = vexp_saturating(logit - log_norm[v] + log_f - log_scale - L[v]);
          const V gl_score = gl[v] * score;
          gx[v] += r * gl_score * inv_scale;
          store(arr[0] + o, gu[v] * w * (F - uv[v]) + gl[v] * (r - w));
          store(arr[1] + o, -r * (gu_p[v] + gl_score * inv_scale));
          store(arr[2] + o, -r * (gu_p[v] * d + gl[v] + gl_score * z));
        }
      }
      store_group(xb, gx);
      if (grad_x != nullptr) scatter_block<BL>(xb, 1, n, grad_x + e0);
      if (grad_logits != nullptr) scatter_block<BL>(arr[0], m.K, n, grad_logits + e0 * m.K);
      if (grad_loc != nullptr) scatter_block<BL>(arr[1], m.K, n, grad_loc + e0 * m.K);
      if (grad_log_scale != nullptr) scatter_block<BL>(arr[2], m.K, n, grad_log_scale + e0 * m.K);
    }
  }
};

// Bisection: per element, u clamped to [tiny, 1 - eps/2], the bracket [min_k, max_k] of the
// component quantiles loc_k + s_k Q(u), then `iters` halvings; x is the final bracket's middle.
template <class V, Kind kind>
struct Icdf {
  using T = ScalarOf<V>;
  static constexpr int B = kVectorsPerBlock, BL = kBlock<V>, W = Lanes<V>::count;
  const Mixture<T>& m;
  const T* u;
  int64_t iters;
  T* x;

  FASTGEN_INLINE void run(int64_t b0, int64_t b1) const {
    constexpr T tiny = std::numeric_limits<T>::min(), below_one = 1 - std::numeric_limits<T>::epsilon() / 2;
    Scratch<BL, T> s(m.K, 4);
    T* arr[3] = {s.array(0), s.array(1), s.array(2)};
    T* weights = s.array(3);
    T* A = arr[1];  // the affine maps overwrite loc and log_scale
    T* Bc = arr[2];
    T ub[BL];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t e0 = b * BL, n = std::min<int64_t>(BL, m.N - e0);
      load_mixture(m, e0, n, s);
      gather_block<BL>(u + e0, 1, n, T(0.5), ub);
      Group<V> logit_max, target = load_group<V>(ub), inv_sum_w, q, lo, hi;
      const Group<V> sum_w = softmax_parts<V>(arr[0], m.K, weights, logit_max);
      for (int v = 0; v < B; ++v) {
        inv_sum_w[v] = 1 / sum_w[v];
        target[v] = clamp(target[v], tiny, below_one);
        q[v] = component_quantile<V, kind>(target[v]);
        lo[v] = splat<V>(std::numeric_limits<T>::infinity());
        hi[v] = -lo[v];
      }
      for (int64_t k = 0; k < m.K; ++k) {
        for (int v = 0; v < B; ++v) {
          const int64_t o = k * BL + v * W;
          const V loc = load<V>(arr[1] + o), log_scale = load<V>(arr[2] + o);
          const V quantile = loc + vexp_saturating(log_scale) * q[v];
          lo[v] = vmin(lo[v], quantile);
          hi[v] = vmax(hi[v], quantile);
          V a, c;
          Component<V, kind>::affine(loc, vexp_saturating(-log_scale), a, c);
          store(A + o, a);
          store(Bc + o, c);
          store(weights + o, load<V>(weights + o) * inv_sum_w[v]);
        }
      }
      Group<V> cdf{};
      for (int64_t it = 0; it < iters; ++it) {
        Group<V> mid;
        for (int v = 0; v < B; ++v) {
          mid[v] = T(0.5) * (lo[v] + hi[v]);
          cdf[v] = V{};
        }
        for (int64_t k = 0; k < m.K; ++k) {
          for (int v = 0; v < B; ++v) {
            const int64_t o = k * BL + v * W;
            const V t = mid[v] * load<V>(A + o) + load<V>(Bc + o);
            cdf[v] += load<V>(weights + o) * Component<V, kind>::cdf_of_affine(t);
          }
        }
        for (int v = 0; v < B; ++v) {
          const auto below = cdf[v] < target[v];
          lo[v] = below ? mid[v] : lo[v];
          hi[v] = below ? hi[v] : mid[v];
        }
      }
      // NaN in u makes every quantile and so the bracket NaN. NaN in a parameter makes the
      // CDF NaN (its comparisons false): 0 * cdf carries it into x, like torch.amin would.
      for (int v = 0; v < B; ++v) lo[v] = T(0.5) * (lo[v] + hi[v]) + 0 * cdf[v];
      store_group(ub, lo);
      scatter_block<BL>(ub, 1, n, x + e0);
    }
  }
};

// Implicit-function gradients of x = F^-1(u) at the computed x: with p = pdf(x) (clamped to the
// smallest normal, so that an underflowed density gives a huge gradient rather than NaN) and
// r_k the responsibilities at x,
//   dx/du = 1 / p,   dx/dlogit_k = -w_k (F_k - F(x)) / p,   dx/dloc_k = r_k,
//   dx/dlog_s_k = r_k (x - loc_k).
template <class V, Kind kind>
struct IcdfBackward {
  using T = ScalarOf<V>;
  static constexpr int BL = kBlock<V>, W = Lanes<V>::count;
  const Mixture<T>& m;
  const T *grad_x, *x;
  T *grad_u, *grad_logits, *grad_loc, *grad_log_scale;  // null when not requested

  FASTGEN_INLINE void run(int64_t b0, int64_t b1) const {
    constexpr T tiny = std::numeric_limits<T>::min();
    Scratch<BL, T> s(m.K, 5);
    T* arr[3] = {s.array(0), s.array(1), s.array(2)};
    T* terms = s.array(3);
    T* cdfs = s.array(4);
    T gb[BL], xb[BL];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t e0 = b * BL, n = std::min<int64_t>(BL, m.N - e0);
      load_mixture(m, e0, n, s);
      gather_block<BL>(x + e0, 1, n, T(0), xb);
      gather_block<BL>(grad_x + e0, 1, n, T(0), gb);
      Group<V> logit_max, max;
      const Group<V> sum_w = softmax_parts<V>(arr[0], m.K, terms, logit_max);
      const Group<V> xv = load_group<V>(xb), g = load_group<V>(gb);
      const Group<V> F = mixture_terms<V, kind>(arr, m.K, xv, logit_max, sum_w, terms, cdfs, max);
      const Group<V> L = log_sum_exp<V>(terms, m.K, max);
      Group<V> log_norm, g_over_p;
      for (int v = 0; v < kVectorsPerBlock; ++v) {
        log_norm[v] = logit_max[v] + vlog(sum_w[v]);
        const V p = vexp_saturating(L[v]);
        g_over_p[v] = g[v] / (p > tiny ? p : splat<V>(tiny));
      }
      for (int64_t k = 0; k < m.K; ++k) {
        for (int v = 0; v < kVectorsPerBlock; ++v) {
          const int64_t o = k * BL + v * W;
          const V w = vexp_saturating(load<V>(arr[0] + o) - log_norm[v]);
          const V gr = g[v] * vexp_saturating(load<V>(terms + o) - L[v]);
          store(arr[0] + o, -g_over_p[v] * w * (load<V>(cdfs + o) - F[v]));
          store(arr[2] + o, gr * (xv[v] - load<V>(arr[1] + o)));
          store(arr[1] + o, gr);
        }
      }
      store_group(gb, g_over_p);
      if (grad_u != nullptr) scatter_block<BL>(gb, 1, n, grad_u + e0);
      if (grad_logits != nullptr) scatter_block<BL>(arr[0], m.K, n, grad_logits + e0 * m.K);
      if (grad_loc != nullptr) scatter_block<BL>(arr[1], m.K, n, grad_loc + e0 * m.K);
      if (grad_log_scale != nullptr) scatter_block<BL>(arr[2], m.K, n, grad_log_scale + e0 * m.K);
    }
  }
};

// ----------------------------------------------------------------------------- dispatch

// Runs `Kernel<V, kind>{args...}` over every block in parallel, in the copy of the instruction
// set of fastgen's CPU kernels, with V a vector of its register width (as wide as the
// registers: wider ones are not split cleanly, GCC scalarizes their selects). A task gets
// enough blocks for about 1e5 component evaluations (`passes` per component and element), to
// amortize its scratch and scheduling.
template <template <class, Kind> class Kernel, typename T, Kind kind, class... Args>
void run_isa(int64_t N, int64_t K, int64_t passes, const Args&... args) {
  dispatch_isa([&]<Isa ISA>() {
    using V = typename VectorOf<T, vector_bytes(ISA)>::type;
    const Kernel<V, kind> kernel{args...};
    constexpr int64_t block = kBlock<V>;
    const int64_t grain = std::max<int64_t>(1, 100000 / std::max<int64_t>(1, block * K * passes));
    at::parallel_for(0, (N + block - 1) / block, grain, [&](int64_t b0, int64_t b1) {
      run_on<ISA>([&]() FASTGEN_INLINE_LAMBDA { kernel.run(b0, b1); });
    });
  });
}

template <template <class, Kind> class Kernel, typename T, class... Args>
void run_kind(Kind kind, int64_t N, int64_t K, int64_t passes, const Args&... args) {
  if (kind == Kind::Logistic)
    run_isa<Kernel, T, Kind::Logistic>(N, K, passes, args...);
  else
    run_isa<Kernel, T, Kind::Gaussian>(N, K, passes, args...);
}

// ------------------------------------------------------------------------------- checks

Kind parse_kind(const char* op, c10::string_view kind) {
  TORCH_CHECK_VALUE(kind == "logistic" || kind == "gaussian", op, ": kind must be 'logistic' or 'gaussian', got '",
                    std::string(kind), "'");
  return kind == "logistic" ? Kind::Logistic : Kind::Gaussian;
}

// x (...) and the parameters (..., K), K >= 1, on the CPU, float32/float64 alike. Everything a
// kernel's indexing relies on, since the ops can be called directly through torch.ops.
void check_mixture(const char* op, const char* x_name, const at::Tensor& x, const at::Tensor& logits,
                   const at::Tensor& loc, const at::Tensor& log_scale) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, " (cpu): ", x_name,
                   " must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, " (cpu): ", x_name, " must be on the CPU");
  const auto check_param = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK_VALUE(t.dim() == x.dim() + 1 && t.sizes().slice(0, x.dim()) == x.sizes() && t.size(-1) >= 1, op,
                      ": ", name, " must have shape ", x_name, ".shape + (K,) with K >= 1, got ", t.sizes(),
                      " for ", x_name, " of shape ", x.sizes());
    TORCH_CHECK_VALUE(t.size(-1) == logits.size(-1), op, ": ", name, " has K = ", t.size(-1),
                      " components but logits has ", logits.size(-1));
    TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have dtype ", x.scalar_type(),
                     ", got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.device().is_cpu(), op, " (cpu): ", name, " must be on the CPU");
  };
  check_param("logits", logits);
  check_param("loc", loc);
  check_param("log_scale", log_scale);
}

void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), op, ": ", name, " must have shape ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have dtype ", x.scalar_type(),
                   ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, " (cpu): ", name, " must be on the CPU");
}

template <typename T>
Mixture<T> mixture(const at::Tensor& logits, const at::Tensor& loc, const at::Tensor& log_scale) {
  return {logits.data_ptr<T>(), loc.data_ptr<T>(), log_scale.data_ptr<T>(), logits.numel() / logits.size(-1),
          logits.size(-1)};
}

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
T* data_or_null(at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// ---------------------------------------------------------------------------------- ops

std::tuple<at::Tensor, at::Tensor> mixture_cdf_cpu(const at::Tensor& x_in, const at::Tensor& logits_in,
                                                   const at::Tensor& loc_in, const at::Tensor& log_scale_in,
                                                   c10::string_view kind_name) {
  check_mixture("mixture_cdf", "x", x_in, logits_in, loc_in, log_scale_in);
  const Kind kind = parse_kind("mixture_cdf", kind_name);
  const at::Tensor x = x_in.contiguous(), logits = logits_in.contiguous(), loc = loc_in.contiguous();
  const at::Tensor log_scale = log_scale_in.contiguous();
  at::Tensor u = at::empty_like(x), log_pdf = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixture_cdf", [&] {
    const Mixture<scalar_t> m = mixture<scalar_t>(logits, loc, log_scale);
    run_kind<CdfForward, scalar_t>(kind, m.N, m.K, 4, m, x.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                                   log_pdf.data_ptr<scalar_t>());
  });
  return {u, log_pdf};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixture_cdf_backward_cpu(
    const c10::optional<at::Tensor>& grad_u_in, const c10::optional<at::Tensor>& grad_log_pdf_in,
    const at::Tensor& x_in, const at::Tensor& logits_in, const at::Tensor& loc_in, const at::Tensor& log_scale_in,
    const at::Tensor& u_in, const at::Tensor& log_pdf_in, c10::string_view kind_name, std::array<bool, 4> mask) {
  const char* op = "mixture_cdf_backward";
  check_mixture(op, "x", x_in, logits_in, loc_in, log_scale_in);
  const Kind kind = parse_kind(op, kind_name);
  check_like(op, "u", u_in, x_in);
  check_like(op, "log_pdf", log_pdf_in, x_in);
  if (grad_u_in.has_value()) check_like(op, "grad_u", *grad_u_in, x_in);
  if (grad_log_pdf_in.has_value()) check_like(op, "grad_log_pdf", *grad_log_pdf_in, x_in);
  const at::Tensor x = x_in.contiguous(), logits = logits_in.contiguous(), loc = loc_in.contiguous();
  const at::Tensor log_scale = log_scale_in.contiguous(), u = u_in.contiguous(), log_pdf = log_pdf_in.contiguous();
  const at::Tensor grad_u = grad_u_in.has_value() ? grad_u_in->contiguous() : at::Tensor();
  const at::Tensor grad_log_pdf = grad_log_pdf_in.has_value() ? grad_log_pdf_in->contiguous() : at::Tensor();
  // Distinct empty tensors for the gradients not requested: outputs must not alias.
  const auto out = [&](bool need, const at::Tensor& like) { return need ? at::empty_like(like) : at::Tensor(); };
  at::Tensor gx = out(mask[0], x), glogits = out(mask[1], logits), gloc = out(mask[2], loc);
  at::Tensor gls = out(mask[3], log_scale);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixture_cdf_backward", [&] {
    const Mixture<scalar_t> m = mixture<scalar_t>(logits, loc, log_scale);
    run_kind<CdfBackward, scalar_t>(kind, m.N, m.K, 4, m, data_or_null<scalar_t>(grad_u),
                                    data_or_null<scalar_t>(grad_log_pdf), x.data_ptr<scalar_t>(),
                                    u.data_ptr<scalar_t>(), log_pdf.data_ptr<scalar_t>(), data_or_null<scalar_t>(gx),
                                    data_or_null<scalar_t>(glogits), data_or_null<scalar_t>(gloc),
                                    data_or_null<scalar_t>(gls));
  });
  const auto none = [&] { return at::empty({0}, x.options()); };
  return {mask[0] ? gx : none(), mask[1] ? glogits : none(), mask[2] ? gloc : none(), mask[3] ? gls : none()};
}

at::Tensor mixture_icdf_cpu(const at::Tensor& u_in, const at::Tensor& logits_in, const at::Tensor& loc_in,
                            const at::Tensor& log_scale_in, c10::string_view kind_name, int64_t iters) {
  check_mixture("mixture_icdf", "u", u_in, logits_in, loc_in, log_scale_in);
  const Kind kind = parse_kind("mixture_icdf", kind_name);
  TORCH_CHECK_VALUE(iters >= 1, "mixture_icdf: iters must be >= 1, got ", iters);
  const at::Tensor u = u_in.contiguous(), logits = logits_in.contiguous(), loc = loc_in.contiguous();
  const at::Tensor log_scale = log_scale_in.contiguous();
  at::Tensor x = at::empty_like(u);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mixture_icdf", [&] {
    const Mixture<scalar_t> m = mixture<scalar_t>(logits, loc, log_scale);
    run_kind<Icdf, scalar_t>(kind, m.N, m.K, iters, m, u.data_ptr<scalar_t>(), iters, x.data_ptr<scalar_t>());
  });
  return x;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixture_icdf_backward_cpu(
    const at::Tensor& grad_x_in, const at::Tensor& x_in, const at::Tensor& logits_in, const at::Tensor& loc_in,
    const at::Tensor& log_scale_in, c10::string_view kind_name, std::array<bool, 4> mask) {
  const char* op = "mixture_icdf_backward";
  check_mixture(op, "x", x_in, logits_in, loc_in, log_scale_in);
  const Kind kind = parse_kind(op, kind_name);
  check_like(op, "grad_x", grad_x_in, x_in);
  const at::Tensor x = x_in.contiguous(), logits = logits_in.contiguous(), loc = loc_in.contiguous();
  const at::Tensor log_scale = log_scale_in.contiguous(), grad_x = grad_x_in.contiguous();
  const auto out = [&](bool need, const at::Tensor& like) { return need ? at::empty_like(like) : at::Tensor(); };
  at::Tensor gu = out(mask[0], x), glogits = out(mask[1], logits), gloc = out(mask[2], loc);
  at::Tensor gls = out(mask[3], log_scale);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixture_icdf_backward", [&] {
    const Mixture<scalar_t> m = mixture<scalar_t>(logits, loc, log_scale);
    run_kind<IcdfBackward, scalar_t>(kind, m.N, m.K, 5, m, grad_x.data_ptr<scalar_t>(),
                                     x.data_ptr<scalar_t>(), data_or_null<scalar_t>(gu),
                                     data_or_null<scalar_t>(glogits), data_or_null<scalar_t>(gloc),
                                     data_or_null<scalar_t>(gls));
  });
  const auto none = [&] { return at::empty({0}, x.options()); };
  return {mask[0] ? gu : none(), mask[1] ? glogits : none(), mask[2] ? gloc : none(), mask[3] ? gls : none()};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("mixture_cdf", &mixture_cdf_cpu);
  m.impl("mixture_cdf_backward", &mixture_cdf_backward_cpu);
  m.impl("mixture_icdf", &mixture_icdf_cpu);
  m.impl("mixture_icdf_backward", &mixture_icdf_backward_cpu);
}

}  // namespace fastgen::cpu
