"""Benchmarks of the mixture CDF ops: :func:`fastgen.ops.mixture_icdf` and
:func:`fastgen.ops.mixture_cdf`.

Cases (float32, 2^20 elements, K = 8 logistic components, logits ~ N(0, 1), locations
~ N(0, 2^2), log-scales ~ N(0, 0.5^2)):

- mixture_icdf forward (sampling), 40 bisection steps (the float32 default) for every
  provider: the eager reference is a vectorized PyTorch bisection with the same bracket and
  the same step count, ``compile`` is ``torch.compile`` of it. Issue 4's target: at least 5x
  the eager reference and no slower than the compiled one.
- mixture_cdf forward plus backward to x and the three parameter tensors, from the
  gradients of both outputs (a 1-D CDF flow's training step: u and its log-determinant).

No FLOP counts: the work is transcendental functions, not multiply-adds.

``python benchmarks/harness.py --filter mixture``, or
``pytest benchmarks/bench_mixture_cdf.py --benchmark-only``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastgen.ops import default_icdf_iters, mixture_cdf, mixture_cdf_ref, mixture_icdf, mixture_icdf_ref
from harness import Case, Provider, benchmark_with_pytest, op_providers

__all__ = ["cases", "test_mixture_cdf"]

DTYPE = torch.float32
N, K = 1 << 20, 8
KIND = "logistic"


def _mixture(device: str, requires_grad: bool) -> tuple[torch.Tensor, ...]:
    """(logits, loc, log_scale), each (N, K)."""
    generator = torch.Generator().manual_seed(0)
    return tuple(
        (torch.randn(N, K, generator=generator, dtype=DTYPE) * scale).to(device).requires_grad_(requires_grad)
        for scale in (1.0, 2.0, 0.5)
    )


def _icdf_case(device: str) -> Case:
    iters = default_icdf_iters(DTYPE)

    def setup() -> dict[str, Provider]:
        mixture = _mixture(device, requires_grad=False)
        u = torch.rand(N, generator=torch.Generator().manual_seed(1), dtype=DTYPE).to(device)  # (N,)

        def timed(impl: Callable[..., torch.Tensor]) -> Provider:
            return lambda: impl(u, *mixture, kind=KIND, iters=iters)

        return op_providers("mixture_icdf", mixture_icdf_ref, mixture_icdf, timed, device=device, dtype=DTYPE)

    return Case(f"mixture_icdf {KIND} K={K} N=2^20 iters={iters} fwd", None, setup)


def _cdf_case(device: str) -> Case:
    def setup() -> dict[str, Provider]:
        mixture = _mixture(device, requires_grad=True)
        generator = torch.Generator().manual_seed(1)
        x = (torch.randn(N, generator=generator, dtype=DTYPE) * 3).to(device).requires_grad_()  # (N,)
        grads = [torch.randn(N, generator=generator, dtype=DTYPE).to(device) for _ in range(2)]  # for u, log_pdf
        leaves = (x, *mixture)

        def timed(impl: Callable[..., Any]) -> Provider:
            def forward_backward() -> None:
                for t in leaves:
                    t.grad = None  # else backward adds into them
                torch.autograd.backward(impl(x, *mixture, kind=KIND), grads)

            return forward_backward

        return op_providers("mixture_cdf", mixture_cdf_ref, mixture_cdf, timed, device=device, dtype=DTYPE)

    return Case(f"mixture_cdf {KIND} K={K} N=2^20 fwd+bwd", None, setup)


def cases(device: str, quick: bool) -> list[Case]:
    """The inverse (forward) and the CDF (forward+backward); ``quick`` keeps them at full
    size (the harness takes fewer runs)."""
    return [_icdf_case(device), _cdf_case(device)]


def test_mixture_cdf(benchmark: Any, bench_device: str, case: Case, provider: str) -> None:
    """pytest-benchmark entry; ``conftest.py`` parametrizes ``(case, provider)`` from :func:`cases`."""
    benchmark_with_pytest(benchmark, case, provider, bench_device)
