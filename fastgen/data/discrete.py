r"""Low-dimensional discrete data with a known distribution, for the histogram, mixture and
MADE models: one variable over ``bins`` values drawn from a mixture with a few modes, and a
pair of variables on a ``size x size`` grid drawn from a picture of a smiley.

The true distribution of each set is exposed (:func:`mixture_1d_probs`,
:func:`smiley_2d_probs`) so that a model's likelihood can be compared with the entropy and its
samples with the truth. The distributions depend only on ``bins`` / ``size``; the seed picks
the samples and the split.
"""

from __future__ import annotations

import torch

from ..ops._checks import check_int, check_real
from ._split import make_split, seeded_generator
from .base import DataSplit

__all__ = ["mixture_1d", "mixture_1d_probs", "smiley_2d", "smiley_2d_probs"]

# (weight, mean, standard deviation) of the Gaussian modes, in units of the range of values
_MODES = ((0.5, 0.25, 0.06), (0.3, 0.55, 0.04), (0.2, 0.8, 0.08))
_UNIFORM_WEIGHT = 0.05  # every value keeps a positive probability, so every NLL is finite


def mixture_1d_probs(bins: int = 100) -> torch.Tensor:
    r"""The distribution of :func:`mixture_1d`: ``(bins,)`` float64 probabilities (sum 1).

    A mixture of a uniform component (weight 0.05) and three discretized Gaussians (weights
    0.95 times 0.5, 0.3, 0.2; means 0.25, 0.55, 0.8 and standard deviations 0.06, 0.04, 0.08,
    times ``bins``): value :math:`k` of Gaussian :math:`(\mu, \sigma)` has the probability mass
    :math:`\Phi((k + 1 - \mu) / \sigma) - \Phi((k - \mu) / \sigma)` of the interval
    :math:`[k, k + 1)`, renormalized over :math:`[0, \text{bins})`.

    Args:
        bins: number of values, >= 2.

    >>> p = mixture_1d_probs(10)
    >>> p.shape, p.dtype, round(float(p.sum()), 12), int(p.argmax())
    (torch.Size([10]), torch.float64, 1.0, 2)
    """
    bins = check_int("mixture_1d_probs", "bins", bins, minimum=2)
    edges = torch.arange(bins + 1, dtype=torch.float64)
    probs = torch.full((bins,), _UNIFORM_WEIGHT / bins, dtype=torch.float64)
    for weight, mean, std in _MODES:
        mass = torch.diff(torch.special.ndtr((edges - mean * bins) / (std * bins)))
        probs += (1 - _UNIFORM_WEIGHT) * weight * mass / mass.sum()
    return probs


def mixture_1d(n: int = 10000, *, bins: int = 100, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    """``n`` independent draws of one variable from :func:`mixture_1d_probs`.

    Args:
        n: number of draws in all (train and test), >= 2.
        bins: number of values, >= 2.
        test_fraction: share of the draws in the test set (``round(n * test_fraction)``).
        seed: int >= 0 fixing the draws and the split.

    Returns:
        :class:`DataSplit` named ``"mixture_1d"``: ``(N,)`` long in ``[0, bins)``
        (``event_shape ()``, ``categories=bins``), no labels.

    >>> data = mixture_1d(1000, bins=20)
    >>> data.train.shape, data.event_shape, data.categories
    (torch.Size([800]), (), 20)
    """
    probs = mixture_1d_probs(check_int("mixture_1d", "bins", bins, minimum=2))
    n = check_int("mixture_1d", "n", n, minimum=2)
    test_fraction = check_real("mixture_1d", "test_fraction", test_fraction, above=0, below=1)
    generator = seeded_generator("mixture_1d", seed)
    draws = torch.multinomial(probs, n, replacement=True, generator=generator)
    return make_split(
        "mixture_1d", "mixture_1d", draws, None, test_fraction=test_fraction, generator=generator, categories=bins
    )


def smiley_2d_probs(size: int = 32) -> torch.Tensor:
    """The distribution of :func:`smiley_2d`: ``(size, size)`` float64 probabilities (sum 1)
    of ``(row, column)``, proportional to the intensity of a smiley drawn on the grid.

    On cell centres mapped to ``[-1, 1]^2`` (row 0 at the top): the face's outline (a ring of
    radius 0.85), the two eyes (discs of radius 0.13 at ``(+-0.32, -0.3)``) and the smile (the
    lower part of a ring of radius 0.5) have intensity 1, the rest of the face 0.15 and the
    background 0.03 (so every cell has a positive probability).

    Args:
        size: grid side, >= 8.

    >>> p = smiley_2d_probs(16)
    >>> p.shape, round(float(p.sum()), 12), bool(p.min() > 0)
    (torch.Size([16, 16]), 1.0, True)
    """
    size = check_int("smiley_2d_probs", "size", size, minimum=8)
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    v, u = centres[:, None], centres[None, :]  # (size, 1) down, (1, size) right
    radius = torch.sqrt(u**2 + v**2)
    stroke = 0.07  # half width of the outline and the smile, about one cell at size 32
    ink = (
        ((radius - 0.85).abs() <= stroke)
        | ((u.abs() - 0.32) ** 2 + (v + 0.3) ** 2 <= 0.13**2)
        | (((radius - 0.5).abs() <= stroke) & (v >= 0.2))
    )
    intensity = torch.full_like(radius, 0.03)
    intensity[radius < 0.85] = 0.15
    intensity[ink] = 1.0
    return intensity / intensity.sum()


def smiley_2d(n: int = 10000, *, size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    """``n`` independent draws of a pair ``(row, column)`` from :func:`smiley_2d_probs`.

    Args:
        n: number of draws in all (train and test), >= 2.
        size: grid side, >= 8.
        test_fraction: share of the draws in the test set (``round(n * test_fraction)``).
        seed: int >= 0 fixing the draws and the split.

    Returns:
        :class:`DataSplit` named ``"smiley_2d"``: ``(N, 2)`` long in ``[0, size)``, column 0
        the row and column 1 the column of the cell (``categories=size``), no labels.

    >>> data = smiley_2d(1000, size=16)
    >>> data.train.shape, data.categories
    (torch.Size([800, 2]), 16)
    """
    probs = smiley_2d_probs(check_int("smiley_2d", "size", size, minimum=8))
    n = check_int("smiley_2d", "n", n, minimum=2)
    test_fraction = check_real("smiley_2d", "test_fraction", test_fraction, above=0, below=1)
    generator = seeded_generator("smiley_2d", seed)
    cells = torch.multinomial(probs.flatten(), n, replacement=True, generator=generator)  # row-major index
    return make_split(
        "smiley_2d",
        "smiley_2d",
        torch.stack([cells // size, cells % size], dim=1),
        None,
        test_fraction=test_fraction,
        generator=generator,
        categories=size,
    )

