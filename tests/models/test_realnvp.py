"""RealNVP, vector and multiscale image versions (float64, tiny shapes): round trips and
log-determinants against the autograd Jacobian, the likelihood's accounting (factored-out
latents, dequantization), normalization on a 2-D grid, gradients, save/load, samples,
training, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from fastgen import data
from fastgen.models import RealNVP, build
from fastgen.train import fit

from ..helpers import randomize
from .flows import assert_gradients_reach_every_parameter, assert_state_dict_round_trip
from .image_flows import (
    assert_continuous_part_inverts,
    assert_integers_round_trip,
    assert_log_prob_accounts_every_latent,
)


def vector_model(dim=6, **kw):
    torch.manual_seed(0)
    return randomize(RealNVP((dim,), hidden=8, couplings=4, **kw).double().eval(), 0.3)


def image_model(shape=(1, 4, 4), bins=None, seed=0):
    torch.manual_seed(seed)
    model = RealNVP(shape, hidden=4, blocks=1, couplings=2, scales=2, bins=bins)
    return randomize(model.double().eval(), 0.1, seed)


def test_registered():
    assert type(build("realnvp", shape=(2,))) is RealNVP


@pytest.mark.parametrize("actnorm", [True, False])
def test_vector_inverts_with_the_jacobian_logdet(actnorm):
    model = vector_model(actnorm=actnorm)
    x = torch.randn(3, 6, dtype=torch.float64)
    assert_continuous_part_inverts(model, x)
    z, log_terms = model.transform(x)  # one level: the model's own inverse gets x back
    torch.testing.assert_close(model.inverse(z), x, atol=1e-12, rtol=1e-12)
    assert_log_prob_accounts_every_latent(model, x)


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 4, 4)])
def test_image_inverts_with_the_jacobian_logdet(shape):
    model = image_model(shape)
    y = torch.rand(2, *shape, dtype=torch.float64)
    assert_continuous_part_inverts(model, y)
    assert [tuple(t.shape[1:]) for t in model.flow(y)[0]] == model.latent_shapes == [
        (2 * shape[0], 2, 2),
        (2 * shape[0], 2, 2),
    ]
    assert_log_prob_accounts_every_latent(model, y)


def test_integer_images_round_trip_and_count_the_dequantization():
    model = image_model(bins=17)
    x = torch.randint(0, 17, (3, 1, 4, 4))
    assert_integers_round_trip(model, x)
    assert_log_prob_accounts_every_latent(model, x)
    # The dequantized figure: log p(y) - D log bins, a bound that integer-valued floats meet too.
    torch.manual_seed(1)
    from_floats = model.log_prob(x.double())
    torch.manual_seed(1)
    torch.testing.assert_close(from_floats, model.log_prob(x))


def test_density_of_2d_data_integrates_to_one():
    torch.manual_seed(0)
    model = randomize(RealNVP((2,), hidden=16, couplings=4).double().eval(), 0.1)
    step = 0.04
    axis = torch.arange(-8, 8, step, dtype=torch.float64) + step / 2
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        log_p = model.log_prob(grid)
    total = log_p.exp().sum().item() * step**2
    assert abs(total - 1) < 0.02
    standard = -0.5 * grid.square().sum(1) - math.log(2 * math.pi)
    where_mass = log_p > math.log(1e-3)
    assert (log_p - standard)[where_mass].abs().max() > 0.5  # not the base density itself


@pytest.mark.parametrize("kind", ["vector", "image", "integer-image"])
def test_gradients_reach_every_parameter(kind):
    if kind == "vector":
        model, x = vector_model().train(), torch.randn(8, 6, dtype=torch.float64)
    else:
        bins = 17 if kind == "integer-image" else None
        model = image_model(bins=bins).train()
        x = torch.randint(0, 17, (8, 1, 4, 4)) if bins else torch.rand(8, 1, 4, 4, dtype=torch.float64)
    assert_gradients_reach_every_parameter(model, x)


def test_save_load_round_trip():
    assert_state_dict_round_trip(lambda seed: image_model(bins=17, seed=seed), torch.randint(0, 17, (4, 1, 4, 4)))


@pytest.mark.parametrize("kind", ["vector", "image", "integer-image"])
def test_samples_have_finite_log_prob(kind):
    model = vector_model() if kind == "vector" else image_model(bins=17 if kind == "integer-image" else None)
    with torch.no_grad():
        x = model.sample(16, generator=torch.Generator().manual_seed(0), temperature=0.8)
        log_p = model.log_prob(x)
    assert x.shape == (16, *model.event_shape) and torch.isfinite(log_p).all()
    if kind == "integer-image":
        assert x.dtype == torch.long and 0 <= x.min() and x.max() < 17
    if kind == "image":  # the data's interval, which the logit's inverse slightly exceeds
        assert 0 <= x.min() and x.max() <= 1


def test_training_lowers_the_loss():
    moons = data.two_moons(2000)
    torch.manual_seed(0)
    model = RealNVP((2,), hidden=32, couplings=4)
    with torch.no_grad():
        before = model.bits_per_dim(moons.test).item()
    fit(model, moons.train, epochs=6, batch_size=128, lr=5e-3, progress=False)
    model.eval()
    with torch.no_grad():
        after = model.bits_per_dim(moons.test).item()
    assert after < before - 0.3

    digits = data.digits()
    torch.manual_seed(0)
    images = RealNVP((1, 8, 8), hidden=8, blocks=1, couplings=2, scales=2, bins=17)
    x = digits.train[:512]
    with torch.no_grad():
        torch.manual_seed(0)
        before = images.train().loss(x).item()  # ActNorm's data initialization included
    fit(images, x, epochs=3, batch_size=64, lr=5e-3, progress=False)
    with torch.no_grad():
        torch.manual_seed(0)
        after = images.eval().loss(x).item()
    assert after < before - 0.1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"shape": (2, 8)}, ValueError, "shape must be"),
        ({"shape": (1,)}, ValueError, "D >= 2"),
        ({"shape": (0, 4, 4)}, ValueError, "shape's entries"),
        ({"shape": (2,), "hidden": 0}, ValueError, "hidden"),
        ({"shape": (2,), "blocks": 0}, ValueError, "blocks"),
        ({"shape": (2,), "couplings": 1.5}, TypeError, "couplings"),
        ({"shape": (2,), "scales": 2}, ValueError, "scales applies to images"),
        ({"shape": (2,), "bins": 256}, ValueError, "bins applies to images"),
        ({"shape": (1, 4, 4), "bins": 1}, ValueError, "bins"),
        ({"shape": (1, 4, 4), "alpha": 0.5}, ValueError, "alpha"),
        ({"shape": (1, 4, 4), "actnorm": 1}, TypeError, "actnorm"),
        ({"shape": (1, 6, 6), "scales": 3}, ValueError, "multiples of 2"),
    ],
)
def test_bad_configuration(kwargs, error, match):
    with pytest.raises(error, match=match):
        RealNVP(**kwargs)


def test_bad_input():
    vector, image, integer = vector_model(), image_model(), image_model(bins=17)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        vector.log_prob([[0.0] * 6])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 6\)"):
        vector.log_prob(torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must have the model's dtype"):
        vector.log_prob(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="x must be finite"):
        vector.log_prob(torch.tensor([[float("nan")] * 6], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must be in \[0, 1\]"):
        image.log_prob(torch.full((2, 1, 4, 4), 1.5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must hold integers in \[0, bins\)"):
        integer.log_prob(torch.full((2, 1, 4, 4), 17))
    with pytest.raises(ValueError, match="non-integers"):
        integer.log_prob(torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="takes no cond"):
        vector.log_prob(torch.zeros(2, 6, dtype=torch.float64), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 2, 2, 2\)"):
        image.inverse(torch.zeros(2, 1, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature"):
        image.inverse(torch.zeros(2, 2, 2, 2, dtype=torch.float64), temperature=-1.0)
    with pytest.raises(ValueError, match="RealNVP.inverse: temperature must be a finite real number >= 0"):
        image.inverse(torch.zeros(2, 2, 2, 2, dtype=torch.float64), temperature=float("inf"))
    with pytest.raises(ValueError, match="RealNVP.sample: temperature must be a finite real number >= 0"):
        vector.sample(2, temperature=float("inf"))
    with pytest.raises(ValueError, match="RealNVP: z must be finite"):
        image.inverse(torch.full((2, 2, 2, 2), float("nan"), dtype=torch.float64))
    assert integer.log_prob(torch.zeros(0, 1, 4, 4, dtype=torch.long)).shape == (0,)
    assert integer.inverse(torch.zeros(0, 2, 2, 2, dtype=torch.float64)).shape == (0, 1, 4, 4)
