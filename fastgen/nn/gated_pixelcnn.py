r"""Gated PixelCNN layer (van den Oord et al. 2016, "Conditional Image Generation with
PixelCNN Decoders") and its incremental (row by row, pixel by pixel) form."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import gated_pixelcnn_layer
from ..ops._checks import check_int, check_labels, check_odd_int
from ..ops.gated_pixelcnn import check_channels, gated_pixelcnn_masks

__all__ = ["GatedPixelCNNLayer", "GatedPixelCNNState"]


@dataclass
class GatedPixelCNNState:
    """Incremental-sampling buffers of one :class:`GatedPixelCNNLayer`, preallocated per batch
    by :meth:`GatedPixelCNNLayer.init_state`.

    Attributes:
        v_in, h_in: ``(B, C_in, H, W)``: the layer's vertical and horizontal inputs; the
            model writes each row / pixel here as it becomes known (the image itself for a
            first layer, the previous layer's outputs otherwise). ``h_in`` is a view of
            ``h_padded``.
        v_pre: ``(B, 2p, W)``: the vertical pre-activations of the current row, set by
            :meth:`GatedPixelCNNLayer.step_row`.
        h_padded: ``(B, C_in, H, c + W)``: ``h_in`` after ``c = k // 2`` zero columns, so that
            the horizontal window of every pixel is a slice (no padding per pixel).
        h_base: ``(B, W, 2p)``: the horizontal pre-activations of the current row that do
            not depend on ``h_in``: the link of ``v_pre`` plus the horizontal bias, set by
            ``step_row`` (one GEMM per row instead of one per pixel).
        h_matrix: ``((c + 1) * C_in, 2p)``: the horizontal convolution as a matrix over the
            flattened window (the current pixel's taps colour-masked).
        out_matrix, out_bias: ``(p, p + S)``, ``(p + S,)``: the masked residual and skip
            1x1s side by side, one GEMM for both.

    The matrices are the layer's weights when the state was made: make a new state after
    changing them.
    """

    v_in: torch.Tensor
    h_in: torch.Tensor
    v_pre: torch.Tensor
    h_padded: torch.Tensor
    h_base: torch.Tensor
    h_matrix: torch.Tensor
    out_matrix: torch.Tensor
    out_bias: torch.Tensor


def _check_state(op: str, state: object) -> GatedPixelCNNState:
    if not isinstance(state, GatedPixelCNNState):
        raise TypeError(f"{op}: state must be a GatedPixelCNNState from init_state, got {type(state).__name__}")
    return state


class GatedPixelCNNLayer(nn.Module):
    r"""One Gated PixelCNN layer: vertical and horizontal stacks, gates, link, residual, skip.

    .. math::

        V = \text{vconv}(v) + b_v + e_v[y], \quad v' = \tanh(V_{:p}) \odot \sigma(V_{p:}), \quad
        H = \text{hconv}(h) + b_h + L V + e_h[y], \quad
        h' = [h] + R\,(\tanh(H_{:p}) \odot \sigma(H_{p:})) + b_R

    where ``vconv`` is a ``(k//2+1) x k`` convolution over the rows above (shifted, not
    masked), ``hconv`` a ``1 x (k//2+1)`` convolution over the current row up to the pixel
    (excluding it, or only earlier colours, in the first layer), ``e_v, e_h`` optional
    per-class biases and ``[h]`` the identity (absent in the first layer). See
    :func:`fastgen.ops.gated_pixelcnn_layer`. Stacked layers have no blind spot: the
    horizontal output at a pixel sees every earlier pixel of its receptive field.

    Args:
        channels: ``p``.
        kernel_size: odd ``k``.
        first_layer: the layer reading the image (mask A, no identity residual).
        num_classes: learn a per-class bias of each stack's gates (labels in ``forward``).
        color_channels: 1, or 3 for RGB (divides ``channels``, ``in_channels``, ``skip_channels``).
        in_channels: ``C_in`` (default ``channels``; the image channels in the first layer).
        skip_channels: add a skip output of this many channels.

    Shape:
        ``forward((v, h), labels)``: ``v, h`` ``(B, C_in, H, W)`` (``H, W >= 1``), ``labels``
        ``(B,)`` integers in ``[0, num_classes)`` -> ``(v_out, h_out)`` ``(B, p, H, W)`` each,
        plus ``skip`` ``(B, S, H, W)`` when ``skip_channels`` is set. The steps take row and
        column indices ``0 <= i < H``, ``0 <= j < W`` and labels of the state's batch.

    Example:
        >>> first = GatedPixelCNNLayer(32, 7, first_layer=True, in_channels=1)
        >>> layers = torch.nn.Sequential(first, GatedPixelCNNLayer(32, 3))
        >>> x = torch.randn(4, 1, 28, 28)
        >>> v, h = layers((x, x))
        >>> h.shape
        torch.Size([4, 32, 28, 28])
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        first_layer: bool = False,
        num_classes: int | None = None,
        color_channels: int = 1,
        in_channels: int | None = None,
        skip_channels: int | None = None,
        *,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        name = "GatedPixelCNNLayer"
        p, n = channels, color_channels
        k = check_odd_int(name, "kernel_size", kernel_size)
        c_in = p if in_channels is None else in_channels
        if skip_channels is not None:
            check_int(name, "skip_channels", skip_channels, minimum=1)
        check_channels(name, p, c_in, skip_channels or 0, n)
        if num_classes is not None:
            check_int(name, "num_classes", num_classes, minimum=1)
        if not first_layer and c_in != p:
            raise ValueError(f"{name}: later layers need in_channels == channels, got {c_in} and {p}")
        self.channels, self.kernel_size, self.first_layer = p, k, bool(first_layer)
        self.in_channels, self.color_channels, self.skip_channels = c_in, n, skip_channels
        self.num_classes, self.backend = num_classes, backend
        c = k // 2
        f = dict(device=device, dtype=dtype)
        self.v_weight = nn.Parameter(torch.empty(2 * p, c_in, c + 1, k, **f))
        self.v_bias = nn.Parameter(torch.empty(2 * p, **f))
        self.h_weight = nn.Parameter(torch.empty(2 * p, c_in, 1, c + 1, **f))
        self.h_bias = nn.Parameter(torch.empty(2 * p, **f))
        self.link_weight = nn.Parameter(torch.empty(2 * p, 2 * p, **f))
        self.res_weight = nn.Parameter(torch.empty(p, p, **f))
        self.res_bias = nn.Parameter(torch.empty(p, **f))
        if skip_channels is not None:
            self.skip_weight = nn.Parameter(torch.empty(skip_channels, p, **f))
            self.skip_bias = nn.Parameter(torch.empty(skip_channels, **f))
        else:
            self.register_parameter("skip_weight", None)
            self.register_parameter("skip_bias", None)
        if num_classes is not None:
            self.v_embedding = nn.Parameter(torch.zeros(num_classes, 2 * p, **f))
            self.h_embedding = nn.Parameter(torch.zeros(num_classes, 2 * p, **f))
        else:
            self.register_parameter("v_embedding", None)
            self.register_parameter("h_embedding", None)
        self._checked_labels: tuple[torch.Tensor, int] | None = None  # see _conds
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialization for each convolution (uniform in +-1/sqrt(fan_in))."""
        for weight, bias in (
            (self.v_weight, self.v_bias), (self.h_weight, self.h_bias), (self.link_weight, None),
            (self.res_weight, self.res_bias), (self.skip_weight, self.skip_bias),
        ):
            if weight is None:
                continue
            bound = 1 / math.sqrt(weight[0].numel())
            nn.init.uniform_(weight, -bound, bound)
            if bias is not None:
                nn.init.uniform_(bias, -bound, bound)

    def _conds(
        self, op: str, labels: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.num_classes is None:
            if labels is not None:
                raise ValueError(f"{op}: labels given but the layer has no num_classes")
            return None, None
        if labels is None:
            raise ValueError(f"{op}: this layer is class-conditional (num_classes set): pass labels (B,)")
        # Sampling passes the same labels at every row and pixel: their values (one
        # reduction, a host sync) are checked once, until they change or others come.
        checked = self._checked_labels
        if checked is None or labels is not checked[0] or labels._version != checked[1] or labels.shape != (batch,):
            labels = check_labels(op, "labels", labels, self.num_classes, batch)
            self._checked_labels = (labels, labels._version)
        return self.v_embedding[labels], self.h_embedding[labels]

    def forward(self, vh: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor | None = None):
        if not isinstance(vh, (tuple, list)) or len(vh) != 2:
            got = f"a {type(vh).__name__} of {len(vh)}" if isinstance(vh, (tuple, list)) else type(vh).__name__
            raise TypeError(f"GatedPixelCNNLayer: the input must be a pair (v, h) of tensors, got {got}")
        v, h = vh
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"GatedPixelCNNLayer: v must be a torch.Tensor, got {type(v).__name__}")
        v_cond, h_cond = self._conds("GatedPixelCNNLayer", labels, v.shape[0])
        v_out, h_out, skip = gated_pixelcnn_layer(
            v, h, self.v_weight, self.v_bias, self.h_weight, self.h_bias, self.link_weight, self.res_weight,
            self.res_bias, self.skip_weight, self.skip_bias, first_layer=self.first_layer,
            color_channels=self.color_channels, v_cond=v_cond, h_cond=h_cond, backend=self.backend,
        )
        return (v_out, h_out) if skip is None else (v_out, h_out, skip)

    # ------------------------------------------------------------------ incremental form

    def init_state(
        self, batch: int, height: int, width: int, *, dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> GatedPixelCNNState:
        """Zeroed buffers for sampling ``batch`` images of ``height x width``, and the
        layer's weights in the layout of :meth:`step_pixel`."""
        name = "GatedPixelCNNLayer.init_state"
        check_int(name, "batch", batch, minimum=0)
        check_int(name, "height", height, minimum=1)
        check_int(name, "width", width, minimum=1)
        f = dict(dtype=dtype or self.v_weight.dtype, device=device or self.v_weight.device)
        p, c, c_in = self.channels, self.kernel_size // 2, self.in_channels
        centre, res_mask, skip_mask = gated_pixelcnn_masks(
            p, c_in, self.skip_channels or 0, first_layer=self.first_layer, color_channels=self.color_channels,
            dtype=self.h_weight.dtype, device=self.h_weight.device,
        )
        h_weight = self.h_weight[:, :, 0].clone()  # (2p, C_in, c+1)
        h_weight[:, :, c] *= centre
        out_matrix, out_bias = self.res_weight * res_mask, self.res_bias
        if self.skip_weight is not None:
            out_matrix = torch.cat([out_matrix, self.skip_weight * skip_mask])
            out_bias = torch.cat([out_bias, self.skip_bias])
        h_padded = torch.zeros(batch, c_in, height, c + width, **f)
        return GatedPixelCNNState(
            v_in=torch.zeros(batch, c_in, height, width, **f),
            h_in=h_padded[:, :, :, c:],
            v_pre=torch.zeros(batch, 2 * p, width, **f),
            h_padded=h_padded,
            h_base=torch.zeros(batch, width, 2 * p, **f),
            h_matrix=h_weight.reshape(2 * p, -1).t().to(**f).contiguous(),
            out_matrix=out_matrix.t().to(**f).contiguous(),
            out_bias=out_bias.to(**f),
        )

    def step_row(self, state: GatedPixelCNNState, i: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Row ``i`` of the vertical stack from the buffered rows of ``state.v_in`` above it
        (and row ``i`` itself in later layers). Stores the row's pre-activations in
        ``state.v_pre`` and their link in ``state.h_base``, and returns ``v_out[:, :, i]``
        ``(B, p, W)``."""
        op = "GatedPixelCNNLayer.step_row"
        batch, _, height, _ = _check_state(op, state).v_in.shape
        check_int(op, "i", i, minimum=0, below=height)
        v_cond, _ = self._conds(op, labels, batch)
        c = self.kernel_size // 2
        top = i - c - 1 if self.first_layer else i - c  # input row of kernel row 0
        rows = state.v_in[:, :, max(top, 0) : top + c + 1]
        rows = F.pad(rows, (c, c, max(-top, 0), c + 1 - max(-top, 0) - rows.shape[2]))
        v_pre = F.conv2d(rows, self.v_weight, self.v_bias)[:, :, 0]  # (B, 2p, W)
        if v_cond is not None:
            v_pre = v_pre + v_cond[:, :, None]
        state.v_pre.copy_(v_pre)
        # (B, W, 2p): h_bias + L v_pre at every pixel of the row
        state.h_base.copy_(torch.matmul(v_pre.transpose(1, 2), self.link_weight.t()).add_(self.h_bias))
        p = self.channels
        return torch.tanh(v_pre[:, :p]) * torch.sigmoid(v_pre[:, p:])

    def step_pixel(self, state: GatedPixelCNNState, i: int, j: int, labels: torch.Tensor | None = None):
        """The horizontal stack at pixel ``(i, j)`` from ``state.h_in[:, :, i, j-c : j+1]``
        and ``state.h_base`` (row ``i``, set by :meth:`step_row`). Returns ``h_out`` ``(B, p)``,
        or ``(h_out, skip)`` with skip channels. Pure in the state: after writing another
        colour of pixel ``(i, j)`` into ``h_in``, call it again for the next colour group."""
        op = "GatedPixelCNNLayer.step_pixel"
        batch, _, height, width = _check_state(op, state).h_in.shape
        check_int(op, "i", i, minimum=0, below=height)
        check_int(op, "j", j, minimum=0, below=width)
        _, h_cond = self._conds(op, labels, batch)
        p, c = self.channels, self.kernel_size // 2
        window = state.h_padded[:, :, i, j : j + c + 1].reshape(len(state.h_padded), -1)  # (B, C_in * (c+1))
        h_pre = torch.addmm(state.h_base[:, j], window, state.h_matrix)  # (B, 2p)
        if h_cond is not None:
            h_pre += h_cond
        g = torch.tanh(h_pre[:, :p]) * torch.sigmoid(h_pre[:, p:])
        out = torch.addmm(state.out_bias, g, state.out_matrix)  # (B, p + S)
        h_out = out[:, :p]
        if not self.first_layer:
            h_out += state.h_in[:, :, i, j]
        if self.skip_weight is None:
            return h_out
        return h_out, out[:, p:]

    def extra_repr(self) -> str:
        s = f"{self.channels}, kernel_size={self.kernel_size}, first_layer={self.first_layer}"
        if self.in_channels != self.channels:
            s += f", in_channels={self.in_channels}"
        if self.color_channels != 1:
            s += f", color_channels={self.color_channels}"
        if self.num_classes is not None:
            s += f", num_classes={self.num_classes}"
        if self.skip_channels is not None:
            s += f", skip_channels={self.skip_channels}"
        return s
