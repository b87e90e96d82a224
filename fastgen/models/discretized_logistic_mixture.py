r"""Discretized mixture of logistics over the bins of one discrete variable (Salimans et al.
2017, "PixelCNN++")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops._checks import check_int
from .base import AutoregressiveModel, StepCache, register

__all__ = ["DiscretizedMixtureOfLogistics", "discretized_logistic_log_probs"]

# PixelCNN++'s floor on the log-scale: a component narrower than a thousandth of a bin already
# puts all its mass on one bin, and the floor keeps 1/s (and the gradients) finite.
_MIN_LOG_SCALE = -7.0


def discretized_logistic_log_probs(
    mixture_logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, num_bins: int
) -> torch.Tensor:
    r"""The log-probability of each bin ``0, ..., num_bins - 1`` under a mixture of logistics
    discretized onto them (:class:`DiscretizedMixtureOfLogistics` gives the formula), for a
    batch of mixtures.

    Args:
        mixture_logits: ``(..., K)`` unnormalized log-weights of the ``K`` components.
        loc: ``(..., K)`` locations, in bin units (bin ``b`` is centred at ``b``).
        log_scale: ``(..., K)`` log-scales, in bin units (floored at -7).
        num_bins: ``>= 2``.

    Returns:
        ``(..., num_bins)``, each row's exponentials summing to 1.

    Example:
        >>> logp = discretized_logistic_log_probs(torch.zeros(5, 2), torch.randn(5, 2), torch.zeros(5, 2), 4)
        >>> logp.shape, torch.allclose(logp.exp().sum(-1), torch.ones(5))
        (torch.Size([5, 4]), True)
    """
    log_scale = log_scale.clamp_min(_MIN_LOG_SCALE)
    inv_scale = torch.exp(-log_scale)[..., None, :]  # (..., 1, K): the width of a bin in units of the scale
    edges = torch.arange(num_bins - 1, dtype=inv_scale.dtype, device=inv_scale.device) + 0.5
    upper = (edges[:, None] - loc[..., None, :]) * inv_scale  # (..., num_bins - 1, K): standardized inner edges
    log_cdf = F.logsigmoid(upper)  # mass below each inner edge
    log_sf = F.logsigmoid(-upper)  # mass above each inner edge
    log_inner = log_cdf[..., 1:, :] + log_sf[..., :-1, :] + torch.log(-torch.expm1(-inv_scale))
    log_mass = torch.cat([log_cdf[..., :1, :], log_inner, log_sf[..., -1:, :]], dim=-2)  # (..., num_bins, K)
    return torch.logsumexp(torch.log_softmax(mixture_logits, -1)[..., None, :] + log_mass, dim=-1)


@register("discretized_mixture_of_logistics")
class DiscretizedMixtureOfLogistics(AutoregressiveModel):
    r"""A mixture of ``components`` logistic distributions discretized onto the bins ``0, ...,
    num_bins - 1`` (Salimans et al. 2017, "PixelCNN++").

    With weights :math:`w = \operatorname{softmax}(\ell)`, locations :math:`\mu_k` and scales
    :math:`s_k = e^{\lambda_k}` (in bin units), bin :math:`b` gets the mass of the continuous
    mixture over :math:`[b - \tfrac12, b + \tfrac12]`, the edge bins taking the tails:

    .. math::

        P(b) = \sum_k w_k \left[\sigma\!\left(\tfrac{b + 1/2 - \mu_k}{s_k}\right)
               - \sigma\!\left(\tfrac{b - 1/2 - \mu_k}{s_k}\right)\right],
        \qquad \text{with } \sigma(\cdot) = 0 \text{ below bin } 0 \text{ and } 1
        \text{ above bin } \text{num\_bins} - 1.

    It is computed in log space without cancellation, from
    :math:`\sigma(a) - \sigma(a - \delta) = \sigma(a)\,\sigma(\delta - a)\,(1 - e^{-\delta})`
    with :math:`\delta = 1/s_k`: :math:`\log\sigma(a) + \log\sigma(\delta - a) +
    \log(-\operatorname{expm1}(-\delta))`, accurate in both tails and for any scale.
    The log-scales are floored at -7 as in PixelCNN++. The parameters (``mixture_logits``,
    ``loc``, ``log_scale``, all ``(components,)``) train by SGD on :meth:`loss`; they start
    with equal weights, the locations spread evenly over the bins.

    As an :class:`AutoregressiveModel` it has one dimension (``event_shape = ()``): ``x`` is a
    long tensor ``(B,)`` with values in ``[0, num_bins)``.

    Args:
        num_bins: the number of bins, ``>= 2``.
        components: the number of logistic components, ``>= 1``.

    Example:
        >>> model = DiscretizedMixtureOfLogistics(num_bins=8, components=2)
        >>> round(model.bin_log_probs().exp().sum().item(), 6)
        1.0
        >>> model.log_prob(torch.tensor([0, 7])).shape
        torch.Size([2])
    """

    def __init__(self, num_bins: int, components: int):
        super().__init__()
        self.num_bins = check_int("DiscretizedMixtureOfLogistics", "num_bins", num_bins, minimum=2)
        self.components = check_int("DiscretizedMixtureOfLogistics", "components", components, minimum=1)
        self.categories = num_bins
        self.event_shape = ()
        width = num_bins / components
        self.mixture_logits = nn.Parameter(torch.zeros(components))
        self.loc = nn.Parameter((torch.arange(components) + 0.5) * width - 0.5)
        self.log_scale = nn.Parameter(torch.full((components,), math.log(width / 4)))

    def bin_log_probs(self) -> torch.Tensor:
        """The log-probability of each bin, ``(num_bins,)``."""
        return discretized_logistic_log_probs(self.mixture_logits, self.loc, self.log_scale, self.num_bins)

    def logits(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.check_inputs(x, cond)
        return self.bin_log_probs().expand(x.shape[0], 1, self.num_bins)

    def init_cache(self, batch: int, cond: torch.Tensor | None = None) -> StepCache:
        """A cache for ``batch`` examples: the one dimension has nothing to carry."""
        return self.new_cache(self.check_init_cache(batch, cond))

    def step(self, cache: StepCache, x_prev: torch.Tensor | None) -> torch.Tensor:
        self.begin_step(cache, x_prev)
        return self.bin_log_probs().expand(cache.batch, self.num_bins)
