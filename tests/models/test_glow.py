"""Glow (float64, tiny shapes): round trips and log-determinants against the autograd
Jacobian, the likelihood's accounting (learned priors, dequantization), gradients,
save/load, samples and the temperature's mode path, class conditioning, training on the
digits with invertible 1x1 convolutions throughout, and bad input."""

from __future__ import annotations

import pytest
import torch

from fastgen import data
from fastgen.models import Glow, build
from fastgen.nn import InvConv1x1
from fastgen.train import fit

from ..helpers import randomize
from .flows import assert_gradients_reach_every_parameter, assert_state_dict_round_trip
from .image_flows import (
    assert_continuous_part_inverts,
    assert_integers_round_trip,
    assert_log_prob_accounts_every_latent,
)

SHAPE = (3, 4, 4)
LABELS = torch.tensor([0, 2, 1, 2])


def glow(num_classes=None, bins=None, seed=0, alpha=None):
    torch.manual_seed(seed)
    model = Glow(SHAPE, levels=2, depth=2, hidden=8, num_classes=num_classes, bins=bins, alpha=alpha)
    return randomize(model.double().eval(), 0.05, seed)


def test_registered():
    assert type(build("glow", shape=(1, 4, 4), levels=1, depth=1, hidden=4)) is Glow


@pytest.mark.parametrize("num_classes, alpha", [(None, None), (3, None), (None, 0.05)])
def test_inverts_with_the_jacobian_logdet(num_classes, alpha):
    model = glow(num_classes, alpha=alpha)
    y = torch.randn(4, *SHAPE, dtype=torch.float64) if alpha is None else torch.rand(4, *SHAPE, dtype=torch.float64)
    cond = None if num_classes is None else LABELS
    assert_continuous_part_inverts(model, y, cond)
    assert model.latent_shapes == [(6, 2, 2), (24, 1, 1)] and model.latent_shape == (24, 1, 1)
    assert_log_prob_accounts_every_latent(model, y, cond)


@pytest.mark.parametrize("alpha", [None, 0.05])
def test_integer_images_round_trip_and_count_the_dequantization(alpha):
    model = glow(bins=17, alpha=alpha)
    x = torch.randint(0, 17, (4, *SHAPE))
    assert_integers_round_trip(model, x)
    assert_log_prob_accounts_every_latent(model, x)


def test_gradients_reach_every_parameter():
    model = glow(num_classes=3, bins=17)
    x = torch.randint(0, 17, (12, *SHAPE))
    assert_gradients_reach_every_parameter(model, x, torch.arange(12) % 3)


def test_save_load_round_trip():
    x = torch.randint(0, 17, (4, *SHAPE))
    assert_state_dict_round_trip(lambda seed: glow(num_classes=3, bins=17, seed=seed), x, LABELS)


@pytest.mark.parametrize("bins", [None, 17])
def test_samples_have_finite_log_prob(bins):
    model = glow(num_classes=3, bins=bins)
    with torch.no_grad():
        x = model.sample(4, LABELS, torch.Generator().manual_seed(0))
        assert x.shape == (4, *SHAPE)
        assert torch.isfinite(model.log_prob(x, LABELS)).all()
    if bins:
        assert x.dtype == torch.long and 0 <= x.min() and x.max() < bins


def test_temperature_zero_is_the_deterministic_mode_path():
    model = glow(num_classes=3)
    with torch.no_grad():
        a = model.sample(4, LABELS, torch.Generator().manual_seed(0), temperature=0)
        b = model.sample(4, LABELS, torch.Generator().manual_seed(1), temperature=0)
        assert torch.equal(a, b)
        # The mode path: the top latent at its prior mean and each factored-out half at its
        # prior mean given the rest, i.e. every standardized latent zero.
        latents, _ = model.flow(a, LABELS)
        for t in latents:
            torch.testing.assert_close(t, torch.zeros_like(t), atol=1e-8, rtol=0)
        warm = model.sample(4, LABELS, torch.Generator().manual_seed(0), temperature=0.5)
        assert not torch.allclose(warm, a)


def test_class_conditioning_changes_log_prob_and_samples():
    model = glow(num_classes=3, bins=17)
    x = torch.randint(0, 17, (4, *SHAPE))
    with torch.no_grad():
        torch.manual_seed(0)
        zeros = model.log_prob(x, torch.zeros(4, dtype=torch.long))
        torch.manual_seed(0)
        twos = model.log_prob(x, torch.full((4,), 2))
        assert (zeros - twos).abs().min() > 1e-3
        a = model.sample(4, torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0))
        b = model.sample(4, torch.full((4,), 2), torch.Generator().manual_seed(0))
    assert not torch.equal(a, b)


def test_training_on_digits_lowers_the_loss_and_keeps_the_1x1_convs_invertible():
    digits = data.digits()
    x, test = digits.train[:320], digits.test[:200]
    torch.manual_seed(0)
    model = Glow((1, 8, 8), levels=2, depth=1, hidden=8, bins=17)
    with torch.no_grad():
        torch.manual_seed(0)
        before = model.train().bits_per_dim(test).item()  # ActNorm's data initialization included
    fit(model, x, epochs=15, batch_size=16, lr=1e-3, progress=False)  # 300 steps at Glow's learning rate
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        log_p = model.log_prob(test)
        samples = model.sample(16, generator=torch.Generator().manual_seed(0))
        log_p_samples = model.log_prob(samples)
    assert torch.isfinite(log_p).all() and torch.isfinite(log_p_samples).all()
    assert -log_p.mean().item() / 64 / torch.log(torch.tensor(2.0)).item() < before - 0.5
    convs = [m for m in model.modules() if isinstance(m, InvConv1x1)]
    for conv in convs:
        w = conv.weight().detach()
        assert torch.linalg.slogdet(w)[1] > -5  # |det W| > e^-5: far from singular
        assert torch.linalg.cond(w) < 1e3
    assert len(convs) == 2


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"shape": (8, 8)}, ValueError, "shape must be"),
        ({"shape": (1, 6, 6)}, ValueError, "multiples of 2 \\*\\* levels"),
        ({"levels": 0}, ValueError, "levels"),
        ({"depth": 0}, ValueError, "depth"),
        ({"hidden": 2.0}, TypeError, "hidden"),
        ({"num_classes": 0}, ValueError, "num_classes"),
        ({"bins": 1}, ValueError, "bins"),
        ({"alpha": -0.1}, ValueError, "alpha"),
    ],
)
def test_bad_configuration(kwargs, error, match):
    config = dict(shape=(1, 4, 4), levels=2, depth=1, hidden=4) | kwargs
    with pytest.raises(error, match=match):
        Glow(**config)


def test_bad_input():
    model, conditional = glow(bins=17), glow(num_classes=3)
    x = torch.randint(0, 17, (4, *SHAPE))
    y = torch.randn(4, *SHAPE, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, 4, 4\)"):
        model.log_prob(x[:, :2])
    with pytest.raises(TypeError, match="x must be an integer or floating-point tensor"):
        model.log_prob(x > 3)
    with pytest.raises(ValueError, match=r"x must hold integers in \[0, bins\)"):
        model.log_prob(x - 1)
    with pytest.raises(TypeError, match="x must have the model's dtype"):
        conditional.log_prob(y.float(), LABELS)
    with pytest.raises(ValueError, match=r"x must be in \[0, 1\]"):
        glow(alpha=0.05).log_prob(y)
    with pytest.raises(TypeError, match="cond must be a tensor"):
        conditional.log_prob(y)
    with pytest.raises(ValueError, match=r"cond must have shape \(4,\)"):
        conditional.log_prob(y, LABELS[:3])
    with pytest.raises(TypeError, match="cond must have an integer dtype"):
        conditional.log_prob(y, LABELS.double())
    with pytest.raises(ValueError, match=r"cond must have values in \[0, 3\)"):
        conditional.log_prob(y, LABELS + 1)
    with pytest.raises(ValueError, match="takes no cond"):
        model.sample(4, cond=LABELS)
    with pytest.raises(TypeError, match="z must have the model's dtype"):
        model.inverse(torch.zeros(4, 24, 1, 1))
    with pytest.raises(TypeError, match="temperature"):
        model.inverse(torch.zeros(4, 24, 1, 1, dtype=torch.float64), temperature="hot")
    with pytest.raises(ValueError, match="Glow.sample: temperature must be a finite real number >= 0, got inf"):
        model.sample(1, temperature=float("inf"))
    with pytest.raises(ValueError, match="Glow: z must be finite"):
        model.inverse(torch.full((4, 24, 1, 1), float("inf"), dtype=torch.float64))
    assert model.log_prob(x[:0]).shape == (0,)  # before any data-dependent initialization
    assert model.inverse(torch.zeros(0, 24, 1, 1, dtype=torch.float64)).shape == (0, *SHAPE)
