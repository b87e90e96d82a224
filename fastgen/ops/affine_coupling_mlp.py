r"""A vector affine coupling layer with its MLP coupling network, as one op (RealNVP's
vector couplings, Dinh et al. 2017).

For ``x`` of shape ``(B, D)`` split into a passed half :math:`x_p` and a transformed half
:math:`x_r` (``parity`` 0: :math:`x_p` is the first ``D // 2`` entries; 1: the last
``D - D // 2``, and :math:`x_r` is the rest):

.. math::

    (t, r) = \mathrm{MLP}(x_p), \qquad l = a \odot \tanh r, \qquad
    y_p = x_p, \qquad y_r = x_r \odot e^{l} + t, \qquad \log|\det J| = \textstyle\sum_i l_i

(``inverse``: :math:`y_r = (x_r - t) \odot e^{-l}`, :math:`\log|\det J| = -\sum_i l_i`), the
MLP's layers ``weights[k], biases[k]`` with ReLUs between them (none after the last, whose
outputs are the shifts :math:`t` then the raw log-scales :math:`r`), and :math:`a` the
learned bound of the log-scales (:class:`fastgen.nn.AffineCoupling` with ``scale="exp"``).
It is ``fastgen.nn.AffineCoupling(D, hidden, mask="channel")``'s whole forward.

The ``cpp`` fast path runs the MLP on ATen's GEMMs (the forward in blocks of rows run in
parallel, the backward's two products of a layer at once) and everything else in a few
passes: the transform and the log-determinant in one, the backward's element-wise part (the
gradients of the network's outputs, of ``x``'s transformed half and of :math:`a`, and the
last layer's bias gradient) in another, then one pass per hidden layer for its ReLU's
backward and its bias gradient; its autograd is one node, registered in C++
(``csrc/cpu/affine_mlp.cpp``). At a vector flow's sizes (64 dimensions, batch 256, layers of
256 units) the composition of modules and ops it replaces costs about half as much again as
the GEMMs. The ``triton`` path is that composition, with
:func:`~fastgen.ops.affine_coupling`'s Triton kernel for the affine map (the GEMMs are
cuBLAS's either way).

This file holds, in order: the reference, the registrations of the fast path (fake tensors,
the backward op's autograd), and the public function.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import backends
from ._checks import check_bool, check_mlp_layers, check_same_device, check_tensor
from ._registration import PairAutograd, fake_mlp_layer_grads, fake_mlp_layer_outputs
from .affine_coupling import affine_coupling, affine_coupling_ref

__all__ = ["affine_coupling_mlp", "affine_coupling_mlp_ref"]

OP = "affine_coupling_mlp"


def _halves(x: torch.Tensor, parity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(passed, transformed)`` halves of ``x`` (B, D) for ``parity``."""
    first, second = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2 :]
    return (first, second) if parity == 0 else (second, first)


# ----------------------------------------------------------------------------- reference


def affine_coupling_mlp_ref(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    log_scale_bound: torch.Tensor,
    *,
    parity: int = 0,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference vector affine coupling with its MLP in plain PyTorch.

    Args:
        x: ``(B, D)``.
        weights, biases: the MLP's layers, ``(out_k, in_k)`` and ``(out_k,)``; ``in_0`` is
            the passed half's size, the last ``out`` twice the transformed half's.
        log_scale_bound: ``(n,)``, ``n`` the transformed half's size.
        parity: 0 (the first ``D // 2`` entries pass) or 1 (the last ``D - D // 2`` pass).
        inverse: apply the inverse map.

    Returns:
        ``(y, logdet)``: ``(B, D)`` and ``(B,)``.
    """
    return _composed(x, weights, biases, log_scale_bound, parity, inverse, None)


def _composed(x, weights, biases, log_scale_bound, parity, inverse, backend):
    """The layer from its parts: ``F.linear`` layers and the affine map
    (:func:`~fastgen.ops.affine_coupling_ref` for ``backend`` None, else
    :func:`~fastgen.ops.affine_coupling` on ``backend``)."""
    x_pass, x_rest = _halves(x, parity)
    h = x_pass
    for k, (weight, bias) in enumerate(zip(weights, biases)):
        h = F.linear(h, weight, bias)
        if k < len(weights) - 1:
            h = torch.relu(h)
    shift, raw = h.chunk(2, dim=1)
    log_scale = log_scale_bound * torch.tanh(raw)
    if backend is None:
        y_rest, logdet = affine_coupling_ref(x_rest, shift, log_scale, inverse=inverse)
    else:
        y_rest, logdet = affine_coupling(x_rest, shift, log_scale, inverse=inverse, backend=backend)
    return torch.cat([x_pass, y_rest] if parity == 0 else [y_rest, x_pass], dim=1), logdet


# ------------------------------------------------------------------------- registrations
# The schemas are in csrc/fastgen.cpp, the CPU kernels and the forward's autograd (C++: a
# Python one would cost a tenth of a vector coupling) in csrc/cpu/affine_mlp.cpp;
# registered here: the fakes and the backward op's autograd (no double backward).


def _fake_forward(x, weights, biases, log_scale_bound, parity, inverse, keep_activations=True):
    return fake_mlp_layer_outputs(x, weights, keep_activations)


def _fake_backward(grad_y, grad_logdet, x, weights, log_scale_bound, activations, parity, inverse, output_mask):
    return fake_mlp_layer_grads(x, weights, log_scale_bound, output_mask)


_BACKENDS = backends.OpBackends(
    OP, {"ref": backends.ref_support(), "cpp": backends.cpp_support(OP), "triton": backends.triton_support()}
)
_FAST_OPS = {}
if _BACKENDS.supports["cpp"].unavailable is None:
    _FAST_OPS["cpp"] = PairAutograd(_fake_forward, _fake_backward).register(
        "affine_coupling_mlp", "affine_coupling_mlp_backward", forward_autograd=False
    )


# ------------------------------------------------------------------------------ public


def affine_coupling_mlp(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    log_scale_bound: torch.Tensor,
    *,
    parity: int = 0,
    inverse: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vector affine coupling with its MLP coupling network, equal to :func:`affine_coupling_mlp_ref`.

    Args:
        x: ``(B, D)`` with ``D >= 2``, any strides.
        weights: the MLP's layer weights, ``(out_k, in_k)``, ``x``'s dtype and device: ``in_0``
            the passed half's size (``D // 2`` for parity 0, ``D - D // 2`` for 1), each
            ``in_k`` the previous ``out``, and the last ``out`` ``2 n``, ``n = D - in_0``.
        biases: one ``(out_k,)`` per layer.
        log_scale_bound: ``(n,)``, the bound ``a`` of the log-scales ``a * tanh(r)``.
        parity: 0 or 1, which half passes (see the module docstring).
        inverse: apply the inverse map.
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None (see :mod:`fastgen.backends`).

    Returns:
        ``(y, logdet)``: ``(B, D)`` (contiguous) and ``(B,)``, the log-determinant of the map
        applied; gradients flow to ``x``, every weight and bias, and ``log_scale_bound``.

    Example:
        >>> D, H = 6, 16
        >>> weights = [torch.randn(H, 3), torch.randn(H, H), torch.randn(6, H)]
        >>> biases = [torch.zeros(H), torch.zeros(H), torch.zeros(6)]
        >>> x, a = torch.randn(4, D), torch.ones(3)
        >>> y, logdet = affine_coupling_mlp(x, weights, biases, a, parity=0)
        >>> x2, logdet2 = affine_coupling_mlp(y, weights, biases, a, parity=0, inverse=True)
        >>> torch.allclose(x2, x, atol=1e-5), torch.allclose(logdet + logdet2, torch.zeros(4), atol=1e-5)
        (True, True)
    """
    check_tensor(OP, "x", x, ("B", "D"))
    if x.shape[1] < 2:
        raise ValueError(f"{OP}: x must have D >= 2 entries (a coupling splits them in two), got shape {tuple(x.shape)}")
    if isinstance(parity, bool) or parity not in (0, 1):
        raise ValueError(f"{OP}: parity must be 0 or 1, got {parity!r}")
    check_bool(OP, "inverse", inverse)
    x_pass, x_rest = _halves(x, parity)
    weights, biases = check_mlp_layers(OP, x, weights, biases, inputs=x_pass.shape[1], outputs=2 * x_rest.shape[1])
    check_tensor(OP, "log_scale_bound", log_scale_bound, ("n",))
    if log_scale_bound.shape[0] != x_rest.shape[1]:
        raise ValueError(
            f"{OP}: log_scale_bound must have shape ({x_rest.shape[1]},) (the transformed half), "
            f"got {tuple(log_scale_bound.shape)}"
        )
    check_same_device(OP, "x", x, log_scale_bound=log_scale_bound)
    return run(x, weights, biases, log_scale_bound, parity, inverse, backend)


def run(x, weights, biases, log_scale_bound, parity, inverse, backend=None):
    """:func:`affine_coupling_mlp` without its Python checks of the arguments, for a module
    whose parameters are the layers (valid by construction; the C++ op checks them again) and
    that has checked ``x``: they cost a tenth of a vector flow's coupling forward."""
    name = _BACKENDS.select(backend, x)
    if name != "cpp":
        return _composed(x, weights, biases, log_scale_bound, parity, inverse, None if name == "ref" else name)
    y, logdet, _ = _FAST_OPS[name](x, weights, biases, log_scale_bound, parity, inverse, False)
    return y, logdet
