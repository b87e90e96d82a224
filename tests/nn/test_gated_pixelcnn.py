"""fastgen.nn.GatedPixelCNNLayer: parameters, chaining, class conditioning, and the
incremental form (step_row / step_pixel over a whole image equals the full forward)."""

import pytest
import torch

from fastgen.nn import GatedPixelCNNLayer
from fastgen.ops import gated_pixelcnn_layer_ref

from ..helpers import fast_backends

BACKENDS = ["ref"] + fast_backends("gated_pixelcnn_layer", "cpu", torch.float64)


def test_parameters_and_repr():
    layer = GatedPixelCNNLayer(6, 5, first_layer=True, num_classes=4, color_channels=3, in_channels=3, skip_channels=9)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes == {
        "v_weight": (12, 3, 3, 5), "v_bias": (12,), "h_weight": (12, 3, 1, 3), "h_bias": (12,),
        "link_weight": (12, 12), "res_weight": (6, 6), "res_bias": (6,), "skip_weight": (9, 6), "skip_bias": (9,),
        "v_embedding": (4, 12), "h_embedding": (4, 12),
    }
    assert "first_layer=True" in repr(layer) and "skip_channels=9" in repr(layer)
    assert GatedPixelCNNLayer(4, 3).skip_weight is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequential_with_labels_matches_reference(backend):
    torch.manual_seed(0)
    first = GatedPixelCNNLayer(6, 3, first_layer=True, num_classes=3, color_channels=3, in_channels=3,
                               backend=backend).double()
    later = GatedPixelCNNLayer(6, 5, num_classes=3, color_channels=3, skip_channels=3, backend=backend).double()
    for layer in (first, later):
        torch.nn.init.normal_(layer.v_embedding)
        torch.nn.init.normal_(layer.h_embedding)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    labels = torch.tensor([2, 0])
    v, h = first((x, x), labels)
    v2, h2, skip = later((v, h), labels)
    ref = gated_pixelcnn_layer_ref(
        v, h, later.v_weight, later.v_bias, later.h_weight, later.h_bias, later.link_weight, later.res_weight,
        later.res_bias, later.skip_weight, later.skip_bias, color_channels=3,
        v_cond=later.v_embedding[labels], h_cond=later.h_embedding[labels],
    )
    for got, want in zip((v2, h2, skip), ref):
        torch.testing.assert_close(got, want)
    # The labels matter: another class gives another output.
    assert not torch.allclose(later((v, h), torch.tensor([1, 1]))[1], h2)
    with pytest.raises(ValueError, match="labels"):
        later((v, h))
    with pytest.raises(ValueError, match="no num_classes"):
        GatedPixelCNNLayer(6, 3)((v, h), labels)


def test_constructor_errors():
    with pytest.raises(ValueError, match="odd"):
        GatedPixelCNNLayer(4, 4)
    with pytest.raises(ValueError, match="color_channels"):
        GatedPixelCNNLayer(4, 3, color_channels=3)
    with pytest.raises(ValueError, match="in_channels == channels"):
        GatedPixelCNNLayer(4, 3, in_channels=2)
    with pytest.raises(ValueError, match="GatedPixelCNNLayer: channels must be >= 1, got -2"):
        GatedPixelCNNLayer(-2, 3)
    with pytest.raises(ValueError, match="GatedPixelCNNLayer: in_channels must be >= 1, got 0"):
        GatedPixelCNNLayer(3, 3, first_layer=True, in_channels=0)
    with pytest.raises(TypeError, match="GatedPixelCNNLayer: channels must be an int"):
        GatedPixelCNNLayer(3.0, 3)


def _labelled_layer():
    torch.manual_seed(0)
    layer = GatedPixelCNNLayer(2, 3, num_classes=3).double()
    torch.nn.init.normal_(layer.v_embedding)
    torch.nn.init.normal_(layer.h_embedding)
    return layer


@pytest.mark.parametrize(
    "labels,error,match",
    [
        (torch.tensor([3, 0]), ValueError, r"labels must have values in \[0, 3\), got values in \[0, 3\]"),
        (torch.tensor([-1, 0]), ValueError, r"labels must have values in \[0, 3\), got values in \[-1, 0\]"),
        (torch.tensor([1.0, 0.0]), TypeError, "labels must have an integer dtype, got torch.float32"),
        (torch.tensor([True, False]), TypeError, "labels must have an integer dtype"),
        (torch.tensor([1]), ValueError, r"labels must have shape \(2,\), one label per example, got shape \(1,\)"),
        (torch.tensor([[1, 0]]), ValueError, r"labels must have shape \(2,\)"),
        ([1, 0], TypeError, "labels must be a torch.Tensor"),
    ],
)
def test_bad_labels_raise(labels, error, match):
    """Out of range labels used to index out of bounds, and -1 to wrap to the last class."""
    layer = _labelled_layer()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(error, match="GatedPixelCNNLayer: " + match):
        layer((x, x), labels)
    state = layer.init_state(2, 3, 3)
    with pytest.raises(error, match="GatedPixelCNNLayer.step_row: " + match):
        layer.step_row(state, 0, labels)
    with pytest.raises(error, match="GatedPixelCNNLayer.step_pixel: " + match):
        layer.step_pixel(state, 0, 0, labels)
    # Any integer dtype of valid labels gives the int64 labels' result.
    good = torch.tensor([2, 0])
    torch.testing.assert_close(layer((x, x), good.to(torch.int32))[1], layer((x, x), good)[1])


def test_labels_checked_again_after_an_in_place_change():
    """The steps check the same labels once (sampling passes them at every pixel); a change
    in place is seen."""
    layer = _labelled_layer()
    state = layer.init_state(2, 3, 3)
    labels = torch.tensor([2, 0])
    layer.step_row(state, 0, labels)
    first = layer.step_pixel(state, 0, 0, labels)
    torch.testing.assert_close(layer.step_pixel(state, 0, 0, labels), first, rtol=0, atol=0)
    labels[0] = -1
    with pytest.raises(ValueError, match=r"step_pixel: labels must have values in \[0, 3\), got values in \[-1, 0\]"):
        layer.step_pixel(state, 0, 0, labels)
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        layer.step_pixel(layer.init_state(3, 3, 3), 0, 0, torch.tensor([2, 0]))


def test_bad_input_and_indices_raise():
    layer = GatedPixelCNNLayer(2, 3).double()
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"GatedPixelCNNLayer: the input must be a pair \(v, h\) of tensors, got Tensor"):
        layer(x)
    with pytest.raises(TypeError, match=r"the input must be a pair \(v, h\) of tensors, got a tuple of 3"):
        layer((x, x, x))
    with pytest.raises(TypeError, match="GatedPixelCNNLayer: v must be a torch.Tensor, got list"):
        layer(([1.0], x))
    for batch, error, match in ((-1, ValueError, "batch must be >= 0, got -1"), (2.5, TypeError, "batch must be an int")):
        with pytest.raises(error, match="GatedPixelCNNLayer.init_state: " + match):
            layer.init_state(batch, 3, 4)
    with pytest.raises(ValueError, match="GatedPixelCNNLayer.init_state: width must be >= 1, got 0"):
        layer.init_state(1, 3, 0)
    state = layer.init_state(1, 3, 4)
    with pytest.raises(ValueError, match=r"GatedPixelCNNLayer.step_row: i must be in \[0, 3\), got 7"):
        layer.step_row(state, 7)  # used to return a row of padding
    with pytest.raises(ValueError, match=r"step_row: i must be in \[0, 3\), got -1"):
        layer.step_row(state, -1)
    with pytest.raises(TypeError, match="step_row: i must be an int, got float"):
        layer.step_row(state, 1.0)
    layer.step_row(state, 0)
    with pytest.raises(ValueError, match=r"GatedPixelCNNLayer.step_pixel: i must be in \[0, 3\), got -1"):
        layer.step_pixel(state, -1, 0)  # used to wrap to the last row
    with pytest.raises(ValueError, match=r"step_pixel: j must be in \[0, 4\), got 4"):
        layer.step_pixel(state, 0, 4)
    with pytest.raises(TypeError, match="step_pixel: state must be a GatedPixelCNNState"):
        layer.step_pixel(state.h_in, 0, 0)
    assert layer.step_pixel(state, 2, 3).shape == (1, 2)
    assert layer.init_state(0, 3, 4).v_in.shape == (0, 2, 3, 4)


def _run_steps(layers, x, labels):
    """Sample-order evaluation of a stack: row i's vertical stacks from the rows above, then
    pixel by pixel the horizontal stacks, feeding each layer's outputs into the next
    layer's buffers. Returns the last layer's (v_out, h_out[, skip]) assembled."""
    B, _, H, W = x.shape
    states = [layer.init_state(B, H, W) for layer in layers]
    last = layers[-1]
    v_out = torch.zeros(B, last.channels, H, W, dtype=x.dtype)
    h_out = torch.zeros_like(v_out)
    skip = torch.zeros(B, last.skip_channels, H, W, dtype=x.dtype) if last.skip_channels else None
    for i in range(H):
        states[0].v_in[:, :, i] = x[:, :, i]
        for n, (layer, state) in enumerate(zip(layers, states)):
            v_row = layer.step_row(state, i, labels)
            if n + 1 < len(layers):
                states[n + 1].v_in[:, :, i] = v_row
            else:
                v_out[:, :, i] = v_row
        for j in range(W):
            states[0].h_in[:, :, i, j] = x[:, :, i, j]
            for n, (layer, state) in enumerate(zip(layers, states)):
                out = layer.step_pixel(state, i, j, labels)
                h = out[0] if isinstance(out, tuple) else out
                if n + 1 < len(layers):
                    states[n + 1].h_in[:, :, i, j] = h
                else:
                    h_out[:, :, i, j] = h
                    if skip is not None:
                        skip[:, :, i, j] = out[1]
    return v_out, h_out, skip


@pytest.mark.parametrize("k,colour,B,skip,classes", [(3, 1, 1, None, None), (5, 3, 2, 3, 4), (1, 3, 2, None, 2), (7, 1, 3, 2, None)])
def test_step_equals_full(k, colour, B, skip, classes):
    torch.manual_seed(k)
    c_img, p, H, W = 3, 6, 5, 6
    layers = [
        GatedPixelCNNLayer(p, k, first_layer=True, in_channels=c_img, color_channels=colour, num_classes=classes).double(),
        GatedPixelCNNLayer(p, 3, color_channels=colour, num_classes=classes, skip_channels=skip).double(),
    ]
    for layer in layers:
        if classes:
            torch.nn.init.normal_(layer.v_embedding)
            torch.nn.init.normal_(layer.h_embedding)
    x = torch.randn(B, c_img, H, W, dtype=torch.float64)
    labels = torch.randint(0, classes, (B,)) if classes else None
    vh = (x, x)
    for layer in layers:
        vh = layer(vh, labels)
    v, h, s = _run_steps(layers, x, labels)
    torch.testing.assert_close(v, vh[0])
    torch.testing.assert_close(h, vh[1])
    if skip:
        torch.testing.assert_close(s, vh[2])
    # A single first layer on its own too.
    v1, h1 = layers[0]((x, x), labels)
    v, h, _ = _run_steps(layers[:1], x, labels)
    torch.testing.assert_close(v, v1)
    torch.testing.assert_close(h, h1)


def test_step_pixel_is_idempotent_and_colours_come_in_turn():
    """Re-calling step_pixel after writing another colour of the same pixel is how RGB is
    sampled: the first colour group's output ignores the pixel's own colours, so it is
    unchanged by the writes, and calling twice on the same state gives the same result."""
    torch.manual_seed(0)
    layer = GatedPixelCNNLayer(6, 3, first_layer=True, in_channels=3, color_channels=3).double()
    state = layer.init_state(2, 4, 4)
    state.v_in.normal_()
    state.h_in[:, :, 2, :2].normal_()
    layer.step_row(state, 2)
    before = layer.step_pixel(state, 2, 2)
    torch.testing.assert_close(layer.step_pixel(state, 2, 2), before, rtol=0, atol=0)
    state.h_in[:, 0, 2, 2] = 1.5  # the sampled red value
    after = layer.step_pixel(state, 2, 2)
    torch.testing.assert_close(after[:, :2], before[:, :2], rtol=0, atol=0)  # red group: unchanged
    assert not torch.allclose(after[:, 2:], before[:, 2:])  # green and blue see red
