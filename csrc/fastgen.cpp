// Every schema of the fastgen operator library, and the Python module stub of fastgen._C.
// Kernels register their implementations per device in cpu/<op>.cpp (and cuda/<op>.cu);
// fake (meta) implementations and autograd are registered from Python, next to each op's
// reference (fastgen/ops/<op>.py), except the forward autograd of masked_linear,
// affine_coupling_mlp and masked_affine_autoregressive (in C++, in cpu/masked_linear.cpp and
// cpu/affine_mlp.cpp: their layers are too small for a Python one's cost).
#include <Python.h>
#include <torch/library.h>

#include "cpu/tap_gemm.h"

TORCH_LIBRARY(fastgen, m) {
  m.def(
      "masked_conv2d(Tensor x, Tensor weight, Tensor? bias, str mask_type, int color_channels, int dilation) "
      "-> Tensor");
  // Returns (grad_x, grad_weight, grad_bias); an entry whose output_mask is False is an empty tensor.
  m.def(
      "masked_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, str mask_type, int color_channels, "
      "int dilation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // Its output at one pixel (i, j), (B, C_out), from a zero-padded channels-last buffer of the
  // layer's input (B, H + P, W + 2P, C_in), P = dilation * (kernel_size // 2), and the weight's
  // kept taps packed as (taps * C_in, C_out) (fastgen/ops/masked_conv2d.py, masked_conv2d_step).
  m.def(
      "masked_conv2d_step(Tensor buffer, Tensor packed_weight, Tensor? bias, int i, int j, int kernel_size, "
      "str mask_type, int color_channels, int dilation) -> Tensor");

  // Causal dilated conv1d (fastgen/ops/causal_conv1d.py) and its one-step form, which
  // reads and updates `state` in place.
  m.def("causal_conv1d(Tensor x, Tensor weight, Tensor? bias, int dilation, int groups) -> Tensor");
  // Returns (grad_x, grad_weight, grad_bias); an entry whose output_mask is False is an empty tensor.
  m.def(
      "causal_conv1d_backward(Tensor grad_out, Tensor x, Tensor weight, int dilation, int groups, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "causal_conv1d_step(Tensor x_t, Tensor(a!) state, Tensor weight, Tensor? bias, int dilation, int groups, "
      "Tensor? position) -> Tensor");

  // WaveNet gated residual block (fastgen/ops/gated_residual_block.py). Returns (h_out, skip,
  // gates): gates (B, 2G, T) holds tanh(z[:G]) and sigmoid(z[G:]), saved for the backward.
  m.def(
      "gated_residual_block(Tensor h, Tensor conv_weight, Tensor? conv_bias, Tensor res_weight, Tensor? res_bias, "
      "Tensor skip_weight, Tensor? skip_bias, Tensor? cond, int dilation) -> (Tensor, Tensor, Tensor)");
  // Grads of (h, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond); an
  // entry whose output_mask is False (or whose optional input is None) is an empty tensor.
  m.def(
      "gated_residual_block_backward(Tensor grad_h_out, Tensor grad_skip, Tensor h, Tensor gates, "
      "Tensor conv_weight, Tensor? conv_bias, Tensor res_weight, Tensor skip_weight, Tensor? cond, int dilation, "
      "bool[8] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // One time step on the state buffer (updated in place); returns (h_out_t, skip_t).
  m.def(
      "gated_residual_block_step(Tensor h_t, Tensor(a!) state, Tensor conv_weight, Tensor? conv_bias, "
      "Tensor res_weight, Tensor? res_bias, Tensor skip_weight, Tensor? skip_bias, Tensor? cond_t, int dilation, "
      "Tensor? position) -> (Tensor, Tensor)");
  // One time step through a stack of blocks, block l's h_out feeding block l+1, each on its
  // state (updated in place), the conv bias and any conditioning folded into gate_biases[l]
  // (B, 2G_l); returns (h_out_t of the last block, the sum of the blocks' skip_t).
  m.def(
      "gated_residual_stack_step(Tensor h_t, Tensor(a!)[] states, Tensor[] conv_weights, Tensor[] gate_biases, "
      "Tensor[] res_weights, Tensor[] res_biases, Tensor[] skip_weights, Tensor[] skip_biases, int[] dilations, "
      "Tensor? position) -> (Tensor, Tensor)");

  // Gated PixelCNN layer (fastgen/ops/gated_pixelcnn.py). Returns (v_out, h_out, skip, v_pre, h_pre):
  // skip is empty without skip_weight; the pre-activations are saved for the backward.
  m.def(
      "gated_pixelcnn_layer(Tensor v, Tensor h, Tensor v_weight, Tensor v_bias, Tensor h_weight, Tensor h_bias, "
      "Tensor link_weight, Tensor res_weight, Tensor res_bias, Tensor? skip_weight, Tensor? skip_bias, "
      "Tensor? v_cond, Tensor? h_cond, bool first_layer, int color_channels) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Gradients of (v, h, v_weight, v_bias, h_weight, h_bias, link_weight, res_weight, res_bias,
  // skip_weight, skip_bias, v_cond, h_cond); an entry whose output_mask is False is empty.
  m.def(
      "gated_pixelcnn_layer_backward(Tensor grad_v_out, Tensor grad_h_out, Tensor? grad_skip, Tensor v, Tensor h, "
      "Tensor v_pre, Tensor h_pre, Tensor v_weight, Tensor h_weight, Tensor link_weight, Tensor res_weight, "
      "Tensor? skip_weight, bool first_layer, int color_channels, bool[13] output_mask) -> Tensor[]");

  // Element-wise flow layers (fastgen/ops/affine_coupling.py, actnorm.py, logit_transform.py).
  // Each forward returns (y, logdet): y of x's shape and logdet (B,), log|det dy/dx| per
  // example (of the inverse map when inverse is true). Each backward takes the gradients of
  // (y, logdet) and the forward's inputs.
  // Affine coupling: log_scale None is additive coupling (scale is then ignored); mask
  // broadcasts to x.shape[1:], nonzero = pass through.
  m.def(
      "affine_coupling(Tensor x, Tensor shift, Tensor? log_scale, Tensor? mask, str scale, bool inverse) "
      "-> (Tensor, Tensor)");
  // Returns (grad_x, grad_shift, grad_log_scale); an entry whose output_mask is False (and
  // grad_log_scale without log_scale) is an empty tensor.
  m.def(
      "affine_coupling_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor shift, Tensor? log_scale, "
      "Tensor? mask, str scale, bool inverse, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // A vector affine coupling with its MLP network (affine_coupling_mlp.py): x (B, D), the passed
  // half (parity 0: the first D // 2 entries, 1: the last D - D // 2) through the layers (ReLU
  // between), the last one's output (shift | raw log-scale r), log_scale = log_scale_bound * tanh(r).
  // Returns (y, logdet, activations): every layer's output, saved for the backward; none with
  // keep_activations=False (the autograd keeps what its backward needs either way).
  m.def(
      "affine_coupling_mlp(Tensor x, Tensor[] weights, Tensor[] biases, Tensor log_scale_bound, int parity, "
      "bool inverse, bool keep_activations=True) -> (Tensor, Tensor, Tensor[])");
  // Returns [grad_x, grad_log_scale_bound, grad_weights..., grad_biases...]; an entry whose
  // output_mask (x, log_scale_bound, weights, biases) is False is an empty tensor.
  m.def(
      "affine_coupling_mlp_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor[] weights, "
      "Tensor log_scale_bound, Tensor[] activations, int parity, bool inverse, bool[4] output_mask) -> Tensor[]");
  // A MAF layer with its MADE (masked_affine_autoregressive.py): x (B, D) through the masked
  // layers (ReLU between), the last one's output (shift_j, raw log-scale r_j) per entry j,
  // u = (x - shift) exp(-log_scale_bound * tanh(r)). Returns (u, logdet, activations), as
  // affine_coupling_mlp.
  m.def(
      "masked_affine_autoregressive(Tensor x, Tensor[] weights, Tensor[] masks, Tensor[] biases, "
      "Tensor log_scale_bound, bool keep_activations=True) -> (Tensor, Tensor, Tensor[])");
  // Returns [grad_x, grad_log_scale_bound, grad_weights..., grad_biases...] (weight gradients
  // zero where masked); an entry whose output_mask (x, log_scale_bound, weights, biases) is False
  // is an empty tensor.
  m.def(
      "masked_affine_autoregressive_backward(Tensor grad_u, Tensor grad_logdet, Tensor x, Tensor[] weights, "
      "Tensor[] masks, Tensor log_scale_bound, Tensor[] activations, bool[4] output_mask) -> Tensor[]");
  // ActNorm: loc and log_scale (C,) over dim 1 of x.
  m.def("actnorm(Tensor x, Tensor loc, Tensor log_scale, bool inverse) -> (Tensor, Tensor)");
  // Returns (grad_x, grad_loc, grad_log_scale); an entry whose output_mask is False is an empty tensor.
  m.def(
      "actnorm_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor loc, Tensor log_scale, bool inverse, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("logit_transform(Tensor x, float alpha, bool inverse) -> (Tensor, Tensor)");
  // Returns grad_x.
  m.def(
      "logit_transform_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, float alpha, bool inverse) -> Tensor");

  // Masked linear layer (fastgen/ops/masked_linear.py): y = x (weight * mask)^T + bias, mask
  // bool (out_features, in_features).
  m.def("masked_linear(Tensor x, Tensor weight, Tensor? bias, Tensor mask) -> Tensor");
  // Returns (grad_x, grad_weight, grad_bias), grad_weight zero where mask is false; an entry
  // whose output_mask is False is an empty tensor.
  m.def(
      "masked_linear_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor mask, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");

  // Mixture CDF and its inverse (fastgen/ops/mixture_cdf.py); kind is "logistic" or "gaussian".
  // Returns (u, log_pdf), both of x's shape.
  m.def("mixture_cdf(Tensor x, Tensor logits, Tensor loc, Tensor log_scale, str kind) -> (Tensor, Tensor)");
  // Grads of (x, logits, loc, log_scale) from those of u and log_pdf (None: zero), given the
  // forward's outputs u and log_pdf; an entry whose output_mask is False is an empty tensor.
  m.def(
      "mixture_cdf_backward(Tensor? grad_u, Tensor? grad_log_pdf, Tensor x, Tensor logits, Tensor loc, "
      "Tensor log_scale, Tensor u, Tensor log_pdf, str kind, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // x of u's shape, by `iters` bisection steps.
  m.def("mixture_icdf(Tensor u, Tensor logits, Tensor loc, Tensor log_scale, str kind, int iters) -> Tensor");
  // Grads of (u, logits, loc, log_scale) at the forward's output x; an entry whose output_mask
  // is False is an empty tensor.
  m.def(
      "mixture_icdf_backward(Tensor grad_x, Tensor x, Tensor logits, Tensor loc, Tensor log_scale, str kind, "
      "bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
}

namespace {

PyObject* cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(fastgen::cpu::tap_gemm_description()); }

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "Instruction set of the CPU micro-kernels in use (FASTGEN_CPU_ISA overrides)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastgen compiled kernels (ops register in torch.ops.fastgen)", -1,
                      methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module); }
