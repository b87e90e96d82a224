"""The 2-D continuous densities: float32 points that lie where each documented density puts
its mass, with the documented spread."""

import math

import pytest
import torch
from scipy import stats

from fastgen.data import checkerboard, gaussian_mixture, rings, two_moons

N = 20_000


def _points(make, seed=0) -> torch.Tensor:
    split = make(N, seed=seed)
    assert split.train.shape == (N * 4 // 5, 2) and split.test.shape == (N // 5, 2)
    assert split.train.dtype == torch.float32 and split.categories is None and split.train_labels is None
    points = torch.cat([split.train, split.test]).double()
    assert points.isfinite().all()
    return points


def test_checkerboard_is_uniform_on_the_black_squares():
    points = _points(checkerboard)
    assert points.min() >= -2 and points.max() < 2
    squares = points.floor()
    assert (squares.sum(dim=1) % 2 == 0).all()
    # the 8 black squares equally often, and uniform inside them
    counts = torch.unique(squares, dim=0, return_counts=True)[1]
    assert len(counts) == 8 and stats.chisquare(counts.numpy()).pvalue > 1e-3
    inside = (points - squares).flatten()
    assert stats.kstest(inside.numpy(), "uniform").pvalue > 1e-3


def test_gaussian_mixture_has_eight_components_of_std_0_2():
    points = _points(gaussian_mixture, seed=1)
    angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = 2 * torch.stack([angle.cos(), angle.sin()], dim=1)
    nearest = torch.cdist(points, means).argmin(dim=1)  # components 10 std apart: no confusion
    assert stats.chisquare(torch.bincount(nearest, minlength=8).numpy()).pvalue > 1e-3
    residuals = (points - means[nearest]).flatten()
    assert stats.kstest(residuals.numpy(), "norm", args=(0, 0.2)).pvalue > 1e-3


def test_rings_have_four_radii_weighted_by_circumference():
    points = _points(rings, seed=2)
    radii = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    radius = points.norm(dim=1)
    ring = (radius[:, None] - radii).abs().argmin(dim=1)
    counts = torch.bincount(ring, minlength=4)
    assert stats.chisquare(counts.numpy(), (N * radii / radii.sum()).numpy()).pvalue > 1e-3
    # noise 0.05 around each ring (radial part of 2-D noise: close to N(0, 0.05^2) at these radii)
    residual = radius - radii[ring]
    assert abs(float(residual.std()) - 0.05) < 0.002 and residual.abs().max() < 0.3
    angles = torch.atan2(points[:, 1], points[:, 0])
    assert stats.kstest(angles.numpy(), "uniform", args=(-math.pi, 2 * math.pi)).pvalue > 1e-3


def _distance_to_arc(points: torch.Tensor, centre: tuple, upper: bool) -> torch.Tensor:
    """Distance of each point to the half circle of radius 1 around ``centre``, the upper
    (``y >= centre``) or the lower half."""
    offset = points - torch.tensor(centre, dtype=points.dtype)
    on_side = offset[:, 1] >= 0 if upper else offset[:, 1] <= 0
    to_circle = (offset.norm(dim=1) - 1).abs()
    to_ends = torch.cdist(offset, torch.tensor([[1.0, 0], [-1, 0]], dtype=points.dtype)).amin(dim=1)
    return torch.where(on_side, to_circle, to_ends)


def test_two_moons_lie_on_their_arcs_with_noise_0_1():
    points = _points(two_moons, seed=3)
    upper = _distance_to_arc(points, (-0.5, -0.25), upper=True)
    lower = _distance_to_arc(points, (0.5, 0.25), upper=False)
    assert torch.minimum(upper, lower).max() < 0.6  # Gaussian noise of std 0.1: 5 std
    # half the points on each moon; centred
    assert abs(int((upper < lower).sum()) - N / 2) < 3 * math.sqrt(N / 4)
    assert points.mean(dim=0).abs().max() < 0.02
    assert points[:, 0].abs().max() < 2.1 and points[:, 1].abs().max() < 1.6


@pytest.mark.parametrize("make", [checkerboard, gaussian_mixture, rings, two_moons])
def test_points_are_float32_whatever_the_default_dtype(make):
    expected = make(100)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = make(100)
    finally:
        torch.set_default_dtype(previous)
    assert got.train.dtype == torch.float32 and torch.equal(got.train, expected.train)
