"""The mixture models: DiscretizedMixtureOfLogistics (bin masses against a high-precision
reference, stable tails, sampling, SGD) and MixtureOfGaussians (log_prob against
torch.distributions, sample moments, SGD); saving and argument checks of both."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from torch import distributions as D

from fastgen.models import DiscretizedMixtureOfLogistics, MixtureOfGaussians, build
from tests.models.autoregressive import assert_step_rejects_bad_input

# ---------------------------------------------------------------------- discretized logistics


def _dmol(num_bins: int, logits, loc, log_scale) -> DiscretizedMixtureOfLogistics:
    model = DiscretizedMixtureOfLogistics(num_bins, len(loc)).double()
    with torch.no_grad():
        model.mixture_logits.copy_(torch.tensor(logits, dtype=torch.float64))
        model.loc.copy_(torch.tensor(loc, dtype=torch.float64))
        model.log_scale.copy_(torch.tensor(log_scale, dtype=torch.float64))
    return model


def _dmol_reference(num_bins: int, logits, loc, log_scale) -> list[float]:
    """log P(b) of every bin, from the definition, in 60-digit arithmetic."""
    mpmath.mp.dps = 60
    weights = [mpmath.exp(v) for v in logits]
    weights = [w / sum(weights) for w in weights]

    def cdf(edge, k):  # the k-th logistic's CDF, 0 below the first bin and 1 above the last
        if edge < 0:
            return mpmath.mpf(0)
        if edge > num_bins - 1:
            return mpmath.mpf(1)
        s = mpmath.exp(max(log_scale[k], -7.0))
        return 1 / (1 + mpmath.exp(-(mpmath.mpf(edge) - loc[k]) / s))

    return [
        float(mpmath.log(sum(w * (cdf(b + 0.5, k) - cdf(b - 0.5, k)) for k, w in enumerate(weights))))
        for b in range(num_bins)
    ]


DMOL_CASES = {
    "moderate": (10, [0.3, -0.2, 1.0], [2.0, 6.5, 9.3], [0.1, -0.5, 0.7]),
    "far_tails": (8, [0.0], [1000.0], [0.0]),  # bin 0 has mass e^-999.5: naive differences give -inf
    "narrow": (8, [0.0, 2.0], [3.0, -40.0], [-10.0, 3.0]),  # a point mass (log-scale floored at -7)
    "wide": (6, [0.0], [2.5], [12.0]),  # nearly uniform: every bin's mass is a tiny difference
}


@pytest.mark.parametrize("case", DMOL_CASES)
def test_dmol_bin_masses_match_a_high_precision_reference(case):
    num_bins, logits, loc, log_scale = DMOL_CASES[case]
    log_p = _dmol(num_bins, logits, loc, log_scale).bin_log_probs()
    reference = torch.tensor(_dmol_reference(num_bins, logits, loc, log_scale), dtype=torch.float64)
    torch.testing.assert_close(log_p, reference, atol=1e-12, rtol=1e-12)
    # the bin masses of the mixture itself sum to 1 (no renormalization hides an error)
    assert abs(torch.logsumexp(log_p, 0).item()) < 1e-12


@pytest.mark.parametrize("case", DMOL_CASES)
def test_dmol_gradients_are_finite_in_float32(case):
    model = _dmol(*DMOL_CASES[case]).float()
    model.loss(torch.arange(model.num_bins)).backward()
    for p in model.parameters():
        assert torch.isfinite(p.grad).all()


def test_dmol_log_prob_and_steps():
    model = _dmol(*DMOL_CASES["moderate"])
    x = torch.arange(10)
    p = model.log_prob(x).exp()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-14, rtol=0)
    step = torch.log_softmax(model.step(model.init_cache(len(x)), None), -1)
    torch.testing.assert_close(model.log_prob(x), step.gather(1, x[:, None]).squeeze(1), atol=0, rtol=0)
    a = model.sample(1000, generator=torch.Generator().manual_seed(1), cache=True)
    b = model.sample(1000, generator=torch.Generator().manual_seed(1), cache=False)
    assert a.shape == (1000,) and torch.equal(a, b)


def test_dmol_sgd_reaches_the_entropy_of_a_target_mixture():
    target = _dmol(16, [1.0, -0.5], [1.0, 6.0], [-0.5, 1.0]).bin_log_probs().exp().detach().float()
    entropy = -(target * target.log()).sum().item()
    model = DiscretizedMixtureOfLogistics(16, 2)  # starts 0.97 nats above the entropy
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(150):
        opt.zero_grad()
        cross_entropy = -(target * model.log_prob(torch.arange(16))).sum()  # the loss on infinite data
        cross_entropy.backward()
        opt.step()
    assert cross_entropy.item() < entropy + 1e-3


def test_dmol_state_dict_round_trip():
    model = _dmol(*DMOL_CASES["moderate"])
    fresh = build("discretized_mixture_of_logistics", num_bins=10, components=3).double()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.log_prob(torch.arange(10)), model.log_prob(torch.arange(10)))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(fresh.sample(100, generator=g()), model.sample(100, generator=g()))


def test_dmol_bad_arguments():
    with pytest.raises(ValueError, match="num_bins must be >= 2"):
        DiscretizedMixtureOfLogistics(1, 2)
    with pytest.raises(ValueError, match="components must be >= 1"):
        DiscretizedMixtureOfLogistics(8, 0)
    with pytest.raises(TypeError, match="components"):
        DiscretizedMixtureOfLogistics(8, 2.0)
    model = DiscretizedMixtureOfLogistics(8, 2)
    with pytest.raises(ValueError, match=r"values in \[0, 8\)"):
        model.log_prob(torch.tensor([8]))
    with pytest.raises(TypeError, match="integer dtype"):
        model.log_prob(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(torch.tensor([[1]]))
    with pytest.raises(ValueError, match=r"DiscretizedMixtureOfLogistics: x must have values in \[0, 8\)"):
        model.logits(torch.tensor([8]))
    assert model.log_prob(torch.zeros(0, dtype=torch.long)).shape == (0,)
    assert_step_rejects_bad_input(model, "cache must be a StepCache")


# ------------------------------------------------------------------------ Gaussian mixture


def _mog(dim: int = 3, components: int = 4, seed: int = 0) -> MixtureOfGaussians:
    g = torch.Generator().manual_seed(seed)
    model = MixtureOfGaussians(dim, components).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    return model


def _mog_reference(model: MixtureOfGaussians) -> D.Distribution:
    components = D.MultivariateNormal(model.loc, scale_tril=model.scale_tril())
    return D.MixtureSameFamily(D.Categorical(logits=model.mixture_logits), components)


def test_mog_log_prob_matches_torch_distributions():
    model = _mog()
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x), _mog_reference(model).log_prob(x), atol=1e-12, rtol=1e-12)
    # the covariance is L L^T with L lower triangular, its diagonal positive
    scale_tril = model.scale_tril().detach()
    assert torch.equal(scale_tril, scale_tril.tril()) and (scale_tril.diagonal(dim1=1, dim2=2) > 0).all()


def test_mog_one_dimension_integrates_to_one():
    model = _mog(dim=1, components=3)
    grid = torch.linspace(-30, 30, 200_001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        total = torch.trapezoid(model.log_prob(grid).exp(), grid[:, 0])
    assert abs(total.item() - 1) < 1e-9


def test_mog_sample_moments():
    model = _mog(dim=2, components=3, seed=2)
    n = 20_000
    x = model.sample(n, generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, 2) and x.dtype == torch.float64
    with torch.no_grad():
        ref = _mog_reference(model)
        w = ref.mixture_distribution.probs
        mean = (w[:, None] * model.loc).sum(0)
        outer = model.loc[:, :, None] * model.loc[:, None, :]
        second = (w[:, None, None] * (ref.component_distribution.covariance_matrix + outer)).sum(0)
        cov = second - mean[:, None] * mean[None, :]
    # the sample mean is within 4 standard errors, the covariance within 5%
    torch.testing.assert_close(x.mean(0), mean, atol=4 * cov.diagonal().max().sqrt().item() / math.sqrt(n), rtol=0)
    torch.testing.assert_close(x.T.cov(), cov, atol=0.05 * cov.abs().max().item(), rtol=0)
    assert torch.equal(model.sample(n, generator=torch.Generator().manual_seed(0)), x)  # determined by the generator


def test_mog_sgd_reaches_the_maximum_likelihood():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 2, generator=g) @ torch.tensor([[1.0, 0.8], [0.0, 0.5]]) + torch.tensor([2.0, -1.0])
    mean, cov = x.mean(0), torch.cov(x.T, correction=0)
    optimum = -D.MultivariateNormal(mean, cov).log_prob(x).mean().item() / 2  # the Gaussian MLE, nats/dim
    torch.manual_seed(0)
    model = MixtureOfGaussians(dim=2, components=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(100):
        opt.zero_grad()
        model.loss(x).backward()
        opt.step()
    assert optimum - 1e-5 <= model.loss(x).item() < optimum + 1e-3


def test_mog_state_dict_round_trip():
    model = _mog()
    fresh = build("mixture_of_gaussians", dim=3, components=4).double()
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(20, 3, dtype=torch.float64)
    assert torch.equal(fresh.log_prob(x), model.log_prob(x))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(fresh.sample(100, generator=g()), model.sample(100, generator=g()))


def test_mog_bad_arguments():
    with pytest.raises(ValueError, match="dim must be >= 1"):
        MixtureOfGaussians(0, 2)
    with pytest.raises(TypeError, match="components"):
        MixtureOfGaussians(2, "3")
    model = MixtureOfGaussians(2, 3)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        model.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(torch.zeros(4))
    with pytest.raises(TypeError, match="floating-point"):
        model.log_prob(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="dtype torch.float64"):
        model.log_prob(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="takes no cond"):
        model.sample(3, cond=torch.zeros(3))
    with pytest.raises(ValueError, match="n must be a positive int"):
        model.sample(-1)
    for bad in (float("nan"), float("inf")):
        x = torch.zeros(4, 2)
        x[2, 1] = bad
        with pytest.raises(ValueError, match="MixtureOfGaussians: x must be finite"):
            model.log_prob(x)
