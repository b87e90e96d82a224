"""fastgen.ops.uniform_dequantize: each value lands in its own bin, the noise is uniform and
reproducible from the generator, the log-determinant (also against the Jacobian), the round
trip (floor back to the integers), gradients for float input, torch.compile(fullgraph=True),
bad inputs."""

import math

import pytest
import torch

from fastgen.ops import uniform_dequantize


def images(shape=(4, 3, 5, 6), bins=256, dtype=torch.uint8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, bins, shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.float64, torch.float32])
@pytest.mark.parametrize("bins", [2, 32, 256])
def test_values_land_in_their_bins_and_round_trip(dtype, bins):
    x = images(bins=bins, dtype=dtype)
    y, logdet = uniform_dequantize(x, bins=bins, generator=torch.Generator().manual_seed(1))
    assert y.dtype == (dtype if dtype.is_floating_point else torch.get_default_dtype())
    assert y.shape == x.shape and logdet.shape == (x.shape[0],)
    lo = x.to(torch.float64) / bins
    assert (y >= lo).all() and (y <= lo + 1 / bins).all()  # (x + u) / bins, u in [0, 1)
    assert torch.equal(torch.floor(y.double() * bins), x.double())  # the round trip
    torch.testing.assert_close(logdet, torch.full_like(logdet, -x[0].numel() * math.log(bins)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("bins", [2, 7, 17, 63, 255, 256, 1000])
@pytest.mark.parametrize("u", ["lowest", "highest"])
def test_every_value_stays_in_its_bin_at_the_extremes_of_the_noise(monkeypatch, dtype, bins, u):
    """With torch.rand's smallest (0) and largest (just below 1) draws, floor(y * bins) is x
    again in the dtype itself, for every level: the unclamped (x + u) / bins rounds into the
    next bin (float32, 256 bins: from x = 128 up)."""
    if 4 * bins * torch.finfo(dtype).eps >= 0.25:
        with pytest.raises(ValueError, match="too coarse"):
            uniform_dequantize(torch.zeros(1, 1, dtype=dtype), bins=bins)
        return
    x = torch.arange(bins, dtype=dtype)[None]  # (1, bins)
    value = 0.0 if u == "lowest" else 1 - torch.finfo(dtype).eps / 2
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, value, dtype=kw["dtype"]))
    y, _ = uniform_dequantize(x, bins=bins)
    assert torch.equal(torch.floor(y * bins), x)


def test_noise_is_uniform_and_follows_the_generator():
    x = torch.zeros(64, 1000, dtype=torch.int64)
    y1, _ = uniform_dequantize(x, bins=1, generator=torch.Generator().manual_seed(5))
    y2, _ = uniform_dequantize(x, bins=1, generator=torch.Generator().manual_seed(5))
    y3, _ = uniform_dequantize(x, bins=1, generator=torch.Generator().manual_seed(6))
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    assert (y1 >= 0).all() and (y1 < 1).all()
    # 64000 uniforms: mean 1/2 and variance 1/12 within a few standard errors.
    assert abs(y1.mean().item() - 0.5) < 0.005 and abs(y1.var().item() - 1 / 12) < 0.002
    # The same draws as torch.rand with that generator: the noise is torch's stream.
    torch.testing.assert_close(y1, torch.rand(x.shape, generator=torch.Generator().manual_seed(5)))


def test_logdet_matches_jacobian():
    """For float input, y = (x + u) / bins is differentiable: its Jacobian is I / bins."""
    x = images(shape=(2, 2, 2, 3), bins=16, dtype=torch.float64)

    def f(t):
        return uniform_dequantize(t, bins=16, generator=torch.Generator().manual_seed(2))[0]

    D = x[0].numel()
    J = torch.autograd.functional.jacobian(f, x).reshape(2, D, 2, D)
    _, logdet = uniform_dequantize(x, bins=16)
    for b in range(2):
        sign, logabs = torch.linalg.slogdet(J[b, :, b])
        assert sign == 1
        torch.testing.assert_close(logabs, logdet[b])


def test_torch_compile_fullgraph():
    """Compiled (without a generator: Dynamo does not trace one), the value check is skipped
    and the noise comes from Inductor's random stream: check the properties, not the draws."""
    x = images(bins=16, dtype=torch.float32)
    compiled = torch.compile(lambda t: uniform_dequantize(t, bins=16), fullgraph=True)
    y, logdet = compiled(x)
    assert torch.equal(torch.floor(y * 16), x)
    torch.testing.assert_close(logdet, torch.full_like(logdet, -x[0].numel() * math.log(16)))


BAD = [
    (dict(x=torch.tensor([[0, 256]])), ValueError, "x"),
    (dict(x=torch.tensor([[-1, 3]])), ValueError, "x"),
    (dict(x=torch.tensor([[0.5, 3.0]])), ValueError, "x"),
    (dict(x=torch.tensor([[float("nan"), 3.0]])), ValueError, "x"),
    (dict(x=torch.tensor([1, 2])), ValueError, "x"),
    (dict(x=torch.ones(2, 2, dtype=torch.bool)), TypeError, "x"),
    (dict(x=[[1, 2]]), TypeError, "x"),
    (dict(bins=2.5), TypeError, "bins"),
    (dict(bins="256"), TypeError, "bins"),
    (dict(bins=0), ValueError, "bins"),
]


@pytest.mark.parametrize("kw,error,match", BAD)
def test_bad_input_raises(kw, error, match):
    args = dict(x=torch.tensor([[0, 255]]), bins=256) | kw
    with pytest.raises(error, match=match):
        uniform_dequantize(args.pop("x"), **args)
