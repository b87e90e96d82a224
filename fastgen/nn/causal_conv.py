"""Causal dilated 1-D convolution layer of WaveNet (van den Oord et al. 2016), with its one-step form."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import causal_conv1d, causal_conv1d_step
from ..ops._checks import check_int

__all__ = ["CausalConv1d"]


class CausalConv1d(nn.Conv1d):
    r"""A drop-in :class:`torch.nn.Conv1d` that is causal: output ``t`` sees inputs
    ``t, t-d, ..., t-(K-1)d`` only (zeros before the start), and has the input's length.

    .. math::

        y_{b,o,t} = \beta_o + \sum_{k=0}^{K-1} \sum_{i \in G(o)} W_{o,i,k}\, x_{b,i,\,t-(K-1-k)d}

    Parameters, their names and their initialization are those of ``nn.Conv1d`` (stride
    1; ``padding`` stays 0 since the causal left padding is implicit: the fast backends
    never build a padded copy). Stacking layers with dilations 1, 2, 4, ... gives WaveNet's
    exponentially growing receptive field.

    For incremental generation, :meth:`init_state` preallocates a zero state for a batch and
    :meth:`step` computes one time step from it, updating it in place (see
    :func:`fastgen.ops.causal_conv1d_step` for the state layouts). The step has no autograd.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: ``K >= 1``.
        dilation: spacing ``d >= 1`` between taps.
        groups: channel groups dividing both channel counts (``groups = C_in``: depthwise).
        bias: learn an additive bias.
        backend: default backend of this layer's calls (None: the global choice).

    Shape:
        ``(B, C_in, T) -> (B, C_out, T)``; step: ``(B, C_in) -> (B, C_out)`` with a state
        ``(B, C_in, (K-1) * dilation)``.

    Example:
        >>> layer = CausalConv1d(16, 32, kernel_size=2, dilation=4)
        >>> x = torch.randn(3, 16, 100)
        >>> layer(x).shape
        torch.Size([3, 32, 100])
        >>> state = layer.init_state(3)
        >>> with torch.no_grad():
        ...     y0 = layer.step(x[:, :, 0], state)  # equals layer(x)[:, :, 0]
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        name = type(self).__name__
        check_int(name, "in_channels", in_channels, minimum=1)
        check_int(name, "out_channels", out_channels, minimum=1)
        check_int(name, "kernel_size", kernel_size, minimum=1)
        check_int(name, "dilation", dilation, minimum=1)
        check_int(name, "groups", groups, minimum=1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{name}: groups={groups} must divide in_channels and out_channels, got {in_channels} and {out_channels}"
            )
        super().__init__(
            in_channels, out_channels, kernel_size, dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype
        )
        self.backend = backend

    @property
    def state_length(self) -> int:
        """``(K-1) * dilation``: the number of past inputs the step form keeps."""
        return (self.kernel_size[0] - 1) * self.dilation[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return causal_conv1d(
            x, self.weight, self.bias, dilation=self.dilation[0], groups=self.groups, backend=self.backend
        )

    def init_state(
        self, batch: int, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """A zero state ``(batch, C_in, (K-1) * dilation)`` for :meth:`step`; dtype and device
        default to the weight's."""
        check_int(type(self).__name__, "batch", batch, minimum=0)
        return torch.zeros(
            batch,
            self.in_channels,
            self.state_length,
            dtype=dtype if dtype is not None else self.weight.dtype,
            device=device if device is not None else self.weight.device,
        )

    def step(self, x_t: torch.Tensor, state: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        """The output ``(B, C_out)`` for the input ``x_t`` ``(B, C_in)`` at the next time step;
        updates ``state`` in place. ``position`` None: shift-register state; an int64 ``(B,)``
        tensor of steps taken: ring-buffer state (the caller advances it)."""
        return causal_conv1d_step(
            x_t,
            state,
            self.weight,
            self.bias,
            dilation=self.dilation[0],
            groups=self.groups,
            position=position,
            backend=self.backend,
        )
