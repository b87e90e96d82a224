// Winograd F(2 x 2, R x k) on the CPU: the vertical stack of Gated PixelCNN (k <= 7), a dense
// convolution of R consecutive kernel rows and k consecutive kernel columns,
//
//   out[b, o, h, w] = bias[o] + sum_{r < R, q < k, i} W[o, i, r, q] in[b, i, h + dh0 + r, w + dw0 + q]
//
// with zeros outside the image. Outputs go in 2 x 2 tiles. Along rows, Toom-Cook F(2, R) on
// R of the points 0, 1, -1, 1/2 and on infinity; along columns the k taps split into pieces
// of at most 4 (7 = 4 + 3, 5 = 3 + 2), each F(2, r) on the same points. A tile is then
//
//   out = AT_r M AT_c^T,   M[a, b] = V[a, b] U[a, b]   (a GEMM over channels per point pair),
//   V = G_r W G_c^T (the weights, once per call),   U = BT_r d BT_c^T (the tile's input window)
//
// so a 4 x 7 kernel takes 5 x (5 + 4) = 45 GEMMs per 4 outputs instead of 112 (40% of the
// direct FLOPs), forward and both gradients: the backward is the same algorithm transposed
// (dM = AT_r^T dout AT_c, dU[a, b] = V[a, b]^T dM[a, b] scattered back through BT, and
// dV[a, b] = sum over tiles of dM[a, b] U[a, b]^T, then dW = G_r^T dV G_c).
//
// Causal and exact by construction. In F(2, r) with the points 0 and infinity, the first
// input of a pair reaches only the product at 0, which feeds only the first output, and the
// last input only the product at infinity, which feeds only the second output. So no output
// depends, even by rounding, on a row or column its kernel does not reach: the tests check
// exact zeros of the Jacobian outside the receptive field (larger tiles, F(4, r), would leave
// rounding-level traces of such inputs).
//
// Data: the input and the output gradient are copied to zero-padded channels-last buffers
// once; the transforms are element-wise passes over channel vectors; the GEMMs run on the
// tap-GEMM micro-kernel (tap_gemm.h) per block of tile rows of one image, so the transformed
// block stays in cache.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace fastgen::cpu {

struct WinogradConv {
  int64_t dh0, dw0;  // input offset of kernel row 0 and of kernel column 0
};

// Whether the transforms exist for R kernel rows and k kernel columns.
bool winograd_conv_applies(int64_t R, int64_t k);

// in (B, C_in, H, W), any strides; weight (C_out, C_in, R, k); out (B, C_out, H, W)
// contiguous, overwritten.
void winograd_conv_forward(const at::Tensor& in, const at::Tensor& weight, const WinogradConv& conv,
                           const c10::optional<at::Tensor>& bias, at::Tensor& out);

// (grad of in, grad of weight); each undefined unless asked for. in, grad_out: any strides.
std::tuple<at::Tensor, at::Tensor> winograd_conv_backward(const at::Tensor& in, const at::Tensor& grad_out,
                                                          const at::Tensor& weight, const WinogradConv& conv,
                                                          bool need_in, bool need_weight);

}  // namespace fastgen::cpu
