"""fastgen.nn.GatedResidualBlock: forward against the reference op, conditioning, step
equals forward with a preallocated state, causality, initialization, bad arguments."""

import pytest
import torch

from fastgen.nn import GatedResidualBlock
from fastgen.ops import gated_residual_block_ref

from ..helpers import fast_backends, tolerances

BACKENDS = ["ref"] + fast_backends("gated_residual_block", "cpu", torch.float64)


def block(backend, **kw):
    torch.manual_seed(0)
    return GatedResidualBlock(5, 3, 7, backend=backend, dtype=torch.float64, **kw)


@pytest.mark.parametrize("cond_len", [None, 1, 12])
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_reference(backend, cond_len):
    layer = block(backend, kernel_size=3, dilation=2, cond_channels=4 if cond_len else None)
    h = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    cond = torch.randn(2, 4, cond_len, dtype=torch.float64, requires_grad=True) if cond_len else None
    h_out, skip = layer(h, cond)
    projected = torch.einsum("oc,bct->bot", layer.cond_weight, cond) if cond_len else None
    want = gated_residual_block_ref(
        h, layer.conv_weight, layer.conv_bias, layer.res_weight, layer.res_bias, layer.skip_weight, layer.skip_bias,
        dilation=2, cond=projected,
    )
    torch.testing.assert_close((h_out, skip), want, **tolerances(torch.float64))
    params = [h] + list(layer.parameters()) + ([cond] if cond_len else [])
    got = torch.autograd.grad(h_out.sum() + skip.square().sum(), params)
    ref = torch.autograd.grad(want[0].sum() + want[1].square().sum(), params)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **tolerances(torch.float64))


@pytest.mark.parametrize("ring", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_step_equals_forward(backend, ring):
    layer = block(backend, kernel_size=2, dilation=3, cond_channels=4)
    B, T = 3, 10
    h = torch.randn(B, 5, T, dtype=torch.float64)
    cond = torch.randn(B, 4, T, dtype=torch.float64)
    with torch.no_grad():
        full = layer(h, cond)
        state = layer.init_state(B)
        assert state.shape == (B, 5, 3) and state.dtype == torch.float64 and not state.any()
        position = torch.zeros(B, dtype=torch.int64) if ring else None
        outs = []
        for t in range(T):
            outs.append(layer.step(h[:, :, t], state, cond[:, :, t], position=position))
            if ring:
                position += 1
    torch.testing.assert_close(torch.stack([o[0] for o in outs], -1), full[0], **tolerances(torch.float64))
    torch.testing.assert_close(torch.stack([o[1] for o in outs], -1), full[1], **tolerances(torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_causality(backend):
    layer = block(backend, kernel_size=2, dilation=2)
    h = torch.randn(1, 5, 8, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda x: torch.cat(layer(x), 1), h)  # (1, R+S, T, 1, R, T)
    dep = J.abs().sum((0, 1, 3, 4)) != 0
    expected = torch.eye(8, dtype=torch.bool) | torch.eye(8, dtype=torch.bool).roll(-2, 1).tril(-2)
    assert torch.equal(dep, expected)


def test_initialization_like_conv1d():
    layer = GatedResidualBlock(16, 8, 32, kernel_size=3)
    for w, b, fan_in in ((layer.conv_weight, layer.conv_bias, 48), (layer.res_weight, layer.res_bias, 8)):
        bound = fan_in**-0.5
        assert w.abs().max() <= bound and b.abs().max() <= bound
        assert w.std() > bound / 3  # not all zero or tiny
    assert layer.cond_weight is None
    assert "dilation=1" in repr(layer)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        GatedResidualBlock(4, 4, 4, kernel_size=0)
    with pytest.raises(ValueError, match="dilation"):
        GatedResidualBlock(4, 4, 4, dilation=0)
    with pytest.raises(TypeError, match="gate_channels"):
        GatedResidualBlock(4, 4.0, 4)
    layer = GatedResidualBlock(4, 4, 4, cond_channels=3)
    with pytest.raises(ValueError, match="cond"):
        layer(torch.randn(1, 4, 5))
    with pytest.raises(ValueError, match="cond"):
        layer(torch.randn(1, 4, 5), torch.randn(1, 2, 5))
    with pytest.raises(ValueError, match="cond"):
        GatedResidualBlock(4, 4, 4)(torch.randn(1, 4, 5), torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match="state"):
        GatedResidualBlock(4, 4, 4, dilation=2).step(torch.randn(1, 4), torch.zeros(1, 4, 1))


def test_bad_cond_dtype_and_batch_raise():
    """A cond of another dtype than the block's used to fail inside F.linear."""
    layer = GatedResidualBlock(4, 4, 4, cond_channels=3)
    h = torch.randn(1, 4, 5)
    for dtype in (torch.float64, torch.int64):
        cond = torch.zeros(1, 3, 1, dtype=dtype)
        with pytest.raises(TypeError, match=f"GatedResidualBlock: cond has dtype {dtype} but the block's cond_weight has torch.float32"):
            layer(h, cond)
        with pytest.raises(TypeError, match="cond has dtype"):
            layer.step(h[:, :, 0], layer.init_state(1), cond[:, :, 0])
    assert layer(h, torch.zeros(1, 3, 1))[0].shape == (1, 4, 5)
    with pytest.raises(ValueError, match="GatedResidualBlock: batch must be >= 0, got -1"):
        layer.init_state(-1)
    with pytest.raises(TypeError, match="GatedResidualBlock: batch must be an int, got float"):
        layer.init_state(2.5)
    assert layer.init_state(0).shape == (0, 4, 1)
