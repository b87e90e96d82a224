r"""The element-wise half of an affine coupling layer (NICE, RealNVP, Glow), fused with its
log-determinant.

For the transformed elements (all of them, or those where ``mask`` is 0):

.. math::

    \text{forward:}\quad y = x \odot s + t, \qquad
    \log|\det \partial y / \partial x|_b = \sum_{i \text{ transformed}} \log s_{b,i}

    \text{inverse:}\quad y = (x - t) \oslash s, \qquad
    \log|\det \partial y / \partial x|_b = -\sum_{i \text{ transformed}} \log s_{b,i}

with the shift :math:`t` and the scale :math:`s = \exp(l)` (``scale="exp"``, RealNVP) or
:math:`s = \sigma(l + 2)` (``scale="sigmoid"``, Glow; :math:`\log s` as a log-sigmoid,
finite for every :math:`l`) from the log-scale :math:`l`; ``log_scale=None`` is additive
coupling (NICE): :math:`y = x \pm t`, log-determinant 0. Elements where ``mask`` is nonzero
pass through (:math:`y = x`), and their shift and log-scale get no gradient. The forward
then the inverse with the same ``(t, l)`` give back ``x``, and their log-determinants sum
to zero.

The coupling network that produces :math:`(t, l)` from the other half of the input is the
caller's (see ``fastgen.nn``); this op is what follows it.

The ``cpp`` fast path does the transform and the per-example log-determinant in one pass,
and the whole backward (gradients of x, shift and log-scale from those of y and logdet) in
another. It turns the mask (shared by the batch) into runs of pairs of neighbouring
elements: passed through, transformed, or one of each (a checkerboard), and computes the
scale of the transformed elements only (see ``csrc/cpu/flow_elementwise.cpp``). The
``triton`` fast path is the same two passes, one program per block of an example's
elements, its log-determinant a partial sum per block (deterministic).

Extreme values: with ``scale="exp"`` the scale is used as given, so :math:`\exp(l)`
overflows beyond :math:`l \approx 88` in float32 (709 in float64) and the output is then
infinite (a coupling module bounds its log-scales, e.g. by a scaled tanh, so that the
inverse cannot blow up). ``scale="sigmoid"`` keeps :math:`s` in :math:`(0, 1]` and
:math:`\log s` finite for any finite :math:`l`; its inverse divides by :math:`s`, which is
infinite once :math:`s` underflows (:math:`l \lesssim -90` in float32).

This file holds, in order: the reference, the registrations of the fast paths (fake
tensors and autograd), and the public function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends
from ._checks import check_batched, check_bool, check_choice, check_like
from ._registration import PairAutograd

__all__ = ["affine_coupling", "affine_coupling_ref"]

OP = "affine_coupling"
SCALES = ("exp", "sigmoid")
# Calls of at most this many elements, without a mask and with scale "exp" (or additive),
# run on the reference when the backend is chosen automatically on the CPU: there the fast
# op's fixed costs (its autograd runs in Python, about 0.1 ms a call) outweigh its fused
# passes (measured on 2 Zen 3 cores, fwd+bwd: (256, 64), a vector flow's coupling, 0.20 ms
# on the reference against 0.31 on the kernel; (1024, 128) about equal; (2048, 128) the
# kernel 1.3-1.6x faster). A mask or the sigmoid scale adds passes to the reference that
# make the kernel as fast or faster from about 16K elements already.
CPU_SMALL = 2**15


# ----------------------------------------------------------------------------- reference


def affine_coupling_ref(
    x: torch.Tensor,
    shift: torch.Tensor,
    log_scale: torch.Tensor | None,
    *,
    mask: torch.Tensor | None = None,
    scale: str = "exp",
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference affine coupling transform in plain PyTorch.

    Args:
        x: ``(B, ...)``.
        shift, log_scale: ``x``'s shape; ``log_scale`` None for additive coupling.
        mask: broadcastable to ``x.shape[1:]``, nonzero = pass through; None transforms all.
        scale: ``"exp"`` or ``"sigmoid"`` (``sigmoid(log_scale + 2)``).
        inverse: apply the inverse map.

    Returns:
        ``(y, logdet)``: ``x``'s shape and ``(B,)``.
    """
    keep = None if mask is None else mask != 0
    if log_scale is None:
        y = x - shift if inverse else x + shift
        logdet = x.new_zeros(x.shape[0])
    else:
        if keep is not None:
            # Pass-through positions never use their log-scale, so that whatever it holds
            # there (even inf or NaN) cannot reach y, logdet or a gradient.
            log_scale = torch.where(keep, 0, log_scale)
        log_s = log_scale if scale == "exp" else F.logsigmoid(log_scale + 2)
        if inverse:
            # 1 / s as exp(-log s): its gradient stays finite where s**2 would underflow.
            y = (x - shift) * torch.exp(-log_s)
            log_s = -log_s
        else:
            s = torch.exp(log_scale) if scale == "exp" else torch.sigmoid(log_scale + 2)
            y = x * s + shift
        if keep is not None:
            log_s = torch.where(keep, 0, log_s)
        logdet = log_s.flatten(1).sum(1)
    if keep is not None:
        y = torch.where(keep, x, y)
    return y, logdet


# ------------------------------------------------------------------------- registrations
# The cpp ops' schemas are in csrc/fastgen.cpp, their CPU kernels in
# csrc/cpu/flow_elementwise.cpp; the Triton ops are defined here, with kernels in
# fastgen/ops/triton/flow_elementwise.py. Both get the same fakes and autograd.


@torch.library.custom_op("fastgen::affine_coupling_triton", mutates_args=())
def _affine_coupling_triton(
    x: torch.Tensor,
    shift: torch.Tensor,
    log_scale: torch.Tensor | None,
    mask: torch.Tensor | None,
    scale: str,
    inverse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton.flow_elementwise import affine_coupling_forward

    return affine_coupling_forward(x, shift, log_scale, mask, scale, inverse)


@torch.library.custom_op("fastgen::affine_coupling_triton_backward", mutates_args=())
def _affine_coupling_triton_backward(
    grad_y: torch.Tensor,
    grad_logdet: torch.Tensor,
    x: torch.Tensor,
    shift: torch.Tensor,
    log_scale: torch.Tensor | None,
    mask: torch.Tensor | None,
    scale: str,
    inverse: bool,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton.flow_elementwise import affine_coupling_backward

    return affine_coupling_backward(grad_y, grad_logdet, x, shift, log_scale, mask, scale, inverse, output_mask)


def _fake_forward(x, shift, log_scale, mask, scale, inverse):
    return x.new_empty(x.shape), x.new_empty(x.shape[0])


def _fake_backward(grad_y, grad_logdet, x, shift, log_scale, mask, scale, inverse, output_mask):
    present = (True, True, log_scale is not None)
    return tuple(x.new_empty(x.shape) if m and p else x.new_empty(0) for m, p in zip(output_mask, present))


def _setup_context(ctx, inputs, output):
    x, shift, log_scale, mask, scale, inverse = inputs
    ctx.save_for_backward(x, shift, log_scale, mask)
    ctx.scale, ctx.inverse = scale, inverse


def _grads(backward_op):
    def backward(ctx, grad_y, grad_logdet):
        x, shift, log_scale, mask = ctx.saved_tensors
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and log_scale is not None]
        grads = backward_op(grad_y, grad_logdet, x, shift, log_scale, mask, ctx.scale, ctx.inverse, need)
        return tuple(g if n else None for g, n in zip(grads, need)) + (None, None, None)

    return backward


_AUTOGRAD = PairAutograd(_fake_forward, _fake_backward, _setup_context, _grads)


_BACKENDS = backends.OpBackends(
    OP, {"ref": backends.ref_support(), "cpp": backends.cpp_support(OP), "triton": backends.triton_support()}
)
_FAST_OPS = {"triton": _AUTOGRAD.register("affine_coupling_triton", "affine_coupling_triton_backward")}
if _BACKENDS.supports["cpp"].unavailable is None:
    _FAST_OPS["cpp"] = _AUTOGRAD.register("affine_coupling", "affine_coupling_backward")


# ------------------------------------------------------------------------------ public


def _check_mask(mask: object, x: torch.Tensor) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{OP}: mask must be a torch.Tensor or None, got {type(mask).__name__}")
    example = tuple(x.shape[1:])
    trailing = example[len(example) - mask.dim() :] if mask.dim() <= len(example) else None
    if trailing is None or any(m not in (1, e) for m, e in zip(mask.shape, trailing)):
        raise ValueError(
            f"{OP}: mask must be broadcastable to x.shape[1:] = {example} (no batch dimension), "
            f"got shape {tuple(mask.shape)}"
        )
    if mask.is_complex():
        raise TypeError(f"{OP}: mask must be a bool, integer or floating-point tensor, got {mask.dtype}")
    if mask.device != x.device:
        raise ValueError(f"{OP}: mask is on {mask.device} but x is on {x.device}; they must match")


def affine_coupling(
    x: torch.Tensor,
    shift: torch.Tensor,
    log_scale: torch.Tensor | None,
    *,
    mask: torch.Tensor | None = None,
    scale: str = "exp",
    inverse: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine coupling transform with its log-determinant, equal to :func:`affine_coupling_ref`.

    Args:
        x: ``(B, ...)``, e.g. vectors ``(B, D)`` or images ``(B, C, H, W)``; any strides.
        shift: ``x``'s shape, dtype and device (the coupling network's shift).
        log_scale: ``x``'s shape, dtype and device, or None for additive coupling (NICE).
        mask: None (every element is transformed: the channel-split coupling, where the
            caller splits) or a tensor broadcastable to ``x.shape[1:]`` (no batch dimension),
            e.g. a ``(1, H, W)`` checkerboard or a ``(C, 1, 1)`` channel mask: nonzero (or
            True) elements pass through unchanged.
        scale: ``"exp"`` (RealNVP, ``s = exp(log_scale)``) or ``"sigmoid"`` (Glow,
            ``s = sigmoid(log_scale + 2)``); ignored for additive coupling.
        inverse: apply the inverse map ``(x - shift) / s``; its logdet is that of the inverse.
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None (see :mod:`fastgen.backends`);
            chosen automatically on the CPU, a call of at most :data:`CPU_SMALL` elements
            without a mask and with scale ``"exp"`` runs on the reference.

    Returns:
        ``(y, logdet)``: ``y`` of ``x``'s shape (contiguous) and ``logdet`` ``(B,)``, the
        log-determinant of the Jacobian of the map applied, per example.

    Example:
        >>> x = torch.randn(8, 3, 32, 32)
        >>> checkerboard = (torch.arange(32)[:, None] + torch.arange(32)) % 2  # (H, W)
        >>> shift, log_scale = torch.randn(2, 8, 3, 32, 32).unbind(0)
        >>> y, logdet = affine_coupling(x, shift, log_scale, mask=checkerboard)
        >>> x2, logdet2 = affine_coupling(y, shift, log_scale, mask=checkerboard, inverse=True)
        >>> torch.allclose(x2, x, atol=1e-5), torch.allclose(logdet + logdet2, torch.zeros(8), atol=1e-4)
        (True, True)
    """
    check_batched(OP, "x", x)
    check_like(OP, "x", x, shift=shift, log_scale=log_scale)
    if mask is not None:
        _check_mask(mask, x)
    check_choice(OP, "scale", scale, SCALES)
    check_bool(OP, "inverse", inverse)
    simple = mask is None and (log_scale is None or scale == "exp")
    name = _BACKENDS.select(backend, x, small=x.device.type == "cpu" and simple and x.numel() <= CPU_SMALL)
    if name == "ref":
        y, logdet = affine_coupling_ref(x, shift, log_scale, mask=mask, scale=scale, inverse=inverse)
        return y.contiguous(), logdet  # element-wise ops keep a permuted x's layout
    return _FAST_OPS[name](x, shift, log_scale, mask, scale, inverse)
