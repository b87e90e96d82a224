// CPU kernels of the flow layers that are an MLP and the affine map it parametrizes, each as
// one op with one autograd node (C++, at the end), and their backward ops:
//   affine_coupling_mlp (fastgen/ops/affine_coupling_mlp.py): a vector affine coupling, its
//     MLP (dense layers, ATen's GEMMs) on the passed half;
//   masked_affine_autoregressive (fastgen/ops/masked_affine_autoregressive.py): a MAF layer,
//     its MADE (masked layers, masked_linear's kernels) on all of x.
//
// Why one op: at a vector flow's sizes (64 dimensions, batch 256, layers of 256 units) the
// layers' products take about 1 ms per layer forward and backward, and the eager composition
// around them (a module per layer, splits, tanh, the affine op, an autograd node for each)
// half as much again (2.5 against 1.85 ms for RealNVP's coupling, on 2 Zen 3 cores). Here
// everything but the products is a few passes:
//   forward:  y_pass = x_pass (couplings); y = x e^{l} + t (inverse: (x - t) e^{-l}) on the
//             transformed entries, l = a tanh(r), (t, r) the network's outputs, logdet =
//             +-sum l, in one pass over rows;
//   backward: the gradients of (t, r), of x's transformed entries and of a, and the last
//             bias's gradient, in one pass; then per hidden layer the ReLU's gate and its
//             bias's gradient in one pass.
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

#include "backward_call.h"
#include "masked_linear.h"
#include "vec_math.h"

namespace fastgen::cpu {
namespace {

// Rows per task of the element-wise passes (the fixed partition of the column sums).
constexpr int64_t ROWS = 32;
// Elements per parallel_for grain: below this, threads cost more than they save.
constexpr int64_t GRAIN = 1 << 15;
// At most this many rows per block of the forward's dense GEMMs (see mlp_affine_forward).
constexpr int64_t GEMM_ROWS = 1024;

// The forward's results: (y, logdet, activations).
using ForwardResult = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>>;

// Where things are in x (B, D) and in the network's output.
struct Layout {
  int64_t B, D;
  int64_t in0, n_in;      // the network's input: columns [in0, in0 + n_in) of x
  bool pass_input;        // those columns pass to y unchanged (a coupling's passed half)
  int64_t rest0, n_rest;  // the transformed columns
  bool interleaved;       // the output holds (t_j, r_j) per entry (MADE), else (t | r) halves
};

Layout coupling_layout(const at::Tensor& x, int64_t parity) {
  const int64_t B = x.size(0), D = x.size(1), half = D / 2;
  return parity == 0 ? Layout{B, D, 0, half, true, half, D - half, false}
                     : Layout{B, D, half, D - half, true, 0, half, false};
}

Layout autoregressive_layout(const at::Tensor& x) {
  const int64_t B = x.size(0), D = x.size(1);
  return Layout{B, D, 0, D, false, 0, D, true};
}

// The layers chain from the network's input to 2 n_rest outputs; masks, when given, one per
// layer of its weight's shape.
void check_layers(const char* op, const at::Tensor& x, const Layout& s, at::TensorList weights,
                  at::TensorList masks) {
  TORCH_CHECK_VALUE(!weights.empty(), op, ": weights must hold at least one layer");
  TORCH_CHECK_VALUE(masks.empty() || masks.size() == weights.size(), op, ": masks must hold one per layer (",
                    weights.size(), "), got ", masks.size());
  int64_t width = s.n_in;
  for (size_t l = 0; l < weights.size(); ++l) {
    const at::Tensor& w = weights[l];
    TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == width, op, ": weights[", l, "] must be (out, ", width,
                      "), got shape ", w.sizes());
    TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), op, ": weights must have x's dtype ", x.scalar_type());
    if (!masks.empty())
      TORCH_CHECK_VALUE(masks[l].sizes() == w.sizes() && masks[l].scalar_type() == at::kBool, op, ": masks[", l,
                        "] must be bool of weights[", l, "]'s shape ", w.sizes(), ", got ", masks[l].sizes());
    width = w.size(0);
  }
  TORCH_CHECK_VALUE(width == 2 * s.n_rest, op, ": the last layer must have 2 * ", s.n_rest, " outputs, got ", width);
}

void check_biases(const char* op, const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  TORCH_CHECK_VALUE(biases.size() == weights.size(), op, ": biases must hold one per layer (", weights.size(),
                    "), got ", biases.size());
  for (size_t l = 0; l < weights.size(); ++l) {
    TORCH_CHECK_VALUE(biases[l].dim() == 1 && biases[l].size(0) == weights[l].size(0), op, ": biases[", l,
                      "] must be (", weights[l].size(0), "), got shape ", biases[l].sizes());
    TORCH_CHECK_TYPE(biases[l].scalar_type() == x.scalar_type(), op, ": biases must have x's dtype ",
                     x.scalar_type());
  }
}

void check_x_and_bound(const char* op, const at::Tensor& x, const at::Tensor& log_scale_bound, int64_t n_rest) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   " (cpu): x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(log_scale_bound.dim() == 1 && log_scale_bound.size(0) == n_rest, op,
                    ": log_scale_bound must be (", n_rest, "), got shape ", log_scale_bound.sizes());
  TORCH_CHECK_TYPE(log_scale_bound.scalar_type() == x.scalar_type(), op, ": log_scale_bound must have x's dtype ",
                   x.scalar_type());
}

void check_backward(const char* op, const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x,
                    at::TensorList activations, at::TensorList weights) {
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes() && grad_logdet.sizes() == at::IntArrayRef{x.size(0)}, op,
                    ": grad_y must be ", x.sizes(), " and grad_logdet (", x.size(0), ")");
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type() && grad_logdet.scalar_type() == x.scalar_type(), op,
                   ": grad_y and grad_logdet must have x's dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(activations.size() == weights.size(), op, ": activations must hold one per layer (",
                    weights.size(), "), got ", activations.size());
  for (size_t l = 0; l < weights.size(); ++l)
    TORCH_CHECK_VALUE(activations[l].dim() == 2 && activations[l].size(0) == x.size(0) &&
                          activations[l].size(1) == weights[l].size(0) &&
                          activations[l].scalar_type() == x.scalar_type(),
                      op, ": activations[", l, "] must be (B, ", weights[l].size(0), ") of x's dtype, got ",
                      activations[l].sizes());
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

// f.template operator()<INVERSE, STRIDE>(): loops specialized on the direction and on the
// output's layout (t_j at out[STRIDE j], r_j STRIDE == 1 ? n_rest : 1 after it).
template <class F>
void dispatch_loops(bool inverse, bool interleaved, const F& f) {
  if (interleaved) return inverse ? f.template operator()<true, 2>() : f.template operator()<false, 2>();
  return inverse ? f.template operator()<true, 1>() : f.template operator()<false, 1>();
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

// y and logdet of s.B rows from x and the network's output out (B, 2 n_rest).
template <typename T, bool INVERSE, int STRIDE>
void forward_rows(const Layout& s, const T* xp, int64_t xs, const T* outp, const T* ap, T* yp, T* ldp) {
  const int64_t n = s.n_rest, r_offset = STRIDE == 1 ? n : 1;
  at::parallel_for(0, s.B, std::max<int64_t>(1, GRAIN / s.D), [&](int64_t begin, int64_t end) {
    with_isa([&]() FASTGEN_INLINE_LAMBDA {
      for (int64_t i = begin; i < end; ++i) {
        const T* __restrict xr = xp + i * xs + s.rest0;
        const T* __restrict t = outp + i * 2 * n;
        const T* __restrict r = t + r_offset;
        const T* __restrict a = ap;
        T* __restrict yr = yp + i * s.D + s.rest0;
        if (s.pass_input) std::memcpy(yp + i * s.D + s.in0, xp + i * xs + s.in0, sizeof(T) * s.n_in);
        T acc = T(0);
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < n; ++j)
          acc += rest_forward<INVERSE>(xr[j], t[STRIDE * j], r[STRIDE * j], a[j], yr + j);
        ldp[i] = INVERSE ? -acc : acc;
      }
    });
  });
}

// A hidden layer's bias and ReLU in place on its product h (rows, width): one pass, where
// addmm would first copy the bias into every row.
template <typename T>
void bias_relu_rows(T* hp, int64_t rows, int64_t width, const T* bp) {
  with_isa([&]() FASTGEN_INLINE_LAMBDA {
    const T* __restrict b = bp;
    for (int64_t i = 0; i < rows; ++i) {
      T* __restrict h = hp + i * width;
#pragma omp simd
      for (int64_t k = 0; k < width; ++k) h[k] = vmax(T(0), h[k] + b[k]);  // a NaN stays NaN, as torch.relu
    }
  });
}

// Dense layers run in an even number of blocks of at most GEMM_ROWS rows, in parallel, each
// block on one thread, forward and backward: MKL on both cores runs (256, 256) x (256, 256)
// about 5% slower than two threads on (128, 256) halves, and (10000, 256) x (256, 256) slower
// than blocks whose activations stay in the cache for the next layer (RealNVP's sampling of
// 10000 vectors, interleaved runs on 2 Zen 3 cores: 114-122 ms in blocks of 500 or 1000
// rows, 123-128 in 1667, 147-160 in 5000); a block's backward runs down the layers with no
// wait for the other threads. The partition depends on B only: the same results on any
// thread count.
int64_t dense_blocks(int64_t B) { return 2 * ((B + 2 * GEMM_ROWS - 1) / (2 * GEMM_ROWS)); }

// Calls body(block, row0, rows) for each non-empty block of dense_blocks(B), in parallel.
template <class Body>
void for_dense_blocks(int64_t B, const Body& body) {
  const int64_t blocks = dense_blocks(B), block_rows = blocks ? (B + blocks - 1) / blocks : 0;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // the caller's is thread-local
    for (int64_t b = begin; b < end; ++b) {
      const int64_t row0 = b * block_rows, rows = std::min(block_rows, B - row0);
      if (rows > 0) body(b, row0, rows);
    }
  });
}

// Returns (y, logdet, activations): every layer's output (after its ReLU), the last one the
// (shift, raw log-scale) of the transformed entries; none unless keep. Dense layers run in
// dense_blocks, each block's outputs, when not kept, in tensors of its own rows: RealNVP's
// sampling of 10000 vectors takes 118 instead of 221 ms without the 22 MB of activations per
// coupling (and their page faults), 102-118 instead of 118-128 with glibc's allocator pinned
// as the benchmarks pin it (2 Zen 3 cores). Masked layers run on masked_linear's kernels
// (parallel inside), whole.
ForwardResult mlp_affine_forward(
    const at::Tensor& x_in, const Layout& s, at::TensorList weights, at::TensorList biases, at::TensorList masks,
    const at::Tensor& log_scale_bound, bool inverse, bool keep) {
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const at::Tensor a = log_scale_bound.contiguous();
  at::Tensor y = at::empty({s.B, s.D}, x.options()), logdet = at::empty({s.B}, x.options());
  // The affine map of rows [row0, row0 + rows), out their network outputs.
  const auto affine_rows = [&](int64_t row0, int64_t rows, const at::Tensor& out) {
    Layout block = s;
    block.B = rows;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_affine_forward", [&] {
      using T = scalar_t;
      dispatch_loops(inverse, s.interleaved, [&]<bool INVERSE, int STRIDE>() {
        forward_rows<T, INVERSE, STRIDE>(block, x.data_ptr<T>() + row0 * x.stride(0), x.stride(0),
                                         out.data_ptr<T>(), a.data_ptr<T>(), y.data_ptr<T>() + row0 * s.D,
                                         logdet.data_ptr<T>() + row0);
      });
    });
  };
  std::vector<at::Tensor> activations;
  if (masks.empty()) {
    if (keep)
      for (const at::Tensor& w : weights) activations.push_back(at::empty({s.B, w.size(0)}, x.options()));
    for_dense_blocks(s.B, [&](int64_t, int64_t row0, int64_t rows) {
      at::Tensor h = x.narrow(0, row0, rows).narrow(1, s.in0, s.n_in);
      for (size_t l = 0; l < weights.size(); ++l) {
        at::Tensor out =
            keep ? activations[l].narrow(0, row0, rows) : at::empty({rows, weights[l].size(0)}, x.options());
        if (l + 1 < weights.size()) {
          at::mm_out(out, h, weights[l].t());
          const at::Tensor bias = biases[l].contiguous();
          AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bias_relu_rows", [&] {
            bias_relu_rows<scalar_t>(out.data_ptr<scalar_t>(), rows, out.size(1), bias.data_ptr<scalar_t>());
          });
        } else {
          at::addmm_out(out, biases[l], h, weights[l].t());
        }
        h = out;
      }
      affine_rows(row0, rows, h);
    });
  } else {
    at::Tensor h = x.narrow(1, s.in0, s.n_in);
    for (size_t l = 0; l < weights.size(); ++l) {
      h = masked_linear_cpu(h, weights[l], biases[l], masks[l]);
      if (l + 1 < weights.size()) h.clamp_min_(0);
      if (keep) activations.push_back(h);
    }
    affine_rows(0, s.B, h);
  }
  return {y, logdet, activations};
}

// ---------------------------------------------------------------------------------- backward

// From the gradients of (y, logdet): those of the network's output into go (B, 2 n_rest), of
// x into gx (null: not wanted; a coupling's passed half gets grad_y's, the network's part is
// added later); returns the column sums: the last bias's gradient (2 n_rest, in go's layout),
// then log_scale_bound's (n_rest).
template <typename T, bool INVERSE, int STRIDE>
std::vector<T> backward_rows(const Layout& s, const T* xp, int64_t xs, const T* outp, const T* ap, const T* gyp,
                             const T* gldp, T* gop, T* gxp) {
  const int64_t n = s.n_rest, r_offset = STRIDE == 1 ? n : 1;
  return row_blocks<T>(s.B, 3 * n, s.D, [&](int64_t task, T* partial) {
    std::vector<T> scratch(gxp ? 0 : n);
    with_isa([&]() FASTGEN_INLINE_LAMBDA {
      for (int64_t i = task * ROWS; i < std::min(s.B, (task + 1) * ROWS); ++i) {
        const T* __restrict xr = xp + i * xs + s.rest0;
        const T* __restrict t = outp + i * 2 * n;
        const T* __restrict r = t + r_offset;
        const T* __restrict a = ap;
        const T* __restrict g = gyp + i * s.D + s.rest0;
        T* __restrict gt = gop + i * 2 * n;
        T* __restrict gr = gt + r_offset;
        T* __restrict gx = gxp ? gxp + i * s.D + s.rest0 : scratch.data();
        T* __restrict gbt = partial;
        T* __restrict gbr = partial + r_offset;
        T* __restrict ga = partial + 2 * n;
        const T gl = gldp[i];
        if (gxp && s.pass_input) std::memcpy(gxp + i * s.D + s.in0, gyp + i * s.D + s.in0, sizeof(T) * s.n_in);
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const int64_t k = STRIDE * j;
          ga[j] += rest_backward<INVERSE>(g[j], gl, xr[j], t[k], r[k], a[j], gx + j, gt + k, gr + k);
          gbt[k] += gt[k];
          gbr[k] += gr[k];
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
//
// Dense layers: each of dense_blocks' row blocks runs down the layers on one thread (the
// gradients of the layers' outputs and of x, the column sums), then the weights' gradients
// over all rows, each layer's split in two halves of its outputs, one per thread. Masked
// layers: all rows at once, layer by layer, on masked_linear's kernels (parallel inside).
std::vector<at::Tensor> mlp_affine_backward(const at::Tensor& grad_y, const at::Tensor& grad_logdet,
                                            const at::Tensor& x_in, const Layout& s, at::TensorList weights,
                                            at::TensorList masks, const at::Tensor& log_scale_bound,
                                            at::TensorList activations, bool inverse,
                                            std::array<bool, 4> output_mask) {
  const size_t L = weights.size();
  const bool dense = masks.empty();
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const int64_t n = s.n_rest;
  const bool need_x = output_mask[0], need_a = output_mask[1], need_w = output_mask[2], need_b = output_mask[3];
  const at::Tensor gy = grad_y.contiguous(), gld = grad_logdet.contiguous(), a = log_scale_bound.contiguous();
  const at::Tensor out = activations[L - 1].contiguous();
  at::Tensor grad_x = need_x ? at::empty({s.B, s.D}, x.options()) : x.new_empty(0);
  at::Tensor grad_a = x.new_empty(0);
  std::vector<at::Tensor> grad_w(L), grad_b(L);  // each its own empty tensor when not wanted: outputs never alias
  for (size_t l = 0; l < L; ++l) {
    grad_w[l] = need_w && dense ? at::empty(weights[l].sizes(), x.options()) : x.new_empty(0);
    grad_b[l] = x.new_empty(0);
  }
  // The input of layer l, and the gradient of its output: G[L - 1] that of the (shift, raw
  // log-scale), G[l - 1] = relu'(G[l] W_l) (masked layers: set as they come).
  const auto input_of = [&](size_t l) {
    return l > 0 ? activations[l - 1].contiguous() : x.narrow(1, s.in0, s.n_in);
  };
  std::vector<at::Tensor> G(L);
  for (size_t l = 0; l < L; ++l)
    if (dense || l + 1 == L) G[l] = at::empty({s.B, weights[l].size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_affine_backward", [&] {
    using T = scalar_t;
    // Rows [row0, row0 + rows) down the layers: their rows of G and grad_x, and their column
    // sums into sums: sums[l] layer l's bias gradient, sums[L] log_scale_bound's gradient.
    const auto down = [&](int64_t row0, int64_t rows, std::vector<std::vector<T>>& sums) {
      Layout block = s;
      block.B = rows;
      dispatch_loops(inverse, s.interleaved, [&]<bool INVERSE, int STRIDE>() {
        sums[L - 1] = backward_rows<T, INVERSE, STRIDE>(
            block, x.data_ptr<T>() + row0 * x.stride(0), x.stride(0), out.data_ptr<T>() + row0 * 2 * n,
            a.data_ptr<T>(), gy.data_ptr<T>() + row0 * s.D, gld.data_ptr<T>() + row0,
            G[L - 1].data_ptr<T>() + row0 * 2 * n, need_x ? grad_x.data_ptr<T>() + row0 * s.D : nullptr);
      });
      sums[L].assign(sums[L - 1].begin() + 2 * n, sums[L - 1].end());
      sums[L - 1].resize(2 * n);
      for (size_t l = L; l-- > 0;) {
        const at::Tensor g = G[l].narrow(0, row0, rows), input = input_of(l).narrow(0, row0, rows);
        at::Tensor grad_input;
        if (dense) {
          if (l > 0) {
            grad_input = G[l - 1].narrow(0, row0, rows);
            at::mm_out(grad_input, g, weights[l]);
          } else if (need_x) {
            grad_input = at::mm(g, weights[l]);
          }
        } else if (need_w || l > 0 || need_x) {
          auto [gi, gw, gb] =
              masked_linear_backward_cpu(g, input, weights[l], masks[l], {l > 0 || need_x, need_w, false});
          if (need_w) grad_w[l] = gw;
          grad_input = gi;
          if (l > 0) G[l - 1] = gi;
        }
        if (l == 0) {
          if (need_x) grad_x.narrow(0, row0, rows).narrow(1, s.in0, s.n_in).add_(grad_input);
          break;
        }
        // The previous layer's ReLU: its gradient where it was positive, and its bias's gradient.
        sums[l - 1] = relu_backward_rows<T>(rows, grad_input.size(1), grad_input.data_ptr<T>(), input.data_ptr<T>());
      }
    };
    // Column sums per block (one block when masked), added in block order.
    std::vector<std::vector<std::vector<T>>> block_sums(dense ? dense_blocks(s.B) : 1,
                                                        std::vector<std::vector<T>>(L + 1));
    if (dense) {
      for_dense_blocks(s.B, [&](int64_t b, int64_t row0, int64_t rows) { down(row0, rows, block_sums[b]); });
      if (need_w)
        at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
          at::AutoDispatchBelowADInplaceOrView below_autograd;  // the caller's is thread-local
          for (int64_t half = begin; half < end; ++half)
            for (size_t l = 0; l < L; ++l) {
              const int64_t width = weights[l].size(0), lo = half * width / 2, count = (half + 1) * width / 2 - lo;
              if (count == 0) continue;
              at::Tensor rows_of_w = grad_w[l].narrow(0, lo, count);
              at::mm_out(rows_of_w, G[l].narrow(1, lo, count).t(), input_of(l));
            }
        });
    } else {
      down(0, s.B, block_sums[0]);
    }
    for (size_t l = 0; l <= L; ++l) {
      if (l < L ? !need_b : !need_a) continue;
      const int64_t columns = l < L ? weights[l].size(0) : n;
      std::vector<T> sum(columns, T(0));
      for (const auto& block : block_sums)
        if (!block[l].empty())
          for (int64_t c = 0; c < columns; ++c) sum[c] += block[l][c];
      (l < L ? grad_b[l] : grad_a) = to_tensor(x, sum.data(), columns);
    }
  });
  std::vector<at::Tensor> grads{grad_x, grad_a};
  grads.insert(grads.end(), grad_w.begin(), grad_w.end());
  grads.insert(grads.end(), grad_b.begin(), grad_b.end());
  return grads;
}

// -------------------------------------------------------------------------------------- ops

constexpr const char* COUPLING = "affine_coupling_mlp";
constexpr const char* AUTOREGRESSIVE = "masked_affine_autoregressive";

Layout checked_coupling(const at::Tensor& x, at::TensorList weights, const at::Tensor& log_scale_bound,
                        int64_t parity) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) >= 2, COUPLING, ": x must be (B, D) with D >= 2, got shape ", x.sizes());
  TORCH_CHECK_VALUE(parity == 0 || parity == 1, COUPLING, ": parity must be 0 or 1, got ", parity);
  const Layout s = coupling_layout(x, parity);
  check_x_and_bound(COUPLING, x, log_scale_bound, s.n_rest);
  check_layers(COUPLING, x, s, weights, {});
  return s;
}

Layout checked_autoregressive(const at::Tensor& x, at::TensorList weights, at::TensorList masks,
                              const at::Tensor& log_scale_bound) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) >= 2, AUTOREGRESSIVE, ": x must be (B, D) with D >= 2, got shape ",
                    x.sizes());
  const Layout s = autoregressive_layout(x);
  check_x_and_bound(AUTOREGRESSIVE, x, log_scale_bound, s.n_rest);
  TORCH_CHECK_VALUE(masks.size() == weights.size(), AUTOREGRESSIVE, ": masks must hold one per layer (",
                    weights.size(), "), got ", masks.size());
  check_layers(AUTOREGRESSIVE, x, s, weights, masks);
  return s;
}

ForwardResult affine_coupling_mlp_cpu(
    const at::Tensor& x, at::TensorList weights, at::TensorList biases, const at::Tensor& log_scale_bound,
    int64_t parity, bool inverse, bool keep_activations) {
  const Layout s = checked_coupling(x, weights, log_scale_bound, parity);
  check_biases(COUPLING, x, weights, biases);
  return mlp_affine_forward(x, s, weights, biases, {}, log_scale_bound, inverse, keep_activations);
}

std::vector<at::Tensor> affine_coupling_mlp_backward_cpu(const at::Tensor& grad_y, const at::Tensor& grad_logdet,
                                                         const at::Tensor& x, at::TensorList weights,
                                                         const at::Tensor& log_scale_bound,
                                                         at::TensorList activations, int64_t parity, bool inverse,
                                                         std::array<bool, 4> output_mask) {
  const Layout s = checked_coupling(x, weights, log_scale_bound, parity);
  check_backward("affine_coupling_mlp_backward", grad_y, grad_logdet, x, activations, weights);
  return mlp_affine_backward(grad_y, grad_logdet, x, s, weights, {}, log_scale_bound, activations, inverse,
                             output_mask);
}

// MAF's direction: u = (x - t) e^{-l}, the affine map's inverse.
ForwardResult masked_affine_autoregressive_cpu(
    const at::Tensor& x, at::TensorList weights, at::TensorList masks, at::TensorList biases,
    const at::Tensor& log_scale_bound, bool keep_activations) {
  const Layout s = checked_autoregressive(x, weights, masks, log_scale_bound);
  check_biases(AUTOREGRESSIVE, x, weights, biases);
  return mlp_affine_forward(x, s, weights, biases, masks, log_scale_bound, true, keep_activations);
}

std::vector<at::Tensor> masked_affine_autoregressive_backward_cpu(
    const at::Tensor& grad_u, const at::Tensor& grad_logdet, const at::Tensor& x, at::TensorList weights,
    at::TensorList masks, const at::Tensor& log_scale_bound, at::TensorList activations,
    std::array<bool, 4> output_mask) {
  const Layout s = checked_autoregressive(x, weights, masks, log_scale_bound);
  check_backward("masked_affine_autoregressive_backward", grad_u, grad_logdet, x, activations, weights);
  return mlp_affine_backward(grad_u, grad_logdet, x, s, weights, masks, log_scale_bound, activations, true,
                             output_mask);
}

// ---------------------------------------------------------------------------------- autograd

// Autograd of the forward ops, in C++: a Python autograd function costs about 0.1 ms a call,
// a tenth of a vector flow's layer. Both ops' differentiable inputs are x, the weights, the
// biases and log_scale_bound (edges in that order); the backward op goes through the
// dispatcher, so its own autograd (registered from Python: no double backward) still applies.

// What the forward saves: x, log_scale_bound, the weights, the activations, then any masks.
void save(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& log_scale_bound,
          at::TensorList weights, const std::vector<at::Tensor>& activations, at::TensorList masks) {
  std::vector<at::Tensor> saved{x, log_scale_bound};
  saved.insert(saved.end(), weights.begin(), weights.end());
  saved.insert(saved.end(), activations.begin(), activations.end());
  saved.insert(saved.end(), masks.begin(), masks.end());
  ctx->save_for_backward(saved);
  ctx->saved_data["layers"] = static_cast<int64_t>(weights.size());
  ctx->mark_non_differentiable(activations);
  // Else autograd fills a zero gradient for each activation (never read) on every backward.
  ctx->set_materialize_grads(false);
}

torch::autograd::variable_list outputs(const at::Tensor& y, const at::Tensor& logdet,
                                       const std::vector<at::Tensor>& activations) {
  torch::autograd::variable_list out{y, logdet};
  out.insert(out.end(), activations.begin(), activations.end());
  return out;
}

struct Saved {
  torch::autograd::variable_list tensors;
  int64_t L;
  std::array<bool, 4> need;  // x, log_scale_bound, any weight, any bias
  at::Tensor grad_y, grad_logdet;
  at::TensorList weights() const { return {tensors.data() + 2, static_cast<size_t>(L)}; }
  at::TensorList activations() const { return {tensors.data() + 2 + L, static_cast<size_t>(L)}; }
  at::TensorList masks() const { return {tensors.data() + 2 + 2 * L, tensors.size() - 2 - 2 * L}; }
};

Saved saved(torch::autograd::AutogradContext* ctx, const torch::autograd::variable_list& grads) {
  Saved s{ctx->get_saved_variables(), ctx->saved_data["layers"].toInt(), {}, {}, {}};
  bool need_w = false, need_b = false;
  for (int64_t l = 0; l < s.L; ++l) {
    need_w = need_w || ctx->needs_input_grad(1 + l);
    need_b = need_b || ctx->needs_input_grad(1 + s.L + l);
  }
  s.need = {ctx->needs_input_grad(0), ctx->needs_input_grad(1 + 2 * s.L), need_w, need_b};
  const at::Tensor& x = s.tensors[0];
  s.grad_y = grads[0].defined() ? grads[0] : at::zeros_like(x);
  s.grad_logdet = grads[1].defined() ? grads[1] : x.new_zeros({x.size(0)});
  return s;
}

// The backward's results, one per forward argument (x, weights, biases, log_scale_bound,
// then `trailing` undefined ones for the non-tensor arguments), from the backward op's.
torch::autograd::variable_list input_grads(torch::autograd::AutogradContext* ctx, const Saved& s,
                                           const std::vector<at::Tensor>& g, size_t trailing) {
  const int64_t L = s.L;
  torch::autograd::variable_list result(2 * L + 2 + trailing);
  if (s.need[0]) result[0] = g[0];
  for (int64_t l = 0; l < L; ++l) {
    if (s.need[2] && ctx->needs_input_grad(1 + l)) result[1 + l] = g[2 + l];
    if (s.need[3] && ctx->needs_input_grad(1 + L + l)) result[1 + L + l] = g[2 + L + l];
  }
  if (s.need[1]) result[1 + 2 * L] = g[1];
  return result;
}

bool any(const std::array<bool, 4>& need) { return need[0] || need[1] || need[2] || need[3]; }

class AffineCouplingMLPFunction : public torch::autograd::Function<AffineCouplingMLPFunction> {
 public:
  static const auto& op() {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fastgen::affine_coupling_mlp", "")
            .typed<ForwardResult(const at::Tensor&, at::TensorList, at::TensorList, const at::Tensor&, int64_t, bool,
                                 bool)>();
    return op;
  }

  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                at::TensorList weights, at::TensorList biases,
                                                const at::Tensor& log_scale_bound, int64_t parity, bool inverse) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, logdet, activations] = op().call(x, weights, biases, log_scale_bound, parity, inverse, true);
    save(ctx, x, log_scale_bound, weights, activations, {});
    ctx->saved_data["parity"] = parity;
    ctx->saved_data["inverse"] = inverse;
    return outputs(y, logdet, activations);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastgen::affine_coupling_mlp_backward", "")
                               .typed<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, at::TensorList, const at::Tensor&,
                                                              at::TensorList, int64_t, bool, std::array<bool, 4>)>();
    const Saved s = saved(ctx, grads);
    if (!any(s.need)) return input_grads(ctx, s, {}, 2);
    const std::vector<at::Tensor> g = call_backward_op([&] {
      return op.call(s.grad_y, s.grad_logdet, s.tensors[0], s.weights(), s.tensors[1], s.activations(),
                     ctx->saved_data["parity"].toInt(), ctx->saved_data["inverse"].toBool(), s.need);
    });
    return input_grads(ctx, s, g, 2);
  }
};

class MaskedAffineAutoregressiveFunction : public torch::autograd::Function<MaskedAffineAutoregressiveFunction> {
 public:
  static const auto& op() {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastgen::masked_affine_autoregressive", "")
                               .typed<ForwardResult(const at::Tensor&, at::TensorList, at::TensorList,
                                                    at::TensorList, const at::Tensor&, bool)>();
    return op;
  }

  // Arguments reordered so that the edges are those of the coupling: x, weights, biases,
  // log_scale_bound (the masks are never differentiated: not tensor arguments here).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                at::TensorList weights, at::TensorList biases,
                                                const at::Tensor& log_scale_bound,
                                                const std::vector<at::Tensor>& masks) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [u, logdet, activations] = op().call(x, weights, masks, biases, log_scale_bound, true);
    save(ctx, x, log_scale_bound, weights, activations, masks);
    return outputs(u, logdet, activations);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastgen::masked_affine_autoregressive_backward", "")
                               .typed<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, at::TensorList, at::TensorList,
                                                              const at::Tensor&, at::TensorList, std::array<bool, 4>)>();
    const Saved s = saved(ctx, grads);
    if (!any(s.need)) return input_grads(ctx, s, {}, 1);
    const std::vector<at::Tensor> g = call_backward_op([&] {
      return op.call(s.grad_y, s.grad_logdet, s.tensors[0], s.weights(), s.masks(), s.tensors[1], s.activations(),
                     s.need);
    });
    return input_grads(ctx, s, g, 1);
  }
};

// Whether autograd records the op (else it runs below autograd, keeping activations only if
// asked: a Function would keep them for a backward that never comes).
bool records(const at::Tensor& x, at::TensorList weights, at::TensorList biases, const at::Tensor& log_scale_bound) {
  if (!at::GradMode::is_enabled()) return false;
  const auto wants_grad = [](at::TensorList ts) {
    return std::any_of(ts.begin(), ts.end(), [](const at::Tensor& t) { return t.requires_grad(); });
  };
  return x.requires_grad() || log_scale_bound.requires_grad() || wants_grad(weights) || wants_grad(biases);
}

// A Function's outputs as the op's: (y, logdet, activations, when kept).
ForwardResult split_outputs(const torch::autograd::variable_list& out, bool keep_activations) {
  std::vector<at::Tensor> activations;
  if (keep_activations) activations.assign(out.begin() + 2, out.end());
  return {out[0], out[1], activations};
}

ForwardResult affine_coupling_mlp_autograd(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                           const at::Tensor& log_scale_bound, int64_t parity, bool inverse,
                                           bool keep_activations) {
  if (!records(x, weights, biases, log_scale_bound)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return AffineCouplingMLPFunction::op().call(x, weights, biases, log_scale_bound, parity, inverse, keep_activations);
  }
  return split_outputs(AffineCouplingMLPFunction::apply(x, weights, biases, log_scale_bound, parity, inverse),
                       keep_activations);
}

ForwardResult masked_affine_autoregressive_autograd(const at::Tensor& x, at::TensorList weights, at::TensorList masks,
                                                    at::TensorList biases, const at::Tensor& log_scale_bound,
                                                    bool keep_activations) {
  if (!records(x, weights, biases, log_scale_bound)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return MaskedAffineAutoregressiveFunction::op().call(x, weights, masks, biases, log_scale_bound, keep_activations);
  }
  return split_outputs(MaskedAffineAutoregressiveFunction::apply(x, weights, biases, log_scale_bound, masks.vec()),
                       keep_activations);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("affine_coupling_mlp", &affine_coupling_mlp_cpu);
  m.impl("affine_coupling_mlp_backward", &affine_coupling_mlp_backward_cpu);
  m.impl("masked_affine_autoregressive", &masked_affine_autoregressive_cpu);
  m.impl("masked_affine_autoregressive_backward", &masked_affine_autoregressive_backward_cpu);
}

TORCH_LIBRARY_IMPL(fastgen, Autograd, m) {
  m.impl("affine_coupling_mlp", &affine_coupling_mlp_autograd);
  m.impl("masked_affine_autoregressive", &masked_affine_autoregressive_autograd);
}

}  // namespace fastgen::cpu
