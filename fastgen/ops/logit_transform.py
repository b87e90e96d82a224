r"""The logit transform (RealNVP preprocessing, Dinh et al. 2017): maps dequantized data in
:math:`[0, 1]` to the real line, with its log-determinant.

With :math:`0 \le \alpha < 1/2` (keeping the logit away from :math:`\pm\infty` at 0 and 1):

.. math::

    \text{forward:}\quad p = \alpha + (1 - 2\alpha)\,x, \qquad y = \log p - \log(1 - p),

    \log|\det \partial y / \partial x|_b = \sum_i \bigl[\log(1 - 2\alpha) - \log p_i - \log(1 - p_i)\bigr]

    \text{inverse:}\quad x = \frac{\sigma(y) - \alpha}{1 - 2\alpha}, \qquad
    \log|\det \partial x / \partial y|_b = \sum_i \bigl[\log \sigma(y_i) + \log \sigma(-y_i) - \log(1 - 2\alpha)\bigr]

:math:`1 - p` is computed as :math:`\alpha + (1 - 2\alpha)(1 - x)` (no cancellation near
:math:`x = 1`), and the inverse's logarithms as log-sigmoids, :math:`-|y| - 2\log(1 + e^{-|y|})`
for both: finite for every finite :math:`y` (:math:`|y| = 10^4` included). With
:math:`\alpha > 0` the forward is finite on all of :math:`[0, 1]`; with :math:`\alpha = 0` it
is :math:`\mp\infty` at 0 and 1 (as the math), and NaN where :math:`p` leaves :math:`[0, 1]`.

The ``cpp`` and ``triton`` fast paths are one pass each way: the forward writes y and the
per-example log-determinant (partial sums per block, added in order), the backward
grad_x from grad_y and grad_logdet.

This file holds, in order: the reference, the registrations of the fast paths (fake
tensors and autograd), and the public function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import backends
from ._checks import check_batched, check_bool
from ._registration import PairAutograd

__all__ = ["logit_transform", "logit_transform_ref"]

OP = "logit_transform"


# ----------------------------------------------------------------------------- reference


def logit_transform_ref(x: torch.Tensor, *, alpha: float, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference logit transform in plain PyTorch.

    Args:
        x: ``(B, ...)``, in ``[0, 1]`` for the forward, any real for the inverse.
        alpha: in ``[0, 0.5)``.
        inverse: apply the inverse map (sigmoid).

    Returns:
        ``(y, logdet)``: ``x``'s shape and ``(B,)``.
    """
    log_scale = math.log1p(-2 * alpha)
    if inverse:
        y = (torch.sigmoid(x) - alpha) / (1 - 2 * alpha)
        terms = F.logsigmoid(x) + F.logsigmoid(-x) - log_scale
    else:
        log_p = torch.log(alpha + (1 - 2 * alpha) * x)
        log_q = torch.log(alpha + (1 - 2 * alpha) * (1 - x))  # log(1 - p)
        y = log_p - log_q
        terms = log_scale - log_p - log_q
    return y, terms.flatten(1).sum(1)


# ------------------------------------------------------------------------- registrations
# The cpp ops' schemas are in csrc/fastgen.cpp, their CPU kernels in
# csrc/cpu/flow_elementwise.cpp; the Triton ops are defined here, with kernels in
# fastgen/ops/triton/flow_elementwise.py. Both get the same fakes and autograd.


@torch.library.custom_op("fastgen::logit_transform_triton", mutates_args=())
def _logit_transform_triton(x: torch.Tensor, alpha: float, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton.flow_elementwise import logit_transform_forward

    return logit_transform_forward(x, alpha, inverse)


@torch.library.custom_op("fastgen::logit_transform_triton_backward", mutates_args=())
def _logit_transform_triton_backward(
    grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor, alpha: float, inverse: bool
) -> torch.Tensor:
    from .triton.flow_elementwise import logit_transform_backward

    return logit_transform_backward(grad_y, grad_logdet, x, alpha, inverse)


def _fake_forward(x, alpha, inverse):
    return x.new_empty(x.shape), x.new_empty(x.shape[0])


def _fake_backward(grad_y, grad_logdet, x, alpha, inverse):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, alpha, inverse = inputs
    ctx.save_for_backward(x)
    ctx.alpha, ctx.inverse = alpha, inverse


def _grads(backward_op):
    def backward(ctx, grad_y, grad_logdet):
        (x,) = ctx.saved_tensors
        return backward_op(grad_y, grad_logdet, x, ctx.alpha, ctx.inverse), None, None

    return backward


_AUTOGRAD = PairAutograd(_fake_forward, _fake_backward, _setup_context, _grads)


_BACKENDS = backends.OpBackends(
    OP, {"ref": backends.ref_support(), "cpp": backends.cpp_support(OP), "triton": backends.triton_support()}
)
_FAST_OPS = {"triton": _AUTOGRAD.register("logit_transform_triton", "logit_transform_triton_backward")}
if _BACKENDS.supports["cpp"].unavailable is None:
    _FAST_OPS["cpp"] = _AUTOGRAD.register("logit_transform", "logit_transform_backward")


# ------------------------------------------------------------------------------ public


def logit_transform(
    x: torch.Tensor, *, alpha: float, inverse: bool = False, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logit transform with its log-determinant, equal to :func:`logit_transform_ref`.

    Args:
        x: ``(B, ...)``, any strides: data in ``[0, 1]`` (forward) or logits (inverse).
        alpha: in ``[0, 0.5)``; RealNVP uses 0.05 (images), 1e-6 is common too.
        inverse: apply the inverse map ``(sigmoid(x) - alpha) / (1 - 2 alpha)``.
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None (see :mod:`fastgen.backends`).

    Returns:
        ``(y, logdet)``: ``y`` of ``x``'s shape (contiguous) and ``logdet`` ``(B,)``, the
        log-determinant of the map applied, per example.

    Example:
        >>> x = torch.rand(8, 3, 32, 32)
        >>> y, logdet = logit_transform(x, alpha=0.05)
        >>> x2, logdet2 = logit_transform(y, alpha=0.05, inverse=True)
        >>> torch.allclose(x2, x, atol=1e-5), torch.allclose(logdet + logdet2, torch.zeros(8), atol=1e-2)
        (True, True)
    """
    check_batched(OP, "x", x)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"{OP}: alpha must be a float, got {type(alpha).__name__}")
    if not 0 <= alpha < 0.5:
        raise ValueError(f"{OP}: alpha must be in [0, 0.5), got {alpha}")
    check_bool(OP, "inverse", inverse)
    name = _BACKENDS.select(backend, x)
    if name == "ref":
        return logit_transform_ref(x, alpha=alpha, inverse=inverse)
    return _FAST_OPS[name](x, float(alpha), inverse)
