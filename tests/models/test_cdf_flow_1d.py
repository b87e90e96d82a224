"""CDFFlow1D: the flow checks for both bases and both kinds of components, the density is
the mixture's whatever the base, samples follow the model's CDF, the temperature, training
on the 1-D toy density, bad input."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from fastgen.data import gaussian_mixture_1d, gaussian_mixture_1d_log_prob
from fastgen.models import CDFFlow1D
from fastgen.ops import mixture_cdf

from . import flows
from ..helpers import randomize

CONFIGS = [dict(components=c, kind=k, base=b) for c, k, b in [(3, "gaussian", "uniform"), (4, "logistic", "normal")]]
IDS = [f"{c['kind']}-{c['base']}" for c in CONFIGS]


def flow(config: dict, seed: int = 0) -> CDFFlow1D:
    return randomize(CDFFlow1D(**config).double(), seed=seed)


def points(n: int = 6) -> torch.Tensor:
    return torch.linspace(-3, 3, n, dtype=torch.float64)


def model_cdf(model: CDFFlow1D, x: torch.Tensor) -> torch.Tensor:
    params = [p.expand(len(x), -1) for p in (model.cdf.logits, model.cdf.loc, model.cdf.log_scale)]
    return mixture_cdf(x, *params, kind=model.kind)[0]


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_flow_checks(config):
    model = flow(config)
    x = points()
    flows.assert_round_trips(model, x)
    flows.assert_log_terms_match_the_jacobian(model, x)
    flows.assert_gradients_reach_every_parameter(model, x)
    flows.assert_state_dict_round_trip(lambda seed: flow(config, seed), x)
    flows.assert_samples_have_finite_log_prob(model, 100)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_density_integrates_to_one(config):
    model = flow(config)
    log_p = model.log_prob(points())
    assert log_p.max() - log_p.min() > 0.5  # not flat: a real test
    assert abs(flows.grid_integral(model, -30, 30, 6000) - 1) < 0.02


def test_the_density_is_the_mixtures_whatever_the_base():
    uniform = flow(dict(components=3, kind="logistic", base="uniform"))
    normal = CDFFlow1D(3, kind="logistic", base="normal").double()
    normal.load_state_dict(uniform.state_dict())
    x = torch.linspace(-8, 8, 33, dtype=torch.float64)
    z, _ = uniform.transform(x)
    torch.testing.assert_close(z, model_cdf(uniform, x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(normal.transform(x)[0], torch.special.ndtri(z), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(normal.log_prob(x), uniform.log_prob(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_samples_follow_the_models_cdf(config):
    model = flow(config)
    samples = model.sample(4000, generator=torch.Generator().manual_seed(0)).detach()
    u = model_cdf(model, samples).detach()
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    # the model is far from the N(0, 1) the KS test would also accept
    assert stats.kstest(samples.numpy(), "norm").pvalue < 1e-6


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_temperature_zero_gives_the_median_and_scales_the_latent(config):
    model = flow(config)
    median = model.sample(3, temperature=0.0).detach()
    torch.testing.assert_close(model_cdf(model, median), torch.full((3,), 0.5, dtype=torch.float64))
    cold = model.sample(5, generator=torch.Generator().manual_seed(0), temperature=0.5)
    warm = model.sample(5, generator=torch.Generator().manual_seed(0))
    centre = 0.5 if config["base"] == "uniform" else 0.0
    torch.testing.assert_close(model.transform(cold)[0] - centre, (model.transform(warm)[0] - centre) / 2)


def test_training_approaches_the_true_density():
    split = gaussian_mixture_1d(3000)
    truth = -gaussian_mixture_1d_log_prob(split.test).mean().item()  # nats per dimension
    torch.manual_seed(0)
    model = CDFFlow1D(3)
    flows.assert_training_lowers_the_loss(model, split, epochs=15, lr=0.05, by=0.2)
    with torch.no_grad():
        assert model.loss(split.test).item() < truth + 0.02


@pytest.mark.parametrize(
    "config, error, match",
    [
        (dict(components=0), ValueError, "components must be >= 1"),
        (dict(components=2.0), TypeError, "components must be an int"),
        (dict(components=2, kind="normal"), ValueError, "kind must be one of"),
        (dict(components=2, base="gaussian"), ValueError, "base must be one of"),
    ],
)
def test_bad_config_raises(config, error, match):
    with pytest.raises(error, match=f"CDFFlow1D: {match}"):
        CDFFlow1D(**config)


def test_bad_input_raises():
    model = CDFFlow1D(2).double()
    x = points()
    with pytest.raises(ValueError, match=r"x must have shape \(B\)"):
        model.log_prob(x[:, None])
    with pytest.raises(TypeError, match="x must have the model's dtype torch.float64"):
        model.log_prob(x.float())
    with pytest.raises(ValueError, match=r"z must have shape \(B\)"):
        model.inverse(x[:, None])
    with pytest.raises(ValueError, match="takes no cond"):
        model.log_prob(x, x)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="CDFFlow1D: x must be finite"):
            model.log_prob(torch.cat([x, x.new_tensor([bad])]))
        with pytest.raises(ValueError, match="CDFFlow1D: z must be finite"):
            CDFFlow1D(2, base="normal").double().inverse(x.new_tensor([0.0, bad]))
        with pytest.raises(ValueError, match="CDFFlow1D.sample: temperature must be a finite real number >= 0"):
            model.sample(2, temperature=bad)


def test_the_uniform_base_refuses_latents_and_temperatures_outside_the_unit_interval():
    """A uniform z outside [0, 1], or a temperature above 1 that would draw one, has no
    inverse: refused (it was clamped to the ends of the support); T <= 1 keeps the central
    quantiles, so its samples stay within those of T = 1 and concentrate around the median."""
    model = CDFFlow1D(2).double()
    with pytest.raises(ValueError, match=r"CDFFlow1D.inverse: z \(a uniform latent\) must be in \[0, 1\], got values in \[-0.5, 1.5\]"):
        model.inverse(torch.tensor([1.5, -0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="CDFFlow1D.sample: temperature must be <= 1 with base='uniform'"):
        model.sample(4, temperature=3.0)
    edges = model.inverse(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert edges.isfinite().all() and edges[0] < edges[1] < edges[2]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    warm, cold = model.sample(500, generator=g()), model.sample(500, generator=g(), temperature=0.5)
    median = model.sample(1, temperature=0.0)
    assert (cold - median).abs().max() < (warm - median).abs().max()
    cdf_of_cold = model.transform(cold)[0]
    assert cdf_of_cold.min() >= 0.25 - 1e-9 and cdf_of_cold.max() <= 0.75 + 1e-9
