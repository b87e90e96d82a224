// Gated PixelCNN layer on the CPU: forward and the gradients of every input. The vertical
// (c+1) x k convolution over rows above runs (k = 3, 5, 7) by Winograd F(2 x 2) in rows and
// columns (winograd_conv.h: 40% of the direct FLOPs for k = 7, exact zeros outside the
// kernel by construction), else, like the horizontal 1 x (c+1) one up to the current pixel,
// on the sparse-tap engine of tap_conv.cpp, which skips taps leaving the image instead of
// reading padded rows. The link, residual and skip 1x1s are batched GEMMs on (B, C, H*W)
// views; the gates are vectorized ATen element-wise ops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "tap_conv.h"
#include "winograd_conv.h"

namespace fastgen::cpu {
namespace {

// Vertical stack: kernel row r at input row offset r - c - 1 (first layer) or r - c.
KernelTaps vertical_taps(int64_t k, bool first, int64_t H, int64_t W) {
  const int64_t c = k / 2;
  KernelTaps s;
  for (int64_t r = 0; r <= c; ++r)
    for (int64_t q = 0; q < k; ++q) {
      const int64_t dh = r - c - (first ? 1 : 0), dw = q - c;
      if (-dh < H && std::abs(dw) < W) s.add(r * k + q, dh, dw);
    }
  s.transpose();
  return s;
}

// The vertical stack for Winograd (winograd_conv.h): kernel rows from offset -c - 1 (first
// layer) or -c, columns from -c.
WinogradConv vertical_conv(int64_t k, bool first) {
  const int64_t c = k / 2;
  return {-c - (first ? 1 : 0), -c};
}

// Horizontal stack: column q at offset q - c; the current-pixel tap (last) is restricted to
// the input colour groups < g (first layer) or <= g of the output's group g, where channel
// o of the 2p pre-activations is in group (o mod p) / (p / n). Its transposed form is not
// one range of output channels per input channel, so the transposed set leaves it out and
// the backward applies it as a GEMM (`centre` says whether it is kept).
KernelTaps horizontal_taps(int64_t k, bool first, int64_t groups, int64_t W, int64_t two_p, int64_t c_in,
                           bool& centre) {
  const int64_t c = k / 2;
  KernelTaps s;
  centre = !(first && groups == 1);
  for (int64_t q = 0; q <= c; ++q) {
    const int64_t dw = q - c;
    if ((q < c || centre) && -dw < W) s.add(q, 0, dw);
  }
  if (centre && groups > 1) {
    const int64_t p = two_p / 2, gp = p / groups, gi = c_in / groups, own = first ? 0 : 1;
    s.forward.restricted = s.forward.size() - 1;
    s.forward.lo.assign(two_p, 0);
    for (int64_t o = 0; o < two_p; ++o) s.forward.hi.push_back(((o % p) / gp + own) * gi);
  }
  s.transpose(s.forward.size() - (centre ? 1 : 0));
  return s;
}

// (2p, C_in) 0/1: the current-pixel tap's visible pairs.
at::Tensor centre_mask(int64_t two_p, int64_t c_in, int64_t groups, bool first, const at::TensorOptions& opt) {
  const int64_t p = two_p / 2;
  const at::Tensor og = at::arange(two_p, at::kLong).remainder(p).div(p / groups, "floor");
  const at::Tensor ig = at::arange(c_in, at::kLong).div(c_in / groups, "floor");
  return (first ? og.unsqueeze(1).gt(ig.unsqueeze(0)) : og.unsqueeze(1).ge(ig.unsqueeze(0))).to(opt);
}

// (rows, p) 0/1: output group >= input group (mask B of a 1x1).
at::Tensor pointwise_mask(int64_t rows, int64_t p, int64_t groups, const at::TensorOptions& opt) {
  const at::Tensor og = at::arange(rows, at::kLong).div(rows / groups, "floor");
  const at::Tensor ig = at::arange(p, at::kLong).div(p / groups, "floor");
  return og.unsqueeze(1).ge(ig.unsqueeze(0)).to(opt);
}

// W (R, C) applied as a 1x1 to x (B, C, N): (B, R, N), accumulated into `out` if defined.
at::Tensor pointwise(const at::Tensor& w, const at::Tensor& x, const at::Tensor& out = at::Tensor()) {
  const at::Tensor wb = w.unsqueeze(0).expand({x.size(0), w.size(0), w.size(1)});
  if (out.defined()) return out.baddbmm_(wb, x);
  return at::bmm(wb, x);
}

// tanh(x) = 2 sigmoid(2x) - 1: ATen's vectorized sigmoid is about four times faster than its
// tanh here (the cancellation near 0 costs an absolute error of one ulp of 1).
at::Tensor fast_tanh(const at::Tensor& x) { return at::sigmoid(x * 2).mul_(2).sub_(1); }

void gate_into(const at::Tensor& pre, at::Tensor& out) {  // pre (B, 2p, ...) -> tanh(a) * sigmoid(s)
  const int64_t p = pre.size(1) / 2;
  at::mul_out(out, pre.narrow(1, 0, p), 2);
  out.sigmoid_().mul_(2).sub_(1).mul_(at::sigmoid(pre.narrow(1, p, p)));
}

// The gradient of the gate's pre-activations (B, 2p, N) from that of its output
// (B, p, N) and t = tanh(pre[:, :p]), s = sigmoid(pre[:, p:]), in one pass.
template <typename T>
void gate_backward_impl(const T* grad, const T* t, const T* s, T* out, int64_t B, int64_t p, int64_t N) {
  at::parallel_for(0, B * p, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / p, ch = bc % p;
      const T* g = grad + bc * N;
      const T* tt = t + bc * N;
      const T* ss = s + bc * N;
      T* da = out + (b * 2 * p + ch) * N;
      T* ds = da + p * N;
      for (int64_t n = 0; n < N; ++n) {
        const T gs = g[n] * ss[n];
        da[n] = gs * (T(1) - tt[n] * tt[n]);
        ds[n] = gs * tt[n] * (T(1) - ss[n]);
      }
    }
  });
}

at::Tensor gate_backward(const at::Tensor& grad, const at::Tensor& t, const at::Tensor& s) {
  const at::Tensor g = grad.contiguous(), tc = t.contiguous(), sc = s.contiguous();
  at::Tensor out = at::empty({g.size(0), 2 * g.size(1), g.size(2)}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "gate_backward", [&] {
    gate_backward_impl<scalar_t>(g.data_ptr<scalar_t>(), tc.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(),
                                 out.data_ptr<scalar_t>(), g.size(0), g.size(1), g.size(2));
  });
  return out;
}

void check_tensor(const char* name, const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.sizes() == shape, "gated_pixelcnn_layer: ", name, " must have shape ", shape, ", got ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "gated_pixelcnn_layer: ", name, " has dtype ",
                   t.scalar_type(), " but v has ", ref.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), "gated_pixelcnn_layer (cpu): ", name, " must be on the CPU");
}

struct Dims {
  int64_t B, c_in, H, W, two_p, p, k, s;
};

// The op can be called directly through torch.ops, so it checks everything that could make
// it read out of bounds; fastgen.ops.gated_pixelcnn_layer gives friendlier errors first.
Dims check_args(const at::Tensor& v, const at::Tensor& h, const at::Tensor& v_weight, const at::Tensor& h_weight,
                const at::Tensor& link_weight, const at::Tensor& res_weight,
                const c10::optional<at::Tensor>& skip_weight, bool first, int64_t groups) {
  TORCH_CHECK_VALUE(v.dim() == 4, "gated_pixelcnn_layer: v must be (B, C_in, H, W), got shape ", v.sizes());
  TORCH_CHECK_VALUE(v.size(2) >= 1 && v.size(3) >= 1, "gated_pixelcnn_layer: v must have H >= 1 and W >= 1, got shape ",
                    v.sizes());
  TORCH_CHECK_TYPE(v.scalar_type() == at::kFloat || v.scalar_type() == at::kDouble,
                   "gated_pixelcnn_layer (cpu): tensors must be float32 or float64, got ", v.scalar_type());
  TORCH_CHECK_VALUE(v.device().is_cpu(), "gated_pixelcnn_layer (cpu): v must be on the CPU");
  TORCH_CHECK_VALUE(v_weight.dim() == 4 && v_weight.size(3) % 2 == 1 && v_weight.size(0) % 2 == 0 &&
                        v_weight.size(0) > 0 && v_weight.size(2) == v_weight.size(3) / 2 + 1,
                    "gated_pixelcnn_layer: v_weight must be (2p, C_in, k//2+1, k) with odd k, got ",
                    v_weight.sizes());
  Dims d{v.size(0), v.size(1), v.size(2), v.size(3), v_weight.size(0), v_weight.size(0) / 2, v_weight.size(3), 0};
  check_tensor("h", h, v.sizes(), v);
  check_tensor("v_weight", v_weight, {d.two_p, d.c_in, d.k / 2 + 1, d.k}, v);
  check_tensor("h_weight", h_weight, {d.two_p, d.c_in, 1, d.k / 2 + 1}, v);
  check_tensor("link_weight", link_weight, {d.two_p, d.two_p}, v);
  check_tensor("res_weight", res_weight, {d.p, d.p}, v);
  if (skip_weight.has_value()) {
    TORCH_CHECK_VALUE(skip_weight->dim() == 2, "gated_pixelcnn_layer: skip_weight must be (S, p)");
    d.s = skip_weight->size(0);
    check_tensor("skip_weight", *skip_weight, {d.s, d.p}, v);
  }
  TORCH_CHECK_VALUE(groups >= 1 && d.p % groups == 0 && d.c_in % groups == 0 && d.s % groups == 0 && d.c_in > 0,
                    "gated_pixelcnn_layer: color_channels must divide p, C_in and S, got ", groups);
  TORCH_CHECK_VALUE(first || d.c_in == d.p, "gated_pixelcnn_layer: later layers need C_in = p");
  return d;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gated_pixelcnn_layer_cpu(
    const at::Tensor& v, const at::Tensor& h, const at::Tensor& v_weight, const at::Tensor& v_bias,
    const at::Tensor& h_weight, const at::Tensor& h_bias, const at::Tensor& link_weight, const at::Tensor& res_weight,
    const at::Tensor& res_bias, const c10::optional<at::Tensor>& skip_weight,
    const c10::optional<at::Tensor>& skip_bias, const c10::optional<at::Tensor>& v_cond,
    const c10::optional<at::Tensor>& h_cond, bool first_layer, int64_t color_channels) {
  const Dims d = check_args(v, h, v_weight, h_weight, link_weight, res_weight, skip_weight, first_layer, color_channels);
  check_tensor("v_bias", v_bias, {d.two_p}, v);
  check_tensor("h_bias", h_bias, {d.two_p}, v);
  check_tensor("res_bias", res_bias, {d.p}, v);
  TORCH_CHECK_VALUE(skip_weight.has_value() == skip_bias.has_value(),
                    "gated_pixelcnn_layer: skip_weight and skip_bias go together");
  if (skip_bias.has_value()) check_tensor("skip_bias", *skip_bias, {d.s}, v);
  if (v_cond.has_value()) check_tensor("v_cond", *v_cond, {d.B, d.two_p}, v);
  if (h_cond.has_value()) check_tensor("h_cond", *h_cond, {d.B, d.two_p}, v);
  const int64_t N = d.H * d.W;
  const auto opt = v.options();

  at::Tensor v_pre = at::empty({d.B, d.two_p, d.H, d.W}, opt);
  if (winograd_conv_applies(d.k / 2 + 1, d.k)) {
    winograd_conv_forward(v, v_weight, vertical_conv(d.k, first_layer), v_bias, v_pre);
  } else {
    const KernelTaps vt = vertical_taps(d.k, first_layer, d.H, d.W);
    tap_conv_forward(v, vt.forward_weight(v_weight), vt.forward, v_bias, v_pre);
  }
  if (v_cond.has_value()) v_pre.view({d.B, d.two_p, N}).add_(v_cond->unsqueeze(2));
  at::Tensor v_out = at::empty({d.B, d.p, d.H, d.W}, opt);
  gate_into(v_pre, v_out);

  bool centre = false;
  const KernelTaps ht = horizontal_taps(d.k, first_layer, color_channels, d.W, d.two_p, d.c_in, centre);
  at::Tensor h_pre = at::empty({d.B, d.two_p, d.H, d.W}, opt);
  tap_conv_forward(h, ht.forward_weight(h_weight), ht.forward, h_bias, h_pre);
  at::Tensor h_pre3 = h_pre.view({d.B, d.two_p, N});
  pointwise(link_weight, v_pre.view({d.B, d.two_p, N}), h_pre3);
  if (h_cond.has_value()) h_pre3.add_(h_cond->unsqueeze(2));
  at::Tensor g = at::empty({d.B, d.p, N}, opt);
  gate_into(h_pre3, g);

  // Fresh tensors: expand().contiguous() could alias the bias, which the GEMM then overwrites.
  at::Tensor h_out = first_layer ? at::empty({d.B, d.p, N}, opt).copy_(res_bias.view({1, d.p, 1}))
                                 : at::add(h.reshape({d.B, d.p, N}), res_bias.view({1, d.p, 1}));
  pointwise(res_weight * pointwise_mask(d.p, d.p, color_channels, opt), g, h_out);
  at::Tensor skip = at::empty({0}, opt);
  if (skip_weight.has_value()) {
    skip = at::empty({d.B, d.s, N}, opt).copy_(skip_bias->view({1, d.s, 1}));
    pointwise(*skip_weight * pointwise_mask(d.s, d.p, color_channels, opt), g, skip);
    skip = skip.view({d.B, d.s, d.H, d.W});
  }
  return {v_out, h_out.view({d.B, d.p, d.H, d.W}), skip, v_pre, h_pre};
}

std::vector<at::Tensor> gated_pixelcnn_layer_backward_cpu(
    const at::Tensor& grad_v_out, const at::Tensor& grad_h_out, const c10::optional<at::Tensor>& grad_skip,
    const at::Tensor& v, const at::Tensor& h, const at::Tensor& v_pre, const at::Tensor& h_pre,
    const at::Tensor& v_weight, const at::Tensor& h_weight, const at::Tensor& link_weight,
    const at::Tensor& res_weight, const c10::optional<at::Tensor>& skip_weight, bool first_layer,
    int64_t color_channels, std::array<bool, 13> need) {
  const Dims d = check_args(v, h, v_weight, h_weight, link_weight, res_weight, skip_weight, first_layer, color_channels);
  check_tensor("grad_v_out", grad_v_out, {d.B, d.p, d.H, d.W}, v);
  check_tensor("grad_h_out", grad_h_out, {d.B, d.p, d.H, d.W}, v);
  check_tensor("v_pre", v_pre, {d.B, d.two_p, d.H, d.W}, v);
  check_tensor("h_pre", h_pre, {d.B, d.two_p, d.H, d.W}, v);
  TORCH_CHECK_VALUE(grad_skip.has_value() == skip_weight.has_value(),
                    "gated_pixelcnn_layer_backward: grad_skip goes with skip_weight");
  if (grad_skip.has_value()) check_tensor("grad_skip", *grad_skip, {d.B, d.s, d.H, d.W}, v);
  const int64_t N = d.H * d.W, p = d.p;
  const auto opt = v.options();
  std::vector<at::Tensor> grads;  // distinct empty tensors: outputs must not alias
  for (int i = 0; i < 13; ++i) grads.push_back(at::empty({0}, opt));

  const at::Tensor vp = v_pre.contiguous().view({d.B, d.two_p, N}), hp = h_pre.contiguous().view({d.B, d.two_p, N});
  const at::Tensor gho = grad_h_out.reshape({d.B, p, N});
  // Gradients of the horizontal gate's output g, then of its pre-activations.
  const at::Tensor res_m = res_weight * pointwise_mask(p, p, color_channels, opt);
  at::Tensor dg = pointwise(res_m.t(), gho);
  at::Tensor gs;
  at::Tensor skip_m;
  if (skip_weight.has_value()) {
    gs = grad_skip->reshape({d.B, d.s, N});
    skip_m = *skip_weight * pointwise_mask(d.s, p, color_channels, opt);
    pointwise(skip_m.t(), gs, dg);
  }
  const at::Tensor th = fast_tanh(hp.narrow(1, 0, p)), sh = at::sigmoid(hp.narrow(1, p, p));
  const at::Tensor dH = gate_backward(dg, th, sh);  // (B, 2p, N)
  at::Tensor dV = gate_backward(grad_v_out.reshape({d.B, p, N}), fast_tanh(vp.narrow(1, 0, p)),
                                at::sigmoid(vp.narrow(1, p, p)));
  pointwise(link_weight.t(), dH, dV);
  const at::Tensor dV4 = dV.view({d.B, d.two_p, d.H, d.W}), dH4 = dH.view({d.B, d.two_p, d.H, d.W});

  if (winograd_conv_applies(d.k / 2 + 1, d.k)) {
    auto [grad_v, grad_w] =
        winograd_conv_backward(v, dV4, v_weight, vertical_conv(d.k, first_layer), need[0], need[2]);
    if (need[0]) grads[0] = grad_v;
    if (need[2]) grads[2] = grad_w;
  } else {
    const KernelTaps vt = vertical_taps(d.k, first_layer, d.H, d.W);
    if (need[0]) {
      grads[0] = at::empty({d.B, d.c_in, d.H, d.W}, opt);
      tap_conv_forward(dV4, vt.transposed_weight(v_weight), vt.transposed, c10::nullopt, grads[0]);
    }
    if (need[2]) grads[2] = vt.unpack_weight_grad(tap_conv_weight_grad(v, dV4, vt.forward), v_weight);
  }
  bool centre = false;
  const KernelTaps ht = horizontal_taps(d.k, first_layer, color_channels, d.W, d.two_p, d.c_in, centre);
  if (need[1]) {
    grads[1] = at::empty({d.B, d.c_in, d.H, d.W}, opt);
    tap_conv_forward(dH4, ht.transposed_weight(h_weight), ht.transposed, c10::nullopt, grads[1]);
    at::Tensor g3 = grads[1].view({d.B, d.c_in, N});
    if (centre) {
      const at::Tensor wc = h_weight.select(2, 0).select(2, d.k / 2) *
                            centre_mask(d.two_p, d.c_in, color_channels, first_layer, opt);
      pointwise(wc.t(), dH, g3);
    }
    if (!first_layer) g3.add_(gho);
  }
  if (need[11]) grads[11] = dV.sum(2);
  if (need[3]) grads[3] = need[11] ? grads[11].sum(0) : dV.sum({0, 2});
  if (need[4]) grads[4] = ht.unpack_weight_grad(tap_conv_weight_grad(h, dH4, ht.forward), h_weight);
  if (need[12]) grads[12] = dH.sum(2);
  if (need[5]) grads[5] = need[12] ? grads[12].sum(0) : dH.sum({0, 2});
  if (need[6]) grads[6] = at::bmm(dH, vp.transpose(1, 2)).sum(0);
  const bool need_g = need[7] || need[9];
  const at::Tensor g = need_g ? th * sh : at::Tensor();
  if (need[7]) grads[7] = at::bmm(gho, g.transpose(1, 2)).sum(0) * pointwise_mask(p, p, color_channels, opt);
  if (need[8]) grads[8] = gho.sum({0, 2});
  if (need[9] && gs.defined())
    grads[9] = at::bmm(gs, g.transpose(1, 2)).sum(0) * pointwise_mask(d.s, p, color_channels, opt);
  if (need[10] && gs.defined()) grads[10] = gs.sum({0, 2});
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("gated_pixelcnn_layer", &gated_pixelcnn_layer_cpu);
  m.impl("gated_pixelcnn_layer_backward", &gated_pixelcnn_layer_backward_cpu);
}

}  // namespace fastgen::cpu
