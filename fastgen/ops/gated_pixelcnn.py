r"""One layer of the Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation
with PixelCNN Decoders"): a vertical and a horizontal stack without blind spot.

With ``p`` channels, odd kernel ``k`` and ``c = k // 2``:

.. math::

    V &= \operatorname{vconv}(v) + b_v + \text{v\_cond}, \qquad
        v_\text{out} = \tanh(V_{:p}) \odot \sigma(V_{p:}) \\
    H &= \operatorname{hconv}(h) + b_h + L V + \text{h\_cond}, \qquad
        g = \tanh(H_{:p}) \odot \sigma(H_{p:}) \\
    h_\text{out} &= [h] + R g + b_R, \qquad \text{skip} = S g + b_S

- ``vconv`` is a dense ``(c+1) x k`` convolution made causal by *shifting*: output row
  ``i`` reads input rows ``i-c-1 .. i-1`` in the first layer and ``i-c .. i`` in later
  layers (whose input row ``i`` already only encodes rows above ``i``); columns
  ``j-c .. j+c``. So ``v_out[i, j]`` depends only on image rows ``< i``.
- ``hconv`` is a ``1 x (c+1)`` convolution over columns ``j-c .. j`` of the current row.
  Its current-pixel tap is colour-masked like ``masked_conv2d``'s centre tap: with ``n``
  colour groups, the pre-activation channel ``o`` is in group ``(o mod p) // (p/n)`` (both
  gate halves of a channel in the same group) and sees input groups ``< g`` (first layer,
  mask A) or ``<= g`` (later layers, mask B). With ``n = 1`` the first layer does not use
  the current pixel at all.
- ``L`` (link, ``2p x 2p``) is a 1x1 on the vertical *pre-activations*; ``R`` (``p x p``)
  and ``S`` (``S x p``) are 1x1s masked like mask B over colour groups (output group >=
  input group). The identity term ``[h]`` is absent in the first layer.

The CPU fast path (``cpp``) runs the vertical stack (kernels 3, 5 and 7) by Winograd
F(2 x 2) along rows and columns (2 x 2 output tiles from ``(R + 1)`` row points by the
column points of the kernel's columns split in pieces of at most 4, e.g. 5 x 9 products
instead of 4 x 28 for ``k = 7``; a GEMM over channels per product; no output depends,
even by rounding, on an input outside its kernel, see ``csrc/cpu/winograd_conv.h``) and
the horizontal stack through the sparse-tap engine (no padded copies of rows; taps that
leave the image are skipped), adds the biases in the convolutions, applies the gates
with vectorized ATen ops and the gate's backward in one fused pass, and does the link,
residual and skip as batched GEMMs in place. Its
forward returns the pre-activations as extra outputs that the backward reuses (saving
them costs two activations of memory; recomputing them would cost both convolutions
again). The ``triton`` path leaves the dense convolutions and 1x1s to cuDNN/cuBLAS and
fuses the element-wise work around them (cond add and gate; the gate's backward) into
Triton kernels. Double backward is not supported (the backward op has no autograd).

This file holds, in order: masks and the reference, the registrations of the fast path,
and the public function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends
from ._checks import check_bool, check_extents, check_int, check_same_device, check_tensor
from ._registration import PairAutograd

__all__ = ["check_channels", "gated_pixelcnn_layer", "gated_pixelcnn_layer_ref", "gated_pixelcnn_masks"]

OP = "gated_pixelcnn_layer"


def check_channels(
    op: str, channels: object, in_channels: object, skip_channels: object, color_channels: object
) -> None:
    """A layer's channel counts: ``p`` (``channels``) and ``C_in`` ints >= 1, ``S``
    (``skip_channels``) >= 0 (0: no skip output), and ``color_channels`` >= 1 dividing the
    three (ValueError/TypeError naming the argument, as ``op``)."""
    for name, value, low in (("channels", channels, 1), ("in_channels", in_channels, 1),
                             ("skip_channels", skip_channels, 0), ("color_channels", color_channels, 1)):
        check_int(op, name, value, minimum=low)
    if channels % color_channels or in_channels % color_channels or skip_channels % color_channels:
        raise ValueError(
            f"{op}: color_channels={color_channels} must divide channels p={channels}, in_channels C_in={in_channels} "
            f"and skip_channels S={skip_channels}"
        )


# ----------------------------------------------------------------------------- reference


def gated_pixelcnn_masks(
    channels: int,
    in_channels: int,
    skip_channels: int,
    *,
    first_layer: bool,
    color_channels: int,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The colour masks: of the horizontal current-pixel tap ``(2p, C_in)``, of the residual
    ``(p, p)`` and of the skip ``(S, p)`` 1x1 weights (1 = kept); channel counts as
    :func:`check_channels` takes."""
    check_channels("gated_pixelcnn_masks", channels, in_channels, skip_channels, color_channels)
    p, n = channels, color_channels
    pre_group = (torch.arange(2 * p, device=device) % p) // (p // n)
    in_group = torch.arange(in_channels, device=device) // (in_channels // n)
    g_group = torch.arange(p, device=device) // (p // n)
    if first_layer:
        centre = pre_group[:, None] > in_group[None, :]
    else:
        centre = pre_group[:, None] >= in_group[None, :]
    res = g_group[:, None] >= g_group[None, :]
    skip_group = torch.arange(skip_channels, device=device) // max(skip_channels // n, 1)
    skip = skip_group[:, None] >= g_group[None, :]
    return centre.to(dtype or torch.float32), res.to(dtype or torch.float32), skip.to(dtype or torch.float32)


def _gate(pre: torch.Tensor) -> torch.Tensor:
    p = pre.shape[1] // 2
    return torch.tanh(pre[:, :p]) * torch.sigmoid(pre[:, p:])


def gated_pixelcnn_layer_ref(
    v: torch.Tensor,
    h: torch.Tensor,
    v_weight: torch.Tensor,
    v_bias: torch.Tensor,
    h_weight: torch.Tensor,
    h_bias: torch.Tensor,
    link_weight: torch.Tensor,
    res_weight: torch.Tensor,
    res_bias: torch.Tensor,
    skip_weight: torch.Tensor | None = None,
    skip_bias: torch.Tensor | None = None,
    *,
    first_layer: bool = False,
    color_channels: int = 1,
    v_cond: torch.Tensor | None = None,
    h_cond: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Reference Gated PixelCNN layer in plain PyTorch: pad + conv + slice, 1x1 convs, gates.

    Args:
        v, h: ``(B, C_in, H, W)`` vertical and horizontal inputs (the image in the first layer).
        v_weight: ``(2p, C_in, c+1, k)``; v_bias: ``(2p,)``.
        h_weight: ``(2p, C_in, 1, c+1)``; h_bias: ``(2p,)``.
        link_weight: ``(2p, 2p)``; res_weight: ``(p, p)``; res_bias: ``(p,)``.
        skip_weight: ``(S, p)`` or None; skip_bias: ``(S,)`` or None.
        first_layer: shift the vertical stack one more row, mask A on the current pixel,
            no identity residual.
        color_channels: ``n`` colour groups (1, or 3 for RGB).
        v_cond, h_cond: ``(B, 2p)`` per-example biases (class conditioning) or None.

    Returns:
        ``(v_out (B, p, H, W), h_out (B, p, H, W), skip (B, S, H, W) or None)``.
    """
    two_p, c_in, _, k = v_weight.shape
    p, c = two_p // 2, k // 2
    skip_channels = 0 if skip_weight is None else skip_weight.shape[0]
    centre, res_mask, skip_mask = gated_pixelcnn_masks(
        p, c_in, skip_channels, first_layer=first_layer, color_channels=color_channels,
        dtype=v_weight.dtype, device=v_weight.device,
    )
    # Pad c + 1 rows on top and crop one at the bottom (first layer), or pad c on top.
    v_pad = (c, c, c + 1, -1) if first_layer else (c, c, c, 0)
    v_pre = F.conv2d(F.pad(v, v_pad), v_weight, v_bias)
    if v_cond is not None:
        v_pre = v_pre + v_cond[:, :, None, None]
    h_mask = torch.ones_like(h_weight)
    h_mask[:, :, 0, c] = centre
    h_pre = F.conv2d(F.pad(h, (c, 0, 0, 0)), h_weight * h_mask, h_bias)
    h_pre = h_pre + F.conv2d(v_pre, link_weight[:, :, None, None])
    if h_cond is not None:
        h_pre = h_pre + h_cond[:, :, None, None]
    g = _gate(h_pre)
    h_out = F.conv2d(g, (res_weight * res_mask)[:, :, None, None], res_bias)
    if not first_layer:
        h_out = h_out + h
    skip = None
    if skip_weight is not None:
        skip = F.conv2d(g, (skip_weight * skip_mask)[:, :, None, None], skip_bias)
    return _gate(v_pre), h_out, skip


# ------------------------------------------------------------------------- registrations
# The cpp op's schema is defined in csrc/fastgen.cpp with its CPU kernel in
# csrc/cpu/gated_pixelcnn.cpp. Its forward returns (v_out, h_out, skip, v_pre, h_pre):
# skip is empty without skip_weight, and the pre-activations are for the backward.

_ARGS = ("first_layer", "color_channels")
_N_INPUTS = 13  # v, h, v_weight, v_bias, h_weight, h_bias, link, res_w, res_b, skip_w, skip_b, v_cond, h_cond


@torch.library.custom_op("fastgen::gated_pixelcnn_layer_triton", mutates_args=())
def _gated_pixelcnn_layer_triton(
    v: torch.Tensor, h: torch.Tensor, v_weight: torch.Tensor, v_bias: torch.Tensor, h_weight: torch.Tensor,
    h_bias: torch.Tensor, link_weight: torch.Tensor, res_weight: torch.Tensor, res_bias: torch.Tensor,
    skip_weight: torch.Tensor | None, skip_bias: torch.Tensor | None, v_cond: torch.Tensor | None,
    h_cond: torch.Tensor | None, first_layer: bool, color_channels: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton.gated_pixelcnn import gated_pixelcnn_forward

    return gated_pixelcnn_forward(v, h, v_weight, v_bias, h_weight, h_bias, link_weight, res_weight, res_bias,
                                  skip_weight, skip_bias, v_cond, h_cond, first_layer, color_channels)


@torch.library.custom_op("fastgen::gated_pixelcnn_layer_triton_backward", mutates_args=())
def _gated_pixelcnn_layer_triton_backward(
    grad_v_out: torch.Tensor, grad_h_out: torch.Tensor, grad_skip: torch.Tensor | None, v: torch.Tensor,
    h: torch.Tensor, v_pre: torch.Tensor, h_pre: torch.Tensor, v_weight: torch.Tensor, h_weight: torch.Tensor,
    link_weight: torch.Tensor, res_weight: torch.Tensor, skip_weight: torch.Tensor | None, first_layer: bool,
    color_channels: int, output_mask: list[bool],
) -> list[torch.Tensor]:
    from .triton.gated_pixelcnn import gated_pixelcnn_backward

    return gated_pixelcnn_backward(grad_v_out, grad_h_out, grad_skip, v, h, v_pre, h_pre, v_weight, h_weight,
                                   link_weight, res_weight, skip_weight, first_layer, color_channels, output_mask)


def _fake_forward(v, h, v_weight, v_bias, h_weight, h_bias, link_weight, res_weight, res_bias, skip_weight,
                  skip_bias, v_cond, h_cond, first_layer, color_channels):
    B, _, H, W = v.shape
    two_p = v_weight.shape[0]
    s = 0 if skip_weight is None else skip_weight.shape[0]
    return (
        v.new_empty((B, two_p // 2, H, W)),
        v.new_empty((B, two_p // 2, H, W)),
        v.new_empty((B, s, H, W)) if s else v.new_empty(0),
        v.new_empty((B, two_p, H, W)),
        v.new_empty((B, two_p, H, W)),
    )


def _fake_backward(grad_v_out, grad_h_out, grad_skip, v, h, v_pre, h_pre, v_weight, h_weight, link_weight,
                   res_weight, skip_weight, first_layer, color_channels, output_mask):
    shapes = [
        v.shape, h.shape, v_weight.shape, v_weight.shape[:1], h_weight.shape, v_weight.shape[:1],
        link_weight.shape, res_weight.shape, res_weight.shape[:1],
        None if skip_weight is None else skip_weight.shape, None if skip_weight is None else skip_weight.shape[:1],
        (v.shape[0], v_weight.shape[0]), (v.shape[0], v_weight.shape[0]),
    ]
    return [v.new_empty(s) if m and s is not None else v.new_empty(0) for s, m in zip(shapes, output_mask)]


def _setup_forward(ctx, inputs, output):
    v, h, v_weight, _, h_weight, _, link_weight, res_weight, _, skip_weight, _, v_cond, h_cond, *args = inputs
    ctx.save_for_backward(v, h, output[3], output[4], v_weight, h_weight, link_weight, res_weight, skip_weight)
    ctx.args = tuple(args)
    ctx.present = [t is not None for t in inputs[:_N_INPUTS]]
    ctx.mark_non_differentiable(output[3], output[4])  # the saved pre-activations
    ctx.set_materialize_grads(False)  # else autograd fills their (unused) gradients with zeros


def _forward_grads(backward_op):
    def backward(ctx, grad_v_out, grad_h_out, grad_skip, _grad_v_pre, _grad_h_pre):
        v, h, v_pre, h_pre, v_weight, h_weight, link_weight, res_weight, skip_weight = ctx.saved_tensors
        p_shape = (v.shape[0], res_weight.shape[0], v.shape[2], v.shape[3])
        grad_v_out = v.new_zeros(p_shape) if grad_v_out is None else grad_v_out
        grad_h_out = v.new_zeros(p_shape) if grad_h_out is None else grad_h_out
        if skip_weight is not None and grad_skip is None:
            grad_skip = v.new_zeros((p_shape[0], skip_weight.shape[0], *p_shape[2:]))
        need = [n and p for n, p in zip(ctx.needs_input_grad[:_N_INPUTS], ctx.present)]
        grads = backward_op(
            grad_v_out, grad_h_out, grad_skip if skip_weight is not None else None, v, h, v_pre, h_pre,
            v_weight, h_weight, link_weight, res_weight, skip_weight, *ctx.args, need,
        )
        return tuple(g if n else None for g, n in zip(grads, need)) + (None,) * len(_ARGS)

    return backward


_AUTOGRAD = PairAutograd(_fake_forward, _fake_backward, _setup_forward, _forward_grads)


_BACKENDS = backends.OpBackends(
    OP, {"ref": backends.ref_support(), "cpp": backends.cpp_support(OP), "triton": backends.triton_support()}
)
_FAST_OPS = {"triton": _AUTOGRAD.register("gated_pixelcnn_layer_triton", "gated_pixelcnn_layer_triton_backward")}
if _BACKENDS.supports["cpp"].unavailable is None:
    _FAST_OPS["cpp"] = _AUTOGRAD.register("gated_pixelcnn_layer", "gated_pixelcnn_layer_backward")


# ------------------------------------------------------------------------------ public


def _check_vector(name, t, size, ref):
    check_tensor(OP, name, t, ("N",))
    check_same_device(OP, "v", ref, **{name: t})
    if t.shape[0] != size:
        raise ValueError(f"{OP}: {name} must have shape ({size},), got {tuple(t.shape)}")


def _check_matrix(name, t, rows, cols, ref):
    check_tensor(OP, name, t, ("rows", "cols"))
    check_same_device(OP, "v", ref, **{name: t})
    if tuple(t.shape) != (rows, cols):
        raise ValueError(f"{OP}: {name} must have shape ({rows}, {cols}), got {tuple(t.shape)}")


def _check_args(v, h, v_weight, v_bias, h_weight, h_bias, link_weight, res_weight, res_bias, skip_weight, skip_bias,
                first_layer, color_channels, v_cond, h_cond) -> None:
    check_tensor(OP, "v", v, ("B", "C_in", "H", "W"))
    check_tensor(OP, "h", h, ("B", "C_in", "H", "W"))
    check_same_device(OP, "v", v, h=h)
    if h.shape != v.shape:
        raise ValueError(f"{OP}: h must have v's shape {tuple(v.shape)}, got {tuple(h.shape)}")
    check_extents(OP, "v", v, ("H", "W"))
    B, c_in = v.shape[:2]
    check_tensor(OP, "v_weight", v_weight, ("2p", "C_in", "k//2+1", "k"))
    check_same_device(OP, "v", v, v_weight=v_weight)
    two_p, _, kh, k = v_weight.shape
    if k % 2 == 0 or kh != k // 2 + 1 or two_p == 0 or two_p % 2 or v_weight.shape[1] != c_in or c_in == 0:
        raise ValueError(
            f"{OP}: v_weight must be (2p, C_in, k//2+1, k) with odd k, even 2p >= 2 and C_in = v.shape[1] = {c_in} >= 1, "
            f"got shape {tuple(v_weight.shape)}"
        )
    p, c = two_p // 2, k // 2
    check_tensor(OP, "h_weight", h_weight, ("2p", "C_in", "1", "k//2+1"))
    check_same_device(OP, "v", v, h_weight=h_weight)
    if tuple(h_weight.shape) != (two_p, c_in, 1, c + 1):
        raise ValueError(f"{OP}: h_weight must have shape {(two_p, c_in, 1, c + 1)}, got {tuple(h_weight.shape)}")
    _check_vector("v_bias", v_bias, two_p, v)
    _check_vector("h_bias", h_bias, two_p, v)
    _check_matrix("link_weight", link_weight, two_p, two_p, v)
    _check_matrix("res_weight", res_weight, p, p, v)
    _check_vector("res_bias", res_bias, p, v)
    if (skip_weight is None) != (skip_bias is None):
        raise ValueError(f"{OP}: skip_weight and skip_bias must both be given or both be None")
    if skip_weight is not None:
        check_tensor(OP, "skip_weight", skip_weight, ("S", "p"))
        s = skip_weight.shape[0]
        _check_matrix("skip_weight", skip_weight, s, p, v)
        if s == 0:
            raise ValueError(f"{OP}: skip_weight must have at least one output channel")
        _check_vector("skip_bias", skip_bias, s, v)
    for name, cond in (("v_cond", v_cond), ("h_cond", h_cond)):
        if cond is not None:
            _check_matrix(name, cond, B, two_p, v)
    check_bool(OP, "first_layer", first_layer)
    check_channels(OP, p, c_in, 0 if skip_weight is None else skip_weight.shape[0], color_channels)
    if not first_layer and c_in != p:
        raise ValueError(f"{OP}: later layers (first_layer=False) need C_in = p = {p}, got C_in = {c_in}")


def gated_pixelcnn_layer(
    v: torch.Tensor,
    h: torch.Tensor,
    v_weight: torch.Tensor,
    v_bias: torch.Tensor,
    h_weight: torch.Tensor,
    h_bias: torch.Tensor,
    link_weight: torch.Tensor,
    res_weight: torch.Tensor,
    res_bias: torch.Tensor,
    skip_weight: torch.Tensor | None = None,
    skip_bias: torch.Tensor | None = None,
    *,
    first_layer: bool = False,
    color_channels: int = 1,
    v_cond: torch.Tensor | None = None,
    h_cond: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One Gated PixelCNN layer, equal to :func:`gated_pixelcnn_layer_ref` (see the module
    docstring for the math and :func:`gated_pixelcnn_layer_ref` for the shapes).

    Any strides; ``H, W >= 1`` (an empty batch is fine). Later layers need ``C_in = p``.
    ``color_channels`` must divide ``p``, ``C_in`` and ``S``. Masked weights (the
    current-pixel tap of ``h_weight`` and the colour-masked entries of
    ``res_weight``/``skip_weight``) are ignored and get zero gradient. ``backend``:
    ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None.

    Example:
        >>> x = torch.randn(2, 1, 28, 28)
        >>> p, k = 16, 7
        >>> args = (torch.randn(2 * p, 1, 4, 7), torch.zeros(2 * p), torch.randn(2 * p, 1, 1, 4),
        ...         torch.zeros(2 * p), torch.randn(2 * p, 2 * p), torch.randn(p, p), torch.zeros(p))
        >>> v, h, skip = gated_pixelcnn_layer(x, x, *args, first_layer=True)
        >>> v.shape, h.shape, skip
        (torch.Size([2, 16, 28, 28]), torch.Size([2, 16, 28, 28]), None)
    """
    _check_args(v, h, v_weight, v_bias, h_weight, h_bias, link_weight, res_weight, res_bias, skip_weight, skip_bias,
                first_layer, color_channels, v_cond, h_cond)
    name = _BACKENDS.select(backend, v)
    if name == "ref":
        return gated_pixelcnn_layer_ref(
            v, h, v_weight, v_bias, h_weight, h_bias, link_weight, res_weight, res_bias, skip_weight, skip_bias,
            first_layer=first_layer, color_channels=color_channels, v_cond=v_cond, h_cond=h_cond,
        )
    v_out, h_out, skip, _, _ = _FAST_OPS[name](
        v, h, v_weight, v_bias, h_weight, h_bias, link_weight, res_weight, res_bias, skip_weight, skip_bias,
        v_cond, h_cond, first_layer, color_channels,
    )
    return v_out, h_out, skip if skip_weight is not None else None
