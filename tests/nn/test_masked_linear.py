"""fastgen.nn.MaskedLinear: a drop-in nn.Linear with a fixed 0/1 mask on its weight."""

import pytest
import torch
from torch import nn

from fastgen.nn import MaskedLinear
from fastgen.ops import masked_linear_ref

from ..helpers import fast_backends


def staircase(out_features: int, in_features: int) -> torch.Tensor:
    """Output o sees the inputs before (o + 1) * in / out: a MADE-like mask."""
    return torch.arange(in_features)[None, :] * out_features < (torch.arange(out_features)[:, None] + 1) * in_features


def test_same_parameters_and_init_as_linear_and_all_ones_mask():
    torch.manual_seed(0)
    layer = MaskedLinear(5, 7)
    torch.manual_seed(0)
    linear = nn.Linear(5, 7)
    assert isinstance(layer, nn.Linear)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    for p, q in zip(layer.parameters(), linear.parameters()):
        assert torch.equal(p, q)
    assert layer.mask.dtype == torch.bool and layer.mask.shape == (7, 5) and bool(layer.mask.all())
    x = torch.randn(3, 5)
    torch.testing.assert_close(layer(x), linear(x))
    assert MaskedLinear(5, 7, bias=False).bias is None


@pytest.mark.parametrize("backend", ["ref"] + fast_backends("masked_linear", "cpu"))
def test_set_mask_forward_and_gradients(backend):
    torch.manual_seed(0)
    layer = MaskedLinear(70, 90, backend=backend).double()
    mask = staircase(90, 70)
    layer.set_mask(mask.to(torch.int64))  # 0/1 of any dtype is accepted and stored as bool
    assert layer.mask.dtype == torch.bool and torch.equal(layer.mask, mask)
    before = layer.weight.detach().clone()
    x = torch.randn(4, 70, dtype=torch.float64)
    y = layer(x)
    torch.testing.assert_close(y, masked_linear_ref(x, layer.weight, mask, layer.bias))
    y.square().sum().backward()
    assert torch.equal(layer.weight, before), "the weight was masked in place"
    assert torch.count_nonzero(layer.weight.grad[~mask]) == 0, "a masked weight received gradient"
    assert torch.count_nonzero(layer.weight.grad[mask]) == int(mask.sum())


def test_state_dict_round_trip_keeps_the_mask():
    torch.manual_seed(0)
    layer = MaskedLinear(6, 4)
    layer.set_mask(staircase(4, 6))
    state = layer.state_dict()
    assert set(state) == {"weight", "bias", "mask"}
    other = MaskedLinear(6, 4)
    other.load_state_dict(state)
    assert torch.equal(other.mask, layer.mask) and not bool(other.mask.all())
    x = torch.randn(2, 6)
    assert torch.equal(other(x), layer(x))


@pytest.mark.parametrize(
    "mask,error,match",
    [
        ([[1, 0]], TypeError, "mask must be a tensor, got list"),
        (torch.ones(3, 4), ValueError, r"mask must have shape \(4, 3\), got \(3, 4\)"),
    ],
)
def test_set_mask_bad_arguments(mask, error, match):
    layer = MaskedLinear(3, 4)
    with pytest.raises(error, match=match):
        layer.set_mask(mask)
    assert bool(layer.mask.all()), "a refused mask must leave the old one"


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((-1, 3), ValueError, "MaskedLinear: in_features must be >= 1, got -1"),
        ((0, 3), ValueError, "MaskedLinear: in_features must be >= 1, got 0"),
        ((3, 0), ValueError, "MaskedLinear: out_features must be >= 1, got 0"),
        ((3, 2.0), TypeError, "MaskedLinear: out_features must be an int"),
    ],
)
def test_bad_sizes_raise(args, error, match):
    with pytest.raises(error, match=match):
        MaskedLinear(*args)


def test_compiles_without_graph_breaks():
    torch._dynamo.reset()
    torch.manual_seed(0)
    first, second = MaskedLinear(6, 16), MaskedLinear(16, 6)
    first.set_mask(staircase(16, 6))
    second.set_mask(staircase(6, 16))
    model = nn.Sequential(first, nn.ReLU(), second)
    x = torch.randn(3, 6)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
