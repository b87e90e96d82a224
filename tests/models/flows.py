"""Checks every flow zoo model must pass (DESIGN.md, Tests): round trips both ways, the
log-determinant against the autograd Jacobian, gradients to every parameter, saving and
loading, normalization on a grid, finite log-densities of samples, training on built-in data."""

from __future__ import annotations

import torch

from fastgen.data import DataSplit
from fastgen.models import FlowModel, build
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
    "randomize",
]


def randomize(model: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Moves every parameter away from its initialization (identity flows start trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


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
    """The loss has a finite, nonzero gradient for every parameter."""
    model.zero_grad(set_to_none=True)
    model.loss(x, cond).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all(), name
        assert p.grad.abs().sum() > 0, name


def assert_state_dict_round_trip(name: str, config: dict, x: torch.Tensor, cond: torch.Tensor | None = None) -> None:
    """A model built with another seed and loaded with a trained one's state dict gives the
    same log-densities and, for the same generator, the same samples."""
    torch.manual_seed(0)
    saved = randomize(build(name, **config).double())
    torch.manual_seed(1)
    loaded = build(name, **config).double()
    assert not torch.equal(loaded.log_prob(x, cond), saved.log_prob(x, cond))
    loaded.load_state_dict(saved.state_dict())
    torch.testing.assert_close(loaded.log_prob(x, cond), saved.log_prob(x, cond), rtol=0, atol=0)
    n = x.shape[0]
    samples = [m.sample(n, cond, generator=torch.Generator().manual_seed(0)) for m in (saved, loaded)]
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
