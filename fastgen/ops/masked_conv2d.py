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

**Step form** (incremental sampling, Ramachandran et al. 2017, "Fast Generation for
Convolutional Autoregressive Models"): :func:`masked_conv2d_step` computes the output at one
pixel ``(i, j)``, ``(B, C_out)``, equal to ``masked_conv2d(x)[:, :, i, j]``, from a *buffer*
holding the layer's input in a zero-padded channels-last layout

.. code-block:: text

    buffer: (B, H + P, W + 2P, C_in),  P = dilation * (k // 2)
    pixel (h, w) of the input at buffer[:, P + h, P + w, :]; everything else stays zero

so that the taps of pixel ``(i, j)`` are ``buffer[:, i + kh * dilation, j + kw * dilation, :]``
for the kept taps ``(kh, kw)``, always in bounds: no clipping, and for ``dilation = 1`` each
kernel row is one contiguous run of ``k * C_in`` values (rows below the centre are never
read, so there is no bottom padding). A sampler allocates it once
(:func:`masked_conv2d_step_buffer`), writes each pixel's input as it becomes known
(:func:`masked_conv2d_step_write`) and steps the pixels in raster order. The kept taps are
the first ``T = (k//2) * k + k//2 (+ 1)`` of the kernel in raster order (the centre is kept
by mask B, or partly by colour groups), so the step is one GEMM ``(B, T * C_in) @ (T * C_in,
C_out)`` against the weight packed once (:func:`masked_conv2d_step_pack`, masked taps and
the colour rule folded in; :class:`fastgen.nn.MaskedConv2d` caches it). The step is for
sampling: it has no autograd (it runs without recording a graph).

This file holds, in order: the reference and its mask, the step's reference and helpers, the
registrations of the fast paths (fake tensors and autograd), and the public functions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .. import backends
from . import _conv_autograd
from ._checks import (
    check_choice,
    check_extents,
    check_int,
    check_no_overlap,
    check_odd_int,
    check_same_device,
    check_tensor,
)

__all__ = [
    "check_mask_args",
    "masked_conv2d",
    "masked_conv2d_mask",
    "masked_conv2d_ref",
    "masked_conv2d_step",
    "masked_conv2d_step_buffer",
    "masked_conv2d_step_pack",
    "masked_conv2d_step_ref",
    "masked_conv2d_step_taps",
    "masked_conv2d_step_write",
    "masked_conv2d_stepper",
]

OP = "masked_conv2d"
STEP_OP = "masked_conv2d_step"
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
    """The 0/1 mask of a masked convolution, shape ``(out_channels, in_channels, k, k)``:
    channel counts >= 1, an odd ``kernel_size``, as :func:`masked_conv2d` takes."""
    name = "masked_conv2d_mask"
    check_int(name, "out_channels", out_channels, minimum=1)
    check_int(name, "in_channels", in_channels, minimum=1)
    check_odd_int(name, "kernel_size", kernel_size)
    check_mask_args(name, mask_type, color_channels, in_channels, out_channels)
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


def masked_conv2d_step_taps(kernel_size: int, mask_type: str, color_channels: int = 1) -> int:
    """``T``, the number of taps a mask keeps: ``k//2`` full rows, ``k//2`` taps of the centre
    row, and the centre unless mask A removes it for every channel pair (``color_channels=1``).
    They are the first ``T`` taps of the kernel in raster order."""
    c = kernel_size // 2
    return c * kernel_size + c + int(mask_type == "B" or color_channels > 1)


def masked_conv2d_step_ref(
    buffer: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    i: int,
    j: int,
    mask_type: str,
    color_channels: int = 1,
    dilation: int = 1,
) -> torch.Tensor:
    """Reference step in plain PyTorch: ``F.conv2d`` of the masked kernel's rows down to the
    centre over the window of pixel ``(i, j)`` in ``buffer``.

    Args:
        buffer: ``(B, H + P, W + 2P, C_in)``, ``P = dilation * (k // 2)``: the layer's input
            zero-padded, channels last (see the module docstring).
        weight, bias, mask_type, color_channels, dilation: as in :func:`masked_conv2d_ref`.
        i, j: the pixel, ``0 <= i < H``, ``0 <= j < W``.

    Returns:
        ``(B, C_out)``, equal to ``masked_conv2d_ref(x, ...)[:, :, i, j]``.
    """
    c_out, c_in, k, _ = weight.shape
    c, pad = k // 2, dilation * (k // 2)
    window = buffer[:, i : i + pad + 1, j : j + 2 * pad + 1, :].permute(0, 3, 1, 2)  # (B, C_in, P+1, 2P+1)
    mask = masked_conv2d_mask(c_out, c_in, k, mask_type, color_channels, dtype=weight.dtype, device=weight.device)
    return F.conv2d(window, (weight * mask)[:, :, : c + 1], bias, dilation=dilation)[:, :, 0, 0]


def masked_conv2d_step_pack(weight: torch.Tensor, *, mask_type: str, color_channels: int = 1) -> torch.Tensor:
    """The weight of :func:`masked_conv2d_step`'s GEMM: ``(C_out, C_in, k, k) -> (T * C_in,
    C_out)`` contiguous, row ``t * C_in + i`` the kept tap ``t`` (raster order) of input
    channel ``i``, with the colour rule applied (zeros) at the centre. Detached (the step has
    no autograd); compute it once per weight (:class:`fastgen.nn.MaskedConv2d` caches it).

    Example:
        >>> masked_conv2d_step_pack(torch.randn(16, 4, 7, 7), mask_type="A").shape  # 24 taps
        torch.Size([96, 16])
    """
    name = "masked_conv2d_step_pack"
    check_tensor(name, "weight", weight, ("C_out", "C_in", "k", "k"))
    c_out, c_in, k, kw = weight.shape
    if k != kw or k % 2 == 0:
        raise ValueError(f"{name}: weight must have a square kernel of odd size (k, k), got {k}x{kw}")
    check_mask_args(name, mask_type, color_channels, c_in, c_out)
    n_taps = masked_conv2d_step_taps(k, mask_type, color_channels)
    with torch.no_grad():
        mask = masked_conv2d_mask(c_out, c_in, k, mask_type, color_channels, dtype=weight.dtype, device=weight.device)
        taps = (weight * mask).flatten(2)[:, :, :n_taps]  # (C_out, C_in, T)
        return taps.permute(2, 1, 0).reshape(n_taps * c_in, c_out).contiguous()


def masked_conv2d_step_buffer(
    batch: int,
    height: int,
    width: int,
    channels: int,
    kernel_size: int,
    *,
    dilation: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A zero buffer ``(batch, height + P, width + 2P, channels)``, ``P = dilation *
    (kernel_size // 2)``, for :func:`masked_conv2d_step` on ``height x width`` images.

    Example:
        >>> masked_conv2d_step_buffer(2, 28, 28, 64, 7).shape
        torch.Size([2, 31, 34, 64])
    """
    name = "masked_conv2d_step_buffer"
    for arg, value, low in (("batch", batch, 0), ("height", height, 1), ("width", width, 1), ("channels", channels, 1),
                            ("dilation", dilation, 1)):
        check_int(name, arg, value, minimum=low)
    check_odd_int(name, "kernel_size", kernel_size)
    pad = dilation * (kernel_size // 2)
    return torch.zeros(batch, height + pad, width + 2 * pad, channels, dtype=dtype, device=device)


def masked_conv2d_step_write(
    buffer: torch.Tensor, value: torch.Tensor, i: int, j: int, *, kernel_size: int, dilation: int = 1,
    channel: int = 0,
) -> None:
    """Writes pixel ``(i, j)`` of the layer's input into ``buffer`` (in place): ``value``
    ``(B, n)`` goes to channels ``channel .. channel + n - 1`` (all of them by default; one
    colour at a time for a first layer sampled channel by channel). ``buffer`` must own its
    memory (not an ``expand``-ed view, whose examples would share it).

    Example:
        >>> buffer = masked_conv2d_step_buffer(2, 5, 5, 3, 3)
        >>> masked_conv2d_step_write(buffer, torch.ones(2, 1), 0, 4, kernel_size=3, channel=2)
        >>> buffer[:, 1, 5].tolist()  # P = 1: pixel (0, 4) at buffer[:, 1, 5]
        [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    """
    name = "masked_conv2d_step_write"
    check_tensor(name, "buffer", buffer, ("B", "H + P", "W + 2P", "C_in"))
    check_no_overlap(name, "buffer", buffer)
    check_tensor(name, "value", value, ("B", "n"))
    check_int(name, "kernel_size", kernel_size, minimum=1)
    check_int(name, "dilation", dilation, minimum=1)
    check_int(name, "channel", channel, minimum=0)
    height, width = _buffer_image(name, buffer, kernel_size, dilation)
    _check_pixel(name, i, j, height, width)
    n = value.shape[1]
    if value.shape[0] != buffer.shape[0] or channel + n > buffer.shape[3]:
        raise ValueError(
            f"{name}: value must be (B, n) = ({buffer.shape[0]}, n) with channel + n <= C_in = {buffer.shape[3]}, "
            f"got shape {tuple(value.shape)} at channel={channel}"
        )
    pad = dilation * (kernel_size // 2)
    buffer[:, pad + i, pad + j, channel : channel + n] = value


def _buffer_image(op: str, buffer: torch.Tensor, kernel_size: int, dilation: int) -> tuple[int, int]:
    """The image size ``(H, W)`` of a step buffer ``(B, H + P, W + 2P, C)``; ValueError if too small."""
    pad = dilation * (kernel_size // 2)
    height, width = buffer.shape[1] - pad, buffer.shape[2] - 2 * pad
    if kernel_size % 2 == 0 or height < 1 or width < 1:
        raise ValueError(
            f"{op}: buffer must have shape (B, H + P, W + 2P, C_in) with P = dilation * (k // 2) = {pad} "
            f"(k = {kernel_size}, dilation = {dilation}) and H, W >= 1, got shape {tuple(buffer.shape)}"
        )
    return height, width


def _check_pixel(op: str, i: object, j: object, height: int, width: int) -> None:
    for name, value, size in (("i", i, height), ("j", j, width)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
        if not 0 <= value < size:
            raise ValueError(
                f"{op}: pixel (i, j) = ({i}, {j}) is outside the {height}x{width} image of the buffer "
                f"(need 0 <= i < {height}, 0 <= j < {width})"
            )


# ------------------------------------------------------------------------- registrations
# The cpp ops' schemas are defined in csrc/fastgen.cpp (with their CPU kernels in
# csrc/cpu/masked_conv2d.cpp); the Triton ops are defined here. Both get the same fake
# implementations and the same autograd formula, which calls the op's backward (the step
# has no autograd).


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


@torch.library.custom_op("fastgen::masked_conv2d_step_triton", mutates_args=())
def _masked_conv2d_step_triton(
    buffer: torch.Tensor,
    packed_weight: torch.Tensor,
    bias: torch.Tensor | None,
    i: int,
    j: int,
    kernel_size: int,
    mask_type: str,
    color_channels: int,
    dilation: int,
) -> torch.Tensor:
    from .triton.masked_conv2d import masked_conv2d_step as step

    return step(buffer, packed_weight, bias, i, j, kernel_size, mask_type, color_channels, dilation)


def _fake_step(buffer, packed_weight, bias, i, j, kernel_size, mask_type, color_channels, dilation):
    return buffer.new_empty((buffer.shape[0], packed_weight.shape[1]))


_BACKENDS = backends.OpBackends(
    OP,
    {"ref": backends.ref_support(), "cpp": backends.cpp_support(OP), "triton": backends.triton_support()},
)
_STEP_BACKENDS = backends.OpBackends(
    STEP_OP,
    {"ref": backends.ref_support(), "cpp": backends.cpp_support(STEP_OP), "triton": backends.triton_support()},
)
_FAST_OPS = {
    "triton": _conv_autograd.register(
        "masked_conv2d_triton", "masked_conv2d_triton_backward", _fake_forward, _fake_backward
    )
}
torch.library.register_fake("fastgen::masked_conv2d_step_triton")(_fake_step)
_STEP_OPS = {"triton": torch.ops.fastgen.masked_conv2d_step_triton.default}
if _BACKENDS.supports["cpp"].unavailable is None:
    _FAST_OPS["cpp"] = _conv_autograd.register("masked_conv2d", "masked_conv2d_backward", _fake_forward, _fake_backward)
if _STEP_BACKENDS.supports["cpp"].unavailable is None:
    torch.library.register_fake("fastgen::masked_conv2d_step")(_fake_step)
    _STEP_OPS["cpp"] = torch.ops.fastgen.masked_conv2d_step.default


# ------------------------------------------------------------------------------ public


def _check_weights(op, name, inp, channels_at, weight, bias, mask_type, color_channels, dilation) -> int:
    """The weight, bias and mask arguments of a masked convolution reading ``inp`` (named
    ``name``), whose channels are ``inp.shape[channels_at]``; returns ``k``."""
    check_tensor(op, "weight", weight, ("C_out", "C_in", "k", "k"))
    check_same_device(op, name, inp, weight=weight)
    c_out, c_in, k, kw = weight.shape
    if k != kw or k % 2 == 0:
        raise ValueError(f"{op}: weight must have a square kernel of odd size (k, k), got {k}x{kw}")
    channels = inp.shape[channels_at]
    if c_in != channels or c_in == 0 or c_out == 0:
        raise ValueError(
            f"{op}: weight must be (C_out, C_in, k, k) with C_in = {name}.shape[{channels_at}] = {channels} >= 1 and "
            f"C_out >= 1, got weight shape {tuple(weight.shape)}"
        )
    if bias is not None:
        check_tensor(op, "bias", bias, ("C_out",))
        check_same_device(op, name, inp, bias=bias)
        if bias.shape[0] != c_out:
            raise ValueError(f"{op}: bias must have shape ({c_out},) to match weight, got {tuple(bias.shape)}")
    check_mask_args(op, mask_type, color_channels, c_in, c_out)
    check_int(op, "dilation", dilation, minimum=1)
    return k


def _check_args(x, weight, bias, mask_type, color_channels, dilation) -> None:
    check_tensor(OP, "x", x, ("B", "C_in", "H", "W"))
    check_extents(OP, "x", x, ("H", "W"))
    _check_weights(OP, "x", x, 1, weight, bias, mask_type, color_channels, dilation)


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
        x: ``(B, C_in, H, W)``, ``H, W >= 1`` (an empty batch is fine), any strides.
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


def _check_step_args(buffer, weight, bias, mask_type, color_channels, dilation, packed_weight) -> None:
    """Everything of a step but the pixel, which each step checks (:func:`_check_pixel`)."""
    check_tensor(STEP_OP, "buffer", buffer, ("B", "H + P", "W + 2P", "C_in"))
    k = _check_weights(STEP_OP, "buffer", buffer, 3, weight, bias, mask_type, color_channels, dilation)
    c_out, c_in = weight.shape[:2]
    _buffer_image(STEP_OP, buffer, k, dilation)
    if packed_weight is not None:
        check_tensor(STEP_OP, "packed_weight", packed_weight, ("T * C_in", "C_out"))
        check_same_device(STEP_OP, "buffer", buffer, packed_weight=packed_weight)
        rows = masked_conv2d_step_taps(k, mask_type, color_channels) * c_in
        if tuple(packed_weight.shape) != (rows, c_out):
            raise ValueError(
                f"{STEP_OP}: packed_weight must be masked_conv2d_step_pack(weight, ...) of shape (T * C_in, C_out) = "
                f"({rows}, {c_out}), got {tuple(packed_weight.shape)}"
            )


def masked_conv2d_step(
    buffer: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    i: int,
    j: int,
    mask_type: str,
    color_channels: int = 1,
    dilation: int = 1,
    packed_weight: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """The output of :func:`masked_conv2d` at one pixel, from the layer's input in a step buffer.

    Equal to ``masked_conv2d(x, weight, bias, ...)[:, :, i, j]`` when ``buffer`` holds ``x``
    (at least every pixel before ``(i, j)`` in raster order, and ``(i, j)`` itself for the
    channels the centre tap sees). No autograd: the step runs without recording a graph (its
    output never requires grad); it is meant for sampling.

    Args:
        buffer: ``(B, H + P, W + 2P, C_in)``, ``P = dilation * (k // 2)``: pixel ``(h, w)`` of
            the input at ``buffer[:, P + h, P + w]``, zeros elsewhere (see the module
            docstring; :func:`masked_conv2d_step_buffer`, :func:`masked_conv2d_step_write`).
            Any strides.
        weight: ``(C_out, C_in, k, k)`` with odd ``k``, as in :func:`masked_conv2d`.
        bias: ``(C_out,)`` or None.
        i, j: the pixel, python ints, ``0 <= i < H`` and ``0 <= j < W``.
        mask_type, color_channels, dilation: as in :func:`masked_conv2d`.
        packed_weight: ``masked_conv2d_step_pack(weight, mask_type=..., color_channels=...)``,
            to pack once for many steps; None packs ``weight`` on each call.
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None (see
            :mod:`fastgen.backends`).

    Returns:
        ``(B, C_out)``.

    Example:
        >>> x = torch.randn(2, 4, 6, 5)
        >>> w, b = torch.randn(8, 4, 3, 3), torch.randn(8)
        >>> buffer = masked_conv2d_step_buffer(2, 6, 5, 4, 3)
        >>> buffer[:, 1:, 1:-1] = x.permute(0, 2, 3, 1)  # P = 1
        >>> y = masked_conv2d_step(buffer, w, b, i=3, j=4, mask_type="B")
        >>> torch.allclose(y, masked_conv2d(x, w, b, mask_type="B")[:, :, 3, 4], atol=1e-5)
        True
    """
    step = masked_conv2d_stepper(
        buffer, weight, bias, mask_type=mask_type, color_channels=color_channels, dilation=dilation,
        packed_weight=packed_weight, backend=backend,
    )
    return step(i, j)


def masked_conv2d_stepper(
    buffer: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    mask_type: str,
    color_channels: int = 1,
    dilation: int = 1,
    packed_weight: torch.Tensor | None = None,
    backend: str | None = None,
) -> Callable[[int, int], torch.Tensor]:
    """:func:`masked_conv2d_step` at many pixels of one buffer: the arguments are checked and
    the backend chosen once, and the returned ``step(i, j) -> (B, C_out)`` calls the kernel
    directly. For sampling loops: at a small layer the checks of every call would cost about
    a third of the step.

    ``step`` reads ``buffer``, ``weight`` (the reference backend), ``packed_weight`` and
    ``bias`` at each call, so their values may change between calls, but not their shapes,
    dtypes or devices; it checks ``i`` and ``j`` itself, and the compiled kernels check
    everything else that could make them read out of bounds. Arguments as in
    :func:`masked_conv2d_step` (``packed_weight=None`` packs ``weight`` once, here).

    Example:
        >>> w, b = torch.randn(8, 4, 3, 3), torch.randn(8)
        >>> buffer = masked_conv2d_step_buffer(2, 6, 5, 4, 3)
        >>> step = masked_conv2d_stepper(buffer, w, b, mask_type="B")
        >>> step(3, 4).shape
        torch.Size([2, 8])
    """
    _check_step_args(buffer, weight, bias, mask_type, color_channels, dilation, packed_weight)
    name = _STEP_BACKENDS.select(backend, buffer)
    k = weight.shape[2]
    height, width = _buffer_image(STEP_OP, buffer, k, dilation)
    if name == "ref":

        def step(i: int, j: int) -> torch.Tensor:
            _check_pixel(STEP_OP, i, j, height, width)
            with torch.no_grad():
                return masked_conv2d_step_ref(
                    buffer, weight, bias, i=i, j=j, mask_type=mask_type, color_channels=color_channels,
                    dilation=dilation,
                )

        return step
    if packed_weight is None:
        packed_weight = masked_conv2d_step_pack(weight, mask_type=mask_type, color_channels=color_channels)
    kernel = _STEP_OPS[name]

    def step(i: int, j: int) -> torch.Tensor:
        _check_pixel(STEP_OP, i, j, height, width)
        with torch.no_grad():
            return kernel(buffer, packed_weight, bias, i, j, k, mask_type, color_channels, dilation)

    return step
