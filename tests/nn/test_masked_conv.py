"""fastgen.nn.MaskedConv2d: a drop-in nn.Conv2d with a PixelCNN mask."""

import pytest
import torch
from torch import nn

from fastgen.nn import MaskedConv2d
from fastgen.ops import masked_conv2d_mask, masked_conv2d_ref

from ..helpers import fast_backends


def test_same_parameters_and_init_as_conv2d():
    torch.manual_seed(0)
    layer = MaskedConv2d(6, 12, 5, mask_type="B", color_channels=3, dilation=2)
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 12, 5, padding=4, dilation=2)
    assert isinstance(layer, nn.Conv2d)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    for (name, p), q in zip(layer.named_parameters(), conv.parameters()):
        assert torch.equal(p, q), name
    assert "mask_type='B', color_channels=3" in repr(layer)
    assert MaskedConv2d(3, 6, 3, bias=False).bias is None


@pytest.mark.parametrize("backend", ["ref"] + fast_backends("masked_conv2d", "cpu"))
def test_forward_and_gradients_never_touch_the_weight(backend):
    torch.manual_seed(0)
    layer = MaskedConv2d(3, 6, 3, mask_type="A", color_channels=3, backend=backend).double()
    before = layer.weight.detach().clone()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    y = layer(x)
    torch.testing.assert_close(y, masked_conv2d_ref(x, layer.weight, layer.bias, mask_type="A", color_channels=3))
    y.square().sum().backward()
    assert torch.equal(layer.weight, before), "the weight was masked in place"
    mask = masked_conv2d_mask(6, 3, 3, "A", 3, dtype=torch.bool)
    assert torch.count_nonzero(layer.weight.grad[~mask]) == 0, "a masked tap received gradient"
    assert torch.count_nonzero(layer.weight.grad[mask]) > 0


def test_state_dict_round_trip_and_conv2d_compatibility():
    layer = MaskedConv2d(2, 4, 3, mask_type="B")
    other = MaskedConv2d(2, 4, 3, mask_type="B")
    other.load_state_dict(layer.state_dict())
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(layer(x), other(x))
    conv = nn.Conv2d(2, 4, 3, padding=1)
    conv.load_state_dict(layer.state_dict())  # same names and shapes as nn.Conv2d


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(kernel_size=4), ValueError, "kernel_size must be odd"),
        (dict(kernel_size=(3, 3)), TypeError, "kernel_size must be an int"),
        (dict(mask_type="a"), ValueError, "mask_type must be one of"),
        (dict(color_channels=2), ValueError, "color_channels=2 must divide the input and output channel counts, got 3 and 6"),
        (dict(dilation=0), ValueError, "dilation must be >= 1"),
        (dict(in_channels=0), ValueError, "MaskedConv2d: in_channels must be >= 1, got 0"),
        (dict(out_channels=-1), ValueError, "MaskedConv2d: out_channels must be >= 1, got -1"),
        (dict(out_channels=6.0), TypeError, "MaskedConv2d: out_channels must be an int"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = dict(in_channels=3, out_channels=6, kernel_size=3) | kwargs
    with pytest.raises(error, match=match):
        MaskedConv2d(**args)


def test_compiles_without_graph_breaks():
    torch._dynamo.reset()
    model = nn.Sequential(
        MaskedConv2d(1, 8, 7, mask_type="A"), nn.ReLU(), MaskedConv2d(8, 8, 3, mask_type="B"), nn.ReLU(),
        MaskedConv2d(8, 1, 1, mask_type="B"),
    )
    x = torch.randn(2, 1, 6, 5)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("mask,colour,dilation", [("A", 3, 1), ("B", 1, 2)])
@pytest.mark.parametrize("backend", ["ref"] + fast_backends("masked_conv2d_step", "cpu"))
def test_step_equals_forward_pixel_by_pixel(backend, mask, colour, dilation):
    """init_state / write_state / step in raster order reproduce the forward at every pixel,
    writing each input pixel before its step as a sampler does."""
    torch.manual_seed(0)
    layer = MaskedConv2d(3, 6, 3, mask_type=mask, color_channels=colour, dilation=dilation, backend=backend).double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    full = layer(x)
    state = layer.init_state(2, 4, 5)
    P = layer.state_padding
    assert P == dilation and state.shape == (2, 4 + P, 5 + 2 * P, 3) and state.dtype == torch.float64
    for i in range(4):
        for j in range(5):
            layer.write_state(state, x[:, :, i, j], i, j)
            y = layer.step(state, i, j)
            assert not y.requires_grad
            torch.testing.assert_close(y, full[:, :, i, j], atol=1e-10, rtol=1e-10)


def test_packed_weight_is_cached_until_the_weight_changes():
    torch.manual_seed(0)
    layer = MaskedConv2d(3, 6, 5, mask_type="B", color_channels=3).double()
    packed = layer.packed_weight()
    assert layer.packed_weight() is packed, "repacked an unchanged weight"
    state = layer.init_state(1, 3, 3).normal_()
    y0, bias = layer.step(state, 2, 2), layer.bias.detach().clone()
    with torch.no_grad():
        layer.weight.mul_(2)  # in place, as an optimizer step does
    assert layer.packed_weight() is not packed
    torch.testing.assert_close(layer.step(state, 2, 2), 2 * y0 - bias, atol=1e-12, rtol=1e-12)
    assert layer.float().packed_weight().dtype == torch.float32


@pytest.mark.parametrize("mask,colour,kernel", [("A", 3, 3), ("B", 3, 5), ("B", 1, 1)])
def test_centre_matrix_is_what_the_pixel_itself_adds(mask, colour, kernel):
    """A step whose state does not hold pixel (i, j) yet, plus the pixel times the centre
    matrix, is the forward at (i, j): the whole layer for a 1x1 kernel."""
    torch.manual_seed(0)
    layer = MaskedConv2d(6, 9, kernel, mask_type=mask, color_channels=colour).double()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    full = layer(x)
    centre = layer.centre_matrix()
    assert centre.shape == (6, 9) and not centre.requires_grad
    if mask == "A" and colour == 3:  # block lower triangular: group g sees the groups before it
        assert (centre[:, :3] == 0).all() and (centre[:2, 3:6] != 0).all() and (centre[2:, 3:6] == 0).all()
    state = layer.init_state(2, 3, 4)
    for i in range(3):
        for j in range(4):
            y = layer.step(state, i, j) + x[:, :, i, j] @ centre
            torch.testing.assert_close(y, full[:, :, i, j], atol=1e-10, rtol=1e-10)
            layer.write_state(state, x[:, :, i, j], i, j)
