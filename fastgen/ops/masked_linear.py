r"""Masked linear layer (MADE, Germain et al. 2015, "MADE: Masked Autoencoder for
Distribution Estimation"): :math:`y = x (W \odot M)^\top + b`.

The mask :math:`M` is fixed per layer and usually sparse in blocks (MADE's masks are
staircases once the units are sorted by degree), which the fast paths exploit: they never
multiply the all-zero part of a staircase, so one costs about half of a dense layer,
forward and backward. Any mask is correct; one without block structure (random) costs
about what the reference does.

- ``cpp``: the register-tiled micro-kernel of the CPU ops on panels of outputs (forward)
  or inputs (gradients) as wide as its SIMD lanes (16 floats with AVX2), each k loop only
  over the span of the panel's ones; a panel's masked weights are selected to 0 as it is
  packed. No BLAS call, so the small layers of MAF's MADEs (64 -> 256 -> 256 -> 128) gain
  about as much as large ones. Its autograd is registered in C++ (csrc/cpu/masked_linear.cpp):
  a Python one would cost more than the kernels of such a layer.
- ``triton``: block-sparse GEMMs. Each output tile loops only over the input tiles
  between the first and the last non-zero tile of its band of the mask (a range computed
  per call from the mask), masking the weight tile in registers; ``grad_x`` likewise per
  band of inputs, and ``grad_weight`` computes only the tiles in those ranges.

Both find the mask's structure again on every call (a pass over the mask's rows), so a
mask may change between calls. The weight gradient is exactly zero where the mask is
false, on every backend; the fast paths' backward has its own autograd formula (double
backward works).

This file holds, in order: the reference, the registrations of the fast paths (fake
tensors and autograd), and the public function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends
from . import _conv_autograd
from ._checks import check_mask, check_same_device, check_tensor

__all__ = ["masked_linear", "masked_linear_ref"]

OP = "masked_linear"


# ----------------------------------------------------------------------------- reference


def masked_linear_ref(
    x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference masked linear layer in plain PyTorch: ``F.linear(x, W * M, b)``, the
    masked weights selected away rather than multiplied by 0 (so that whatever they hold,
    even inf or NaN, cannot reach the output, as on the fast paths, which never read them).

    Args:
        x: ``(B, in_features)``.
        weight: ``(out_features, in_features)``.
        mask: ``(out_features, in_features)``, bool (True = connected).
        bias: ``(out_features,)`` or None.

    Returns:
        ``(B, out_features)``.
    """
    return F.linear(x, torch.where(mask, weight, 0), bias)


# ------------------------------------------------------------------------- registrations
# The cpp ops' schemas are in csrc/fastgen.cpp, their CPU kernels in
# csrc/cpu/masked_linear.cpp; the Triton ops are defined here, with kernels in
# fastgen/ops/triton/masked_linear.py. The layer is bilinear in (x, weight) like a
# convolution, so both pairs get the convolutions' autograd (double backward included),
# with the mask as the ops' trailing setting.


@torch.library.custom_op("fastgen::masked_linear_triton", mutates_args=())
def _masked_linear_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor
) -> torch.Tensor:
    from .triton.masked_linear import masked_linear_forward

    return masked_linear_forward(x, weight, bias, mask)


@torch.library.custom_op("fastgen::masked_linear_triton_backward", mutates_args=())
def _masked_linear_triton_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, output_mask: list[bool]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton.masked_linear import masked_linear_backward

    return masked_linear_backward(grad_out, x, weight, mask, output_mask)


def _fake_forward(x, weight, bias, mask):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _fake_backward(grad_out, x, weight, mask, output_mask):
    return (
        x.new_empty(x.shape) if output_mask[0] else x.new_empty(0),
        weight.new_empty(weight.shape) if output_mask[1] else x.new_empty(0),
        weight.new_empty(weight.shape[0]) if output_mask[2] else x.new_empty(0),
    )


_BACKENDS = backends.OpBackends(
    OP, {"ref": backends.ref_support(), "cpp": backends.cpp_support(OP), "triton": backends.triton_support()}
)
_FAST_OPS = {
    "triton": _conv_autograd.register(
        "masked_linear_triton", "masked_linear_triton_backward", _fake_forward, _fake_backward
    )
}
if _BACKENDS.supports["cpp"].unavailable is None:
    # The forward's autograd is the C++ one of csrc/cpu/masked_linear.cpp (a Python one costs
    # more than a small layer's kernels).
    _FAST_OPS["cpp"] = _conv_autograd.register(
        "masked_linear", "masked_linear_backward", _fake_forward, _fake_backward, forward_autograd=False
    )


# ------------------------------------------------------------------------------ public


def masked_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Masked linear layer ``x (W * M)^T + b``, equal to :func:`masked_linear_ref`.

    Args:
        x: ``(B, in_features)``, any strides.
        weight: ``(out_features, in_features)``, ``x``'s dtype and device.
        mask: ``(out_features, in_features)`` bool, on ``x``'s device (True = connected).
        bias: ``(out_features,)`` or None.
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None (see :mod:`fastgen.backends`).

    Returns:
        ``(B, out_features)``, contiguous; gradients flow to ``x``, ``weight`` (zero where masked) and ``bias``.

    Example:
        >>> mask = torch.ones(4, 3, dtype=torch.bool).tril(-1)
        >>> y = masked_linear(torch.randn(2, 3), torch.randn(4, 3), mask)
        >>> y.shape
        torch.Size([2, 4])
    """
    check_tensor(OP, "x", x, ("B", "in_features"))
    check_tensor(OP, "weight", weight, ("out_features", "in_features"))
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{OP}: weight must have x's in_features {x.shape[1]} columns, got shape {tuple(weight.shape)}")
    check_mask(OP, "mask", mask, "weight", weight, x)
    if bias is not None:
        check_tensor(OP, "bias", bias, ("out_features",))
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{OP}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    check_same_device(OP, "x", x, weight=weight, bias=bias)
    name = _BACKENDS.select(backend, x)
    if name == "ref":
        return masked_linear_ref(x, weight, mask, bias)
    return _FAST_OPS[name](x, weight, bias, mask)
