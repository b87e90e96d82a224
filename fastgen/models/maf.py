r"""MAF (Papamakarios et al. 2017, "Masked Autoregressive Flow for Density Estimation"): a
stack of MADE-parametrized affine autoregressive layers, the density in one network pass per
layer, and :class:`AffineAutoregressiveFlow`, the stack that MAF and IAF share.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..nn import FlowSequential, MaskedAffineAutoregressive, Reverse
from ..ops._checks import check_int, check_widths
from .base import FlowModel, register

__all__ = ["MAF", "AffineAutoregressiveFlow"]


class AffineAutoregressiveFlow(FlowModel):
    r"""The stack shared by :class:`MAF` and :class:`~fastgen.models.IAF`: ``transforms``
    :class:`~fastgen.nn.MaskedAffineAutoregressive` layers over ``dim`` real variables with a
    :class:`~fastgen.nn.Reverse` between consecutive layers, in the attribute ``flow`` (a
    :class:`~fastgen.nn.FlowSequential`). Its forward direction is parallel (one network pass
    per layer), its inverse sequential (the networks' incremental form, or ``dim`` passes
    where autograd records it). MAF maps data to latent through the forward direction, IAF
    through the inverse one; the parameters are the same, so a state dict of one loads into
    the other, and the two models are then exact inverses of each other. Subclasses set
    ``density_in_one_pass``: whether :meth:`transform` (data to latent) is the forward.

    ``cond`` ``(B, cond_dim)`` (any real dtype, cast to the model's) feeds every layer's MADE.
    """

    def __init__(self, dim: int, hidden: int | Sequence[int], transforms: int, cond_dim: int | None = None):
        super().__init__()
        name = type(self).__name__
        self.dim = check_int(name, "dim", dim, minimum=2)
        self.hidden = check_widths(name, "hidden", hidden)
        self.transforms = check_int(name, "transforms", transforms, minimum=1)
        if cond_dim is not None:
            check_int(name, "cond_dim", cond_dim, minimum=1)
        self.cond_dim = cond_dim
        self.event_shape = (dim,)
        self.cond_shape = None if cond_dim is None else (cond_dim,)
        layers = []
        for k in range(transforms):
            if k:
                layers.append(Reverse())
            layers.append(MaskedAffineAutoregressive(dim, self.hidden, cond_features=cond_dim or 0))
        self.flow = FlowSequential(*layers)

    # True: data to latent through the stack's forward (MAF); False: through its inverse (IAF)
    density_in_one_pass: bool

    def _run(self, x: object, cond: torch.Tensor | None, name: str, forward: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.check_data(x, name)
        cond = self.check_features(cond, x.shape[0])
        return self.flow(x, cond) if forward else self.flow.inverse(x, cond)

    def transform(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(x, cond, "x", self.density_in_one_pass)

    def inverse(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return self._run(z, cond, "z", not self.density_in_one_pass)[0]


@register("maf")
class MAF(AffineAutoregressiveFlow):
    r"""Masked Autoregressive Flow (Papamakarios et al. 2017): ``transforms`` affine
    autoregressive layers, each

    .. math::

        u_i = (x_i - \mu_i(x_{<i}))\, e^{-\alpha_i(x_{<i})}, \qquad
        \log|\det \partial u / \partial x| = -\textstyle\sum_i \alpha_i,

    with :math:`(\mu, \alpha)` from a MADE of the layer's input (and ``cond``), the entries
    reversed between layers, and a standard normal base:
    :math:`\log p(x) = \log \mathcal{N}(z; 0, I) + \sum_{\text{layers}} \log|\det|`.

    - Density (:meth:`log_prob`, training): one MADE pass per layer.
    - Sampling: each layer is inverted entry by entry, :math:`x_i = u_i e^{\alpha_i} + \mu_i`,
      stepping its MADE's incremental form (:meth:`fastgen.nn.MaskedMLP.absorb`): each step
      pushes only the hidden units that the new entry completes into the units they feed,
      about one MADE pass per layer in all instead of ``dim``. :meth:`sample` runs without
      autograd; :meth:`inverse` under autograd is differentiable (``dim`` MADE passes per
      layer) for reparameterized samples.

    Each layer's log-scale is bounded, :math:`\alpha_i = a_i \tanh(r_i)` with a learned
    per-entry ``a`` started at 1, and each MADE's last layer starts at zero (the flow starts
    as the identity): see :class:`~fastgen.nn.MaskedAffineAutoregressive`. The permutation
    between layers is the reversal (no random permutations, no batch norm).

    Args:
        dim: ``D >= 2``, the number of real variables.
        hidden: each MADE's hidden widths, an int or a sequence of ints.
        transforms: the number of autoregressive layers, ``>= 1``.
        cond_dim: the size of a per-example conditioning vector, or None.

    Shape:
        ``x``, ``z``: ``(B, D)`` floating with the model's dtype; ``cond``: ``(B, cond_dim)``.

    Example:
        >>> model = MAF(2, hidden=[16, 16], transforms=3)
        >>> x = model.sample(4, generator=torch.Generator().manual_seed(0))
        >>> x.shape, model.log_prob(x).shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    density_in_one_pass = True

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """``n`` samples ``(n, dim)`` (see :meth:`FlowModel.sample`), without autograd: the
        incremental inverse. For samples with gradients call :meth:`inverse` on base draws."""
        return super().sample(n, cond, generator, temperature=temperature)
