"""Masked convolution layer of PixelCNN (van den Oord et al. 2016), with its one-pixel step form."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..ops import (
    masked_conv2d,
    masked_conv2d_step,
    masked_conv2d_step_buffer,
    masked_conv2d_step_pack,
    masked_conv2d_stepper,
)
from ..ops._checks import check_int, check_odd_int
from ..ops.masked_conv2d import check_mask_args, masked_conv2d_mask, masked_conv2d_step_write

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

    For incremental sampling (one pixel at a time in raster order), :meth:`init_state`
    preallocates the layer's input buffer for a batch (zero-padded, channels last; see
    :func:`fastgen.ops.masked_conv2d_step`), :meth:`write_state` stores one input pixel in
    it and :meth:`step` returns the output at one pixel, reading only the taps the mask
    keeps, as one GEMM against the weight packed once (:meth:`packed_weight`, cached until
    the weight changes). The step has no autograd.

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
        ``(B, C_in, H, W) -> (B, C_out, H, W)``; step: a state ``(B, H + P, W + 2P, C_in)``,
        ``P = dilation * (kernel_size // 2)``, and a pixel ``(i, j)`` -> ``(B, C_out)``.

    Example:
        >>> layer = MaskedConv2d(3, 48, 7, mask_type="A", color_channels=3)
        >>> x = torch.randn(8, 3, 20, 20)
        >>> layer(x).shape
        torch.Size([8, 48, 20, 20])
        >>> state = layer.init_state(8, 20, 20)
        >>> for j in range(3):
        ...     layer.write_state(state, x[:, :, 0, j], 0, j)
        >>> y = layer.step(state, 0, 2)  # equals layer(x)[:, :, 0, 2]
        >>> torch.allclose(y, layer(x)[:, :, 0, 2], atol=1e-5)
        True
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
        check_int(name, "in_channels", in_channels, minimum=1)
        check_int(name, "out_channels", out_channels, minimum=1)
        check_odd_int(name, "kernel_size", kernel_size)
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
        self._packed: tuple[tuple, torch.Tensor] | None = None

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

    # ------------------------------------------------------------------ incremental form

    @property
    def state_padding(self) -> int:
        """``P = dilation * (kernel_size // 2)``: the zero rows on top and columns each side of
        the step state."""
        return self.dilation[0] * (self.kernel_size[0] // 2)

    def packed_weight(self) -> torch.Tensor:
        """The step's GEMM weight ``(T * C_in, C_out)`` (:func:`fastgen.ops.masked_conv2d_step_pack`),
        detached; packed once and reused until the weight changes (in place, e.g. by an
        optimizer step, or by a move to another dtype or device)."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.dtype, w.device, w.shape)
        if self._packed is None or self._packed[0] != key:
            packed = masked_conv2d_step_pack(w, mask_type=self.mask_type, color_channels=self.color_channels)
            self._packed = (key, packed)
        return self._packed[1]

    def init_state(
        self, batch: int, height: int, width: int, *, dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """A zero step state ``(batch, height + P, width + 2P, C_in)`` for ``height x width``
        images; dtype and device default to the weight's."""
        return masked_conv2d_step_buffer(
            batch, height, width, self.in_channels, self.kernel_size[0], dilation=self.dilation[0],
            dtype=dtype if dtype is not None else self.weight.dtype,
            device=device if device is not None else self.weight.device,
        )

    def write_state(self, state: torch.Tensor, x_t: torch.Tensor, i: int, j: int, channel: int = 0) -> None:
        """Stores input pixel ``(i, j)``, ``x_t`` ``(B, n)``, in ``state`` at channels
        ``channel .. channel + n - 1`` (all ``C_in`` by default)."""
        masked_conv2d_step_write(
            state, x_t, i, j, kernel_size=self.kernel_size[0], dilation=self.dilation[0], channel=channel
        )

    def step(self, state: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """The output ``(B, C_out)`` at pixel ``(i, j)`` from the inputs stored in ``state``:
        equal to ``self(x)[:, :, i, j]`` once every pixel the mask lets ``(i, j)`` see is stored."""
        return masked_conv2d_step(
            state, self.weight, self.bias, i=i, j=j, mask_type=self.mask_type, color_channels=self.color_channels,
            dilation=self.dilation[0], packed_weight=self.packed_weight(), backend=self.backend,
        )

    def centre_matrix(self) -> torch.Tensor:
        """The centre tap's masked weight as a matrix ``(C_in, C_out)``, detached: the whole
        layer of a 1x1 kernel, or what the pixel itself adds to a step whose state does not
        hold it yet (the colour rule makes it block-triangular). For sampling, taken once per
        cache."""
        k = self.kernel_size[0]
        mask = masked_conv2d_mask(self.out_channels, self.in_channels, k, self.mask_type, self.color_channels,
                                  dtype=self.weight.dtype, device=self.weight.device)
        return (self.weight * mask)[:, :, k // 2, k // 2].t().detach().contiguous()

    def stepper(self, state: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
        """:meth:`step` at many pixels of ``state``, checked once:
        ``step(i, j) -> (B, C_out)`` (:func:`fastgen.ops.masked_conv2d_stepper`), with the
        weight packed now (a later change of the weight needs a new stepper)."""
        return masked_conv2d_stepper(
            state, self.weight, self.bias, mask_type=self.mask_type, color_channels=self.color_channels,
            dilation=self.dilation[0], packed_weight=self.packed_weight(), backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_type={self.mask_type!r}, color_channels={self.color_channels}"
