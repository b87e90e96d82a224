// Every schema of the fastgen operator library, and the Python module stub of fastgen._C.
// Kernels register their implementations per device in cpu/<op>.cpp (and cuda/<op>.cu);
// fake (meta) implementations and autograd are registered from Python, next to each op's
// reference (fastgen/ops/<op>.py).
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
