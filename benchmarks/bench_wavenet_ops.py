"""Benchmarks of the WaveNet ops: :func:`fastgen.ops.causal_conv1d`.

Cases (float32, with bias):

- 64 -> 128 channels, K=2, dilation 256, batch 4, T=16000: a dilated WaveNet layer's
  convolution (residual 64, gate 2x64) on one second of 16 kHz audio, forward ("fwd")
  and forward plus backward to x, weight and bias ("fwd+bwd");
- depthwise, 128 channels, K=4, dilation 1, batch 4, T=16000, forward and forward plus
  backward: the short depthwise convolution of Mamba-style blocks.

The eager reference is left padding then ``F.conv1d``. Useful FLOPs count the taps
that read inside the sequence only (a tap ``s`` steps back covers ``T - s`` outputs).

``python benchmarks/harness.py --filter causal_conv1d`` or
``pytest benchmarks/bench_wavenet_ops.py --benchmark-only``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastgen.ops import causal_conv1d, causal_conv1d_ref
from harness import Case, Provider, benchmark_with_pytest, op_providers

__all__ = ["cases", "test_wavenet_ops"]

DTYPE = torch.float32
BATCH, T = 4, 16000
# (C_in, C_out, K, dilation, groups)
CONVS = ((64, 128, 2, 256, 1), (128, 128, 4, 1, 128))


def _conv_case(c_in: int, c_out: int, k: int, dilation: int, groups: int, backward: bool, device: str) -> Case:
    covered = sum(max(T - j * dilation, 0) for j in range(k))  # outputs each tap contributes to
    forward_flops = 2 * BATCH * c_out * (c_in // groups) * covered
    # Backward computes two products of the forward's size: grad of x and grad of weight.
    flops = 3 * forward_flops if backward else forward_flops

    def setup() -> dict[str, Provider]:
        generator = torch.Generator().manual_seed(0)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, dtype=DTYPE).to(device)

        # x requires grad in the forward cases too: the forward of a training step.
        x = randn(BATCH, c_in, T).requires_grad_()  # (B, C_in, T)
        weight = randn(c_out, c_in // groups, k).requires_grad_()
        bias = randn(c_out).requires_grad_()
        grad = randn(BATCH, c_out, T)  # (B, C_out, T)

        def timed(impl: Callable[..., torch.Tensor]) -> Provider:
            def forward() -> torch.Tensor:
                return impl(x, weight, bias, dilation=dilation, groups=groups)

            def forward_backward() -> None:
                x.grad = weight.grad = bias.grad = None  # else backward adds into them
                forward().backward(grad)

            return forward_backward if backward else forward

        return op_providers("causal_conv1d", causal_conv1d_ref, causal_conv1d, timed, device=device, dtype=DTYPE)

    kind = "depthwise " if groups == c_in and groups > 1 else ""
    name = f"causal_conv1d {kind}{c_in}->{c_out} K={k} d={dilation} T={T} {'fwd+bwd' if backward else 'fwd'}"
    return Case(name, flops, setup)


def cases(device: str, quick: bool) -> list[Case]:
    """Every convolution, forward and forward+backward; ``quick`` keeps them all (the
    harness takes fewer runs)."""
    return [_conv_case(*conv, backward, device) for conv in CONVS for backward in (False, True)]


def test_wavenet_ops(benchmark: Any, bench_device: str, case: Case, provider: str) -> None:
    """pytest-benchmark entry; ``conftest.py`` parametrizes ``(case, provider)`` from :func:`cases`."""
    benchmark_with_pytest(benchmark, case, provider, bench_device)
