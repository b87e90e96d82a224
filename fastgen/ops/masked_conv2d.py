r"""PixelCNN masked 2-D convolution (van den Oord et al. 2016, "Pixel Recurrent Neural Networks").

.. math::

    y = \operatorname{conv2d}(x, W \odot M, b), \quad \text{padding} = d\,\lfloor k/2 \rfloor

where the mask :math:`M` keeps the taps above the centre row and, in the centre row, the
taps left of the centre; mask ``"A"`` excludes the centre tap, mask ``"B"`` includes it.
With ``color_channels=n`` (3 for RGB), input and output channels are split into ``n``
consecutive groups and, at the centre tap only, output group ``g`` sees input groups
``< g`` (mask A) or ``<= g`` (mask B): a pixel's colours are generated R, G, B in turn.

The fast paths (``cpp``, ``triton``) never multiply a masked-out tap: a 7x7 mask keeps 24
(A) or 25 (B) of 49 taps, and the kernels loop over those taps only.

This file holds, in order: the reference and its mask, the registrations of the fast
paths (fake tensors and autograd), and the public function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends
from . import _conv_autograd
from ._checks import check_choice, check_int, check_same_device, check_tensor

__all__ = ["check_mask_args", "masked_conv2d", "masked_conv2d_mask", "masked_conv2d_ref"]

OP = "masked_conv2d"
MASK_TYPES = ("A", "B")


def check_mask_args(op: str, mask_type: object, color_channels: object, in_channels: int, out_channels: int) -> None:
    """The mask's arguments: ``mask_type`` "A" or "B"; ``color_channels`` an int >= 1 that
    divides both channel counts (ValueError/TypeError naming the argument, as ``op``)."""
    check_choice(op, "mask_type", mask_type, MASK_TYPES)
    check_int(op, "color_channels", color_channels, minimum=1)
    if in_channels % color_channels or out_channels % color_channels:
        raise ValueError(
            f"{op}: color_channels={color_channels} must divide the input and output channel counts, "
            f"got {in_channels} and {out_channels}"
        )


# ----------------------------------------------------------------------------- reference


def masked_conv2d_mask(
    out_channels: int,
    in_channels: int,
    kernel_size: int,
    mask_type: str,
    color_channels: int = 1,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The 0/1 mask of a masked convolution, shape ``(out_channels, in_channels, k, k)``."""
    check_mask_args("masked_conv2d_mask", mask_type, color_channels, in_channels, out_channels)
    k, c = kernel_size, kernel_size // 2
    mask = torch.zeros(out_channels, in_channels, k, k, dtype=dtype, device=device)
    mask[:, :, :c, :] = 1
    mask[:, :, c, :c] = 1
    out_group = torch.arange(out_channels, device=device) // (out_channels // color_channels)
    in_group = torch.arange(in_channels, device=device) // (in_channels // color_channels)
    if mask_type == "A":
        centre = out_group[:, None] > in_group[None, :]
    else:
        centre = out_group[:, None] >= in_group[None, :]
    mask[:, :, c, c] = centre.to(mask.dtype)
    return mask


def masked_conv2d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    mask_type: str,
    color_channels: int = 1,
    dilation: int = 1,
) -> torch.Tensor:
    """Reference masked convolution in plain PyTorch.

    Args:
        x: ``(B, C_in, H, W)``.
        weight: ``(C_out, C_in, k, k)``, odd ``k``; masked taps are ignored.
        bias: ``(C_out,)`` or None.
        mask_type: ``"A"`` (centre excluded) or ``"B"`` (centre included).
        color_channels: number of colour groups of the channels (1, or 3 for RGB).
        dilation: spacing between taps.

    Returns:
        ``(B, C_out, H, W)``.
    """
    c_out, c_in, k, _ = weight.shape
    mask = masked_conv2d_mask(c_out, c_in, k, mask_type, color_channels, dtype=weight.dtype, device=weight.device)
    return F.conv2d(x, weight * mask, bias, padding=dilation * (k // 2), dilation=dilation)


# ------------------------------------------------------------------------- registrations
# The cpp op's schema is defined in csrc/fastgen.cpp (with its CPU kernel in
# csrc/cpu/masked_conv2d.cpp); the Triton op is defined here. Both get the same fake
# implementation and the same autograd formula, which calls the op's backward.


@torch.library.custom_op("fastgen::masked_conv2d_triton", mutates_args=())
def _masked_conv2d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask_type: str,
    color_channels: int,
    dilation: int,
) -> torch.Tensor:
    from .triton.masked_conv2d import masked_conv2d_forward

    return masked_conv2d_forward(x, weight, bias, mask_type, color_channels, dilation)


@torch.library.custom_op("fastgen::masked_conv2d_triton_backward", mutates_args=())
def _masked_conv2d_triton_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    mask_type: str,
    color_channels: int,
    dilation: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton.masked_conv2d import masked_conv2d_backward

    return masked_conv2d_backward(grad_out, x, weight, mask_type, color_channels, dilation, output_mask)


def _fake_forward(x, weight, bias, mask_type, color_channels, dilation):
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))


def _fake_backward(grad_out, x, weight, mask_type, color_channels, dilation, output_mask):
    return (
        x.new_empty(x.shape) if output_mask[0] else x.new_empty(0),
        weight.new_empty(weight.shape) if output_mask[1] else x.new_empty(0),
        weight.new_empty(weight.shape[0]) if output_mask[2] else x.new_empty(0),
    )


_BACKENDS = backends.OpBackends(
    OP,
    {"ref": backends.ref_support(), "cpp": backends.cpp_support(OP), "triton": backends.triton_support()},
)
_FAST_OPS = {
    "triton": _conv_autograd.register(
        "masked_conv2d_triton", "masked_conv2d_triton_backward", _fake_forward, _fake_backward
    )
}
if _BACKENDS.supports["cpp"].unavailable is None:
    _FAST_OPS["cpp"] = _conv_autograd.register("masked_conv2d", "masked_conv2d_backward", _fake_forward, _fake_backward)


# ------------------------------------------------------------------------------ public


def _check_args(x, weight, bias, mask_type, color_channels, dilation) -> None:
    check_tensor(OP, "x", x, ("B", "C_in", "H", "W"))
    check_tensor(OP, "weight", weight, ("C_out", "C_in", "k", "k"))
    check_same_device(OP, "x", x, weight=weight)
    c_out, c_in, kh, kw = weight.shape
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"{OP}: weight must have a square kernel of odd size (k, k), got {kh}x{kw}")
    if c_in != x.shape[1] or c_in == 0 or c_out == 0:
        raise ValueError(
            f"{OP}: weight must be (C_out, C_in, k, k) with C_in = x.shape[1] = {x.shape[1]} >= 1 and C_out >= 1, "
            f"got weight shape {tuple(weight.shape)}"
        )
    if bias is not None:
        check_tensor(OP, "bias", bias, ("C_out",))
        check_same_device(OP, "x", x, bias=bias)
        if bias.shape[0] != c_out:
            raise ValueError(f"{OP}: bias must have shape ({c_out},) to match weight, got {tuple(bias.shape)}")
    check_mask_args(OP, mask_type, color_channels, c_in, c_out)
    check_int(OP, "dilation", dilation, minimum=1)


def masked_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    mask_type: str,
    color_channels: int = 1,
    dilation: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """PixelCNN masked convolution, equal to :func:`masked_conv2d_ref` (stride 1, same size out).

    Args:
        x: ``(B, C_in, H, W)``, any strides.
        weight: ``(C_out, C_in, k, k)`` with odd ``k``; the taps below or right of the
            centre (and the centre for mask A) are ignored and get zero gradient.
        bias: ``(C_out,)`` or None.
        mask_type: ``"A"`` (first layer: the centre pixel is not seen) or ``"B"``.
        color_channels: 1, or 3 for RGB channel-autoregressive masks; must divide
            ``C_in`` and ``C_out``.
        dilation: spacing between taps (>= 1).
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None (see
            :mod:`fastgen.backends`).

    Returns:
        ``(B, C_out, H, W)``, contiguous.

    Example:
        >>> x = torch.randn(2, 1, 28, 28)
        >>> w = torch.randn(16, 1, 7, 7)
        >>> masked_conv2d(x, w, mask_type="A").shape
        torch.Size([2, 16, 28, 28])
    """
    _check_args(x, weight, bias, mask_type, color_channels, dilation)
    name = _BACKENDS.select(backend, x)
    if name == "ref":
        return masked_conv2d_ref(
            x, weight, bias, mask_type=mask_type, color_channels=color_channels, dilation=dilation
        )
    return _FAST_OPS[name](x, weight, bias, mask_type, color_channels, dilation)
