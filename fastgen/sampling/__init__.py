r"""Incremental (cached) autoregressive sampling.

The protocol: an autoregressive model gives every conditional at once
(``logits(x, cond) -> (B, D, K)``, for training and for the naive loop) and one at a time
from a cache (``init_cache(batch, cond)``, then ``step(cache, x_prev) -> (B, K)``, each step
computing only what the new dimension needs: one position per layer for the convolutional
models, a queue per layer for WaveNet, a key/value cache for the Transformer), in the order
``generation_order()``. :func:`sample` runs either loop.

Randomness: :func:`sample` draws one uniform per dimension up front, in data (raster/time)
order, and turns the uniform of each dimension into its value by inverting the
conditional's CDF (:func:`sample_categorical`). The cached and the naive loop therefore
consume the randomness identically and give the same samples for the same generator, up to
the rounding of the logits (exactly the same in float64 in practice).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from ..ops._checks import check_bool, check_int
from .kv_cache import KVCache

__all__ = ["IncrementalModel", "KVCache", "sample", "sample_categorical"]


class IncrementalModel(Protocol):
    """What :func:`sample` needs of a model (:class:`fastgen.models.AutoregressiveModel`)."""

    event_shape: tuple[int, ...]
    num_dims: int

    def logits(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor: ...

    def init_cache(self, batch: int, cond: torch.Tensor | None = None) -> Any: ...

    def step(self, cache: Any, x_prev: torch.Tensor | None) -> torch.Tensor: ...

    def generation_order(self) -> list[int]: ...


def sample_categorical(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Invert the CDF of ``softmax(logits)`` at ``u``: ``(..., K), (...) -> (...)`` long.

    The value is the first ``k`` whose cumulative probability exceeds ``u`` times the total
    (so rounding in the total never picks a category of probability zero, and ``u`` in
    ``[0, 1)`` always lands on one).

    The values of ``logits`` are not checked (it runs once per generated dimension, and a
    check would cost a reduction and a device synchronization each time): a row with a NaN
    or a ``+inf`` has no distribution and gives the last category.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(u, torch.Tensor) or logits.dim() < 1:
        raise TypeError(
            f"sample_categorical: logits (..., K) and u (...) must be tensors, got {type(logits).__name__} and {type(u).__name__}"
        )
    if logits.shape[:-1] != u.shape:
        raise ValueError(
            f"sample_categorical: u must have logits' shape without its last dimension, {tuple(logits.shape[:-1])}, "
            f"got {tuple(u.shape)}"
        )
    cdf = torch.softmax(logits, dim=-1).cumsum(-1)
    target = (u.to(cdf.dtype) * cdf[..., -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max_(logits.shape[-1] - 1)


@torch.no_grad()
def sample(
    model: IncrementalModel,
    n: int,
    cond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    cache: bool = True,
    progress: bool = False,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` samples ``(n, *event_shape)`` long of ``model``, one dimension at a time in its
    ``generation_order()``.

    ``cache=True`` steps the model incrementally (``init_cache`` / ``step``); ``cache=False``
    recomputes the full ``logits`` for every dimension (the naive loop, ``D`` full forwards).
    Both turn the same uniforms (drawn with ``generator``, ``(n, D)`` of ``dtype`` on
    ``device``, in data order) into values. ``cond`` is checked by the model
    (:meth:`fastgen.models.AutoregressiveModel.sample` checks it all first); ``progress``
    shows a bar over the dimensions.
    """
    check_int("sample", "n", n, minimum=1)
    check_bool("sample", "cache", cache)
    check_bool("sample", "progress", progress)
    u = torch.rand(n, model.num_dims, generator=generator, device=device, dtype=dtype)
    x = torch.zeros(n, model.num_dims, dtype=torch.long, device=device)
    order = tqdm(model.generation_order(), desc="sampling", unit="dim", disable=not progress, leave=False)
    if cache:
        state, prev = model.init_cache(n, cond), None
        for d in order:
            x[:, d] = sample_categorical(model.step(state, prev), u[:, d])
            prev = x[:, d]
    else:
        for d in order:
            logits = model.logits(x.view(n, *model.event_shape), cond)[:, d]
            x[:, d] = sample_categorical(logits, u[:, d])
    return x.view(n, *model.event_shape)
