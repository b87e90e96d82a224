"""Histogram: exact probabilities, maximum likelihood by counting, sampling frequencies,
SGD training, saving and argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from fastgen.models import Histogram, build
from tests.models.autoregressive import assert_step_rejects_bad_input


def _model(num_bins: int = 6, seed: int = 0) -> Histogram:
    model = Histogram(num_bins).double()
    with torch.no_grad():
        model.bin_logits.copy_(torch.randn(num_bins, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return model


def test_probabilities_sum_to_one_and_match_the_softmax():
    model = _model()
    p = model.log_prob(torch.arange(6)).exp()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-14, rtol=0)
    torch.testing.assert_close(p, torch.softmax(model.bin_logits, 0), atol=1e-15, rtol=0)
    torch.testing.assert_close(model.probs(), p, atol=1e-15, rtol=0)


def test_log_prob_equals_the_step_conditional():
    model = _model()
    x = torch.tensor([0, 5, 2, 2, 3])
    step = torch.log_softmax(model.step(model.init_cache(len(x)), None), -1)
    torch.testing.assert_close(model.log_prob(x), step.gather(1, x[:, None]).squeeze(1), atol=0, rtol=0)


def test_fit_counts_is_the_exact_mle():
    x = torch.tensor([0, 1, 1, 3, 3, 3, 4, 1])  # counts 1, 3, 0, 3, 1 over 5 bins
    model = Histogram(5).double().fit_counts(x)
    expected = torch.tensor([1, 3, 0, 3, 1], dtype=torch.float64) / 8
    torch.testing.assert_close(model.probs(), expected, atol=1e-15, rtol=0)
    assert model.log_prob(torch.tensor([2])).item() == -math.inf  # never seen: probability 0
    # the MLE maximizes the likelihood: the mean log-likelihood is minus the empirical entropy
    entropy = -(expected[expected > 0] * expected[expected > 0].log()).sum()
    torch.testing.assert_close(model.log_prob(x).mean(), -entropy, atol=1e-14, rtol=0)


def test_fit_counts_with_smoothing():
    x = torch.tensor([0, 1, 1, 3])
    model = Histogram(4).double().fit_counts(x, smoothing=0.5)
    expected = (torch.tensor([1, 2, 0, 1], dtype=torch.float64) + 0.5) / (4 + 4 * 0.5)
    torch.testing.assert_close(model.probs(), expected, atol=1e-15, rtol=0)


def test_sample_frequencies_chi_square():
    model = _model(num_bins=8, seed=1)
    n = 20_000
    x = model.sample(n, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(x, minlength=8).double()
    expected = model.probs().detach() * n
    assert expected.min() > 5  # the chi-square approximation holds
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


def test_cached_and_naive_sampling_agree():
    model = _model()
    a = model.sample(500, generator=torch.Generator().manual_seed(3), cache=True)
    b = model.sample(500, generator=torch.Generator().manual_seed(3), cache=False)
    assert a.shape == (500,) and a.dtype == torch.long
    assert torch.equal(a, b)


def test_sgd_reaches_the_empirical_entropy():
    torch.manual_seed(0)
    target = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])
    x = torch.multinomial(target, 4000, replacement=True)
    empirical = torch.bincount(x, minlength=5) / len(x)
    entropy = -(empirical * empirical.log()).sum()
    model = Histogram(5)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        loss = model.loss(x)
        loss.backward()
        opt.step()
    assert model.loss(x).item() < entropy.item() + 1e-3


def test_state_dict_round_trip():
    model = _model()
    fresh = build("histogram", num_bins=6).double()
    fresh.load_state_dict(model.state_dict())
    x = torch.arange(6)
    assert torch.equal(fresh.log_prob(x), model.log_prob(x))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(fresh.sample(100, generator=g()), model.sample(100, generator=g()))


@pytest.mark.parametrize("num_bins, error", [(1, ValueError), (0, ValueError), (4.0, TypeError), (True, TypeError)])
def test_bad_constructor_arguments(num_bins, error):
    with pytest.raises(error, match="num_bins"):
        Histogram(num_bins)


def test_bad_data():
    model = Histogram(4)
    with pytest.raises(TypeError, match="integer dtype"):
        model.log_prob(torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"values in \[0, 4\)"):
        model.log_prob(torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"values in \[0, 4\)"):
        model.fit_counts(torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="at least one example"):
        model.fit_counts(torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="takes no cond"):
        model.log_prob(torch.tensor([1]), cond=torch.tensor([0]))
    with pytest.raises(ValueError, match="n must be a positive int"):
        model.sample(0)
    for smoothing, error in ((-1.0, ValueError), (math.nan, ValueError), ("1", TypeError), (True, TypeError)):
        with pytest.raises(error, match="smoothing"):
            model.fit_counts(torch.tensor([1]), smoothing=smoothing)


def test_bad_step():
    assert_step_rejects_bad_input(_model(), "cache must be a StepCache")


def test_logits_check_the_data_and_an_empty_batch_is_empty():
    model = _model()
    with pytest.raises(ValueError, match=r"Histogram: x must have values in \[0, 6\)"):
        model.logits(torch.tensor([99]))
    with pytest.raises(ValueError, match="Histogram: this model takes no cond"):
        model.logits(torch.tensor([1]), torch.tensor([0]))
    empty = model.log_prob(torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,)
    torch.testing.assert_close(model.log_prob(torch.tensor([2, 5])), model.probs()[[2, 5]].log())
