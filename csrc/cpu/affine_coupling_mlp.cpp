// CPU kernels of fastgen::affine_coupling_mlp and its backward (fastgen/ops/affine_coupling_mlp.py):
// a vector affine coupling whose shift and log-scale come from an MLP of the passed half, as
// one op with one autograd node (AffineCouplingMLPFunction, at the end).
//
// Why one op: at a vector flow's sizes (RealNVP on 64 dimensions, batch 256, networks of 256
// units) the GEMMs take about 1 ms per coupling forward and backward, and the eager composition
// around them (five modules, a split, tanh, the affine op, a concatenation, and an autograd node
// for each) as much again. Here the GEMMs are ATen's (MKL), the rest is two element-wise passes:
//   forward:  y_pass = x_pass; y_rest = x_rest e^{l} + t (inverse: (x_rest - t) e^{-l}),
//             l = a tanh(r), (t, r) the MLP's output, logdet = +-sum l, in one pass over rows;
//   backward: the gradients of (t, r), x_rest and a, and the last bias's gradient, in one pass;
//             then per hidden layer the ReLU's gate and its bias's gradient in one pass.
// Column sums (bias and a gradients) are accumulated per block of ROWS rows, a fixed partition,
// and the blocks added in order: the results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "vec_math.h"

namespace fastgen::cpu {
namespace {

constexpr const char* OP = "affine_coupling_mlp";
// Rows per task of the element-wise passes (the fixed partition of the column sums).
constexpr int64_t ROWS = 32;
// Elements per parallel_for grain: below this, threads cost more than they save.
constexpr int64_t GRAIN = 1 << 15;
// Rows per block of the forward's GEMMs (see affine_coupling_mlp_cpu).
constexpr int64_t GEMM_ROWS = 2048;

// Which columns of x (B, D) pass and which are transformed.
struct Halves {
  int64_t B, D, pass0, n_pass, rest0, n_rest;
};

Halves halves(const at::Tensor& x, int64_t parity) {
  const int64_t B = x.size(0), D = x.size(1), half = D / 2;
  return parity == 0 ? Halves{B, D, 0, half, half, D - half} : Halves{B, D, half, D - half, 0, half};
}

void check_args(const at::Tensor& x, at::TensorList weights, const at::Tensor& log_scale_bound, int64_t parity) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) >= 2, OP, ": x must be (B, D) with D >= 2, got shape ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, OP,
                   " (cpu): x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(parity == 0 || parity == 1, OP, ": parity must be 0 or 1, got ", parity);
  const Halves s = halves(x, parity);
  TORCH_CHECK_VALUE(!weights.empty(), OP, ": weights must hold at least one layer");
  int64_t width = s.n_pass;
  for (const at::Tensor& w : weights) {
    TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == width, OP, ": a layer's weight must be (out, ", width,
                      "), got shape ", w.sizes());
    TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), OP, ": weights must have x's dtype ", x.scalar_type());
    width = w.size(0);
  }
  TORCH_CHECK_VALUE(width == 2 * s.n_rest, OP, ": the last layer must have 2 * ", s.n_rest, " outputs, got ", width);
  TORCH_CHECK_VALUE(log_scale_bound.dim() == 1 && log_scale_bound.size(0) == s.n_rest, OP,
                    ": log_scale_bound must be (", s.n_rest, "), got shape ", log_scale_bound.sizes());
  TORCH_CHECK_TYPE(log_scale_bound.scalar_type() == x.scalar_type(), OP, ": log_scale_bound must have x's dtype ",
                   x.scalar_type());
}

// One (out_l) or (B, out_l) tensor per layer, of x's dtype: the biases, or the saved activations.
void check_per_layer(const char* name, at::TensorList tensors, at::TensorList weights, const at::Tensor& x,
                     bool batched) {
  TORCH_CHECK_VALUE(tensors.size() == weights.size(), OP, ": ", name, " must hold one per layer (", weights.size(),
                    "), got ", tensors.size());
  for (size_t l = 0; l < weights.size(); ++l) {
    const at::Tensor& t = tensors[l];
    const bool shape_ok = batched ? t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == weights[l].size(0)
                                  : t.dim() == 1 && t.size(0) == weights[l].size(0);
    TORCH_CHECK_VALUE(shape_ok, OP, ": ", name, "[", l, "] must be ", batched ? "(B, " : "(", weights[l].size(0),
                      "), got shape ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), OP, ": ", name, " must have x's dtype ", x.scalar_type());
  }
}

// tanh(r) = (1 - e) / (1 + e), e = exp(-2|r|) in (0, 1]: never overflows; near 0 the
// cancellation costs an absolute error of about one ulp of 1.
template <typename T>
FASTGEN_INLINE T vtanh(T r) {
  const T e = vexp(-2 * vabs(r));
  const T t = (1 - e) / (1 + e);
  return select(r < 0, -t, t);
}

// One transformed element: writes y, returns its log-scale l = a tanh(r).
template <bool INVERSE, typename T>
FASTGEN_INLINE T rest_forward(T x, T t, T r, T a, T* y) {
  const T l = a * vtanh(r);
  *y = INVERSE ? (x - t) * vexp(-l) : x * vexp(l) + t;
  return l;
}

// Its backward: the gradients of x, t and r, and returns the one of a. gld is the logdet's
// gradient (the logdet holds +l, or -l for the inverse).
template <bool INVERSE, typename T>
FASTGEN_INLINE T rest_backward(T gy, T gld, T x, T t, T r, T a, T* gx, T* gt, T* gr) {
  const T th = vtanh(r), l = a * th;
  T gl;
  if constexpr (INVERSE) {
    const T m = vexp(-l);
    *gx = gy * m;
    *gt = -gy * m;
    gl = -(gy * (x - t) * m) - gld;
  } else {
    const T m = vexp(l);
    *gx = gy * m;
    *gt = gy;
    gl = gy * x * m + gld;
  }
  *gr = gl * a * (1 - th * th);
  return gl * th;
}

template <class F>
void dispatch_inverse(bool inverse, const F& f) {
  return inverse ? f.template operator()<true>() : f.template operator()<false>();
}

// Runs body(task, partial) over blocks of ROWS rows in parallel, partial a zeroed row of
// `columns` sums per task; returns the column sums, added in task order.
template <typename T, class Body>
std::vector<T> row_blocks(int64_t B, int64_t columns, int64_t row_cost, const Body& body) {
  const int64_t tasks = (B + ROWS - 1) / ROWS;
  std::vector<T> partial(tasks * columns, T(0));
  at::parallel_for(0, tasks, std::max<int64_t>(1, GRAIN / std::max<int64_t>(ROWS * row_cost, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t task = begin; task < end; ++task) body(task, partial.data() + task * columns);
                   });
  std::vector<T> sums(columns, T(0));
  for (int64_t task = 0; task < tasks; ++task)
    for (int64_t c = 0; c < columns; ++c) sums[c] += partial[task * columns + c];
  return sums;
}

// A copy of n sums as a tensor of like's dtype.
at::Tensor to_tensor(const at::Tensor& like, const void* data, int64_t n) {
  at::Tensor t = at::empty({n}, like.options());
  std::memcpy(t.data_ptr(), data, n * t.element_size());
  return t;
}

// ----------------------------------------------------------------------------------- forward

// y and logdet from x and the network's output (shift | raw log-scale) (B, 2 n_rest).
template <typename T, bool INVERSE>
void forward_rows(const Halves& s, const T* xp, int64_t xs, const T* outp, const T* ap, T* yp, T* ldp) {
  const int64_t n = s.n_rest;
  at::parallel_for(0, s.B, std::max<int64_t>(1, GRAIN / s.D), [&](int64_t begin, int64_t end) {
    with_isa([&]() FASTGEN_INLINE_LAMBDA {
      for (int64_t i = begin; i < end; ++i) {
        const T* __restrict xr = xp + i * xs + s.rest0;
        const T* __restrict t = outp + i * 2 * n;
        const T* __restrict r = t + n;
        const T* __restrict a = ap;
        T* __restrict yr = yp + i * s.D + s.rest0;
        std::memcpy(yp + i * s.D + s.pass0, xp + i * xs + s.pass0, sizeof(T) * s.n_pass);
        T acc = T(0);
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < n; ++j) acc += rest_forward<INVERSE>(xr[j], t[j], r[j], a[j], yr + j);
        ldp[i] = INVERSE ? -acc : acc;
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> affine_coupling_mlp_cpu(
    const at::Tensor& x_in, at::TensorList weights, at::TensorList biases, const at::Tensor& log_scale_bound,
    int64_t parity, bool inverse) {
  check_args(x_in, weights, log_scale_bound, parity);
  check_per_layer("biases", biases, weights, x_in, false);
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const Halves s = halves(x, parity);
  // The network: ATen's GEMMs, the ReLUs in place. activations[l] is layer l's output
  // (after its ReLU); the last is (shift | raw log-scale) (B, 2 n_rest). In blocks of
  // GEMM_ROWS rows: MKL runs (10000, 256) x (256, 256) slower than in blocks of 1000-4000 rows,
  // and a block's activations stay in the cache for the next layer and the element-wise pass
  // (RealNVP's sampling of 10000 vectors: 111-113 ms in blocks of 1024-4096 rows, 121 in 512,
  // 129 in one, on 2 Zen 3 cores).
  std::vector<at::Tensor> activations;
  for (const at::Tensor& w : weights) activations.push_back(at::empty({s.B, w.size(0)}, x.options()));
  at::Tensor y = at::empty({s.B, s.D}, x.options()), logdet = at::empty({s.B}, x.options());
  const at::Tensor a = log_scale_bound.contiguous();
  for (int64_t row0 = 0; row0 < s.B; row0 += GEMM_ROWS) {
    const int64_t rows = std::min(GEMM_ROWS, s.B - row0);
    at::Tensor h = x.narrow(0, row0, rows).narrow(1, s.pass0, s.n_pass);
    for (size_t l = 0; l < weights.size(); ++l) {
      at::Tensor out = activations[l].narrow(0, row0, rows);
      at::addmm_out(out, biases[l], h, weights[l].t());
      if (l + 1 < weights.size()) out.clamp_min_(0);
      h = out;
    }
    Halves block = s;
    block.B = rows;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), OP, [&] {
      using T = scalar_t;
      dispatch_inverse(inverse, [&]<bool INVERSE>() {
        forward_rows<T, INVERSE>(block, x.data_ptr<T>() + row0 * x.stride(0), x.stride(0), h.data_ptr<T>(),
                                 a.data_ptr<T>(), y.data_ptr<T>() + row0 * s.D, logdet.data_ptr<T>() + row0);
      });
    });
  }
  return {y, logdet, activations};
}

// ---------------------------------------------------------------------------------- backward

// From the gradients of (y, logdet): those of the network's output (shift | raw log-scale)
// into go (B, 2 n_rest), of x into gx (null: not wanted; its passed half gets grad_y's, the
// network's part is added later); returns the column sums: the last bias's gradient (2 n_rest),
// then log_scale_bound's (n_rest).
template <typename T, bool INVERSE>
std::vector<T> backward_rows(const Halves& s, const T* xp, int64_t xs, const T* outp, const T* ap, const T* gyp,
                             const T* gldp, T* gop, T* gxp) {
  const int64_t n = s.n_rest;
  return row_blocks<T>(s.B, 3 * n, s.D, [&](int64_t task, T* partial) {
    std::vector<T> scratch(gxp ? 0 : n);
    with_isa([&]() FASTGEN_INLINE_LAMBDA {
      for (int64_t i = task * ROWS; i < std::min(s.B, (task + 1) * ROWS); ++i) {
        const T* __restrict xr = xp + i * xs + s.rest0;
        const T* __restrict t = outp + i * 2 * n;
        const T* __restrict r = t + n;
        const T* __restrict a = ap;
        const T* __restrict g = gyp + i * s.D + s.rest0;
        T* __restrict gt = gop + i * 2 * n;
        T* __restrict gr = gt + n;
        T* __restrict gx = gxp ? gxp + i * s.D + s.rest0 : scratch.data();
        T* __restrict gb = partial;
        T* __restrict ga = partial + 2 * n;
        const T gl = gldp[i];
        if (gxp) std::memcpy(gxp + i * s.D + s.pass0, gyp + i * s.D + s.pass0, sizeof(T) * s.n_pass);
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          ga[j] += rest_backward<INVERSE>(g[j], gl, xr[j], t[j], r[j], a[j], gx + j, gt + j, gr + j);
          gb[j] += gt[j];
          gb[n + j] += gr[j];
        }
      }
    });
  });
}

// A hidden layer's ReLU backward in place on g (B, width), where its output h was positive;
// returns the column sums of the result (the layer's bias gradient).
template <typename T>
std::vector<T> relu_backward_rows(int64_t B, int64_t width, T* gp, const T* hp) {
  return row_blocks<T>(B, width, width, [&](int64_t task, T* partial) {
    with_isa([&]() FASTGEN_INLINE_LAMBDA {
      for (int64_t i = task * ROWS; i < std::min(B, (task + 1) * ROWS); ++i) {
        T* __restrict g = gp + i * width;
        const T* __restrict h = hp + i * width;
        T* __restrict gb = partial;
#pragma omp simd
        for (int64_t k = 0; k < width; ++k) {
          g[k] = select(h[k] > T(0), g[k], T(0));
          gb[k] += g[k];
        }
      }
    });
  });
}

// Returns [grad_x, grad_log_scale_bound, grad_weights..., grad_biases...]; an entry whose
// output_mask is False is an empty tensor (output_mask: x, log_scale_bound, weights, biases).
std::vector<at::Tensor> affine_coupling_mlp_backward_cpu(const at::Tensor& grad_y, const at::Tensor& grad_logdet,
                                                         const at::Tensor& x_in, at::TensorList weights,
                                                         const at::Tensor& log_scale_bound,
                                                         at::TensorList activations, int64_t parity, bool inverse,
                                                         std::array<bool, 4> output_mask) {
  check_args(x_in, weights, log_scale_bound, parity);
  check_per_layer("activations", activations, weights, x_in, true);
  const size_t L = weights.size();
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const Halves s = halves(x, parity);
  const int64_t n = s.n_rest;
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes() && grad_logdet.sizes() == at::IntArrayRef{s.B}, OP,
                    "_backward: grad_y must be ", x.sizes(), " and grad_logdet (", s.B, ")");
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type() && grad_logdet.scalar_type() == x.scalar_type(), OP,
                   "_backward: grad_y and grad_logdet must have x's dtype ", x.scalar_type());
  const bool need_x = output_mask[0], need_a = output_mask[1], need_w = output_mask[2], need_b = output_mask[3];
  const at::Tensor gy = grad_y.contiguous(), gld = grad_logdet.contiguous(), a = log_scale_bound.contiguous();
  const at::Tensor out = activations[L - 1].contiguous();
  at::Tensor grad_x = need_x ? at::empty({s.B, s.D}, x.options()) : x.new_empty(0);
  at::Tensor grad_a = x.new_empty(0);
  std::vector<at::Tensor> grad_w(L), grad_b(L);  // each its own empty tensor when not wanted: outputs never alias
  for (size_t l = 0; l < L; ++l) grad_w[l] = x.new_empty(0), grad_b[l] = x.new_empty(0);
  // The gradient of the layers' outputs, from the last one's (shift | raw log-scale) down.
  at::Tensor g = at::empty({s.B, 2 * n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), OP, [&] {
    using T = scalar_t;
    std::vector<T> sums;
    dispatch_inverse(inverse, [&]<bool INVERSE>() {
      sums = backward_rows<T, INVERSE>(s, x.data_ptr<T>(), x.stride(0), out.data_ptr<T>(), a.data_ptr<T>(),
                                       gy.data_ptr<T>(), gld.data_ptr<T>(), g.data_ptr<T>(),
                                       need_x ? grad_x.data_ptr<T>() : nullptr);
    });
    if (need_b) grad_b[L - 1] = to_tensor(x, sums.data(), 2 * n);
    if (need_a) grad_a = to_tensor(x, sums.data() + 2 * n, n);
    for (size_t l = L; l-- > 0;) {
      const at::Tensor input = l > 0 ? activations[l - 1].contiguous() : x.narrow(1, s.pass0, s.n_pass);
      if (need_w) grad_w[l] = at::mm(g.t(), input);
      if (l == 0) {
        if (need_x) grad_x.narrow(1, s.pass0, s.n_pass).add_(at::mm(g, weights[0]));
        break;
      }
      g = at::mm(g, weights[l]);
      const std::vector<T> bias_sums = relu_backward_rows<T>(s.B, g.size(1), g.data_ptr<T>(), input.data_ptr<T>());
      if (need_b) grad_b[l - 1] = to_tensor(x, bias_sums.data(), g.size(1));
    }
  });
  std::vector<at::Tensor> grads{grad_x, grad_a};
  grads.insert(grads.end(), grad_w.begin(), grad_w.end());
  grads.insert(grads.end(), grad_b.begin(), grad_b.end());
  return grads;
}

// ---------------------------------------------------------------------------------- autograd

// Autograd of the forward op, in C++: a Python autograd function costs about 0.1 ms a call,
// a tenth of a vector flow's coupling. The backward op goes through the dispatcher, so its
// own autograd (registered from Python: no double backward) still applies.
class AffineCouplingMLPFunction : public torch::autograd::Function<AffineCouplingMLPFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                at::TensorList weights, at::TensorList biases,
                                                const at::Tensor& log_scale_bound, int64_t parity, bool inverse) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fastgen::affine_coupling_mlp", "")
            .typed<std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>>(
                const at::Tensor&, at::TensorList, at::TensorList, const at::Tensor&, int64_t, bool)>();
    auto [y, logdet, activations] = op.call(x, weights, biases, log_scale_bound, parity, inverse);
    std::vector<at::Tensor> saved{x, log_scale_bound};
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.insert(saved.end(), activations.begin(), activations.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["layers"] = static_cast<int64_t>(weights.size());
    ctx->saved_data["parity"] = parity;
    ctx->saved_data["inverse"] = inverse;
    ctx->mark_non_differentiable(activations);
    // Else autograd fills a zero gradient for each activation (never read) on every backward.
    ctx->set_materialize_grads(false);
    torch::autograd::variable_list outputs{y, logdet};
    outputs.insert(outputs.end(), activations.begin(), activations.end());
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastgen::affine_coupling_mlp_backward", "")
                               .typed<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, at::TensorList, const at::Tensor&,
                                                              at::TensorList, int64_t, bool, std::array<bool, 4>)>();
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const int64_t L = ctx->saved_data["layers"].toInt();
    // Edges: x, the weights, the biases, log_scale_bound (then parity and inverse).
    bool need_w = false, need_b = false;
    for (int64_t l = 0; l < L; ++l) {
      need_w = need_w || ctx->needs_input_grad(1 + l);
      need_b = need_b || ctx->needs_input_grad(1 + L + l);
    }
    const std::array<bool, 4> need{ctx->needs_input_grad(0), ctx->needs_input_grad(1 + 2 * L), need_w, need_b};
    const at::Tensor none;
    torch::autograd::variable_list result(2 * L + 4);
    if (!need[0] && !need[1] && !need[2] && !need[3]) return result;
    const at::TensorList weights(saved.data() + 2, L), activations(saved.data() + 2 + L, L);
    const at::Tensor& x = saved[0];
    const at::Tensor grad_y = grads[0].defined() ? grads[0] : at::zeros_like(x);
    const at::Tensor grad_logdet = grads[1].defined() ? grads[1] : x.new_zeros({x.size(0)});
    const std::vector<at::Tensor> g = op.call(grad_y, grad_logdet, x, weights, saved[1], activations,
                                              ctx->saved_data["parity"].toInt(),
                                              ctx->saved_data["inverse"].toBool(), need);
    if (need[0]) result[0] = g[0];
    for (int64_t l = 0; l < L; ++l) {
      if (need_w && ctx->needs_input_grad(1 + l)) result[1 + l] = g[2 + l];
      if (need_b && ctx->needs_input_grad(1 + L + l)) result[1 + L + l] = g[2 + L + l];
    }
    if (need[1]) result[1 + 2 * L] = g[1];
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> affine_coupling_mlp_autograd(
    const at::Tensor& x, at::TensorList weights, at::TensorList biases, const at::Tensor& log_scale_bound,
    int64_t parity, bool inverse) {
  torch::autograd::variable_list out =
      AffineCouplingMLPFunction::apply(x, weights, biases, log_scale_bound, parity, inverse);
  return {out[0], out[1], std::vector<at::Tensor>(out.begin() + 2, out.end())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("affine_coupling_mlp", &affine_coupling_mlp_cpu);
  m.impl("affine_coupling_mlp_backward", &affine_coupling_mlp_backward_cpu);
}

TORCH_LIBRARY_IMPL(fastgen, Autograd, m) { m.impl("affine_coupling_mlp", &affine_coupling_mlp_autograd); }

}  // namespace fastgen::cpu
