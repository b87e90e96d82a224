"""FFJORD: round trip within the solver's tolerance, the exact-trace log-determinant against
the Jacobian of the solution map, Hutchinson's estimate (noise fixed within a solve,
unbiased), which trace runs when, gradients, save/load, sampling, the density integrating
to 1 on a grid, training on two moons, bad input, and the optional dependency (float64,
2-D)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fastgen import data
from fastgen.models import FFJORD, available, build
from fastgen.train import fit
from tests.helpers import logdet_by_jacobian, randomize, run_python
from tests.models.flows import assert_gradients_reach_every_parameter, assert_state_dict_round_trip

needs_torchdiffeq = pytest.mark.skipif(
    importlib.util.find_spec("torchdiffeq") is None,
    reason="torchdiffeq is not installed (the optional extra 'ffjord'; the 'test' extra installs it)",
)


def ffjord(tol: float = 1e-8, scale: float = 0.5, seed: int = 0, **config) -> FFJORD:
    """A float64 2-D model in eval mode moved off its identity initialization (zero last layer)."""
    torch.manual_seed(0)
    model = FFJORD(2, **(dict(hidden=(16, 16), rtol=tol, atol=tol) | config)).double()
    return randomize(model, scale, seed).eval()


def points(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@needs_torchdiffeq
def test_inverse_of_transform_recovers_x():
    model = ffjord()
    x = points(5)
    with torch.no_grad():
        z, _ = model.transform(x)
        back = model.inverse(z)
    assert (z - x).abs().max() > 0.3  # the flow moves the points
    torch.testing.assert_close(back, x, atol=1e-6, rtol=0)


@needs_torchdiffeq
def test_exact_logdet_matches_the_jacobian_of_the_solution_map():
    model = ffjord(tol=1e-10)
    x = points(3)
    z, logdet = model.flow(x)
    assert logdet.abs().min() > 0.1  # not volume-preserving
    torch.testing.assert_close(logdet, logdet_by_jacobian(lambda e: model.flow.integrate(e), x), atol=1e-7, rtol=0)
    _, inv_logdet = model.flow.inverse(z)
    torch.testing.assert_close(inv_logdet, -logdet, atol=1e-7, rtol=0)


@needs_torchdiffeq
def test_hutchinson_noise_is_fixed_within_a_solve():
    """With signs eps fixed for the solve, the estimate is eps^T M eps, M the integrated
    Jacobian: in 2-D, M11 + M22 +- (M12 + M21), two values whose mean is the trace. Fresh
    noise at every step would spread the estimates."""
    model = ffjord(exact_trace=False, noise="rademacher")
    x = points(1)
    with torch.no_grad():
        _, exact = ffjord().transform(x)  # the same parameters, the exact trace
        torch.manual_seed(3)
        _, estimates = model.transform(x.expand(200, 2).contiguous())
    values = torch.unique(estimates.round(decimals=6))
    assert len(values) == 2, values
    torch.testing.assert_close(values.mean(), exact[0], atol=1e-6, rtol=0)


@needs_torchdiffeq
def test_hutchinson_estimate_is_unbiased():
    model = ffjord(exact_trace=False, noise="gaussian")
    x = points(1)
    with torch.no_grad():
        _, exact = ffjord().transform(x)
        torch.manual_seed(4)
        _, estimates = model.transform(x.expand(4000, 2).contiguous())
    standard_error = estimates.std() / 4000**0.5
    assert standard_error < 0.05
    assert abs(estimates.mean() - exact[0]) < 4 * standard_error, (estimates.mean(), exact, standard_error)


@needs_torchdiffeq
def test_trace_is_estimated_in_training_and_exact_in_evaluation():
    model = ffjord()
    x = points(4)
    with torch.no_grad():
        exact = model.log_prob(x)
        assert not model.train().flow.uses_exact_trace()
        first, second = model.log_prob(x), model.log_prob(x)
        model.flow.exact_trace = True
        forced = model.log_prob(x)
    assert not torch.allclose(first, second)  # fresh noise per solve
    torch.testing.assert_close(forced, exact, atol=1e-12, rtol=0)
    assert model.eval().flow.uses_exact_trace()


@needs_torchdiffeq
def test_gradients_reach_every_parameter():
    model = ffjord(tol=1e-5).train()
    assert_gradients_reach_every_parameter(model, points(16))


@needs_torchdiffeq
def test_state_dict_round_trip():
    assert_state_dict_round_trip(lambda seed: ffjord(seed=seed), points(4))


@needs_torchdiffeq
def test_samples_have_finite_log_prob():
    model = ffjord()
    with torch.no_grad():
        samples = model.sample(32, generator=torch.Generator().manual_seed(0))
        assert samples.shape == (32, 2) and samples.dtype == torch.float64
        assert torch.isfinite(model.log_prob(samples)).all()
        again = model.sample(32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)


@needs_torchdiffeq
def test_density_integrates_to_one_on_a_grid():
    """A midpoint sum over [-6, 6]^2 in cells of 0.1: within 2% of 1 (measured 1.0000),
    for a flow that moves the density well away from its standard normal base."""
    model = ffjord(tol=1e-6)
    centres = torch.arange(-6 + 0.05, 6, 0.1, dtype=torch.float64)
    grid = torch.cartesian_prod(centres, centres)  # (14400, 2)
    with torch.no_grad():
        log_p = model.log_prob(grid)
    base = -0.5 * grid.square().sum(1) - torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))
    assert (log_p - base).abs().max() > 1.0
    total = log_p.exp().sum() * 0.01
    assert abs(total.item() - 1) < 0.02, total


@needs_torchdiffeq
def test_training_on_two_moons_lowers_the_test_loss():
    split = data.two_moons(2500)
    torch.manual_seed(0)
    model = FFJORD(2, hidden=(32, 32), rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        before = model.eval().bits_per_dim(split.test).item()
    fit(model.train(), split.train, epochs=2, batch_size=200, lr=1e-2, progress=False)
    with torch.no_grad():
        after = model.eval().bits_per_dim(split.test).item()
    # 1.68 before (the standard normal), 1.38 after (a full-covariance Gaussian: 1.37)
    assert after < 1.45 and after < before - 0.2, (before, after)


@needs_torchdiffeq
def test_zoo_entry():
    assert "ffjord" in available()
    model = build("ffjord", dim=3, hidden=[8], method="rk4", step_size=0.25)
    assert isinstance(model, FFJORD) and model.event_shape == (3,)
    assert model.sample(2).shape == (2, 3)


@needs_torchdiffeq
@pytest.mark.parametrize(
    "config, error, match",
    [
        (dict(dim=0), ValueError, "dim must be >= 1"),
        (dict(hidden=[]), TypeError, "hidden must be an int or a non-empty sequence of ints"),
        (dict(hidden=[8, 0]), ValueError, r"hidden\[1\] must be >= 1"),
        (dict(activation="relu"), ValueError, "activation must be one of 'tanh', 'softplus'"),
        (dict(time=0.0), ValueError, "time must be a finite real number > 0"),
        (dict(rtol=-1e-5), ValueError, "rtol must be a finite real number > 0"),
        (dict(atol="1e-5"), TypeError, "atol must be a real number"),
        (dict(method="leapfrog"), ValueError, "method must be one of"),
        (dict(method="rk4"), ValueError, "step_size must be given"),
        (dict(step_size=0.1), ValueError, "step_size is for the fixed-step methods"),
        (dict(method="euler", step_size=0.0), ValueError, "step_size must be a finite real number > 0"),
        (dict(exact_trace=1), TypeError, "exact_trace must be True, False or None"),
        (dict(noise="uniform"), ValueError, "noise must be one of 'gaussian', 'rademacher'"),
    ],
)
def test_bad_config_raises(config, error, match):
    with pytest.raises(error, match=match):
        FFJORD(**(dict(dim=2, hidden=[8]) | config))


@needs_torchdiffeq
def test_bad_data_raises():
    model = ffjord()
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        model.log_prob(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        model.log_prob(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must have the model's dtype torch.float64"):
        model.log_prob(torch.zeros(2, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="takes no cond"):
        model.log_prob(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 2\)"):
        model.inverse(torch.zeros(2, dtype=torch.float64))
    for bad in (float("nan"), float("inf")):  # the adaptive solver stalled on them ("underflow in dt")
        x = torch.tensor([[bad, 0.0], [0.0, 1.0]], dtype=torch.float64)
        with pytest.raises(ValueError, match="FFJORD: x must be finite"):
            model.log_prob(x)
        with pytest.raises(ValueError, match="FFJORD: z must be finite"):
            model.inverse(x)
        with pytest.raises(ValueError, match="FFJORD.sample: temperature must be a finite real number >= 0"):
            model.sample(2, temperature=bad)


def test_models_import_without_torchdiffeq_and_ffjord_names_the_extra():
    out = run_python(
        "import sys\n"
        "sys.modules['torchdiffeq'] = None  # as if it were not installed\n"
        "import fastgen.models\n"
        "assert 'ffjord' in fastgen.models.available()\n"
        "try:\n"
        "    fastgen.models.FFJORD(2)\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    assert out.returncode == 0, out.stderr
    assert "FFJORD needs torchdiffeq" in out.stdout and "pip install 'fastgen[ffjord]'" in out.stdout, out.stdout
