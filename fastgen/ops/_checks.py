"""Argument checks shared by the ops: each raises TypeError/ValueError naming the op, the
argument, what was expected and what was received, before any kernel runs."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

__all__ = [
    "check_batched",
    "check_bool",
    "check_choice",
    "check_extents",
    "check_finite",
    "check_floating",
    "check_int",
    "check_int_sequence",
    "check_integer_values",
    "check_labels",
    "check_real",
    "check_layer_masks",
    "check_like",
    "check_mask",
    "check_mlp_layers",
    "check_no_overlap",
    "check_odd_int",
    "check_same_device",
    "check_tensor",
    "check_widths",
]


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def _check_is_tensor(op: str, name: str, value: object) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")


def _check_floating_dtype(op: str, name: str, value: torch.Tensor) -> None:
    if not value.is_floating_point():
        raise TypeError(f"{op}: {name} must have a floating-point dtype, got {value.dtype}")


def check_tensor(op: str, name: str, value: object, dims: Sequence[str], *, floating: bool = True) -> torch.Tensor:
    """``value`` must be a tensor with ``len(dims)`` dimensions (named ``dims`` in messages)."""
    _check_is_tensor(op, name, value)
    if value.dim() != len(dims):
        raise ValueError(f"{op}: {name} must have shape ({', '.join(dims)}), got shape {_shape(value)}")
    if floating:
        _check_floating_dtype(op, name, value)
    return value


def check_extents(op: str, name: str, value: torch.Tensor, dims: Sequence[str]) -> None:
    """The last ``len(dims)`` dimensions of ``value`` (named ``dims``: the ``H, W`` of an image,
    the ``T`` of a sequence) must not be empty: a convolution over zero pixels or steps has
    nothing to compute (an empty batch is fine)."""
    if any(n < 1 for n in value.shape[value.dim() - len(dims) :]):
        raise ValueError(f"{op}: {name} must have {' and '.join(dims)} >= 1, got shape {_shape(value)}")


def check_no_overlap(op: str, name: str, value: torch.Tensor) -> None:
    """``value``, which an op writes in place, must not have two elements at one memory
    location (as an ``expand``-ed or stride-0 tensor does), else the writes would scribble
    over each other. A sufficient test on the strides alone (no data read): sorted by stride,
    each dimension must step past everything the smaller strides span."""
    if value.is_contiguous():  # the usual state, answered in C: no Python loop per step
        return
    span = 1
    for stride, size in sorted((s, n) for s, n in zip(value.stride(), value.shape) if n > 1):
        if stride < span:
            raise ValueError(
                f"{op}: {name} is updated in place, so its elements must not share memory (as an expanded "
                f"tensor's do), got shape {_shape(value)} with strides {value.stride()}; allocate it, or .clone() it"
            )
        span += (size - 1) * stride


def check_floating(op: str, name: str, value: object) -> torch.Tensor:
    """``value`` must be a floating-point tensor, of any shape."""
    _check_is_tensor(op, name, value)
    _check_floating_dtype(op, name, value)
    return value


def check_batched(op: str, name: str, value: object) -> torch.Tensor:
    """``value`` must be a floating-point tensor ``(B, ...)`` with at least one dimension after the batch."""
    _check_is_tensor(op, name, value)
    if value.dim() < 2:
        raise ValueError(
            f"{op}: {name} must have shape (B, ...) with at least 2 dimensions (a batch of vectors, images, ...), "
            f"got shape {_shape(value)}"
        )
    _check_floating_dtype(op, name, value)
    return value


def check_like(op: str, ref_name: str, ref: torch.Tensor, **others: object) -> None:
    """Every non-None value in ``others`` is a tensor with ``ref``'s shape (else ValueError),
    dtype (else TypeError) and device (else ValueError)."""
    for name, t in others.items():
        if t is None:
            continue
        _check_is_tensor(op, name, t)
        if t.shape != ref.shape:
            raise ValueError(f"{op}: {name} must have {ref_name}'s shape {_shape(ref)}, got shape {_shape(t)}")
        check_same_device(op, ref_name, ref, **{name: t})


def check_same_device(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Every tensor in ``others`` has ``ref``'s dtype (else TypeError) and device (else ValueError)."""
    for name, t in others.items():
        if t is None:
            continue
        if t.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; they must match")
        if t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; they must match")


def check_int(op: str, name: str, value: object, *, minimum: int, below: int | None = None) -> int:
    """``value`` must be a Python int ``>= minimum`` (and ``< below`` where given: an index,
    never wrapped around like a negative Python index)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if value < minimum or (below is not None and value >= below):
        bounds = f">= {minimum}" if below is None else f"in [{minimum}, {below})"
        raise ValueError(f"{op}: {name} must be {bounds}, got {value}")
    return value


def check_odd_int(op: str, name: str, value: object) -> int:
    """``value`` must be an odd int >= 1: the kernel size of a centred (masked) convolution."""
    check_int(op, name, value, minimum=1)
    if value % 2 == 0:
        raise ValueError(f"{op}: {name} must be odd, got {value}")
    return value


def check_int_sequence(
    op: str, name: str, value: object, *, minimum: int, length: int | None = None
) -> tuple[int, ...]:
    """``value`` must be a non-empty sequence of ints ``>= minimum`` (of ``length`` of them,
    where given): image shapes, layer widths; returned as a tuple."""
    is_sequence = isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    if not is_sequence or (len(value) == 0 if length is None else len(value) != length):
        count = "a non-empty sequence of" if length is None else f"a sequence of {length}"
        raise TypeError(f"{op}: {name} must be {count} ints, got {value!r}")
    return tuple(check_int(op, f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(value))


def check_widths(op: str, name: str, value: object) -> tuple[int, ...]:
    """``value`` must be an int >= 1 (one layer) or a non-empty sequence of them: the widths
    of a network's hidden layers."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    elif not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) == 0:
        raise TypeError(f"{op}: {name} must be an int or a non-empty sequence of ints, got {value!r}")
    return check_int_sequence(op, name, value, minimum=1)


def check_integer_values(op: str, name: str, value: object, high: int) -> torch.Tensor:
    """``value`` must be a tensor of an integer dtype (not bool) with values in ``[0, high)``:
    class labels, discrete data, quantized levels."""
    _check_is_tensor(op, name, value)
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{op}: {name} must have an integer dtype, got {value.dtype}")
    if value.numel():
        lo, hi = (int(v) for v in torch.aminmax(value))
        if lo < 0 or hi >= high:
            raise ValueError(f"{op}: {name} must have values in [0, {high}), got values in [{lo}, {hi}]")
    return value


def check_labels(op: str, name: str, value: object, num_classes: int, batch: int) -> torch.Tensor:
    """Class labels (or one-hot indices): an integer tensor of shape ``(batch,)`` with values
    in ``[0, num_classes)`` (:func:`check_integer_values`, one reduction); returned as int64,
    what indexing needs (a uint8 index would be read as a mask)."""
    _check_is_tensor(op, name, value)
    if value.shape != (batch,):
        raise ValueError(
            f"{op}: {name} must have shape ({batch},), one label per example, got shape {tuple(value.shape)}"
        )
    check_integer_values(op, name, value, num_classes)
    return value if value.dtype == torch.int64 else value.long()


def check_finite(op: str, name: str, value: torch.Tensor, interval: tuple[float, float] | None = None) -> None:
    """``value``'s values must be finite, and within ``interval = (low, high)`` where given
    (ValueError naming ``name`` and the range of the values): one min/max reduction."""
    if not value.numel():
        return
    lo, hi = (float(v) for v in torch.aminmax(value.detach()))
    low, high = interval or (-math.inf, math.inf)
    if not (low <= lo and hi <= high and math.isfinite(lo) and math.isfinite(hi)):  # NaN fails every comparison
        where = f"in [{low:g}, {high:g}]" if interval else "finite"
        raise ValueError(f"{op}: {name} must be {where}, got values in [{lo:g}, {hi:g}]")


def check_real(
    op: str,
    name: str,
    value: object,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
) -> float:
    """``value`` must be a finite real number (an int or a float, not a bool), ``> above``,
    ``>= at_least`` and ``< below`` where given; returned as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    bounds = [(above, ">"), (at_least, ">="), (below, "<")]
    ok = math.isfinite(value) and all(
        bound is None or (value > bound if sign == ">" else value >= bound if sign == ">=" else value < bound)
        for bound, sign in bounds
    )
    if not ok:
        limits = " and ".join(f"{sign} {bound:g}" for bound, sign in bounds if bound is not None)
        raise ValueError(f"{op}: {name} must be a finite real number{' ' + limits if limits else ''}, got {value!r}")
    return float(value)


def check_bool(op: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__}")
    return value


def check_choice(op: str, name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{op}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value  # type: ignore[return-value]


def _check_tensor_list(op: str, name: str, value: object, length: int | None = None) -> list:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) == 0:
        raise TypeError(f"{op}: {name} must be a non-empty list of tensors, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ValueError(f"{op}: {name} must hold one tensor per layer ({length}), got {len(value)}")
    return list(value)


def check_mlp_layers(
    op: str, x: torch.Tensor, weights: object, biases: object, *, inputs: int, outputs: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The layers of an MLP from ``inputs`` to ``outputs`` features, on ``x``'s dtype and device:
    ``weights`` ``(out_k, in_k)`` chaining from ``inputs`` to ``outputs`` and ``biases``
    ``(out_k,)``, as lists."""
    weights = _check_tensor_list(op, "weights", weights)
    width = inputs
    for k, weight in enumerate(weights):
        check_tensor(op, f"weights[{k}]", weight, ("out", "in"))
        if weight.shape[1] != width:
            raise ValueError(f"{op}: weights[{k}] must have {width} columns (its input's width), got {_shape(weight)}")
        check_same_device(op, "x", x, **{f"weights[{k}]": weight})
        width = weight.shape[0]
    if width != outputs:
        raise ValueError(f"{op}: the last layer must have {outputs} outputs, got {width}")
    biases = _check_tensor_list(op, "biases", biases, len(weights))
    for k, (weight, bias) in enumerate(zip(weights, biases)):
        check_tensor(op, f"biases[{k}]", bias, ("out",))
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{op}: biases[{k}] must have shape ({weight.shape[0]},), got {_shape(bias)}")
        check_same_device(op, "x", x, **{f"biases[{k}]": bias})
    return weights, biases


def check_mask(op: str, name: str, mask: object, weight_name: str, weight: torch.Tensor, x: torch.Tensor) -> None:
    """``mask`` (a masked linear layer's) must be bool, of ``weight``'s shape, on ``x``'s device."""
    check_tensor(op, name, mask, ("out_features", "in_features"), floating=False)
    if mask.dtype != torch.bool:
        raise TypeError(f"{op}: {name} must be a bool tensor, got {mask.dtype}")
    if mask.shape != weight.shape:
        raise ValueError(f"{op}: {name} must have {weight_name}'s shape {_shape(weight)}, got {_shape(mask)}")
    if mask.device != x.device:
        raise ValueError(f"{op}: {name} is on {mask.device} but x is on {x.device}; they must match")


def check_layer_masks(op: str, x: torch.Tensor, masks: object, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """One mask per layer of ``weights`` (:func:`check_mask`), as a list."""
    masks = _check_tensor_list(op, "masks", masks, len(weights))
    for k, (weight, mask) in enumerate(zip(weights, masks)):
        check_mask(op, f"masks[{k}]", mask, f"weights[{k}]", weight, x)
    return masks
