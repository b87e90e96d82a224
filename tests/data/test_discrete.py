"""The low-dimensional discrete sets: their exposed distributions are the documented ones,
and their samples follow them (chi-square tests with fixed seeds)."""

import numpy as np
import pytest
import torch
from scipy import stats

from fastgen.data import mixture_1d, mixture_1d_probs, smiley_2d, smiley_2d_probs


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of observed ``counts`` under ``probs`` (every expected count is >= 5 here)."""
    expected = counts.sum() * probs.flatten()
    assert expected.min() >= 5
    return float(stats.chisquare(counts.flatten().double().numpy(), expected.numpy()).pvalue)


@pytest.mark.parametrize("bins", [2, 7, 100])
def test_mixture_1d_probs_is_the_documented_mixture(bins):
    probs = mixture_1d_probs(bins)
    assert probs.shape == (bins,) and probs.dtype == torch.float64
    # the formula of the docstring, independently with scipy
    edges = np.arange(bins + 1)
    reference = np.full(bins, 0.05 / bins)
    for weight, mean, std in [(0.5, 0.25, 0.06), (0.3, 0.55, 0.04), (0.2, 0.8, 0.08)]:
        mass = np.diff(stats.norm.cdf(edges, loc=mean * bins, scale=std * bins))
        reference += 0.95 * weight * mass / mass.sum()
    torch.testing.assert_close(probs, torch.from_numpy(reference), atol=1e-15, rtol=1e-12)
    assert abs(float(probs.sum()) - 1) < 1e-12 and probs.min() >= 0.05 / bins


def test_mixture_1d_has_three_modes():
    probs = mixture_1d_probs(100)
    is_peak = (probs[1:-1] > probs[:-2]) & (probs[1:-1] >= probs[2:])
    peaks = is_peak.nonzero().squeeze(1) + 1
    # at the means' bins, or the bin below, which shares the mode's mass and gets more tail
    assert len(peaks) == 3 and (peaks - torch.tensor([25, 55, 80])).abs().max() <= 1


def test_mixture_1d_samples_follow_its_distribution():
    split = mixture_1d(50_000, bins=100, seed=7)
    assert split.train.shape == (40_000,) and split.test.shape == (10_000,) and split.train.dtype == torch.long
    assert (split.event_shape, split.categories, split.train_labels) == ((), 100, None)
    draws = torch.cat([split.train, split.test])
    assert draws.min() >= 0 and draws.max() < 100
    counts = torch.bincount(draws, minlength=100)
    probs = mixture_1d_probs(100)
    assert _chi_square_p_value(counts, probs) > 1e-3
    # the test tells the distribution from one shifted by a single bin
    assert _chi_square_p_value(counts, probs.roll(1)) < 1e-9


@pytest.mark.parametrize("size", [8, 32])
def test_smiley_2d_probs_is_a_symmetric_picture_of_three_intensities(size):
    probs = smiley_2d_probs(size)
    assert probs.shape == (size, size) and probs.dtype == torch.float64
    assert abs(float(probs.sum()) - 1) < 1e-12
    assert torch.equal(probs, probs.flip(1))  # the face is left-right symmetric
    # intensities 0.03 (background), 0.15 (inside the face), 1 (outline, eyes, smile)
    levels = probs.unique() / probs.max()
    torch.testing.assert_close(levels, torch.tensor([0.03, 0.15, 1.0], dtype=torch.float64))


def test_smiley_2d_probs_has_the_face_where_documented():
    probs = smiley_2d_probs(32)
    top = probs.max()
    assert probs[0, 0] == probs.min()  # corner: background
    assert probs[16, 16] == top * 0.15  # centre: inside the face
    # cell centres (2 i + 1) / 32 - 1: row 11 is v = -0.28 (the eyes), columns 10 and 21 are u = -+0.34
    assert probs[11, 10] == probs[11, 21] == top
    assert probs[16, 1] == top  # the outline at u = -0.91, v = 0.03
    assert probs[23, 16] == top  # the smile at v = 0.47 below the centre
    assert probs[8, 16] == top * 0.15  # above the centre, no smile


def test_smiley_2d_samples_follow_its_distribution():
    split = smiley_2d(100_000, size=32, seed=11)
    assert split.train.shape == (80_000, 2) and split.test.shape == (20_000, 2) and split.train.dtype == torch.long
    assert (split.event_shape, split.categories, split.train_labels) == ((2,), 32, None)
    draws = torch.cat([split.train, split.test])
    assert draws.min() >= 0 and draws.max() < 32
    counts = torch.bincount(draws[:, 0] * 32 + draws[:, 1], minlength=32 * 32).reshape(32, 32)
    probs = smiley_2d_probs(32)
    assert _chi_square_p_value(counts, probs) > 1e-3
    # row and column are not swapped: the transposed picture is rejected
    assert _chi_square_p_value(counts, probs.T) < 1e-9


def test_discrete_arguments_are_checked():
    with pytest.raises(ValueError, match="bins"):
        mixture_1d_probs(1)
    with pytest.raises(TypeError, match="bins"):
        mixture_1d(100, bins=10.0)
    with pytest.raises(ValueError, match="size"):
        smiley_2d_probs(7)
    with pytest.raises(TypeError, match="size"):
        smiley_2d(100, size="32")
