r"""A MAF layer with its MADE network, as one op (Papamakarios et al. 2017, "Masked
Autoregressive Flow for Density Estimation"): the density direction of
:class:`fastgen.nn.MaskedAffineAutoregressive`.

For ``x`` of shape ``(B, D)``:

.. math::

    (\mu_j, r_j)_{j < D} = \mathrm{MADE}(x), \qquad \alpha = a \odot \tanh r, \qquad
    u = (x - \mu) \odot e^{-\alpha}, \qquad \log|\det \partial u / \partial x| = -\textstyle\sum_j \alpha_j

with MADE's layers ``masked_linear(h, weights[k], masks[k], biases[k])`` and ReLUs between
them (none after the last, whose ``2 D`` outputs are ``(mu_j, r_j)`` per entry, entry-major),
and :math:`a` the learned bound of the log-scales. The masks make :math:`(\mu_j, r_j)` depend
on :math:`x_{<j}` only (their structure is the caller's; any masks give the formula above).

The ``cpp`` fast path runs the layers on :func:`~fastgen.ops.masked_linear`'s kernels (which
skip the masks' all-zero blocks) and the rest in a few passes, with one autograd node,
registered in C++ (``csrc/cpu/affine_mlp.cpp``, shared with
:func:`~fastgen.ops.affine_coupling_mlp`): at MAF's sizes (64 dimensions, batch 256, layers of
256 units) the eager composition around the products (a module per layer, a reshape, tanh,
the affine op, an autograd node each) costs about half as much again as the products. The
``triton`` path is that composition on the Triton kernels of ``masked_linear`` and
``affine_coupling``.

This file holds, in order: the reference, the registrations of the fast path (fake tensors,
the backward op's autograd), and the public function.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import backends
from ._checks import check_layer_masks, check_mlp_layers, check_same_device, check_tensor
from ._registration import PairAutograd, fake_mlp_layer_grads, fake_mlp_layer_outputs
from .affine_coupling import affine_coupling, affine_coupling_ref
from .masked_linear import masked_linear, masked_linear_ref

__all__ = ["masked_affine_autoregressive", "masked_affine_autoregressive_ref"]

OP = "masked_affine_autoregressive"


# ----------------------------------------------------------------------------- reference


def masked_affine_autoregressive_ref(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    log_scale_bound: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference MAF layer in plain PyTorch.

    Args:
        x: ``(B, D)``.
        weights, masks, biases: MADE's layers, ``(out_k, in_k)``, bool ``(out_k, in_k)`` and
            ``(out_k,)``; ``in_0 = D``, the last ``out`` ``2 D``.
        log_scale_bound: ``(D,)``.

    Returns:
        ``(u, logdet)``: ``(B, D)`` and ``(B,)``.
    """
    return _composed(x, weights, masks, biases, log_scale_bound, None)


def _composed(x, weights, masks, biases, log_scale_bound, backend):
    """The layer from its parts: :func:`~fastgen.ops.masked_linear` layers and
    :func:`~fastgen.ops.affine_coupling` on ``backend``, or their references for None."""
    h = x
    for k, (weight, mask, bias) in enumerate(zip(weights, masks, biases)):
        if backend is None:
            h = masked_linear_ref(h, weight, mask, bias)
        else:
            h = masked_linear(h, weight, mask, bias, backend=backend)
        if k < len(weights) - 1:
            h = torch.relu(h)
    shift, raw = h.view(x.shape[0], x.shape[1], 2).unbind(-1)
    log_scale = log_scale_bound * torch.tanh(raw)
    if backend is None:
        return affine_coupling_ref(x, shift, log_scale, inverse=True)
    return affine_coupling(x, shift, log_scale, inverse=True, backend=backend)


# ------------------------------------------------------------------------- registrations
# The schemas are in csrc/fastgen.cpp, the CPU kernels and the forward's autograd (C++: a
# Python one would cost a tenth of a MAF layer) in csrc/cpu/affine_mlp.cpp; registered here:
# the fakes and the backward op's autograd (no double backward).


def _fake_forward(x, weights, masks, biases, log_scale_bound, keep_activations=True):
    return fake_mlp_layer_outputs(x, weights, keep_activations)


def _fake_backward(grad_u, grad_logdet, x, weights, masks, log_scale_bound, activations, output_mask):
    return fake_mlp_layer_grads(x, weights, log_scale_bound, output_mask)


_BACKENDS = backends.OpBackends(
    OP, {"ref": backends.ref_support(), "cpp": backends.cpp_support(OP), "triton": backends.triton_support()}
)
_FAST_OPS = {}
if _BACKENDS.supports["cpp"].unavailable is None:
    _FAST_OPS["cpp"] = PairAutograd(_fake_forward, _fake_backward).register(
        "masked_affine_autoregressive", "masked_affine_autoregressive_backward", forward_autograd=False
    )


# ------------------------------------------------------------------------------ public


def masked_affine_autoregressive(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    log_scale_bound: torch.Tensor,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAF layer with its MADE, equal to :func:`masked_affine_autoregressive_ref`.

    Args:
        x: ``(B, D)`` with ``D >= 2``, any strides.
        weights: MADE's layer weights ``(out_k, in_k)``, ``x``'s dtype and device: ``in_0 = D``,
            each ``in_k`` the previous ``out``, the last ``out`` ``2 D``.
        masks: one bool ``(out_k, in_k)`` per layer (True = connected), on ``x``'s device.
        biases: one ``(out_k,)`` per layer.
        log_scale_bound: ``(D,)``, the bound ``a`` of the log-scales ``a * tanh(r)``.
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None (see :mod:`fastgen.backends`).

    Returns:
        ``(u, logdet)``: ``(B, D)`` (contiguous) and ``(B,)``, the log-determinant of
        ``x -> u``; gradients flow to ``x``, every weight (zero where masked) and bias, and
        ``log_scale_bound``.

    Example:
        >>> D, H = 3, 8
        >>> degrees = torch.arange(H) % (D - 1)      # hidden units' degrees, inputs' are 0..D-1
        >>> masks = [degrees[:, None] >= torch.arange(D), torch.arange(D).repeat_interleave(2)[:, None] > degrees]
        >>> weights, biases = [torch.randn(H, D), torch.randn(2 * D, H)], [torch.zeros(H), torch.zeros(2 * D)]
        >>> u, logdet = masked_affine_autoregressive(torch.randn(4, D), weights, masks, biases, torch.ones(D))
        >>> u.shape, logdet.shape
        (torch.Size([4, 3]), torch.Size([4]))
    """
    check_tensor(OP, "x", x, ("B", "D"))
    if x.shape[1] < 2:
        raise ValueError(f"{OP}: x must have D >= 2 entries, got shape {tuple(x.shape)}")
    D = x.shape[1]
    weights, biases = check_mlp_layers(OP, x, weights, biases, inputs=D, outputs=2 * D)
    masks = check_layer_masks(OP, x, masks, weights)
    check_tensor(OP, "log_scale_bound", log_scale_bound, ("D",))
    if log_scale_bound.shape[0] != D:
        raise ValueError(f"{OP}: log_scale_bound must have shape ({D},), got {tuple(log_scale_bound.shape)}")
    check_same_device(OP, "x", x, log_scale_bound=log_scale_bound)
    return run(x, weights, masks, biases, log_scale_bound, backend)


def run(x, weights, masks, biases, log_scale_bound, backend=None):
    """:func:`masked_affine_autoregressive` without its Python checks of the arguments, for a
    module whose parameters and masks are the layers (valid by construction; the C++ op checks
    them again) and that has checked ``x``."""
    name = _BACKENDS.select(backend, x)
    if name != "cpp":
        return _composed(x, weights, masks, biases, log_scale_bound, None if name == "ref" else name)
    u, logdet, _ = _FAST_OPS[name](x, weights, masks, biases, log_scale_bound, False)
    return u, logdet
