"""ContinuousNormalizingFlow against closed forms: a linear ODE dz/dt = A z has the solution
map expm(T A) and the log-determinant T tr(A), with an adaptive and a fixed-step solver and
both traces; a drift that ignores z has trace zero; TimeMLP starts as the identity (float64)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from fastgen.nn import ContinuousNormalizingFlow, TimeMLP

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torchdiffeq") is None,
    reason="torchdiffeq is not installed (the optional extra 'ffjord'; the 'test' extra installs it)",
)

A = torch.tensor([[0.3, -1.0, 0.2], [0.8, -0.5, 0.0], [0.1, 0.4, 0.6]], dtype=torch.float64)


class Linear(nn.Module):
    """dz/dt = A z: Jacobian A whatever t."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.matrix = nn.Parameter(matrix.clone())

    def forward(self, t, z):
        return z @ self.matrix.T


@pytest.mark.parametrize("solver", [dict(method="dopri5", rtol=1e-10, atol=1e-10), dict(method="rk4", step_size=0.01)])
@pytest.mark.parametrize("exact_trace", [True, False])
def test_linear_ode_has_the_closed_form(solver, exact_trace):
    """The map is expm(T A) x and its logdet T tr(A); Hutchinson's estimate of this
    z-independent Jacobian is eps^T A eps per example (exact on average only), checked
    against the signs the flow drew."""
    time = 0.7
    flow = ContinuousNormalizingFlow(Linear(A), 3, time=time, exact_trace=exact_trace, noise="rademacher", **solver)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tol = dict(atol=1e-8, rtol=1e-8)
    torch.manual_seed(1)
    y, logdet = flow(x)
    torch.testing.assert_close(y, x @ torch.linalg.matrix_exp(time * A).T, **tol)
    if exact_trace:
        torch.testing.assert_close(logdet, (time * A.trace()).expand(5), **tol)
    else:
        torch.manual_seed(1)
        signs = torch.randint(0, 2, x.shape).double() * 2 - 1  # the draw the flow made
        torch.testing.assert_close(logdet, time * ((signs @ A) * signs).sum(1), **tol)
    back, inv_logdet = flow.inverse(y)
    torch.testing.assert_close(back, x, **tol)
    if exact_trace:
        torch.testing.assert_close(inv_logdet, -logdet, **tol)
    torch.testing.assert_close(flow.integrate(x), y, **tol)


class Drift(nn.Module):
    """dz/dt = c t, not a function of z at all."""

    def __init__(self, drift: torch.Tensor):
        super().__init__()
        self.drift = nn.Parameter(drift.clone())

    def forward(self, t, z):
        return (t * self.drift).expand(z.shape[0], -1)


@pytest.mark.parametrize("exact_trace", [True, False])
def test_a_drift_that_ignores_z_has_zero_trace(exact_trace):
    drift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    flow = ContinuousNormalizingFlow(Drift(drift), 3, time=2.0, exact_trace=exact_trace)
    x = torch.zeros(2, 3, dtype=torch.float64)
    y, logdet = flow(x)
    torch.testing.assert_close(y, (2.0**2 / 2 * drift).expand(2, 3), atol=1e-8, rtol=1e-8)  # the integral of c t
    assert torch.equal(logdet, torch.zeros(2, dtype=torch.float64))


def test_time_mlp_starts_as_the_identity():
    flow = ContinuousNormalizingFlow(TimeMLP(2, [8]), 2).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    y, logdet = flow(x)
    torch.testing.assert_close(y, x, atol=1e-14, rtol=0)  # the solver's end-point interpolation rounds
    assert torch.equal(logdet, torch.zeros(4, dtype=torch.float64))


def test_bad_arguments():
    with pytest.raises(TypeError, match="dynamics must be an nn.Module"):
        ContinuousNormalizingFlow(lambda t, z: z, 2)
    flow = ContinuousNormalizingFlow(TimeMLP(2, [8]), 2)
    with pytest.raises(ValueError, match=r"y must have shape \(B, 2\)"):
        flow.inverse(torch.zeros(3))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        flow.integrate(torch.zeros(3, 2, dtype=torch.long))
