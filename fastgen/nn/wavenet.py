"""WaveNet layers (van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio")."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import gated_residual_block, gated_residual_block_step
from ..ops._checks import check_int, check_same_device

__all__ = ["GatedResidualBlock"]


class GatedResidualBlock(nn.Module):
    r"""The WaveNet residual block: dilated causal conv, gate, residual and skip 1x1 convs.

    .. math::

        z = \operatorname{causal\_conv1d}(h; W_c, d) + b_c + V c, \quad
        g = \tanh(z_{:G}) \odot \sigma(z_{G:}), \quad
        h_{out} = h + W_r g + b_r, \quad \text{skip} = W_s g + b_s

    Output time ``t`` sees ``h`` at ``t, t-d, ..., t-(K-1)d`` only. With ``cond_channels``
    the conditioning ``c`` (global ``(B, C_cond, 1)`` or local ``(B, C_cond, T)``) enters
    through a 1x1 projection :math:`V` (no bias: :math:`b_c` already is one).

    Parameters (initialized like ``nn.Conv1d``): ``conv_weight`` ``(2G, R, K)`` and
    ``conv_bias`` ``(2G,)``; ``res_weight`` ``(R, G)``, ``res_bias`` ``(R,)``;
    ``skip_weight`` ``(S, G)``, ``skip_bias`` ``(S,)``; ``cond_weight`` ``(2G, C_cond)``
    when ``cond_channels`` is set.

    Args:
        residual_channels: ``R``.
        gate_channels: ``G`` (the conv has ``2G`` outputs: tanh and sigmoid halves).
        skip_channels: ``S``.
        kernel_size: ``K`` of the dilated conv.
        dilation: ``d``.
        cond_channels: channels of the conditioning input, or None for none.
        backend: default backend of this layer's calls (None: the global choice).

    Shape:
        ``forward``: ``h`` ``(B, R, T)``, ``cond`` ``(B, C_cond, 1 or T)`` ->
        ``(h_out (B, R, T), skip (B, S, T))``. ``step``: ``h_t`` ``(B, R)``, ``state`` from
        :meth:`init_state`, ``cond_t`` ``(B, C_cond)`` -> ``(B, R), (B, S)``.

    Example:
        >>> block = GatedResidualBlock(32, 32, 64, kernel_size=2, dilation=4)
        >>> h_out, skip = block(torch.randn(2, 32, 100))
        >>> state = block.init_state(2)
        >>> h_t, skip_t = block.step(torch.randn(2, 32), state)
    """

    def __init__(
        self,
        residual_channels: int,
        gate_channels: int,
        skip_channels: int,
        kernel_size: int = 2,
        dilation: int = 1,
        cond_channels: int | None = None,
        *,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        for arg, value in (
            ("residual_channels", residual_channels),
            ("gate_channels", gate_channels),
            ("skip_channels", skip_channels),
            ("kernel_size", kernel_size),
            ("dilation", dilation),
        ):
            check_int(name, arg, value, minimum=1)
        if cond_channels is not None:
            check_int(name, "cond_channels", cond_channels, minimum=1)
        R, G, S, K = residual_channels, gate_channels, skip_channels, kernel_size
        factory = dict(device=device, dtype=dtype)
        self.conv_weight = nn.Parameter(torch.empty(2 * G, R, K, **factory))
        self.conv_bias = nn.Parameter(torch.empty(2 * G, **factory))
        self.res_weight = nn.Parameter(torch.empty(R, G, **factory))
        self.res_bias = nn.Parameter(torch.empty(R, **factory))
        self.skip_weight = nn.Parameter(torch.empty(S, G, **factory))
        self.skip_bias = nn.Parameter(torch.empty(S, **factory))
        self.cond_weight = nn.Parameter(torch.empty(2 * G, cond_channels, **factory)) if cond_channels else None
        self.residual_channels, self.gate_channels, self.skip_channels = R, G, S
        self.kernel_size, self.dilation, self.cond_channels = K, dilation, cond_channels
        self.backend = backend
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv1d's initialization: uniform(+-1/sqrt(fan_in)) for weights and biases."""
        for weight, bias in (
            (self.conv_weight, self.conv_bias),
            (self.res_weight, self.res_bias),
            (self.skip_weight, self.skip_bias),
            (self.cond_weight, None),
        ):
            if weight is None:
                continue
            fan_in = weight[0].numel()
            # kaiming_uniform_(a=sqrt(5)) as nn.Conv1d: bound 1/sqrt(fan_in).
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            if bias is not None:
                nn.init.uniform_(bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def _project(self, cond: torch.Tensor | None, dims: int) -> torch.Tensor | None:
        name = type(self).__name__
        if self.cond_weight is None:
            if cond is not None:
                raise ValueError(f"{name}: got cond but the block was built with cond_channels=None")
            return None
        if cond is None:
            raise ValueError(f"{name}: cond is required (cond_channels={self.cond_channels})")
        if not isinstance(cond, torch.Tensor) or cond.dim() != dims or cond.shape[1] != self.cond_channels:
            shape = "(B, C_cond, 1 or T)" if dims == 3 else "(B, C_cond)"
            got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ValueError(f"{name}: cond must have shape {shape} with C_cond = {self.cond_channels}, got {got}")
        check_same_device(name, "the block's cond_weight", self.cond_weight, cond=cond)
        return torch.einsum("oc,bc...->bo...", self.cond_weight, cond)

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return gated_residual_block(
            h,
            self.conv_weight,
            self.conv_bias,
            self.res_weight,
            self.res_bias,
            self.skip_weight,
            self.skip_bias,
            dilation=self.dilation,
            cond=self._project(cond, 3),
            backend=self.backend,
        )

    def init_state(
        self, batch: int, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Zero state ``(batch, R, (K-1)*dilation)`` for :meth:`step` (parameters' dtype/device by default)."""
        check_int(type(self).__name__, "batch", batch, minimum=0)
        return torch.zeros(
            batch,
            self.residual_channels,
            (self.kernel_size - 1) * self.dilation,
            dtype=dtype or self.conv_weight.dtype,
            device=device or self.conv_weight.device,
        )

    def step(
        self,
        h_t: torch.Tensor,
        state: torch.Tensor,
        cond_t: torch.Tensor | None = None,
        position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step (updates ``state`` in place); see :func:`fastgen.ops.gated_residual_block_step`."""
        return gated_residual_block_step(
            h_t,
            state,
            self.conv_weight,
            self.conv_bias,
            self.res_weight,
            self.res_bias,
            self.skip_weight,
            self.skip_bias,
            dilation=self.dilation,
            cond_t=self._project(cond_t, 2),
            position=position,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        cond = f", cond_channels={self.cond_channels}" if self.cond_channels else ""
        return (
            f"residual_channels={self.residual_channels}, gate_channels={self.gate_channels}, "
            f"skip_channels={self.skip_channels}, kernel_size={self.kernel_size}, dilation={self.dilation}{cond}"
        )
