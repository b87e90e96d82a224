// The masked linear layer's CPU kernels (masked_linear.cpp), for the ops built on them
// (affine_mlp.cpp: MAF's layer as one op). Arguments and results as the ops'
// (csrc/fastgen.cpp: masked_linear, masked_linear_backward).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

namespace fastgen::cpu {

at::Tensor masked_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                             const at::Tensor& mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_cpu(const at::Tensor& grad_out,
                                                                          const at::Tensor& x,
                                                                          const at::Tensor& weight,
                                                                          const at::Tensor& mask,
                                                                          std::array<bool, 3> output_mask);

}  // namespace fastgen::cpu
