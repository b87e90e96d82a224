"""The 1-D continuous density: its draws follow the documented mixture (a KS test against
its CDF), its log-density is normalized, and bad arguments are rejected."""

import pytest
import torch
from scipy import stats

from fastgen.data import gaussian_mixture_1d, gaussian_mixture_1d_log_prob

WEIGHTS, MEANS, STDS = (0.5, 0.3, 0.2), (-1.5, 0.8, 2.0), (0.5, 0.3, 0.8)


def mixture_cdf(x):
    return sum(w * stats.norm.cdf(x, m, s) for w, m, s in zip(WEIGHTS, MEANS, STDS))


def test_draws_follow_the_mixture():
    split = gaussian_mixture_1d(20_000, seed=1)
    assert split.train.shape == (16_000,) and split.test.shape == (4_000,) and split.event_shape == ()
    assert split.train.dtype == torch.float32 and split.categories is None and split.train_labels is None
    draws = torch.cat([split.train, split.test]).double().numpy()
    assert stats.kstest(draws, mixture_cdf).pvalue > 1e-3
    assert stats.kstest(draws, "norm", args=(draws.mean(), draws.std())).pvalue < 1e-6  # not one Gaussian


def test_log_density_is_the_mixtures_and_integrates_to_one():
    x = torch.linspace(-10, 10, 20_001, dtype=torch.float64)
    density = gaussian_mixture_1d_log_prob(x).exp()
    want = sum(w * stats.norm.pdf(x.numpy(), m, s) for w, m, s in zip(WEIGHTS, MEANS, STDS))
    torch.testing.assert_close(density, torch.from_numpy(want), rtol=1e-12, atol=1e-15)
    assert abs(float(density.sum() * 1e-3) - 1) < 1e-9


def test_seed_fixes_the_draws():
    assert torch.equal(gaussian_mixture_1d(100, seed=3).train, gaussian_mixture_1d(100, seed=3).train)
    assert not torch.equal(gaussian_mixture_1d(100, seed=3).train, gaussian_mixture_1d(100, seed=4).train)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n=1), ValueError, "n must be >= 2"),
        (dict(test_fraction=1.0), ValueError, "test_fraction must be"),
        (dict(seed=-1), ValueError, "seed must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=f"gaussian_mixture_1d: {match}"):
        gaussian_mixture_1d(**kwargs)
    with pytest.raises(TypeError, match="gaussian_mixture_1d_log_prob: x must have a floating-point dtype"):
        gaussian_mixture_1d_log_prob(torch.tensor([1, 2]))
