"""fastgen.nn.CausalConv1d: a drop-in causal nn.Conv1d with a one-step form."""

import pytest
import torch
from torch import nn

from fastgen.nn import CausalConv1d
from fastgen.ops import causal_conv1d_ref

from ..helpers import fast_backends

BACKENDS = ["ref"] + fast_backends("causal_conv1d", "cpu")


def test_same_parameters_and_init_as_conv1d():
    torch.manual_seed(0)
    layer = CausalConv1d(6, 12, 3, dilation=4, groups=3)
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 12, 3, dilation=4, groups=3)
    assert isinstance(layer, nn.Conv1d)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    for (name, p), q in zip(layer.named_parameters(), conv.parameters()):
        assert torch.equal(p, q), name
    assert CausalConv1d(3, 6, 2, bias=False).bias is None
    conv.load_state_dict(layer.state_dict())  # same names and shapes as nn.Conv1d


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_gradients(backend):
    torch.manual_seed(0)
    layer = CausalConv1d(4, 6, 3, dilation=2, backend=backend).double()
    x = torch.randn(2, 4, 11, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    y_ref = causal_conv1d_ref(x, layer.weight, layer.bias, dilation=2)
    torch.testing.assert_close(y, y_ref)
    grads = torch.autograd.grad(y.square().sum(), (x, layer.weight, layer.bias))
    grads_ref = torch.autograd.grad(y_ref.square().sum(), (x, layer.weight, layer.bias))
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stack_is_causal(backend):
    """A WaveNet-like stack (dilations 1, 2, 4 with a nonlinearity): output t depends on
    no input after t, and on every input in its receptive field t-7..t (K = 2)."""
    torch.manual_seed(0)
    T = 12
    stack = nn.Sequential(
        CausalConv1d(2, 4, 2, dilation=1, backend=backend), nn.Tanh(),
        CausalConv1d(4, 4, 2, dilation=2, backend=backend), nn.Tanh(),
        CausalConv1d(4, 2, 2, dilation=4, backend=backend),
    ).double()
    x = torch.randn(1, 2, T, dtype=torch.float64, requires_grad=True)
    y = stack(x)
    for t in (0, 3, 7, 11):
        (grad,) = torch.autograd.grad(y[0, 0, t], x, retain_graph=True)
        depends = (grad[0] != 0).any(dim=0)  # (T,)
        expected = (torch.arange(T) <= t) & (torch.arange(T) >= t - 7)
        assert torch.equal(depends, expected), f"t={t}: depends on {depends.nonzero().flatten().tolist()}"


@pytest.mark.parametrize("ring", [False, True], ids=["shift", "ring"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_step_equals_forward(backend, ring):
    """Stepping a stack of layers through a sequence, one state per layer, reproduces the
    full forward; init_state gives the right zero buffers."""
    torch.manual_seed(0)
    layers = [
        CausalConv1d(3, 4, 2, dilation=1, backend=backend),
        CausalConv1d(4, 4, 3, dilation=4, groups=4, backend=backend),
        CausalConv1d(4, 2, 1, backend=backend),
    ]
    B, T = 2, 10
    x = torch.randn(B, 3, T)
    with torch.no_grad():
        y_full = layers[2](torch.tanh(layers[1](torch.tanh(layers[0](x)))))
        states = [layer.init_state(B) for layer in layers]
        assert [tuple(s.shape) for s in states] == [(B, 3, 1), (B, 4, 8), (B, 4, 0)]
        assert all(s.dtype == torch.float32 and not s.any() for s in states)
        position = torch.zeros(B, dtype=torch.int64) if ring else None
        outs = []
        for t in range(T):
            h = torch.tanh(layers[0].step(x[:, :, t], states[0], position))
            h = torch.tanh(layers[1].step(h, states[1], position))
            outs.append(layers[2].step(h, states[2], position))
            if ring:
                position += 1
    torch.testing.assert_close(torch.stack(outs, dim=2), y_full)


def test_init_state_dtype_and_device():
    layer = CausalConv1d(3, 5, 4, dilation=3).double()
    state = layer.init_state(7)
    assert state.shape == (7, 3, 9) and state.dtype == torch.float64 and state.device == layer.weight.device
    assert layer.init_state(2, dtype=torch.float32, device="meta").device.type == "meta"


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(kernel_size=0), ValueError, "kernel_size must be >= 1"),
        (dict(kernel_size=(2,)), TypeError, "kernel_size must be an int"),
        (dict(dilation=0), ValueError, "dilation must be >= 1"),
        (dict(groups=2), ValueError, "groups=2 must divide in_channels and out_channels, got 3 and 6"),
        (dict(groups=0), ValueError, "groups must be >= 1"),
        (dict(in_channels=0, groups=1), ValueError, "CausalConv1d: in_channels must be >= 1, got 0"),
        (dict(out_channels=-2), ValueError, "CausalConv1d: out_channels must be >= 1, got -2"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = dict(in_channels=3, out_channels=6, kernel_size=2) | kwargs
    with pytest.raises(error, match=match):
        CausalConv1d(**args)


def test_step_rejects_a_wrong_state():
    layer = CausalConv1d(3, 6, 3, dilation=2)
    with pytest.raises(ValueError, match=r"state must have shape .* = \(2, 3, 4\)"):
        layer.step(torch.randn(2, 3), torch.zeros(2, 3, 3))


def test_compiles_without_graph_breaks():
    torch._dynamo.reset()
    model = nn.Sequential(CausalConv1d(2, 8, 2), nn.ReLU(), CausalConv1d(8, 8, 2, dilation=2), nn.ReLU(), CausalConv1d(8, 1, 1))
    x = torch.randn(2, 2, 9)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
