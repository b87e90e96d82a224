"""Masked convolution layer of PixelCNN (van den Oord et al. 2016)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import masked_conv2d
from ..ops._checks import check_int
from ..ops.masked_conv2d import check_mask_args

__all__ = ["MaskedConv2d"]


class MaskedConv2d(nn.Conv2d):
    r"""A drop-in :class:`torch.nn.Conv2d` whose kernel is masked as in PixelCNN.

    Output pixel ``(h, w)`` sees only the input pixels above it and to its left (and
    itself for mask ``"B"``), so stacked layers model :math:`p(x_i \mid x_{<i})` in raster
    order. With ``color_channels=3`` the channels are split into R, G, B groups and, at
    the pixel itself, G sees R and B sees R, G (mask A; mask B adds each group itself).

    Parameters, their names and their initialization are those of ``nn.Conv2d`` (stride
    1, padding ``dilation * (kernel_size // 2)``, so the output has the input's size).
    The weight is never masked in place: masked taps keep their values and receive zero
    gradient, and the masked product is never materialized by the fast backends.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: odd ``k``.
        mask_type: ``"A"`` (first layer) or ``"B"`` (later layers).
        color_channels: 1, or 3 for RGB; must divide both channel counts.
        dilation: spacing between taps.
        bias: learn an additive bias.
        backend: default backend of this layer's calls (None: the global choice).

    Shape:
        ``(B, C_in, H, W) -> (B, C_out, H, W)``.

    Example:
        >>> layer = MaskedConv2d(3, 48, 7, mask_type="A", color_channels=3)
        >>> layer(torch.randn(8, 3, 20, 20)).shape
        torch.Size([8, 48, 20, 20])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        mask_type: str = "A",
        color_channels: int = 1,
        dilation: int = 1,
        bias: bool = True,
        *,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        name = type(self).__name__
        check_int(name, "kernel_size", kernel_size, minimum=1)
        if kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be odd, got {kernel_size}")
        check_mask_args(name, mask_type, color_channels, in_channels, out_channels)
        check_int(name, "dilation", dilation, minimum=1)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self.mask_type = mask_type
        self.color_channels = color_channels
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return masked_conv2d(
            x,
            self.weight,
            self.bias,
            mask_type=self.mask_type,
            color_channels=self.color_channels,
            dilation=self.dilation[0],
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_type={self.mask_type!r}, color_channels={self.color_channels}"
