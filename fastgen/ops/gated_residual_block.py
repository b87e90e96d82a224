r"""WaveNet gated residual block (van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio").

.. math::

    z &= \operatorname{causal\_conv1d}(h; W_c, \text{dilation}) + b_c + c \\
    g &= \tanh(z_{:G}) \odot \sigma(z_{G:}) \\
    h_{out} &= h + W_r g + b_r, \qquad \text{skip} = W_s g + b_s

with :math:`h` of shape ``(B, R, T)``, :math:`W_c` ``(2G, R, K)`` (output at time ``t`` sees
``h`` at ``t, t-d, ..., t-(K-1)d``, zeros before the start), :math:`W_r` ``(R, G)``,
:math:`W_s` ``(S, G)`` and the conditioning :math:`c` ``(B, 2G, 1)`` (broadcast over time)
or ``(B, 2G, T)``.

The ``cpp`` fast path does, per (batch, time tile), the conv (for K = 2 by Winograd F(2, 2)
along time, 25% fewer products; else as GEMMs on time-shifted views of ``h``, no padded
copy), the gate in place while the tile is in cache, and the residual and skip 1x1 convs
straight into their outputs. The CPU is compute-bound here, so it saves the gate
activations ``tanh(z[:G])``, ``sigmoid(z[G:])`` (``(B, 2G, T)``; eager autograd keeps those
and ``g``) rather than recompute the conv in the backward. The ``triton``
fast path fuses the same way per (sequence, time block) in registers (see
``fastgen/ops/triton/gated_residual_block.py``); a GPU is memory-bound here, so its backward
recomputes ``z`` and ``g`` and its saved gates are empty. Double backward is not supported
(the backward ops have no autograd formula and raise if differentiated).

``gated_residual_block_step`` is the one-step form for sampling, on a state buffer shared
with ``causal_conv1d_step``'s convention: ``state`` ``(B, R, (K-1)*dilation)``, either a
shift register (``position=None``, newest input last) or a ring buffer indexed by
``position`` (``(B,)`` int64, steps already taken; the caller advances it).

This file holds, in order: the references, the registrations of the fast paths (fake
tensors and autograd), and the public functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends
from ._checks import check_extents, check_int, check_no_overlap, check_same_device, check_tensor
from ._registration import PairAutograd
from .causal_conv1d import causal_conv1d_ref, causal_conv1d_step_ref

__all__ = [
    "gated_residual_block",
    "gated_residual_block_ref",
    "gated_residual_block_step",
    "gated_residual_block_step_ref",
]

OP = "gated_residual_block"
STEP_OP = "gated_residual_block_step"


# ----------------------------------------------------------------------------- reference


def _gate_and_1x1(z, h, res_weight, res_bias, skip_weight, skip_bias):
    """(h_out, skip) from the gate pre-activations ``z`` and ``h``: (B, 2G, T) and (B, R, T),
    or one step, (B, 2G) and (B, R)."""
    G = z.shape[1] // 2
    g = torch.tanh(z[:, :G]) * torch.sigmoid(z[:, G:])
    if z.dim() == 3:
        return h + F.conv1d(g, res_weight[:, :, None], res_bias), F.conv1d(g, skip_weight[:, :, None], skip_bias)
    return h + F.linear(g, res_weight, res_bias), F.linear(g, skip_weight, skip_bias)


def gated_residual_block_ref(
    h: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    res_weight: torch.Tensor,
    res_bias: torch.Tensor | None,
    skip_weight: torch.Tensor,
    skip_bias: torch.Tensor | None,
    *,
    dilation: int,
    cond: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference gated residual block in plain PyTorch.

    Args:
        h: ``(B, R, T)``.
        conv_weight: ``(2G, R, K)``; conv_bias ``(2G,)`` or None.
        res_weight: ``(R, G)``; res_bias ``(R,)`` or None.
        skip_weight: ``(S, G)``; skip_bias ``(S,)`` or None.
        dilation: spacing of the conv's taps.
        cond: ``(B, 2G, 1)``, ``(B, 2G, T)`` or None, added to the conv's output.

    Returns:
        ``(h_out, skip)``: ``(B, R, T)`` and ``(B, S, T)``.
    """
    z = causal_conv1d_ref(h, conv_weight, conv_bias, dilation=dilation)
    if cond is not None:
        z = z + cond
    return _gate_and_1x1(z, h, res_weight, res_bias, skip_weight, skip_bias)


def gated_residual_block_step_ref(
    h_t: torch.Tensor,
    state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    res_weight: torch.Tensor,
    res_bias: torch.Tensor | None,
    skip_weight: torch.Tensor,
    skip_bias: torch.Tensor | None,
    *,
    dilation: int,
    cond_t: torch.Tensor | None = None,
    position: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference one-step block: causal conv step, gate, then the 1x1 convs.

    Args:
        h_t: ``(B, R)``, the block's input at this time step.
        state: ``(B, R, (K-1)*dilation)``, updated in place (see the module docstring).
        cond_t: ``(B, 2G)`` or None.
        position: ``(B,)`` int64 steps already taken (ring-buffer state) or None (shift register).

    Returns:
        ``(h_out_t, skip_t)``: ``(B, R)`` and ``(B, S)``.
    """
    z = causal_conv1d_step_ref(h_t, state, conv_weight, conv_bias, dilation=dilation, position=position)
    if cond_t is not None:
        z = z + cond_t
    return _gate_and_1x1(z, h_t, res_weight, res_bias, skip_weight, skip_bias)


# ------------------------------------------------------------------------- registrations
# The cpp ops' schemas are in csrc/fastgen.cpp, their CPU kernels in
# csrc/cpu/gated_residual_block.cpp; the Triton ops are defined here, with kernels in
# fastgen/ops/triton/gated_residual_block.py. Both forwards return (h_out, skip, gates), the
# gates saved for the backward ((B, 2G, T) from cpp, empty from triton, which recomputes
# them); both get the same autograd.


@torch.library.custom_op("fastgen::gated_residual_block_triton", mutates_args=())
def _gated_residual_block_triton(
    h: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    res_weight: torch.Tensor,
    res_bias: torch.Tensor | None,
    skip_weight: torch.Tensor,
    skip_bias: torch.Tensor | None,
    cond: torch.Tensor | None,
    dilation: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton.gated_residual_block import gated_residual_block_forward

    h_out, skip = gated_residual_block_forward(
        h, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation
    )
    return h_out, skip, h.new_empty(0)


@torch.library.custom_op("fastgen::gated_residual_block_triton_backward", mutates_args=())
def _gated_residual_block_triton_backward(
    grad_h_out: torch.Tensor,
    grad_skip: torch.Tensor,
    h: torch.Tensor,
    gates: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    res_weight: torch.Tensor,
    skip_weight: torch.Tensor,
    cond: torch.Tensor | None,
    dilation: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton.gated_residual_block import gated_residual_block_backward

    return gated_residual_block_backward(
        grad_h_out, grad_skip, h, conv_weight, conv_bias, res_weight, skip_weight, cond, dilation, output_mask
    )


@torch.library.custom_op("fastgen::gated_residual_block_step_triton", mutates_args=("state",))
def _gated_residual_block_step_triton(
    h_t: torch.Tensor,
    state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    res_weight: torch.Tensor,
    res_bias: torch.Tensor | None,
    skip_weight: torch.Tensor,
    skip_bias: torch.Tensor | None,
    cond_t: torch.Tensor | None,
    dilation: int,
    position: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton.gated_residual_block import gated_residual_block_step

    return gated_residual_block_step(
        h_t, state, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond_t, dilation, position
    )


def _fake_forward(saves_gates: bool):
    def fake(h, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation):
        B, R, T = h.shape
        gates = h.new_empty((B, conv_weight.shape[0], T)) if saves_gates else h.new_empty(0)
        return h.new_empty((B, R, T)), h.new_empty((B, skip_weight.shape[0], T)), gates

    return fake


def _fake_backward(
    grad_h_out, grad_skip, h, gates, conv_weight, conv_bias, res_weight, skip_weight, cond, dilation, output_mask
):
    shapes = [
        h.shape,
        conv_weight.shape,
        (conv_weight.shape[0],) if conv_bias is not None else None,
        res_weight.shape,
        (res_weight.shape[0],),
        skip_weight.shape,
        (skip_weight.shape[0],),
        cond.shape if cond is not None else None,
    ]
    return tuple(h.new_empty(s) if m and s is not None else h.new_empty(0) for s, m in zip(shapes, output_mask))


def _fake_step(h_t, state, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond_t, dilation, position):
    return h_t.new_empty(h_t.shape), h_t.new_empty((h_t.shape[0], skip_weight.shape[0]))


def _setup_forward(ctx, inputs, output):
    h, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation = inputs
    ctx.save_for_backward(h, output[2], conv_weight, conv_bias, res_weight, skip_weight, cond)
    ctx.dilation = dilation
    ctx.present = [True, True, conv_bias is not None, True, res_bias is not None, True, skip_bias is not None, cond is not None]
    ctx.mark_non_differentiable(output[2])  # the saved gates
    ctx.set_materialize_grads(False)  # else autograd fills their (unused) gradient with zeros


def _forward_grads(backward_op):
    def backward(ctx, grad_h_out, grad_skip, _grad_gates):
        h, gates, conv_weight, conv_bias, res_weight, skip_weight, cond = ctx.saved_tensors
        need = [n and p for n, p in zip(ctx.needs_input_grad[:8], ctx.present)]
        if grad_h_out is None:
            grad_h_out = torch.zeros_like(h)
        if grad_skip is None:
            grad_skip = h.new_zeros((h.shape[0], skip_weight.shape[0], h.shape[2]))
        grads = backward_op(
            grad_h_out, grad_skip, h, gates, conv_weight, conv_bias, res_weight, skip_weight, cond, ctx.dilation, need
        )
        return tuple(g if n else None for g, n in zip(grads, need)) + (None,)

    return backward


def _register(forward_name: str, backward_name: str, saves_gates: bool):
    autograd = PairAutograd(_fake_forward(saves_gates), _fake_backward, _setup_forward, _forward_grads)
    return autograd.register(forward_name, backward_name)


_BACKENDS = backends.OpBackends(
    OP, {"ref": backends.ref_support(), "cpp": backends.cpp_support(OP), "triton": backends.triton_support()}
)
_STEP_BACKENDS = backends.OpBackends(
    STEP_OP,
    {"ref": backends.ref_support(), "cpp": backends.cpp_support(STEP_OP), "triton": backends.triton_support()},
)
_FAST_OPS = {"triton": _register("gated_residual_block_triton", "gated_residual_block_triton_backward", False)}
torch.library.register_fake("fastgen::gated_residual_block_step_triton")(_fake_step)
_FAST_STEP_OPS = {"triton": torch.ops.fastgen.gated_residual_block_step_triton.default}
if _BACKENDS.supports["cpp"].unavailable is None:
    _FAST_OPS["cpp"] = _register("gated_residual_block", "gated_residual_block_backward", True)
# The step through a whole stack of blocks in one call (CPU; fastgen.models.WaveNet.step):
# fastgen::gated_residual_stack_step(h_t, states, conv_weights, gate_biases, res_weights,
# res_biases, skip_weights, skip_biases, dilations, position) -> (h_out_t, sum of skip_t),
# block l stepped as gated_residual_block_step(h, states[l], conv_weights[l], None,
# res_weights[l], res_biases[l], skip_weights[l], skip_biases[l], cond_t=gate_biases[l],
# dilation=dilations[l], position=position).
_FAST_STACK_STEP_OPS = {}
if _STEP_BACKENDS.supports["cpp"].unavailable is None:
    torch.library.register_fake("fastgen::gated_residual_block_step")(_fake_step)
    _FAST_STEP_OPS["cpp"] = torch.ops.fastgen.gated_residual_block_step.default

    @torch.library.register_fake("fastgen::gated_residual_stack_step")
    def _fake_stack_step(h_t, states, conv_weights, gate_biases, res_weights, res_biases, skip_weights, skip_biases,
                         dilations, position):
        return h_t.new_empty(h_t.shape), h_t.new_empty((h_t.shape[0], skip_weights[0].shape[0]))

    _FAST_STACK_STEP_OPS["cpp"] = torch.ops.fastgen.gated_residual_stack_step.default


# ------------------------------------------------------------------------------ public


def _check_weights(op, x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, dilation):
    """Checks the block's parameters against ``x`` (h or h_t); returns (R, G, S, K)."""
    check_tensor(op, "conv_weight", conv_weight, ("2G", "R", "K"))
    check_tensor(op, "res_weight", res_weight, ("R", "G"))
    check_tensor(op, "skip_weight", skip_weight, ("S", "G"))
    check_same_device(
        op, "h", x, conv_weight=conv_weight, conv_bias=conv_bias, res_weight=res_weight, res_bias=res_bias,
        skip_weight=skip_weight, skip_bias=skip_bias,
    )
    two_g, r, k = conv_weight.shape
    if two_g == 0 or two_g % 2:
        raise ValueError(f"{op}: conv_weight must have an even, nonzero number 2G of output channels, got {two_g}")
    if k < 1:
        raise ValueError(f"{op}: conv_weight must have a kernel size K >= 1, got shape {tuple(conv_weight.shape)}")
    if r != x.shape[1] or r == 0:
        raise ValueError(
            f"{op}: conv_weight must be (2G, R, K) with R = h.shape[1] = {x.shape[1]} >= 1, "
            f"got shape {tuple(conv_weight.shape)}"
        )
    g = two_g // 2
    if tuple(res_weight.shape) != (r, g):
        raise ValueError(f"{op}: res_weight must have shape (R, G) = ({r}, {g}), got {tuple(res_weight.shape)}")
    if skip_weight.shape[1] != g or skip_weight.shape[0] == 0:
        raise ValueError(f"{op}: skip_weight must have shape (S, G) with G = {g}, got {tuple(skip_weight.shape)}")
    s = skip_weight.shape[0]
    for name, bias, n in (("conv_bias", conv_bias, two_g), ("res_bias", res_bias, r), ("skip_bias", skip_bias, s)):
        if bias is not None:
            check_tensor(op, name, bias, ("C",))
            if bias.shape[0] != n:
                raise ValueError(f"{op}: {name} must have shape ({n},), got {tuple(bias.shape)}")
    check_int(op, "dilation", dilation, minimum=1)
    return r, g, s, k


def gated_residual_block(
    h: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    res_weight: torch.Tensor,
    res_bias: torch.Tensor | None,
    skip_weight: torch.Tensor,
    skip_bias: torch.Tensor | None,
    *,
    dilation: int,
    cond: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WaveNet gated residual block, equal to :func:`gated_residual_block_ref`.

    Args:
        h: ``(B, R, T)``, ``T >= 1`` (an empty batch is fine), any strides.
        conv_weight: ``(2G, R, K)``, the dilated causal conv; conv_bias ``(2G,)`` or None.
        res_weight: ``(R, G)``, res_bias ``(R,)`` or None: the residual 1x1 conv.
        skip_weight: ``(S, G)``, skip_bias ``(S,)`` or None: the skip 1x1 conv.
        dilation: spacing of the conv's taps (>= 1, may exceed T).
        cond: ``(B, 2G, 1)`` (global conditioning, broadcast over time), ``(B, 2G, T)`` or None.
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None (see :mod:`fastgen.backends`).

    Returns:
        ``(h_out, skip)``: ``(B, R, T)`` and ``(B, S, T)``, contiguous.

    Example:
        >>> h = torch.randn(2, 16, 100)
        >>> w = torch.randn(64, 16, 2), torch.randn(16, 32), torch.randn(48, 32)
        >>> h_out, skip = gated_residual_block(h, w[0], None, w[1], None, w[2], None, dilation=4)
        >>> h_out.shape, skip.shape
        (torch.Size([2, 16, 100]), torch.Size([2, 48, 100]))
    """
    check_tensor(OP, "h", h, ("B", "R", "T"))
    check_extents(OP, "h", h, ("T",))
    _, g, _, _ = _check_weights(OP, h, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, dilation)
    if cond is not None:
        check_tensor(OP, "cond", cond, ("B", "2G", "T or 1"))
        check_same_device(OP, "h", h, cond=cond)
        B, _, T = h.shape
        if cond.shape[0] != B or cond.shape[1] != 2 * g or cond.shape[2] not in (1, T):
            raise ValueError(
                f"{OP}: cond must have shape (B, 2G, 1) or (B, 2G, T) = ({B}, {2 * g}, 1 or {T}), got {tuple(cond.shape)}"
            )
    name = _BACKENDS.select(backend, h)
    if name == "ref":
        return gated_residual_block_ref(
            h, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, dilation=dilation, cond=cond
        )
    h_out, skip, _ = _FAST_OPS[name](
        h, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation
    )
    return h_out, skip


def gated_residual_block_step(
    h_t: torch.Tensor,
    state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    res_weight: torch.Tensor,
    res_bias: torch.Tensor | None,
    skip_weight: torch.Tensor,
    skip_bias: torch.Tensor | None,
    *,
    dilation: int,
    cond_t: torch.Tensor | None = None,
    position: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One time step of :func:`gated_residual_block` for incremental generation.

    Stepping ``h[..., t]`` for t = 0, 1, ... from a zero ``state`` reproduces the full
    block's outputs at each t, and leaves ``state`` bit-identical to the reference's.

    Args:
        h_t: ``(B, R)``.
        state: ``(B, R, (K-1)*dilation)``, ``h_t``'s dtype and device, ``stride(-1) == 1``,
            its own memory (not an ``expand``-ed view); updated in place. Without ``position``
            a shift register (``state[..., -1]`` is the newest input); with it a ring buffer
            (input of time p at slot p mod L).
        conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, dilation:
            as in :func:`gated_residual_block`.
        cond_t: ``(B, 2G)`` or None.
        position: ``(B,)`` int64, steps already taken by each sequence (the caller does
            ``position += 1`` after the call), or None.
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None.

    Returns:
        ``(h_out_t, skip_t)``: ``(B, R)`` and ``(B, S)``.

    Example:
        >>> w = torch.randn(64, 16, 2), torch.randn(16, 32), torch.randn(48, 32)
        >>> state = torch.zeros(2, 16, 4)
        >>> h_t, skip_t = gated_residual_block_step(torch.randn(2, 16), state, w[0], None, w[1], None, w[2], None, dilation=4)
    """
    check_tensor(STEP_OP, "h_t", h_t, ("B", "R"))
    _, g, _, k = _check_weights(STEP_OP, h_t, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, dilation)
    B, R = h_t.shape
    check_tensor(STEP_OP, "state", state, ("B", "R", "L"))
    check_same_device(STEP_OP, "h_t", h_t, state=state)
    L = (k - 1) * dilation
    if tuple(state.shape) != (B, R, L):
        raise ValueError(
            f"{STEP_OP}: state must have shape (B, R, (K-1)*dilation) = ({B}, {R}, {L}), got {tuple(state.shape)}"
        )
    if L > 0 and state.stride(-1) != 1:
        raise ValueError(f"{STEP_OP}: state must be contiguous in its last dimension (stride(-1) == 1), got strides {state.stride()}")
    check_no_overlap(STEP_OP, "state", state)
    if cond_t is not None:
        check_tensor(STEP_OP, "cond_t", cond_t, ("B", "2G"))
        check_same_device(STEP_OP, "h_t", h_t, cond_t=cond_t)
        if tuple(cond_t.shape) != (B, 2 * g):
            raise ValueError(f"{STEP_OP}: cond_t must have shape (B, 2G) = ({B}, {2 * g}), got {tuple(cond_t.shape)}")
    if position is not None:
        check_tensor(STEP_OP, "position", position, ("B",), floating=False)
        if position.dtype != torch.int64 or position.shape[0] != B or position.device != h_t.device:
            raise ValueError(
                f"{STEP_OP}: position must be an int64 tensor of shape ({B},) on {h_t.device}, "
                f"got {position.dtype} {tuple(position.shape)} on {position.device}"
            )
    name = _STEP_BACKENDS.select(backend, h_t)
    if name == "ref":
        return gated_residual_block_step_ref(
            h_t, state, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias,
            dilation=dilation, cond_t=cond_t, position=position,
        )
    return _FAST_STEP_OPS[name](
        h_t, state, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond_t, dilation, position
    )
