// PixelCNN masked 2-D convolution on the CPU: forward, and the gradients of input, weight
// and bias. Only the taps that a mask keeps are computed (24 or 25 of 49 for 7x7), by the
// sparse-tap engine in tap_conv.cpp. Also its one-pixel form for incremental sampling
// (masked_conv2d_step), read straight out of a padded channels-last buffer.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>
#include <tuple>
#include <vector>

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

// ------------------------------------------------------------------------ one-pixel step
//
// out[b, o] = bias[o] + sum_{t, ci} packed[t * C + ci, o] * buffer[b, i + kh_t * d, j + kw_t * d, ci]
//
// over the kept taps t in raster order (the c = k/2 rows above the centre, the c taps left of
// it, then the centre when mask B or colour groups keep part of it); buffer holds the layer's
// input zero-padded by P = d * c rows on top and P columns each side, so every tap is in
// bounds (fastgen/ops/masked_conv2d.py, masked_conv2d_step, has the layout). One GEMM
// (B, T * C) @ (T * C, C_out) on the tap-GEMM micro-kernel: output channels in the SIMD
// lanes (read from the packed weight's rows), batch rows in the register tile, each k's
// input read in place from the buffer (no gathered copy of the window).

int64_t step_taps(int64_t k, bool centre) { return (k / 2) * k + k / 2 + (centre ? 1 : 0); }

template <typename T>
void step_impl(const at::Tensor& buffer, const at::Tensor& packed, const T* bias, int64_t i, int64_t j, int64_t k,
               int64_t n_taps, int64_t d, at::Tensor& out) {
  const TapGemm<T>& gemm = tap_gemm<T>();
  const int64_t B = buffer.size(0), C = buffer.size(3), c_out = packed.size(1), K = n_taps * C, mr = gemm.mr;
  const int64_t sb = buffer.stride(0), sh = buffer.stride(1), sw = buffer.stride(2), sc = buffer.stride(3);
  T* Y = out.data_ptr<T>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < c_out; ++o) Y[b * c_out + o] = bias ? bias[o] : T(0);
  if (K == 0 || B == 0) return;
  std::vector<int64_t> aoff(K), boff(K);  // row k of the packed weight, and its input in the buffer
  for (int64_t t = 0; t < n_taps; ++t) {
    const int64_t kh = t < (k / 2) * k ? t / k : k / 2, kw = t < (k / 2) * k ? t % k : t - (k / 2) * k;
    for (int64_t ci = 0; ci < C; ++ci) {
      aoff[t * C + ci] = (t * C + ci) * c_out;
      boff[t * C + ci] = kh * d * sh + kw * d * sw + ci * sc;
    }
  }
  // Batch rows split into nearly equal register tiles; output channels into full lane blocks
  // and a partial last block, which is copied once per call into a zero-padded (K, mr) panel
  // (the micro-kernel always reads and writes mr lanes).
  std::vector<std::pair<int64_t, int64_t>> rows;
  const int64_t n_row_tiles = (B + gemm.nr_max - 1) / gemm.nr_max;
  for (int64_t r = 0, start = 0; r < n_row_tiles; ++r) {
    const int64_t size = B / n_row_tiles + (r < B % n_row_tiles ? 1 : 0);
    rows.emplace_back(start, size);
    start += size;
  }
  const int64_t full = c_out / mr, blocks = full + (c_out % mr ? 1 : 0), tail = c_out - full * mr;
  std::vector<T> tail_panel;
  if (tail) {
    tail_panel.assign(K * mr, T(0));
    const T* src = packed.data_ptr<T>() + full * mr;
    for (int64_t kk = 0; kk < K; ++kk)
      for (int64_t m = 0; m < tail; ++m) tail_panel[kk * mr + m] = src[kk * c_out + m];
  }
  const T* A = packed.data_ptr<T>();
  const T* X = buffer.data_ptr<T>() + i * sh + j * sw;
  const int64_t items = static_cast<int64_t>(rows.size()) * blocks;
  // A step is small: threads pay off only for the large ones (a wide batch of wide layers).
  const int64_t grain = B * K * c_out < (int64_t{1} << 21) ? items : 1;
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> tile(gemm.nr_max * mr);
    for (int64_t item = begin; item < end; ++item) {
      const auto [b0, nb] = rows[item / blocks];
      const int64_t q = item % blocks;
      const T* x = X + b0 * sb;
      if (q < full) {
        gemm.gather[nb](K, A + q * mr, aoff.data(), x, boff.data(), sb, Y + b0 * c_out + q * mr, c_out, true);
      } else {
        gemm.packed[nb](K, tail_panel.data(), nullptr, x, boff.data(), sb, tile.data(), mr, false);
        for (int64_t r = 0; r < nb; ++r)
          for (int64_t m = 0; m < tail; ++m) Y[(b0 + r) * c_out + full * mr + m] += tile[r * mr + m];
      }
    }
  });
}

// The op can be called directly through torch.ops, so it checks everything that could make
// it read out of bounds; fastgen.ops.masked_conv2d_step gives friendlier errors first.
at::Tensor masked_conv2d_step_cpu(const at::Tensor& buffer, const at::Tensor& packed_weight,
                                  const c10::optional<at::Tensor>& bias, int64_t i, int64_t j, int64_t kernel_size,
                                  c10::string_view mask_type, int64_t color_channels, int64_t dilation) {
  const char* op = "masked_conv2d_step";
  TORCH_CHECK_VALUE(buffer.dim() == 4, op, ": buffer must be (B, H + P, W + 2P, C_in), got shape ", buffer.sizes());
  TORCH_CHECK_VALUE(kernel_size >= 1 && kernel_size % 2 == 1, op, ": kernel_size must be odd and >= 1, got ",
                    kernel_size);
  TORCH_CHECK_VALUE(mask_type == "A" || mask_type == "B", op, ": mask_type must be 'A' or 'B', got '", mask_type, "'");
  TORCH_CHECK_VALUE(dilation >= 1, op, ": dilation must be >= 1, got ", dilation);
  const int64_t C = buffer.size(3), c = kernel_size / 2;
  TORCH_CHECK_VALUE(packed_weight.dim() == 2, op, ": packed_weight must be (taps * C_in, C_out), got shape ",
                    packed_weight.sizes());
  const int64_t c_out = packed_weight.size(1);
  TORCH_CHECK_VALUE(color_channels >= 1 && C % color_channels == 0 && c_out % color_channels == 0, op,
                    ": color_channels must divide the input and output channels, got ", color_channels);
  // P = d * c rows of padding on top, so at least P + 1 rows; checked by division (no overflow).
  TORCH_CHECK_VALUE(c == 0 || dilation <= (buffer.size(1) - 1) / c, op, ": buffer of shape ", buffer.sizes(),
                    " is too small for kernel_size=", kernel_size, " and dilation=", dilation,
                    " (it needs P = dilation * (kernel_size // 2) rows on top and P columns each side)");
  const int64_t P = dilation * c, H = buffer.size(1) - P, W = buffer.size(2) - 2 * P;
  TORCH_CHECK_VALUE(H >= 1 && W >= 1, op, ": buffer of shape ", buffer.sizes(), " is too small for kernel_size=",
                    kernel_size, " and dilation=", dilation, " (it needs P = ", P,
                    " rows on top and P columns each side of an image of at least 1x1)");
  TORCH_CHECK_VALUE(0 <= i && i < H && 0 <= j && j < W, op, ": pixel (i, j) = (", i, ", ", j,
                    ") is outside the ", H, "x", W, " image of the buffer");
  const int64_t n_taps = step_taps(kernel_size, mask_type == "B" || color_channels > 1);
  TORCH_CHECK_VALUE(packed_weight.size(0) == n_taps * C, op, ": packed_weight must be (taps * C_in, C_out) = (",
                    n_taps, " * ", C, ", C_out), got shape ", packed_weight.sizes());
  TORCH_CHECK_TYPE(buffer.scalar_type() == packed_weight.scalar_type() &&
                       (buffer.scalar_type() == at::kFloat || buffer.scalar_type() == at::kDouble),
                   op, " (cpu): buffer and packed_weight must both be float32 or float64, got ", buffer.scalar_type(),
                   " and ", packed_weight.scalar_type());
  TORCH_CHECK_VALUE(buffer.device().is_cpu() && packed_weight.device().is_cpu(), op,
                    " (cpu): tensors must be on the CPU");
  if (bias.has_value())
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == c_out && bias->scalar_type() == buffer.scalar_type() &&
                          bias->device().is_cpu(),
                      op, ": bias must be a (C_out,) = (", c_out, ",) CPU tensor of buffer's dtype, got shape ",
                      bias->sizes(), " and dtype ", bias->scalar_type());
  const at::Tensor packed = packed_weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({buffer.size(0), c_out}, buffer.options());
  AT_DISPATCH_FLOATING_TYPES(buffer.scalar_type(), "masked_conv2d_step", [&] {
    step_impl<scalar_t>(buffer, packed, b.defined() ? b.data_ptr<scalar_t>() : nullptr, i, j, kernel_size, n_taps,
                        dilation, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("masked_conv2d", &masked_conv2d_cpu);
  m.impl("masked_conv2d_backward", &masked_conv2d_backward_cpu);
  m.impl("masked_conv2d_step", &masked_conv2d_step_cpu);
}

}  // namespace fastgen::cpu
