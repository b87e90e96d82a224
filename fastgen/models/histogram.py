r"""Histogram: a categorical distribution over one discrete variable (CS294-158 lecture 1,
"just count it")."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops._checks import check_int, check_real
from .base import AutoregressiveModel, StepCache, register

__all__ = ["Histogram", "log_frequencies"]


def log_frequencies(counts: torch.Tensor, smoothing: float, op: str) -> torch.Tensor:
    r"""Smoothed empirical log-frequencies along the last dimension of ``counts (..., K)``:
    :math:`\log \frac{n_k + \alpha}{\sum_j n_j + K\alpha}` (additive / Laplace smoothing with
    ``alpha = smoothing`` pseudo-counts per value).

    A row with no counts at all (and ``smoothing = 0``) has no maximum-likelihood estimate;
    it gets the uniform distribution. Values never counted get ``-inf`` when ``smoothing = 0``.
    ``op`` names the caller in the error for a bad ``smoothing``.
    """
    counts = counts + check_real(op, "smoothing", smoothing, at_least=0)
    total = counts.sum(-1, keepdim=True)
    uniform = torch.full_like(counts, -math.log(counts.shape[-1]))
    return torch.where(total > 0, counts.log() - total.log(), uniform)


@register("histogram")
class Histogram(AutoregressiveModel):
    r"""A categorical distribution over ``num_bins`` values, :math:`p(x = k) =
    \operatorname{softmax}(\theta)_k` (CS294-158 lecture 1, "just count it").

    Two ways to fit it: by stochastic gradient descent on :meth:`loss` (the parameters
    :math:`\theta` are free logits), or in closed form by :meth:`fit_counts`, the maximum
    likelihood estimate :math:`\theta_k = \log(n_k / n)` from the counts.

    As an :class:`AutoregressiveModel` it has one dimension (``event_shape = ()``): ``x`` is a
    long tensor ``(B,)`` with values in ``[0, num_bins)``, and the cache of the sampling
    protocol holds nothing.

    Args:
        num_bins: the number of values, ``>= 2``.

    Example:
        >>> model = Histogram(4).fit_counts(torch.tensor([0, 1, 1, 3]))
        >>> model.probs().tolist()
        [0.25, 0.5, 0.0, 0.25]
        >>> model.log_prob(torch.tensor([1, 2])).detach()
        tensor([-0.6931,    -inf])
        >>> model.sample(3, generator=torch.Generator().manual_seed(0))
        tensor([1, 3, 0])
    """

    def __init__(self, num_bins: int):
        super().__init__()
        self.num_bins = check_int("Histogram", "num_bins", num_bins, minimum=2)
        self.categories = num_bins
        self.event_shape = ()
        self.bin_logits = nn.Parameter(torch.zeros(num_bins))

    def probs(self) -> torch.Tensor:
        """The probability of each value: ``(num_bins,)``."""
        return torch.softmax(self.bin_logits, dim=0)

    @torch.no_grad()
    def fit_counts(self, x: torch.Tensor, smoothing: float = 0.0) -> Histogram:
        """Set the parameters to the maximum likelihood estimate from the examples ``x (N,)``,
        with ``smoothing`` pseudo-counts added to every value (see :func:`log_frequencies`);
        returns the model."""
        x = self.check_data(x)
        if x.numel() == 0:
            raise ValueError("Histogram.fit_counts: x must hold at least one example")
        counts = torch.bincount(x.long(), minlength=self.num_bins).to(self.bin_logits)
        self.bin_logits.copy_(log_frequencies(counts, smoothing, "Histogram.fit_counts"))
        return self

    def logits(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.check_inputs(x, cond)
        return self.bin_logits.expand(x.shape[0], 1, self.num_bins)

    def init_cache(self, batch: int, cond: torch.Tensor | None = None) -> StepCache:
        """A cache for ``batch`` examples: the one dimension has nothing to carry."""
        return self.new_cache(self.check_init_cache(batch, cond))

    def step(self, cache: StepCache, x_prev: torch.Tensor | None) -> torch.Tensor:
        self.begin_step(cache, x_prev)
        return self.bin_logits.expand(cache.batch, self.num_bins)
