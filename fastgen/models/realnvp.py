r"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP"): a flow
of affine coupling layers, on vectors (tabular or 2-D data) or, multiscale, on images."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..nn import ActNorm, AffineCoupling, FlowSequential, Logit, MultiscaleFlow, Split, Squeeze, resnet_coupling_net
from ..ops._checks import check_bool, check_int, check_real
from .base import register
from .multiscale_flow import MultiscaleFlowModel

__all__ = ["RealNVP"]


@register("realnvp")
class RealNVP(MultiscaleFlowModel):
    r"""RealNVP (Dinh et al. 2017): affine coupling layers

    .. math::

        y_{\text{pass}} = x_{\text{pass}}, \qquad
        y_{\text{rest}} = x_{\text{rest}} \odot e^{\,a \tanh r(x_{\text{pass}})} + t(x_{\text{pass}}),
        \qquad \log|\det J| = \textstyle\sum a \tanh r

    (:class:`~fastgen.nn.AffineCoupling` with ``scale="exp"``: the log-scale bounded by a
    learned per-channel ``a``), each followed by an :class:`~fastgen.nn.ActNorm` (the
    data-initialized affine layer that stands in for the paper's batch normalization: no
    batch statistics, so a batch's likelihoods do not depend on each other), and a
    standard normal base: :math:`\log p(x) = \log \mathcal N(f(x)) + \log|\det J_f(x)|`.

    One class, two architectures, chosen by ``shape``:

    - **vectors** ``(D,)`` (tabular or 2-D toy data, real-valued): ``couplings`` couplings
      whose masks alternate between the two halves of the vector (parity 0 transforms the
      last ``D - D // 2`` entries given the first ``D // 2``, parity 1 the reverse; the
      even/odd masks of the paper's 2-D figures up to a fixed permutation of the entries,
      with networks of half the width of a masked input), each network an MLP of
      ``blocks`` hidden layers of ``hidden`` units.
    - **images** ``(C, H, W)`` (multiscale): logit preprocessing
      :math:`\mathrm{logit}(\alpha + (1 - 2\alpha) y)` of the data ``y`` in ``[0, 1]``, then
      ``scales`` scales. Each scale but the last: ``couplings`` checkerboard couplings of
      alternating parity, a squeeze (``(C, H, W) -> (4C, H/2, W/2)``), ``couplings``
      channel couplings of alternating parity, and half of the channels factored out as a
      standard normal latent (:class:`~fastgen.nn.Split`); the last scale:
      ``couplings + 1`` checkerboard couplings. The paper's CIFAR-10 model is
      ``couplings=3``. Each network is a ResNet (:func:`~fastgen.nn.resnet_coupling_net`)
      of ``blocks`` residual blocks of ``hidden`` channels. With ``bins``, integer images
      are dequantized first, :math:`y = (x + u) / \text{bins}`, :math:`u \sim U[0,1)`, the
      ``-D log bins`` in the log-likelihood, so that :meth:`bits_per_dim` of integer
      images is the standard dequantized figure.

    ``transform`` returns the final latent ``z`` (the last scale's) and accounts the
    factored-out latents' standard normal densities in its log terms; ``inverse`` draws
    them (scaled by the temperature). The continuous part, from the dequantized data to
    every latent, is ``model.flow`` (:class:`~fastgen.nn.MultiscaleFlow`).

    Args:
        shape: ``(D,)`` with ``D >= 2``, or ``(C, H, W)`` with ``H`` and ``W`` multiples
            of ``2 ** (scales - 1)``.
        hidden: the width of every coupling network (MLP units or ResNet channels).
        blocks: MLP hidden layers (vectors, ``>= 1``) or residual blocks (images, ``>= 0``).
        couplings: vectors: the number of couplings (default 8); images: the couplings of
            each group (default 3, the paper's).
        scales: images only: the number of scales (default 2).
        bins: images only: the integer values of the data (e.g. 256), or None for
            continuous data in ``[0, 1]``.
        alpha: images only: the logit's margin, in ``[0, 0.5)`` (the paper's 0.05).
        actnorm: an ActNorm after each coupling.

    Shape:
        ``x``: ``(B, D)`` floating (the model's dtype); images ``(B, C, H, W)``, integers in
        ``[0, bins)`` (any integer or floating dtype) or, without ``bins``, floats in
        ``[0, 1]``. ``log_prob``: ``(B,)``. ``sample``: ``x``'s shape (long with ``bins``;
        continuous images clamped to ``[0, 1]``, which the logit's inverse slightly exceeds).

    Example:
        >>> import torch
        >>> model = RealNVP((2,), hidden=32, couplings=4)
        >>> x = model.sample(5, generator=torch.Generator().manual_seed(0))
        >>> x.shape, model.log_prob(x).shape
        (torch.Size([5, 2]), torch.Size([5]))
        >>> images = RealNVP((1, 8, 8), hidden=8, blocks=1, couplings=2, scales=2, bins=17)
        >>> x = images.sample(3)
        >>> x.shape, x.dtype, bool(x.max() < 17)
        (torch.Size([3, 1, 8, 8]), torch.int64, True)
        >>> images.bits_per_dim(x).shape
        torch.Size([])
    """

    def __init__(
        self,
        shape: Sequence[int],
        hidden: int = 64,
        blocks: int = 2,
        couplings: int | None = None,
        scales: int | None = None,
        bins: int | None = None,
        alpha: float = 0.05,
        actnorm: bool = True,
    ):
        op = type(self).__name__
        shape = self.check_config(op, shape, (1, 3), bins, None)
        image = len(shape) == 3
        check_int(op, "hidden", hidden, minimum=1)
        check_int(op, "blocks", blocks, minimum=0 if image else 1)
        couplings = check_int(op, "couplings", (3 if image else 8) if couplings is None else couplings, minimum=1)
        check_bool(op, "actnorm", actnorm)
        alpha = check_real(op, "alpha", alpha, at_least=0, below=0.5)
        if not image:
            if shape[0] < 2:
                raise ValueError(f"{op}: vectors need D >= 2 (a coupling splits them in two), got shape {shape}")
            for name, value in (("scales", scales), ("bins", bins)):
                if value is not None:
                    raise ValueError(f"{op}: {name} applies to images (C, H, W) only; shape is {shape}")
            flow, latent_shapes = self._vector_flow(shape[0], hidden, blocks, couplings, actnorm), [shape]
        else:
            scales = check_int(op, "scales", 2 if scales is None else scales, minimum=1)
            if shape[1] % 2 ** (scales - 1) or shape[2] % 2 ** (scales - 1):
                raise ValueError(
                    f"{op}: H and W must be multiples of 2 ** (scales - 1) = {2 ** (scales - 1)}, got shape {shape}"
                )
            flow, latent_shapes = self._image_flow(shape, hidden, blocks, couplings, scales, alpha, actnorm)
        super().__init__(shape, flow, latent_shapes, bins=bins, num_classes=None,
                         data_interval=(0.0, 1.0) if image and bins is None else None)
        self.hidden, self.blocks, self.couplings, self.scales, self.alpha = hidden, blocks, couplings, scales, alpha

    @staticmethod
    def _coupled(coupling: AffineCoupling, actnorm: bool) -> list[nn.Module]:
        return [coupling, ActNorm(coupling.channels)] if actnorm else [coupling]

    @classmethod
    def _vector_flow(cls, dim: int, hidden: int, blocks: int, couplings: int, actnorm: bool) -> MultiscaleFlow:
        layers = []
        for i in range(couplings):
            layers += cls._coupled(AffineCoupling(dim, [hidden] * blocks, mask="channel", parity=i % 2), actnorm)
        return MultiscaleFlow([FlowSequential(*layers)], [])

    @classmethod
    def _image_flow(
        cls, shape: tuple[int, int, int], hidden: int, blocks: int, couplings: int, scales: int, alpha: float, actnorm: bool
    ) -> tuple[MultiscaleFlow, list[tuple[int, int, int]]]:
        def group(channels: int, mask: str, n: int) -> list[nn.Module]:
            net = lambda i, o: resnet_coupling_net(i, o, hidden, blocks)  # noqa: E731
            layers = []
            for i in range(n):
                coupling = AffineCoupling(channels, net, mask=mask, parity=i % 2, image=True)
                layers += cls._coupled(coupling, actnorm)
            return layers

        c, h, w = shape
        levels, splits, latent_shapes = [], [], []
        for scale in range(scales):
            layers: list[nn.Module] = [Logit(alpha)] if scale == 0 else []
            if scale == scales - 1:
                levels.append(FlowSequential(*layers, *group(c, "checkerboard", couplings + 1)))
                break
            c, h, w = 4 * c, h // 2, w // 2
            layers += [*group(c // 4, "checkerboard", couplings), Squeeze(), *group(c, "channel", couplings)]
            levels.append(FlowSequential(*layers))
            splits.append(Split((c, h, w)))
            latent_shapes.append((c // 2, h, w))
            c -= c // 2
        return MultiscaleFlow(levels, splits), [*latent_shapes, (c, h, w)]
