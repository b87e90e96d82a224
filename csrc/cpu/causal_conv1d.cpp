// Causal dilated 1-D convolution on the CPU: forward, the gradients of input, weight and
// bias, and the one-step form on a state buffer (fastgen/ops/causal_conv1d.py has the math).
//
// Tap k of the weight multiplies the input s_k = (K-1-k) * dilation steps back, so
//   out[:, :, s_k:] += W_k @ x[:, :, :T-s_k]
// for each tap: a GEMM on time-shifted strided views of x and out, with no padded copy of
// x (the left zeros are simply the columns a shifted GEMM does not write). Taps with
// s_k >= T reach only the zeros before the start and are skipped. With groups = 1 each
// tap is one batched GEMM over the sequences, except that K = 2 with a dilation that fills
// the SIMD lanes (every WaveNet layer past the first few) runs the two-tap Winograd kernel
// (two_tap_conv.h: 3 products per pair of outputs where the taps take 4) for the forward
// and the input gradient. Other groups of more than one input channel run a GEMM per
// sequence, group and tap (MKL threads each call itself, so the loops around them stay
// serial). One input channel per group (depthwise) has no GEMM to speak of and runs a
// fused loop over the taps per (batch, channel) row, in parallel over rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <tuple>

#include "two_tap_conv.h"

namespace fastgen::cpu {
namespace {

// The op can be called directly through torch.ops, so it checks everything that could
// make it read out of bounds; fastgen.ops.causal_conv1d gives friendlier errors first.
void check_conv_args(const char* op, const at::Tensor& x, const at::Tensor& weight, int64_t dilation,
                     int64_t groups) {
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be (B, C_in, T), got shape ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 3 && weight.size(2) >= 1 && weight.size(0) >= 1,
                    op, ": weight must be (C_out, C_in / groups, K) with K >= 1, got shape ", weight.sizes());
  TORCH_CHECK_VALUE(dilation >= 1, op, ": dilation must be >= 1, got ", dilation);
  TORCH_CHECK_VALUE(groups >= 1 && x.size(1) % groups == 0 && weight.size(0) % groups == 0, op,
                    ": groups must divide the input and output channels, got groups=", groups, " with ", x.size(1),
                    " and ", weight.size(0), " channels");
  TORCH_CHECK_VALUE(weight.size(1) * groups == x.size(1), op, ": weight has ", weight.size(1),
                    " input channels per group but x has ", x.size(1), " channels in ", groups, " groups");
  TORCH_CHECK_TYPE(x.scalar_type() == weight.scalar_type() &&
                       (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
                   op, " (cpu): x and weight must both be float32 or float64, got ", x.scalar_type(), " and ",
                   weight.scalar_type());
  TORCH_CHECK_VALUE(x.device().is_cpu() && weight.device().is_cpu(), op, " (cpu): tensors must be on the CPU");
}

void check_bias(const char* op, const c10::optional<at::Tensor>& bias, const at::Tensor& x, int64_t c_out) {
  if (bias.has_value())
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == c_out && bias->scalar_type() == x.scalar_type() &&
                          bias->device().is_cpu(),
                      op, ": bias must be a (C_out,) = (", c_out, ",) CPU tensor of x's dtype, got shape ",
                      bias->sizes(), " and dtype ", bias->scalar_type());
}

// How far back tap k reads; >= T means never inside the sequence. Computed without
// overflow for any dilation.
int64_t tap_shift(int64_t k, int64_t K, int64_t dilation, int64_t T) {
  const int64_t back = K - 1 - k;
  return back == 0 ? 0 : (dilation >= T ? T : std::min(back * dilation, T));
}

// ------------------------------------------------------------------------ GEMM path
// BLAS calls on time-shifted views: their time stride is 1 and their row stride T, which
// BLAS takes as is, so nothing is padded or copied.

at::Tensor batched(const at::Tensor& matrix, int64_t batch) { return matrix.unsqueeze(0).expand({batch, -1, -1}); }

// groups == 1: one batched call per tap, the weight broadcast along the batch (fewer,
// larger BLAS calls; measured faster than a loop over the batch here).
at::Tensor gemm_forward_dense(const at::Tensor& x, const at::Tensor& taps, const c10::optional<at::Tensor>& bias,
                              int64_t dilation) {
  const int64_t B = x.size(0), T = x.size(2), K = taps.size(0), C_out = taps.size(1);
  if (K == 2 && dilation < T && two_tap_conv_applies(x.scalar_type(), dilation)) {
    at::Tensor out = at::empty({B, C_out, T}, x.options());
    two_tap_conv(x, pack_two_tap(taps[0], taps[1]), bias, -dilation, dilation, out);
    return out;
  }
  at::Tensor out = bias.has_value() ? at::baddbmm(bias->view({1, C_out, 1}).expand({B, C_out, T}), batched(taps[K - 1], B), x)
                                    : at::bmm(batched(taps[K - 1], B), x);
  for (int64_t k = 0; k < K - 1; ++k) {
    const int64_t s = tap_shift(k, K, dilation, T);
    if (s >= T) continue;
    out.narrow(2, s, T - s).baddbmm_(batched(taps[k], B), x.narrow(2, 0, T - s));
  }
  return out;
}

at::Tensor gemm_forward(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        int64_t dilation, int64_t groups) {
  const int64_t B = x.size(0), T = x.size(2), K = weight.size(2);
  const int64_t ci_g = weight.size(1), co_g = weight.size(0) / groups;
  const at::Tensor taps = weight.permute({2, 0, 1}).contiguous();  // (K, C_out, C_in/g)
  if (groups == 1) return gemm_forward_dense(x, taps, bias, dilation);
  // Grouped: two-dimensional calls on one sequence's (channels, time) views of a group.
  at::Tensor out = at::empty({B, weight.size(0), T}, x.options());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < groups; ++g) {
      const at::Tensor xb = x[b].narrow(0, g * ci_g, ci_g);  // (C_in/g, T)
      at::Tensor ob = out[b].narrow(0, g * co_g, co_g);      // (C_out/g, T)
      const at::Tensor w_last = taps[K - 1].narrow(0, g * co_g, co_g);
      if (bias.has_value())
        at::addmm_out(ob, bias->narrow(0, g * co_g, co_g).unsqueeze(1).expand({co_g, T}), w_last, xb);
      else
        at::mm_out(ob, w_last, xb);
      for (int64_t k = 0; k < K - 1; ++k) {
        const int64_t s = tap_shift(k, K, dilation, T);
        if (s >= T) continue;
        ob.narrow(1, s, T - s).addmm_(taps[k].narrow(0, g * co_g, co_g), xb.narrow(1, 0, T - s));
      }
    }
  return out;
}

void gemm_grad_x(const at::Tensor& grad_out, const at::Tensor& weight, int64_t dilation, int64_t groups,
                 at::Tensor& grad_x) {
  const int64_t B = grad_out.size(0), T = grad_out.size(2), K = weight.size(2);
  const int64_t ci_g = weight.size(1), co_g = weight.size(0) / groups;
  const at::Tensor taps_t = weight.permute({2, 1, 0}).contiguous();  // (K, C_in/g, C_out)
  if (groups == 1 && K == 2 && dilation < T && two_tap_conv_applies(grad_out.scalar_type(), dilation)) {
    // grad_x[t] = W_1^T grad_out[t] + W_0^T grad_out[t + d]
    two_tap_conv(grad_out, pack_two_tap(taps_t[1], taps_t[0]), c10::nullopt, 0, dilation, grad_x);
    return;
  }
  if (groups == 1) {
    at::bmm_out(grad_x, batched(taps_t[K - 1], B), grad_out);
    for (int64_t k = 0; k < K - 1; ++k) {
      const int64_t s = tap_shift(k, K, dilation, T);
      if (s >= T) continue;
      grad_x.narrow(2, 0, T - s).baddbmm_(batched(taps_t[k], B), grad_out.narrow(2, s, T - s));
    }
    return;
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < groups; ++g) {
      const at::Tensor gb = grad_out[b].narrow(0, g * co_g, co_g);  // (C_out/g, T)
      at::Tensor xb = grad_x[b].narrow(0, g * ci_g, ci_g);          // (C_in/g, T)
      at::mm_out(xb, taps_t[K - 1].narrow(1, g * co_g, co_g), gb);
      for (int64_t k = 0; k < K - 1; ++k) {
        const int64_t s = tap_shift(k, K, dilation, T);
        if (s >= T) continue;
        xb.narrow(1, 0, T - s).addmm_(taps_t[k].narrow(1, g * co_g, co_g), gb.narrow(1, s, T - s));
      }
    }
}

at::Tensor gemm_grad_weight(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                            int64_t dilation, int64_t groups) {
  const int64_t B = x.size(0), T = x.size(2), K = weight.size(2);
  const int64_t ci_g = weight.size(1), co_g = weight.size(0) / groups;
  at::Tensor packed = at::zeros({K, weight.size(0), ci_g}, x.options());  // (K, C_out, C_in/g)
  for (int64_t k = 0; k < K; ++k) {
    const int64_t s = tap_shift(k, K, dilation, T);
    if (s >= T) continue;
    if (groups == 1) {
      // Per-sequence products in one batched call, then their sum.
      at::Tensor gw = packed[k];
      at::sum_out(gw, at::bmm(grad_out.narrow(2, s, T - s), x.narrow(2, 0, T - s).transpose(1, 2)), {0});
      continue;
    }
    for (int64_t g = 0; g < groups; ++g) {
      at::Tensor gw = packed[k].narrow(0, g * co_g, co_g);
      for (int64_t b = 0; b < B; ++b)
        gw.addmm_(grad_out[b].narrow(0, g * co_g, co_g).narrow(1, s, T - s),
                  x[b].narrow(0, g * ci_g, ci_g).narrow(1, 0, T - s).t());
    }
  }
  return packed.permute({1, 2, 0}).contiguous();
}

// ------------------------------------------------------------------- depthwise path
// One input channel per group: output channel o reads input channel o / (C_out / groups).
// Rows are contiguous (the caller makes x and grad_out contiguous).

template <typename scalar_t>
void depthwise_forward(const scalar_t* x, const scalar_t* w, const scalar_t* bias, scalar_t* out, int64_t B,
                       int64_t C_in, int64_t C_out, int64_t T, int64_t K, int64_t dilation) {
  const int64_t co_g = C_out / C_in;
  at::parallel_for(0, B * C_out, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / C_out, o = row % C_out;
      const scalar_t* __restrict__ xr = x + (b * C_in + o / co_g) * T;
      scalar_t* __restrict__ orow = out + row * T;
      const scalar_t* wr = w + o * K;
      const scalar_t w_last = wr[K - 1], b0 = bias ? bias[o] : scalar_t(0);
      for (int64_t t = 0; t < T; ++t) orow[t] = b0 + w_last * xr[t];
      for (int64_t k = 0; k < K - 1; ++k) {
        const int64_t s = tap_shift(k, K, dilation, T);
        const scalar_t wk = wr[k];
        for (int64_t t = s; t < T; ++t) orow[t] += wk * xr[t - s];
      }
    }
  });
}

template <typename scalar_t>
void depthwise_grad_x(const scalar_t* go, const scalar_t* w, scalar_t* gx, int64_t B, int64_t C_in, int64_t C_out,
                      int64_t T, int64_t K, int64_t dilation) {
  const int64_t co_g = C_out / C_in;
  at::parallel_for(0, B * C_in, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / C_in, c = row % C_in;
      scalar_t* __restrict__ xr = gx + row * T;
      std::fill(xr, xr + T, scalar_t(0));
      for (int64_t o = c * co_g; o < (c + 1) * co_g; ++o) {
        const scalar_t* __restrict__ gr = go + (b * C_out + o) * T;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t s = tap_shift(k, K, dilation, T);
          const scalar_t wk = w[o * K + k];
          for (int64_t t = 0; t < T - s; ++t) xr[t] += wk * gr[t + s];
        }
      }
    }
  });
}

template <typename scalar_t>
void depthwise_grad_weight(const scalar_t* go, const scalar_t* x, scalar_t* gw, int64_t B, int64_t C_in,
                           int64_t C_out, int64_t T, int64_t K, int64_t dilation) {
  const int64_t co_g = C_out / C_in;
  // Serial over batch inside each (channel, tap): a fixed summation order, so the result
  // does not depend on the thread count.
  at::parallel_for(0, C_out * K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t o = i / K, k = i % K, s = tap_shift(k, K, dilation, T);
      // Lane-wise partial sums: a float reduction vectorizes only if its order may change,
      // so the lanes are spelled out (and the order stays fixed).
      constexpr int64_t lanes = 16;
      scalar_t acc[lanes] = {};
      scalar_t tail = 0;
      for (int64_t b = 0; b < B; ++b) {
        const scalar_t* __restrict__ gr = go + (b * C_out + o) * T + s;
        const scalar_t* __restrict__ xr = x + (b * C_in + o / co_g) * T;
        const int64_t n = T - s, full = n / lanes * lanes;
        for (int64_t t = 0; t < full; t += lanes)
          for (int64_t l = 0; l < lanes; ++l) acc[l] += gr[t + l] * xr[t + l];
        for (int64_t t = full; t < n; ++t) tail += gr[t] * xr[t];
      }
      for (int64_t l = 0; l < lanes; ++l) tail += acc[l];
      gw[i] = tail;
    }
  });
}

// ------------------------------------------------------------------------------ ops

at::Tensor causal_conv1d_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                             const c10::optional<at::Tensor>& bias, int64_t dilation, int64_t groups) {
  check_conv_args("causal_conv1d", x_in, weight_in, dilation, groups);
  const int64_t B = x_in.size(0), C_in = x_in.size(1), T = x_in.size(2);
  const int64_t C_out = weight_in.size(0), K = weight_in.size(2);
  check_bias("causal_conv1d", bias, x_in, C_out);
  if (B * T == 0) return at::empty({B, C_out, T}, x_in.options());
  if (C_in == 0) {
    at::Tensor out = at::zeros({B, C_out, T}, x_in.options());
    return bias.has_value() ? out.add_(bias->view({1, C_out, 1})) : out;
  }
  if (weight_in.size(1) == 1) {
    at::Tensor out = at::empty({B, C_out, T}, x_in.options());
    const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
    const c10::optional<at::Tensor> b = bias.has_value() ? c10::optional<at::Tensor>(bias->contiguous()) : bias;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_depthwise", [&] {
      depthwise_forward<scalar_t>(x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                                  b.has_value() ? b->data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), B,
                                  C_in, C_out, T, K, dilation);
    });
    return out;
  }
  // GEMMs need unit stride along time (else each would copy its operand).
  const at::Tensor x = x_in.stride(2) == 1 ? x_in : x_in.contiguous();
  return gemm_forward(x, weight_in, bias, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> causal_conv1d_backward_cpu(const at::Tensor& grad_out_in,
                                                                          const at::Tensor& x_in,
                                                                          const at::Tensor& weight_in,
                                                                          int64_t dilation, int64_t groups,
                                                                          std::array<bool, 3> output_mask) {
  check_conv_args("causal_conv1d_backward", x_in, weight_in, dilation, groups);
  const int64_t B = x_in.size(0), C_in = x_in.size(1), T = x_in.size(2);
  const int64_t C_out = weight_in.size(0), K = weight_in.size(2);
  TORCH_CHECK_VALUE(grad_out_in.sizes() == at::IntArrayRef({B, C_out, T}) &&
                        grad_out_in.scalar_type() == x_in.scalar_type() && grad_out_in.device().is_cpu(),
                    "causal_conv1d_backward: grad_out must be (B, C_out, T) = (", B, ", ", C_out, ", ", T,
                    ") of x's dtype, got shape ", grad_out_in.sizes());
  at::Tensor grad_x = at::empty({0}, x_in.options()), grad_w = at::empty({0}, x_in.options());
  at::Tensor grad_b = at::empty({0}, x_in.options());
  if (output_mask[2]) grad_b = grad_out_in.sum({0, 2});
  if (!output_mask[0] && !output_mask[1]) return {grad_x, grad_w, grad_b};
  const bool empty = B * T == 0 || C_in == 0;
  if (output_mask[0]) grad_x = empty ? at::zeros(x_in.sizes(), x_in.options()) : at::empty(x_in.sizes(), x_in.options());
  if (output_mask[1] && empty) grad_w = at::zeros(weight_in.sizes(), weight_in.options());
  if (empty) return {grad_x, grad_w, grad_b};
  if (weight_in.size(1) == 1) {
    const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous(), go = grad_out_in.contiguous();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_depthwise_backward", [&] {
      if (output_mask[0])
        depthwise_grad_x<scalar_t>(go.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                                   grad_x.data_ptr<scalar_t>(), B, C_in, C_out, T, K, dilation);
      if (output_mask[1]) {
        grad_w = at::empty(weight.sizes(), weight.options());
        depthwise_grad_weight<scalar_t>(go.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                        grad_w.data_ptr<scalar_t>(), B, C_in, C_out, T, K, dilation);
      }
    });
    return {grad_x, grad_w, grad_b};
  }
  const at::Tensor go = grad_out_in.stride(2) == 1 ? grad_out_in : grad_out_in.contiguous();
  if (output_mask[0]) gemm_grad_x(go, weight_in, dilation, groups, grad_x);
  if (output_mask[1]) {
    const at::Tensor x = x_in.stride(2) == 1 ? x_in : x_in.contiguous();
    grad_w = gemm_grad_weight(go, x, weight_in, dilation, groups);
  }
  return {grad_x, grad_w, grad_b};
}

// One step on a state of the last L = (K-1) * dilation inputs (see the Python docstring):
// shift register when position is None, ring buffer at slot position mod L otherwise.
at::Tensor causal_conv1d_step_cpu(const at::Tensor& x_t, at::Tensor& state, const at::Tensor& weight_in,
                                  const c10::optional<at::Tensor>& bias, int64_t dilation, int64_t groups,
                                  const c10::optional<at::Tensor>& position) {
  const char* op = "causal_conv1d_step";
  TORCH_CHECK_VALUE(x_t.dim() == 2, op, ": x_t must be (B, C_in), got shape ", x_t.sizes());
  check_conv_args(op, x_t.unsqueeze(2), weight_in, dilation, groups);
  const int64_t B = x_t.size(0), C_in = x_t.size(1), C_out = weight_in.size(0), K = weight_in.size(2);
  check_bias(op, bias, x_t, C_out);
  TORCH_CHECK_VALUE(K - 1 <= std::numeric_limits<int64_t>::max() / dilation, op,
                    ": (K - 1) * dilation overflows, got K=", K, " and dilation=", dilation);
  const int64_t L = (K - 1) * dilation;
  TORCH_CHECK_VALUE(state.dim() == 3 && state.size(0) == B && state.size(1) == C_in && state.size(2) == L, op,
                    ": state must be (B, C_in, (K-1)*dilation) = (", B, ", ", C_in, ", ", L, "), got shape ",
                    state.sizes());
  TORCH_CHECK_TYPE(state.scalar_type() == x_t.scalar_type(), op, ": state must have x_t's dtype ",
                   x_t.scalar_type(), ", got ", state.scalar_type());
  TORCH_CHECK_VALUE(state.device().is_cpu(), op, " (cpu): state must be on the CPU");
  TORCH_CHECK_VALUE(L <= 1 || state.stride(2) == 1, op, ": state must be contiguous in its last dimension, got strides ",
                    state.strides());
  if (position.has_value()) {
    TORCH_CHECK_TYPE(position->scalar_type() == at::kLong, op, ": position must be int64, got ",
                     position->scalar_type());
    TORCH_CHECK_VALUE(position->dim() == 1 && position->size(0) == B && position->device().is_cpu(), op,
                      ": position must be a (B,) = (", B, ",) CPU tensor, got shape ", position->sizes());
  }
  const at::Tensor weight = weight_in.contiguous();
  at::Tensor out = at::empty({B, C_out}, x_t.options());
  if (B == 0) return out;
  const int64_t ci_g = weight.size(1), co_g = C_out / groups;
  // window[b, c, k]: the input tap k of the weight reads; gathered before the state changes.
  at::Tensor window = at::empty({B, C_in, K}, x_t.options());
  const at::Tensor pos = position.has_value() ? position->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x_t.scalar_type(), "causal_conv1d_step", [&] {
    const auto xa = x_t.accessor<scalar_t, 2>();
    scalar_t* win = window.data_ptr<scalar_t>();
    scalar_t* st = state.data_ptr<scalar_t>();
    const int64_t sb = state.stride(0), sc = state.stride(1);
    const int64_t* p = position.has_value() ? pos.data_ptr<int64_t>() : nullptr;
    at::parallel_for(0, B * C_in, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / C_in, c = row % C_in;
        const scalar_t* sr = st + b * sb + c * sc;
        scalar_t* wr = win + row * K;
        if (p == nullptr) {
          for (int64_t k = 0; k < K - 1; ++k) wr[k] = sr[k * dilation];
        } else if (L > 0) {
          const int64_t base = ((p[b] % L) + L) % L;  // p[b] + k*d (mod L), for any int64 p
          for (int64_t k = 0; k < K - 1; ++k) wr[k] = sr[(base + k * dilation) % L];
        }
        wr[K - 1] = xa[b][c];
      }
    });
    const scalar_t* w = weight.data_ptr<scalar_t>();
    const scalar_t* bs = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
    const int64_t bstride = bias.has_value() ? bias->stride(0) : 0;
    scalar_t* o_ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * C_out, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / C_out, o = i % C_out;
        const scalar_t* wo = w + o * ci_g * K;
        const scalar_t* xw = win + (b * C_in + (o / co_g) * ci_g) * K;
        scalar_t acc = bs ? bs[o * bstride] : scalar_t(0);
        for (int64_t j = 0; j < ci_g * K; ++j) acc += wo[j] * xw[j];
        o_ptr[i] = acc;
      }
    });
    if (L == 0) return;
    at::parallel_for(0, B * C_in, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / C_in, c = row % C_in;
        scalar_t* sr = st + b * sb + c * sc;
        const scalar_t x_new = win[row * K + K - 1];
        if (p == nullptr) {
          std::memmove(sr, sr + 1, (L - 1) * sizeof(scalar_t));
          sr[L - 1] = x_new;
        } else {
          sr[((p[b] % L) + L) % L] = x_new;
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("causal_conv1d", &causal_conv1d_cpu);
  m.impl("causal_conv1d_backward", &causal_conv1d_backward_cpu);
  m.impl("causal_conv1d_step", &causal_conv1d_step_cpu);
}

}  // namespace fastgen::cpu
