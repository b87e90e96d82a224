r"""Continuous normalizing flows (Chen et al. 2018, "Neural Ordinary Differential
Equations"; Grathwohl et al. 2019, "FFJORD: Free-form Continuous Dynamics for Scalable
Reversible Generative Models"): the flow is the solution map of an ODE,

.. math::

    z(0) = x, \quad \frac{dz}{dt} = f(z(t), t), \quad y = z(T), \qquad
    \log\left|\det \frac{\partial y}{\partial x}\right| = \int_0^T
    \operatorname{tr}\frac{\partial f}{\partial z}(z(t), t)\, dt

(the instantaneous change of variables), both integrated together by an ODE solver of
`torchdiffeq <https://github.com/rtqichen/torchdiffeq>`_, an optional dependency (the
``ffjord`` extra: ``pip install 'fastgen[ffjord]'``) imported only when a flow is built.
The inverse integrates the same ODE from ``T`` back to 0.

The trace is exact (``D`` vector-Jacobian products per evaluation of ``f``, for small
``D``) or Hutchinson's estimate :math:`\epsilon^\top \frac{\partial f}{\partial z} \epsilon`
(one product), unbiased for noise with :math:`\mathbb E[\epsilon \epsilon^\top] = I`. The
noise is drawn once per solve and kept at every step, as in FFJORD: the integral of the
estimates is then :math:`\epsilon^\top \big(\int_0^T \frac{\partial f}{\partial z}
dt\big)\epsilon`, an unbiased estimate of the log-determinant, whereas fresh noise per
step would make the solver's error control chase the noise.

The layer follows the flow contract of :mod:`fastgen.nn.flow` on vectors ``(B, D)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops._checks import check_choice, check_int, check_real, check_widths

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_STEP_METHODS",
    "ContinuousNormalizingFlow",
    "TimeMLP",
    "load_odeint",
]

# The examples below need the optional extra (tests/test_docs.py skips them without it).
__doctest_requires__ = ("torchdiffeq",)

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_STEP_METHODS = ("euler", "midpoint", "rk4")
NOISES = ("gaussian", "rademacher")
ACTIVATIONS = {"tanh": torch.tanh, "softplus": F.softplus}


def load_odeint(owner: str) -> Callable:
    """``torchdiffeq.odeint``, or an ImportError that says how to install it."""
    try:
        from torchdiffeq import odeint
    except ImportError as error:
        raise ImportError(
            f"{owner} needs torchdiffeq, the optional extra 'ffjord': pip install 'fastgen[ffjord]' "
            "(or pip install torchdiffeq)"
        ) from error
    return odeint


class TimeMLP(nn.Module):
    r"""The dynamics :math:`f(z, t)` of FFJORD's toy experiments: an MLP whose every layer
    sees the time concatenated to its input ("concat" layers),
    :math:`h_{l+1} = \sigma(W_l [h_l; t] + b_l)`, no activation after the last layer.

    The activation is smooth (``tanh`` or ``softplus``): the solver's error control and
    the trace's derivatives need a differentiable ``f``. The last layer starts at zero, so
    the flow starts as the identity.

    Args:
        dim: ``D``, the size of ``z``.
        hidden: the hidden layers' widths.
        activation: ``"tanh"`` or ``"softplus"``.

    Shape:
        ``forward(t, z)``: ``t`` a scalar tensor, ``z`` ``(B, D)`` -> ``(B, D)``.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64, 64), activation: str = "tanh"):
        super().__init__()
        name = type(self).__name__
        self.dim = check_int(name, "dim", dim, minimum=1)
        widths = check_widths(name, "hidden", hidden)
        self.activation = check_choice(name, "activation", activation, tuple(ACTIVATIONS))
        sizes = [dim, *widths, dim]
        self.layers = nn.ModuleList(nn.Linear(i + 1, o) for i, o in zip(sizes[:-1], sizes[1:]))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        time = t.to(z).expand(z.shape[0], 1)  # (B, 1)
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(torch.cat([h, time], dim=1))
            if i < len(self.layers) - 1:
                h = ACTIVATIONS[self.activation](h)
        return h


class ContinuousNormalizingFlow(nn.Module):
    r"""The solution map of :math:`dz/dt = f(z, t)` from 0 to ``time`` as a flow layer, its
    log-determinant the integrated trace of :math:`\partial f / \partial z` (see the module
    docstring).

    Which trace: ``exact_trace=True`` always exact, ``False`` always Hutchinson, ``None``
    (default) Hutchinson while the module is training and exact otherwise, so that training
    costs one vector-Jacobian product per evaluation of ``f`` and evaluation is exact.

    Gradients flow back through the solver's steps (no adjoint): memory grows with the
    number of steps, which the tolerances bound. The derivatives inside ``f``'s evaluations
    are built with ``create_graph`` only when autograd is on at the call, so evaluation
    under ``torch.no_grad`` keeps no graph.

    Args:
        dynamics: ``f``, a module ``(t, z) -> dz/dt`` with ``t`` a scalar tensor and ``z``,
            ``dz/dt`` ``(B, dim)`` (e.g. :class:`TimeMLP`).
        dim: ``D``.
        time: ``T > 0``, the integration time.
        rtol, atol: the adaptive solver's relative and absolute tolerances (> 0).
        method: a torchdiffeq solver: adaptive (``"dopri5"``, ``"dopri8"``, ``"bosh3"``,
            ``"fehlberg2"``, ``"adaptive_heun"``) or fixed-step (``"euler"``,
            ``"midpoint"``, ``"rk4"``, which ignore the tolerances and need ``step_size``).
        step_size: the fixed-step solvers' step (> 0); None for the adaptive ones.
        exact_trace: True, False or None (see above).
        noise: Hutchinson's noise, ``"gaussian"`` or ``"rademacher"`` (random signs, the
            smaller variance).

    Shape:
        ``(B, D)`` to ``(B, D)``; logdet ``(B,)``.

    Example:
        >>> flow = ContinuousNormalizingFlow(TimeMLP(2, [16, 16]), 2)
        >>> y, logdet = flow(torch.randn(8, 2))     # (8, 2), (8,)
        >>> x = flow.integrate(y, reverse=True)     # back to the input, within the tolerances
    """

    def __init__(
        self,
        dynamics: nn.Module,
        dim: int,
        *,
        time: float = 1.0,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        method: str = "dopri5",
        step_size: float | None = None,
        exact_trace: bool | None = None,
        noise: str = "gaussian",
    ):
        super().__init__()
        name = type(self).__name__
        if not isinstance(dynamics, nn.Module):
            raise TypeError(f"{name}: dynamics must be an nn.Module (t, z) -> dz/dt, got {type(dynamics).__name__}")
        self.dim = check_int(name, "dim", dim, minimum=1)
        self.time = check_real(name, "time", time, above=0)
        self.rtol = check_real(name, "rtol", rtol, above=0)
        self.atol = check_real(name, "atol", atol, above=0)
        self.method = check_choice(name, "method", method, ADAPTIVE_METHODS + FIXED_STEP_METHODS)
        if method in FIXED_STEP_METHODS:
            if step_size is None:
                raise ValueError(f"{name}: method {method!r} takes fixed steps: step_size must be given")
            self.step_size: float | None = check_real(name, "step_size", step_size, above=0)
        elif step_size is not None:
            raise ValueError(f"{name}: step_size is for the fixed-step methods, not {method!r}; got {step_size!r}")
        else:
            self.step_size = None
        if exact_trace is not None and not isinstance(exact_trace, bool):
            raise TypeError(f"{name}: exact_trace must be True, False or None, got {exact_trace!r}")
        self.exact_trace = exact_trace
        self.noise = check_choice(name, "noise", noise, NOISES)
        self._odeint = load_odeint(name)
        self.dynamics = dynamics

    def extra_repr(self) -> str:
        solver = f"step_size={self.step_size}" if self.step_size else f"rtol={self.rtol}, atol={self.atol}"
        return f"dim={self.dim}, time={self.time}, method={self.method!r}, {solver}, exact_trace={self.exact_trace}"

    def check_input(self, x: object, name: str) -> torch.Tensor:
        """``x`` must be a floating-point tensor ``(B, D)``."""
        cls = type(self).__name__
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"{cls}: {name} must be a floating-point tensor, got {got}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{cls}: {name} must have shape (B, {self.dim}), got {tuple(x.shape)}")
        return x

    def _solve(self, func: Callable, state, reverse: bool):
        """``state`` (a tensor or a tuple) integrated over ``[0, T]`` (``[T, 0]`` if
        ``reverse``); the state at the end."""
        ref = state[0] if isinstance(state, tuple) else state
        span = [self.time, 0.0] if reverse else [0.0, self.time]
        options = None if self.step_size is None else {"step_size": self.step_size}
        solution = self._odeint(
            func,
            state,
            torch.tensor(span, dtype=ref.dtype, device=ref.device),
            rtol=self.rtol,
            atol=self.atol,
            method=self.method,
            options=options,
        )
        return tuple(s[-1] for s in solution) if isinstance(state, tuple) else solution[-1]

    def uses_exact_trace(self) -> bool:
        """Whether the next forward uses the exact trace (see the class docstring)."""
        return (not self.training) if self.exact_trace is None else self.exact_trace

    def _draw_noise(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise == "gaussian":
            return torch.randn_like(x)
        return torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1

    def _with_trace(self, x: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        noise = None if self.uses_exact_trace() else self._draw_noise(x)
        create_graph = torch.is_grad_enabled()

        def augmented(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            z = state[0]
            # The trace needs derivatives of f even when the caller wants none (evaluation
            # under no_grad): z becomes a leaf of a local graph, dropped after this call.
            with torch.enable_grad():
                if not z.requires_grad:
                    z = z.detach().requires_grad_()
                dz = self.dynamics(t, z)
                trace = self._trace(dz, z, noise, create_graph)
            return (dz, trace) if create_graph else (dz.detach(), trace.detach())

        return self._solve(augmented, (x, x.new_zeros(x.shape[0])), reverse)

    @staticmethod
    def _trace(dz: torch.Tensor, z: torch.Tensor, noise: torch.Tensor | None, create_graph: bool) -> torch.Tensor:
        r""":math:`\operatorname{tr}(\partial\, dz / \partial z)` per example: exact (one
        vector-Jacobian product per dimension, the column it needs kept) or
        :math:`\epsilon^\top (\partial\, dz/\partial z)\, \epsilon`."""
        # materialize_grads: dynamics that ignore z (or some of its entries) have zero trace.
        grad = dict(create_graph=create_graph, allow_unused=True, materialize_grads=True)
        if noise is not None:
            (vjp,) = torch.autograd.grad(dz, z, noise, **grad)
            return (vjp * noise).sum(1)
        diagonal = [
            torch.autograd.grad(dz[:, i].sum(), z, retain_graph=True, **grad)[0][:, i] for i in range(z.shape[1])
        ]
        return torch.stack(diagonal, 1).sum(1)

    def integrate(self, x: torch.Tensor, *, reverse: bool = False) -> torch.Tensor:
        """The solution map alone, no trace: ``z(T)`` from ``z(0) = x`` (or ``z(0)`` from
        ``z(T) = x`` if ``reverse``), ``(B, D)``: sampling, trajectories' end points."""
        self.check_input(x, "x")
        return self._solve(self.dynamics, x, reverse)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._with_trace(self.check_input(x, "x"), reverse=False)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._with_trace(self.check_input(y, "y"), reverse=True)
