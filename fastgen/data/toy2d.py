r"""Two-dimensional continuous toy densities for normalizing flows (the usual suspects of
RealNVP, FFJORD and Neural Spline Flows demos): two moons, concentric rings, a checkerboard
and a ring of Gaussians. Each returns ``(N, 2)`` float32 points, no labels,
``categories=None``, and lies roughly within ``[-4, 4]^2``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..ops._checks import check_int, check_real
from ._split import make_split, seeded_generator
from .base import DataSplit

__all__ = ["checkerboard", "gaussian_mixture", "rings", "two_moons"]

_MOONS_NOISE = 0.1
_RINGS_RADII = (0.5, 1.0, 1.5, 2.0)
_RINGS_NOISE = 0.05
_MIXTURE_RADIUS = 2.0
_MIXTURE_COMPONENTS = 8
_MIXTURE_STD = 0.2
_CHECKERBOARD_STEPS = 2**22


def _points(
    op: str, n: object, test_fraction: object, seed: object, draw: Callable[[int, torch.Generator], torch.Tensor]
) -> DataSplit:
    """``draw(n, generator) -> (n, 2)`` float32 points, checked arguments, split."""
    n = check_int(op, "n", n, minimum=2)
    test_fraction = check_real(op, "test_fraction", test_fraction, above=0, below=1)
    generator = seeded_generator(op, seed)
    points = draw(n, generator)
    return make_split(op, op, points, None, test_fraction=test_fraction, generator=generator, categories=None)


def two_moons(n: int = 10000, *, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    r"""Two interleaved half circles of radius 1 plus Gaussian noise of standard deviation
    0.1, centred: half the points (at random) on :math:`(\cos t - 0.5, \sin t - 0.25)` and half
    on :math:`(0.5 - \cos t, 0.25 - \sin t)`, :math:`t \sim U[0, \pi]`. Within about
    :math:`[-2, 2] \times [-1.5, 1.5]`.

    Args:
        n: number of points in all (train and test), >= 2.
        test_fraction: share of the points in the test set (``round(n * test_fraction)``).
        seed: int >= 0 fixing the points and the split.

    Returns:
        :class:`DataSplit` named ``"two_moons"``: ``(N, 2)`` float32.

    >>> two_moons(100).train.shape
    torch.Size([80, 2])
    """

    def draw(n: int, generator: torch.Generator) -> torch.Tensor:
        t = math.pi * torch.rand(n, generator=generator, dtype=torch.float32)
        sign = 1 - 2 * torch.randint(2, (n,), generator=generator).float()  # +1 upper moon, -1 lower moon
        moons = sign[:, None] * torch.stack([torch.cos(t) - 0.5, torch.sin(t) - 0.25], dim=1)
        return moons + _MOONS_NOISE * torch.randn(n, 2, generator=generator, dtype=torch.float32)

    return _points("two_moons", n, test_fraction, seed, draw)


def rings(n: int = 10000, *, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    r"""Four concentric circles of radii 0.5, 1, 1.5, 2 around the origin, each point on one
    of them with probability proportional to its circumference (so the density along every
    ring is the same), at a uniform angle, plus Gaussian noise of standard deviation 0.05.

    Args:
        n: number of points in all (train and test), >= 2.
        test_fraction: share of the points in the test set (``round(n * test_fraction)``).
        seed: int >= 0 fixing the points and the split.

    Returns:
        :class:`DataSplit` named ``"rings"``: ``(N, 2)`` float32.

    >>> rings(100).test.shape
    torch.Size([20, 2])
    """

    def draw(n: int, generator: torch.Generator) -> torch.Tensor:
        radii = torch.tensor(_RINGS_RADII, dtype=torch.float32)
        radius = radii[torch.multinomial(radii, n, replacement=True, generator=generator)]
        angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float32)
        circles = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        return circles + _RINGS_NOISE * torch.randn(n, 2, generator=generator, dtype=torch.float32)

    return _points("rings", n, test_fraction, seed, draw)


def checkerboard(n: int = 10000, *, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    r"""Uniform on the 8 black squares of a 4 x 4 checkerboard of unit squares covering
    :math:`[-2, 2)^2`: the squares where :math:`\lfloor x_0 \rfloor + \lfloor x_1 \rfloor` is
    even. The density is 1/8 on them and 0 elsewhere (uniform on the multiples of
    :math:`2^{-22}`, which float32 represents exactly there, so that no point rounds onto the
    edge of a white square).

    Args:
        n: number of points in all (train and test), >= 2.
        test_fraction: share of the points in the test set (``round(n * test_fraction)``).
        seed: int >= 0 fixing the points and the split.

    Returns:
        :class:`DataSplit` named ``"checkerboard"``: ``(N, 2)`` float32 in ``[-2, 2)``.

    >>> x = checkerboard(100).train
    >>> bool(((x.floor().sum(dim=1) % 2) == 0).all())
    True
    """

    def draw(n: int, generator: torch.Generator) -> torch.Tensor:
        column = torch.randint(-2, 2, (n,), generator=generator)
        # one of the two rows whose parity makes the square black
        row = 2 * torch.randint(2, (n,), generator=generator) - 2 + column.remainder(2)
        # offsets on the grid of multiples of 2**-22, which float32 holds exactly in [-2, 2):
        # a float offset added to the corner could round onto the next square's edge
        offsets = torch.randint(_CHECKERBOARD_STEPS, (n, 2), generator=generator)
        return (torch.stack([column, row], dim=1) * _CHECKERBOARD_STEPS + offsets).float() / _CHECKERBOARD_STEPS

    return _points("checkerboard", n, test_fraction, seed, draw)


def gaussian_mixture(n: int = 10000, *, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    r"""An equal-weight mixture of 8 isotropic Gaussians of standard deviation 0.2 whose means
    are evenly spaced on the circle of radius 2: mean :math:`k` at angle :math:`2 \pi k / 8`.

    Args:
        n: number of points in all (train and test), >= 2.
        test_fraction: share of the points in the test set (``round(n * test_fraction)``).
        seed: int >= 0 fixing the points and the split.

    Returns:
        :class:`DataSplit` named ``"gaussian_mixture"``: ``(N, 2)`` float32.

    >>> gaussian_mixture(100).train.dtype
    torch.float32
    """

    def draw(n: int, generator: torch.Generator) -> torch.Tensor:
        component = torch.randint(_MIXTURE_COMPONENTS, (n,), generator=generator)
        angle = 2 * math.pi * component.float() / _MIXTURE_COMPONENTS
        means = _MIXTURE_RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        return means + _MIXTURE_STD * torch.randn(n, 2, generator=generator, dtype=torch.float32)

    return _points("gaussian_mixture", n, test_fraction, seed, draw)
