r"""IAF (Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive
Flow"): MAF's stack read the other way, sampling in one network pass per layer."""

from __future__ import annotations

from .base import register
from .maf import AffineAutoregressiveFlow

__all__ = ["IAF"]


@register("iaf")
class IAF(AffineAutoregressiveFlow):
    r"""Inverse Autoregressive Flow (Kingma et al. 2016): the layers of :class:`~fastgen.models.MAF`
    (same parameters) with the roles of the directions swapped. Sampling maps a standard
    normal ``z`` through each layer as

    .. math::

        x_i = (z_i - \mu_i(z_{<i}))\, e^{-\alpha_i(z_{<i})}

    (the paper's :math:`\mu_t + \sigma_t \odot z_t` with :math:`\sigma = e^{-\alpha}`,
    shift :math:`-\mu\sigma`): the shift and scale of every entry depend on the *latent*
    entries before it, all known up front, so sampling costs one MADE pass per layer. The
    density inverts each layer entry by entry, :math:`z_i = x_i e^{\alpha_i(z_{<i})} +
    \mu_i(z_{<i})`, with

    .. math::

        \log p(x) = \log \mathcal{N}(z; 0, I) + \sum_{\text{layers}} \textstyle\sum_i \alpha_i.

    Under autograd (training) that costs ``dim`` MADE passes per layer; without it (evaluation)
    the MADEs' incremental form, about one pass per layer.

    With the same parameters (``iaf.load_state_dict(maf.state_dict())``),
    ``IAF.inverse == MAF.transform`` and ``IAF.transform == MAF.inverse``: IAF's density is the
    image of the base under MAF's density map.

    Args and shapes: as :class:`~fastgen.models.MAF` (``dim`` real variables, ``hidden``
    widths of each MADE, ``transforms`` layers, ``cond_dim``; ``x`` and ``z`` ``(B, dim)``
    with the model's dtype, ``cond`` ``(B, cond_dim)``).

    Example:
        >>> import torch
        >>> model = IAF(2, hidden=[16, 16], transforms=3)
        >>> x = model.sample(4, generator=torch.Generator().manual_seed(0))
        >>> x.shape, model.log_prob(x).shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    density_in_one_pass = False
