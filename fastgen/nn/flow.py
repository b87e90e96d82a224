r"""Flow plumbing: the transform contract, :class:`FlowSequential`, :class:`Squeeze` and
Glow's invertible 1x1 convolution :class:`InvConv1x1` (Kingma & Dhariwal 2018).

Every flow layer of :mod:`fastgen.nn` is an ``nn.Module`` with

- ``forward(x, cond=None) -> (y, logdet)``: ``logdet`` is :math:`\log|\det \partial y/\partial x|`
  per example, shape ``(B,)``;
- ``inverse(y, cond=None) -> (x, logdet)``: ``logdet`` is that of the inverse map, so a
  round trip's two log-determinants sum to zero.

Inputs are vectors ``(B, D)`` or images ``(B, C, H, W)`` where the layer makes sense for them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import actnorm
from ..ops._checks import check_int, check_same_device

__all__ = ["ActNorm", "FlowSequential", "InvConv1x1", "Squeeze"]


def _zero_logdet(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(x.shape[0])


def _check_input(layer: nn.Module, name: str, x: object, dims: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{type(layer).__name__}: {name} must be a Tensor, got {type(x).__name__}")
    if x.dim() not in dims:
        shapes = " or ".join({2: "(B, D)", 4: "(B, C, H, W)"}[d] for d in dims)
        raise ValueError(f"{type(layer).__name__}: {name} must be {shapes}, got shape {tuple(x.shape)}")
    return x


class FlowSequential(nn.Sequential):
    r"""A composition of flow layers: ``forward`` runs them in order and ``inverse`` in
    reverse order, each summing the layers' log-determinants (the chain rule:
    :math:`\log|\det J_{f_n \circ \dots \circ f_1}| = \sum_i \log|\det J_{f_i}|`).

    ``cond`` is passed to every layer.

    Fast path (Glow's step): an :class:`ActNorm` directly followed by an
    :class:`InvConv1x1` runs as one 1x1 convolution with a bias, in both directions, since
    :math:`W\,((x + \mu) \odot e^{\ell}) = (W \operatorname{diag} e^{\ell})\,x + W (\mu \odot e^{\ell})`
    and its inverse is :math:`(\operatorname{diag} e^{-\ell} W^{-1})\,y - \mu`: one pass over
    the activations instead of two, forward and backward. It computes what the two layers
    compute one after the other (ActNorm's data-dependent initialization included), up to
    float rounding; the two layers' own forward hooks are not called on this path.

    Example:
        >>> flow = FlowSequential(Squeeze(), ActNorm(12), InvConv1x1(12))
        >>> y, logdet = flow(torch.randn(8, 3, 4, 4))     # y: (8, 12, 2, 2), logdet: (8,)
        >>> x, inv_logdet = flow.inverse(y)               # inv_logdet == -logdet
    """

    def _run(self, x: torch.Tensor, cond: torch.Tensor | None, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # The modules' dict, not reversed(self): Sequential's indexing walks the modules for
        # each index, quadratic in the depth, and this runs at every call.
        layers = list(self._modules.values())
        if inverse:
            layers.reverse()
        logdets = []
        i = 0
        while i < len(layers):
            layer, after = layers[i], layers[i + 1] if i + 1 < len(layers) else None
            actnorm, conv = (after, layer) if inverse else (layer, after)
            if type(actnorm) is ActNorm and type(conv) is InvConv1x1:
                x, ld = _actnorm_conv(actnorm, conv, x, inverse)
                i += 2
            else:
                x, ld = layer.inverse(x, cond) if inverse else layer(x, cond)
                i += 1
            logdets.append(ld)
        # One stacked sum instead of a chain of adds: fewer ops forward and backward.
        if len(logdets) > 1:
            return x, torch.stack(logdets).sum(0)
        return x, logdets[0] if logdets else _zero_logdet(x)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(x, cond, False)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(y, cond, True)


def _pixel_shuffle(x: torch.Tensor, f: int, *, inverse: bool) -> torch.Tensor:
    """``F.pixel_shuffle`` (``inverse``: ``F.pixel_unshuffle``), also for tensors with no
    elements, which torch returns unchanged, in their input's shape."""
    if x.numel():
        return F.pixel_unshuffle(x, f) if inverse else F.pixel_shuffle(x, f)
    b, c, h, w = x.shape
    if inverse:  # (B, C, H f, W f) -> (B, C f^2, H, W)
        return x.reshape(b, c, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4).reshape(b, c * f * f, h // f, w // f)
    return x.reshape(b, c // (f * f), f, f, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // (f * f), h * f, w * f)


class Squeeze(nn.Module):
    r"""Space-to-depth (RealNVP's squeeze): ``(B, C, H, W) -> (B, C f^2, H/f, W/f)``, each
    ``f x f`` block of a channel becoming ``f^2`` channels (channel ``c f^2 + i f + j`` holds
    pixel ``(f h + i, f w + j)`` of channel ``c``, the order of ``F.pixel_unshuffle``). A
    permutation: its log-determinant is zero.

    Args:
        factor: ``f >= 1``; H and W must be multiples of it.
    """

    def __init__(self, factor: int = 2):
        super().__init__()
        check_int(type(self).__name__, "factor", factor, minimum=1)
        self.factor = factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        _check_input(self, "x", x, (4,))
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(
                f"Squeeze: x's height and width must be multiples of factor={self.factor}, got {tuple(x.shape[2:])}"
            )
        return _pixel_shuffle(x, self.factor, inverse=True), _zero_logdet(x)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        _check_input(self, "y", y, (4,))
        if y.shape[1] % (self.factor * self.factor):
            raise ValueError(
                f"Squeeze.inverse: y's channels must be a multiple of factor**2={self.factor**2}, got {y.shape[1]}"
            )
        return _pixel_shuffle(y, self.factor, inverse=False), _zero_logdet(y)


class InvConv1x1(nn.Module):
    r"""Glow's invertible 1x1 convolution: a learned ``C x C`` channel mixing applied at every
    pixel, :math:`y_{b,:,h,w} = W x_{b,:,h,w}`, with
    :math:`\log|\det J| = HW \log|\det W|` per example (``H = W = 1`` for vectors).

    With ``lu=True`` (Glow's LU parametrization) :math:`W = P L (U + \mathrm{diag}(s\, e^{\ell}))`:
    ``P`` a fixed permutation, ``L`` unit lower-triangular, ``U`` strictly upper-triangular,
    ``s`` fixed signs and ``\ell`` learned log-magnitudes, so that
    :math:`\log|\det W| = \sum_c \ell_c` costs O(C) and ``W`` stays invertible whatever the
    optimizer does. With ``lu=False`` ``W`` is learned directly and its log-determinant
    is a ``slogdet`` (in float64).

    The inverse uses :math:`W^{-1}`, computed in float64 and rounded once. Without autograd
    (sampling, evaluation) it is cached and recomputed only when a parameter changes (an
    optimizer step, ``load_state_dict``, a move to another device); with autograd it is
    recomputed so that gradients flow through it.

    Initialization: a random rotation (Q of a Gaussian matrix's QR), as in Glow.

    Args:
        channels: ``C``.
        lu: use the LU parametrization.
        generator: for the random initialization.

    Shape:
        ``(B, C, H, W)`` or ``(B, C)`` to the same shape; logdet ``(B,)``.
    """

    def __init__(
        self,
        channels: int,
        lu: bool = True,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        check_int(type(self).__name__, "channels", channels, minimum=1)
        self.channels, self.lu = channels, bool(lu)
        factory = dict(device=device, dtype=dtype if dtype is not None else torch.get_default_dtype())
        rotation = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))[0]
        if self.lu:
            permutation, lower, upper = torch.linalg.lu(rotation)
            diagonal = upper.diagonal()
            self.register_buffer("permutation", permutation.to(**factory))
            self.register_buffer("sign", diagonal.sign().to(**factory))
            self.lower = nn.Parameter(lower.tril(-1).to(**factory))
            self.upper = nn.Parameter(upper.triu(1).to(**factory))
            self.log_scale = nn.Parameter(diagonal.abs().log().to(**factory))
        else:
            self.weight_matrix = nn.Parameter(rotation.to(**factory))
        self._inverse_cache: tuple[tuple, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return f"channels={self.channels}, lu={self.lu}"

    def weight(self) -> torch.Tensor:
        """``W``, ``(C, C)`` (differentiable)."""
        if not self.lu:
            return self.weight_matrix
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        # tril/triu here, not at init only: entries outside the triangles never count, even
        # if an optimizer (weight decay) moves them.
        upper = self.upper.triu(1) + torch.diag(self.sign * self.log_scale.exp())
        return self.permutation @ (self.lower.tril(-1) + eye) @ upper

    def log_abs_det(self) -> torch.Tensor:
        r""":math:`\log|\det W|`, a scalar (differentiable)."""
        if self.lu:
            return self.log_scale.sum()
        return torch.linalg.slogdet(self.weight_matrix.double())[1].to(self.weight_matrix.dtype)

    def inverse_weight(self) -> torch.Tensor:
        """:math:`W^{-1}`, ``(C, C)``: computed in float64; cached while autograd is off."""
        params = list(self.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return torch.linalg.inv(self.weight().double()).to(params[0].dtype)
        key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in (*params, *self.buffers()))
        if self._inverse_cache is None or self._inverse_cache[0] != key:
            with torch.no_grad():
                inverse = torch.linalg.inv(self.weight().double()).to(params[0].dtype)
            self._inverse_cache = (key, inverse)
        return self._inverse_cache[1]

    def _apply_matrix(
        self, x: torch.Tensor, matrix: torch.Tensor, name: str, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``matrix @ x + bias`` at every pixel, ``matrix`` ``(C, C)``, ``bias`` ``(C,)`` or None."""
        _check_input(self, name, x, (2, 4))
        if x.shape[1] != self.channels:
            raise ValueError(f"InvConv1x1: {name} must have {self.channels} channels, got shape {tuple(x.shape)}")
        check_same_device("InvConv1x1", "the layer", matrix, **{name: x})
        if x.dim() == 2:
            return x @ matrix.t() if bias is None else torch.addmm(bias, x, matrix.t())
        # A batched matrix product over (B, C, H*W), not a 1x1 conv2d: for a flow's few
        # channels oneDNN's convolution costs 2-6x more, forward and backward (measured on
        # (64, 4..48, *, *) one thread: its weight gradient above all).
        b, c = x.shape[:2]
        flat, batched = x.reshape(b, c, -1), matrix.expand(b, c, c)
        y = torch.bmm(batched, flat) if bias is None else torch.baddbmm(bias[:, None], batched, flat)
        return y.view(x.shape)

    def _logdet(self, x: torch.Tensor, sign: float, extra: torch.Tensor | float = 0.0) -> torch.Tensor:
        """``sign * HW * (log|det W| + extra)`` per example."""
        pixels = x.shape[2] * x.shape[3] if x.dim() == 4 else 1
        return (sign * pixels * (self.log_abs_det() + extra)).repeat(x.shape[0])

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._apply_matrix(x, self.weight(), "x"), self._logdet(x, 1.0)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._apply_matrix(y, self.inverse_weight(), "y"), self._logdet(y, -1.0)


class ActNorm(nn.Module):
    r"""Glow's activation normalization: a per-channel affine map
    :math:`y = (x + \mu) e^{\ell}` with :math:`\log|\det J| = HW \sum_c \ell_c` per example
    (:func:`fastgen.ops.actnorm`), initialized from the data: the first batch seen in
    training mode sets :math:`\mu = -\text{mean}`, :math:`e^{\ell} = 1/\text{std}` per channel,
    so that this batch comes out with zero mean and unit variance. Whether that happened is
    the buffer ``initialized`` (saved with the state, so a loaded model is not re-initialized).

    Args:
        channels: ``C``.

    Shape:
        ``(B, C, H, W)`` or ``(B, C)`` to the same shape; logdet ``(B,)``.
    """

    def __init__(self, channels: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        check_int(type(self).__name__, "channels", channels, minimum=1)
        self.channels = channels
        self.loc = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))
        self.log_scale = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))
        self.register_buffer("initialized", torch.tensor(False, device=device))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Sets loc and log_scale from the batch ``x`` (zero mean, unit variance per channel)."""
        _check_input(self, "x", x, (2, 4))
        if x.shape[1] != self.channels:
            raise ValueError(f"ActNorm: x must have {self.channels} channels, got shape {tuple(x.shape)}")
        check_same_device("ActNorm", "the layer", self.loc, x=x)
        if x.shape[0] * math.prod(x.shape[2:]) < 2:  # an empty batch too
            raise ValueError(
                f"ActNorm: the initialization batch needs at least 2 values per channel, got shape {tuple(x.shape)}"
            )
        dims = [0, *range(2, x.dim())]
        # A constant channel would get an infinite scale: its std is floored.
        std = x.std(dims, unbiased=False).clamp_min(1e-6)
        mean = x.mean(dims)
        # Checked on the 2C statistics, not the batch: a NaN or inf anywhere in x (or an
        # overflow) makes them non-finite, and would leave loc and log_scale NaN for good.
        if not bool(torch.isfinite(torch.cat([mean, std])).all()):
            raise ValueError(
                "ActNorm: x, the first training batch, sets loc and log_scale from its per-channel mean and std, "
                "which must be finite; x holds NaN or inf values (or overflows)"
            )
        self.loc.copy_(-mean)
        self.log_scale.copy_(-std.log())
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self.initialized:
            self.initialize(x)
        return actnorm(x, self.loc, self.log_scale)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return actnorm(y, self.loc, self.log_scale, inverse=True)


def _actnorm_conv(
    actnorm: ActNorm, conv: InvConv1x1, x: torch.Tensor, inverse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv(actnorm(x))``, or ``actnorm.inverse(conv.inverse(x))``, as one 1x1 convolution
    with a bias (see :class:`FlowSequential`)."""
    if actnorm.channels != conv.channels:
        raise ValueError(
            f"FlowSequential: ActNorm({actnorm.channels}) is followed by InvConv1x1({conv.channels}); "
            "their channels must match"
        )
    if not inverse and actnorm.training and not actnorm.initialized:
        actnorm.initialize(x)
    if inverse:
        matrix = torch.exp(-actnorm.log_scale)[:, None] * conv.inverse_weight()
        bias = -actnorm.loc
    else:
        matrix = conv.weight() * torch.exp(actnorm.log_scale)
        bias = matrix @ actnorm.loc
    y = conv._apply_matrix(x, matrix, "y" if inverse else "x", bias)
    return y, conv._logdet(x, -1.0 if inverse else 1.0, actnorm.log_scale.sum())
