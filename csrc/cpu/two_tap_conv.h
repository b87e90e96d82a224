// Two-tap dilated 1-D convolution by Winograd F(2, 2) along time: WaveNet's K = 2 causal
// conv (forward and input gradient) and the conv of the gated residual block.
//
//   y[o, t] = bias[o] + sum_i Wf[o, i] x[i, t + off] + Ws[o, i] x[i, t + off + d]
//
// with x zero outside [0, T). Output times pair up as (t, t + d); with a = x[t + off],
// b = x[t + off + d] and c = x[t + off + 2d],
//   y[t] = m1 + m2,  y[t + d] = m2 + m3,  m1 = Wf (a - b),  m2 = (Wf + Ws) b,  m3 = Ws (c - b):
// three products per pair where the direct form takes four, 25% fewer FLOPs on a layer
// that is compute-bound. The pairs of a block of 2d times are its first half with its
// second; each run of MR first-half times is packed once (every input channel's a | b | c,
// zeros outside the sequence, at a stride that never aliases in cache) and reused by every
// group of output channels. The lanes hold MR consecutive times, so the pairing needs
// d >= MR (two_tap_conv_applies); smaller dilations go through the tap engine.
#pragma once

#include <ATen/ATen.h>

namespace fastgen::cpu {

struct TwoTapWeights {
  at::Tensor packed;  // (ceil(C_out / NR), C_in, 3, NR): [Wf, Wf + Ws, Ws], zero past C_out
  int64_t c_out, c_in;
};

// w_first, w_second: (C_out, C_in), any strides.
TwoTapWeights pack_two_tap(const at::Tensor& w_first, const at::Tensor& w_second);

// Whether dilation d fills the lanes of the two-tap kernel for this dtype.
bool two_tap_conv_applies(at::ScalarType dtype, int64_t d);

// Output times [t0, t1) of one sequence, serially. x: C_in rows of stride x_stride holding
// times [0, T); y: C_out rows of stride y_stride holding times [t0, t1) (y points at t0);
// bias: C_out values or null. With accumulate, adds to y instead of overwriting it.
template <typename T>
void two_tap_conv_range(const T* x, int64_t x_stride, int64_t T_len, const TwoTapWeights& w, const T* bias,
                        int64_t off, int64_t d, int64_t t0, int64_t t1, T* y, int64_t y_stride, bool accumulate);

// Whole batch, in parallel: x (B, C_in, T) with unit time stride, out (B, C_out, T)
// contiguous and overwritten.
void two_tap_conv(const at::Tensor& x, const TwoTapWeights& w, const c10::optional<at::Tensor>& bias, int64_t off,
                  int64_t d, at::Tensor& out);

}  // namespace fastgen::cpu
