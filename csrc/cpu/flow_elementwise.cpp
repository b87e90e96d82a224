// Element-wise flow layers on the CPU: affine coupling, ActNorm and the logit transform.
// Each forward (or inverse) is one pass that writes y and reduces the per-example
// log-determinant on the way; each backward is one pass that writes every input gradient
// (the math is in fastgen/ops/affine_coupling.py, actnorm.py and logit_transform.py).
//
// Vectorization. The loops are written on scalars and vectorized by GCC (#pragma omp simd):
// exp, log and the sigmoid's pieces are the inline polynomial versions of vec_math.h (plain
// arithmetic, bit casts and bitwise selects, within 1.3 ulp, special values kept, no traps),
// where a call to std::exp would keep the loop scalar. Each parallel task runs its loops
// through with_isa() (isa_dispatch.h): compiled for AVX-512, AVX2 + FMA and the baseline,
// run in the copy the tap-GEMM kernels chose for this CPU (fastgen._C.cpu_isa();
// FASTGEN_CPU_ISA overrides); every helper is always-inline, so it is vectorized for the
// caller's target.
//
// Coupling masks. The mask is shared by the batch, so each call turns it once into a plan:
// the example's elements in aligned pairs (2k, 2k + 1), runs of pairs with both elements
// passed through (copied), both transformed (dense), or exactly one of them transformed
// ("paired": a checkerboard on an even width, or any alternating pattern). A paired run
// loads each pair as two SIMD lanes of the interleaved inputs, picks the transformed
// element with a select and computes the exp/log of that one only, so a checkerboard
// costs half the transcendental work of a dense layer; the pass-through element's shift
// and log-scale are never computed on (whatever they hold, even NaN, cannot leak).
//
// Parallelism and determinism: tasks are (example, chunk of CHUNK elements); a task's
// log-determinant is a partial sum, and the partials are added in chunk order after the
// parallel loop, so results do not depend on the thread count. ActNorm's per-channel
// parameter gradients are partial sums per (block of examples, channel), reduced likewise.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <tuple>
#include <vector>

#include "vec_math.h"

namespace fastgen::cpu {
namespace {

// Elements of one example per task: even (a pair never straddles two chunks), and large
// enough that a task amortizes its scheduling.
constexpr int64_t CHUNK = 1 << 14;
// Elements per parallel_for grain: below this, threads cost more than they save.
constexpr int64_t GRAIN = 1 << 15;

int64_t task_grain(int64_t elements_per_task) {
  return std::max<int64_t>(1, GRAIN / std::max<int64_t>(elements_per_task, 1));
}

// f.template operator()<INVERSE>(): loops specialized on the direction.
template <class F>
void dispatch_inverse(bool inverse, const F& f) {
  return inverse ? f.template operator()<true>() : f.template operator()<false>();
}

// ---------------------------------------------------------------------------------- checks

void check_input(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() >= 2, op, ": ", name, " must have shape (B, ...) with at least 2 dimensions, got shape ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, " (cpu): ", name,
                   " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, " (cpu): ", name, " must be on the CPU, got ", t.device());
}

void check_like(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have dtype ", x.scalar_type(), ", got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, " (cpu): ", name, " must be on the CPU, got ", t.device());
}

// A tensor whose examples t[b] are each contiguous (strided over the batch, as the halves of
// a network output split along channels are), copied only when they are not; with its
// batch stride.
struct Rows {
  at::Tensor t;
  int64_t stride;
};

Rows rows(const at::Tensor& t) {
  at::Tensor r = t.size(0) > 0 && t.select(0, 0).is_contiguous() ? t : t.contiguous();
  return {r, r.size(0) > 1 ? r.stride(0) : r.numel()};
}

// ---------------------------------------------------------------------------- affine coupling

enum class Scale { exp, sigmoid, additive };

Scale parse_scale(const char* op, std::string_view scale, bool has_log_scale) {
  if (!has_log_scale) return Scale::additive;
  TORCH_CHECK_VALUE(scale == "exp" || scale == "sigmoid", op, ": scale must be 'exp' or 'sigmoid', got '", scale, "'");
  return scale == "exp" ? Scale::exp : Scale::sigmoid;
}

// One transformed element: y = x * s + t (forward) or (x - t) / s (inverse), s = exp(l) or
// sigmoid(l + 2), and its term +-log s of the example's log-determinant.
//
// The element functions write their outputs through pointers and return the logdet term:
// a local of the loop body that is a struct, or whose address is taken, becomes a
// per-lane array under omp simd, which GCC does not vectorize; locals of these (inlined)
// functions are fine. One function per pass also computes s once (GCC does not reliably
// merge the same exp/log computed in two calls).
template <typename T, Scale S, bool INVERSE>
struct Coupling {
  using scalar_t = T;

  static FASTGEN_INLINE T forward(T x, T t, T l, T* y) {
    if constexpr (S == Scale::additive) {
      *y = INVERSE ? x - t : x + t;
      return T(0);
    } else if constexpr (S == Scale::exp) {
      const T m = vexp(INVERSE ? -l : l);
      *y = INVERSE ? (x - t) * m : x * m + t;
      return INVERSE ? -l : l;
    } else {
      const T z = l + T(2);
      const Sigmoid<T> p = sigmoid_parts(z);
      *y = INVERSE ? (x - t) * p.inv_s : x * p.s + t;
      return INVERSE ? -p.log_s(z) : p.log_s(z);
    }
  }

  // Gradients from gy (of y) and gld (of the example's logdet), with m = s forward, 1 / s
  // inverse, and d = d log s / dl (1 for exp, 1 - s for the sigmoid):
  //   forward: gx = gy m, gt = gy,  gl = d (gy x m + gld)
  //   inverse: gx = gy m, gt = -gx, gl = -d (gy (x - t) m + gld)
  static FASTGEN_INLINE void backward(T gy, T gld, T x, T t, T l, T* gx, T* gt, T* gl) {
    if constexpr (S == Scale::additive) {
      *gx = gy;
      *gt = INVERSE ? -gy : gy;
      *gl = T(0);
    } else {
      T m, d;
      if constexpr (S == Scale::exp) {
        m = vexp(INVERSE ? -l : l);
        d = T(1);
      } else {
        const Sigmoid<T> p = sigmoid_parts(l + T(2));
        m = INVERSE ? p.inv_s : p.s;
        d = p.s_neg;
      }
      *gx = gy * m;
      *gt = INVERSE ? -(gy * m) : gy;
      *gl = INVERSE ? -d * (gy * ((x - t) * m) + gld) : d * (gy * x * m + gld);
    }
  }
};

// An aligned pair of a paired run, at x[0], x[1] (and the same offsets of the other
// arrays): the element picked by sec is transformed, the other passes through. Every
// operand is loaded (vector loads of interleaved pairs) and picked by selects; the stores
// are unconditional, so GCC vectorizes.
template <class C, typename T>
FASTGEN_INLINE T pair_forward(bool sec, const T* x, const T* t, const T* l, T* y) {
  T yt;
  const T term = C::forward(select(sec, x[1], x[0]), select(sec, t[1], t[0]), select(sec, l[1], l[0]), &yt);
  const T y0 = select(sec, x[0], yt), y1 = select(sec, yt, x[1]);
  y[0] = y0;
  y[1] = y1;
  return term;
}

// The pass-through element of the pair: gx = gy, no gradient to its shift and log-scale.
template <class C, typename T>
FASTGEN_INLINE void pair_backward(bool sec, const T* gy, T gld, const T* x, const T* t, const T* l, T* gx, T* gt,
                                  T* gl) {
  T a, b, c;
  C::backward(select(sec, gy[1], gy[0]), gld, select(sec, x[1], x[0]), select(sec, t[1], t[0]), select(sec, l[1], l[0]),
              &a, &b, &c);
  const T gx0 = select(sec, gy[0], a), gx1 = select(sec, a, gy[1]);
  const T gt0 = select(sec, T(0), b), gt1 = select(sec, b, T(0));
  const T gl0 = select(sec, T(0), c), gl1 = select(sec, c, T(0));
  gx[0] = gx0;
  gx[1] = gx1;
  gt[0] = gt0;
  gt[1] = gt1;
  gl[0] = gl0;
  gl[1] = gl1;
}

enum class Run : uint8_t { pass, dense, paired };

struct Segment {
  int64_t begin, end;  // element offsets in the example
  Run kind;
};

// The mask as runs of pairs (see the header); no segment straddles a chunk.
template <typename T>
struct MaskPlan {
  std::vector<Segment> segments;
  std::vector<int64_t> first;  // chunk c's segments are [first[c], first[c + 1])
  std::vector<T> second;       // per pair of a paired run: 1 if its second element is the transformed one
  int64_t chunks() const { return int64_t(first.size()) - 1; }
};

// keep: the mask broadcast to the example's shape, nonzero = pass through; undefined = no mask.
template <typename T>
MaskPlan<T> plan_mask(const at::Tensor& keep, int64_t D) {
  MaskPlan<T> plan;
  const bool* k = keep.defined() ? keep.data_ptr<bool>() : nullptr;
  plan.second.assign((D + 1) / 2, T(0));
  for (int64_t c0 = 0; c0 < D; c0 += CHUNK) {
    plan.first.push_back(int64_t(plan.segments.size()));
    for (int64_t i = c0, c1 = std::min(D, c0 + CHUNK); i < c1; i += 2) {
      const int64_t j = std::min(i + 2, D);
      Run kind = Run::dense;
      if (k != nullptr) {
        const bool a = !k[i], b = j - i == 2 ? !k[i + 1] : a;  // transformed?
        kind = a && b ? Run::dense : (a || b) ? Run::paired : Run::pass;
        plan.second[i / 2] = T(b && !a);
      }
      if (int64_t(plan.segments.size()) > plan.first.back() && plan.segments.back().kind == kind)
        plan.segments.back().end = j;
      else
        plan.segments.push_back({i, j, kind});
    }
  }
  plan.first.push_back(int64_t(plan.segments.size()));
  return plan;
}

// Pointers at the start of one (example, chunk); segment offsets are relative to the example.
template <typename T>
struct CouplingChunk {
  const T* __restrict x;
  const T* __restrict t;
  const T* __restrict l;  // = t for additive coupling (never read)
  const T* __restrict second;
  int64_t c0;
};

template <class C, typename T = typename C::scalar_t>
FASTGEN_INLINE T coupling_forward_chunk(const Segment* seg, const Segment* seg_end, const CouplingChunk<T>& in,
                                        T* __restrict y) {
  const T* __restrict x = in.x;
  const T* __restrict t = in.t;
  const T* __restrict l = in.l;
  const T* __restrict second = in.second;
  T logdet = T(0);
  for (; seg != seg_end; ++seg) {
    const int64_t lo = seg->begin - in.c0, hi = seg->end - in.c0;
    T acc = T(0);
    if (seg->kind == Run::pass) {
      std::memcpy(y + lo, x + lo, sizeof(T) * (hi - lo));
    } else if (seg->kind == Run::dense) {
#pragma omp simd reduction(+ : acc)
      for (int64_t i = lo; i < hi; ++i) acc += C::forward(x[i], t[i], l[i], y + i);
    } else {
#pragma omp simd reduction(+ : acc)
      for (int64_t k = lo / 2; k < hi / 2; ++k)
        acc += pair_forward<C>(second[k] != T(0), x + 2 * k, t + 2 * k, l + 2 * k, y + 2 * k);
    }
    logdet += acc;
  }
  return logdet;
}

template <class C, typename T = typename C::scalar_t>
FASTGEN_INLINE void coupling_backward_chunk(const Segment* seg, const Segment* seg_end, const CouplingChunk<T>& in,
                                            const T* __restrict gy, T gld, T* __restrict gx, T* __restrict gt,
                                            T* __restrict gl) {
  const T* __restrict x = in.x;
  const T* __restrict t = in.t;
  const T* __restrict l = in.l;
  const T* __restrict second = in.second;
  for (; seg != seg_end; ++seg) {
    const int64_t lo = seg->begin - in.c0, hi = seg->end - in.c0;
    if (seg->kind == Run::pass) {
      std::memcpy(gx + lo, gy + lo, sizeof(T) * (hi - lo));
      std::fill(gt + lo, gt + hi, T(0));
      std::fill(gl + lo, gl + hi, T(0));
    } else if (seg->kind == Run::dense) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) C::backward(gy[i], gld, x[i], t[i], l[i], gx + i, gt + i, gl + i);
    } else {
#pragma omp simd
      for (int64_t k = lo / 2; k < hi / 2; ++k) {
        const int64_t i = 2 * k;
        pair_backward<C>(second[k] != T(0), gy + i, gld, x + i, t + i, l + i, gx + i, gt + i, gl + i);
      }
    }
  }
}

// f.template operator()<Coupling<T, scale, inverse>>()
template <typename T, class F>
void dispatch_coupling(Scale scale, bool inverse, const F& f) {
  switch (scale) {
    case Scale::exp:
      return inverse ? f.template operator()<Coupling<T, Scale::exp, true>>()
                     : f.template operator()<Coupling<T, Scale::exp, false>>();
    case Scale::sigmoid:
      return inverse ? f.template operator()<Coupling<T, Scale::sigmoid, true>>()
                     : f.template operator()<Coupling<T, Scale::sigmoid, false>>();
    case Scale::additive:
      return inverse ? f.template operator()<Coupling<T, Scale::additive, true>>()
                     : f.template operator()<Coupling<T, Scale::additive, false>>();
  }
}

struct CouplingArgs {
  Rows x, t, l;    // l = t when additive
  at::Tensor keep; // mask broadcast to the example shape, as bool; undefined without mask
  Scale scale;
  int64_t B, D;
};

CouplingArgs coupling_args(const char* op, const at::Tensor& x, const at::Tensor& shift,
                           const c10::optional<at::Tensor>& log_scale, const c10::optional<at::Tensor>& mask,
                           c10::string_view scale) {
  check_input(op, "x", x);
  check_like(op, "shift", shift, x.sizes(), x);
  if (log_scale.has_value()) check_like(op, "log_scale", *log_scale, x.sizes(), x);
  CouplingArgs a;
  a.scale = parse_scale(op, std::string_view(scale.data(), scale.size()), log_scale.has_value());
  a.B = x.size(0);
  a.D = c10::multiply_integers(x.sizes().slice(1));
  if (mask.has_value()) {
    const at::IntArrayRef example = x.sizes().slice(1);
    bool ok = mask->dim() <= int64_t(example.size());
    for (int64_t i = 1; ok && i <= mask->dim(); ++i) {
      const int64_t m = mask->size(-i), e = example[example.size() - i];
      ok = m == e || m == 1;
    }
    TORCH_CHECK_VALUE(ok, op, ": mask must be broadcastable to x.shape[1:] = ", example, ", got shape ", mask->sizes());
    TORCH_CHECK_VALUE(mask->device().is_cpu(), op, " (cpu): mask must be on the CPU, got ", mask->device());
    a.keep = mask->expand(example).ne(0).contiguous();
  }
  a.x = rows(x);
  a.t = rows(shift);
  a.l = log_scale.has_value() ? rows(*log_scale) : a.t;
  return a;
}

template <typename T>
CouplingChunk<T> coupling_chunk(const CouplingArgs& a, const MaskPlan<T>& plan, int64_t b, int64_t c0) {
  return {a.x.t.data_ptr<T>() + b * a.x.stride + c0, a.t.t.data_ptr<T>() + b * a.t.stride + c0,
          a.l.t.data_ptr<T>() + b * a.l.stride + c0, plan.second.data() + c0 / 2, c0};
}

// Sums each example's chunk partials in chunk order (deterministic whatever the threads).
template <typename T>
void sum_chunks(const std::vector<T>& partial, int64_t n_chunks, T constant, T* logdet, int64_t B) {
  for (int64_t b = 0; b < B; ++b) {
    T sum = 0;
    for (int64_t c = 0; c < n_chunks; ++c) sum += partial[b * n_chunks + c];
    logdet[b] = sum + constant;
  }
}

template <typename T>
void affine_coupling_kernel(const CouplingArgs& a, bool inverse, T* y, T* logdet) {
  const MaskPlan<T> plan = plan_mask<T>(a.keep, a.D);
  const int64_t n_chunks = plan.chunks();
  std::vector<T> partial(a.B * n_chunks);
  dispatch_coupling<T>(a.scale, inverse, [&]<class C>() {
    at::parallel_for(0, a.B * n_chunks, task_grain(std::min(a.D, CHUNK)), [&](int64_t begin, int64_t end) {
      with_isa([&]() FASTGEN_INLINE_LAMBDA {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / n_chunks, c = task % n_chunks, c0 = c * CHUNK;
          partial[task] = coupling_forward_chunk<C>(plan.segments.data() + plan.first[c],
                                                    plan.segments.data() + plan.first[c + 1],
                                                    coupling_chunk(a, plan, b, c0), y + b * a.D + c0);
        }
      });
    });
  });
  sum_chunks<T>(partial, n_chunks, T(0), logdet, a.B);
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_cpu(const at::Tensor& x, const at::Tensor& shift,
                                                       const c10::optional<at::Tensor>& log_scale,
                                                       const c10::optional<at::Tensor>& mask, c10::string_view scale,
                                                       bool inverse) {
  const CouplingArgs a = coupling_args("affine_coupling", x, shift, log_scale, mask, scale);
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor logdet = at::empty({a.B}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling", [&] {
    affine_coupling_kernel<scalar_t>(a, inverse, y.data_ptr<scalar_t>(), logdet.data_ptr<scalar_t>());
  });
  return {y, logdet};
}

// gx, gt, gl: null for a gradient not requested, which goes to a per-thread scratch chunk
// instead (one per output: they must not alias), in cache.
template <typename T>
void affine_coupling_backward_kernel(const CouplingArgs& a, bool inverse, const Rows& gy, const T* gld, T* gx, T* gt,
                                     T* gl) {
  const MaskPlan<T> plan = plan_mask<T>(a.keep, a.D);
  const int64_t n_chunks = plan.chunks(), width = std::min(a.D, CHUNK);
  const T* gyp = gy.t.data_ptr<T>();
  dispatch_coupling<T>(a.scale, inverse, [&]<class C>() {
    at::parallel_for(0, a.B * n_chunks, task_grain(width), [&](int64_t begin, int64_t end) {
      std::vector<T> scratch((gx && gt && gl) ? 0 : 3 * width);
      const auto dest = [&](T* p, int64_t offset, int64_t slot) { return p ? p + offset : scratch.data() + slot * width; };
      with_isa([&]() FASTGEN_INLINE_LAMBDA {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / n_chunks, c = task % n_chunks, c0 = c * CHUNK, o = b * a.D + c0;
          coupling_backward_chunk<C>(plan.segments.data() + plan.first[c], plan.segments.data() + plan.first[c + 1],
                                     coupling_chunk(a, plan, b, c0), gyp + b * gy.stride + c0, gld[b],
                                     dest(gx, o, 0), dest(gt, o, 1), dest(gl, o, 2));
        }
      });
    });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_coupling_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x, const at::Tensor& shift,
    const c10::optional<at::Tensor>& log_scale, const c10::optional<at::Tensor>& mask, c10::string_view scale,
    bool inverse, std::array<bool, 3> output_mask) {
  const char* op = "affine_coupling_backward";
  const CouplingArgs a = coupling_args(op, x, shift, log_scale, mask, scale);
  check_like(op, "grad_y", grad_y, x.sizes(), x);
  check_like(op, "grad_logdet", grad_logdet, {a.B}, x);
  const auto opt = x.options();
  // Distinct empty tensors for the gradients not requested: outputs must not alias.
  const auto none = [&] { return at::empty({0}, opt); };
  const bool need_l = output_mask[2] && log_scale.has_value();
  at::Tensor gx = output_mask[0] ? at::empty(x.sizes(), opt) : none();
  at::Tensor gt = output_mask[1] ? at::empty(x.sizes(), opt) : none();
  at::Tensor gl = need_l ? at::empty(x.sizes(), opt) : none();
  if (!output_mask[0] && !output_mask[1] && !need_l) return {gx, gt, gl};
  const at::Tensor gld = grad_logdet.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling_backward", [&] {
    const auto out = [](const at::Tensor& g) { return g.numel() > 0 ? g.data_ptr<scalar_t>() : nullptr; };
    affine_coupling_backward_kernel<scalar_t>(a, inverse, rows(grad_y), gld.data_ptr<scalar_t>(), out(gx), out(gt),
                                              out(gl));
  });
  return {gx, gt, gl};
}

// ----------------------------------------------------------------------------------- ActNorm
// x viewed as (B, C, N), N = H * W (1 for vectors). Forward y = (x + loc) * exp(l), inverse
// y = x * exp(-l) - loc; logdet = +-N sum(l) for every example.

struct ActNormArgs {
  Rows x;
  int64_t B, C, N;
};

ActNormArgs actnorm_args(const char* op, const at::Tensor& x, const at::Tensor& loc, const at::Tensor& log_scale) {
  check_input(op, "x", x);
  const int64_t C = x.size(1);
  check_like(op, "loc", loc, {C}, x);
  check_like(op, "log_scale", log_scale, {C}, x);
  return {rows(x), x.size(0), C, c10::multiply_integers(x.sizes().slice(2))};
}

// Per channel: the multiplier s (exp(l) forward, exp(-l) inverse) and loc; and sum(l).
template <typename T>
struct ChannelAffine {
  std::vector<T> s, loc;
  T sum_log_scale = 0;
  ChannelAffine(const at::Tensor& loc_t, const at::Tensor& log_scale, bool inverse) {
    const at::Tensor lc = loc_t.contiguous(), ls = log_scale.contiguous();
    const T* lp = lc.data_ptr<T>();
    const T* sp = ls.data_ptr<T>();
    for (int64_t c = 0; c < lc.numel(); ++c) {
      s.push_back(std::exp(inverse ? -sp[c] : sp[c]));
      loc.push_back(lp[c]);
      sum_log_scale += sp[c];
    }
  }
};

template <typename T>
void actnorm_kernel(const ActNormArgs& a, const ChannelAffine<T>& ch, bool inverse, T* y) {
  const T* xp = a.x.t.data_ptr<T>();
  const int64_t C = a.C, N = a.N;
  // Tasks are (example, channel) planes of N, or whole examples when N = 1 (vectors).
  const int64_t per_row = N == 1 ? 1 : C;
  dispatch_inverse(inverse, [&]<bool INVERSE>() {
    at::parallel_for(0, a.B * per_row, task_grain(N == 1 ? C : N), [&](int64_t begin, int64_t end) {
      with_isa([&]() FASTGEN_INLINE_LAMBDA {
        const T* __restrict s = ch.s.data();
        const T* __restrict m = ch.loc.data();
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / per_row, c = task % per_row;
          const T* __restrict xr = xp + b * a.x.stride + c * N;
          T* __restrict yr = y + (b * C + c) * N;
          if (N == 1) {
#pragma omp simd
            for (int64_t i = 0; i < C; ++i) yr[i] = INVERSE ? xr[i] * s[i] - m[i] : (xr[i] + m[i]) * s[i];
          } else {
            const T sc = s[c], mc = m[c];
#pragma omp simd
            for (int64_t i = 0; i < N; ++i) yr[i] = INVERSE ? xr[i] * sc - mc : (xr[i] + mc) * sc;
          }
        }
      });
    });
  });
}

std::tuple<at::Tensor, at::Tensor> actnorm_cpu(const at::Tensor& x, const at::Tensor& loc, const at::Tensor& log_scale,
                                               bool inverse) {
  const ActNormArgs a = actnorm_args("actnorm", x, loc, log_scale);
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor logdet = at::empty({a.B}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "actnorm", [&] {
    const ChannelAffine<scalar_t> ch(loc, log_scale, inverse);
    actnorm_kernel<scalar_t>(a, ch, inverse, y.data_ptr<scalar_t>());
    // The same for every example: +-N sum(l).
    std::fill_n(logdet.data_ptr<scalar_t>(), a.B, scalar_t(inverse ? -a.N : a.N) * ch.sum_log_scale);
  });
  return {y, logdet};
}

// Examples per block of the per-channel partial sums: at least ROWS_ELEMENTS elements of a
// channel per block, so that a task amortizes its scheduling.
constexpr int64_t ROWS_ELEMENTS = 1 << 12;

// Writes gx (null: not requested, to scratch) and, per (block of examples, channel), the
// sums of g and of g * (x + loc) (forward) or g * x (inverse) into partial (n_blocks, 2, C).
template <typename T>
void actnorm_backward_kernel(const ActNormArgs& a, const ChannelAffine<T>& ch, bool inverse, const Rows& gy, T* gx,
                             int64_t block, T* partial) {
  const T* xp = a.x.t.data_ptr<T>();
  const T* gp = gy.t.data_ptr<T>();
  const int64_t B = a.B, C = a.C, N = a.N, n_blocks = (B + block - 1) / block;
  // Tasks: (block, channel) planes, or whole blocks of examples when N = 1.
  const int64_t per_block = N == 1 ? 1 : C;
  dispatch_inverse(inverse, [&]<bool INVERSE>() {
    at::parallel_for(0, n_blocks * per_block, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(gx ? 0 : (N == 1 ? C : N));
      with_isa([&]() FASTGEN_INLINE_LAMBDA {
        const T* __restrict s = ch.s.data();
        const T* __restrict m = ch.loc.data();
        for (int64_t task = begin; task < end; ++task) {
          const int64_t blk = task / per_block, c = task % per_block;
          T* __restrict sum_g = partial + blk * 2 * C;
          T* __restrict sum_gx = sum_g + C;
          for (int64_t b = blk * block; b < std::min(B, (blk + 1) * block); ++b) {
            const T* __restrict xr = xp + b * a.x.stride + c * N;
            const T* __restrict gr = gp + b * gy.stride + c * N;
            T* __restrict out = gx ? gx + (b * C + c) * N : scratch.data();
            if (N == 1) {
#pragma omp simd
              for (int64_t i = 0; i < C; ++i) {
                const T g = gr[i];
                out[i] = g * s[i];
                sum_g[i] += g;
                sum_gx[i] += g * (INVERSE ? xr[i] : xr[i] + m[i]);
              }
            } else {
              const T sc = s[c], mc = m[c];
              T acc_g = 0, acc_gx = 0;
#pragma omp simd reduction(+ : acc_g, acc_gx)
              for (int64_t i = 0; i < N; ++i) {
                const T g = gr[i];
                out[i] = g * sc;
                acc_g += g;
                acc_gx += g * (INVERSE ? xr[i] : xr[i] + mc);
              }
              sum_g[c] += acc_g;
              sum_gx[c] += acc_gx;
            }
          }
        }
      });
    });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_backward_cpu(const at::Tensor& grad_y,
                                                                    const at::Tensor& grad_logdet, const at::Tensor& x,
                                                                    const at::Tensor& loc, const at::Tensor& log_scale,
                                                                    bool inverse, std::array<bool, 3> output_mask) {
  const char* op = "actnorm_backward";
  const ActNormArgs a = actnorm_args(op, x, loc, log_scale);
  check_like(op, "grad_y", grad_y, x.sizes(), x);
  check_like(op, "grad_logdet", grad_logdet, {a.B}, x);
  const auto opt = x.options();
  const auto none = [&] { return at::empty({0}, opt); };
  at::Tensor gx = output_mask[0] ? at::empty(x.sizes(), opt) : none();
  at::Tensor g_loc = output_mask[1] ? at::empty({a.C}, opt) : none();
  at::Tensor g_ls = output_mask[2] ? at::empty({a.C}, opt) : none();
  if (!output_mask[0] && !output_mask[1] && !output_mask[2]) return {gx, g_loc, g_ls};
  const int64_t C = a.C, block = std::max<int64_t>(1, ROWS_ELEMENTS / std::max<int64_t>(a.N, 1));
  const int64_t n_blocks = (a.B + block - 1) / block;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "actnorm_backward", [&] {
    using T = scalar_t;
    const ChannelAffine<T> ch(loc, log_scale, inverse);
    std::vector<T> partial(n_blocks * 2 * C, T(0));
    actnorm_backward_kernel<T>(a, ch, inverse, rows(grad_y), output_mask[0] ? gx.data_ptr<T>() : nullptr, block,
                               partial.data());
    const at::Tensor gld = grad_logdet.contiguous();
    T n_gld = 0;  // N sum(gld)
    for (int64_t b = 0; b < a.B; ++b) n_gld += gld.data_ptr<T>()[b];
    n_gld *= T(a.N);
    for (int64_t c = 0; c < C; ++c) {
      T sum_g = 0, sum_gx = 0;  // blocks added in order
      for (int64_t blk = 0; blk < n_blocks; ++blk) {
        sum_g += partial[blk * 2 * C + c];
        sum_gx += partial[blk * 2 * C + C + c];
      }
      // forward: d loc = s sum(g), d l = s sum(g (x + loc)) + N sum(gld)      (s = exp(l))
      // inverse: d loc = -sum(g),  d l = -s sum(g x) - N sum(gld)             (s = exp(-l))
      const T s = ch.s[c];
      if (output_mask[1]) g_loc.data_ptr<T>()[c] = inverse ? -sum_g : s * sum_g;
      if (output_mask[2]) g_ls.data_ptr<T>()[c] = inverse ? -(s * sum_gx) - n_gld : s * sum_gx + n_gld;
    }
  });
  return {gx, g_loc, g_ls};
}

// ----------------------------------------------------------------------------- logit transform
// Forward: p = a + (1 - 2a) x, q = a + (1 - 2a)(1 - x) (= 1 - p without its cancellation),
// y = log p - log q, logdet = sum(log(1 - 2a) - log p - log q). Inverse: sigma = sigmoid(x),
// y = (sigma - a) / (1 - 2a), logdet = sum(log sigma + log(1 - sigma) - log(1 - 2a)).

// One element, a = alpha, c = 1 - 2 alpha (outputs through pointers, as Coupling's).
template <typename T, bool INVERSE>
struct Logit {
  // y into *y; returns the element's log-derivative without its constant +-log(1 - 2a).
  static FASTGEN_INLINE T forward(T x, T a, T c, T* y) {
    if constexpr (INVERSE) {
      const Sigmoid<T> p = sigmoid_parts(x);
      *y = (p.s - a) / c;
      return -vabs(x) - T(2) * p.log1p_e;  // log sigma + log(1 - sigma)
    } else {
      const T log_p = vlog(a + c * x), log_q = vlog(a + c * (T(1) - x));
      *y = log_p - log_q;
      return -(log_p + log_q);
    }
  }

  // forward: gx = c / (p q) * (gy - gld (q - p))
  // inverse: gx = gy sigma (1 - sigma) / c + gld (1 - 2 sigma)
  static FASTGEN_INLINE T grad(T gy, T gld, T x, T a, T c) {
    if constexpr (INVERSE) {
      const Sigmoid<T> p = sigmoid_parts(x);
      return gy * (p.s * p.s_neg) / c + gld * (p.s_neg - p.s);
    } else {
      const T p = a + c * x, q = a + c * (T(1) - x);
      return c / (p * q) * (gy - gld * (q - p));
    }
  }
};

void check_alpha(const char* op, double alpha) {
  TORCH_CHECK_VALUE(alpha >= 0 && alpha < 0.5, op, ": alpha must be in [0, 0.5), got ", alpha);
}

template <typename T>
void logit_transform_kernel(const Rows& x, int64_t B, int64_t D, double alpha, bool inverse, T* y, T* logdet) {
  const int64_t n_chunks = (D + CHUNK - 1) / CHUNK;
  std::vector<T> partial(B * n_chunks);
  const T* xp = x.t.data_ptr<T>();
  dispatch_inverse(inverse, [&]<bool INVERSE>() {
    at::parallel_for(0, B * n_chunks, task_grain(std::min(D, CHUNK)), [&](int64_t begin, int64_t end) {
      with_isa([&]() FASTGEN_INLINE_LAMBDA {
        // Locals, not captures: loads through the closure would stay in the loop.
        const T a = T(alpha), c = T(1 - 2 * alpha);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / n_chunks, c0 = (task % n_chunks) * CHUNK, n = std::min(CHUNK, D - c0);
          const T* __restrict in = xp + b * x.stride + c0;
          T* __restrict out = y + b * D + c0;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t i = 0; i < n; ++i) acc += Logit<T, INVERSE>::forward(in[i], a, c, out + i);
          partial[task] = acc;
        }
      });
    });
  });
  // Every element's constant log(1 - 2a), once per example.
  sum_chunks<T>(partial, n_chunks, T(double(D) * std::log1p(-2 * alpha) * (inverse ? -1 : 1)), logdet, B);
}

std::tuple<at::Tensor, at::Tensor> logit_transform_cpu(const at::Tensor& x, double alpha, bool inverse) {
  const char* op = "logit_transform";
  check_input(op, "x", x);
  check_alpha(op, alpha);
  const int64_t B = x.size(0), D = c10::multiply_integers(x.sizes().slice(1));
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor logdet = at::empty({B}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "logit_transform", [&] {
    logit_transform_kernel<scalar_t>(rows(x), B, D, alpha, inverse, y.data_ptr<scalar_t>(),
                                     logdet.data_ptr<scalar_t>());
  });
  return {y, logdet};
}

template <typename T>
void logit_transform_backward_kernel(const Rows& x, const Rows& gy, const T* gld, int64_t B, int64_t D, double alpha,
                                     bool inverse, T* gx) {
  const int64_t n_chunks = (D + CHUNK - 1) / CHUNK;
  const T* xp = x.t.data_ptr<T>();
  const T* gp = gy.t.data_ptr<T>();
  dispatch_inverse(inverse, [&]<bool INVERSE>() {
    at::parallel_for(0, B * n_chunks, task_grain(std::min(D, CHUNK)), [&](int64_t begin, int64_t end) {
      with_isa([&]() FASTGEN_INLINE_LAMBDA {
        const T a = T(alpha), c = T(1 - 2 * alpha);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / n_chunks, c0 = (task % n_chunks) * CHUNK, n = std::min(CHUNK, D - c0);
          const T* __restrict in = xp + b * x.stride + c0;
          const T* __restrict g = gp + b * gy.stride + c0;
          T* __restrict out = gx + b * D + c0;
          const T gl = gld[b];
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) out[i] = Logit<T, INVERSE>::grad(g[i], gl, in[i], a, c);
        }
      });
    });
  });
}

at::Tensor logit_transform_backward_cpu(const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x,
                                        double alpha, bool inverse) {
  const char* op = "logit_transform_backward";
  check_input(op, "x", x);
  check_alpha(op, alpha);
  const int64_t B = x.size(0), D = c10::multiply_integers(x.sizes().slice(1));
  check_like(op, "grad_y", grad_y, x.sizes(), x);
  check_like(op, "grad_logdet", grad_logdet, {B}, x);
  const at::Tensor gld = grad_logdet.contiguous();
  at::Tensor gx = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "logit_transform_backward", [&] {
    logit_transform_backward_kernel<scalar_t>(rows(x), rows(grad_y), gld.data_ptr<scalar_t>(), B, D, alpha, inverse,
                                              gx.data_ptr<scalar_t>());
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("affine_coupling", &affine_coupling_cpu);
  m.impl("affine_coupling_backward", &affine_coupling_backward_cpu);
  m.impl("actnorm", &actnorm_cpu);
  m.impl("actnorm_backward", &actnorm_backward_cpu);
  m.impl("logit_transform", &logit_transform_cpu);
  m.impl("logit_transform_backward", &logit_transform_backward_cpu);
}

}  // namespace fastgen::cpu
