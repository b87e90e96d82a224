// Winograd F(2, R) along rows, on the sparse-tap engine: the vertical stack of Gated
// PixelCNN (k <= 7), a convolution whose kernel rows are R consecutive row offsets, each with
// the same column taps:
//
//   out[b, o, h, w] = bias[o] + sum_{r < R, q, i} W[o, i, r, q] in[b, i, h + dh0 + r, w + dw[q]]
//
// with zeros outside the image. Output rows pair up as (2j, 2j + 1); the pair reads the
// R + 1 input rows 2j + dh0 + m (m <= R), and Toom-Cook on R of the points 0, 1, -1, 1/2
// and on infinity gives it from R + 1 row convolutions (the column taps
// only) instead of 2R:
//
//   out[2j + e] = sum_a AT[e, a] M_a[j],   M_a = V_a (*) U_a,
//   V_a = sum_r G[a, r] W[:, :, r, :],      U_a[j] = sum_m BT[a, m] in[2j + dh0 + m]
//
// so a 4 x 7 kernel (k = 7) costs 5/8 of its direct FLOPs, forward and both gradients (the
// backward is the same algorithm transposed: dM_a = sum_e AT[e, a] dout[2j + e], then
// dV_a = weight_grad(U_a, dM_a), dU_a = transposed row convolution, scattered back through
// BT). The transforms are element-wise passes over half-height images; the row convolutions
// run on tap_conv.h. Pairs (not larger groups) keep it causal by construction: the last
// input row reaches only the product at infinity, which feeds only the pair's last row.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace fastgen::cpu {

struct RowConv {
  int64_t dh0;              // row offset of kernel row 0
  std::vector<int64_t> dw;  // column offset of each column tap q
};

// Whether F(2, R) is implemented and accurate for R kernel rows.
bool row_winograd_applies(int64_t R);

// in (B, C_in, H, W), any strides; weight (C_out, C_in, R, nq); out (B, C_out, H, W)
// contiguous, overwritten.
void row_winograd_forward(const at::Tensor& in, const at::Tensor& weight, const RowConv& conv,
                          const c10::optional<at::Tensor>& bias, at::Tensor& out);

// (grad of in, grad of weight); each undefined unless asked for.
std::tuple<at::Tensor, at::Tensor> row_winograd_backward(const at::Tensor& in, const at::Tensor& grad_out,
                                                         const at::Tensor& weight, const RowConv& conv, bool need_in,
                                                         bool need_weight);

}  // namespace fastgen::cpu
