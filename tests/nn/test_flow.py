"""FlowSequential (and its fused ActNorm + InvConv1x1 path), Squeeze and InvConv1x1: round
trips, log-determinants against the autograd Jacobian, the cached inverse, and bad inputs."""

import pytest
import torch

from fastgen.nn import ActNorm, FlowSequential, InvConv1x1, Squeeze

from ..helpers import logdet_by_jacobian

SHAPES = [pytest.param((3, 6), id="vector"), pytest.param((2, 2, 4, 4), id="image")]


def layer_for(shape, lu):
    g = torch.Generator().manual_seed(0)
    layer = InvConv1x1(shape[1], lu=lu, generator=g, dtype=torch.float64)
    with torch.no_grad():  # away from the rotation it starts at: |det W| != 1
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return layer


@pytest.mark.parametrize("lu", [True, False], ids=["lu", "full"])
@pytest.mark.parametrize("shape", SHAPES)
def test_inv_conv_round_trip_and_logdet(shape, lu):
    layer = layer_for(shape, lu)
    x = torch.randn(shape, dtype=torch.float64)
    y, logdet = layer(x)
    back, inv_logdet = layer.inverse(y)
    torch.testing.assert_close(back, x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(logdet + inv_logdet, torch.zeros(shape[0], dtype=torch.float64), atol=1e-12, rtol=0)
    assert abs(logdet[0].item()) > 0.1  # the check below means something
    torch.testing.assert_close(logdet, logdet_by_jacobian(lambda e: layer(e)[0], x), atol=1e-10, rtol=1e-10)
    pixels = shape[2] * shape[3] if len(shape) == 4 else 1
    want = pixels * torch.linalg.slogdet(layer.weight())[1]
    torch.testing.assert_close(logdet, want.expand(shape[0]), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(y, torch.einsum("oc,bc...->bo...", layer.weight(), x), atol=1e-12, rtol=1e-12)


def test_inv_conv_float32_matches_float64():
    layer = layer_for((2, 5, 3, 3), True)
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    want, _ = layer(x)
    layer32 = layer.float()
    got, _ = layer32(x.float())
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        back, _ = layer32.inverse(got)
    torch.testing.assert_close(back.double(), x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lu", [True, False], ids=["lu", "full"])
def test_inv_conv_inverse_cache_follows_the_weights(lu):
    layer = layer_for((2, 4), lu)
    with torch.no_grad():
        first = layer.inverse_weight()
        assert layer.inverse_weight() is first  # cached while nothing changes
    x = torch.randn(8, 4, dtype=torch.float64)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1)
    layer(x)[0].square().sum().backward()
    opt.step()
    with torch.no_grad():
        refreshed = layer.inverse_weight()
        assert refreshed is not first
        torch.testing.assert_close(refreshed, torch.linalg.inv(layer.weight()), atol=1e-12, rtol=1e-12)
        y, _ = layer(x)
        torch.testing.assert_close(layer.inverse(y)[0], x, atol=1e-12, rtol=1e-12)
    layer.load_state_dict(layer_for((2, 4), lu).state_dict())  # in place: a new version too
    with torch.no_grad():
        torch.testing.assert_close(layer.inverse_weight(), torch.linalg.inv(layer.weight()), atol=1e-12, rtol=1e-12)


def test_inv_conv_inverse_is_differentiable():
    layer = layer_for((2, 3), True)
    y = torch.randn(4, 3, dtype=torch.float64)
    x, logdet = layer.inverse(y)
    got = torch.autograd.grad(x.square().sum() + logdet.sum(), list(layer.parameters()))
    want_x = torch.linalg.solve(layer.weight(), y.t()).t()
    want = torch.autograd.grad(want_x.square().sum() - 4 * layer.log_scale.sum(), list(layer.parameters()))
    for a, b in zip(got, want):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_squeeze_round_trip_and_layout():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).view(2, 3, 4, 6)
    y, logdet = Squeeze(2)(x)
    assert y.shape == (2, 12, 2, 3)
    assert y[1, 2 * 4 + 1 * 2 + 0, 1, 2] == x[1, 2, 2 * 1 + 1, 2 * 2 + 0]  # channel c f^2 + i f + j
    torch.testing.assert_close(logdet, torch.zeros(2, dtype=torch.float64))
    back, inv_logdet = Squeeze(2).inverse(y)
    assert torch.equal(back, x) and torch.equal(inv_logdet, torch.zeros(2, dtype=torch.float64))


def test_flow_sequential_logdet_and_round_trip():
    g = torch.Generator().manual_seed(1)
    flow = FlowSequential(
        layer_for((2, 2, 4, 4), True), Squeeze(2), InvConv1x1(8, lu=False, generator=g, dtype=torch.float64)
    )
    with torch.no_grad():
        flow[2].weight_matrix.add_(0.2 * torch.randn(8, 8, generator=g, dtype=torch.float64))
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    y, logdet = flow(x)
    torch.testing.assert_close(logdet, logdet_by_jacobian(lambda e: flow(e)[0], x), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(logdet, flow[0](x)[1] + flow[2](flow[1](flow[0](x)[0])[0])[1], atol=1e-12, rtol=0)
    back, inv_logdet = flow.inverse(y)
    torch.testing.assert_close(back, x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(inv_logdet, -logdet, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("lu", [True, False], ids=["lu", "full"])
@pytest.mark.parametrize("shape", SHAPES)
def test_actnorm_then_inv_conv_runs_fused_as_the_two_layers(shape, lu):
    """FlowSequential's fused ActNorm -> InvConv1x1 step: the data-dependent initialization,
    outputs, log-determinants and every parameter's gradient equal those of the two layers
    run one after the other, both directions."""
    conv = layer_for(shape, lu)
    flow = FlowSequential(ActNorm(shape[1], dtype=torch.float64), conv)
    twin = FlowSequential(ActNorm(shape[1], dtype=torch.float64), layer_for(shape, lu))
    x = 1.5 + 2 * torch.randn(shape, dtype=torch.float64)
    y, logdet = flow(x)  # initializes flow[0]
    y_ref, logdet_ref = flow[1](flow[0](x)[0])[0], flow[0](x)[1] + flow[1](x)[1]
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(logdet, logdet_ref, atol=1e-12, rtol=1e-12)
    twin[0](x)  # the unfused layer's own initialization
    torch.testing.assert_close(flow[0].loc, twin[0].loc, atol=0, rtol=0)
    torch.testing.assert_close(flow[0].log_scale, twin[0].log_scale, atol=0, rtol=0)
    torch.testing.assert_close(logdet, logdet_by_jacobian(lambda e: flow(e)[0], x), atol=1e-10, rtol=1e-10)

    g_y = torch.randn(shape, dtype=torch.float64)
    params = list(flow.parameters())
    fused = torch.autograd.grad((y * g_y).sum() + logdet.sum(), params)
    unfused = torch.autograd.grad((y_ref * g_y).sum() + logdet_ref.sum(), params)
    for a, b in zip(fused, unfused):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)

    back, inv_logdet = flow.inverse(y)
    back_ref = flow[0].inverse(flow[1].inverse(y)[0])[0]
    torch.testing.assert_close(back, back_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(back, x, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(inv_logdet, -logdet, atol=1e-10, rtol=1e-10)


def test_bad_inputs():
    with pytest.raises(ValueError, match="multiples of factor=2"):
        Squeeze(2)(torch.randn(1, 1, 3, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Squeeze(2)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="factor"):
        Squeeze(0)
    with pytest.raises(ValueError, match="channels"):
        InvConv1x1(0)
    layer = InvConv1x1(3)
    with pytest.raises(ValueError, match="3 channels"):
        layer(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\(B, D\) or \(B, C, H, W\)"):
        layer(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="float64"):
        layer(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="must be a Tensor"):
        layer.inverse([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="channels must match"):
        FlowSequential(ActNorm(4), InvConv1x1(3))(torch.randn(2, 3))
    with pytest.raises(ValueError, match="ActNorm: x must have 3 channels"):
        FlowSequential(ActNorm(3), InvConv1x1(3))(torch.randn(2, 4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("fused", [False, True], ids=["alone", "fused-with-InvConv1x1"])
def test_actnorm_refuses_a_non_finite_first_batch(bad, fused):
    """The data-dependent init runs once: a NaN or inf in that batch used to leave loc and
    log_scale NaN for good. Refused, and the layer still initializes from the next batch."""
    flow = FlowSequential(ActNorm(2), InvConv1x1(2)) if fused else ActNorm(2)
    actnorm = flow[0] if fused else flow
    x = torch.tensor([[bad, 0.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="ActNorm: x, the first training batch, .* must be finite"):
        flow(x)
    assert not actnorm.initialized and torch.equal(actnorm.loc, torch.zeros(2))
    flow(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert actnorm.initialized
    torch.testing.assert_close(actnorm.loc, torch.tensor([-1.0, -2.0]))
    torch.testing.assert_close(actnorm.log_scale, torch.zeros(2))
    with pytest.raises(TypeError, match="ActNorm: x has dtype torch.float64 but the layer has torch.float32"):
        ActNorm(2)(torch.randn(3, 2, dtype=torch.float64))
    for empty in (torch.zeros(0, 2), torch.zeros(0, 2, 3, 3)):  # nothing to take statistics of
        with pytest.raises(ValueError, match=r"ActNorm: the initialization batch needs at least 2 values per channel"):
            ActNorm(2)(empty)


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_squeeze_empty_tensors_keep_their_shapes(factor):
    """torch's pixel_(un)shuffle returns a tensor without elements unchanged: a batch of 0
    came out as (0, 1, 4, 4) instead of (0, 4, 2, 2)."""
    f = factor
    for shape in ((0, 1, 2 * f, 3 * f), (2, 1, 0, 3 * f), (0, 2, 0, 0)):
        x = torch.zeros(shape)
        y, logdet = Squeeze(f)(x)
        b, c, h, w = shape
        assert y.shape == (b, c * f * f, h // f, w // f) and logdet.shape == (b,)
        back, inv_logdet = Squeeze(f).inverse(y)
        assert back.shape == shape and inv_logdet.shape == (b,)
