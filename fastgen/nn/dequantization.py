r"""Element-wise flows around discrete data: dequantization (uniform, as in RealNVP, and
variational, Flow++: Ho et al. 2019) and RealNVP's logit preprocessing.

Dequantization turns integer data ``x`` in ``[0, bins)`` into continuous ``y`` in
``[0, 1)`` so that a density model of ``y`` bounds the discrete likelihood:

.. math::

    \log P(x) \ge \mathbb{E}_{u \sim q(\cdot|x)}\big[\log p\big((x + u)/\text{bins}\big)
    - \log q(u|x)\big] - D \log \text{bins}

The layers return that correction as their ``logdet`` (``-D log bins``, plus
``-log q(u|x)`` for the variational one), so ``log p(y) + logdet`` is an unbiased estimate
of the bound: the flow contract of :mod:`fastgen.nn.flow`, with a random forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import logit_transform, uniform_dequantize
from ..ops._checks import check_batched, check_finite, check_int
from ..ops.dequantize import bin_margin, check_integer_data

__all__ = ["Logit", "UniformDequantization", "VariationalDequantization"]


def _quantize(layer: nn.Module, y: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of a dequantization: the bin of each value, and ``+D log bins``."""
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise TypeError(f"{type(layer).__name__}.inverse: y must be a floating-point Tensor")
    x = (y * bins).floor().clamp_(0, bins - 1)
    return x, y.new_full((y.shape[0],), y[0].numel() * math.log(bins))


class Logit(nn.Module):
    r"""RealNVP's logit preprocessing of data in ``[0, 1]``:
    :math:`y = \mathrm{logit}(\alpha + (1 - 2\alpha) x)` (:func:`fastgen.ops.logit_transform`).

    Args:
        alpha: in ``[0, 0.5)``; keeps the logit finite at 0 and 1 (RealNVP: 0.05).

    ``forward`` raises ValueError if ``x`` holds a value outside ``[0, 1]`` (or NaN).
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 <= alpha < 0.5:
            raise ValueError(f"Logit: alpha must be a number in [0, 0.5), got {alpha!r}")
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # Outside [0, 1] the logit is NaN: refused here (one min/max reduction), not in the op,
        # which is benchmarked without it.
        check_finite("Logit", "x", check_batched("Logit", "x", x), (0.0, 1.0))
        return logit_transform(x, alpha=self.alpha)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return logit_transform(y, alpha=self.alpha, inverse=True)


class UniformDequantization(nn.Module):
    r"""Uniform dequantization: :math:`y = (x + u) / \text{bins}`, :math:`u \sim U[0, 1)` per
    element (:func:`fastgen.ops.uniform_dequantize`); logdet ``-D log bins``. The inverse
    returns each value's bin (as floats) and ``+D log bins``.

    Args:
        bins: number of integer levels (256 for 8-bit images).
    """

    def __init__(self, bins: int = 256):
        super().__init__()
        check_int(type(self).__name__, "bins", bins, minimum=2)
        self.bins = bins

    def extra_repr(self) -> str:
        return f"bins={self.bins}"

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return uniform_dequantize(x, bins=self.bins, generator=generator)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return _quantize(self, y, self.bins)


class VariationalDequantization(nn.Module):
    r"""Flow++'s variational dequantization: the noise is drawn from a learned
    :math:`q(u|x)`, a flow of Gaussian noise conditioned on the data, squashed into
    ``(0, 1)`` by a sigmoid:

    .. math::

        \epsilon \sim \mathcal N(0, I), \quad (z, \log|\det J_f|) = f(\epsilon;\, x), \quad
        u = \sigma(z), \quad
        \log q(u|x) = \log \mathcal N(\epsilon) - \log|\det J_f|
        - \textstyle\sum \log \sigma'(z)

    and returns :math:`y = (x + u)/\text{bins}` with logdet
    :math:`-\log q(u|x) - D \log \text{bins}`. Like uniform noise, ``u`` is kept a few
    float spacings off 0 and 1 (:func:`fastgen.ops.dequantize.bin_margin`), so that ``y``
    stays inside ``x``'s bin where the sigmoid rounds to 0 or 1.

    Args:
        flow: a flow over tensors of the data's shape whose layers take the data, scaled
            to ``[-0.5, 0.5]``, as ``cond`` (e.g. couplings with ``cond_features = C``).
        bins: number of integer levels.
    """

    def __init__(self, flow: nn.Module, bins: int = 256):
        super().__init__()
        check_int(type(self).__name__, "bins", bins, minimum=2)
        if not (isinstance(flow, nn.Module) and hasattr(flow, "inverse")):
            raise TypeError("VariationalDequantization: flow must be a flow module (forward and inverse)")
        self.flow, self.bins = flow, bins

    def extra_repr(self) -> str:
        return f"bins={self.bins}"

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_integer_data(type(self).__name__, "x", x, self.bins)
        x = x.to(x.dtype if x.is_floating_point() else torch.get_default_dtype())
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        z, logdet_f = self.flow(eps, x / (self.bins - 1) - 0.5)
        dims = list(range(1, x.dim()))
        log_normal = -0.5 * (eps.square() + math.log(2 * math.pi)).sum(dims)
        log_sigmoid_grad = (F.logsigmoid(z) + F.logsigmoid(-z)).sum(dims)
        log_q = log_normal - logdet_f - log_sigmoid_grad
        # Kept off the bin edges like uniform noise (a sigmoid rounds to 0 or 1 far out), so
        # that y stays inside x's bin; log q is that of the unclamped u, which differs only
        # where q has next to no mass (u within ~1e-12 of an edge in float64, ~1e-4 in float32).
        margin = bin_margin(type(self).__name__, self.bins, x.dtype)
        y = (x + torch.sigmoid(z).clamp(margin, 1 - margin)) / self.bins
        return y, -log_q - x[0].numel() * math.log(self.bins)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return _quantize(self, y, self.bins)
