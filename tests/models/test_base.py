"""The model registry, and the change of variables of :class:`fastgen.models.FlowModel`."""

from __future__ import annotations

import math

import pytest
import torch

from fastgen.models import FlowModel, available, build


def test_build_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build("nope")
    assert available() == sorted(available())


class ScaleShift(FlowModel):
    """z = (x - mu) / sigma per dimension: x ~ N(mu, sigma^2) exactly."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor):
        super().__init__()
        self.event_shape = tuple(mu.shape)
        self.register_buffer("mu", mu)
        self.register_buffer("sigma", sigma)

    def transform(self, x, cond=None):
        return (x - self.mu) / self.sigma, -self.sigma.log().sum().expand(x.shape[0])

    def inverse(self, z, cond=None, *, temperature=1.0, generator=None):
        return z * self.sigma + self.mu


def test_flow_log_prob_is_the_change_of_variables():
    mu, sigma = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    model = ScaleShift(mu, sigma)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = torch.distributions.Normal(mu, sigma).log_prob(x).sum(1)
    torch.testing.assert_close(model.log_prob(x), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.bits_per_dim(x), -want.mean() / 3 / math.log(2), rtol=1e-12, atol=1e-12)


def test_flow_sample_scales_the_base_by_the_temperature():
    model = ScaleShift(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0]))
    assert torch.equal(model.sample(4, temperature=0), model.mu.expand(4, 2))  # the mode path
    a = model.sample(3, generator=torch.Generator().manual_seed(0), temperature=0.5)
    b = model.sample(3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a - model.mu, (b - model.mu) / 2)
    samples = model.sample(20_000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(samples.mean(0), model.mu, atol=0.05, rtol=0)
    torch.testing.assert_close(samples.std(0), model.sigma, atol=0, rtol=0.03)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "1", True])
def test_flow_sample_rejects_a_bad_temperature(bad):
    model = ScaleShift(torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        model.sample(2, temperature=bad)


def test_flow_sample_rejects_a_cond_the_model_does_not_take():
    with pytest.raises(ValueError, match="takes no cond"):
        ScaleShift(torch.zeros(2), torch.ones(2)).sample(2, cond=torch.zeros(2))
