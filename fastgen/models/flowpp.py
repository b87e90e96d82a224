r"""Flow++ (Ho, Chen, Srinivas, Duan & Abbeel 2019, "Flow++: Improving Flow-Based Generative
Models with Variational Dequantization and Architecture Design"): a flow of images whose
couplings transform by mixture-of-logistics CDFs, trained on integer pixels through a
learned (variational) dequantization.

Integer pixels ``x`` in ``[0, bins)`` become continuous ``y = (x + u) / bins`` with noise
``u`` in ``(0, 1)^D`` drawn from a learned :math:`q(u \mid x)`; a flow :math:`f` maps ``y`` to
a standard normal ``z``, and

.. math::

    \log P(x) \ge \mathbb{E}_{u \sim q(\cdot \mid x)}\Big[\log \mathcal N\big(f(y)\big)
    + \log\Big|\det \frac{\partial f}{\partial y}\Big| - \log q(u \mid x)\Big] - D \log \text{bins}

(Ho et al. 2019, eq. 12). :meth:`FlowPlusPlus.log_prob` is the one-sample estimate of the
right-hand side, so ``bits_per_dim`` is the dequantized bound in bits per (discrete) pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..nn import (
    ActNorm,
    FlowSequential,
    InvConv1x1,
    Logit,
    MixtureCDFCoupling,
    Squeeze,
    UniformDequantization,
    VariationalDequantization,
)
from ..ops._checks import check_int, check_int_sequence, check_real, check_widths
from ..ops.dequantize import check_integer_data
from .base import FlowModel, register

__all__ = ["FlowPlusPlus"]


@register("flowpp")
class FlowPlusPlus(FlowModel):
    r"""Flow++ on images ``(C, H, W)`` with ``bins`` integer levels per value.

    The flow :math:`f` (attribute ``flow``, a :class:`~fastgen.nn.FlowSequential`):

    1. :class:`~fastgen.nn.Logit` ``(alpha)``: ``y`` in ``(0, 1)`` onto the line (Flow++
       uses the plain logit, ``alpha = 0``; a small ``alpha`` keeps it finite where float32
       rounds ``y`` to 0 or 1).
    2. ``scales`` resolutions. The first works on the image as it is with checkerboard
       couplings (one channel is enough for them); each later one first squeezes by 2
       (:class:`~fastgen.nn.Squeeze`: ``(C, H, W) -> (4C, H/2, W/2)``) and then uses channel
       couplings. Each resolution has ``steps`` steps of Flow++'s
       :class:`~fastgen.nn.ActNorm`, :class:`~fastgen.nn.InvConv1x1` (run fused as one 1x1
       convolution; left out for one channel, which has nothing to mix) and
       :class:`~fastgen.nn.MixtureCDFCoupling`
       :math:`y_2 = \mathrm{logit}(F(y_2;\, \pi, \mu, s))\, e^{a} + b` with a
       ``components``-logistic mixture CDF :math:`F` per element, parities alternating so
       that every element is transformed. Nothing is factored out between resolutions (as
       in the paper), so the latent is ``(C 4^{scales-1}, H / 2^{scales-1}, W / 2^{scales-1})``.

    The dequantization (attribute ``dequantize``) is Flow++'s variational one
    (:class:`~fastgen.nn.VariationalDequantization`): Gaussian noise through
    ``dequant_steps`` checkerboard mixture couplings conditioned on the image, squashed by a
    sigmoid; ``dequant_steps = 0`` gives uniform dequantization instead (the paper's
    ablation).

    Simplified from the paper for small images: the coupling networks are the default
    :func:`~fastgen.nn.coupling.coupling_net` (3x3, 1x1 and 3x3 convolutions with
    ``hidden`` widths, the last one zero so that every coupling starts as the identity)
    instead of gated residual blocks with self-attention, and the dequantization flow sees
    the image itself instead of features of a separate network.

    Args:
        shape: ``(C, H, W)``; ``H`` and ``W`` multiples of ``2^{scales - 1}``.
        bins: the number of integer levels (256 for 8-bit images, 17 for the digits).
        scales: resolutions of the flow (see above), >= 1.
        steps: coupling steps per resolution, >= 1.
        hidden: the coupling networks' hidden widths.
        components: ``K``, logistics per mixture CDF.
        dequant_steps: couplings of the dequantization flow (0: uniform dequantization).
        alpha: the logit's margin, in ``[0, 0.5)``.

    Shape:
        ``x``: ``(B, C, H, W)`` integers in ``[0, bins)`` (any integer dtype, or floats
        holding integers); ``z``: ``(B, *latent_shape)``; samples come back long.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = FlowPlusPlus((1, 8, 8), bins=17, hidden=(16,), components=4)
        >>> x = torch.randint(0, 17, (5, 1, 8, 8))
        >>> z, log_terms = model.transform(x)
        >>> z.shape, log_terms.shape, model.latent_shape
        (torch.Size([5, 4, 4, 4]), torch.Size([5]), (4, 4, 4))
        >>> bool((model.inverse(z) == x).all())
        True
        >>> model.sample(3).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        shape: Sequence[int],
        bins: int = 256,
        *,
        scales: int = 2,
        steps: int = 4,
        hidden: Sequence[int] = (64, 64),
        components: int = 8,
        dequant_steps: int = 2,
        alpha: float = 0.05,
    ):
        super().__init__()
        name = type(self).__name__
        C, H, W = check_int_sequence(name, "shape", shape, minimum=1, length=3)
        self.bins = check_int(name, "bins", bins, minimum=2)
        self.scales = check_int(name, "scales", scales, minimum=1)
        steps = check_int(name, "steps", steps, minimum=1)
        hidden = check_widths(name, "hidden", hidden)
        check_int(name, "components", components, minimum=1)
        self.dequant_steps = check_int(name, "dequant_steps", dequant_steps, minimum=0)
        alpha = check_real(name, "alpha", alpha, at_least=0, below=0.5)
        factor = 2 ** (scales - 1)
        if H % factor or W % factor:
            raise ValueError(
                f"{name}: shape's height and width must be multiples of 2**(scales - 1) = {factor} "
                f"(one squeeze per resolution after the first), got shape {(C, H, W)} with scales={scales}"
            )
        self.event_shape = (C, H, W)
        self._latent_shape = (C * factor * factor, H // factor, W // factor)

        if dequant_steps:
            noise_flow = FlowSequential(
                *(
                    MixtureCDFCoupling(
                        C, hidden, components=components, parity=i % 2, image=True, cond_features=C
                    )
                    for i in range(dequant_steps)
                )
            )
            self.dequantize = VariationalDequantization(noise_flow, bins)
        else:
            self.dequantize = UniformDequantization(bins)

        layers: list[torch.nn.Module] = [Logit(alpha)]
        channels = C
        for scale in range(scales):
            if scale:
                layers.append(Squeeze())
                channels *= 4
            mask = "checkerboard" if scale == 0 else "channel"
            for step in range(steps):
                layers.append(ActNorm(channels))
                if channels > 1:  # one channel has nothing to mix: the 1x1 conv would be a second ActNorm scale
                    layers.append(InvConv1x1(channels))
                layers.append(
                    MixtureCDFCoupling(channels, hidden, components=components, mask=mask, parity=step % 2, image=True)
                )
        self.flow = FlowSequential(*layers)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self._latent_shape

    def extra_repr(self) -> str:
        return (
            f"shape={self.event_shape}, bins={self.bins}, scales={self.scales}, dequant_steps={self.dequant_steps}"
        )

    def check_data(self, x: object) -> torch.Tensor:
        """``x`` must be ``(B, *event_shape)`` integers in ``[0, bins)``; returned in the
        model's floating dtype."""
        name = type(self).__name__
        check_integer_data(name, "x", x, self.bins)
        if tuple(x.shape[1:]) != self.event_shape:
            want = ", ".join(map(str, self.event_shape))
            raise ValueError(f"{name}: x must have shape (B, {want}), got {tuple(x.shape)}")
        device, dtype = self._device_dtype()
        return x.to(device=device, dtype=dtype)

    def transform(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantizes ``x`` (noise from the global RNG) and maps it to ``z``; ``log_terms`` is
        ``log|det df/dy| - log q(u|x) - D log bins`` per example."""
        x = self.check_data(x)
        self._check_cond(cond, x.shape[0], self.cond_shape)
        if not x.shape[0]:  # no examples: nothing for the flow (nor a data-dependent init) to see
            return x.new_zeros(0, *self.latent_shape), x.new_zeros(0)
        y, log_dequant = self.dequantize(x)  # (B, C, H, W) in (0, 1)
        z, logdet = self.flow(y)  # (B, *latent_shape)
        return z, log_dequant + logdet

    def inverse(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``z (B, *latent_shape)`` to integer images ``(B, C, H, W)`` long: the flow inverted,
        then the bin of each value. Deterministic (nothing is factored out, so ``temperature``
        and ``generator`` have nothing left to draw)."""
        z = self.check_latent(z)
        self._check_cond(cond, z.shape[0], self.cond_shape)
        if not z.shape[0]:
            return z.new_zeros(0, *self.event_shape, dtype=torch.long)
        y, _ = self.flow.inverse(z)
        x, _ = self.dequantize.inverse(y)
        return x.long()
