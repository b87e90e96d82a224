r"""FFJORD (Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019, "FFJORD: Free-form
Continuous Dynamics for Scalable Reversible Generative Models"): a continuous normalizing
flow whose dynamics are a free-form MLP, trained with Hutchinson's trace estimator.

.. math::

    z(0) = x, \quad \frac{dz}{dt} = f_\theta(z(t), t), \qquad
    \log p(x) = \log \mathcal N\big(z(T)\big) + \int_0^T
    \operatorname{tr}\frac{\partial f_\theta}{\partial z}(z(t), t)\, dt

Needs torchdiffeq, the optional extra ``ffjord`` (``pip install 'fastgen[ffjord]'``);
importing :mod:`fastgen.models` does not, building the model does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..nn import ContinuousNormalizingFlow, TimeMLP
from ..nn.cnf import load_odeint
from ..ops._checks import check_finite, check_int
from .base import FlowModel, register

__all__ = ["FFJORD"]

# The doctests below need the optional extra (tests/test_docs.py skips them without it).
__doctest_requires__ = ("torchdiffeq",)


@register("ffjord")
class FFJORD(FlowModel):
    r"""FFJORD on vectors of ``dim`` reals: a :class:`~fastgen.nn.ContinuousNormalizingFlow`
    (attribute ``flow``) with :class:`~fastgen.nn.TimeMLP` dynamics (attribute
    ``flow.dynamics``) and a standard normal base.

    - Log-density (:meth:`transform`): the ODE and the trace integrated together from 0 to
      ``time``. The trace is Hutchinson's estimate, with noise fixed for the whole solve,
      while the model trains, and exact (``dim`` vector-Jacobian products per step)
      otherwise, so that ``log_prob`` in eval mode is deterministic and exact up to the
      solver's tolerances; ``exact_trace`` overrides that (True: always exact; False:
      always the estimate).
    - Sampling (:meth:`inverse`): the ODE alone, integrated backward from ``time`` to 0.

    Simplified from the paper: the time is fixed (not learned), the dynamics' layers
    concatenate the time (FFJORD's toy models use "concatsquash" layers), no regularization
    of the dynamics, and gradients go back through the solver's steps (no adjoint: the
    toy sizes fit in memory).

    Args:
        dim: ``D``, the size of one example.
        hidden: the dynamics MLP's hidden widths.
        activation: ``"tanh"`` or ``"softplus"``.
        time: ``T > 0``.
        rtol, atol: the solver's tolerances (FFJORD trains at 1e-5; looser is faster).
        method: the torchdiffeq solver (adaptive ``"dopri5"``, ...; or fixed-step
            ``"rk4"``, ... with ``step_size``).
        step_size: the fixed-step solvers' step; None for the adaptive ones.
        exact_trace: True, False or None (automatic, see above).
        noise: Hutchinson's noise, ``"gaussian"`` or ``"rademacher"``.

    Shape:
        ``x``: ``(B, D)`` floating, the model's dtype; ``z`` the same.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = FFJORD(2, hidden=[16, 16])
        >>> x = torch.randn(5, 2)
        >>> model.log_prob(x).shape
        torch.Size([5])
        >>> z, log_terms = model.eval().transform(x)
        >>> torch.allclose(model.inverse(z), x, atol=1e-4)
        True
        >>> model.sample(3).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64, 64),
        *,
        activation: str = "tanh",
        time: float = 1.0,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        method: str = "dopri5",
        step_size: float | None = None,
        exact_trace: bool | None = None,
        noise: str = "gaussian",
    ):
        super().__init__()
        load_odeint(type(self).__name__)
        check_int(type(self).__name__, "dim", dim, minimum=1)
        self.event_shape = (dim,)
        self.flow = ContinuousNormalizingFlow(
            TimeMLP(dim, hidden, activation),
            dim,
            time=time,
            rtol=rtol,
            atol=atol,
            method=method,
            step_size=step_size,
            exact_trace=exact_trace,
            noise=noise,
        )

    def _check_x(self, x: object, name: str) -> torch.Tensor:
        x = self.flow.check_input(x, name)
        _, dtype = self._device_dtype()
        if x.dtype != dtype:
            raise TypeError(f"{type(self).__name__}: {name} must have the model's dtype {dtype}, got {x.dtype}")
        check_finite(type(self).__name__, name, x)  # a NaN or inf would stall the adaptive solver
        return x

    def transform(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, D) -> (z (B, D), logdet (B,))``, the logdet the integrated trace."""
        x = self._check_x(x, "x")
        self._check_cond(cond, len(x), self.cond_shape)
        return self.flow(x)

    def inverse(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``z (B, D) -> x (B, D)``: the ODE integrated backward, without the trace.
        Deterministic (``temperature`` and ``generator`` have nothing left to draw)."""
        z = self._check_x(z, "z")
        self._check_cond(cond, len(z), self.cond_shape)
        return self.flow.integrate(z, reverse=True)
