"""KVCache: writes in place into buffers allocated once, returns the prefix, and stepping
causal attention through it gives full causal attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastgen.sampling import KVCache
from tests.helpers import tolerances


def test_allocate_shapes_and_dtype():
    cache = KVCache.allocate(layers=2, batch=3, heads=4, max_len=5, head_dim=6, dtype=torch.float64)
    assert cache.keys.shape == cache.values.shape == (2, 3, 4, 5, 6)
    assert cache.keys.dtype == torch.float64 and cache.length == 0 and cache.max_len == 5
    assert cache.keys.data_ptr() != cache.values.data_ptr()


def test_update_writes_in_place_and_returns_the_prefix():
    L, B, heads, T, hd = 2, 3, 2, 4, 5
    cache = KVCache.allocate(L, B, heads, T, hd)
    keys_ptr, values_ptr = cache.keys.data_ptr(), cache.values.data_ptr()
    gen = torch.Generator().manual_seed(0)
    written_k = torch.randn(T, L, B, heads, hd, generator=gen)
    written_v = torch.randn(T, L, B, heads, hd, generator=gen)
    for t in range(T):
        for layer in range(L):
            # a non-contiguous key (a slice of a fused projection) is fine
            fused = torch.stack([written_k[t, layer], written_v[t, layer]], dim=1)  # (B, 2, heads, hd)
            k, v = cache.update(layer, fused[:, 0], fused[:, 1])
            assert k.shape == v.shape == (B, heads, t + 1, hd)
            assert torch.equal(k, written_k[: t + 1, layer].permute(1, 2, 0, 3))
            assert torch.equal(v, written_v[: t + 1, layer].permute(1, 2, 0, 3))
            assert k.data_ptr() == cache.keys[layer].data_ptr()  # a view, not a copy
        assert cache.length == t
        cache.advance()
    assert cache.length == T
    assert (cache.keys.data_ptr(), cache.values.data_ptr()) == (keys_ptr, values_ptr)  # never reallocated
    assert torch.equal(cache.keys, written_k.permute(1, 2, 3, 0, 4))
    assert torch.equal(cache.values, written_v.permute(1, 2, 3, 0, 4))
    with pytest.raises(ValueError, match="cache is full"):
        cache.update(0, written_k[0, 0], written_v[0, 0])
    with pytest.raises(ValueError, match="cache is full"):
        cache.advance()
    cache.reset()
    k, _ = cache.update(1, written_v[0, 0], written_k[0, 0])  # the next sequence overwrites position 0
    assert k.shape == (B, heads, 1, hd) and torch.equal(k[:, :, 0], written_v[0, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stepped_attention_equals_causal_attention(dtype):
    B, heads, T, hd = 2, 3, 7, 4
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, heads, T, hd, generator=gen, dtype=dtype) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    cache = KVCache.allocate(1, B, heads, T, hd, dtype=dtype)
    for t in range(T):
        keys, values = cache.update(0, k[:, :, t], v[:, :, t])
        out = F.scaled_dot_product_attention(q[:, :, t : t + 1], keys, values)
        torch.testing.assert_close(out[:, :, 0], full[:, :, t], **tolerances(dtype))
        cache.advance()


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        KVCache.allocate(1, 2, 3, 0, 4)
    with pytest.raises(TypeError, match="heads must be an int"):
        KVCache.allocate(1, 2, 3.0, 4, 4)
    with pytest.raises(ValueError, match=r"keys must be a tensor \(layers, B, heads, max_len, head_dim\)"):
        KVCache(torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="values must have keys' shape"):
        KVCache(torch.zeros(1, 2, 3, 4, 5), torch.zeros(1, 2, 3, 4, 6))
    with pytest.raises(TypeError, match="same dtype"):
        KVCache(torch.zeros(1, 2, 3, 4, 5), torch.zeros(1, 2, 3, 4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="length must be <= max_len 4"):
        KVCache(torch.zeros(1, 2, 3, 4, 5), torch.zeros(1, 2, 3, 4, 5), length=5)
    cache = KVCache.allocate(1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"key must have shape \(B, heads, head_dim\) = \(2, 3, 5\), got \(2, 3, 1, 5\)"):
        cache.update(0, torch.zeros(2, 3, 1, 5), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match=r"value must have shape"):
        cache.update(0, torch.zeros(2, 3, 5), torch.zeros(3, 3, 5))
    cache.keys.zero_(), cache.values.zero_()
    with pytest.raises(ValueError, match=r"KVCache.update: layer must be >= 0, got -1"):
        cache.update(-1, torch.ones(2, 3, 5), torch.ones(2, 3, 5))  # would write the last layer
    with pytest.raises(ValueError, match=r"KVCache.update: layer must be < 1 \(the number of layers\), got 1"):
        cache.update(1, torch.ones(2, 3, 5), torch.ones(2, 3, 5))
    with pytest.raises(TypeError, match="KVCache.update: layer must be an int"):
        cache.update(torch.tensor(0), torch.ones(2, 3, 5), torch.ones(2, 3, 5))
    assert cache.length == 0 and not cache.keys.any() and not cache.values.any()  # nothing was written
    keys, _ = cache.update(0, torch.ones(2, 3, 5), torch.ones(2, 3, 5))
    assert keys.shape == (2, 3, 1, 5) and bool((keys == 1).all())
