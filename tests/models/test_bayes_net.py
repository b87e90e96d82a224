"""BayesNet: the alarm network's exact probabilities, ancestral sampling in topological order,
fitting the CPTs by counting, SGD, saving and argument checks."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from fastgen.data import alarm
from fastgen.models import BayesNet, build
from tests.models.autoregressive import assert_step_rejects_bad_input

# A net whose numbering is not topological (0 <- 2, 1 <- 0, 2) and whose variables have
# different cardinalities: 3 * 2 * 4 = 24 states.
PARENTS = [[2], [0, 2], []]
CARDS = [3, 2, 4]


def _random_net(seed: int = 0) -> BayesNet:
    g = torch.Generator().manual_seed(seed)
    net = BayesNet(PARENTS, CARDS).double()
    # random CPT rows kept away from 0: every state likely enough for the chi-square test
    cpts = [0.2 + torch.rand(t.shape, dtype=torch.float64, generator=g) for t in net.cpt_logits]
    return BayesNet(PARENTS, CARDS, [c / c.sum(-1, keepdim=True) for c in cpts]).double()


def _all_states(cards) -> torch.Tensor:
    return torch.tensor(list(itertools.product(*(range(c) for c in cards))))


def _alarm_reference(b, e, a, j, m) -> float:
    """P(b, e, a, j, m) written out from the lecture's tables."""

    def bern(p, v):
        return p if v else 1 - p

    p_a = {(1, 1): 0.95, (1, 0): 0.94, (0, 1): 0.29, (0, 0): 0.001}[(b, e)]
    return bern(0.001, b) * bern(0.002, e) * bern(p_a, a) * bern(0.90 if a else 0.05, j) * bern(0.70 if a else 0.01, m)


def test_alarm_network():
    net = BayesNet.alarm().double()
    assert net.names == ("Burglary", "Earthquake", "Alarm", "JohnCalls", "MaryCalls")
    assert net.parents == ((), (), (0, 1), (2,), (2,))
    cpts = net.cpts()
    assert cpts[2].shape == (2, 2, 2)
    torch.testing.assert_close(cpts[2][1, 0, 1], torch.tensor(0.94, dtype=torch.float64))  # P(A | B, not E)
    x = _all_states([2] * 5)
    p = net.log_prob(x).exp()
    reference = torch.tensor([_alarm_reference(*s) for s in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(p, reference, atol=0, rtol=1e-6)  # the CPTs were rounded to float32 logits
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-14, rtol=0)


def test_probabilities_sum_to_one_on_a_mixed_cardinality_net():
    net = _random_net()
    assert net.generation_order() == [2, 0, 1] and net.categories == 4
    p = net.log_prob(_all_states(CARDS)).exp()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-14, rtol=0)
    # p(x) is the product of the CPT entries
    cpts = net.cpts()
    x0, x1, x2 = 2, 1, 3
    expected = cpts[0][x2, x0] * cpts[1][x0, x2, x1] * cpts[2][x2]
    torch.testing.assert_close(net.log_prob(torch.tensor([[x0, x1, x2]])).exp()[0], expected, atol=0, rtol=1e-14)


def test_log_prob_equals_the_product_of_step_conditionals():
    net = _random_net()
    x = _all_states(CARDS)
    cache, prev, total = net.init_cache(len(x)), None, torch.zeros(len(x), dtype=torch.float64)
    for d in net.generation_order():
        logits = net.step(cache, prev)
        assert logits.shape == (len(x), 4)
        total += torch.log_softmax(logits, -1).gather(1, x[:, d : d + 1]).squeeze(1)
        prev = x[:, d]
    torch.testing.assert_close(net.log_prob(x), total, atol=1e-14, rtol=0)


def test_impossible_values_get_no_probability():
    logits = _random_net().logits(_all_states(CARDS))  # (24, 3, 4)
    assert torch.isinf(logits[:, 0, 3]).all() and torch.isinf(logits[:, 1, 2:]).all()
    assert torch.isfinite(logits[:, 2]).all()


def _pooled_chi_square(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """p-value of the chi-square test, the cells expected fewer than 5 times pooled into one."""
    small = expected < 5
    f_obs, f_exp = counts[~small], expected[~small]
    if small.any():
        f_obs = torch.cat([f_obs, counts[small].sum(0, keepdim=True)])
        f_exp = torch.cat([f_exp, expected[small].sum(0, keepdim=True)])
    return chisquare(f_obs.numpy(), f_exp.numpy()).pvalue


@pytest.mark.parametrize("which", ["mixed", "alarm"])
def test_sample_frequencies_chi_square(which):
    net = _random_net(seed=1) if which == "mixed" else BayesNet.alarm().double()
    cards = CARDS if which == "mixed" else [2] * 5
    n = 20_000
    x = net.sample(n, generator=torch.Generator().manual_seed(0))
    flat = torch.zeros(n, dtype=torch.long)
    for d, c in enumerate(cards):
        flat = flat * c + x[:, d]
    counts = torch.bincount(flat, minlength=math.prod(cards)).double()
    expected = net.log_prob(_all_states(cards)).exp().detach() * n
    assert _pooled_chi_square(counts, expected) > 1e-3


def test_cached_and_naive_sampling_agree():
    net = _random_net()
    a = net.sample(2000, generator=torch.Generator().manual_seed(3), cache=True)
    b = net.sample(2000, generator=torch.Generator().manual_seed(3), cache=False)
    assert a.shape == (2000, 3) and torch.equal(a, b)
    for d, c in enumerate(CARDS):
        assert a[:, d].max() == c - 1  # every value occurs, none beyond the cardinality


def test_fit_counts_is_the_exact_mle():
    x = _random_net().sample(300, generator=torch.Generator().manual_seed(4))
    net = BayesNet(PARENTS, CARDS).double().fit_counts(x, smoothing=0.5)
    rows = x.tolist()
    for i, (pa, card) in enumerate(zip(PARENTS, CARDS)):
        counts = Counter((tuple(r[j] for j in pa), r[i]) for r in rows)
        for u in itertools.product(*(range(CARDS[j]) for j in pa)):
            total = sum(counts[(u, v)] for v in range(card))
            expected = [(counts[(u, v)] + 0.5) / (total + 0.5 * card) for v in range(card)]
            expected = torch.tensor(expected, dtype=torch.float64)
            torch.testing.assert_close(net.cpts()[i][u], expected, atol=1e-15, rtol=0)


def test_fit_counts_unseen_parent_configuration_is_uniform():
    x = torch.tensor([[0, 0], [0, 1], [0, 1]])
    net = BayesNet([[], [0]], [2, 3]).double().fit_counts(x)
    torch.testing.assert_close(net.cpts()[1], torch.tensor([[1 / 3, 2 / 3, 0], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64))
    torch.testing.assert_close(net.cpts()[0], torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_fit_counts_on_alarm_samples_recovers_the_cpts():
    """Rows seen at least 2,000 times are within 0.01 of the truth. P(Burglary) = 0.001 and
    P(Earthquake) = 0.002 leave the other parent configurations (an alarm, a burglary, an
    earthquake) with a few dozen to a hundred examples of 50,000, or none: those rows are
    within 4 binomial standard errors sqrt(p(1-p)/n) of the truth, and an unseen one is
    uniform."""
    x = alarm(62_500, seed=0).train  # 50,000 train examples
    truth = BayesNet.alarm().double()
    fitted = BayesNet([[], [], [0, 1], [2], [2]], [2] * 5).double().fit_counts(x)
    frequent = 0
    for i, (pa, true_cpt, fit_cpt) in enumerate(zip(truth.parents, truth.cpts(), fitted.cpts())):
        for u in itertools.product(*([0, 1] for _ in pa)):
            n = int((x[:, list(pa)] == torch.tensor(u)).all(1).sum()) if pa else len(x)
            p, p_hat = true_cpt[u][1].item(), fit_cpt[u][1].item()
            if n >= 2000:
                frequent += 1
                assert abs(p_hat - p) <= 0.01, (truth.names[i], u, n, p, p_hat)
            elif n > 0:
                assert abs(p_hat - p) <= 4 * math.sqrt(p * (1 - p) / n), (truth.names[i], u, n, p, p_hat)
            else:
                assert p_hat == 0.5
    assert frequent == 5  # Burglary, Earthquake, Alarm | (no B, no E), JohnCalls | no A, MaryCalls | no A


def test_sgd_reaches_the_maximum_likelihood():
    x = _random_net().sample(1000, generator=torch.Generator().manual_seed(5))
    optimum = BayesNet(PARENTS, CARDS).fit_counts(x).loss(x).item()  # the MLE minimizes the loss
    torch.manual_seed(0)
    net = BayesNet(PARENTS, CARDS)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    for _ in range(100):
        opt.zero_grad()
        net.loss(x).backward()
        opt.step()
    assert optimum - 1e-6 <= net.loss(x).item() < optimum + 1e-4


def test_state_dict_round_trip():
    net = _random_net()
    fresh = build("bayes_net", parents=PARENTS, cardinalities=CARDS).double()
    fresh.load_state_dict(net.state_dict())
    x = _all_states(CARDS)
    assert torch.equal(fresh.log_prob(x), net.log_prob(x))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(fresh.sample(100, generator=g()), net.sample(100, generator=g()))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(parents=[[1], [0]], cardinalities=[2, 2]), ValueError, "cycle among variables \\[0, 1\\]"),
        (dict(parents=[[0]], cardinalities=[2]), ValueError, "other variables"),
        (dict(parents=[[], [2]], cardinalities=[2, 2]), ValueError, "other variables"),
        (dict(parents=[[], [0, 0]], cardinalities=[2, 2]), ValueError, "twice"),
        (dict(parents=[[], 0], cardinalities=[2, 2]), TypeError, "parents\\[1\\]"),
        (dict(parents=[[]], cardinalities=[2, 2]), ValueError, "parents must be a sequence of 2"),
        (dict(parents=[[]], cardinalities=[1]), ValueError, "cardinalities\\[0\\] must be >= 2"),
        (dict(parents=[[]], cardinalities=[2.0]), TypeError, "cardinalities\\[0\\]"),
        (dict(parents=[], cardinalities=[]), ValueError, "non-empty"),
        (dict(parents=[[]], cardinalities=[2], names=["a", "b"]), ValueError, "names"),
        (dict(parents=[[]], cardinalities=[2], cpts=[torch.tensor([0.5, 0.5, 0.0])]), ValueError, "shape \\(2,\\)"),
        (dict(parents=[[]], cardinalities=[2], cpts=[torch.tensor([0.7, 0.7])]), ValueError, "sum to 1"),
        (dict(parents=[[]], cardinalities=[2], cpts=[torch.tensor([1.5, -0.5])]), ValueError, ">= 0"),
        (dict(parents=[[]], cardinalities=[2], cpts=[torch.tensor([1, 0])]), TypeError, "floating-point"),
        (dict(parents=[[]], cardinalities=[2], cpts=[]), ValueError, "sequence of 1 tables"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        BayesNet(**kwargs)


def test_bad_data():
    net = _random_net()
    with pytest.raises(ValueError, match=r"x\[:, 1\] \(x1\) must have values in \[0, 2\)"):
        net.log_prob(torch.tensor([[0, 2, 0]]))
    with pytest.raises(ValueError, match=r"x\[:, 0\] \(x0\) must have values in \[0, 3\)"):
        net.fit_counts(torch.tensor([[3, 0, 0]]))
    with pytest.raises(ValueError, match=r"values in \[0, 4\)"):
        net.log_prob(torch.tensor([[0, 0, 4]]))
    with pytest.raises(ValueError, match="shape"):
        net.log_prob(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer dtype"):
        net.log_prob(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at least one example"):
        net.fit_counts(torch.zeros(0, 3, dtype=torch.long))


def test_bad_step():
    assert_step_rejects_bad_input(_random_net(), "cache must be a BayesNetCache")


def test_step_and_logits_check_each_variable_s_cardinality():
    net = _random_net()  # generation order 2 (4 values), 0 (3 values), 1 (2 values)
    assert net.generation_order() == [2, 0, 1]
    with pytest.raises(ValueError, match=r"BayesNet: x\[:, 0\] \(x0\) must have values in \[0, 3\), got 3"):
        net.logits(torch.tensor([[3, 0, 0]]))
    cache = net.init_cache(1)
    net.step(cache, None)
    with pytest.raises(ValueError, match=r"BayesNet.step: x_prev must have values in \[0, 4\), got values in \[-1, -1\]"):
        net.step(cache, torch.tensor([-1]))  # would wrap to the last CPT row
    net.step(cache, torch.tensor([3]))
    with pytest.raises(ValueError, match=r"BayesNet.step: x_prev must have values in \[0, 3\), got values in \[3, 3\]"):
        net.step(cache, torch.tensor([3]))  # x0 has 3 values, fewer than the net's 4 categories
    logits = net.step(cache, torch.tensor([2]))
    torch.testing.assert_close(logits, net.logits(torch.tensor([[2, 0, 3]]))[:, 1])
    with pytest.raises(ValueError, match="BayesNet.step: all 3 dimensions were already generated"):
        net.step(cache, torch.tensor([1]))
