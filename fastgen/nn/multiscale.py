r"""Multiscale flows (RealNVP, Dinh et al. 2017; Glow, Kingma & Dhariwal 2018): after each
level of flow layers but the last, half of the channels is factored out as a latent of its
own and only the other half flows on, so that deeper levels run on fewer dimensions.

- :class:`GaussianPrior`: a learned diagonal Gaussian written as the flow to its standard
  normal (Glow's learned top prior and split priors, class-conditional if asked).
- :class:`Split`: factors out half of the channels, standardized under its prior (a
  standard normal as in RealNVP, or a Gaussian given the kept half as in Glow).
- :class:`MultiscaleFlow`: levels of flows with a :class:`Split` between consecutive ones;
  it maps ``x`` to the list of every latent, each standard normal under the model.

Writing each prior as a standardization keeps the whole model one flow to independent
standard normals: its log-likelihood is the latents' standard normal log-density plus one
log-determinant, and sampling at temperature ``T`` scales the standard normals by ``T``
(``T = 0`` is the mode path: every factored-out half at its prior mean given the rest).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..ops import affine_coupling
from ..ops._checks import check_int, check_labels
from .flow import _check_input

__all__ = ["GaussianPrior", "MultiscaleFlow", "Split"]


def _check_shape(op: str, shape: object) -> tuple[int, int, int]:
    if not (isinstance(shape, Sequence) and len(shape) == 3):
        raise ValueError(f"{op}: shape must be (C, H, W), got {shape!r}")
    for name, n in zip("CHW", shape):
        check_int(op, f"shape's {name}", n, minimum=1)
    return tuple(shape)  # type: ignore[return-value]


class GaussianPrior(nn.Module):
    r"""A learned diagonal Gaussian over ``(C, H, W)`` tensors,
    :math:`\mathcal N(\mu, \operatorname{diag} \sigma^2)`, as the flow that standardizes it:

    .. math::

        \epsilon = (z - \mu)\, e^{-\log\sigma}, \qquad
        \log|\det \partial\epsilon/\partial z| = -\textstyle\sum \log\sigma, \qquad
        (\mu, \log\sigma) = b + \mathrm{conv}(h) + e[y]

    with ``b`` learned per element, ``conv`` a 3x3 convolution of a context ``h`` (the kept
    half at a Glow split; absent without ``context_channels``) and ``e[y]`` a learned
    per-class, per-channel offset (absent without ``num_classes``). All start at zero: the
    prior starts standard normal. The standardization and its inverse are the fused
    :func:`fastgen.ops.affine_coupling` (``y = (z - \mu) / \sigma``, and back).

    Args:
        shape: ``(C, H, W)`` of ``z``.
        context_channels: channels of the context ``h`` ``(B, K, H, W)``, 0 for none.
        num_classes: number of class labels ``y`` ``(B,)`` long, or None.

    Shape:
        ``forward(z, cond=None, context=None) -> (eps, logdet)`` and
        ``inverse(eps, cond=None, context=None) -> (z, logdet)``: ``(B, C, H, W)`` both
        ways, logdet ``(B,)``; ``cond`` the labels.

    Example:
        >>> prior = GaussianPrior((2, 4, 4), num_classes=3)
        >>> eps, logdet = prior(torch.randn(5, 2, 4, 4), torch.tensor([0, 1, 2, 0, 1]))
    """

    def __init__(self, shape: Sequence[int], *, context_channels: int = 0, num_classes: int | None = None):
        super().__init__()
        op = type(self).__name__
        self.shape = _check_shape(op, shape)
        self.context_channels = check_int(op, "context_channels", context_channels, minimum=0)
        if num_classes is not None:
            check_int(op, "num_classes", num_classes, minimum=1)
        self.num_classes = num_classes
        c = self.shape[0]
        self.bias = nn.Parameter(torch.zeros(2 * c, *self.shape[1:]))  # (mu, log sigma) per element
        self.conv = nn.Conv2d(context_channels, 2 * c, 3, padding=1, bias=False) if context_channels else None
        self.class_offset = nn.Embedding(num_classes, 2 * c) if num_classes else None
        for p in self.parameters():
            nn.init.zeros_(p)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, context_channels={self.context_channels}, num_classes={self.num_classes}"

    def mean_log_std(
        self, batch: int, cond: torch.Tensor | None, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`(\mu, \log\sigma)`, each ``(B, C, H, W)`` (the bias part broadcast over the batch)."""
        op = type(self).__name__
        params = self.bias.expand(batch, *self.bias.shape)
        if self.conv is not None:
            if context is None or tuple(context.shape) != (batch, self.context_channels, *self.shape[1:]):
                got = None if context is None else tuple(context.shape)
                raise ValueError(f"{op}: context must have shape {(batch, self.context_channels, *self.shape[1:])}, got {got}")
            params = params + self.conv(context)
        if self.class_offset is not None:
            if cond is None:
                raise ValueError(f"{op}: cond must be class labels of shape ({batch},), got None")
            cond = check_labels(op, "cond", cond, self.num_classes, batch)
            params = params + self.class_offset(cond)[:, :, None, None]
        return params.chunk(2, dim=1)

    def _transform(self, x, cond, context, inverse: bool, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        _check_input(self, name, x, (4,))
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{type(self).__name__}: {name} must have shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        mean, log_std = self.mean_log_std(x.shape[0], cond, context)
        # The op's forward is x * s + t: the map from standard normal to this Gaussian.
        return affine_coupling(x, mean, log_std, inverse=not inverse)

    def forward(
        self, z: torch.Tensor, cond: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(z, cond, context, False, "z")

    def inverse(
        self, eps: torch.Tensor, cond: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(eps, cond, context, True, "eps")


class Split(nn.Module):
    r"""Factors out half of the channels of ``(B, C, H, W)``: the first ``C - C // 2``
    channels are kept (they flow on) and the last ``C // 2`` become a latent, returned
    standardized under its prior:

    - ``learned_prior=False`` (RealNVP): a standard normal, the latent as it is (logdet 0);
    - ``learned_prior=True`` (Glow): :math:`\mathcal N(\mu(h), \sigma(h)^2)` given the kept
      half ``h`` (a :class:`GaussianPrior` with a 3x3 convolution of ``h``, and a per-class
      offset with ``num_classes``), standardized with logdet :math:`-\sum \log\sigma`.

    Args:
        shape: ``(C, H, W)`` of the input, ``C >= 2``.
        learned_prior: see above.
        num_classes: with ``learned_prior``: the prior also depends on the class label.

    Shape:
        ``forward(x, cond=None) -> (kept, eps, logdet)``: ``(B, C - C//2, H, W)``,
        ``(B, C//2, H, W)``, ``(B,)``; ``inverse(kept, eps, cond=None) -> (x, logdet)``.

    Example:
        >>> split = Split((4, 2, 2), learned_prior=True)
        >>> kept, eps, logdet = split(torch.randn(3, 4, 2, 2))
        >>> x, inv_logdet = split.inverse(kept, eps)
    """

    def __init__(self, shape: Sequence[int], *, learned_prior: bool = False, num_classes: int | None = None):
        super().__init__()
        op = type(self).__name__
        c, h, w = self.shape = _check_shape(op, shape)
        if c < 2:
            raise ValueError(f"{op}: shape's C must be >= 2 to split the channels, got {c}")
        if num_classes is not None and not learned_prior:
            raise ValueError(f"{op}: num_classes needs learned_prior=True (a standard normal has no class)")
        self.kept = c - c // 2
        self.prior = (
            GaussianPrior((c // 2, h, w), context_channels=self.kept, num_classes=num_classes) if learned_prior else None
        )

    def extra_repr(self) -> str:
        return f"shape={self.shape}"

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check_input(self, "x", x, (4,))
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"Split: x must have shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        kept, out = x[:, : self.kept], x[:, self.kept :]
        if self.prior is None:
            return kept, out, x.new_zeros(x.shape[0])
        eps, logdet = self.prior(out, cond, kept)
        return kept, eps, logdet

    def inverse(
        self, kept: torch.Tensor, eps: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_input(self, "kept", kept, (4,))
        if self.prior is None:
            out, logdet = eps, kept.new_zeros(kept.shape[0])
        else:
            out, logdet = self.prior.inverse(eps, cond, kept)
        return torch.cat([kept, out], dim=1), logdet


class MultiscaleFlow(nn.Module):
    r"""Flow levels with a :class:`Split` after each but the last:

    .. math::

        h_1 = f_1(x), \quad (h_1', \epsilon_1) = \mathrm{split}_1(h_1), \quad
        h_2 = f_2(h_1'), \quad \dots, \quad z = f_L(h_{L-1}')

    ``forward`` returns every latent ``[eps_1, ..., eps_{L-1}, z]`` and the log-determinant
    of the whole map (the levels' and the splits' standardizations), so that
    :math:`\log p(x) = \sum_i \log \mathcal N(\epsilon_i; 0, I) + \log \mathcal N(z; 0, I) + \text{logdet}`
    when every latent's base is standard normal. ``cond`` goes to every level and split.

    Args:
        levels: ``L`` flow modules (e.g. :class:`~fastgen.nn.FlowSequential`).
        splits: ``L - 1`` :class:`Split` layers.

    Shape:
        ``forward(x, cond=None) -> (latents, logdet)``: a list of ``L`` tensors, ``(B,)``;
        ``inverse(latents, cond=None) -> (x, logdet)``, the logdet of the inverse map.

    Example:
        >>> from fastgen.nn import AffineCoupling, FlowSequential, Squeeze
        >>> level = lambda c: FlowSequential(Squeeze(), AffineCoupling(4 * c, [8], mask="channel", image=True))
        >>> flow = MultiscaleFlow([level(1), level(2)], [Split((4, 2, 2))])
        >>> latents, logdet = flow(torch.randn(3, 1, 4, 4))
        >>> [tuple(t.shape) for t in latents]
        [(3, 2, 2, 2), (3, 8, 1, 1)]
        >>> x, inv_logdet = flow.inverse(latents)
    """

    def __init__(self, levels: Sequence[nn.Module], splits: Sequence[Split]):
        super().__init__()
        if not levels or len(splits) != len(levels) - 1:
            raise ValueError(
                f"MultiscaleFlow: needs at least one level and one split fewer than levels, "
                f"got {len(levels)} levels and {len(splits)} splits"
            )
        if not all(isinstance(s, Split) for s in splits):
            raise TypeError("MultiscaleFlow: splits must be Split layers")
        self.levels, self.splits = nn.ModuleList(levels), nn.ModuleList(splits)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        latents = []
        x, logdet = self.levels[0](x, cond)
        for split, level in zip(self.splits, self.levels[1:]):
            x, eps, ld_split = split(x, cond)
            x, ld_level = level(x, cond)
            latents.append(eps)
            logdet = logdet + ld_split + ld_level
        return [*latents, x], logdet

    def inverse(self, latents: Sequence[torch.Tensor], cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if len(latents) != len(self.levels):
            raise ValueError(f"MultiscaleFlow.inverse: needs {len(self.levels)} latents, got {len(latents)}")
        x, logdet = self.levels[-1].inverse(latents[-1], cond)
        for i in reversed(range(len(self.splits))):
            x, ld_split = self.splits[i].inverse(x, latents[i], cond)
            x, ld_level = self.levels[i].inverse(x, cond)
            logdet = logdet + ld_split + ld_level
        return x, logdet
