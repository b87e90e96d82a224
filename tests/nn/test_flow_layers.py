"""The flow layers of fastgen.nn: round trips and log-determinants (against the autograd
Jacobian) in float64, for vectors of 6 dims and images of 2x4x4, alone and stacked;
ActNorm's initialization; the dequantizations; bad arguments."""

import math

import pytest
import torch
from torch import nn

from fastgen.nn import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ElementwiseMixtureCDFFlow,
    FlowSequential,
    InvConv1x1,
    Logit,
    MixtureCDFCoupling,
    UniformDequantization,
    VariationalDequantization,
)
from fastgen.nn.coupling import checkerboard_mask

from ..helpers import logdet_by_jacobian, randomize

VECTOR, IMAGE = (3, 6), (2, 2, 4, 4)


@pytest.fixture(autouse=True)
def _seeded():
    """Networks and inputs drawn from the global generator: the same whatever ran before."""
    torch.manual_seed(0)


def layers(shape):
    image = len(shape) == 4
    c = shape[1]
    made = {
        "actnorm": ActNorm(c),
        # Early in the stacks: a Gaussian mixture's logit output grows like x^2 / 2, and its
        # CDF rounds to 1 (a flat, clamped map) where later layers' outputs would reach.
        "mixture-elementwise": ElementwiseMixtureCDFFlow(c, 3, kind="gaussian", output="logit"),
        "affine-checker-exp": AffineCoupling(c, [8], mask="checkerboard", parity=0, image=image),
        # Vectors: one affine_coupling_mlp op (the channel split, the exp scale, the default MLP).
        "affine-channel-exp": AffineCoupling(c, [8, 8], mask="channel", parity=1, image=image),
        "affine-channel-sigmoid": AffineCoupling(c, [8], mask="channel", parity=1, scale="sigmoid", image=image),
        "additive-channel": AdditiveCoupling(c, [8], mask="channel", parity=0, image=image),
        "mixture-coupling": MixtureCDFCoupling(c, [8], components=3, mask="checkerboard", parity=1, image=image),
        "invconv": InvConv1x1(c),
    }
    return {name: randomize(layer.double().eval(), seed=seed) for seed, (name, layer) in enumerate(made.items())}


CASES = [pytest.param(s, n, id=f"{'image' if len(s) == 4 else 'vector'}-{n}") for s in (VECTOR, IMAGE) for n in layers(s)]


@pytest.mark.parametrize("shape, name", CASES)
def test_round_trip_and_logdet(shape, name):
    layer = layers(shape)[name]
    x = torch.randn(shape, dtype=torch.float64)
    y, logdet = layer(x)
    assert y.shape == x.shape and logdet.shape == (shape[0],)
    back, inv_logdet = layer.inverse(y)
    torch.testing.assert_close(back, x, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(logdet + inv_logdet, torch.zeros_like(logdet), atol=1e-8, rtol=0)
    torch.testing.assert_close(logdet, logdet_by_jacobian(lambda e: layer(e)[0], x), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("shape", [VECTOR, IMAGE], ids=["vector", "image"])
def test_stack_logdet(shape):
    flow = FlowSequential(*layers(shape).values())
    x = torch.randn(shape, dtype=torch.float64)
    y, logdet = flow(x)
    torch.testing.assert_close(logdet, logdet_by_jacobian(lambda e: flow(e)[0], x), atol=1e-8, rtol=1e-8)
    back, inv_logdet = flow.inverse(y)
    # Each layer inverts to ~1e-12 on its own; through seven random layers (two inverted by
    # bisection, where the maps are flat) the errors compound to ~1e-7 of x's scale.
    torch.testing.assert_close(back, x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(inv_logdet, -logdet, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("coupling", [AffineCoupling, MixtureCDFCoupling])
def test_checkerboard_couplings_of_one_channel_images(coupling):
    """Grey images: the checkerboard alone splits them (Flow++ on the digits)."""
    layer = randomize(coupling(1, [8], mask="checkerboard", parity=1, image=True).double())
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    y, logdet = layer(x)
    passed = checkerboard_mask((1, 4, 4), 1, dtype=torch.float64).bool().expand_as(x)
    assert torch.equal(y[passed], x[passed]) and not torch.allclose(y[~passed], x[~passed])
    torch.testing.assert_close(layer.inverse(y)[0], x, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(logdet, logdet_by_jacobian(lambda e: layer(e)[0], x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("parity", [0, 1])
def test_vector_affine_coupling_is_one_op(monkeypatch, parity):
    """A vector channel coupling with the exp scale and the default MLP runs as one
    affine_coupling_mlp call, equal (values and gradients) to the same layer with its
    network run module by module; a network of another structure takes that path."""
    import fastgen.nn.coupling as coupling_module

    layer = randomize(AffineCoupling(5, [6, 7], mask="channel", parity=parity).double())
    calls = []
    fused = coupling_module.run_affine_coupling_mlp
    monkeypatch.setattr(coupling_module, "run_affine_coupling_mlp", lambda *a, **k: calls.append(1) or fused(*a, **k))
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    outs = {}
    for name in ("fused", "modules"):
        if name == "modules":  # the same layers, one more module: no longer the default MLP
            layer.net.append(nn.Identity())
        y, logdet = layer(x)
        back, _ = layer.inverse(y)
        torch.testing.assert_close(back, x, atol=1e-10, rtol=1e-10)
        grads = torch.autograd.grad((y.square().sum() + logdet.sum()), [x, *layer.parameters()])
        outs[name] = (y, logdet, *grads)
    assert len(calls) == 2  # forward and inverse of the first run only
    for a, b in zip(outs["fused"], outs["modules"]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_couplings_start_as_identity_and_condition():
    x = torch.randn(IMAGE, dtype=torch.float64)
    layer = AffineCoupling(2, [8], image=True, cond_features=3).double()
    cond = torch.randn(2, 3, dtype=torch.float64)
    y, logdet = layer(x, cond)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(2, dtype=torch.float64))
    randomize(layer)
    y1, _ = layer(x, cond)
    y2, _ = layer(x, cond + 1)
    assert not torch.allclose(y1, y2)
    torch.testing.assert_close(layer.inverse(y1, cond)[0], x, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="cond must have shape"):
        layer(x)


def test_actnorm_initialization():
    x = 3 + 2 * torch.randn(64, 3, 5, 5, dtype=torch.float64)
    layer = ActNorm(3).double()
    y, logdet = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(logdet, (25 * layer.log_scale.sum()).expand(64))
    assert bool(layer.initialized)
    before = layer.loc.detach().clone()
    layer(x + 5)  # initialized once only
    assert torch.equal(layer.loc, before)
    fresh = ActNorm(3).double()
    fresh.load_state_dict(layer.state_dict())
    assert bool(fresh.initialized)


def test_logit_and_uniform_dequantization():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    deq = UniformDequantization(256)
    y, logdet = deq(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal((y * 256).floor().to(torch.uint8), images)
    torch.testing.assert_close(logdet, torch.full((4,), -75 * math.log(256)))
    back, inv_logdet = deq.inverse(y)
    assert torch.equal(back.to(torch.uint8), images) and torch.allclose(inv_logdet, -logdet)
    logit = Logit(0.05)
    z, ld = logit(y.double())
    torch.testing.assert_close(logit.inverse(z)[0], y.double(), atol=1e-12, rtol=1e-12)
    assert torch.isfinite(z).all() and torch.isfinite(ld).all()


def test_variational_dequantization():
    torch.manual_seed(0)
    flow = FlowSequential(
        randomize(AffineCoupling(2, [8], parity=0, image=True, cond_features=2)),
        randomize(AffineCoupling(2, [8], parity=1, image=True, cond_features=2)),
    ).double()
    deq = VariationalDequantization(flow, bins=4)
    x = torch.randint(0, 4, IMAGE).double()
    g = torch.Generator().manual_seed(3)
    y, logdet = deq(x, generator=g)
    assert torch.equal((y * 4).floor(), x)
    # -log q(u|x) by hand: the same noise through the same flow.
    eps = torch.randn(IMAGE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z, ld = flow(eps, x / 3 - 0.5)
    u = torch.sigmoid(z)
    log_q = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum((1, 2, 3)) - ld - torch.log(u * (1 - u)).sum((1, 2, 3))
    torch.testing.assert_close(y, (x + u) / 4)
    torch.testing.assert_close(logdet, -log_q - 32 * math.log(4))
    logdet.sum().backward()
    assert all(p.grad is not None for p in flow.parameters())
    with pytest.raises(ValueError, match="x"):
        deq(torch.full(IMAGE, 4.0, dtype=torch.float64))


@pytest.mark.parametrize("shift", [-100.0, 100.0])
def test_variational_noise_far_out_stays_in_its_bin(shift):
    """A noise flow that pushes z where the sigmoid rounds to 0 or 1: y stays inside x's bin."""
    flow = FlowSequential(ActNorm(2)).double().eval()
    with torch.no_grad():
        flow[0].loc.fill_(shift)
    deq = VariationalDequantization(flow, bins=4)
    x = torch.randint(0, 4, IMAGE).double()
    y, logdet = deq(x)
    assert torch.equal((y * 4).floor(), x) and ((y * 4 - x - 0.5).abs() < 0.5).all()
    assert torch.isfinite(logdet).all()


def test_extreme_inputs_stay_finite():
    x = torch.tensor([[-1e4, 1e4, 0.0, 3.0, -3.0, 1e3]], dtype=torch.float64).repeat(2, 1)
    for name, layer in layers(VECTOR).items():
        y, logdet = layer(x)
        assert torch.isfinite(y).all() and torch.isfinite(logdet).all(), name
        back, inv = layer.inverse(y)
        assert torch.isfinite(back).all() and torch.isfinite(inv).all(), name


def test_bad_arguments():
    with pytest.raises(ValueError, match="mask"):
        AffineCoupling(4, [8], mask="stripes")
    with pytest.raises(ValueError, match="parity"):
        AffineCoupling(4, [8], parity=2)
    with pytest.raises(ValueError, match="scale"):
        AffineCoupling(4, [8], scale="softplus")
    with pytest.raises(ValueError, match="channels"):
        AdditiveCoupling(1, [8])
    with pytest.raises(ValueError, match="channels"):
        AffineCoupling(1, [8], mask="channel", image=True)
    with pytest.raises(ValueError, match="hidden"):
        AffineCoupling(4, [])
    with pytest.raises(ValueError, match=r"\(B, D\) with 4 channels"):
        AffineCoupling(4, [8])(torch.randn(2, 5))
    with pytest.raises(ValueError, match="kind"):
        MixtureCDFCoupling(4, [8], kind="cauchy")
    with pytest.raises(ValueError, match="output"):
        ElementwiseMixtureCDFFlow(2, 3, output="probit")
    with pytest.raises(ValueError, match="alpha"):
        Logit(0.5)
    with pytest.raises(ValueError, match="bins"):
        UniformDequantization(1)
    with pytest.raises(TypeError, match="flow"):
        VariationalDequantization(nn.Linear(2, 2))
    for hidden in ([0], [8, -3]):
        with pytest.raises(ValueError, match=rf"coupling_net: hidden\[{len(hidden) - 1}\] must be >= 1, got {hidden[-1]}"):
            AffineCoupling(4, hidden)
    with pytest.raises(TypeError, match=r"coupling_net: hidden\[0\] must be an int"):
        AdditiveCoupling(4, [8.0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: AffineCoupling(4, [8]),
        lambda: AffineCoupling(4, [8], mask="channel"),  # one fused op (affine_coupling_mlp)
        lambda: AffineCoupling(4, [8], image=True),
        lambda: AdditiveCoupling(4, [8]),
        lambda: MixtureCDFCoupling(4, [8], components=2),
    ],
    ids=["affine", "affine-mlp", "affine-image", "additive", "mixture"],
)
def test_couplings_refuse_another_dtype(make):
    """x (and cond) of another dtype than the layer's used to fail inside its network with
    "mat1 and mat2 must have the same dtype" (int cond was silently promoted)."""
    layer = make()
    shape = (2, 4, 2, 2) if layer.image else (2, 4)
    for dtype in (torch.float64, torch.int64):
        for name in ("x", "y"):
            with pytest.raises(TypeError, match=rf"{type(layer).__name__}: {name} has dtype {dtype} but the layer has torch.float32"):
                (layer.inverse if name == "y" else layer)(torch.zeros(shape, dtype=dtype))
    y, logdet = layer(torch.zeros(shape))
    assert y.shape == shape and logdet.shape == (2,)
    conditional = AffineCoupling(4, [8], cond_features=1)
    for dtype in (torch.float64, torch.int64):
        with pytest.raises(TypeError, match=f"AffineCoupling: cond has dtype {dtype} but the layer has torch.float32"):
            conditional(torch.zeros(2, 4), torch.zeros(2, 1, dtype=dtype))


def test_logit_refuses_data_outside_the_unit_interval():
    """Outside [0, 1] the logit is NaN: it used to return a NaN y and logdet silently."""
    layer = Logit(0.05)
    for bad, shown in ((2.0, r"\[0.5, 2\]"), (-0.1, r"\[-0.1, 0.5\]"), (float("nan"), "nan")):
        with pytest.raises(ValueError, match=rf"Logit: x must be in \[0, 1\], got values in .*{shown}"):
            layer(torch.tensor([[bad, 0.5]]))
    with pytest.raises(TypeError, match="Logit: x must have a floating-point dtype"):
        layer(torch.tensor([[1, 0]]))
    y, logdet = layer(torch.tensor([[0.0, 1.0]]))
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
    assert layer.inverse(torch.tensor([[-40.0, 40.0]]))[0].shape == (1, 2)  # logits: any real
