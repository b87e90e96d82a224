"""The sampling loop's shared pieces: inverse-CDF categorical sampling."""

from __future__ import annotations

import torch

from fastgen.sampling import sample_categorical


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
