r"""Masked linear layer (MADE, Germain et al. 2015, "MADE: Masked Autoencoder for
Distribution Estimation"): :math:`y = x (W \odot M)^\top + b`.

The mask :math:`M` is fixed per layer and usually sparse in blocks (MADE's masks are
staircases once the units are sorted by degree), which the fast paths exploit: they cut
the mask into tiles and never multiply an all-zero tile. Tiles of ones use the weight as
it is and only the tiles that mix ones and zeros are masked, so a staircase costs about
half of a dense layer, forward and backward. Any mask is correct; one without block
structure (random) costs about what the reference does.

- ``cpp``: 64 x 64 tiles, each all-zero (skipped), all-one (the weight used as it is) or
  mixed (a masked copy of that block). Along each band of 64 outputs the tiles form runs
  of one kind, each one BLAS GEMM into the band's outputs; ``grad_x`` does the same along
  bands of 64 inputs, ``grad_weight`` one GEMM per span of non-zero tiles, then zeroes the
  masked entries. The bands run in parallel, largest first.
- ``triton``: block-sparse GEMMs. Each output tile loops only over the input tiles
  between the first and the last non-zero tile of its band of the mask (a range computed
  per call from the mask), masking the weight tile in registers; ``grad_x`` likewise per
  band of inputs, and ``grad_weight`` computes only the tiles in those ranges.

Both find the mask's tile structure again on every call (one pass over the mask, 1-2% of
a MADE layer's forward and backward on the CPU), so a mask may change between calls. The
weight gradient is exactly zero where the mask is false, on every backend; the fast
paths' backward has its own autograd formula (double backward works).

This file holds, in order: the reference, the registrations of the fast paths (fake
tensors and autograd), and the public function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends
from . import _conv_autograd
from ._checks import check_same_device, check_tensor

__all__ = ["masked_linear", "masked_linear_ref"]

OP = "masked_linear"
# Weights of at most this many entries run on the reference when the backend is chosen
# automatically on the CPU: a 256 x 256 MADE layer has too few 64 x 64 tiles for the
# skipped ones to pay for the kernel's per-call costs (measured on 2 Zen 3 cores, a MADE
# hidden layer, batch 256, fwd+bwd: at 256 x 256 the reference 1.2x faster, 1.5 against
# 1.8 ms; at 512 x 512 the kernel 1.25x faster, 4.0 against 5.0 ms; MAF's training step
# on 64 dims with MADEs of 256-256, 13.1 ms on the reference against 17.7 on the kernel).
CPU_SMALL_WEIGHT = 256 * 256


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
    _FAST_OPS["cpp"] = _conv_autograd.register("masked_linear", "masked_linear_backward", _fake_forward, _fake_backward)


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
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None (see :mod:`fastgen.backends`);
            chosen automatically on the CPU, a weight of at most :data:`CPU_SMALL_WEIGHT`
            entries runs on the reference.

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
    check_tensor(OP, "mask", mask, ("out_features", "in_features"), floating=False)
    if mask.dtype != torch.bool:
        raise TypeError(f"{OP}: mask must be a bool tensor, got {mask.dtype}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{OP}: weight must have x's in_features {x.shape[1]} columns, got shape {tuple(weight.shape)}")
    if mask.shape != weight.shape:
        raise ValueError(f"{OP}: mask must have weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
    if mask.device != x.device:
        raise ValueError(f"{OP}: mask is on {mask.device} but x is on {x.device}; they must match")
    if bias is not None:
        check_tensor(OP, "bias", bias, ("out_features",))
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{OP}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    check_same_device(OP, "x", x, weight=weight, bias=bias)
    name = _BACKENDS.select(backend, x, small=x.device.type == "cpu" and weight.numel() <= CPU_SMALL_WEIGHT)
    if name == "ref":
        return masked_linear_ref(x, weight, mask, bias)
    return _FAST_OPS[name](x, weight, bias, mask)
