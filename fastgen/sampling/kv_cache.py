r"""A preallocated key/value cache for incremental decoding with causal self-attention
(the Transformer's sampling cache; "Attention Is All You Need", Vaswani et al. 2017, and the
cached decoding of GPT-style models).

A causal attention layer at position :math:`t` needs the keys and values of positions
:math:`0..t` and nothing else, and those of the earlier positions never change once
computed. :class:`KVCache` holds them for every layer in two buffers allocated once for the
whole sequence; each decoding step writes position :math:`t` of every layer in place
(:meth:`KVCache.update`) and attends over the prefix ``[:t + 1]``, a view of the buffer: no
concatenation of the history and no allocation per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops._checks import check_int

__all__ = ["KVCache"]


@dataclass
class KVCache:
    """Keys and values of the positions decoded so far, for every attention layer.

    Attributes:
        keys: ``(layers, B, heads, max_len, head_dim)``, preallocated; positions
            ``[:length]`` hold the keys of the decoded positions.
        values: the same shape, the values.
        length: the number of positions fully decoded (written in every layer); the next
            :meth:`update` writes position ``length``.

    A decoding step calls :meth:`update` once per layer (each returns that layer's keys and
    values of positions ``[0, length]``, ready for
    :func:`torch.nn.functional.scaled_dot_product_attention` with no mask, the newest
    position seeing them all), then :meth:`advance`.

    Example:
        >>> cache = KVCache.allocate(layers=2, batch=3, heads=4, max_len=10, head_dim=8)
        >>> k, v = cache.update(0, torch.randn(3, 4, 8), torch.randn(3, 4, 8))
        >>> k.shape  # (B, heads, length + 1, head_dim), a view of cache.keys
        torch.Size([3, 4, 1, 8])
        >>> _ = cache.update(1, torch.randn(3, 4, 8), torch.randn(3, 4, 8))
        >>> cache.advance()
        >>> cache.length, cache.max_len
        (1, 10)
    """

    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0

    def __post_init__(self) -> None:
        for name, t in (("keys", self.keys), ("values", self.values)):
            if not isinstance(t, torch.Tensor) or t.dim() != 5:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"KVCache: {name} must be a tensor (layers, B, heads, max_len, head_dim), got {got}")
        if self.values.shape != self.keys.shape:
            raise ValueError(
                f"KVCache: values must have keys' shape {tuple(self.keys.shape)}, got {tuple(self.values.shape)}"
            )
        if self.values.dtype != self.keys.dtype or self.values.device != self.keys.device:
            raise TypeError("KVCache: keys and values must have the same dtype and device")
        check_int("KVCache", "length", self.length, minimum=0)
        if self.length > self.max_len:
            raise ValueError(f"KVCache: length must be <= max_len {self.max_len}, got {self.length}")

    @classmethod
    def allocate(
        cls,
        layers: int,
        batch: int,
        heads: int,
        max_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """An empty cache (``length`` 0) for ``max_len`` positions of ``batch`` sequences.
        The buffers are uninitialized: only the written prefix is ever read."""
        sizes = dict(layers=layers, batch=batch, heads=heads, max_len=max_len, head_dim=head_dim)
        shape = tuple(check_int("KVCache.allocate", name, value, minimum=1) for name, value in sizes.items())
        keys = torch.empty(shape, dtype=dtype, device=device)
        return cls(keys, torch.empty_like(keys))

    @property
    def max_len(self) -> int:
        """The number of positions the buffers hold."""
        return self.keys.shape[3]

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``key`` and ``value`` ``(B, heads, head_dim)`` of position ``length`` into
        ``layer``; return that layer's keys and values of positions ``[0, length]``, views
        ``(B, heads, length + 1, head_dim)`` of the buffers."""
        check_int("KVCache.update", "layer", layer, minimum=0)
        if layer >= self.keys.shape[0]:
            raise ValueError(f"KVCache.update: layer must be < {self.keys.shape[0]} (the number of layers), got {layer}")
        t = self.length
        if t >= self.max_len:
            raise ValueError(f"KVCache.update: the cache is full ({self.max_len} positions)")
        expected = (self.keys.shape[1], self.keys.shape[2], self.keys.shape[4])
        for name, tensor in (("key", key), ("value", value)):
            if tuple(tensor.shape) != expected:
                raise ValueError(f"KVCache.update: {name} must have shape (B, heads, head_dim) = {expected}, got {tuple(tensor.shape)}")
        keys, values = self.keys[layer], self.values[layer]  # (B, heads, max_len, head_dim)
        keys[:, :, t].copy_(key)
        values[:, :, t].copy_(value)
        return keys[:, :, : t + 1], values[:, :, : t + 1]

    def advance(self) -> None:
        """Mark position ``length`` as written in every layer (call once per decoding step)."""
        if self.length >= self.max_len:
            raise ValueError(f"KVCache.advance: the cache is full ({self.max_len} positions)")
        self.length += 1

    def reset(self) -> None:
        """Start a new sequence in the same buffers."""
        self.length = 0
