r"""MADE (Germain et al. 2015, "MADE: Masked Autoencoder for Distribution Estimation"):
an autoregressive model whose conditionals all come out of one masked MLP pass.

The network is :class:`fastgen.nn.MaskedMLP`: every unit gets a *degree*, a weight is kept
only where the degrees say the output may depend on the input, so that output :math:`t` sees
only the inputs before :math:`t` in the generation order; its masks are staircases, which
the fast paths of :func:`fastgen.ops.masked_linear` exploit, and its incremental form
touches only the blocks of the newly known dimension at each sampling step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nn import MaskedMLP, MaskedMLPState
from ..ops._checks import check_choice, check_int, check_widths
from .base import AutoregressiveModel, StepCache, register

__all__ = ["MADE", "MADECache"]


@dataclass
class MADECache(StepCache):
    """What :meth:`MADE.step` carries from one dimension to the next (with the
    :class:`~fastgen.models.StepCache` fields: ``position``, the position in the generation
    order of the next dimension to generate, and ``batch``).

    Attributes:
        sets: the network state of each mask set in use (one, or all of them for the ensemble).
        log_prefix: ``(num_masks, B)``: each mask set's log-probability of the values
            generated so far (ensemble only, else None).
        last_log_probs: ``(num_masks, B, K)``: each mask set's log-conditional at the last
            step (ensemble only, else None).
    """

    sets: list[MaskedMLPState]
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

    The network (:class:`fastgen.nn.MaskedMLP`, attribute ``net``) works in *ordering
    space*: the model permutes the inputs by the generation order :math:`\pi` on entry and
    the outputs back on exit, so position :math:`t` (0-based) is the :math:`t`-th generated
    dimension. Each position has ``K`` one-hot inputs (also for binary data: one code path,
    and the incremental step's first-layer update is a column gather) and ``K`` outputs,
    its logits. Mask set 0 spreads each layer's degrees evenly; the others draw them as in
    the paper (see :class:`~fastgen.nn.MaskedMLP`).

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

    cache_type = MADECache
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
        widths = check_widths("MADE", "hidden", hidden)
        self.categories = check_int("MADE", "categories", categories, minimum=2)
        self.num_masks = check_int("MADE", "num_masks", num_masks, minimum=1)
        self.ordering = check_choice("MADE", "ordering", ordering, ("natural", "random"))
        if cond_dim is not None:
            check_int("MADE", "cond_dim", cond_dim, minimum=1)
        seed = check_int("MADE", "seed", seed, minimum=0)
        self.dim, self.hidden, self.cond_dim = dim, widths, cond_dim
        self.event_shape = (dim,)
        self.cond_shape = None if cond_dim is None else (cond_dim,)

        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("order", torch.randperm(dim, generator=gen) if ordering == "random" else torch.arange(dim))
        K = self.categories
        self.net = MaskedMLP(
            dim, widths, K, inputs_per_position=K, cond_features=cond_dim or 0, num_masks=num_masks, generator=gen
        )
        self.register_buffer("next_mask_set", torch.zeros((), dtype=torch.long))

    def generation_order(self) -> list[int]:
        return self.order.tolist()

    # -------------------------------------------------------------------- full forward

    def _logits_onehot(self, onehot: torch.Tensor, cond: torch.Tensor | None, mask_set: int) -> torch.Tensor:
        """The network of one mask set on one-hot inputs: ``(B, D, K) -> (B, D, K)`` logits,
        both in data order (the gradient of output ``d`` vanishes for the inputs not before
        ``d`` in the generation order)."""
        self.net.use_mask_set(mask_set)
        B, D, K = onehot.shape
        h = self.net(onehot[:, self.order].reshape(B, D * K), cond)  # ordering space
        return h.view(B, D, K)[:, torch.argsort(self.order)]

    def logits(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, D, K)`` of every conditional: one mask set's (training forward, or
        ``num_masks == 1``), else the mask sets' mixture's conditional log-probabilities."""
        x = self.check_data(x)
        B, M = x.shape[0], self.num_masks
        cond = self.check_features(cond, B)
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
        batch = self.check_init_cache(batch, cond)
        cond = self.check_features(cond, batch)
        M = self.num_masks
        sets = [self.net.init_state(batch, cond, m) for m in range(M)]
        if M == 1:
            return self.new_cache(batch, sets=sets)
        log_prefix = torch.zeros(M, batch, device=self.order.device, dtype=self._device_dtype()[1])
        return self.new_cache(batch, sets=sets, log_prefix=log_prefix)

    def _advance(self, state: MaskedMLPState, t: int, x_prev: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B, K)`` of position ``t`` for one mask set, after absorbing ``x_prev``,
        the value at position ``t - 1`` (:meth:`fastgen.nn.MaskedMLP.absorb`)."""
        if x_prev is not None:
            self.net.absorb(state, t - 1, x_prev)
        return self.net.outputs(state, t).t()

    @torch.no_grad()
    def step(self, cache: MADECache, x_prev: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B, K)`` of the next dimension in :meth:`generation_order` (the mixture's
        conditional log-probabilities if ``num_masks > 1``), given ``x_prev (B,)``, the value
        of the dimension generated last (None at the first step); updates ``cache``. Runs
        without autograd (it is for sampling; train through :meth:`logits`)."""
        t, x_prev = self.begin_step(cache, x_prev)
        B = cache.batch
        logits = torch.stack([self._advance(s, t, x_prev) for s in cache.sets])  # (M, B, K)
        if self.num_masks == 1:
            return logits[0]
        if x_prev is not None:
            observed = x_prev.expand(self.num_masks, B).unsqueeze(-1)
            cache.log_prefix += cache.last_log_probs.gather(-1, observed).squeeze(-1)
        cache.last_log_probs = logits.log_softmax(-1)
        return _mix(cache.log_prefix, cache.last_log_probs)
