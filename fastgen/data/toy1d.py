r"""A one-dimensional continuous toy density for the 1-D flows: an unequal mixture of three
Gaussians of different widths (CS294-158 lecture 3's CDF-flow demo data), with its exact
log-density so that a model's likelihood can be compared with the truth."""

from __future__ import annotations

import math

import torch

from ..ops._checks import check_floating, check_int, check_real
from ._split import make_split, seeded_generator
from .base import DataSplit

__all__ = ["gaussian_mixture_1d", "gaussian_mixture_1d_log_prob"]

# (weight, mean, standard deviation) of the components
_COMPONENTS = ((0.5, -1.5, 0.5), (0.3, 0.8, 0.3), (0.2, 2.0, 0.8))


def gaussian_mixture_1d_log_prob(x: torch.Tensor) -> torch.Tensor:
    r"""The log-density of :func:`gaussian_mixture_1d` at ``x`` (any shape, floating):
    :math:`\log \sum_k w_k \mathcal{N}(x; \mu_k, \sigma_k^2)` with weights 0.5, 0.3, 0.2,
    means -1.5, 0.8, 2.0 and standard deviations 0.5, 0.3, 0.8.

    >>> round(float(gaussian_mixture_1d_log_prob(torch.tensor(-1.5))), 4)
    -0.9189
    """
    check_floating("gaussian_mixture_1d_log_prob", "x", x)
    weight, mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device) for v in zip(*_COMPONENTS))
    z = (x[..., None] - mean) / std
    return torch.logsumexp(weight.log() - 0.5 * z * z - std.log() - 0.5 * math.log(2 * math.pi), dim=-1)


def gaussian_mixture_1d(n: int = 10000, *, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    r"""``n`` independent draws from :func:`gaussian_mixture_1d_log_prob`'s density (each
    draw picks a component by its weight, then adds that component's Gaussian noise).

    Args:
        n: number of draws in all (train and test), >= 2.
        test_fraction: share of the draws in the test set (``round(n * test_fraction)``).
        seed: int >= 0 fixing the draws and the split.

    Returns:
        :class:`DataSplit` named ``"gaussian_mixture_1d"``: ``(N,)`` float32
        (``event_shape ()``, ``categories=None``), no labels.

    >>> data = gaussian_mixture_1d(1000)
    >>> data.train.shape, data.event_shape, data.categories
    (torch.Size([800]), (), None)
    """
    op = "gaussian_mixture_1d"
    n = check_int(op, "n", n, minimum=2)
    test_fraction = check_real(op, "test_fraction", test_fraction, above=0, below=1)
    generator = seeded_generator(op, seed)
    weight, mean, std = (torch.tensor(v, dtype=torch.float32) for v in zip(*_COMPONENTS))
    component = torch.multinomial(weight, n, replacement=True, generator=generator)
    draws = mean[component] + std[component] * torch.randn(n, generator=generator, dtype=torch.float32)
    return make_split(op, op, draws, None, test_fraction=test_fraction, generator=generator, categories=None)
