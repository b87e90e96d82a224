"""PixelCNN: causality and the blind spot by Jacobian (grey, and colour in both colour
modes), exact normalization, the cached step against the full forward, cached against naive
sampling, categorical and dmol outputs, class conditioning, training, the zoo entry and bad
input."""

from __future__ import annotations

import pytest
import torch

from fastgen import data
from fastgen.models import PixelCNN, build
from fastgen.models.pixelcnn import PixelCNNCache
from tests.helpers import tolerances
from tests.models.autoregressive import (
    assert_cached_equals_naive,
    assert_image_model_rejects_bad_data_and_cond,
    assert_normalized,
    assert_respects_order,
    assert_step_equals_full,
    assert_step_rejects_bad_input,
    bits_after_training,
    dependencies,
)


def pixelcnn(shape=(1, 5, 5), levels=2, channels=6, layers=2, dtype=torch.float64, seed=0, **config) -> PixelCNN:
    """A model in eval mode whose class biases are random (they start at zero, which would
    hide the labels)."""
    torch.manual_seed(seed)
    model = PixelCNN(shape, levels, channels, layers, **config).to(dtype).eval()
    if model.num_classes is not None:
        with torch.no_grad():
            model.class_bias.normal_()
    return model


def random_x(model: PixelCNN, batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, model.levels, (batch, *model.event_shape), generator=torch.Generator().manual_seed(seed))


def random_labels(model: PixelCNN, batch: int, seed: int = 2) -> torch.Tensor | None:
    if model.num_classes is None:
        return None
    return torch.randint(0, model.num_classes, (batch,), generator=torch.Generator().manual_seed(seed))


def connections(kernel_size: int, mask_type: str, out_groups: list[int], in_groups: list[int], H: int, W: int):
    """``(len(out_groups) * H * W, len(in_groups) * H * W)`` bool: which input units a masked
    ``kernel_size`` convolution connects to each output unit, a unit being one channel (or
    one colour group of channels) at one pixel, channel-major. The kernel reads the pixels
    before the output pixel within ``kernel_size // 2`` rows up and columns either side, and,
    at the pixel itself, the input groups before the output's (mask A) or up to it (mask B)."""

    def units(groups):  # (group, row, column) of each unit
        grid = torch.meshgrid(torch.tensor(groups), torch.arange(H), torch.arange(W), indexing="ij")
        return (t.flatten() for t in grid)

    c = kernel_size // 2
    (out_g, out_i, out_j), (in_g, in_i, in_j) = units(out_groups), units(in_groups)
    di, dj = in_i[None, :] - out_i[:, None], in_j[None, :] - out_j[:, None]
    earlier = ((di < 0) & (di >= -c) & (dj.abs() <= c)) | ((di == 0) & (dj < 0) & (dj >= -c))
    same_pixel = (di == 0) & (dj == 0)
    seen_group = in_g[None, :] < out_g[:, None] if mask_type == "A" else in_g[None, :] <= out_g[:, None]
    return earlier | (same_pixel & seen_group)


def receptive_field(model: PixelCNN) -> torch.Tensor:
    """``(D, D)`` bool in data order: ``[d, e]`` says whether the logits of value ``d`` may
    depend on value ``e``, worked out from the kernels: the paths through the mask-A layer,
    the mask-B layers (the residual connection adds nothing they do not have: the centre tap)
    and the two 1x1 head layers, each between units (colour group, pixel) inside the image.
    Colour ``c`` is group ``c`` in autoregressive colour mode, every colour is group 0 in
    independent mode. Unlike the Gated PixelCNN's this field has the blind spot."""
    C, H, W = model.event_shape
    G = model.color_groups
    colours, hidden = [c if G > 1 else 0 for c in range(C)], list(range(G))
    paths = connections(model.first_kernel_size, "A", hidden, colours, H, W).double()
    for _ in model.layers[1:]:
        paths = connections(model.kernel_size, "B", hidden, hidden, H, W).double() @ paths
    paths = connections(1, "B", hidden, hidden, H, W).double() @ paths
    return (connections(1, "B", colours, hidden, H, W).double() @ paths) > 0


# ------------------------------------------------------------------------------ structure


@pytest.mark.parametrize(
    "shape, config",
    [
        ((1, 5, 5), dict(kernel_size=3, first_kernel_size=3)),
        ((1, 5, 5), dict(kernel_size=3, first_kernel_size=5, num_classes=3, output="dmol", levels=3)),
        ((1, 5, 5), dict(kernel_size=3, first_kernel_size=3, residual=False)),
        ((3, 5, 5), dict(kernel_size=3, first_kernel_size=3, num_classes=2)),
        ((3, 5, 5), dict(kernel_size=3, first_kernel_size=3, color_mode="independent", output="dmol", levels=4)),
    ],
    ids=["grey", "grey-k5-labels-dmol", "grey-plain", "colour-labels", "colour-independent-dmol"],
)
def test_dependencies_are_exactly_the_receptive_field(shape, config):
    """Causality (nothing at or after a value in the generation order, so no later colour of
    the same pixel) and the blind spot (exactly the earlier values within the receptive
    field of the kernels, which misses some above and to the right), by the Jacobian of the
    logits with respect to the image the first layer reads."""
    model = pixelcnn(shape, **{"channels": 6, "layers": 2} | config)
    B = 4  # several examples, so that the ReLUs are not all off at some pixel
    image = torch.randn(B, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    labels = random_labels(model, B)
    depends = dependencies(lambda img: model.logits_of_image(img, labels), image, lambda g: g.reshape(B, -1))
    assert_respects_order(depends, model.generation_order())
    expected = receptive_field(model)
    assert torch.equal(depends, expected), (depends ^ expected).nonzero().tolist()[:10]
    C, H, W = shape
    index = lambda c, i, j: (c * H + i) * W + j  # noqa: E731
    if model.first_kernel_size == 3:
        # The blind spot of three stacked 3x3 kernels: pixel (2, 1) sees (0, 3), two rows up
        # and two to the right, but not (1, 3), one row up, though it comes before (2, 1).
        assert depends[index(0, 2, 1), index(C - 1, 0, 3)]
        assert not depends[index(0, 2, 1), index(0, 1, 3)] and not depends[index(0, 2, 1), index(C - 1, 1, 3)]
    if C > 1 and model.color_mode == "autoregressive":  # blue sees red and green, red sees neither
        assert depends[index(2, 2, 2), index(0, 2, 2)] and depends[index(2, 2, 2), index(1, 2, 2)]
        assert not depends[index(0, 2, 2), index(1, 2, 2)] and not depends[index(1, 2, 2), index(2, 2, 2)]
    if C > 1 and model.color_mode == "independent":  # no colour sees another of its pixel
        assert not any(depends[index(a, 2, 2), index(b, 2, 2)] for a in range(C) for b in range(C))
        assert depends[index(0, 2, 2), index(2, 2, 1)]


def test_generation_order_is_pixel_by_pixel_colours_in_turn():
    # data order is channel-major: value (c, i, j) is at c * 4 + i * 2 + j
    for mode in ("autoregressive", "independent"):
        assert pixelcnn((3, 2, 2), layers=0, color_mode=mode).generation_order() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert pixelcnn((1, 2, 3), layers=0).generation_order() == list(range(6))


def test_layers_of_the_benchmark_configuration():
    model = build("pixelcnn", shape=(1, 28, 28), levels=2, channels=64, layers=5, kernel_size=7)
    convs = [(m.kernel_size[0], m.mask_type) for m in model.modules() if hasattr(m, "mask_type")]
    assert convs == [(7, "A")] + [(7, "B")] * 5 + [(1, "B")] * 2
    assert all(m.in_channels == 64 for m in model.layers[1:]) and model.head_out.out_channels == 2


@pytest.mark.parametrize(
    "shape, levels, config",
    [
        ((1, 2, 2), 2, dict()),
        ((1, 2, 2), 2, dict(num_classes=3)),
        ((3, 2, 2), 2, dict(num_classes=2)),
        ((3, 2, 2), 2, dict(color_mode="independent", output="dmol", components=2)),
        ((1, 2, 2), 3, dict(output="dmol", residual=False)),
    ],
    ids=["binary", "binary-labels", "colour-labels", "colour-independent-dmol", "three-levels-dmol-plain"],
)
def test_probabilities_sum_to_one(shape, levels, config):
    model = pixelcnn(shape, levels=levels, channels=6, layers=2, kernel_size=3, first_kernel_size=3, **config)
    classes = model.num_classes
    for label in range(classes or 1):
        assert_normalized(model, None if classes is None else torch.tensor([label]))
    probs = model.log_prob(torch.zeros(1, *shape, dtype=torch.long), random_labels(model, 1)).exp()
    assert 0 < probs.item() < 0.5  # not a degenerate model: the check could fail


def test_dmol_logits_are_the_discretized_mixture():
    """The dmol head's outputs per channel are (mixture logits, locations, log-scales) in the
    [-1, 1] scale: set the head to one component at the second bin, a tenth of a bin wide."""
    model = pixelcnn((3, 3, 3), levels=5, channels=6, layers=1, output="dmol", components=1)
    with torch.no_grad():
        model.head_out.weight.zero_()
        model.head_out.bias.copy_(torch.tensor([0.0, -0.5, -3.0]).repeat(3))  # bin 1 of 0..4 is at -0.5
    probs = model.logits(random_x(model, 2)).exp()  # (2, 27, 5)
    scale = 2 * torch.exp(torch.tensor(-3.0, dtype=torch.float64))  # in bins: 2 per unit of [-1, 1]
    cdf = torch.sigmoid((torch.arange(4, dtype=torch.float64) + 0.5 - 1) / scale)  # at the inner edges
    expected = torch.cat([cdf[:1], cdf[1:] - cdf[:-1], 1 - cdf[-1:]])  # (5,): bins 0..4, about 0.99 on bin 1
    assert expected[1] > 0.98
    torch.testing.assert_close(probs, expected.expand(2, 27, 5))


# ------------------------------------------------------------------------------ cached step

STEP_CONFIGS = {
    "grey": dict(shape=(1, 4, 5), levels=2, kernel_size=3, first_kernel_size=5),
    "grey-labels-k5": dict(shape=(1, 5, 4), levels=3, kernel_size=5, first_kernel_size=7, num_classes=3),
    "grey-plain-dmol": dict(shape=(1, 4, 4), levels=5, kernel_size=3, first_kernel_size=3, residual=False,
                            output="dmol", components=3),
    "colour": dict(shape=(3, 3, 4), levels=4, kernel_size=3, first_kernel_size=3, channels=9),
    "colour-labels-dmol": dict(shape=(3, 4, 3), levels=4, kernel_size=3, first_kernel_size=5, channels=6,
                               num_classes=2, output="dmol", components=2),
    "independent-labels": dict(shape=(3, 4, 3), levels=3, kernel_size=3, first_kernel_size=3, channels=4,
                               num_classes=2, color_mode="independent"),
    "one-layer": dict(shape=(1, 3, 3), levels=2, layers=0),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", STEP_CONFIGS)
def test_step_equals_full(name, dtype):
    model = pixelcnn(dtype=dtype, **STEP_CONFIGS[name])
    x, labels = random_x(model, 3), random_labels(model, 3)
    assert_step_equals_full(model, x, labels, tolerances(dtype))
    # the steps' log-conditionals of the values add up to log_prob
    cache, prev, total = model.init_cache(3, labels), None, torch.zeros(3, dtype=dtype)
    flat = x.reshape(3, -1)
    for d in model.generation_order():
        total += model.step(cache, prev).log_softmax(-1).gather(1, flat[:, d, None]).squeeze(1)
        prev = flat[:, d]
    torch.testing.assert_close(total, model.log_prob(x, labels), **tolerances(dtype))
    assert isinstance(cache, PixelCNNCache) and cache.position == model.num_dims


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("name", ["grey", "grey-labels-k5", "colour", "colour-labels-dmol", "independent-labels"])
def test_cached_equals_naive(name, batch):
    model = pixelcnn(**STEP_CONFIGS[name])
    labels = random_labels(model, batch)
    assert_cached_equals_naive(model, batch, labels, seed=batch)
    if batch == 7:  # the samples vary, so equality says something
        samples = model.sample(batch, labels, torch.Generator().manual_seed(batch))
        assert len(samples.unique()) > 1 and not torch.equal(samples[0], samples[1])


def test_independent_colours_share_one_evaluation():
    """In independent colour mode the later colours of a pixel reuse the logits computed at
    its first colour: changing the cache's copy changes what they return."""
    model = pixelcnn((3, 2, 2), levels=3, channels=4, color_mode="independent")
    cache = model.init_cache(2)
    first = model.step(cache, None)
    cache.logits[:, 1] += 1.0
    zeros = torch.zeros(2, 3, 2, 2, dtype=torch.long)  # colour 1 of pixel 0 sees nothing of colour 0
    torch.testing.assert_close(model.step(cache, torch.tensor([0, 1])), model.logits(zeros)[:, 4] + 1.0)
    torch.testing.assert_close(first, cache.logits[:, 0])


def test_labels_reach_every_value():
    model = pixelcnn((3, 3, 3), levels=3, channels=12, num_classes=4)
    x = random_x(model, 4)
    logits = model.logits(x, torch.tensor([0, 1, 2, 3]))
    other = model.logits(x, torch.tensor([1, 2, 3, 0]))
    assert ((logits - other).abs().amax(-1) > 1e-6).all()  # the first value too: it sees only the labels
    samples = [model.sample(50, torch.full((50,), k), torch.Generator().manual_seed(0)) for k in (0, 1)]
    assert not torch.equal(*samples)


# ------------------------------------------------------------------------------ training


def test_new_cache_after_training_uses_the_new_weights():
    model = pixelcnn((1, 3, 3), channels=8, layers=1, kernel_size=3, first_kernel_size=3).train()
    checkerboard = torch.arange(3)[:, None] + torch.arange(3)
    x = (checkerboard % 2).expand(8, 1, 3, 3)  # learnable: each pixel follows from the one to its left or above
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    start = model.loss(x).item()
    for _ in range(20):
        optimizer.zero_grad()
        model.loss(x).backward()
        optimizer.step()
    assert model.loss(x).item() < start / 10
    model.eval()
    assert_step_equals_full(model, random_x(model, 4))


@pytest.mark.parametrize("output", ["categorical", "dmol"])
def test_training_on_digits_lowers_the_test_loss(output):
    split = data.digits(binarized=True)
    torch.manual_seed(0)
    model = PixelCNN((1, 8, 8), 2, channels=16, layers=2, output=output, components=2)
    with torch.no_grad():
        before = model.bits_per_dim(split.test).item()
    after = bits_after_training(model, split, epochs=1, batch_size=32, lr=1e-2)
    # about 1 before, 0.51 after (both outputs); 0.571 is the trivial baseline (independent pixels)
    assert after < 0.55 and after < 0.6 * before


def test_colour_autoregressive_beats_independent_colours_on_colored_shapes():
    """A pixel of a shape image has the background's or the shape's colour: given the earlier
    pixels, its red says which, and then green and blue follow. Channel-autoregressive masks
    can use that, independent channels cannot. The same small budget (5 epochs of 3200
    8x8 images) gives test bits/dim about 0.41 against 0.48; the margin was 0.046 to 0.090
    over seeds 0-3."""
    split = data.colored_shapes(size=8)
    bits = {}
    for mode in ("autoregressive", "independent"):
        torch.manual_seed(0)
        model = PixelCNN((3, 8, 8), 4, channels=48, layers=2, kernel_size=3, first_kernel_size=5, color_mode=mode)
        bits[mode] = bits_after_training(model, split, epochs=5, lr=1e-2)
    assert bits["autoregressive"] < bits["independent"] - 0.02, bits


# ------------------------------------------------------------------------------ zoo


def test_build_and_state_dict_round_trip():
    config = dict(shape=(3, 4, 4), levels=4, channels=6, layers=1, num_classes=2, output="dmol", components=2)
    torch.manual_seed(0)
    saved = build("pixelcnn", **config)
    assert isinstance(saved, PixelCNN) and saved.cond_shape == () and saved.categories == 4
    assert saved.head_out.out_channels == 3 * 3 * 2 and saved.class_bias.shape == (2, 2, 6)
    torch.manual_seed(1)
    loaded = build("pixelcnn", **config)
    loaded.load_state_dict(saved.state_dict())
    x, labels = torch.randint(0, 4, (2, 3, 4, 4)), torch.tensor([0, 1])
    torch.testing.assert_close(loaded.log_prob(x, labels), saved.log_prob(x, labels), rtol=0, atol=0)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "config, error, match",
    [
        (dict(shape=(5, 5)), TypeError, r"shape must be a sequence \(C, H, W\)"),
        (dict(shape="abc"), TypeError, r"shape must be a sequence \(C, H, W\)"),
        (dict(shape=(1, 0, 5)), ValueError, r"shape\[1\] must be >= 1"),
        (dict(shape=(1, 5.0, 5)), TypeError, r"shape\[1\] must be an int"),
        (dict(levels=1), ValueError, "levels must be >= 2"),
        (dict(channels=0), ValueError, "channels must be >= 1"),
        (dict(layers=-1), ValueError, "layers must be >= 0"),
        (dict(kernel_size=4), ValueError, "kernel_size must be odd"),
        (dict(first_kernel_size=2), ValueError, "first_kernel_size must be odd"),
        (dict(residual=1), TypeError, "residual must be a bool"),
        (dict(color_mode="rgb"), ValueError, "color_mode must be one of 'autoregressive', 'independent'"),
        (dict(num_classes=0), ValueError, "num_classes must be >= 1"),
        (dict(output="logistic"), ValueError, "output must be one of 'categorical', 'dmol'"),
        (dict(components=0), ValueError, "components must be >= 1"),
        (dict(shape=(3, 4, 4), channels=8), ValueError, "colour channels must divide channels"),
    ],
)
def test_bad_config_raises(config, error, match):
    args = dict(shape=(1, 4, 4), levels=2, channels=4, layers=1) | config
    with pytest.raises(error, match=match):
        PixelCNN(**args)


def test_bad_data_and_cond_raise():
    assert_image_model_rejects_bad_data_and_cond(
        pixelcnn((1, 3, 3), levels=3, channels=4, layers=1, num_classes=2),
        pixelcnn((1, 3, 3), levels=3, channels=4, layers=1),
    )


def test_bad_step_raises():
    assert_step_rejects_bad_input(pixelcnn((1, 2, 2), levels=3, channels=4, layers=1), "PixelCNNCache")