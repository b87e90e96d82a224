r"""Glow (Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1x1 Convolutions"):
a multiscale flow of ActNorm, invertible 1x1 convolution and affine coupling steps, with
learned priors for the latents it factors out, optionally class-conditional."""

from __future__ import annotations

from collections.abc import Sequence

from ..nn import ActNorm, AffineCoupling, FlowSequential, GaussianPrior, InvConv1x1, Logit, MultiscaleFlow, Split, Squeeze
from ..ops._checks import check_int, check_real
from .base import register
from .multiscale_flow import MultiscaleFlowModel

__all__ = ["Glow"]


@register("glow")
class Glow(MultiscaleFlowModel):
    r"""Glow (Kingma & Dhariwal 2018) over images ``(C, H, W)``.

    Each of the ``levels`` levels squeezes (``(C, H, W) -> (4C, H/2, W/2)``) and runs
    ``depth`` steps of flow, each

    .. math::

        h \mapsto (h + \mu) \odot e^{\ell} \;\text{(ActNorm)}, \qquad
        h \mapsto W h \;\text{(1x1 conv, } W = P L (U + \operatorname{diag}(s\, e^{\lambda}))\text{)},

        (h_a, h_b) \mapsto \big(h_a,\; h_b \odot \sigma(r(h_a) + 2) + t(h_a)\big)
        \;\text{(affine coupling)}

    (:class:`~fastgen.nn.ActNorm`, :class:`~fastgen.nn.InvConv1x1` with the LU
    parametrization, :math:`\log|\det W| = \sum \lambda`, so ``W`` stays invertible whatever
    the optimizer does, and :class:`~fastgen.nn.AffineCoupling` with ``scale="sigmoid"`` and
    Glow's network: 3x3 conv, ReLU, 1x1 conv, ReLU, zero 3x3 conv, ``hidden`` channels;
    :class:`~fastgen.nn.FlowSequential` runs each ActNorm + 1x1 conv pair as one
    convolution). After each level but the last, half of the channels ``z_2`` is factored
    out with a learned prior given the other half,
    :math:`z_2 \sim \mathcal N(\mu(z_1), \sigma(z_1)^2)` (a zero-initialized 3x3 conv of
    :math:`z_1`; :class:`~fastgen.nn.Split`); the last level's output has a learned
    diagonal Gaussian prior (:class:`~fastgen.nn.GaussianPrior`, Glow's ``learntop``). With
    ``num_classes`` both priors get a learned per-class offset of their
    :math:`(\mu, \log\sigma)`: :math:`p(x \mid y)`, class labels as ``cond``.

    Every prior is written as the standardization :math:`\epsilon = (z - \mu)/\sigma` inside
    the flow, so the latents are all standard normal: ``transform`` returns the top one
    (``latent_shape``) and accounts the others in its log terms; ``inverse`` draws them,
    :math:`\epsilon \sim \mathcal N(0, T^2 I)` at temperature ``T``. ``T = 0`` is the mode
    path, deterministically: the top latent at its prior mean and every factored-out half at
    its prior mean given the rest.

    With ``bins``, integer images are dequantized, :math:`(x + u)/\text{bins}`,
    :math:`u \sim U[0, 1)` (the paper's data in ``[-1/2, 1/2]`` less the shift, which the
    first ActNorm's data initialization absorbs), with ``-D log bins`` in the
    log-likelihood, so that :meth:`bits_per_dim` is the standard dequantized figure. With
    ``alpha``, the data in ``[0, 1]`` first goes through RealNVP's logit preprocessing
    :math:`\mathrm{logit}(\alpha + (1 - 2\alpha) y)` (as common Glow implementations do: on
    the 17-level digits, 12 epochs reach about 2.25 test bits/dim with it, 2.5 without). The continuous part, from the dequantized data to every latent, is
    ``model.flow``.

    Args:
        shape: ``(C, H, W)``; ``H`` and ``W`` multiples of ``2 ** levels``.
        levels: ``L``, the number of levels (squeezes), ``>= 1``.
        depth: ``K``, steps of flow per level, ``>= 1``.
        hidden: channels of the coupling networks.
        num_classes: class-conditional with this many classes (labels ``(B,)`` long), or None.
        bins: the integer values of the data (e.g. 256), or None for continuous data.
        alpha: the logit preprocessing's margin in ``[0, 0.5)`` (RealNVP's 0.05), or None
            for none (the paper).

    Shape:
        ``x``: ``(B, C, H, W)``, integers in ``[0, bins)`` (any integer or floating dtype)
        or, without ``bins``, floats of the model's dtype, finite (in ``[0, 1]`` with
        ``alpha``); ``log_prob``: ``(B,)``;
        ``sample``: ``x``'s shape (long with ``bins``).

    Example:
        >>> import torch
        >>> model = Glow((1, 8, 8), levels=2, depth=2, hidden=16, num_classes=10, bins=17)
        >>> x = model.sample(4, cond=torch.tensor([0, 1, 2, 3]), temperature=0.7)
        >>> x.shape, x.dtype, model.latent_shape
        (torch.Size([4, 1, 8, 8]), torch.int64, (8, 2, 2))
        >>> model.log_prob(x, torch.tensor([0, 1, 2, 3])).shape
        torch.Size([4])
    """

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        depth: int,
        hidden: int,
        num_classes: int | None = None,
        bins: int | None = None,
        alpha: float | None = None,
    ):
        op = type(self).__name__
        shape = self.check_config(op, shape, (3,), bins, num_classes)
        check_int(op, "levels", levels, minimum=1)
        check_int(op, "depth", depth, minimum=1)
        check_int(op, "hidden", hidden, minimum=1)
        if alpha is not None:
            alpha = check_real(op, "alpha", alpha, at_least=0, below=0.5)
        c, h, w = shape
        if h % 2**levels or w % 2**levels:
            raise ValueError(f"{op}: H and W must be multiples of 2 ** levels = {2**levels}, got shape {shape}")

        flow_levels, splits, latent_shapes = [], [], []
        for level in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            steps = [
                FlowSequential(
                    ActNorm(c),
                    InvConv1x1(c),
                    AffineCoupling(c, [hidden, hidden], mask="channel", scale="sigmoid", image=True),
                )
                for _ in range(depth)
            ]
            first = [Logit(alpha)] if level == 0 and alpha is not None else []
            if level == levels - 1:
                top = GaussianPrior((c, h, w), num_classes=num_classes)
                flow_levels.append(FlowSequential(*first, Squeeze(), *steps, top))
            else:
                flow_levels.append(FlowSequential(*first, Squeeze(), *steps))
                splits.append(Split((c, h, w), learned_prior=True, num_classes=num_classes))
                latent_shapes.append((c // 2, h, w))
                c -= c // 2
        super().__init__(
            shape,
            MultiscaleFlow(flow_levels, splits),
            [*latent_shapes, (c, h, w)],
            bins=bins,
            num_classes=num_classes,
            data_interval=(0.0, 1.0) if alpha is not None and bins is None else None,
        )
        self.levels, self.depth, self.hidden, self.alpha = levels, depth, hidden, alpha
