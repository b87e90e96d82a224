"""Benchmarks of the WaveNet ops: :func:`fastgen.ops.gated_residual_block`.

Residual-block cases (float32, all biases): residual 64, gate 2x64, skip 256, kernel 2,
dilation 64, batch 4, T = 8192 (the issue's target), forward only ("fwd") and forward plus
backward to h and every weight and bias ("fwd+bwd"); and the same with a global
conditioning ``cond`` of shape (B, 2G, 1) (forward+backward, its gradient included).

Useful FLOPs: the dilated conv (2 * B * T * 2G * R * K) and the two 1x1 convs
(2 * B * T * (R + S) * G) forward; backward counts two products per forward product
(input and weight gradients), not the recomputation the fused kernel does.

``python benchmarks/harness.py --filter gated_residual_block`` or
``pytest benchmarks/bench_wavenet_ops.py --benchmark-only``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastgen.ops import gated_residual_block, gated_residual_block_ref
from harness import Case, Provider, benchmark_with_pytest, op_providers

__all__ = ["cases", "test_wavenet_ops"]

DTYPE = torch.float32
BLOCK = dict(B=4, R=64, G=64, S=256, K=2, dilation=64, T=8192)


def _block_case(backward: bool, cond: bool, device: str) -> Case:
    B, R, G, S, K, dilation = (BLOCK[k] for k in ("B", "R", "G", "S", "K", "dilation"))
    T = BLOCK["T"]
    forward_flops = 2 * B * T * (2 * G * R * K + (R + S) * G)
    flops = 3 * forward_flops if backward else forward_flops

    def setup() -> dict[str, Provider]:
        generator = torch.Generator().manual_seed(0)

        def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (torch.randn(*shape, generator=generator, dtype=DTYPE) * scale).to(device).requires_grad_()

        # h requires grad in the forward cases too: the forward of a training step.
        h = randn(B, R, T)  # (B, R, T)
        params = [
            randn(2 * G, R, K, scale=(R * K) ** -0.5), randn(2 * G),
            randn(R, G, scale=G**-0.5), randn(R),
            randn(S, G, scale=G**-0.5), randn(S),
        ]
        c = randn(B, 2 * G, 1) if cond else None  # (B, 2G, 1)
        grad_h, grad_skip = randn(B, R, T).detach(), randn(B, S, T).detach()
        leaves = [h, *params] + ([c] if cond else [])

        def timed(impl: Callable[..., Any]) -> Provider:
            def forward() -> Any:
                return impl(h, *params, dilation=dilation, cond=c)

            def forward_backward() -> None:
                for t in leaves:
                    t.grad = None  # else backward adds into them
                torch.autograd.backward(forward(), (grad_h, grad_skip))

            return forward_backward if backward else forward

        return op_providers(
            "gated_residual_block", gated_residual_block_ref, gated_residual_block, timed, device=device, dtype=DTYPE
        )

    name = (
        f"gated_residual_block R={R} G={G} S={S} K={K} d={dilation} B={B} T={T}"
        f"{' cond' if cond else ''} {'fwd+bwd' if backward else 'fwd'}"
    )
    return Case(name, flops, setup)


def cases(device: str, quick: bool) -> list[Case]:
    """The target block forward and forward+backward, and forward+backward with global
    conditioning; ``quick`` keeps them all at full size (the harness takes fewer runs)."""
    return [_block_case(backward, cond, device) for backward, cond in ((False, False), (True, False), (True, True))]


def test_wavenet_ops(benchmark: Any, bench_device: str, case: Case, provider: str) -> None:
    """pytest-benchmark entry; ``conftest.py`` parametrizes ``(case, provider)`` from :func:`cases`."""
    benchmark_with_pytest(benchmark, case, provider, bench_device)
