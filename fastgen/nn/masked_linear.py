"""Masked linear layer of MADE (Germain et al. 2015)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import masked_linear
from ..ops._checks import check_int

__all__ = ["MaskedLinear"]


class MaskedLinear(nn.Linear):
    r"""A drop-in :class:`torch.nn.Linear` whose weight is multiplied by a fixed 0/1 mask:
    :math:`y = x (W \odot M)^\top + b`.

    Parameters, their names and their initialization are those of ``nn.Linear``; the mask
    is a bool buffer (saved in the ``state_dict``), all ones until :meth:`set_mask`. The
    weight is never masked in place: masked entries keep their values and receive zero
    gradient.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        backend: default backend of this layer's calls (None: the global choice).

    Shape:
        ``(B, in_features) -> (B, out_features)``.

    Example:
        >>> layer = MaskedLinear(3, 4)
        >>> layer.set_mask(torch.ones(4, 3, dtype=torch.bool).tril(-1))
        >>> layer(torch.randn(2, 3)).shape
        torch.Size([2, 4])
    """

    mask: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        check_int(type(self).__name__, "in_features", in_features, minimum=1)
        check_int(type(self).__name__, "out_features", out_features, minimum=1)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.backend = backend
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool, device=device))

    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask: ``(out_features, in_features)``, bool or 0/1."""
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"MaskedLinear.set_mask: mask must be a tensor, got {type(mask).__name__}")
        if mask.shape != self.mask.shape:
            raise ValueError(f"MaskedLinear.set_mask: mask must have shape {tuple(self.mask.shape)}, got {tuple(mask.shape)}")
        self.mask.copy_(mask.to(torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return masked_linear(x, self.weight, self.mask, self.bias, backend=self.backend)
