r"""MADE (Germain et al. 2015, "MADE: Masked Autoencoder for Distribution Estimation"):
an autoregressive model whose conditionals all come out of one masked MLP pass.

Every unit gets a *degree*; a weight is kept only where the degrees say the output may
depend on the input, so that output :math:`t` of the network sees only the inputs before
:math:`t` in the generation order. Units are sorted by degree, which makes every mask a
staircase (each row connects to a prefix of the columns, the prefix growing with the row):
the fast paths of :func:`fastgen.ops.masked_linear` skip its all-zero blocks, and the
incremental sampling step touches only the blocks of the newly known dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import MaskedLinear
from ..ops._checks import check_choice, check_int
from .base import AutoregressiveModel, register

__all__ = ["MADE", "MADECache"]


@dataclass
class _MaskSetState:
    """The incremental state of one mask set. Pre-activations are stored feature-major
    ``(units, B)``: every update adds into a range of rows (the units of degree at least
    some value, contiguous since the units are sorted), contiguous in this layout."""

    hidden: list[torch.Tensor]  # per hidden layer, (H_l, B)
    out: torch.Tensor  # (D * K, B)
    bounds: list[list[int]]  # per hidden layer: bounds[j] = number of units of degree < j, j = 0..D


@dataclass
class MADECache:
    """What :meth:`MADE.step` carries from one dimension to the next.

    Attributes:
        position: the position in the generation order of the next dimension to generate.
        batch: ``B``.
        sets: the network state of each mask set in use (one, or all of them for the ensemble).
        log_prefix: ``(num_masks, B)``: each mask set's log-probability of the values
            generated so far (ensemble only, else None).
        last_log_probs: ``(num_masks, B, K)``: each mask set's log-conditional at the last
            step (ensemble only, else None).
    """

    position: int
    batch: int
    sets: list[_MaskSetState]
    log_prefix: torch.Tensor | None = None
    last_log_probs: torch.Tensor | None = None


def _mix(log_prefix: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    r"""Conditional log-probabilities of the equal-weight mixture of several autoregressive
    models: ``(M, ...), (M, ..., K) -> (..., K)``,

    .. math:: \log p(x_t = k \mid x_{<t}) = \operatorname{logsumexp}_m \big(\log p_m(x_{<t}) +
        \log p_m(x_t = k \mid x_{<t})\big) - \operatorname{logsumexp}_m \log p_m(x_{<t}),

    whose product over :math:`t` telescopes to :math:`\frac1M \sum_m p_m(x)`."""
    return torch.logsumexp(log_prefix.unsqueeze(-1) + log_probs, 0) - torch.logsumexp(log_prefix, 0).unsqueeze(-1)


@register("made")
class MADE(AutoregressiveModel):
    r"""MADE (Germain et al. 2015, "MADE: Masked Autoencoder for Distribution Estimation"):
    :math:`p(x) = \prod_t p(x_{\pi_t} \mid x_{\pi_1}, \dots, x_{\pi_{t-1}})` over ``dim``
    discrete variables with ``categories`` values each, every conditional a softmax of one
    masked MLP's outputs.

    The network works in *ordering space*: it permutes the inputs by the generation order
    :math:`\pi` on entry and the outputs back on exit, so position :math:`t` (0-based) is the
    :math:`t`-th generated dimension. Degrees (0-based):

    - the one-hot inputs of position :math:`t` (``K`` of them, also for binary data: one
      code path, and the incremental step's first-layer update is a column gather) have
      degree :math:`t`;
    - hidden units have degrees in :math:`[0, D-2]`, sorted ascending in every layer; a
      unit of degree :math:`m` connects to the inputs / previous-layer units of degree
      :math:`\le m`;
    - the ``K`` outputs of position :math:`t` connect to the last hidden units of degree
      :math:`< t` (position 0 gets only its bias and ``cond``).

    Mask set 0 spreads each layer's degrees evenly over :math:`[0, D-2]` (every degree
    present once the layer has :math:`\ge D-1` units); the others draw them as in the
    paper, uniformly from the previous layer's smallest degree to :math:`D-2`.

    **Connectivity-agnostic training** (paper, sec. 3.4), ``num_masks > 1``: a *training
    forward* (module in training mode with autograd enabled) uses one mask set, the next in
    turn (its index is the ``next_mask_set`` buffer, saved with the model). Every other
    forward (eval mode, or under ``torch.no_grad``, which includes sampling) is the
    paper's ensemble: the model is the equal-weight mixture :math:`\frac1M \sum_m p_m(x)`
    of the ``M`` mask sets, and :meth:`logits` returns that mixture's exact conditionals
    (log-probabilities). :meth:`step` samples the same mixture, so ``log_prob`` is the sum
    of the step conditionals in every mode. Evaluation costs ``M`` network passes.

    ``cond`` ``(B, cond_dim)`` (e.g. one-hot labels, any real dtype, cast to the model's)
    feeds every hidden unit and output through unmasked linear maps.

    Args:
        dim: ``D >= 2``, the number of variables.
        hidden: the hidden layers' widths, an int (one layer) or a sequence of ints.
        categories: ``K >= 2``, the values of each variable.
        num_masks: ``M``, the number of mask sets (connectivity-agnostic training if > 1).
        ordering: ``"natural"`` (data order) or ``"random"`` (a permutation drawn from ``seed``).
        cond_dim: the size of the conditioning vector, or None.
        seed: seeds the random ordering and the random mask sets (both kept as buffers).

    Shape:
        ``x``: ``(B, D)`` long in ``[0, K)``; :meth:`logits`: ``(B, D, K)``.

    Example:
        >>> model = MADE(4, hidden=[16, 16], ordering="random")
        >>> x = model.sample(3, generator=torch.Generator().manual_seed(0))
        >>> x.shape, model.log_prob(x).shape
        (torch.Size([3, 4]), torch.Size([3]))
    """

    order: torch.Tensor
    next_mask_set: torch.Tensor

    def __init__(
        self,
        dim: int,
        hidden: int | Sequence[int],
        categories: int = 2,
        num_masks: int = 1,
        ordering: str = "natural",
        cond_dim: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        dim = check_int("MADE", "dim", dim, minimum=2)
        widths = [hidden] if isinstance(hidden, int) and not isinstance(hidden, bool) else hidden
        if not isinstance(widths, Sequence) or isinstance(widths, str) or len(widths) == 0:
            raise TypeError(f"MADE: hidden must be an int or a non-empty sequence of ints, got {hidden!r}")
        widths = [check_int("MADE", "hidden", w, minimum=1) for w in widths]
        self.categories = check_int("MADE", "categories", categories, minimum=2)
        self.num_masks = check_int("MADE", "num_masks", num_masks, minimum=1)
        self.ordering = check_choice("MADE", "ordering", ordering, ("natural", "random"))
        if cond_dim is not None:
            check_int("MADE", "cond_dim", cond_dim, minimum=1)
        seed = check_int("MADE", "seed", seed, minimum=0)
        self.dim, self.hidden, self.cond_dim = dim, tuple(widths), cond_dim
        self.event_shape = (dim,)
        self.cond_shape = None if cond_dim is None else (cond_dim,)

        K = self.categories
        sizes = [dim * K, *widths, dim * K]
        self.layers = nn.ModuleList(MaskedLinear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.cond_layers = (
            None if cond_dim is None else nn.ModuleList(nn.Linear(cond_dim, o, bias=False) for o in sizes[1:])
        )

        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("order", torch.randperm(dim, generator=gen) if ordering == "random" else torch.arange(dim))
        for layer, degrees in enumerate(self._draw_degrees(widths, gen)):
            self.register_buffer(f"degrees{layer}", degrees)  # (M, H_l), each row sorted
        self.register_buffer("next_mask_set", torch.zeros((), dtype=torch.long))
        # a single mask set never changes: set it once (it is saved with the layers)
        self._use_mask_set(0, force=True)

    def _draw_degrees(self, widths: list[int], gen: torch.Generator) -> list[torch.Tensor]:
        """Each hidden layer's degrees for every mask set: ``(M, H_l)`` long, rows sorted."""
        top = self.dim - 2
        per_set = []
        for m in range(self.num_masks):
            layers, low = [], 0
            for width in widths:
                if m == 0:
                    degrees = torch.arange(width) * (top + 1) // width
                else:
                    degrees = torch.randint(low, top + 1, (width,), generator=gen).sort().values
                    low = int(degrees[0])
                layers.append(degrees)
            per_set.append(layers)
        return [torch.stack(layer) for layer in zip(*per_set)]

    def _hidden_degrees(self, mask_set: int) -> list[torch.Tensor]:
        return [getattr(self, f"degrees{layer}")[mask_set] for layer in range(len(self.hidden))]

    def _use_mask_set(self, mask_set: int, force: bool = False) -> None:
        """Load mask set ``mask_set`` into the layers."""
        if self.num_masks == 1 and not force:
            return
        hidden = self._hidden_degrees(mask_set)
        io = torch.arange(self.dim, device=hidden[0].device).repeat_interleave(self.categories)
        for layer, (d_in, d_out) in enumerate(zip([io, *hidden], hidden)):
            self.layers[layer].set_mask(d_out[:, None] >= d_in[None, :])
        self.layers[-1].set_mask(io[:, None] > hidden[-1][None, :])

    def generation_order(self) -> list[int]:
        return self.order.tolist()

    # -------------------------------------------------------------------- full forward

    def _cond(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        self._check_cond(cond, batch, self.cond_shape)
        return None if cond is None else cond.to(self._device_dtype()[1])

    def _logits_onehot(self, onehot: torch.Tensor, cond: torch.Tensor | None, mask_set: int) -> torch.Tensor:
        """The network of one mask set on one-hot inputs: ``(B, D, K) -> (B, D, K)`` logits,
        both in data order (the gradient of output ``d`` vanishes for the inputs not before
        ``d`` in the generation order)."""
        self._use_mask_set(mask_set)
        B, D, K = onehot.shape
        h = onehot[:, self.order].reshape(B, D * K)  # ordering space
        for layer, masked in enumerate(self.layers):
            a = masked(h)
            if self.cond_layers is not None:
                a = a + self.cond_layers[layer](cond)
            h = torch.relu(a) if layer < len(self.hidden) else a
        return h.view(B, D, K)[:, torch.argsort(self.order)]

    def logits(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, D, K)`` of every conditional: one mask set's (training forward, or
        ``num_masks == 1``), else the mask sets' mixture's conditional log-probabilities."""
        x = self.check_data(x)
        B, M = x.shape[0], self.num_masks
        cond = self._cond(cond, B)
        onehot = F.one_hot(x.long(), self.categories).to(self._device_dtype()[1])  # (B, D, K)
        if M == 1:
            return self._logits_onehot(onehot, cond, 0)
        if self.training and torch.is_grad_enabled():
            mask_set = int(self.next_mask_set)
            self.next_mask_set.fill_((mask_set + 1) % M)
            return self._logits_onehot(onehot, cond, mask_set)
        log_probs = torch.stack([self._logits_onehot(onehot, cond, m) for m in range(M)]).log_softmax(-1)
        observed = log_probs.gather(-1, x.long().expand(M, *x.shape).unsqueeze(-1)).squeeze(-1)  # (M, B, D)
        in_order = observed[..., self.order]
        log_prefix = F.pad(in_order.cumsum(-1)[..., :-1], (1, 0))  # log p_m(positions before t)
        return _mix(log_prefix[..., torch.argsort(self.order)], log_probs)

    # ---------------------------------------------------------------- incremental step

    @torch.no_grad()
    def init_cache(self, batch: int, cond: torch.Tensor | None = None) -> MADECache:
        """A fresh :class:`MADECache` for ``batch`` examples: each layer's pre-activations
        start at its bias plus its ``cond`` term."""
        batch = check_int("MADE.init_cache", "batch", batch, minimum=1)
        cond = self._cond(cond, batch)
        M = self.num_masks
        start = []
        for layer, masked in enumerate(self.layers):
            a = masked.bias[:, None].expand(-1, batch)
            start.append(a if self.cond_layers is None else a + self.cond_layers[layer](cond).t())
        positions = torch.arange(self.dim + 1, device=self.order.device)
        sets = []
        for m in range(M):
            pre = [a.clone(memory_format=torch.contiguous_format) for a in start]
            bounds = [torch.searchsorted(d, positions).tolist() for d in self._hidden_degrees(m)]
            sets.append(_MaskSetState(pre[:-1], pre[-1], bounds))
        if M == 1:
            return MADECache(0, batch, sets)
        log_prefix = torch.zeros(M, batch, device=self.order.device, dtype=self._device_dtype()[1])
        return MADECache(0, batch, sets, log_prefix)

    def _advance(self, state: _MaskSetState, t: int, x_prev: torch.Tensor | None) -> torch.Tensor:
        r"""Logits ``(B, K)`` of position ``t`` for one mask set, after absorbing ``x_prev``,
        the value at position ``t - 1``.

        Invariant, on entry with ``j = t - 1``: every unit of degree ``< j`` is final and its
        activation is already added into every later unit (and output) it feeds, so each
        pre-activation holds its bias, ``cond`` term and the contributions of degrees
        ``< j``. Position ``j``'s value completes the units of degree ``j``, layer by layer:
        add its one-hot column into the first layer, then for each layer push the
        activations of its degree-``j`` units into the next layer's rows of degree ``>= j``
        (outputs: positions ``> j``). Those blocks lie wholly inside the masks, so the
        weights are used unmasked; over the ``D`` steps every block is used once, about one
        full forward in all. Outputs of position ``t`` then need nothing more.
        """
        K = self.categories
        if x_prev is not None:
            j = t - 1
            first = state.bounds[0][j]
            state.hidden[0][first:] += self.layers[0].weight[first:, j * K : t * K][:, x_prev]
            for layer, bounds in enumerate(state.bounds):
                lo, hi = bounds[j], bounds[j + 1]
                if lo == hi:
                    continue
                h = torch.relu(state.hidden[layer][lo:hi])  # (units of degree j, B)
                if layer + 1 < len(state.hidden):
                    rows, target = state.bounds[layer + 1][j], state.hidden[layer + 1]
                else:
                    rows, target = t * K, state.out
                target[rows:].addmm_(self.layers[layer + 1].weight[rows:, lo:hi], h)
        return state.out[t * K : (t + 1) * K].t()

    @torch.no_grad()
    def step(self, cache: MADECache, x_prev: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B, K)`` of the next dimension in :meth:`generation_order` (the mixture's
        conditional log-probabilities if ``num_masks > 1``), given ``x_prev (B,)``, the value
        of the dimension generated last (None at the first step); updates ``cache``. Runs
        without autograd (it is for sampling; train through :meth:`logits`)."""
        if not isinstance(cache, MADECache):
            raise TypeError(f"MADE.step: cache must be a MADECache from init_cache, got {type(cache).__name__}")
        t, B = cache.position, cache.batch
        x_prev = self.check_step(t, B, x_prev)
        cache.position = t + 1
        logits = torch.stack([self._advance(s, t, x_prev) for s in cache.sets])  # (M, B, K)
        if self.num_masks == 1:
            return logits[0]
        if x_prev is not None:
            observed = x_prev.expand(self.num_masks, B).unsqueeze(-1)
            cache.log_prefix += cache.last_log_probs.gather(-1, observed).squeeze(-1)
        cache.last_log_probs = logits.log_softmax(-1)
        return _mix(cache.log_prefix, cache.last_log_probs)
