r"""The 1-D CDF flow (CS294-158 lecture 3; the mixture CDF of Flow++, Ho et al. 2019): a
density on the line through a learned mixture CDF, the simplest normalizing flow."""

from __future__ import annotations

import math

import torch

from ..nn import ElementwiseMixtureCDFFlow
from ..ops._checks import check_choice, check_finite, check_int
from ..ops.mixture_cdf import KINDS
from .base import FlowModel, register

__all__ = ["CDFFlow1D"]

BASES = ("uniform", "normal")


@register("cdf_flow_1d")
class CDFFlow1D(FlowModel):
    r"""A flow of one real variable through a ``K``-component mixture CDF
    :math:`F(x) = \sum_k w_k\, \Phi\big((x - \mu_k)/s_k\big)` (Gaussian or logistic
    components, :class:`~fastgen.nn.ElementwiseMixtureCDFFlow` on
    :func:`fastgen.ops.mixture_cdf`):

    - ``base="uniform"``: :math:`z = F(x) \in (0, 1)` with a uniform base, so
      :math:`\log p(x) = \log F'(x)`, the mixture's log-density;
    - ``base="normal"``: :math:`z = \Phi^{-1}(F(x))` with a standard normal base; the same
      density, since :math:`\log \mathcal{N}(z) + \log F'(x) - \log \mathcal{N}(z)` (the
      last term is the log-derivative of :math:`\Phi^{-1}`).

    Sampling inverts the CDF (:func:`fastgen.ops.mixture_icdf`, bisection) at
    :math:`u = z` or :math:`u = \Phi(z)`. The temperature scales the latent about the base's
    median: :math:`z = 0.5 + T(v - 0.5)`, :math:`v` uniform, or :math:`z = T\varepsilon`; at
    :math:`T = 0` both bases give the mixture's median. With the uniform base ``T`` must be
    at most 1 (the central fraction ``T`` of the mixture's quantiles; above 1 the latent
    would leave ``[0, 1]``, where the CDF has no inverse): higher temperatures need
    ``base="normal"``. :meth:`inverse` refuses a uniform ``z`` outside ``[0, 1]``.

    ``z`` is computed from :math:`u = F(x)` in the data's dtype: where :math:`F(x)` rounds
    to 0 or 1 (float32: beyond about 5 standard deviations on the upper side of the mixture)
    the normal base's ``z`` is clamped like :math:`u` (to ``[tiny, 1 - eps/2]``) and the round
    trip loses the tail; :meth:`log_prob` stays exact there, the clamped ``z``'s base and
    derivative terms cancelling.

    Initialization: equal weights, unit scales, locations spread over ``[-2, 2]``.

    Args:
        components: ``K >= 1``.
        kind: ``"gaussian"`` or ``"logistic"`` components.
        base: ``"uniform"`` or ``"normal"``.

    Shape:
        ``x`` and ``z``: ``(B,)`` floating with the model's dtype (``event_shape`` is ``()``,
        one real value per example, as the 1-D discrete models); ``log_prob``: ``(B,)``.

    Example:
        >>> model = CDFFlow1D(components=4)
        >>> x = model.sample(5, generator=torch.Generator().manual_seed(0))
        >>> x.shape, model.log_prob(x).shape
        (torch.Size([5]), torch.Size([5]))
    """

    def __init__(self, components: int, kind: str = "gaussian", base: str = "uniform"):
        super().__init__()
        self.components = check_int("CDFFlow1D", "components", components, minimum=1)
        self.kind = check_choice("CDFFlow1D", "kind", kind, KINDS)
        self.base = check_choice("CDFFlow1D", "base", base, BASES)
        self.event_shape = ()
        self.cdf = ElementwiseMixtureCDFFlow(1, components, kind=kind, output="unit")

    def extra_repr(self) -> str:
        return f"components={self.components}, kind={self.kind!r}, base={self.base!r}"

    def transform(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.check_data(x)
        self._check_cond(cond, x.shape[0], None)
        u, log_pdf = self.cdf(x[:, None])
        u = u[:, 0]
        if self.base == "uniform":
            return u, log_pdf
        finfo = torch.finfo(u.dtype)
        z = torch.special.ndtri(u.clamp(finfo.tiny, 1 - finfo.eps / 2))
        return z, log_pdf - super().base_log_prob(z[:, None])

    def inverse(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        z = self.check_latent(z)
        if self.base == "uniform":
            check_finite("CDFFlow1D.inverse", "z (a uniform latent)", z, (0.0, 1.0))
        self._check_cond(cond, z.shape[0], None)
        # log_ndtr keeps Phi's lower tail, which ndtr (1 + erf) rounds to 0 beyond about -6
        # in float32.
        u = z if self.base == "uniform" else torch.special.log_ndtr(z).exp()
        return self.cdf.inverse(u[:, None])[0][:, 0]

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        if self.base == "normal":
            return super().base_log_prob(z[:, None])
        return torch.where((z >= 0) & (z <= 1), 0.0, -math.inf).to(z.dtype)

    def sample_base(self, n: int, generator: torch.Generator | None, temperature: float) -> torch.Tensor:
        if self.base == "normal":
            return super().sample_base(n, generator, temperature)
        if temperature > 1:
            raise ValueError(
                f"CDFFlow1D.sample: temperature must be <= 1 with base='uniform' (it keeps the central "
                f"fraction temperature of the quantiles; above 1 the latent leaves [0, 1]: use base='normal'), "
                f"got {temperature!r}"
            )
        device, dtype = self._device_dtype()
        return 0.5 + temperature * (torch.rand(n, generator=generator, device=device, dtype=dtype) - 0.5)
