// How the C++ autograd Functions of the CPU ops (masked_linear.cpp, affine_mlp.cpp) call
// their backward op.
#pragma once

#include <ATen/ATen.h>

namespace fastgen::cpu {

// Returns call(), the backward op's call through the dispatcher, below autograd unless under
// create_graph: the backward op's own autograd (registered from Python: a double backward or
// its clear error) is needed only there, and costs a trip through Python per call.
template <class F>
auto call_backward_op(const F& call) -> decltype(call()) {
  if (at::GradMode::is_enabled()) return call();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return call();
}

}  // namespace fastgen::cpu
