"""Checks any flow zoo model (a :class:`fastgen.models.FlowModel`) must pass, whatever its
layers: parameters moved off their identity initialization, gradients reaching every
parameter, and a state-dict round trip."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastgen.models import FlowModel

__all__ = ["assert_gradients_reach_every_parameter", "assert_state_dict_round_trip", "randomize"]


def randomize(model: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Adds ``scale`` times Gaussian noise to every parameter: flows start as the identity
    (zero last layers), where a wrong log-determinant or a missing gradient can hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model


def assert_gradients_reach_every_parameter(model: FlowModel, x: torch.Tensor) -> None:
    """The training loss on ``x`` has a finite gradient, not all zero, for every parameter."""
    model.zero_grad()
    model.loss(x).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: gradient {p.grad}"


def assert_state_dict_round_trip(build: Callable[[int], FlowModel], x: torch.Tensor) -> None:
    """A model built with another seed and loaded with the state of ``build(0)`` gives the
    same ``log_prob`` (the models' noise, if any, drawn from the same global seed)."""
    saved, loaded = build(0).eval(), build(1).eval()
    torch.manual_seed(2)
    before = loaded.log_prob(x)
    loaded.load_state_dict(saved.state_dict())
    log_probs = []
    for model in (saved, loaded):
        torch.manual_seed(2)
        log_probs.append(model.log_prob(x))
    assert not torch.allclose(before, log_probs[0]), "the two seeds built the same model: the check proves nothing"
    torch.testing.assert_close(log_probs[1], log_probs[0], rtol=0, atol=0)
