"""The alarm data set: deterministic for a seed, shapes and values as documented, and
distributed as the lecture's network."""

from __future__ import annotations

import math

import pytest
import torch

from fastgen.data import DataSplit, alarm
from fastgen.models import BayesNet


def test_shapes_values_and_split():
    data = alarm(1000, test_fraction=0.25, seed=3)
    assert isinstance(data, DataSplit) and data.name == "alarm"
    assert data.train.shape == (750, 5) and data.test.shape == (250, 5) and data.event_shape == (5,)
    assert data.train.dtype == data.test.dtype == torch.long
    assert data.categories == 2 and data.num_classes is None and data.train_labels is None
    both = torch.cat([data.train, data.test])
    assert both.min() == 0 and both.max() == 1


def test_deterministic_for_a_seed():
    a, b, c = alarm(500, seed=7), alarm(500, seed=7), alarm(500, seed=8)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)


def test_distributed_as_the_network():
    """The frequency of every variable being true is within 4 binomial standard errors of its
    marginal probability under the net (computed by enumerating the 32 states)."""
    x = alarm(20_000, seed=0)
    x = torch.cat([x.train, x.test])
    net = BayesNet.alarm().double()
    states = torch.tensor([[(s >> (4 - d)) & 1 for d in range(5)] for s in range(32)])
    p_states = net.log_prob(states).exp().detach()
    for d, name in enumerate(net.names):
        p = (p_states * states[:, d]).sum().item()
        se = math.sqrt(p * (1 - p) / len(x))
        assert abs(x[:, d].double().mean().item() - p) <= 4 * se, name
    # the alarm's causes: every burglary (0.1%) nearly always rings the alarm (94-95%)
    burglary = x[:, 0] == 1
    assert 0 < burglary.sum() < 60 and x[burglary, 2].double().mean() > 0.8


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n=1), ValueError, "n must be >= 2"),
        (dict(n=10.0), TypeError, "n must be an int"),
        (dict(n=10, seed=-1), ValueError, "seed must be >= 0"),
        (dict(n=10, test_fraction=0.0), ValueError, r"test_fraction must be a finite real number > 0 and < 1"),
        (dict(n=10, test_fraction=1.0), ValueError, r"test_fraction must be a finite real number > 0 and < 1"),
        (dict(n=10, test_fraction="0.2"), TypeError, "test_fraction must be a real number"),
        (dict(n=10, test_fraction=0.01), ValueError, "leaves an empty train or test set"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        alarm(**kwargs)
