"""Checks shared by the tests of the multiscale flow models (RealNVP, Glow: subclasses of
:class:`fastgen.models.MultiscaleFlowModel`): the continuous part inverts and its
log-determinant is the autograd Jacobian's, ``log_prob`` accounts every latent and the
dequantization, and integers come back (the checks of every flow are in ``flows.py``)."""

from __future__ import annotations

import math

import torch

from fastgen.models import MultiscaleFlowModel
from tests.helpers import logdet_by_jacobian

__all__ = [
    "assert_continuous_part_inverts",
    "assert_integers_round_trip",
    "assert_log_prob_accounts_every_latent",
]


def _flat_latents(model: MultiscaleFlowModel, y: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    latents, _ = model.flow(y, cond)
    return torch.cat([t.flatten(1) for t in latents], dim=1)


def assert_continuous_part_inverts(
    model: MultiscaleFlowModel, y: torch.Tensor, cond: torch.Tensor | None = None, atol: float = 1e-8
) -> None:
    """``model.flow`` (float64, eval mode) inverts on ``y``, its two log-determinants cancel,
    and its log-determinant is ``slogdet`` of the Jacobian of ``y`` to every latent (on the
    first example)."""
    latents, logdet = model.flow(y, cond)
    assert sum(t[0].numel() for t in latents) == y[0].numel()
    back, inv_logdet = model.flow.inverse(latents, cond)
    torch.testing.assert_close(back, y, atol=atol, rtol=atol)
    torch.testing.assert_close(logdet + inv_logdet, torch.zeros_like(logdet), atol=atol, rtol=0)
    assert logdet.abs().min() > 0.1  # a volume-preserving map would make the next check weak
    first_cond = None if cond is None else cond[:1]
    want = logdet_by_jacobian(lambda e: _flat_latents(model, e, first_cond), y[:1])
    torch.testing.assert_close(logdet[:1], want, atol=atol, rtol=atol)


def assert_log_prob_accounts_every_latent(model: MultiscaleFlowModel, x: torch.Tensor, cond=None) -> None:
    """``log_prob`` is the standard normal log-density of every latent of the continuous
    part plus its log-determinant, less ``D log bins`` for integer data (the same
    dequantization noise: the global RNG reseeded)."""
    torch.manual_seed(1)
    got = model.log_prob(x, cond)
    torch.manual_seed(1)
    y = x.double() if model.bins is None else model.dequantization(x.double())[0]
    latents, logdet = model.flow(y, cond)
    normal = torch.distributions.Normal(0.0, 1.0)
    want = sum(normal.log_prob(t).flatten(1).sum(1) for t in latents) + logdet
    if model.bins is not None:
        want = want - model.num_dims * math.log(model.bins)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def assert_integers_round_trip(model: MultiscaleFlowModel, x: torch.Tensor, cond=None) -> None:
    """Integer images: dequantized, through the continuous part and back, quantized by
    ``model.inverse``'s last step, give ``x`` exactly (and the dequantized values stay in
    their bins)."""
    y, _ = model.dequantization(x.double())
    latents, _ = model.flow(y, cond)
    back, _ = model.flow.inverse(latents, cond)
    assert torch.equal(model.dequantization.inverse(back)[0].long(), x.long())
