r"""Coupling layers (NICE, Dinh et al. 2014; RealNVP, Dinh et al. 2017; Glow, Kingma &
Dhariwal 2018): half of the input passes through unchanged and parametrizes an element-wise
transform of the other half, so the Jacobian is triangular and both directions cost one
network evaluation.

.. math::

    y_{\text{pass}} = x_{\text{pass}}, \qquad
    y_{\text{rest}} = x_{\text{rest}} \odot s(x_{\text{pass}}) + t(x_{\text{pass}}), \qquad
    \log|\det J| = \textstyle\sum \log s

The halves are a checkerboard (alternate pixels of an image, alternate entries of a vector)
or a channel split (first or second half of the channels). ``parity`` says which half
passes through, so that two layers of opposite parity transform everything. The
element-wise transform and its log-determinant reduction are one fused op,
:func:`fastgen.ops.affine_coupling`. The flow contract is that of :mod:`fastgen.nn.flow`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..ops import affine_coupling
from ..ops.affine_coupling_mlp import run as run_affine_coupling_mlp
from ..ops._checks import check_choice, check_int, check_int_sequence, check_same_device
from ..ops.affine_coupling import SCALES
from ..ops.mixture_cdf import KINDS
from .mixture_flow import mixture_logit_flow

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "MixtureCDFCoupling",
    "checkerboard_mask",
    "coupling_net",
    "resnet_coupling_net",
]

NetFactory = Callable[[int, int], nn.Module]
# |log-scale| of MixtureCDFCoupling's components stays below this (scales in [e^-7, e^7]).
COMPONENT_LOG_SCALE_BOUND = 7.0
# Glow's sigmoid scale sigma(r + 2) takes r no lower than this: s >= e^-15 stays well above
# float32's smallest normal, so the forward never rounds s (and with it x) to 0.
_SIGMOID_RAW_FLOOR = -17.0


def checkerboard_mask(shape: Sequence[int], parity: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """1 where an element passes through: ``(h + w) % 2 == parity`` for an image shape
    ``(C, H, W)`` (returned as ``(1, H, W)``), ``d % 2 == parity`` for a vector shape ``(D,)``."""
    if len(shape) == 3:
        h = torch.arange(shape[1], device=device)[:, None]
        w = torch.arange(shape[2], device=device)[None, :]
        return ((h + w) % 2 == parity).to(dtype)[None]
    return (torch.arange(shape[0], device=device) % 2 == parity).to(dtype)


def coupling_net(in_features: int, out_features: int, hidden: Sequence[int], *, image: bool) -> nn.Module:
    """The default coupling network: an MLP (vectors) or 3x3 / 1x1 / 3x3 convolutions
    (images, as in Glow) with ReLUs between, the last layer zero so that the layer starts as
    the identity."""
    op = "coupling_net"
    check_int(op, "in_features", in_features, minimum=1)
    check_int(op, "out_features", out_features, minimum=1)
    if not hidden:
        raise ValueError(f"{op}: hidden must name at least one layer width")
    check_int_sequence(op, "hidden", hidden, minimum=1)
    layers: list[nn.Module] = []
    width = in_features
    for i, h in enumerate(hidden):
        kernel = 3 if i == 0 else 1
        layers += [nn.Conv2d(width, h, kernel, padding=kernel // 2) if image else nn.Linear(width, h), nn.ReLU()]
        width = h
    last = nn.Conv2d(width, out_features, 3, padding=1) if image else nn.Linear(width, out_features)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class _ResidualBlock(nn.Module):
    """``x + conv(ReLU(conv(ReLU(x))))`` with 3x3 convolutions of ``channels``."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def resnet_coupling_net(in_features: int, out_features: int, hidden: int, blocks: int) -> nn.Module:
    """RealNVP's coupling network for images (Dinh et al. 2017, without its batch and weight
    normalization): a 3x3 convolution to ``hidden`` channels, ``blocks`` residual blocks of two
    3x3 convolutions, a ReLU and a 3x3 convolution to ``out_features``, that last one zero so
    that the layer starts as the identity. ``(B, in_features, H, W) -> (B, out_features, H, W)``."""
    op = "resnet_coupling_net"
    check_int(op, "in_features", in_features, minimum=1)
    check_int(op, "out_features", out_features, minimum=1)
    check_int(op, "hidden", hidden, minimum=1)
    check_int(op, "blocks", blocks, minimum=0)
    last = nn.Conv2d(hidden, out_features, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(in_features, hidden, 3, padding=1), *(_ResidualBlock(hidden) for _ in range(blocks)), nn.ReLU(), last
    )


class _Coupling(nn.Module):
    """Shared by the couplings: the split, the network call and both directions."""

    def __init__(
        self,
        channels: int,
        net: NetFactory | Sequence[int],
        *,
        mask: str,
        parity: int,
        image: bool,
        cond_features: int,
        outputs_per_element: int,
    ):
        super().__init__()
        name = type(self).__name__
        check_choice(name, "mask", mask, ("checkerboard", "channel"))
        # A checkerboard splits an image's pixels, so one channel is enough (grey images);
        # a channel split, or a checkerboard over a vector's entries, needs two.
        check_int(name, "channels", channels, minimum=1 if mask == "checkerboard" and image else 2)
        check_int(name, "cond_features", cond_features, minimum=0)
        if parity not in (0, 1):
            raise ValueError(f"{name}: parity must be 0 or 1, got {parity!r}")
        self.channels, self.mask, self.parity, self.image = channels, mask, parity, bool(image)
        self.cond_features = cond_features
        half = channels // 2  # the channel split is always there; parity picks the side that passes
        if mask == "channel":
            n_in = half if parity == 0 else channels - half
            n_out = channels - n_in
        else:
            n_in = n_out = channels
        self.transformed = n_out
        factory = net if callable(net) else lambda i, o: coupling_net(i, o, list(net), image=self.image)
        self.net = factory(n_in + cond_features, outputs_per_element * n_out)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mask={self.mask!r}, parity={self.parity}, image={self.image}"

    def _init_log_scale_bound(self) -> None:
        """A learned per-channel bound ``a`` (started at 1) for :meth:`_bounded`."""
        self.log_scale_bound = nn.Parameter(torch.ones(self.transformed, *([1, 1] if self.image else [])))

    def _bounded(self, raw: torch.Tensor) -> torch.Tensor:
        """``a * tanh(raw)``: a log-scale that no network output can push past ``|a|``."""
        return self.log_scale_bound * torch.tanh(raw)

    def _check(self, x: object, name: str) -> torch.Tensor:
        cls = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{cls}: {name} must be a Tensor, got {type(x).__name__}")
        want = "(B, C, H, W)" if self.image else "(B, D)"
        if x.dim() != (4 if self.image else 2) or x.shape[1] != self.channels:
            raise ValueError(f"{cls}: {name} must be {want} with {self.channels} channels, got {tuple(x.shape)}")
        self._check_dtype(**{name: x})
        return x

    def _check_dtype(self, **tensors: torch.Tensor) -> None:
        """The inputs must have the layer's dtype and device (those of its first parameter)."""
        param = next(self.parameters(), None)
        if param is not None:
            check_same_device(type(self).__name__, "the layer", param, **tensors)

    def _params(self, x_pass: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if self.cond_features:
            k, spatial = self.cond_features, tuple(x_pass.shape[2:])
            shapes = [(x_pass.shape[0], k)] + ([(x_pass.shape[0], k, *spatial)] if self.image else [])
            if cond is None or tuple(cond.shape) not in shapes:
                got = None if cond is None else tuple(cond.shape)
                want = " or ".join(str(s) for s in shapes)
                raise ValueError(f"{type(self).__name__}: cond must have shape {want}, got {got}")
            self._check_dtype(cond=cond)
            if cond.dim() == 2 and self.image:
                cond = cond[:, :, None, None].expand(-1, -1, *spatial)
            x_pass = torch.cat([x_pass, cond], dim=1)
        return self.net(x_pass)

    def _transform(self, x: torch.Tensor, cond: torch.Tensor | None, inverse: bool):
        self._check(x, "y" if inverse else "x")
        if self.mask == "checkerboard":
            mask = checkerboard_mask(x.shape[1:], self.parity, device=x.device, dtype=x.dtype)
            # The passed half is the same on both sides of the map: the inverse's network
            # sees the forward's input.
            return self._elementwise(x, self._params(x * mask, cond), mask, inverse)
        first, second = x[:, : self.channels // 2], x[:, self.channels // 2 :]
        x_pass, x_rest = (first, second) if self.parity == 0 else (second, first)
        y_rest, logdet = self._elementwise(x_rest, self._params(x_pass, cond), None, inverse)
        return torch.cat([x_pass, y_rest] if self.parity == 0 else [y_rest, x_pass], dim=1), logdet

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(x, cond, False)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(y, cond, True)


class AffineCoupling(_Coupling):
    r"""Affine coupling (RealNVP with ``scale="exp"``, Glow with ``scale="sigmoid"``):
    :math:`y = x \odot s + t` on the transformed half, ``(t, \log s)`` from a network of the
    passed half (and ``cond``).

    With ``scale="exp"`` the network's raw log-scale ``r`` is stabilized as
    :math:`\log s = a \tanh(r)` with a learned per-channel ``a`` (started at 1), so that no
    input can make the scale (or the inverse's ``1/s``) overflow; with ``"sigmoid"``,
    :math:`s = \sigma(\max(r, -17) + 2) \in (e^{-15}, 1)`: bounded above by the sigmoid, and
    below so that ``s`` never rounds to 0, which would lose ``x`` (the inverse's
    ``(y - t) / s`` a 0/0).

    Args:
        channels: ``C`` (images) or ``D`` (vectors): at least 2, or 1 for a checkerboard
            over images.
        net: a factory ``(in_features, out_features) -> nn.Module`` (its output has
            ``2 x`` the transformed channels: shifts then raw log-scales), or the hidden
            widths of the default :func:`coupling_net`.
        mask: ``"checkerboard"`` or ``"channel"``.
        parity: 0 or 1, which half passes through (checkerboard: elements with
            ``(h + w) % 2 == parity``; channel: parity 0 passes the first ``C // 2`` channels
            and transforms the rest; parity 1 passes the last ``C - C // 2`` and transforms
            the first ``C // 2``).
        scale: ``"exp"`` or ``"sigmoid"``.
        image: inputs are ``(B, C, H, W)`` (else ``(B, D)``).
        cond_features: ``K``, the channels of a conditioning input fed to the network with
            the passed half (0: none): ``(B, K)``, or ``(B, K, H, W)`` for images.

    Example:
        >>> layer = AffineCoupling(4, [64, 64], mask="checkerboard", parity=0, image=True)
        >>> y, logdet = layer(torch.randn(8, 4, 6, 6))
        >>> x, inv_logdet = layer.inverse(y)
    """

    def __init__(
        self,
        channels: int,
        net: NetFactory | Sequence[int] = (64, 64),
        *,
        mask: str = "checkerboard",
        parity: int = 0,
        scale: str = "exp",
        image: bool = False,
        cond_features: int = 0,
    ):
        check_choice(type(self).__name__, "scale", scale, SCALES)
        super().__init__(
            channels, net, mask=mask, parity=parity, image=image, cond_features=cond_features, outputs_per_element=2
        )
        self.scale = scale
        if scale == "exp":
            self._init_log_scale_bound()

    def _mlp(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """The network's ``(weights, biases)`` when the whole layer is one
        :func:`~fastgen.ops.affine_coupling_mlp` (a vector channel split with the exp scale, no
        conditioning, and the network an MLP of Linear layers with ReLUs between, as the
        default :func:`coupling_net`), else None."""
        if self.image or self.mask != "channel" or self.scale != "exp" or self.cond_features:
            return None
        if type(self.net) is not nn.Sequential:
            return None
        weights, biases, linear = [], [], True
        for module in self.net._modules.values():
            if linear and type(module) is nn.Linear and module.bias is not None:
                weights.append(module.weight)
                biases.append(module.bias)
            elif linear or type(module) is not nn.ReLU:
                return None
            linear = not linear
        return (weights, biases) if not linear else None

    def _transform(self, x, cond, inverse):
        mlp = self._mlp()
        if mlp is None:
            return super()._transform(x, cond, inverse)
        # One op, one autograd node: the network's modules are not called (nor their hooks).
        self._check(x, "y" if inverse else "x")
        return run_affine_coupling_mlp(x, *mlp, self.log_scale_bound, self.parity, inverse)

    def _elementwise(self, x, params, mask, inverse):
        shift, raw = params.chunk(2, dim=1)
        log_scale = self._bounded(raw) if self.scale == "exp" else raw.clamp_min(_SIGMOID_RAW_FLOOR)
        return affine_coupling(x, shift, log_scale, mask=mask, scale=self.scale, inverse=inverse)


class AdditiveCoupling(_Coupling):
    r"""Additive coupling (NICE): :math:`y = x + t` on the transformed half, volume-preserving
    (log-determinant zero). Arguments as :class:`AffineCoupling` (the network outputs the
    shifts only)."""

    def __init__(
        self,
        channels: int,
        net: NetFactory | Sequence[int] = (64, 64),
        *,
        mask: str = "checkerboard",
        parity: int = 0,
        image: bool = False,
        cond_features: int = 0,
    ):
        super().__init__(
            channels, net, mask=mask, parity=parity, image=image, cond_features=cond_features, outputs_per_element=1
        )

    def _elementwise(self, x, params, mask, inverse):
        return affine_coupling(x, params, None, mask=mask, inverse=inverse)


class MixtureCDFCoupling(_Coupling):
    r"""Flow++'s mixture coupling (Ho et al. 2019): on the transformed half,

    .. math::

        y = \mathrm{logit}\big(F(x;\, \pi, \mu, s)\big)\, e^{a} + b,

    :math:`F` a ``K``-component mixture CDF (:func:`fastgen.nn.mixture_flow.mixture_logit_flow`),
    all of :math:`a, b, \pi, \mu, \log s` per element from a network of the passed half (and
    ``cond``). :math:`a` is stabilized like :class:`AffineCoupling`'s log-scale, and the
    components' :math:`\log s` are kept in :math:`(-7, 7)` by a scaled tanh. The inverse
    inverts the mixture CDF by bisection (:func:`fastgen.ops.mixture_icdf`).

    Args:
        channels, net, mask, parity, image, cond_features: as :class:`AffineCoupling` (the
            network outputs ``3K + 2`` values per transformed element: ``a``, ``b``, the
            logits, locations and log-scales).
        components: ``K``.
        kind: ``"logistic"`` (Flow++) or ``"gaussian"``.
    """

    def __init__(
        self,
        channels: int,
        net: NetFactory | Sequence[int] = (64, 64),
        *,
        components: int = 4,
        mask: str = "checkerboard",
        parity: int = 0,
        kind: str = "logistic",
        image: bool = False,
        cond_features: int = 0,
    ):
        check_int(type(self).__name__, "components", components, minimum=1)
        check_choice(type(self).__name__, "kind", kind, KINDS)
        super().__init__(
            channels,
            net,
            mask=mask,
            parity=parity,
            image=image,
            cond_features=cond_features,
            outputs_per_element=3 * components + 2,
        )
        self.components, self.kind = components, kind
        self._init_log_scale_bound()

    def _elementwise(self, x, params, mask, inverse):
        k = self.components
        p = params.unflatten(1, (3 * k + 2, -1)).movedim(1, -1)  # (B, n, ..., 3K + 2)
        a = self._bounded(p[..., 0])
        b = p[..., 1]
        logits, loc, raw_log_scale = p[..., 2:].split(k, dim=-1)
        # Softly bounded, so that no input (the network sees the passed half, up to any
        # magnitude) makes a component's scale or its inverse overflow.
        log_scale = COMPONENT_LOG_SCALE_BOUND * torch.tanh(raw_log_scale / COMPONENT_LOG_SCALE_BOUND)
        if inverse:
            y, logdet = mixture_logit_flow(
                (x - b) * torch.exp(-a), logits, loc, log_scale, kind=self.kind, logit_output=True, inverse=True
            )
            logdet = logdet - a
        else:
            z, logdet = mixture_logit_flow(x, logits, loc, log_scale, kind=self.kind, logit_output=True, inverse=False)
            y, logdet = z * torch.exp(a) + b, logdet + a
        if mask is not None:  # the passed elements were transformed too (the ops take no mask): undone here
            keep = mask.bool()
            y, logdet = torch.where(keep, x, y), torch.where(keep, torch.zeros_like(logdet), logdet)
        return y, logdet.flatten(1).sum(1)
