r"""Causal dilated 1-D convolution (WaveNet, van den Oord et al. 2016) and its one-step form.

.. math::

    y_{b,o,t} = \beta_o + \sum_{k=0}^{K-1} \sum_{i \in G(o)} W_{o,i,k}\, x_{b,i,\,t-(K-1-k)d},
    \qquad x_{b,i,t} = 0 \text{ for } t < 0

with dilation :math:`d` and :math:`G(o)` the input channels of output channel ``o``'s group:
output ``t`` sees inputs ``t, t-d, ..., t-(K-1)d`` only. It equals left-padding ``x`` by
``(K-1)d`` zeros and calling ``F.conv1d``; the fast paths never build that padded copy
(each tap is a GEMM on a time-shifted view, and taps reaching before the start are skipped,
so any dilation works, also one larger than ``T``). On the CPU, ``K = 2`` with a dilation of
at least the SIMD lanes (32 float32, 16 float64 times with AVX-512) runs a Winograd
F(2, 2) kernel along time instead: outputs ``t`` and ``t + d`` share their middle input, so
a pair takes 3 channel products instead of 4.

**Step form** (incremental generation). ``state`` ``(B, C_in, L)``, ``L = (K-1)d``, holds the
last ``L`` inputs; the caller preallocates it (zeros at the start) and the step updates it
in place. Two layouts:

- ``position=None``: a shift register in time order, ``state[..., -1]`` the newest input.
  Step ``t`` reads :math:`x_{t-jd}` = ``state[..., L - j*d]`` for ``j = 1..K-1``, then shifts
  ``state`` left by one and writes :math:`x_t` at ``state[..., L-1]``.
- ``position`` an int64 ``(B,)`` tensor, the steps each sequence has already taken: a ring
  buffer (cheap for large dilations: one write per step instead of a shift of ``L``).
  :math:`x_{t-jd}` is at slot ``(p - j*d) mod L`` and :math:`x_t` is written at slot
  ``p mod L``. The step does not advance ``position``; the caller does ``position += 1``.

Stepping a sequence from a zero state reproduces :func:`causal_conv1d` up to float rounding,
and the fast paths leave the state bit-identical to :func:`causal_conv1d_step_ref`'s (it is
only copying). The step is for sampling: it has no autograd (it runs without recording a
graph; its output never requires grad).

The convolution's autograd runs forward and backward on the fast path; its backward op has
its own autograd formula, so double backward works too.

This file holds, in order: the references, the registrations of the fast paths (fake
tensors and autograd), and the public functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends
from . import _conv_autograd
from ._checks import check_extents, check_int, check_no_overlap, check_same_device, check_tensor

__all__ = ["causal_conv1d", "causal_conv1d_ref", "causal_conv1d_step", "causal_conv1d_step_ref"]

OP = "causal_conv1d"
STEP_OP = "causal_conv1d_step"


# ----------------------------------------------------------------------------- reference


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    dilation: int = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Reference causal convolution in plain PyTorch: left zero-padding, then ``F.conv1d``.

    Args:
        x: ``(B, C_in, T)``.
        weight: ``(C_out, C_in / groups, K)``; tap ``K-1`` multiplies the current input.
        bias: ``(C_out,)`` or None.
        dilation: spacing between taps.
        groups: channel groups, as in ``F.conv1d``.

    Returns:
        ``(B, C_out, T)``.
    """
    k = weight.shape[-1]
    # From T on every tap but the last reads only padding, whatever the dilation: clamping
    # changes nothing and keeps the padding small.
    d = min(dilation, max(x.shape[-1], 1))
    return F.conv1d(F.pad(x, ((k - 1) * d, 0)), weight, bias, dilation=d, groups=groups)


def causal_conv1d_step_ref(
    x_t: torch.Tensor,
    state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    dilation: int = 1,
    groups: int = 1,
    position: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference step: the output at the current time step; updates ``state`` in place.

    Args:
        x_t: ``(B, C_in)``, the input at the current step.
        state: ``(B, C_in, (K-1) * dilation)``, the previous inputs (see the module docstring).
        weight: ``(C_out, C_in / groups, K)``.
        bias: ``(C_out,)`` or None.
        dilation, groups: as in :func:`causal_conv1d_ref`.
        position: None (shift register) or int64 ``(B,)`` steps taken so far (ring buffer).

    Returns:
        ``(B, C_out)``.
    """
    window = step_window(x_t, state, weight.shape[-1], dilation, position)
    return F.conv1d(window, weight, bias, groups=groups)[:, :, 0]


def step_window(
    x_t: torch.Tensor, state: torch.Tensor, k: int, dilation: int, position: torch.Tensor | None
) -> torch.Tensor:
    """The inputs a K-tap step sees, ``(B, C, K)`` (``[..., K-1]`` is ``x_t``, ``[..., K-1-j]``
    the input ``j * dilation`` steps back), read from ``state``, into which ``x_t`` is then
    pushed in place (shift register, or ring-buffer slot ``position mod L``). The reference
    state update, shared by every step op built on a causal convolution."""
    length = (k - 1) * dilation
    if length == 0:
        return x_t[:, :, None]
    taps = torch.arange(k - 1, device=x_t.device) * dilation  # tap j reads j*d after the oldest slot
    if position is None:
        past = state[:, :, taps]
        state.copy_(torch.cat([state[:, :, 1:], x_t[:, :, None]], dim=2))
    else:
        slots = (position[:, None] + taps[None, :]) % length  # (B, K-1)
        past = state.gather(2, slots[:, None, :].expand(-1, state.shape[1], -1))
        slot = (position % length)[:, None, None].expand(-1, state.shape[1], 1)
        state.scatter_(2, slot, x_t[:, :, None])
    return torch.cat([past, x_t[:, :, None]], dim=2)


# ------------------------------------------------------------------------- registrations
# The cpp ops' schemas are defined in csrc/fastgen.cpp (with their CPU kernels in
# csrc/cpu/causal_conv1d.cpp); the Triton ops are defined here. Both get the same fake
# implementations and the same autograd formula, which calls the op's backward.


@torch.library.custom_op("fastgen::causal_conv1d_triton", mutates_args=())
def _causal_conv1d_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int, groups: int
) -> torch.Tensor:
    from .triton.causal_conv1d import causal_conv1d_forward

    return causal_conv1d_forward(x, weight, bias, dilation, groups)


@torch.library.custom_op("fastgen::causal_conv1d_triton_backward", mutates_args=())
def _causal_conv1d_triton_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    dilation: int,
    groups: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton.causal_conv1d import causal_conv1d_backward

    return causal_conv1d_backward(grad_out, x, weight, dilation, groups, output_mask)


@torch.library.custom_op("fastgen::causal_conv1d_step_triton", mutates_args=("state",))
def _causal_conv1d_step_triton(
    x_t: torch.Tensor,
    state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dilation: int,
    groups: int,
    position: torch.Tensor | None,
) -> torch.Tensor:
    from .triton.causal_conv1d import causal_conv1d_step as step

    return step(x_t, state, weight, bias, dilation, groups, position)


def _fake_forward(x, weight, bias, dilation, groups):
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2]))


def _fake_backward(grad_out, x, weight, dilation, groups, output_mask):
    return (
        x.new_empty(x.shape) if output_mask[0] else x.new_empty(0),
        weight.new_empty(weight.shape) if output_mask[1] else x.new_empty(0),
        weight.new_empty(weight.shape[0]) if output_mask[2] else x.new_empty(0),
    )


def _fake_step(x_t, state, weight, bias, dilation, groups, position):
    return x_t.new_empty((x_t.shape[0], weight.shape[0]))


def _register(forward_name: str, backward_name: str, step_name: str):
    torch.library.register_fake(f"fastgen::{step_name}")(_fake_step)
    forward_op = _conv_autograd.register(forward_name, backward_name, _fake_forward, _fake_backward)
    return forward_op, getattr(torch.ops.fastgen, step_name).default


_BACKENDS = backends.OpBackends(
    OP,
    {"ref": backends.ref_support(), "cpp": backends.cpp_support(OP), "triton": backends.triton_support()},
)
_STEP_BACKENDS = backends.OpBackends(
    STEP_OP,
    {"ref": backends.ref_support(), "cpp": backends.cpp_support(STEP_OP), "triton": backends.triton_support()},
)
_FAST_OPS = {"triton": _register("causal_conv1d_triton", "causal_conv1d_triton_backward", "causal_conv1d_step_triton")}
if _BACKENDS.supports["cpp"].unavailable is None and _STEP_BACKENDS.supports["cpp"].unavailable is None:
    _FAST_OPS["cpp"] = _register("causal_conv1d", "causal_conv1d_backward", "causal_conv1d_step")


# ------------------------------------------------------------------------------ public


def _check_conv_args(op, x_name, x, weight, bias, dilation, groups, x_dims) -> None:
    check_tensor(op, x_name, x, x_dims)
    check_tensor(op, "weight", weight, ("C_out", "C_in / groups", "K"))
    check_same_device(op, x_name, x, weight=weight)
    check_int(op, "dilation", dilation, minimum=1)
    check_int(op, "groups", groups, minimum=1)
    c_out, c_in_g, k = weight.shape
    c_in = x.shape[1]
    if k < 1:
        raise ValueError(f"{op}: weight must have K >= 1 taps, got weight shape {tuple(weight.shape)}")
    if c_in < 1 or c_out < 1:
        raise ValueError(
            f"{op}: need at least one input and output channel, got C_in={c_in} and weight shape {tuple(weight.shape)}"
        )
    if c_in % groups or c_out % groups:
        raise ValueError(
            f"{op}: groups={groups} must divide the input and output channel counts, got {c_in} and {c_out}"
        )
    if c_in_g * groups != c_in:
        raise ValueError(
            f"{op}: weight must be (C_out, C_in / groups, K) with C_in / groups = {c_in} / {groups} = "
            f"{c_in // groups} ({x_name}.shape[1] = {c_in}), got weight shape {tuple(weight.shape)}"
        )
    if bias is not None:
        check_tensor(op, "bias", bias, ("C_out",))
        check_same_device(op, x_name, x, bias=bias)
        if bias.shape[0] != c_out:
            raise ValueError(f"{op}: bias must have shape ({c_out},) to match weight, got {tuple(bias.shape)}")


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    dilation: int = 1,
    groups: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """Causal dilated convolution, equal to :func:`causal_conv1d_ref` (output length ``T``).

    Args:
        x: ``(B, C_in, T)``, ``T >= 1`` (an empty batch is fine), any strides.
        weight: ``(C_out, C_in / groups, K)``, any ``K >= 1``; tap ``K-1`` multiplies the
            current input, tap ``k`` the input ``(K-1-k) * dilation`` steps back.
        bias: ``(C_out,)`` or None.
        dilation: spacing between taps (>= 1, may exceed ``T``).
        groups: channel groups dividing ``C_in`` and ``C_out``; 1 and depthwise
            (``groups = C_in``) are the tuned cases.
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None (see
            :mod:`fastgen.backends`).

    Returns:
        ``(B, C_out, T)``, contiguous.

    Example:
        >>> x = torch.randn(4, 64, 1000)
        >>> w = torch.randn(128, 64, 2)
        >>> causal_conv1d(x, w, dilation=256).shape
        torch.Size([4, 128, 1000])
    """
    _check_conv_args(OP, "x", x, weight, bias, dilation, groups, ("B", "C_in", "T"))
    check_extents(OP, "x", x, ("T",))
    name = _BACKENDS.select(backend, x)
    if name == "ref":
        return causal_conv1d_ref(x, weight, bias, dilation=dilation, groups=groups)
    return _FAST_OPS[name][0](x, weight, bias, dilation, groups)


def _check_step_args(x_t, state, weight, bias, dilation, groups, position) -> None:
    _check_conv_args(STEP_OP, "x_t", x_t, weight, bias, dilation, groups, ("B", "C_in"))
    batch, c_in = x_t.shape
    length = (weight.shape[2] - 1) * dilation
    check_tensor(STEP_OP, "state", state, ("B", "C_in", "(K-1)*dilation"))
    check_same_device(STEP_OP, "x_t", x_t, state=state)
    if tuple(state.shape) != (batch, c_in, length):
        raise ValueError(
            f"{STEP_OP}: state must have shape (B, C_in, (K-1)*dilation) = ({batch}, {c_in}, {length}), "
            f"got {tuple(state.shape)}"
        )
    if length > 1 and state.stride(2) != 1:
        raise ValueError(
            f"{STEP_OP}: state must be contiguous in its last dimension (stride(-1) == 1), got strides {state.stride()}"
        )
    check_no_overlap(STEP_OP, "state", state)
    if position is not None:
        check_tensor(STEP_OP, "position", position, ("B",), floating=False)
        if position.dtype != torch.int64:
            raise TypeError(f"{STEP_OP}: position must have dtype torch.int64, got {position.dtype}")
        if position.device != x_t.device:
            raise ValueError(f"{STEP_OP}: position is on {position.device} but x_t is on {x_t.device}; they must match")
        if position.shape[0] != batch:
            raise ValueError(f"{STEP_OP}: position must have shape (B,) = ({batch},), got {tuple(position.shape)}")


def causal_conv1d_step(
    x_t: torch.Tensor,
    state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    dilation: int = 1,
    groups: int = 1,
    position: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """One time step of :func:`causal_conv1d` on a state buffer, updated in place.

    Stepping ``x[..., 0], x[..., 1], ...`` from a zero state returns the columns of
    ``causal_conv1d(x, weight, bias, dilation=dilation, groups=groups)``. No autograd:
    the step runs without recording a graph (its output never requires grad); it is
    meant for sampling.

    Args:
        x_t: ``(B, C_in)``, the input at the current step, any strides.
        state: ``(B, C_in, (K-1) * dilation)`` of ``x_t``'s dtype and device, contiguous in
            its last dimension, its own memory (not an ``expand``-ed view shared by the
            batch); zeros before the first step. Read and updated in place:
            a shift register (``position=None``, newest input last) or a ring buffer.
        weight: ``(C_out, C_in / groups, K)``.
        bias: ``(C_out,)`` or None.
        dilation, groups: as in :func:`causal_conv1d`.
        position: None (shift register) or an int64 ``(B,)`` tensor on ``x_t``'s device,
            the number of steps each sequence has taken (ring buffer: ``x_t`` goes to slot
            ``position mod L``). Not advanced by the step: do ``position += 1`` after it.
        backend: as in :func:`causal_conv1d`.

    Returns:
        ``(B, C_out)``.

    Example:
        >>> w = torch.randn(8, 4, 2)
        >>> state = torch.zeros(3, 4, 1 * 16)  # (B, C_in, (K-1) * dilation)
        >>> causal_conv1d_step(torch.randn(3, 4), state, w, dilation=16).shape
        torch.Size([3, 8])
    """
    _check_step_args(x_t, state, weight, bias, dilation, groups, position)
    name = _STEP_BACKENDS.select(backend, x_t)
    with torch.no_grad():
        if name == "ref":
            return causal_conv1d_step_ref(
                x_t, state, weight, bias, dilation=dilation, groups=groups, position=position
            )
        return _FAST_OPS[name][1](x_t, state, weight, bias, dilation, groups, position)
