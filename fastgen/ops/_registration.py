"""Registration of a fast path's op pair: a forward op and the backward op its autograd
calls, both ``torch.ops.fastgen`` ops (defined by the C++ extension, ``csrc/fastgen.cpp``, or
by ``torch.library.custom_op`` for Triton next to the op's reference).

Every op registers the same things: the fake (meta) implementations of both, used by
``torch.compile`` and FakeTensor; the forward's autograd, which calls the backward op; and
the backward's own autograd, either a real double backward or a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["PairAutograd", "fake_mlp_layer_grads", "fake_mlp_layer_outputs"]


def _no_double_backward(op: str) -> Callable:
    def backward(ctx, *grads):
        raise NotImplementedError(f"{op}: double backward is not supported on the fast paths; use backend='ref'")

    return backward


def _no_context(ctx, inputs, output) -> None:
    return None


@dataclass(frozen=True)
class PairAutograd:
    """What a fast path registers for its op pair, given once per op and registered for each
    backend's pair (cpp, triton) by :meth:`register`.

    Attributes:
        fake_forward, fake_backward: the fake implementations (same signatures as the ops).
        setup_context: ``(ctx, inputs, output)``, saves what the forward's backward needs.
        grads: ``grads(backward_op)`` is the forward's autograd backward ``(ctx, *grad_outputs)``.
            Both None for an op whose forward autograd is registered in C++.
        double_backward: ``double_backward(forward_op, backward_op)`` is the backward op's
            autograd backward, with ``setup_double_backward`` its setup; None makes
            differentiating the backward op raise ``NotImplementedError``.
    """

    fake_forward: Callable
    fake_backward: Callable
    setup_context: Callable | None = None
    grads: Callable | None = None
    double_backward: Callable | None = None
    setup_double_backward: Callable | None = None

    def register(
        self, forward_name: str, backward_name: str, *, forward_autograd: bool = True
    ) -> torch._ops.OpOverload:
        """Registers the fakes and autograd of ``torch.ops.fastgen.<forward_name>`` and
        ``torch.ops.fastgen.<backward_name>``; returns the forward op. ``forward_autograd=False``
        leaves out the forward's autograd, for an op whose autograd kernel is registered in
        C++ (it must call the backward op, whose autograd is still registered here)."""
        forward_op = getattr(torch.ops.fastgen, forward_name).default
        backward_op = getattr(torch.ops.fastgen, backward_name).default
        torch.library.register_fake(f"fastgen::{forward_name}")(self.fake_forward)
        torch.library.register_fake(f"fastgen::{backward_name}")(self.fake_backward)
        if forward_autograd:
            assert self.grads is not None and self.setup_context is not None, "a Python forward autograd needs both"
            torch.library.register_autograd(
                f"fastgen::{forward_name}", self.grads(backward_op), setup_context=self.setup_context
            )
        if self.double_backward is None:
            op = forward_name.removesuffix("_triton")
            torch.library.register_autograd(
                f"fastgen::{backward_name}", _no_double_backward(op), setup_context=_no_context
            )
        else:
            torch.library.register_autograd(
                f"fastgen::{backward_name}",
                self.double_backward(forward_op, backward_op),
                setup_context=self.setup_double_backward,
            )
        return forward_op


def fake_mlp_layer_outputs(
    x: torch.Tensor, weights, keep_activations: bool
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The fake outputs of a flow layer op with an MLP (affine_coupling_mlp,
    masked_affine_autoregressive): ``(y, logdet, activations)``, one activation per layer
    (none without ``keep_activations``)."""
    activations = [x.new_empty((x.shape[0], w.shape[0])) for w in weights] if keep_activations else []
    return x.new_empty(x.shape), x.new_empty(x.shape[0]), activations


def fake_mlp_layer_grads(x: torch.Tensor, weights, log_scale_bound: torch.Tensor, output_mask) -> list[torch.Tensor]:
    """The fake results of their backward ops: ``[grad_x, grad_log_scale_bound, grad_weights...,
    grad_biases...]``, each empty where ``output_mask`` (x, log_scale_bound, weights, biases) is False."""
    need_x, need_a, need_w, need_b = output_mask
    return [
        x.new_empty(x.shape) if need_x else x.new_empty(0),
        x.new_empty(log_scale_bound.shape) if need_a else x.new_empty(0),
        *(x.new_empty(w.shape) if need_w else x.new_empty(0) for w in weights),
        *(x.new_empty(w.shape[0]) if need_b else x.new_empty(0) for w in weights),
    ]
