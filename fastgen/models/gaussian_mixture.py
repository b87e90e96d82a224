r"""Mixture of full-covariance Gaussians: a continuous density over :math:`\mathbb{R}^d`
(CS294-158 lecture 1; Bishop, "Pattern Recognition and Machine Learning", ch. 9)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops._checks import check_finite, check_int, check_tensor
from ..sampling import sample_categorical
from .base import DensityModel, register

__all__ = ["MixtureOfGaussians"]


@register("mixture_of_gaussians")
class MixtureOfGaussians(DensityModel):
    r"""A mixture of ``components`` Gaussians with full covariances over :math:`\mathbb{R}^{d}`
    (Bishop 2006, ch. 9; CS294-158 lecture 1):

    .. math::

        p(x) = \sum_k w_k\, \mathcal{N}(x;\, \mu_k,\, L_k L_k^\top), \qquad
        \log p(x) = \operatorname*{logsumexp}_k \Big(\log w_k - \tfrac12 \lVert L_k^{-1}(x - \mu_k)\rVert^2
        - \textstyle\sum_i \log (L_k)_{ii} - \tfrac d2 \log 2\pi\Big)

    with :math:`w = \operatorname{softmax}(\ell)` and each covariance given by its Cholesky
    factor :math:`L_k`, lower triangular with a positive diagonal: ``scale_tril_raw (K, d, d)``
    holds its strictly lower part as is and the log of its diagonal on the diagonal (its upper
    part is unused), so every parameter value is a valid covariance and the model trains by
    SGD on :meth:`loss` (nats per dimension). It starts with equal weights, unit covariances
    and standard normal locations (from torch's default generator, like ``nn.Linear``'s
    initialization).

    :meth:`sample` draws, from ``generator``, ``n`` uniforms that pick the components by
    inverting the weights' CDF, then ``n x d`` standard normals ``z``: :math:`x = \mu_k + L_k z`.

    Args:
        dim: the dimension ``d`` of the data, ``>= 1``.
        components: the number of Gaussians ``K``, ``>= 1``.

    Shape:
        ``x``: ``(B, dim)``, floating with the parameters' dtype; ``log_prob``: ``(B,)``.

    Example:
        >>> model = MixtureOfGaussians(dim=2, components=3)
        >>> x = model.sample(5, generator=torch.Generator().manual_seed(0))
        >>> x.shape, model.log_prob(x).shape
        (torch.Size([5, 2]), torch.Size([5]))
    """

    def __init__(self, dim: int, components: int):
        super().__init__()
        self.dim = check_int("MixtureOfGaussians", "dim", dim, minimum=1)
        self.components = check_int("MixtureOfGaussians", "components", components, minimum=1)
        self.event_shape = (dim,)
        self.mixture_logits = nn.Parameter(torch.zeros(components))
        self.loc = nn.Parameter(torch.randn(components, dim))
        self.scale_tril_raw = nn.Parameter(torch.zeros(components, dim, dim))

    def scale_tril(self) -> torch.Tensor:
        """The Cholesky factors :math:`L_k` of the covariances, ``(components, dim, dim)``."""
        raw = self.scale_tril_raw
        return raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self._check_x(x)
        self._check_cond(cond, x.shape[0], None)
        scale_tril = self.scale_tril()
        diff = (x[:, None, :] - self.loc).permute(1, 2, 0)  # (K, d, B)
        z = torch.linalg.solve_triangular(scale_tril, diff, upper=False)  # (K, d, B): L_k^{-1}(x - mu_k)
        log_det = self.scale_tril_raw.diagonal(dim1=-2, dim2=-1).sum(-1)  # (K,): log|L_k|
        log_normal = -0.5 * z.square().sum(1) - log_det[:, None] - 0.5 * self.dim * math.log(2 * math.pi)  # (K, B)
        return torch.logsumexp(torch.log_softmax(self.mixture_logits, 0)[:, None] + log_normal, dim=0)

    @torch.no_grad()
    def sample(
        self, n: int, cond: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        n = self._check_n(n)
        self._check_cond(cond, n, None)
        device, dtype = self._device_dtype()
        u = torch.rand(n, generator=generator, device=device, dtype=dtype)
        z = torch.randn(n, self.dim, 1, generator=generator, device=device, dtype=dtype)
        k = sample_categorical(self.mixture_logits.expand(n, self.components), u)
        return self.loc[k] + (self.scale_tril()[k] @ z).squeeze(-1)

    def _check_x(self, x: object) -> None:
        check_tensor("MixtureOfGaussians", "x", x, ("B", "dim"))
        if x.shape[1] != self.dim:
            raise ValueError(f"MixtureOfGaussians: x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if x.dtype != self.loc.dtype:
            raise TypeError(f"MixtureOfGaussians: x has dtype {x.dtype} but the model's parameters have {self.loc.dtype}")
        check_finite("MixtureOfGaussians", "x", x)
