r"""Flows through mixture CDFs: the 1-D CDF flow of the course over independent dimensions
(:class:`ElementwiseMixtureCDFFlow`), and the shared transform of Flow++'s mixture
coupling (:class:`fastgen.nn.MixtureCDFCoupling`).

A mixture CDF :math:`F(x) = \sum_k \pi_k \Phi((x - \mu_k)/s_k)` (logistic or Gaussian
components, :func:`fastgen.ops.mixture_cdf`) maps the line onto ``(0, 1)`` with
:math:`\log|F'(x)|` the mixture's log-density; the inverse is
:func:`fastgen.ops.mixture_icdf` (bisection with a fixed iteration count). With
``output="logit"`` the result is mapped back onto the line by a logit, as in Flow++:
:math:`y = \mathrm{logit}(F(x))`, adding :math:`-\log u - \log(1 - u)` to the log-determinant.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import mixture_cdf, mixture_icdf
from ..ops._checks import check_choice, check_int
from ..ops.mixture_cdf import KINDS

__all__ = ["ElementwiseMixtureCDFFlow", "mixture_logit_flow"]


def mixture_logit_flow(
    x: torch.Tensor,
    logits: torch.Tensor,
    loc: torch.Tensor,
    log_scale: torch.Tensor,
    *,
    kind: str,
    logit_output: bool,
    inverse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The element-wise map ``x -> F(x)`` (or ``logit(F(x))``) and its per-element
    log-determinant (not summed); parameters ``(..., K)`` as in :func:`fastgen.ops.mixture_cdf`."""
    finfo = torch.finfo(x.dtype)
    if inverse:
        u = torch.sigmoid(x) if logit_output else x
        # sigmoid rounds to 0 or 1 far out: the bisection then returns its bracket's end.
        out = mixture_icdf(u, logits, loc, log_scale, kind=kind)
        _, logdet = mixture_logit_flow(out, logits, loc, log_scale, kind=kind, logit_output=logit_output, inverse=False)
        return out, -logdet
    u, log_pdf = mixture_cdf(x, logits, loc, log_scale, kind=kind)
    if not logit_output:
        return u, log_pdf
    # Kept inside (0, 1) so that the logit is finite when the CDF rounds to 0 or 1.
    u = u.clamp(finfo.tiny, 1 - finfo.eps / 2)
    return torch.log(u) - torch.log1p(-u), log_pdf - torch.log(u) - torch.log1p(-u)


class ElementwiseMixtureCDFFlow(nn.Module):
    r"""A 1-D flow applied to every dimension independently: a learned ``K``-component
    mixture CDF per feature (vector entry, or image channel), optionally followed by a logit.

    Args:
        features: ``D`` (vectors ``(B, D)``) or ``C`` (images ``(B, C, H, W)``, one mixture
            per channel).
        components: ``K``.
        kind: ``"logistic"`` or ``"gaussian"`` components.
        output: ``"unit"`` (``y = F(x)`` in ``(0, 1)``, the CDF flow of the course, whose
            base density is uniform) or ``"logit"`` (``y = logit(F(x))`` on the line).

    Example:
        >>> flow = ElementwiseMixtureCDFFlow(2, components=5)
        >>> y, logdet = flow(torch.randn(100, 2))   # y in (0, 1)
        >>> x, _ = flow.inverse(y)
    """

    def __init__(self, features: int, components: int, *, kind: str = "logistic", output: str = "unit"):
        super().__init__()
        name = type(self).__name__
        check_int(name, "features", features, minimum=1)
        check_int(name, "components", components, minimum=1)
        check_choice(name, "kind", kind, KINDS)
        check_choice(name, "output", output, ("unit", "logit"))
        self.features, self.components, self.kind, self.output = features, components, kind, output
        self.logits = nn.Parameter(torch.zeros(features, components))
        # Components spread over [-2, 2] so that the initial CDF is not one step.
        self.loc = nn.Parameter(torch.linspace(-2, 2, components).repeat(features, 1))
        self.log_scale = nn.Parameter(torch.zeros(features, components))

    def extra_repr(self) -> str:
        return f"features={self.features}, components={self.components}, kind={self.kind!r}, output={self.output!r}"

    def _run(self, x: object, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        name = f"{type(self).__name__}{'.inverse' if inverse else ''}"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(x).__name__}")
        if x.dim() not in (2, 4) or x.shape[1] != self.features:
            raise ValueError(
                f"{name}: input must be (B, {self.features}) or (B, {self.features}, H, W), got {tuple(x.shape)}"
            )
        view = (1, self.features, *([1, 1] if x.dim() == 4 else []), self.components)
        params = [p.view(view).expand(*x.shape, self.components) for p in (self.logits, self.loc, self.log_scale)]
        y, logdet = mixture_logit_flow(
            x, *params, kind=self.kind, logit_output=self.output == "logit", inverse=inverse
        )
        return y, logdet.flatten(1).sum(1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(x, False)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(y, True)
