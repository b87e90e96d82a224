// PixelCNN masked 2-D convolution on the CPU: forward, and the gradients of input, weight
// and bias. Only the taps that a mask keeps are computed (24 or 25 of 49 for 7x7), by the
// sparse-tap engine in tap_conv.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "tap_conv.h"

namespace fastgen::cpu {
namespace {

// The kept taps of a mask, as two sparse-tap convolutions:
//   forward:    output pixel <- input pixels above and to the left; for colour masks the
//               centre tap is last and output group g sees input groups < g (mask A) or
//               <= g (mask B);
//   transposed: the gradient of the input, input pixel <- output pixels below and to the
//               right: the same taps negated and in reverse order (centre first).
// Taps whose offset leaves the image for every pixel (a large dilation) are dropped.
KernelTaps masked_taps(int64_t k, bool mask_a, int64_t groups, int64_t dilation, int64_t c_out, int64_t c_in,
                       int64_t H, int64_t W) {
  const int64_t c = k / 2;
  KernelTaps m;
  for (int64_t kh = 0; kh <= c; ++kh)
    for (int64_t kw = 0; kw < k; ++kw) {
      const bool kept = kh < c || kw < c || (kw == c && (!mask_a || groups > 1));
      const int64_t dh = (kh - c) * dilation, dw = (kw - c) * dilation;
      if (kept && -dh < H && std::abs(dw) < W) m.add(kh * k + kw, dh, dw);
    }
  m.transpose();
  const int64_t T = m.forward.size();
  if (groups > 1 && T > 0) {  // the centre tap, last, is kept whenever the image is not empty
    const int64_t gi = c_in / groups, go = c_out / groups, own = mask_a ? 0 : 1;
    m.forward.restricted = T - 1;
    m.forward.lo.assign(c_out, 0);
    for (int64_t o = 0; o < c_out; ++o) m.forward.hi.push_back((o / go + own) * gi);
    m.transposed.restricted = 0;
    m.transposed.hi.assign(c_in, c_out);
    for (int64_t i = 0; i < c_in; ++i) m.transposed.lo.push_back((i / gi + 1 - own) * go);
  }
  return m;
}

// The op can be called directly through torch.ops, so it checks everything that could
// make it read out of bounds; fastgen.ops.masked_conv2d gives friendlier errors first.
void check_args(const at::Tensor& x, const at::Tensor& weight, c10::string_view mask_type, int64_t groups,
                int64_t dilation) {
  TORCH_CHECK_VALUE(x.dim() == 4, "masked_conv2d: x must be (B, C, H, W), got shape ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1,
                    "masked_conv2d: weight must be (C_out, C_in, k, k) with odd k, got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(1) == x.size(1), "masked_conv2d: weight has ", weight.size(1),
                    " input channels but x has ", x.size(1));
  TORCH_CHECK_VALUE(mask_type == "A" || mask_type == "B", "masked_conv2d: mask_type must be 'A' or 'B', got '",
                    mask_type, "'");
  TORCH_CHECK_VALUE(groups >= 1 && x.size(1) % groups == 0 && weight.size(0) % groups == 0,
                    "masked_conv2d: color_channels must divide the input and output channels, got ", groups);
  TORCH_CHECK_VALUE(dilation >= 1, "masked_conv2d: dilation must be >= 1, got ", dilation);
  TORCH_CHECK_TYPE(x.scalar_type() == weight.scalar_type() &&
                       (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
                   "masked_conv2d (cpu): x and weight must both be float32 or float64, got ", x.scalar_type(),
                   " and ", weight.scalar_type());
  TORCH_CHECK_VALUE(x.device().is_cpu() && weight.device().is_cpu(), "masked_conv2d (cpu): tensors must be on the CPU");
}

KernelTaps taps_for(const at::Tensor& x, const at::Tensor& weight, c10::string_view mask_type, int64_t groups,
                    int64_t dilation) {
  // Beyond the image size every off-centre tap leaves the image, whatever the dilation:
  // clamping changes nothing and keeps the offsets far from overflow.
  const int64_t H = x.size(2), W = x.size(3), d = std::min(dilation, std::max<int64_t>({H, W, 1}));
  return masked_taps(weight.size(2), mask_type == "A", groups, d, weight.size(0), x.size(1), H, W);
}

at::Tensor masked_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                             c10::string_view mask_type, int64_t color_channels, int64_t dilation) {
  check_args(x, weight, mask_type, color_channels, dilation);
  const int64_t c_out = weight.size(0);
  if (bias.has_value())
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == c_out && bias->scalar_type() == x.scalar_type() &&
                          bias->device().is_cpu(),
                      "masked_conv2d: bias must be a (C_out,) CPU tensor of x's dtype, got shape ", bias->sizes());
  const KernelTaps taps = taps_for(x, weight, mask_type, color_channels, dilation);
  at::Tensor out = at::empty({x.size(0), c_out, x.size(2), x.size(3)}, x.options());
  tap_conv_forward(x, taps.forward_weight(weight), taps.forward, bias, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, c10::string_view mask_type,
    int64_t color_channels, int64_t dilation, std::array<bool, 3> output_mask) {
  check_args(x, weight, mask_type, color_channels, dilation);
  const int64_t c_out = weight.size(0);
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({x.size(0), c_out, x.size(2), x.size(3)}) &&
                        grad_out.scalar_type() == x.scalar_type() && grad_out.device().is_cpu(),
                    "masked_conv2d_backward: grad_out must be (B, C_out, H, W) of x's dtype, got shape ",
                    grad_out.sizes());
  const KernelTaps taps = taps_for(x, weight, mask_type, color_channels, dilation);
  at::Tensor grad_x = at::empty({0}, x.options()), grad_w = at::empty({0}, x.options());
  at::Tensor grad_b = at::empty({0}, x.options());
  if (output_mask[0]) {
    grad_x = at::empty(x.sizes(), x.options());
    tap_conv_forward(grad_out, taps.transposed_weight(weight), taps.transposed, c10::nullopt, grad_x);
  }
  if (output_mask[1]) grad_w = taps.unpack_weight_grad(tap_conv_weight_grad(x, grad_out, taps.forward), weight);
  if (output_mask[2]) grad_b = grad_out.sum({0, 2, 3});
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("masked_conv2d", &masked_conv2d_cpu);
  m.impl("masked_conv2d_backward", &masked_conv2d_backward_cpu);
}

}  // namespace fastgen::cpu
