"""The sampling loop's shared pieces: inverse-CDF categorical sampling, and the checks of
:func:`fastgen.sampling.sample`'s arguments."""

from __future__ import annotations

import pytest
import torch

from fastgen.models import MADE
from fastgen.sampling import sample, sample_categorical


def test_sample_categorical_inverts_the_cdf():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3], dtype=torch.float64)
    logits = probs.log().expand(7, 4)
    u = torch.tensor([0.0, 0.05, 0.1 - 1e-9, 0.1 + 1e-9, 0.69, 0.71, 1 - 1e-16], dtype=torch.float64)
    # category 1 has probability 0 and is never picked, even just past its CDF step
    assert sample_categorical(logits, u).tolist() == [0, 0, 0, 2, 2, 3, 3]


def test_sample_categorical_frequencies():
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0])
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(sample_categorical(logits.expand(len(u), 4), u), minlength=4)
    assert torch.allclose(counts / len(u), torch.softmax(logits, 0), atol=3e-3)


def test_sample_categorical_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"sample_categorical: u must have logits' shape without its last dimension, \(3,\), got \(4,\)"):
        sample_categorical(torch.zeros(3, 5), torch.rand(4))
    with pytest.raises(ValueError, match=r"u must have logits' shape .* \(3,\), got \(3, 1\)"):
        sample_categorical(torch.zeros(3, 5), torch.rand(3, 1))
    with pytest.raises(TypeError, match="sample_categorical: logits .* and u .* must be tensors"):
        sample_categorical(torch.zeros(3, 5), [0.5, 0.5, 0.5])
    # documented, unchecked: a row without a distribution gives the last category
    logits = torch.tensor([[0.0, 1.0, float("nan")], [0.0, 5.0, 0.0]])
    assert sample_categorical(logits, torch.tensor([0.1, 0.5])).tolist() == [2, 1]


@pytest.mark.parametrize("n, error", [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_sample_rejects_a_bad_n(n, error):
    model = MADE(3, hidden=[6], categories=3)
    with pytest.raises(error, match="^sample: n must be"):
        sample(model, n)


def test_sample_rejects_bad_flags_and_draws_n_samples():
    model = MADE(3, hidden=[6], categories=3).double()
    with pytest.raises(TypeError, match="^sample: cache must be a bool"):
        sample(model, 2, cache=1)
    with pytest.raises(TypeError, match="^sample: progress must be a bool"):
        sample(model, 2, progress=None)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    x = sample(model, 4, generator=g(), dtype=torch.float64)
    assert x.shape == (4, 3) and torch.equal(x, model.sample(4, generator=g()))
