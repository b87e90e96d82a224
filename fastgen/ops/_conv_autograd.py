"""Autograd of a convolution-like op pair (bilinear in x and weight), shared by
masked_conv2d, causal_conv1d and masked_linear.

Each op has a forward op ``(x, weight, bias, *args) -> out`` and a backward op
``(grad_out, x, weight, *args, output_mask) -> (grad_x, grad_weight, grad_bias)`` whose
unrequested entries are empty tensors; ``args`` are the op's other settings (mask type,
dilation, groups, masked_linear's mask tensor, ...). :func:`register` registers their fakes
and the autograd of both, the backward's (double backward) built again from the two ops.
"""

from __future__ import annotations

from collections.abc import Callable

from ._registration import PairAutograd

__all__ = ["register"]


def _setup_forward(ctx, inputs, output):
    x, weight, bias, *args = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = tuple(args)
    ctx.has_bias = bias is not None


def _setup_backward(ctx, inputs, output):
    grad_out, x, weight, *args, output_mask = inputs
    ctx.save_for_backward(grad_out, x, weight)
    ctx.args = tuple(args)
    ctx.output_mask = output_mask


def _forward_grads(backward_op):
    """Autograd of the forward op: its backward op, for the inputs that need a gradient."""

    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias]
        grads = backward_op(grad_out, x, weight, *ctx.args, need)
        return tuple(g if n else None for g, n in zip(grads, need)) + (None,) * len(ctx.args)

    return backward


def _backward_grads(forward_op, backward_op):
    """Autograd of the backward op (double backward), again from the two ops. The layer is
    bilinear: grad_x = conv_T(grad_out; W), grad_W = corr(grad_out, x), grad_b = sum(grad_out),
    so the gradients of <gg_x, grad_x> + <gg_W, grad_W> + <gg_b, grad_b> are
    d/d grad_out = conv(gg_x; W) + conv(x; gg_W) + gg_b, d/dx = conv_T(grad_out; gg_W),
    d/dW = corr(grad_out, gg_x)."""

    def backward(ctx, gg_x, gg_w, gg_b):
        grad_out, x, weight = ctx.saved_tensors
        computed = ctx.output_mask
        gg_x = gg_x if computed[0] else None
        gg_w = gg_w if computed[1] else None
        gg_b = gg_b if computed[2] else None
        d_grad_out = d_x = d_w = None
        if ctx.needs_input_grad[0]:
            terms = [forward_op(gg_x, weight, None, *ctx.args)] if gg_x is not None else []
            terms += [forward_op(x, gg_w, None, *ctx.args)] if gg_w is not None else []
            if gg_b is not None:  # (C_out,) broadcast over the batch and the spatial dims
                terms.append(gg_b.view(1, -1, *([1] * (grad_out.dim() - 2))).expand_as(grad_out))
            d_grad_out = sum(terms[1:], terms[0]) if terms else None
        if ctx.needs_input_grad[1] and gg_w is not None:
            d_x = backward_op(grad_out, x, gg_w, *ctx.args, [True, False, False])[0]
        if ctx.needs_input_grad[2] and gg_x is not None:
            d_w = backward_op(grad_out, gg_x, weight, *ctx.args, [False, True, False])[1]
        return (d_grad_out, d_x, d_w) + (None,) * (len(ctx.args) + 1)  # + output_mask

    return backward


def register(
    forward_name: str,
    backward_name: str,
    fake_forward: Callable,
    fake_backward: Callable,
    *,
    forward_autograd: bool = True,
):
    """Registers the fakes and autograd (double backward included) of
    ``torch.ops.fastgen.<forward_name>`` and its backward op; returns the forward op.
    ``forward_autograd=False``: the forward's autograd is registered in C++ (same formula)."""
    autograd = PairAutograd(
        fake_forward, fake_backward, _setup_forward, _forward_grads, _backward_grads, _setup_backward
    )
    return autograd.register(forward_name, backward_name, forward_autograd=forward_autograd)
