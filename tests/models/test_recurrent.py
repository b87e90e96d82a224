"""RecurrentAR: exact probabilities on a tiny space, causality, the cached steps against the
full forward, cached against naive sampling, SGD, saving and argument checks."""

from __future__ import annotations

import itertools

import pytest
import torch

from fastgen.models import RecurrentAR, build
from tests.models.autoregressive import (
    assert_cached_equals_naive,
    assert_normalized,
    assert_step_equals_full,
    assert_step_rejects_bad_input,
)


def _model(num_classes: int | None = None, num_layers: int = 2) -> RecurrentAR:
    torch.manual_seed(0)
    return RecurrentAR(dim=4, categories=3, hidden=8, num_layers=num_layers, num_classes=num_classes).double()


def _all_states() -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(3), repeat=4)))  # (81, 4)


@pytest.mark.parametrize("num_classes", [None, 5])
def test_probabilities_sum_to_one(num_classes):
    model = _model(num_classes)
    for label in [None] if num_classes is None else [0, 4]:
        assert_normalized(model, None if label is None else torch.tensor([label]))


def test_labels_change_the_distribution():
    model, x = _model(num_classes=5), _all_states()
    a, b = (model.log_prob(x, torch.full((len(x),), c)) for c in (1, 2))
    assert (a - b).abs().max() > 1e-3


def test_logits_are_causal():
    model = _model()
    x = _all_states()[::7]
    for t in range(4):
        changed = x.clone()
        changed[:, t:] = (changed[:, t:] + 1) % 3
        # dimension t's conditional depends only on x_<t
        torch.testing.assert_close(model.logits(changed)[:, : t + 1], model.logits(x)[:, : t + 1], atol=0, rtol=0)
        if t < 3:  # and the later ones do depend on x_t
            assert (model.logits(changed)[:, t + 1] - model.logits(x)[:, t + 1]).abs().min() > 0


@pytest.mark.parametrize("num_classes", [None, 5])
def test_steps_equal_the_full_forward_and_log_prob(num_classes):
    model, x = _model(num_classes), _all_states()
    cond = None if num_classes is None else torch.arange(len(x)) % num_classes
    full = model.logits(x, cond)
    cache, prev, total = model.init_cache(len(x), cond), None, torch.zeros(len(x), dtype=torch.float64)
    for t in range(4):
        logits = model.step(cache, prev)
        torch.testing.assert_close(logits, full[:, t], atol=1e-13, rtol=0)
        total += torch.log_softmax(logits, -1).gather(1, x[:, t : t + 1]).squeeze(1)
        prev = x[:, t]
    assert cache.h.shape == cache.c.shape == (2, len(x), 8)
    torch.testing.assert_close(model.log_prob(x, cond), total, atol=1e-13, rtol=0)


@pytest.mark.parametrize("num_classes", [None, 5])
def test_cached_and_naive_sampling_agree(num_classes):
    model = _model(num_classes)
    cond = None if num_classes is None else torch.arange(300) % num_classes
    assert_cached_equals_naive(model, 300, cond, seed=3)
    a = model.sample(300, cond, generator=torch.Generator().manual_seed(3))
    assert a.dtype == torch.long and len(torch.unique(a, dim=0)) > 20  # the samples vary


def test_sgd_reaches_the_entropy_of_a_markov_chain():
    # x_1 uniform over 3 values; x_{t+1} = x_t with probability 0.8, else one of the others
    x = _all_states()
    stay = (x[:, 1:] == x[:, :-1]).sum(1)
    p = (1 / 3) * 0.8**stay * 0.1 ** (3 - stay)
    entropy = -(p * p.log()).sum().item()
    torch.manual_seed(0)
    model = RecurrentAR(dim=4, categories=3, hidden=16)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)  # starts 1.36 nats above the entropy
    for _ in range(60):
        opt.zero_grad()
        cross_entropy = -(p * model.log_prob(x)).sum()  # the loss on infinite data
        cross_entropy.backward()
        opt.step()
    assert cross_entropy.item() < entropy + 2e-3


def test_state_dict_round_trip():
    model = _model(num_classes=5)
    fresh = build("rnn", dim=4, categories=3, hidden=8, num_layers=2, num_classes=5).double()
    fresh.load_state_dict(model.state_dict())
    x, cond = _all_states(), torch.arange(81) % 5
    assert torch.equal(fresh.log_prob(x, cond), model.log_prob(x, cond))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(fresh.sample(81, cond, generator=g()), model.sample(81, cond, generator=g()))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(dim=0, categories=3, hidden=8), ValueError, "dim must be >= 1"),
        (dict(dim=4, categories=1, hidden=8), ValueError, "categories must be >= 2"),
        (dict(dim=4, categories=3, hidden=0), ValueError, "hidden must be >= 1"),
        (dict(dim=4, categories=3, hidden=8, num_layers=0), ValueError, "num_layers must be >= 1"),
        (dict(dim=4, categories=3, hidden=8, num_classes=0), ValueError, "num_classes must be >= 1"),
        (dict(dim=4, categories=3.0, hidden=8), TypeError, "categories must be an int"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        RecurrentAR(**kwargs)


def test_bad_data_and_cond():
    plain, labelled = _model(), _model(num_classes=5)
    x = _all_states()[:3]
    with pytest.raises(ValueError, match=r"shape \(B, 4\)"):
        plain.log_prob(x[:, :3])
    with pytest.raises(ValueError, match=r"values in \[0, 3\)"):
        plain.log_prob(x + 1)
    with pytest.raises(TypeError, match="integer dtype"):
        plain.log_prob(x.double())
    with pytest.raises(ValueError, match="takes no cond"):
        plain.log_prob(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="cond must be a tensor"):
        labelled.log_prob(x)
    with pytest.raises(ValueError, match=r"cond must have shape \(3,\)"):
        labelled.log_prob(x, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(TypeError, match=r"cond \(class labels\) must have an integer dtype"):
        labelled.log_prob(x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"cond \(class labels\) must have values in \[0, 5\)"):
        labelled.sample(2, torch.tensor([0, 5]))


def test_bad_step():
    assert_step_rejects_bad_input(_model(), "cache must be a RecurrentCache")


def test_the_start_token_and_floats_are_not_data():
    """Value ``categories`` is the start input's embedding row: never accepted as data, nor
    floats truncated to integers; labels must match the batch of ``init_cache``."""
    plain, labelled = _model(), _model(num_classes=2)
    x = _all_states()[:3]
    with pytest.raises(ValueError, match=r"RecurrentAR: x must have values in \[0, 3\)"):
        plain.logits(torch.full((1, 4), 3))
    with pytest.raises(TypeError, match="RecurrentAR: x must have an integer dtype"):
        plain.logits(torch.full((1, 4), 0.7))
    with pytest.raises(ValueError, match=r"RecurrentAR: x must have shape \(B, 4\)"):
        plain.logits(x[0])
    with pytest.raises(ValueError, match="RecurrentAR: this model takes no cond"):
        plain.logits(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"RecurrentAR: cond must have shape \(3,\)"):
        labelled.init_cache(3, torch.tensor([1]))
    with pytest.raises(ValueError, match="RecurrentAR: this model takes no cond"):
        plain.init_cache(2, torch.tensor([0, 1]))
    cache = plain.init_cache(1)
    plain.step(cache, None)
    with pytest.raises(ValueError, match=r"RecurrentAR.step: x_prev must have values in \[0, 3\)"):
        plain.step(cache, torch.tensor([3]))
    labels = torch.tensor([1, 0, 1])
    assert_step_equals_full(labelled, x, labels)  # the checks change nothing for good input
