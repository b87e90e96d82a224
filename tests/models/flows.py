"""Checks every flow zoo model must pass (DESIGN.md, Tests): round trips both ways, the
log-determinant against the autograd Jacobian, gradients to every parameter, saving and
loading, normalization on a grid, finite log-densities of samples, training on built-in data."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastgen.data import DataSplit
from fastgen.models import FlowModel
from fastgen.train import fit
from tests.helpers import logdet_by_jacobian

__all__ = [
    "assert_gradients_reach_every_parameter",
    "assert_log_terms_match_the_jacobian",
    "assert_round_trips",
    "assert_samples_have_finite_log_prob",
    "assert_state_dict_round_trip",
    "assert_training_lowers_the_loss",
    "grid_integral",
]


def _rows(cond: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    return None if cond is None else cond[rows]


def assert_round_trips(model: FlowModel, x: torch.Tensor, cond: torch.Tensor | None = None, tol: float = 1e-9) -> None:
    """``inverse(transform(x)) == x`` and ``transform(inverse(z)) == z`` (z from the base)."""
    z, _ = model.transform(x, cond)
    assert z.shape == (x.shape[0], *model.latent_shape)
    torch.testing.assert_close(model.inverse(z, cond), x, atol=tol, rtol=tol)
    fresh = model.sample_base(x.shape[0], torch.Generator().manual_seed(1), 1.0)
    torch.testing.assert_close(model.transform(model.inverse(fresh, cond), cond)[0], fresh, atol=tol, rtol=tol)


def assert_log_terms_match_the_jacobian(
    model: FlowModel, x: torch.Tensor, cond: torch.Tensor | None = None, tol: float = 1e-9
) -> None:
    """``transform``'s log terms are log|det dz/dx| (``torch.autograd.functional.jacobian``
    and ``slogdet``, one example at a time, each with its own ``cond``)."""
    _, log_terms = model.transform(x, cond)
    want = torch.cat(
        [
            logdet_by_jacobian(lambda e, i=i: model.transform(e, _rows(cond, slice(i, i + 1)))[0], x[i : i + 1])
            for i in range(x.shape[0])
        ]
    )
    torch.testing.assert_close(log_terms, want, atol=tol, rtol=tol)


def assert_gradients_reach_every_parameter(model: FlowModel, x: torch.Tensor, cond: torch.Tensor | None = None) -> None:
    """The training loss on the second half of ``x`` has a finite gradient, not all zero,
    for every parameter, after the first half initialized any data-dependent layer (on its
    own initialization batch an ActNorm is at a stationary point: the last one's gradient
    is exactly zero)."""
    half = len(x) // 2
    model.train()
    with torch.no_grad():
        model.log_prob(x[:half], _rows(cond, slice(0, half)))
    model.zero_grad(set_to_none=True)
    model.loss(x[half:], _rows(cond, slice(half, None))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert p.grad.isfinite().all() and p.grad.abs().sum() > 0, f"{name}: gradient {p.grad}"


def assert_state_dict_round_trip(
    build: Callable[[int], FlowModel], x: torch.Tensor, cond: torch.Tensor | None = None
) -> None:
    """A model ``build(1)`` loaded with the state dict of ``build(0)`` gives the same
    log-densities (any dequantization noise drawn from the same global seed) and, for the
    same generator, the same samples."""
    saved, loaded = build(0).eval(), build(1).eval()

    def log_prob(model: FlowModel) -> torch.Tensor:
        torch.manual_seed(2)
        with torch.no_grad():
            return model.log_prob(x, cond)

    before = log_prob(loaded)
    loaded.load_state_dict(saved.state_dict())
    assert not torch.allclose(before, log_prob(saved)), "the two seeds built the same model: the check proves nothing"
    torch.testing.assert_close(log_prob(loaded), log_prob(saved), rtol=0, atol=0)
    with torch.no_grad():
        samples = [m.sample(len(x), cond, generator=torch.Generator().manual_seed(3)) for m in (saved, loaded)]
    torch.testing.assert_close(samples[0], samples[1], rtol=0, atol=0)


def assert_samples_have_finite_log_prob(model: FlowModel, n: int, cond: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` samples of the model's event shape whose log-densities are finite; returns them."""
    samples = model.sample(n, cond, generator=torch.Generator().manual_seed(2))
    assert samples.shape == (n, *model.event_shape)
    assert samples.isfinite().all() and model.log_prob(samples, cond).isfinite().all()
    return samples


def grid_integral(model: FlowModel, lo: float, hi: float, points: int) -> float:
    """The integral of the model's density over ``[lo, hi]^d`` (``d`` = 1 or 2, event shape
    ``()`` or ``(1,)`` or ``(2,)``) by the midpoint rule on ``points`` cells per axis."""
    step = (hi - lo) / points
    axis = lo + step * (torch.arange(points, dtype=torch.float64) + 0.5)
    if model.num_dims == 1:
        x, cell = axis.reshape(points, *model.event_shape), step
    else:
        x, cell = torch.cartesian_prod(axis, axis), step * step
    with torch.no_grad():
        return float(model.log_prob(x).exp().sum() * cell)


def assert_training_lowers_the_loss(model: FlowModel, split: DataSplit, *, epochs: int, lr: float, by: float) -> None:
    """:func:`fastgen.train.fit` on ``split.train`` lowers the test loss (nats/dim) by at least ``by``."""
    with torch.no_grad():
        before = model.eval().loss(split.test).item()
    fit(model, split.train, epochs=epochs, batch_size=256, lr=lr, progress=False)
    with torch.no_grad():
        after = model.eval().loss(split.test).item()
    assert after < before - by, (before, after)
