r"""Masked autoregressive flow layers (MAF, Papamakarios et al. 2017; IAF, Kingma et al. 2016):
an element-wise affine map of each entry whose shift and scale come from a
:class:`~fastgen.nn.MaskedMLP` of the entries before it, and :class:`Reverse`, the
permutation between such layers. The flow contract is that of :mod:`fastgen.nn.flow`.

.. math::

    \text{forward:}\quad u_i = (x_i - \mu_i(x_{<i}))\, e^{-\alpha_i(x_{<i})}, \qquad
    \log|\det \partial u / \partial x| = -\textstyle\sum_i \alpha_i

    \text{inverse:}\quad x_i = u_i\, e^{\alpha_i(x_{<i})} + \mu_i(x_{<i})

The Jacobian is triangular. The forward needs every :math:`x_{<i}`, known up front: one
network pass. The inverse produces them one entry at a time: the network's incremental form
(:meth:`~fastgen.nn.MaskedMLP.absorb`), about one pass in all, or ``D`` full passes where
autograd must see it (each pass fixes one more entry; the last one's outputs are exact
functions of the inputs, so its gradients are exact).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..ops import affine_coupling
from ..ops.masked_affine_autoregressive import run as run_masked_affine_autoregressive
from ..ops._checks import check_int
from .masked_mlp import MaskedMLP, check_cond

__all__ = ["MaskedAffineAutoregressive", "Reverse"]

# The incremental inverse runs over the batch in chunks of this many examples per unit of
# pre-activation state, so that each step's updates stay in the cache (about 4 MiB of
# float32 state per chunk).
_STATE_ELEMENTS_PER_CHUNK = 2**20


def _check_vectors(layer: nn.Module, name: str, x: object, features: int) -> torch.Tensor:
    cls = type(layer).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{cls}: {name} must be a Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != features:
        raise ValueError(f"{cls}: {name} must have shape (B, {features}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{cls}: {name} must have a floating-point dtype, got {x.dtype}")
    return x


class Reverse(nn.Module):
    r"""Reverses the entries of vectors, :math:`y_i = x_{D-1-i}`: the permutation MAF puts
    between its autoregressive layers, so that each entry is conditioned on the others in
    turn. A permutation: its log-determinant is zero.

    Shape:
        ``(B, D)`` to the same shape; logdet ``(B,)``.
    """

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            raise ValueError(f"Reverse: x must be a Tensor (B, D), got {getattr(x, 'shape', type(x).__name__)}")
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self(y, cond)


class MaskedAffineAutoregressive(nn.Module):
    r"""One MAF layer (Papamakarios et al. 2017): :math:`u_i = (x_i - \mu_i) e^{-\alpha_i}`
    with :math:`(\mu_i, \alpha_i)` from a MADE (:class:`~fastgen.nn.MaskedMLP`, two outputs
    per entry) of :math:`x_{<i}` and ``cond`` (see the module docstring). Read backwards it
    is an IAF layer (Kingma et al. 2016): IAF samples through :meth:`forward` and evaluates
    densities through :meth:`inverse`.

    The log-scale is stabilized as :math:`\alpha_i = a_i \tanh(r_i)` with a learned
    per-entry bound ``a`` (started at 1, as :class:`~fastgen.nn.AffineCoupling`), ``r`` the
    network's raw output, so that no input makes a scale or its inverse overflow. The
    network's last layer starts at zero: the layer starts as the identity. Without ``cond``,
    :meth:`forward` is one op, :func:`fastgen.ops.masked_affine_autoregressive` (the network,
    the map and its log-determinant); with it, the network then the fused
    :func:`fastgen.ops.affine_coupling`.

    The inverse steps the network's incremental form over the entries (about one network
    pass, in chunks of the batch that keep its state in the cache) when autograd does not
    record it, and runs ``D`` full passes when it does (training through the inverse, as
    IAF's density).

    Args:
        features: ``D >= 2``.
        hidden: the MADE's hidden widths, an int or a sequence of ints.
        cond_features: the size of a per-example conditioning vector fed to every hidden
            unit and output (0: none).

    Shape:
        ``(B, D)`` to the same shape; ``cond`` ``(B, cond_features)``; logdet ``(B,)``.

    Example:
        >>> layer = MaskedAffineAutoregressive(3, [16, 16])
        >>> u, logdet = layer(torch.randn(5, 3))
        >>> x, inv_logdet = layer.inverse(u)   # x == the input, inv_logdet == -logdet
    """

    def __init__(self, features: int, hidden: int | Sequence[int], *, cond_features: int = 0):
        super().__init__()
        self.features = check_int(type(self).__name__, "features", features, minimum=2)
        self.cond_features = check_int(type(self).__name__, "cond_features", cond_features, minimum=0)
        self.net = MaskedMLP(features, hidden, 2, cond_features=cond_features)
        with torch.no_grad():
            last = [self.net.layers[-1].weight, self.net.layers[-1].bias]
            for p in last + ([self.net.cond_layers[-1].weight] if self.net.cond_layers is not None else []):
                p.zero_()
        self.log_scale_bound = nn.Parameter(torch.ones(features))

    def extra_repr(self) -> str:
        return f"features={self.features}, cond_features={self.cond_features}"

    def _check(self, x: object, name: str, cond: object) -> None:
        _check_vectors(self, name, x, self.features)
        check_cond(type(self).__name__, cond, x.shape[0], self.cond_features)

    def _shift_and_log_scale(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, alpha)``, each ``(B, D)``, from one network pass over ``x``."""
        # unbind: one backward node (a stack) where two selects each fill a zero gradient
        shift, raw = self.net(x, cond).view(x.shape[0], self.features, 2).unbind(-1)
        return shift, self.log_scale_bound * torch.tanh(raw)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, "x", cond)
        layers = self.net.layers
        if self.cond_features == 0 and all(layer.backend is None for layer in layers):
            # The whole layer as one op, one autograd node.
            weights, masks, biases = [], [], []
            for layer in layers:
                weights.append(layer.weight)
                masks.append(layer.mask)
                biases.append(layer.bias)
            return run_masked_affine_autoregressive(x, weights, masks, biases, self.log_scale_bound)
        shift, log_scale = self._shift_and_log_scale(x, cond)
        return affine_coupling(x, shift, log_scale, inverse=True)

    def inverse(self, u: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(u, "u", cond)
        tracked = [u, *self.parameters()] + ([cond] if cond is not None else [])
        if torch.is_grad_enabled() and any(t.requires_grad for t in tracked):
            x = torch.zeros_like(u)
            for _ in range(self.features):
                shift, log_scale = self._shift_and_log_scale(x, cond)
                x, logdet = affine_coupling(u, shift, log_scale)
            return x, logdet
        return self._inverse_incremental(u, cond)

    @torch.no_grad()
    def _inverse_incremental(self, u: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        B, D = u.shape
        state_rows = sum(self.net.hidden) + 2 * D
        chunk = max(1, _STATE_ELEMENTS_PER_CHUNK // state_rows)
        u_t = u.t().contiguous()  # (D, B): each step reads and writes contiguous rows
        x_t, log_scales = torch.empty_like(u_t), torch.empty_like(u_t)
        bound = self.log_scale_bound.tolist()
        for start in range(0, B, chunk):
            cols = slice(start, start + chunk)
            state = self.net.init_state(min(chunk, B - start), None if cond is None else cond[cols])
            for t in range(D):
                if t:
                    self.net.absorb(state, t - 1, x_t[t - 1, cols])
                shift, raw = self.net.outputs(state, t)
                log_scale = torch.tanh(raw, out=log_scales[t, cols]).mul_(bound[t])
                torch.addcmul(shift, u_t[t, cols], log_scale.exp(), out=x_t[t, cols])
        return x_t.t().contiguous(), log_scales.sum(0)
