"""PixelTransformer: causality by Jacobian (raster order, channels within a pixel),
exact normalization, the KV-cached step against the full forward, cached against naive
sampling, conditioning, saving and argument checks."""

from __future__ import annotations

import pytest
import torch

from fastgen.models import PixelTransformer, PixelTransformerCache, build
from fastgen.sampling import KVCache
from tests.models.autoregressive import (
    assert_cached_equals_naive,
    assert_image_model_rejects_bad_data_and_cond,
    assert_normalized,
    assert_respects_order,
    assert_step_equals_full,
    assert_step_rejects_bad_input,
    dependencies,
)


def transformer(shape=(1, 5, 5), levels=2, num_classes=None, dtype=torch.float64, **kw) -> PixelTransformer:
    """A small model with weights far from their N(0, 0.02) initialization, so that the
    conditionals are sharp and depend strongly on the context."""
    config = dict(d_model=16, heads=4, layers=2) | kw
    torch.manual_seed(0)
    model = PixelTransformer(shape, levels, num_classes=num_classes, **config).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def random_x(model: PixelTransformer, batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.levels, (batch, *model.event_shape), generator=gen)


def generation_position(model: PixelTransformer) -> torch.Tensor:
    """``(D,)``: the position in the generation order of each data dimension."""
    position = torch.empty(model.num_dims, dtype=torch.long)
    position[torch.tensor(model.generation_order())] = torch.arange(model.num_dims)
    return position


# ------------------------------------------------------------------------------ order


def test_generation_order_is_pixel_by_pixel_then_channel():
    model = transformer(shape=(3, 2, 2), levels=4)
    # data index c * H * W + pixel: R, G, B of pixel 0, then of pixel 1, ...
    assert model.generation_order() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    x = random_x(model, 2)
    sequence = x.permute(0, 2, 3, 1).reshape(2, -1)
    assert torch.equal(x.reshape(2, -1)[:, model.generation_order()], sequence)


@pytest.mark.parametrize("shape, num_classes", [((1, 5, 5), None), ((3, 2, 2), None), ((3, 2, 2), 3)])
def test_logits_depend_on_exactly_the_earlier_values(shape, num_classes):
    model = transformer(shape=shape, levels=3, num_classes=num_classes)
    x = random_x(model, 3)
    cond = None if num_classes is None else torch.tensor([0, 1, 2])
    sequence = x.permute(0, 2, 3, 1).reshape(3, -1)
    embedded = model.value_embedding(sequence).detach()  # (B, D, d_model), generation order
    position = generation_position(model)
    depends = dependencies(
        lambda e: model._logits_from_embeddings(e, model._label(cond)),
        embedded,
        lambda grad: grad.sum(-1)[:, position],  # generation order -> data order
    )
    assert_respects_order(depends, model.generation_order())
    # full receptive field: every earlier value matters (attention reaches the whole prefix)
    earlier = position[None, :] < position[:, None]  # [d, e]: e generated before d
    assert torch.equal(depends, earlier)
    if shape[0] == 3:  # G of a pixel sees its R, B sees R and G, R sees neither
        C, H, W = shape
        for pixel in range(H * W):
            r, g, b = (c * H * W + pixel for c in range(C))
            assert depends[g, r] and depends[b, r] and depends[b, g]
            assert not depends[r, g] and not depends[r, b] and not depends[g, b]


def test_logits_agree_with_the_embedding_path_and_data_order():
    model = transformer(shape=(3, 2, 3), levels=4)
    x = random_x(model, 4)
    logits = model.logits(x)
    assert logits.shape == (4, 18, 4)
    # changing the last generated value (B of the last pixel) changes nothing
    last = model.generation_order()[-1]
    changed = x.reshape(4, -1).clone()
    changed[:, last] = (changed[:, last] + 1) % 4
    torch.testing.assert_close(model.logits(changed.view_as(x)), logits, rtol=0, atol=0)
    # changing R of pixel 0 changes every later conditional, G and B of pixel 0 included
    changed = x.clone()
    changed[:, 0, 0, 0] = (changed[:, 0, 0, 0] + 1) % 4
    delta = (model.logits(changed) - logits).abs().amax(-1)  # (B, D), data order
    assert (delta[:, 0] == 0).all()
    assert (delta[:, 1:] > 1e-6).all()


# ------------------------------------------------------------------------------ probabilities


@pytest.mark.parametrize("num_classes", [None, 4])
def test_probabilities_sum_to_one_on_a_2x2_binary_image(num_classes):
    model = transformer(shape=(1, 2, 2), levels=2, num_classes=num_classes)
    for label in [None] if num_classes is None else [0, 3]:
        assert_normalized(model, None if label is None else torch.tensor([label]))


def test_probabilities_sum_to_one_on_a_2x2_colour_image():
    assert_normalized(transformer(shape=(3, 2, 2), levels=2))


def test_labels_change_the_distribution():
    model = transformer(shape=(1, 2, 2), num_classes=4)
    x = random_x(model, 16)
    a, b = (model.log_prob(x, torch.full((16,), label)) for label in (1, 2))
    assert (a - b).abs().min() > 1e-6  # every conditional, the first one included


# ------------------------------------------------------------------------------ cached step


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, num_classes", [((1, 4, 4), None), ((3, 3, 2), 5)])
def test_step_equals_full_forward(shape, num_classes, dtype):
    model = transformer(shape=shape, levels=4, num_classes=num_classes, dtype=dtype, layers=3)
    x = random_x(model, 5)
    cond = None if num_classes is None else torch.tensor([0, 4, 2, 2, 1])
    assert_step_equals_full(model, x, cond)


def test_step_sums_to_log_prob_and_fills_the_preallocated_cache():
    model = transformer(shape=(3, 2, 2), levels=4, num_classes=3)
    x, cond = random_x(model, 6), torch.arange(6) % 3
    cache = model.init_cache(6, cond)
    assert isinstance(cache, PixelTransformerCache) and isinstance(cache.kv, KVCache)
    assert cache.kv.keys.shape == (2, 6, 4, 12, 4) and cache.kv.keys.dtype == torch.float64
    keys_ptr = cache.kv.keys.data_ptr()
    flat, prev, total = x.reshape(6, -1), None, torch.zeros(6, dtype=torch.float64)
    for d in model.generation_order():
        logits = model.step(cache, prev)
        total += logits.log_softmax(-1).gather(1, flat[:, d, None]).squeeze(1)
        prev = flat[:, d]
    assert cache.kv.length == 12 and cache.kv.keys.data_ptr() == keys_ptr
    torch.testing.assert_close(total, model.log_prob(x, cond), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("shape, num_classes", [((1, 5, 5), None), ((3, 2, 3), 4)])
def test_cached_and_naive_samples_agree(shape, num_classes, batch):
    model = transformer(shape=shape, levels=3, num_classes=num_classes)
    cond = None if num_classes is None else torch.arange(batch) % num_classes
    assert_cached_equals_naive(model, batch, cond, seed=batch)


def test_samples_vary_and_follow_the_labels():
    model = transformer(shape=(1, 3, 3), num_classes=2)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = model.sample(64, torch.zeros(64, dtype=torch.long), g())
    b = model.sample(64, torch.ones(64, dtype=torch.long), g())
    assert a.shape == (64, 1, 3, 3) and a.dtype == torch.long
    assert len(torch.unique(a.flatten(1), dim=0)) > 4
    assert not torch.equal(a, b)


# ------------------------------------------------------------------------------ saving and training


def test_state_dict_round_trip_through_build():
    config = dict(shape=(3, 2, 2), levels=4, d_model=16, heads=2, layers=2, num_classes=3)
    saved = transformer(**config)
    torch.manual_seed(1)
    loaded = build("pixel_transformer", **config).double()
    loaded.load_state_dict(saved.state_dict())
    x, cond = random_x(saved, 5), torch.arange(5) % 3
    assert torch.equal(loaded.log_prob(x, cond), saved.log_prob(x, cond))
    samples = [m.sample(5, cond, torch.Generator().manual_seed(2)) for m in (saved, loaded)]
    assert torch.equal(*samples)


def test_a_few_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    model = PixelTransformer((1, 3, 3), levels=2, d_model=16, heads=2, layers=1)
    x = (torch.arange(9).view(1, 1, 3, 3) % 2).expand(32, -1, -1, -1)  # one checkerboard
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = model.loss(x).item()
    for _ in range(30):
        optimizer.zero_grad()
        model.loss(x).backward()
        optimizer.step()
    assert start > 0.6 and model.loss(x).item() < 0.1


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(shape=(5, 5)), TypeError, r"shape must be a sequence \(C, H, W\) of three ints"),
        (dict(shape="abc"), TypeError, "shape must be a sequence"),
        (dict(shape=(1, 0, 5)), ValueError, r"shape\[1\] must be >= 1"),
        (dict(shape=(1, 5.0, 5)), TypeError, r"shape\[1\] must be an int"),
        (dict(levels=1), ValueError, "levels must be >= 2"),
        (dict(d_model=0), ValueError, "d_model must be >= 1"),
        (dict(heads=0), ValueError, "heads must be >= 1"),
        (dict(d_model=10, heads=4), ValueError, "d_model must be a multiple of heads, got d_model=10, heads=4"),
        (dict(layers=0), ValueError, "layers must be >= 1"),
        (dict(num_classes=0), ValueError, "num_classes must be >= 1"),
        (dict(mlp_ratio=0), ValueError, "mlp_ratio must be >= 1"),
        (dict(levels=True), TypeError, "levels must be an int"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    config = dict(shape=(1, 5, 5), levels=2, d_model=16, heads=4, layers=2) | kwargs
    with pytest.raises(error, match=match):
        PixelTransformer(**config)


def test_bad_data_and_cond():
    assert_image_model_rejects_bad_data_and_cond(
        transformer(shape=(1, 3, 3), levels=3, num_classes=2), transformer(shape=(1, 3, 3), levels=3)
    )


def test_bad_step():
    model = transformer(shape=(1, 1, 3), levels=3)
    assert_step_rejects_bad_input(model, "cache must be a PixelTransformerCache")
    cache = model.init_cache(2)
    model.step(cache, None)
    with pytest.raises(ValueError, match="values in"):
        model.step(cache, torch.tensor([0, 3]))
    assert cache.kv.length == 1  # the failed step wrote nothing