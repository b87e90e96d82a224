"""Checks every autoregressive zoo model must pass (DESIGN.md, Tests): causality by
Jacobian, exhaustive normalization, the cached step against the full forward, and cached
against naive sampling."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import pytest
import torch

from fastgen.data import DataSplit
from fastgen.models import AutoregressiveModel
from fastgen.train import fit
from tests.helpers import tolerances

__all__ = [
    "assert_cached_equals_naive",
    "assert_normalized",
    "assert_image_model_rejects_bad_data_and_cond",
    "assert_respects_order",
    "assert_step_rejects_bad_input",
    "assert_step_equals_full",
    "dependencies",
    "every_x",
    "bits_after_training",
]


def every_x(model: AutoregressiveModel) -> torch.Tensor:
    """Every example of a tiny model, ``(categories ** D, *event_shape)`` long."""
    values = itertools.product(range(model.categories), repeat=model.num_dims)
    return torch.tensor(list(values)).view(-1, *model.event_shape)


def assert_normalized(model: AutoregressiveModel, cond: torch.Tensor | None = None) -> None:
    """The probabilities of every example sum to 1 (``cond``: one example's, or None)."""
    x = every_x(model)
    if cond is not None:
        cond = cond.expand(len(x), *cond.shape[1:])
    total = model.log_prob(x, cond).double().exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), **tolerances(model_dtype(model)))


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def dependencies(
    logits_of: Callable[[torch.Tensor], torch.Tensor], inp: torch.Tensor, dims_of: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``(D, D)`` bool: entry ``[d, e]`` says whether the logits of dimension ``d`` depend on
    input dimension ``e``, by the Jacobian of ``logits_of(inp) (B, D, K)`` with respect to
    the float input ``inp``; ``dims_of`` maps a gradient of ``inp``'s shape to ``(B, D)``
    (summing the absolute gradient over whatever of ``inp`` belongs to each dimension)."""
    inp = inp.detach().requires_grad_()
    logits = logits_of(inp)
    weights = torch.randn(logits.shape[0], logits.shape[2], dtype=logits.dtype, generator=torch.Generator().manual_seed(0))
    rows = []
    for d in range(logits.shape[1]):
        (grad,) = torch.autograd.grad((logits[:, d] * weights).sum(), inp, retain_graph=True)
        rows.append(dims_of(grad.abs()).sum(0) > 0)
    return torch.stack(rows)


def assert_respects_order(depends: torch.Tensor, order: list[int]) -> None:
    """No dimension's logits depend on an input at or after it in the generation ``order``."""
    position = torch.empty(len(order), dtype=torch.long)
    position[torch.tensor(order)] = torch.arange(len(order))
    allowed = position[None, :] < position[:, None]  # [d, e]: e is generated before d
    bad = (depends & ~allowed).nonzero().tolist()
    assert not bad, f"(dimension, input) pairs that break the order: {bad[:10]}"


def assert_step_equals_full(
    model: AutoregressiveModel, x: torch.Tensor, cond: torch.Tensor | None = None, tol: dict | None = None
) -> None:
    """Stepping the cache through ``x`` in the generation order gives the full forward's
    logits at every dimension (float32 or float64 tolerance of the model's dtype)."""
    tol = tol or tolerances(model_dtype(model))
    with torch.no_grad():
        full = model.logits(x, cond)  # (B, D, K)
        flat = x.reshape(len(x), -1)
        cache, prev = model.init_cache(len(x), cond), None
        for d in model.generation_order():
            torch.testing.assert_close(model.step(cache, prev), full[:, d], **tol, msg=lambda m: f"dimension {d}: {m}")
            prev = flat[:, d]


def assert_cached_equals_naive(model: AutoregressiveModel, n: int, cond: torch.Tensor | None = None, seed: int = 0) -> None:
    """Cached and naive sampling give identical samples for the same generator (use float64)."""
    cached = model.sample(n, cond, torch.Generator().manual_seed(seed), cache=True)
    naive = model.sample(n, cond, torch.Generator().manual_seed(seed), cache=False)
    assert cached.shape == (n, *model.event_shape)
    assert torch.equal(cached, naive)


def bits_after_training(
    model: AutoregressiveModel, split: DataSplit, *, epochs: int, lr: float, batch_size: int = 64
) -> float:
    """Test bits/dim of ``model`` after :func:`fastgen.train.fit` on ``split.train`` (seed 0)."""
    fit(model, split.train, epochs=epochs, batch_size=batch_size, lr=lr, progress=False)
    model.eval()
    with torch.no_grad():
        return model.bits_per_dim(split.test).item()


def assert_step_rejects_bad_input(model: AutoregressiveModel, cache_type: str) -> None:
    """``init_cache`` and ``step`` refuse bad arguments with errors naming them, and the
    failed calls leave the cache usable: a batch below 1 or not an int, a cond given to an
    unconditional model, a cache of the wrong type (the message names ``cache_type``), made
    by another model or before the model was converted, ``x_prev`` missing or given at the
    first step, of a float dtype, the wrong shape, on another device or out of range (the
    values of the dimension generated last, small batches and large), and a step past the
    last dimension (a model of one dimension has no x_prev to check). ``model`` is
    unconditional, with ``categories >= 2``; batch 2 is used."""
    K = model.step_categories(0)  # the values of the first dimension: x_prev's bound at the second step
    with pytest.raises(ValueError, match="init_cache: batch must be >= 1"):
        model.init_cache(0)
    with pytest.raises(ValueError, match="init_cache: batch must be >= 1"):
        model.init_cache(-2)
    with pytest.raises(TypeError, match="init_cache: batch must be an int"):
        model.init_cache(2.0)
    with pytest.raises(ValueError, match="takes no cond"):
        model.init_cache(2, torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match=cache_type):
        model.step({}, None)
    with pytest.raises(TypeError, match=cache_type):
        model.step(None, None)
    twin = copy.deepcopy(model)  # same class, shapes and weights: still not this model's cache
    with pytest.raises(ValueError, match="cache was made by another model's init_cache"):
        model.step(twin.init_cache(2), None)
    stale = twin.init_cache(2)
    twin.double()
    with pytest.raises(ValueError, match="cache was made before the model was moved or converted"):
        twin.step(stale, None)
    cache = model.init_cache(2)
    with pytest.raises(ValueError, match="None at the first step"):
        model.step(cache, torch.zeros(2, dtype=torch.long))
    model.step(cache, None)
    if model.num_dims == 1:  # nothing is left to step with an x_prev
        with pytest.raises(ValueError, match="all 1 dimensions were already generated"):
            model.step(cache, torch.tensor([0, 0]))
        return
    with pytest.raises(ValueError, match="None at the first step"):
        model.step(cache, None)
    with pytest.raises(TypeError, match="x_prev must have an integer dtype"):
        model.step(cache, torch.zeros(2))
    with pytest.raises(TypeError, match="x_prev must be a torch.Tensor"):
        model.step(cache, [0, 1])
    with pytest.raises(ValueError, match=r"x_prev must have shape \(2,\)"):
        model.step(cache, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="x_prev is on meta but the cache is on cpu"):
        model.step(cache, torch.zeros(2, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match=rf"x_prev must have values in \[0, {K}\)"):
        model.step(cache, torch.tensor([0, K]))
    with pytest.raises(ValueError, match=rf"x_prev must have values in \[0, {K}\)"):
        model.step(cache, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=rf"x_prev must have values in \[0, {K}\)"):
        model.step(cache, torch.tensor([0, K], dtype=torch.int32))
    for position in range(model.num_dims - 1):  # int32 is accepted as well as long
        last = model.step_categories(position) - 1
        logits = model.step(cache, torch.tensor([1, last], dtype=torch.int32 if position % 2 else torch.long))
        assert logits.shape == (2, model.categories) and not logits.isnan().any()
    assert cache.position == model.num_dims
    with pytest.raises(ValueError, match=f"all {model.num_dims} dimensions were already generated"):
        model.step(cache, torch.tensor([1, 1]))
    big = model.init_cache(65)  # past the batch that begin_step reads as a list: one reduction instead
    model.step(big, None)
    with pytest.raises(ValueError, match=rf"x_prev must have values in \[0, {K}\)"):
        model.step(big, torch.full((65,), K))
    model.step(big, torch.zeros(65, dtype=torch.long))


def assert_image_model_rejects_bad_data_and_cond(conditional: AutoregressiveModel, unconditional: AutoregressiveModel) -> None:
    """Two image models ``(1, 3, 3)`` with 3 levels, one with 2 classes: data of a float
    dtype, the wrong shape or out of range, and a missing, misshapen, out-of-range, float or
    unexpected ``cond`` raise errors naming the argument, in log_prob, sample and init_cache."""
    x = torch.randint(0, 3, (2, 1, 3, 3), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1])
    model = conditional
    with pytest.raises(TypeError, match="integer dtype"):
        model.log_prob(x.double(), labels)
    with pytest.raises(ValueError, match=r"shape \(B, 1, 3, 3\)"):
        model.log_prob(x[:, :, :2], labels)
    with pytest.raises(ValueError, match=r"values in \[0, 3\)"):
        model.log_prob(x + 1, labels)
    with pytest.raises(TypeError, match="cond must be a tensor"):
        model.log_prob(x)
    with pytest.raises(ValueError, match="cond must have shape"):
        model.log_prob(x, labels[:1])
    with pytest.raises(ValueError, match=r"cond must have values in \[0, 2\)"):
        model.log_prob(x, torch.tensor([0, 2]))
    with pytest.raises(TypeError, match="cond must have an integer dtype"):
        model.log_prob(x, labels.double())
    with pytest.raises(ValueError, match=r"cond must have values in \[0, 2\)"):
        model.sample(2, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"cond must have values in \[0, 2\)"):
        model.init_cache(2, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="takes no cond"):
        unconditional.log_prob(x, labels)
