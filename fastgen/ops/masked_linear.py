r"""Masked linear layer (MADE, Germain et al. 2015, "MADE: Masked Autoencoder for
Distribution Estimation"): :math:`y = x (W \odot M)^\top + b`.

The mask :math:`M` is fixed per layer and usually sparse in blocks (MADE's masks are
staircases once the units are sorted by degree), which the fast paths exploit.

This file holds, in order: the reference and the public function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends
from ._checks import check_same_device, check_tensor

__all__ = ["masked_linear", "masked_linear_ref"]

OP = "masked_linear"


# ----------------------------------------------------------------------------- reference


def masked_linear_ref(
    x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference masked linear layer in plain PyTorch: ``F.linear(x, weight * mask, bias)``.

    Args:
        x: ``(B, in_features)``.
        weight: ``(out_features, in_features)``.
        mask: ``(out_features, in_features)``, bool (True = connected).
        bias: ``(out_features,)`` or None.

    Returns:
        ``(B, out_features)``.
    """
    return F.linear(x, weight * mask.to(weight.dtype), bias)


_BACKENDS = backends.OpBackends(OP, {"ref": backends.ref_support()})


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
        x: ``(B, in_features)``.
        weight: ``(out_features, in_features)``, ``x``'s dtype and device.
        mask: ``(out_features, in_features)`` bool, on ``x``'s device (True = connected).
        bias: ``(out_features,)`` or None.
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None (see :mod:`fastgen.backends`).

    Returns:
        ``(B, out_features)``; gradients flow to ``x``, ``weight`` (zero where masked) and ``bias``.

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
    _BACKENDS.select(backend, x)
    return masked_linear_ref(x, weight, mask, bias)
