// Sparse-tap 2-D convolution on the CPU: the engine under masked_conv2d, the shifted
// convolutions of gated_pixelcnn_layer and causal_conv1d (a one-row image).
//
//   out[b, o, h, w] = bias[o] + sum_t sum_{i visible} W[t, o, i] * in[b, i, h + dh[t], w + dw[t]]
//
// with zeros outside the image. Only the listed taps are computed: a PixelCNN mask's
// zero taps never reach the micro-kernel. Taps are sorted by dh, so the taps that stay
// inside the image for one output row are one contiguous range (rows above or below the
// image are skipped, not multiplied by padding). At most one tap, `restricted`, which must
// be the first or the last, sees only input channels [lo[o], hi[o]) for output channel o
// (the centre tap of a colour mask); its packed weights are zero outside that range and
// the k loop of each group of output channels stops at the group's widest range.
//
// The SIMD lanes of the micro-kernel hold output channels when there are enough of them,
// else pixels of a row (a layer with 1 or 3 output channels, or the input gradient of a
// first layer), whichever wastes fewer lanes.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "tap_gemm.h"

namespace fastgen::cpu {

struct TapSet {
  std::vector<int64_t> dh, dw;  // input offset of each tap, sorted by dh
  int64_t restricted = -1;      // index of the channel-restricted tap, or -1
  std::vector<int64_t> lo, hi;  // per output channel: visible input channels at that tap

  int64_t size() const { return static_cast<int64_t>(dh.size()); }
  bool visible(int64_t t, int64_t o, int64_t i) const { return t != restricted || (lo[o] <= i && i < hi[o]); }
};

// The kept taps of a convolution whose weight is (C_out, C_in, kh, kw): `forward` (output <-
// input), `transposed` (the input gradient: forward taps negated, in reverse order; ops may
// leave the last forward tap out of it and apply that one otherwise) and `index`, the
// flattened kernel position (row * kw + column) of each forward tap.
struct KernelTaps {
  TapSet forward, transposed;
  std::vector<int64_t> index;

  void add(int64_t position, int64_t dh, int64_t dw);
  // Fills `transposed` from the first `count` forward taps (all of them by default).
  void transpose(int64_t count = -1);
  at::Tensor forward_weight(const at::Tensor& weight) const;     // (T, C_out, C_in)
  at::Tensor transposed_weight(const at::Tensor& weight) const;  // (T', C_in, C_out)
  // (T, C_in, C_out) tap gradients -> weight's shape, zero at the taps not kept.
  at::Tensor unpack_weight_grad(const at::Tensor& grad, const at::Tensor& weight) const;
};

// out (B, c_out, H, W), contiguous, is overwritten. in (B, c_in, H, W), any strides.
// weight (T, c_out, c_in), contiguous; its invisible (o, i) pairs are ignored.
void tap_conv_forward(const at::Tensor& in, const at::Tensor& weight, const TapSet& taps,
                      const c10::optional<at::Tensor>& bias, at::Tensor& out);

// Weight gradient (T, c_in, c_out): sum over b, h, w of
// grad_out[b, o, h, w] * in[b, i, h + dh[t], w + dw[t]], zero for invisible pairs.
// in and grad_out: any strides.
at::Tensor tap_conv_weight_grad(const at::Tensor& in, const at::Tensor& grad_out, const TapSet& taps);

}  // namespace fastgen::cpu
