"""MaskedMLP with real inputs (its incremental form against the full forward, its
dependencies) and the autoregressive flow layers: round trips and log-determinants in
float64, the incremental inverse (chunked or not) against the differentiable one, bad input."""

from __future__ import annotations

import pytest
import torch

from fastgen.nn import FlowSequential, MaskedAffineAutoregressive, MaskedMLP, Reverse
from fastgen.nn import autoregressive_flow

from ..helpers import logdet_by_jacobian, tolerances
from ..helpers import randomize

TOL = tolerances(torch.float64)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------ MaskedMLP


@pytest.mark.parametrize("hidden, cond_features", [([12, 9], 0), ([3, 5], 2)], ids=["wide", "narrow-cond"])
def test_masked_mlp_incremental_outputs_equal_the_full_forward(hidden, cond_features):
    torch.manual_seed(0)
    net = MaskedMLP(5, hidden, 3, cond_features=cond_features).double()
    x, cond = randn(7, 5), (randn(7, cond_features, seed=1) if cond_features else None)
    full = net(x, cond).view(7, 5, 3)
    state = net.init_state(7, cond)
    for t in range(5):
        if t:
            net.absorb(state, t - 1, x[:, t - 1])
        torch.testing.assert_close(net.outputs(state, t).t(), full[:, t], **TOL)


def test_masked_mlp_outputs_depend_exactly_on_the_earlier_inputs():
    torch.manual_seed(0)
    net = MaskedMLP(4, [20, 20], 2).double()
    x = randn(3, 4).requires_grad_()
    out = net(x).view(3, 4, 2)
    for t in range(4):
        (grad,) = torch.autograd.grad(out[:, t].sum(), x, retain_graph=True)
        depends = grad.abs().sum(0) > 0
        assert torch.equal(depends, torch.arange(4) < t), t


def test_masked_mlp_bad_input_raises():
    """Positions, mask sets and one-hot values are checked, not wrapped or read out of bounds."""
    torch.manual_seed(0)
    onehot = MaskedMLP(3, [4], 2, inputs_per_position=2, num_masks=2)
    real = MaskedMLP(3, [4], 2, cond_features=2)
    x, cond = torch.zeros(2, 3), torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"MaskedMLP: cond must be a Tensor of shape \(2, 2\), got NoneType"):
        real(x)
    with pytest.raises(ValueError, match="MaskedMLP: this layer takes no cond"):
        onehot(torch.zeros(2, 6), cond)
    with pytest.raises(TypeError, match="MaskedMLP: cond has dtype torch.float64 but the network has torch.float32"):
        real(x, cond.double())
    with pytest.raises(ValueError, match=r"MaskedMLP: x must have shape \(B, D \* I\) = \(B, 6\), got shape \(2, 5\)"):
        onehot(torch.zeros(2, 5))
    for mask_set in (-1, 2):
        with pytest.raises(ValueError, match=rf"MaskedMLP.use_mask_set: mask_set must be in \[0, 2\), got {mask_set}"):
            onehot.use_mask_set(mask_set)
        with pytest.raises(ValueError, match=r"MaskedMLP.init_state: mask_set must be in \[0, 2\)"):
            onehot.init_state(2, None, mask_set)
    with pytest.raises(ValueError, match="MaskedMLP.init_state: batch must be >= 0, got -1"):
        onehot.init_state(-1)
    with pytest.raises(ValueError, match=r"MaskedMLP.init_state: cond must be a Tensor of shape \(2, 2\)"):
        real.init_state(2)
    state = onehot.init_state(2)
    for position in (-1, 3, 7):
        with pytest.raises(ValueError, match=rf"MaskedMLP.absorb: position must be in \[0, 3\), got {position}"):
            onehot.absorb(state, position, torch.tensor([0, 1]))
        with pytest.raises(ValueError, match=rf"MaskedMLP.outputs: position must be in \[0, 3\), got {position}"):
            onehot.outputs(state, position)
    before = [t.clone() for t in state.hidden + [state.out]]
    for value, error, match in (
        (torch.tensor([0, 2]), ValueError, r"value must have values in \[0, 2\), got values in \[0, 2\]"),
        (torch.tensor([-1, 0]), ValueError, r"value must have values in \[0, 2\), got values in \[-1, 0\]"),
        (torch.tensor([0, 1, 1]), ValueError, r"value must have shape \(2,\)"),
        (torch.tensor([0.0, 1.0]), TypeError, "value must have an integer dtype"),
    ):
        with pytest.raises(error, match="MaskedMLP.absorb: " + match):
            onehot.absorb(state, 0, value)
    assert all(torch.equal(a, b) for a, b in zip(before, state.hidden + [state.out])), "a refused value changed the state"
    real_state = real.init_state(2, cond)
    with pytest.raises(TypeError, match="MaskedMLP.absorb: value must have a floating-point dtype"):
        real.absorb(real_state, 0, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"MaskedMLP.absorb: value must have shape \(2,\), got shape \(3,\)"):
        real.absorb(real_state, 0, torch.zeros(3))
    with pytest.raises(TypeError, match="MaskedMLP.outputs: state must be a MaskedMLPState"):
        real.outputs(real_state.out, 0)
    real.absorb(real_state, 2, torch.zeros(2))  # the last position feeds nothing: accepted
    assert real.outputs(real_state, 2).shape == (2, 2)


# -------------------------------------------------------------------------- flow layers


def layer(cond_features: int = 0) -> MaskedAffineAutoregressive:
    torch.manual_seed(0)
    return randomize(MaskedAffineAutoregressive(4, [10, 10], cond_features=cond_features).double())


@pytest.mark.parametrize("cond_features", [0, 3])
def test_round_trip_and_logdet(cond_features):
    flow = layer(cond_features)
    x, cond = randn(5, 4), (randn(5, cond_features, seed=1) if cond_features else None)
    u, logdet = flow(x, cond)
    want = torch.cat([logdet_by_jacobian(lambda e, i=i: flow(e, None if cond is None else cond[i : i + 1])[0], x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(logdet, want, atol=1e-9, rtol=1e-9)
    with torch.no_grad():
        back, inv_logdet = flow.inverse(u, cond)
    torch.testing.assert_close(back, x, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(inv_logdet, -logdet.detach(), atol=1e-9, rtol=1e-9)


def test_the_incremental_inverse_in_chunks_equals_the_differentiable_one(monkeypatch):
    flow = layer(cond_features=2)
    u, cond = randn(9, 4), randn(9, 2, seed=1)
    tracked = flow.inverse(u, cond)
    # state rows: 10 + 10 + 2 * 4 = 28; 60 elements a chunk = 2 examples: 5 chunks, the last of 1
    monkeypatch.setattr(autoregressive_flow, "_STATE_ELEMENTS_PER_CHUNK", 60)
    with torch.no_grad():
        chunked = flow.inverse(u, cond)
    for a, b in zip(chunked, tracked):
        torch.testing.assert_close(a, b.detach(), **TOL)


def test_forward_is_one_op_without_cond(monkeypatch):
    """Without cond the layer's forward is one masked_affine_autoregressive call, equal
    (values and every gradient) to the layer run module by module (a backend set on its
    network's layers keeps that path)."""
    torch.manual_seed(0)
    layer = randomize(MaskedAffineAutoregressive(5, [8, 7]).double())
    calls = []
    fused = autoregressive_flow.run_masked_affine_autoregressive
    monkeypatch.setattr(
        autoregressive_flow, "run_masked_affine_autoregressive", lambda *a, **k: calls.append(1) or fused(*a, **k)
    )
    x = randn(4, 5).requires_grad_()
    outs = []
    for backend in (None, "ref"):
        for masked in layer.net.layers:
            masked.backend = backend
        u, logdet = layer(x)
        outs.append((u, logdet, *torch.autograd.grad(u.square().sum() + logdet.sum(), [x, *layer.parameters()])))
    assert len(calls) == 1
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, **TOL)


def test_starts_as_the_identity():
    flow = MaskedAffineAutoregressive(3, 8, cond_features=2).double()
    x = randn(4, 3)
    u, logdet = flow(x, randn(4, 2, seed=1))
    assert torch.equal(u, x) and torch.equal(logdet, torch.zeros(4, dtype=torch.float64))


def test_reverse_in_a_stack():
    stack = FlowSequential(layer(), Reverse(), layer())
    x = randn(3, 4)
    y, logdet = stack(x)
    torch.testing.assert_close(logdet, logdet_by_jacobian(lambda e: stack(e)[0], x), atol=1e-9, rtol=1e-9)
    with torch.no_grad():
        torch.testing.assert_close(stack.inverse(y)[0], x, atol=1e-9, rtol=1e-9)
    assert torch.equal(Reverse()(x)[0], x[:, [3, 2, 1, 0]])


def test_bad_input_raises():
    flow = layer(cond_features=2)
    x, cond = randn(3, 4), randn(3, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4\)"):
        flow(x[:, :3], cond)
    with pytest.raises(TypeError, match="u must have a floating-point dtype"):
        flow.inverse(x.long(), cond)
    with pytest.raises(ValueError, match=r"cond must be a Tensor of shape \(3, 2\)"):
        flow(x)
    with pytest.raises(ValueError, match="takes no cond"):
        layer()(x, cond)
    with pytest.raises(ValueError, match="features must be >= 2"):
        MaskedAffineAutoregressive(1, 8)
    with pytest.raises(ValueError, match=r"Reverse: x must be a Tensor \(B, D\)"):
        Reverse()(x[0])
