r"""Activation normalization (Glow, Kingma & Dhariwal 2018): a per-channel affine map with
its log-determinant.

For ``x`` of shape ``(B, C, *spatial)`` (vectors ``(B, C)``, images ``(B, C, H, W)``) and
parameters ``loc``, ``log_scale`` of shape ``(C,)``, with :math:`N` the number of spatial
positions (1 for vectors):

.. math::

    \text{forward:}\quad y = (x + \text{loc}) \odot e^{\text{log\_scale}}, \qquad
    \log|\det \partial y / \partial x|_b = N \sum_c \text{log\_scale}_c

    \text{inverse:}\quad y = x \odot e^{-\text{log\_scale}} - \text{loc}, \qquad
    \log|\det \partial y / \partial x|_b = -N \sum_c \text{log\_scale}_c

(the same log-determinant for every example). Data-dependent initialization (zero mean and
unit variance per channel on a first batch) is the module's business (``fastgen.nn``).

The ``cpp`` fast path is one pass over x for the forward and one for the backward, which
writes grad_x and reduces, per channel, the sums of grad_y and of grad_y times the
normalized input that the parameter gradients need (partial sums per block of examples,
added in order: deterministic). The ``triton`` fast path does the same per (example,
channel block, spatial block).

This file holds, in order: the reference, the registrations of the fast paths (fake
tensors and autograd), and the public function.
"""

from __future__ import annotations

import math

import torch

from .. import backends
from ._checks import check_batched, check_bool, check_same_device, check_tensor
from ._registration import PairAutograd

__all__ = ["actnorm", "actnorm_ref"]

OP = "actnorm"


# ----------------------------------------------------------------------------- reference


def actnorm_ref(
    x: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, *, inverse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference ActNorm in plain PyTorch.

    Args:
        x: ``(B, C, *spatial)``.
        loc, log_scale: ``(C,)``.
        inverse: apply the inverse map.

    Returns:
        ``(y, logdet)``: ``x``'s shape and ``(B,)``.
    """
    shape = (1, -1) + (1,) * (x.dim() - 2)
    loc_c, log_scale_c = loc.view(shape), log_scale.view(shape)
    n = math.prod(x.shape[2:])
    if inverse:
        y = x * torch.exp(-log_scale_c) - loc_c
        logdet = log_scale.sum() * -n
    else:
        y = (x + loc_c) * torch.exp(log_scale_c)
        logdet = log_scale.sum() * n
    return y, logdet.expand(x.shape[0]).contiguous()


# ------------------------------------------------------------------------- registrations
# The cpp ops' schemas are in csrc/fastgen.cpp, their CPU kernels in
# csrc/cpu/flow_elementwise.cpp; the Triton ops are defined here, with kernels in
# fastgen/ops/triton/flow_elementwise.py. Both get the same fakes and autograd.


@torch.library.custom_op("fastgen::actnorm_triton", mutates_args=())
def _actnorm_triton(
    x: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, inverse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton.flow_elementwise import actnorm_forward

    return actnorm_forward(x, loc, log_scale, inverse)


@torch.library.custom_op("fastgen::actnorm_triton_backward", mutates_args=())
def _actnorm_triton_backward(
    grad_y: torch.Tensor,
    grad_logdet: torch.Tensor,
    x: torch.Tensor,
    loc: torch.Tensor,
    log_scale: torch.Tensor,
    inverse: bool,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton.flow_elementwise import actnorm_backward

    return actnorm_backward(grad_y, grad_logdet, x, loc, log_scale, inverse, output_mask)


def _fake_forward(x, loc, log_scale, inverse):
    return x.new_empty(x.shape), x.new_empty(x.shape[0])


def _fake_backward(grad_y, grad_logdet, x, loc, log_scale, inverse, output_mask):
    shapes = (x.shape, loc.shape, log_scale.shape)
    return tuple(x.new_empty(s) if m else x.new_empty(0) for s, m in zip(shapes, output_mask))


def _setup_context(ctx, inputs, output):
    x, loc, log_scale, inverse = inputs
    ctx.save_for_backward(x, loc, log_scale)
    ctx.inverse = inverse


def _grads(backward_op):
    def backward(ctx, grad_y, grad_logdet):
        x, loc, log_scale = ctx.saved_tensors
        need = list(ctx.needs_input_grad[:3])
        grads = backward_op(grad_y, grad_logdet, x, loc, log_scale, ctx.inverse, need)
        return tuple(g if n else None for g, n in zip(grads, need)) + (None,)

    return backward


_AUTOGRAD = PairAutograd(_fake_forward, _fake_backward, _setup_context, _grads)


_BACKENDS = backends.OpBackends(
    OP, {"ref": backends.ref_support(), "cpp": backends.cpp_support(OP), "triton": backends.triton_support()}
)
_FAST_OPS = {"triton": _AUTOGRAD.register("actnorm_triton", "actnorm_triton_backward")}
if _BACKENDS.supports["cpp"].unavailable is None:
    _FAST_OPS["cpp"] = _AUTOGRAD.register("actnorm", "actnorm_backward")


# ------------------------------------------------------------------------------ public


def actnorm(
    x: torch.Tensor,
    loc: torch.Tensor,
    log_scale: torch.Tensor,
    *,
    inverse: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ActNorm with its log-determinant, equal to :func:`actnorm_ref`.

    Args:
        x: ``(B, C)`` or ``(B, C, *spatial)`` (e.g. ``(B, C, H, W)``), any strides.
        loc: ``(C,)``, ``x``'s dtype and device.
        log_scale: ``(C,)``, ``x``'s dtype and device.
        inverse: apply the inverse map ``x * exp(-log_scale) - loc``.
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None (see :mod:`fastgen.backends`).

    Returns:
        ``(y, logdet)``: ``y`` of ``x``'s shape (contiguous) and ``logdet`` ``(B,)``,
        ``+-H*W*sum(log_scale)`` for every example.

    Example:
        >>> x = torch.randn(8, 12, 16, 16)
        >>> loc, log_scale = torch.randn(12), torch.randn(12) * 0.1
        >>> y, logdet = actnorm(x, loc, log_scale)
        >>> x2, logdet2 = actnorm(y, loc, log_scale, inverse=True)
        >>> torch.allclose(x2, x, atol=1e-5), torch.allclose(logdet, 256 * log_scale.sum().expand(8))
        (True, True)
    """
    check_batched(OP, "x", x)
    check_tensor(OP, "loc", loc, ("C",))
    check_tensor(OP, "log_scale", log_scale, ("C",))
    check_same_device(OP, "x", x, loc=loc, log_scale=log_scale)
    for name, p in (("loc", loc), ("log_scale", log_scale)):
        if p.shape[0] != x.shape[1]:
            raise ValueError(f"{OP}: {name} must have shape (C,) = ({x.shape[1]},) (x.shape[1]), got {tuple(p.shape)}")
    check_bool(OP, "inverse", inverse)
    name = _BACKENDS.select(backend, x)
    if name == "ref":
        return actnorm_ref(x, loc, log_scale, inverse=inverse)
    return _FAST_OPS[name](x, loc, log_scale, inverse)
