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


@pytest.mark.parametrize(
    "bad, error",
    [(-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("1", TypeError), (True, TypeError)],
)
def test_flow_sample_rejects_a_bad_temperature(bad, error):
    model = ScaleShift(torch.zeros(2), torch.ones(2))
    with pytest.raises(error, match="ScaleShift.sample: temperature must be a (finite )?real number"):
        model.sample(2, temperature=bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_flow_rejects_non_finite_data_and_latents(bad):
    model = ScaleShift(torch.zeros(2), torch.ones(2))
    x = torch.tensor([[0.0, 1.0], [bad, 0.0]])
    with pytest.raises(ValueError, match=r"ScaleShift: x must be finite, got values in \["):
        model.check_data(x)
    with pytest.raises(ValueError, match="ScaleShift: z must be finite"):
        model.check_latent(x)
    torch.testing.assert_close(model.check_latent(x[:1]), x[:1])  # finite values pass untouched


def test_flow_sample_rejects_a_cond_the_model_does_not_take():
    with pytest.raises(ValueError, match="takes no cond"):
        ScaleShift(torch.zeros(2), torch.ones(2)).sample(2, cond=torch.zeros(2))


EMPTY_BATCH_MODELS = {
    "pixelcnn": dict(shape=(1, 3, 3), levels=4, channels=4, layers=1),
    "gated_pixelcnn": dict(shape=(1, 3, 3), levels=4, channels=4, layers=1),
    "pixel_transformer": dict(shape=(1, 2, 2), levels=4, d_model=4, heads=2, layers=1),
    "wavenet": dict(levels=4, residual_channels=2, gate_channels=2, skip_channels=2, layers_per_stack=2, stacks=1, length=5),
    "made": dict(dim=3, hidden=[6], categories=3),
    "rnn": dict(dim=3, categories=3, hidden=4),
    "histogram": dict(num_bins=4),
    "discretized_mixture_of_logistics": dict(num_bins=4, components=2),
    "bayes_net": dict(parents=[[], [0]], cardinalities=[2, 3]),
    "maf": dict(dim=2, hidden=[4], transforms=2),
    "realnvp": dict(shape=(1, 4, 4), hidden=2, blocks=0, couplings=1, scales=1, bins=4),
    "glow": dict(shape=(1, 4, 4), levels=1, depth=1, hidden=2, bins=4),
    "flowpp": dict(shape=(1, 2, 2), bins=4, scales=1, steps=1, hidden=(2,), components=2, dequant_steps=1),
    "cdf_flow_1d": dict(components=2),
    "mixture_of_gaussians": dict(dim=2, components=2),
}


@pytest.mark.parametrize("name", EMPTY_BATCH_MODELS)
def test_log_prob_of_an_empty_batch_is_empty(name):
    model = build(name, **EMPTY_BATCH_MODELS[name])
    discrete = not isinstance(model, FlowModel) and name != "mixture_of_gaussians" or getattr(model, "bins", None)
    x = torch.zeros(0, *model.event_shape, dtype=torch.long if discrete else torch.float32)
    out = model.log_prob(x)
    assert out.shape == (0,) and out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"\.loss: x must hold at least one example"):
        model.bits_per_dim(x)  # a mean over no examples: refused, not NaN
    full = torch.zeros(2, *model.event_shape, dtype=x.dtype)
    assert model.log_prob(full).isfinite().all()  # and the model still works on examples after it
