"""Benchmarks of :func:`fastgen.ops.masked_linear`: the layers of a MADE on 784
dimensions (binarized MNIST) with 2048 hidden units, in natural order with sorted degrees.

Degrees: input ``i`` has degree ``i + 1``; hidden units get ``1 .. 783`` in turn, sorted;
output ``d`` has degree ``d + 1``. A hidden unit sees the units of lower or equal degree
before it, an output those of strictly lower degree, so every mask is a staircase
(about half ones). Cases (batch 256, float32, with bias), each forward only ("fwd") and
forward plus backward to x, weight and bias ("fwd+bwd"):

- 784 -> 2048: the input layer;
- 2048 -> 2048: a hidden layer;
- 2048 -> 784: the output layer (one logit per dimension).

Useful FLOPs count only the mask's ones (the work a kernel that skips masked weights
must do), so the dense reference is charged for the work it wastes. No peer package
implements a standalone masked linear op to add as a provider.

``python benchmarks/harness.py --filter masked_linear`` or
``pytest benchmarks/bench_masked_linear.py --benchmark-only``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastgen.ops import masked_linear, masked_linear_ref
from harness import Case, Provider, benchmark_with_pytest, op_providers

__all__ = ["cases", "made_mask", "test_masked_linear"]

BATCH, DIM, HIDDEN = 256, 784, 2048
DTYPE = torch.float32
LAYERS = ((DIM, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, DIM))  # (in_features, out_features)


def _degrees(units: int) -> torch.Tensor:
    """Degrees of a layer: the data's own (1..DIM) at DIM units, else hidden ones, sorted."""
    if units == DIM:
        return torch.arange(1, DIM + 1)
    return torch.sort(torch.arange(units) % (DIM - 1) + 1).values


def made_mask(in_features: int, out_features: int) -> torch.Tensor:
    """The bool (out_features, in_features) MADE mask between two layers of the cases."""
    d_in, d_out = _degrees(in_features), _degrees(out_features)
    if out_features == DIM:  # the output layer: strictly earlier dimensions only
        return d_out[:, None] > d_in[None, :]
    return d_out[:, None] >= d_in[None, :]


def _case(in_features: int, out_features: int, backward: bool, device: str) -> Case:
    mask = made_mask(in_features, out_features)
    forward_flops = 2 * BATCH * int(mask.sum())
    # Backward computes two products of the forward's size: grad of x and grad of weight.
    flops = 3 * forward_flops if backward else forward_flops

    def setup() -> dict[str, Provider]:
        generator = torch.Generator().manual_seed(0)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, dtype=DTYPE).to(device)

        # x requires grad in the forward cases too: the forward of a training step.
        x = randn(BATCH, in_features).requires_grad_()
        weight = (randn(out_features, in_features) / in_features**0.5).requires_grad_()
        bias = randn(out_features).requires_grad_()
        m = mask.to(device)
        grad = randn(BATCH, out_features)

        def timed(impl: Callable[..., torch.Tensor]) -> Provider:
            def forward() -> torch.Tensor:
                return impl(x, weight, m, bias)

            def forward_backward() -> None:
                x.grad = weight.grad = bias.grad = None  # else backward adds into them
                forward().backward(grad)

            return forward_backward if backward else forward

        return op_providers("masked_linear", masked_linear_ref, masked_linear, timed, device=device, dtype=DTYPE)

    name = f"masked_linear MADE {in_features}->{out_features} B={BATCH} {'fwd+bwd' if backward else 'fwd'}"
    return Case(name, flops, setup)


def cases(device: str, quick: bool) -> list[Case]:
    """Every layer, forward and forward+backward; ``quick`` keeps them all (the harness
    takes fewer runs)."""
    return [_case(i, o, backward, device) for i, o in LAYERS for backward in (False, True)]


def test_masked_linear(benchmark: Any, bench_device: str, case: Case, provider: str) -> None:
    """pytest-benchmark entry; ``conftest.py`` parametrizes ``(case, provider)`` from :func:`cases`."""
    benchmark_with_pytest(benchmark, case, provider, bench_device)
