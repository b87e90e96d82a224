"""WaveNet: causality by Jacobian on a 32-step sequence, exhaustive normalization (4 steps x
4 levels), the cached step against the full forward, cached against naive sampling, the
preallocated queues, training and argument checks."""

from __future__ import annotations

import pytest
import torch

import fastgen
from fastgen.data import synthetic_audio
from fastgen.models import WaveNet, build
from tests.models.autoregressive import (
    assert_cached_equals_naive,
    assert_normalized,
    assert_respects_order,
    assert_step_equals_full,
    assert_step_rejects_bad_input,
    dependencies,
)


def _model(num_classes=None, *, levels=6, length=32, kernel_size=2, layers_per_stack=3, stacks=2, dtype=torch.float64):
    torch.manual_seed(0)
    model = WaveNet(
        levels, residual_channels=4, gate_channels=3, skip_channels=8, layers_per_stack=layers_per_stack,
        stacks=stacks, kernel_size=kernel_size, num_classes=num_classes, length=length,
    )
    return model.to(dtype)


def _data(model, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(model.levels, (batch, model.length), generator=g)
    cond = None if model.num_classes is None else torch.randint(model.num_classes, (batch,), generator=g)
    return x, cond


def test_receptive_field_of_the_benchmark_configuration():
    model = WaveNet(256, 64, 64, 256, layers_per_stack=10, stacks=2, length=4096)
    assert model.receptive_field == 2047
    assert [b.dilation for b in model.blocks] == [2**i for i in range(10)] * 2
    assert model.blocks[0].conv_weight.shape == (128, 64, 2)  # gate 2 x 64
    assert isinstance(build("wavenet", levels=4, length=8, layers_per_stack=2, stacks=1), WaveNet)


@pytest.mark.parametrize("kernel_size, layers_per_stack, stacks", [(2, 3, 2), (3, 2, 2), (2, 4, 1)])
@pytest.mark.parametrize("num_classes", [None, 3])
def test_logits_see_exactly_the_receptive_field_before_t(kernel_size, layers_per_stack, stacks, num_classes):
    model = _model(num_classes, kernel_size=kernel_size, layers_per_stack=layers_per_stack, stacks=stacks)
    x, cond = _data(model, 2)
    embedded = model.embedding(x).transpose(1, 2).detach()  # (B, R, 32): the float input
    depends = dependencies(lambda e: model.logits_from_embedding(e, cond), embedded, lambda g: g.sum(1))
    assert_respects_order(depends, list(range(32)))  # nothing at or after t
    t, s = torch.arange(32)[:, None], torch.arange(32)[None, :]
    rf = model.receptive_field
    assert rf == 1 + stacks * (kernel_size - 1) * (2**layers_per_stack - 1) < 32
    assert torch.equal(depends, (s < t) & (s >= t - rf))  # and everything in the receptive field


def test_first_logits_are_the_start_vectors_and_labels_matter():
    model = _model(num_classes=3)
    x, _ = _data(model, 2)
    a = model.logits(x, torch.tensor([0, 0]))
    b = model.logits(x.flip(1), torch.tensor([0, 1]))
    assert torch.equal(a[0, 0], b[0, 0])  # t = 0 sees only the start vector and the label
    assert (a[1, 0] - b[1, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("num_classes", [None, 3])
def test_probabilities_sum_to_one(num_classes):
    model = _model(num_classes, levels=4, length=4, layers_per_stack=2)
    for label in [None] if num_classes is None else [0, 2]:
        assert_normalized(model, None if label is None else torch.tensor([label]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("num_classes", [None, 3])
def test_steps_equal_the_full_forward(dtype, kernel_size, num_classes):
    # 32 steps with queues of length (K-1) * dilation <= 8: every ring buffer wraps around.
    model = _model(num_classes, kernel_size=kernel_size, dtype=dtype)
    x, cond = _data(model, 3)
    assert_step_equals_full(model, x, cond)


def test_steps_equal_the_full_forward_on_the_reference_backend():
    model = _model(num_classes=3)
    x, cond = _data(model, 2)
    with fastgen.use_backend("ref"):
        assert_step_equals_full(model, x, cond)


def test_steps_sum_to_log_prob_and_reuse_the_preallocated_queues():
    model = _model(num_classes=3)
    x, cond = _data(model, 4)
    cache = model.init_cache(4, cond)
    assert [tuple(s.shape) for s in cache.states] == [(4, 4, d) for d in (1, 2, 4, 1, 2, 4)]
    pointers = [s.data_ptr() for s in cache.states]
    total, prev = torch.zeros(4, dtype=torch.float64), None
    with torch.no_grad():
        for t in range(model.length):
            total += torch.log_softmax(model.step(cache, prev), -1).gather(1, x[:, t : t + 1]).squeeze(1)
            prev = x[:, t]
    assert [s.data_ptr() for s in cache.states] == pointers
    assert cache.position == 32 and cache.time.tolist() == [32] * 4
    torch.testing.assert_close(total, model.log_prob(x, cond), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("num_classes", [None, 3])
def test_cached_and_naive_samples_are_identical(batch, num_classes):
    model = _model(num_classes, levels=6, length=20)
    cond = None if num_classes is None else torch.arange(batch) % num_classes
    assert_cached_equals_naive(model, batch, cond, seed=batch)
    x = model.sample(batch, cond, torch.Generator().manual_seed(3))
    assert x.dtype == torch.long and len(torch.unique(x)) > 3  # the samples vary


def test_training_lowers_the_loss_on_synthetic_audio():
    data = synthetic_audio(16, length=32)
    torch.manual_seed(0)
    model = WaveNet(256, 8, 8, 16, layers_per_stack=4, stacks=1, num_classes=3, length=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, cond = data.train, data.train_labels
    first = model.bits_per_dim(x, cond).item()
    for _ in range(15):
        opt.zero_grad()
        loss = model.loss(x, cond)
        loss.backward()
        opt.step()
    assert model.bits_per_dim(x, cond).item() < first - 1.0  # starts near 8 bits (uniform over 256)


def test_state_dict_round_trip():
    model = _model(num_classes=3)
    fresh = build("wavenet", levels=6, residual_channels=4, gate_channels=3, skip_channels=8, layers_per_stack=3,
                  stacks=2, num_classes=3, length=32).double()
    fresh.load_state_dict(model.state_dict())
    x, cond = _data(model, 3)
    assert torch.equal(fresh.log_prob(x, cond), model.log_prob(x, cond))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(levels=1), ValueError, "levels must be >= 2"),
        (dict(levels=4.0), TypeError, "levels must be an int"),
        (dict(residual_channels=0), ValueError, "residual_channels must be >= 1"),
        (dict(gate_channels=0), ValueError, "gate_channels must be >= 1"),
        (dict(skip_channels=0), ValueError, "skip_channels must be >= 1"),
        (dict(layers_per_stack=0), ValueError, "layers_per_stack must be >= 1"),
        (dict(stacks=0), ValueError, "stacks must be >= 1"),
        (dict(kernel_size=1), ValueError, "kernel_size must be >= 2"),
        (dict(num_classes=0), ValueError, "num_classes must be >= 1"),
        (dict(length=0), ValueError, "length must be >= 1"),
        (dict(length=True), TypeError, "length must be an int"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    config = dict(levels=4, residual_channels=2, gate_channels=2, skip_channels=2, layers_per_stack=1, stacks=1, length=4)
    with pytest.raises(error, match=match):
        WaveNet(**{**config, **kwargs})


def test_bad_data_and_cond():
    plain, labelled = _model(), _model(num_classes=3)
    x, _ = _data(plain, 2)
    with pytest.raises(ValueError, match=r"shape \(B, 32\)"):
        plain.log_prob(x[:, :31])
    with pytest.raises(ValueError, match=r"shape \(B, 32\)"):
        plain.logits(x[:, None])
    with pytest.raises(ValueError, match=r"values in \[0, 6\)"):
        plain.logits(x + 1)
    with pytest.raises(TypeError, match="integer dtype"):
        plain.log_prob(x.double())
    with pytest.raises(ValueError, match="takes no cond"):
        plain.logits(x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="cond must be a tensor"):
        labelled.log_prob(x)
    with pytest.raises(ValueError, match=r"cond must have shape \(2,\)"):
        labelled.logits(x, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(TypeError, match=r"cond \(class labels\) must have an integer dtype"):
        labelled.log_prob(x, torch.zeros(2))
    with pytest.raises(ValueError, match=r"cond \(class labels\) must have values in \[0, 3\)"):
        labelled.sample(2, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"cond must have shape \(4,\)"):
        labelled.init_cache(4, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="batch must be >= 1"):
        plain.init_cache(0)


def test_bad_step():
    assert_step_rejects_bad_input(_model(length=5), "cache must be a WaveNetCache")


def test_a_cache_of_another_wavenet_or_label_is_refused():
    plain, other, labelled = _model(length=5), _model(length=5, levels=4), _model(3, length=5)
    with pytest.raises(ValueError, match="WaveNet.step: cache was made by another model's init_cache"):
        plain.step(other.init_cache(2), None)  # of another shape: its weights and queues
    with pytest.raises(ValueError, match=r"WaveNet: cond \(class labels\) must have values in \[0, 3\)"):
        labelled.init_cache(2, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"WaveNet: cond must have shape \(2,\)"):
        labelled.init_cache(2, torch.tensor([1]))


def test_logits_from_embedding_checks_the_embedding():
    model, labelled = _model(), _model(3)
    x, _ = _data(model, 2)
    embedded = model.embedding(x).transpose(1, 2)  # (2, R, T)
    torch.testing.assert_close(model.logits_from_embedding(embedded), model.logits(x))
    with pytest.raises(ValueError, match=r"logits_from_embedding: embedded must have shape \(B, 4, T\)"):
        model.logits_from_embedding(embedded[:, :3])
    with pytest.raises(ValueError, match=r"logits_from_embedding: embedded must have shape \(B, 4, T\) with T >= 1"):
        model.logits_from_embedding(embedded[:, :, :0])
    with pytest.raises(ValueError, match=r"logits_from_embedding: embedded must have shape \(B, R, T\)"):
        model.logits_from_embedding(embedded[0])
    with pytest.raises(TypeError, match="logits_from_embedding: embedded must have the model's dtype torch.float64"):
        model.logits_from_embedding(embedded.float())
    with pytest.raises(TypeError, match="cond must be a tensor"):
        labelled.logits_from_embedding(embedded)


def test_log_prob_of_an_empty_batch_is_empty():
    model = _model(3)
    out = model.log_prob(torch.zeros(0, 32, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,) and out.dtype == torch.float64
