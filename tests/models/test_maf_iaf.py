"""MAF and IAF: the flow checks (round trips, log-determinants, gradients, saving, samples,
normalization, training), the two being exact inverses of each other with shared weights,
the incremental inverse against the differentiable one, conditioning, bad input."""

from __future__ import annotations

import pytest
import torch

from fastgen.data import gaussian_mixture, two_moons
from fastgen.models import IAF, MAF, build

from . import flows
from ..helpers import randomize

MODELS = {"maf": MAF, "iaf": IAF}
CONFIGS = {
    "plain": dict(dim=3, hidden=[8, 8], transforms=3),
    "cond": dict(dim=4, hidden=6, transforms=2, cond_dim=2),  # hidden narrower than dim - 1: degrees missing
}
CASES = [pytest.param(m, c, id=f"{m}-{c}") for m in MODELS for c in CONFIGS]


def flow(name: str, config: str, seed: int = 0):
    torch.manual_seed(seed)
    return randomize(build(name, **CONFIGS[config]).double(), seed=seed)


def data(model, batch: int = 5, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.dim, generator=g, dtype=torch.float64)
    cond = None if model.cond_dim is None else torch.randn(batch, model.cond_dim, generator=g, dtype=torch.float64)
    return x, cond


# ---------------------------------------------------------------------------- flow checks

CHECKS = {
    "round_trips": lambda model, config: flows.assert_round_trips(model, *data(model)),
    "log_terms": lambda model, config: flows.assert_log_terms_match_the_jacobian(model, *data(model, batch=3)),
    "gradients": lambda model, config: flows.assert_gradients_reach_every_parameter(model, *data(model)),
    "state_dict": lambda model, config: flows.assert_state_dict_round_trip(
        lambda seed: flow(type(model).__name__.lower(), config, seed), *data(model)
    ),
}


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name, config", CASES)
def test_flow_checks(name, config, check):
    CHECKS[check](flow(name, config), config)


@pytest.mark.parametrize("name, config", CASES)
def test_samples_have_finite_log_prob(name, config):
    model = flow(name, config)
    cond = data(model, batch=50)[1]
    samples = flows.assert_samples_have_finite_log_prob(model, 50, cond)
    assert samples.std(0).min() > 0.05  # not collapsed


@pytest.mark.parametrize("name", MODELS)
def test_density_integrates_to_one(name):
    torch.manual_seed(0)
    model = randomize(MODELS[name](2, [16, 16], 3).double())
    x = torch.cartesian_prod(*[torch.linspace(-2, 2, 5, dtype=torch.float64)] * 2)
    log_p = model.log_prob(x)
    assert log_p.max() - log_p.min() > 1.0  # far from the identity's standard normal: a real test
    assert abs(flows.grid_integral(model, -10, 10, 500) - 1) < 0.02


# --------------------------------------------------------------- MAF and IAF are inverses


def test_iaf_and_maf_with_shared_weights_are_inverses():
    maf = flow("maf", "cond")
    iaf = IAF(**CONFIGS["cond"]).double()
    iaf.load_state_dict(maf.state_dict())
    x, cond = data(maf)
    with torch.no_grad():
        z_maf, log_terms_maf = maf.transform(x, cond)
        torch.testing.assert_close(iaf.inverse(x, cond), z_maf, rtol=1e-12, atol=1e-12)
        z_iaf, log_terms_iaf = iaf.transform(x, cond)
        torch.testing.assert_close(maf.inverse(x, cond), z_iaf, rtol=1e-12, atol=1e-12)
        # IAF's log-determinant at x is minus MAF's at IAF's latent (the inverse map's)
        torch.testing.assert_close(log_terms_iaf, -maf.transform(z_iaf, cond)[1], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(z_maf, z_iaf)  # the two directions differ: the test can fail


# ------------------------------------------------------------ incremental vs differentiable


@pytest.mark.parametrize("name, config", CASES)
def test_incremental_and_differentiable_sequential_directions_agree(name, config):
    """The sequential direction (MAF's inverse, IAF's density) runs incrementally without
    autograd and as ``dim`` full passes with it: the same values."""
    model = flow(name, config)
    x, cond = data(model)
    with torch.no_grad():
        fast = model.flow.inverse(x, cond)
    tracked = model.flow.inverse(x, cond)
    assert tracked[0].requires_grad and not fast[0].requires_grad
    for a, b in zip(fast, tracked):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)


def test_iaf_density_gradient_matches_finite_differences():
    """IAF trains through the sequential direction: its gradient (through ``dim`` passes per
    layer) is the derivative of the exact inverse, checked along a random direction."""
    model = flow("iaf", "cond")
    x, cond = data(model)
    params = list(model.parameters())
    model.loss(x, cond).backward()
    g = torch.Generator().manual_seed(5)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    along = sum((p.grad * d).sum() for p, d in zip(params, direction))
    eps = 1e-6

    def loss_at(sign: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
            value = model.loss(x, cond).item()
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
        return value

    torch.testing.assert_close(along.item(), (loss_at(1) - loss_at(-1)) / (2 * eps), rtol=1e-6, atol=1e-8)


def test_maf_inverse_is_differentiable_and_sample_is_not():
    model = flow("maf", "plain")
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    x = model.inverse(z)
    (dx_dz,) = torch.autograd.grad(x[:, 2].sum(), z)
    # dx_2/dz_2 is the inverse of du_2/dx_2 = exp(-sum of the layers' log-scales on entry 2's path)
    assert (dx_dz[:, 2] > 0).all() and (dx_dz != 0).any()
    assert model.sample(3).grad_fn is None


def test_temperature_zero_samples_the_image_of_the_base_mode():
    for name in MODELS:
        model = flow(name, "plain")
        torch.testing.assert_close(model.sample(2, temperature=0.0), model.inverse(torch.zeros(2, 3, dtype=torch.float64)))


# -------------------------------------------------------------------------------- cond


@pytest.mark.parametrize("name", MODELS)
def test_cond_feeds_the_density_and_may_be_any_real_dtype(name):
    model = flow(name, "cond")
    x, _ = data(model, batch=4)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 0, 1]), 2)
    log_p = model.log_prob(x, labels)  # long one-hot: cast to the model's dtype
    torch.testing.assert_close(log_p, model.log_prob(x, labels.double()), rtol=0, atol=0)
    assert ((log_p - model.log_prob(x, 1 - labels)).abs() > 1e-6).all()
    assert model.cond_shape == (2,)


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize("name, make", [("maf", two_moons), ("iaf", gaussian_mixture)])
def test_training_lowers_the_loss(name, make):
    torch.manual_seed(0)
    model = MODELS[name](2, [32, 32], 3)
    flows.assert_training_lowers_the_loss(model, make(2000), epochs=4, lr=1e-2, by=0.1)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("cls", MODELS.values())
@pytest.mark.parametrize(
    "config, error, match",
    [
        (dict(dim=1, hidden=8, transforms=2), ValueError, "dim must be >= 2"),
        (dict(dim=2.0, hidden=8, transforms=2), TypeError, "dim must be an int"),
        (dict(dim=2, hidden=[], transforms=2), TypeError, "hidden must be an int or a non-empty sequence"),
        (dict(dim=2, hidden=[8, 0], transforms=2), ValueError, r"hidden\[1\] must be >= 1"),
        (dict(dim=2, hidden=8, transforms=0), ValueError, "transforms must be >= 1"),
        (dict(dim=2, hidden=8, transforms=2, cond_dim=0), ValueError, "cond_dim must be >= 1"),
    ],
)
def test_bad_config_raises(cls, config, error, match):
    with pytest.raises(error, match=f"{cls.__name__}: {match}"):
        cls(**config)


@pytest.mark.parametrize("name", MODELS)
def test_bad_input_raises(name):
    model = flow(name, "cond")
    x, cond = data(model, batch=3)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4\)"):
        model.log_prob(x[:, :3], cond)
    with pytest.raises(TypeError, match="x must have the model's dtype torch.float64"):
        model.log_prob(x.float(), cond)
    with pytest.raises(TypeError, match="x must have the model's dtype"):
        model.log_prob(x.long(), cond)
    with pytest.raises(TypeError, match="x must be a tensor"):
        model.log_prob(x.tolist(), cond)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 4\)"):
        model.inverse(x[None], cond)
    with pytest.raises(TypeError, match="cond must be a tensor"):
        model.log_prob(x)
    with pytest.raises(ValueError, match=r"cond must have shape \(3, 2\)"):
        model.log_prob(x, cond[:, :1])
    with pytest.raises(ValueError, match="takes no cond"):
        flow(name, "plain").log_prob(x[:, :3], cond)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[1, 2] = bad
        with pytest.raises(ValueError, match=f"{MODELS[name].__name__}: x must be finite"):
            model.log_prob(y, cond)
        with pytest.raises(ValueError, match=f"{MODELS[name].__name__}: z must be finite"):
            model.inverse(y, cond)
        with pytest.raises(ValueError, match=f"{MODELS[name].__name__}.sample: temperature must be a finite real number >= 0"):
            model.sample(2, cond[:2], temperature=bad)
        bad_cond = cond.clone()
        bad_cond[0, 0] = bad
        with pytest.raises(ValueError, match=f"{MODELS[name].__name__}: cond must be finite"):
            model.log_prob(x, bad_cond)
