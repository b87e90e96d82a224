"""Benchmarks of :func:`fastgen.ops.gated_pixelcnn_layer`: one Gated PixelCNN layer.

Case (the issue's target): a later layer (``first_layer=False``), 64 channels, 7x7
kernel, 28x28 images, batch 16, float32, forward ("fwd") and forward plus backward to the
inputs and every parameter ("fwd+bwd"). Providers: the eager reference (pad + conv +
slice for the shifted stacks, 1x1 convs, gates: :func:`gated_pixelcnn_layer_ref`), its
``torch.compile``, and fastgen's backends.

Useful FLOPs: the vertical (4x7) and horizontal (1x4) convolutions, link (2p x 2p) and
residual (p x p) 1x1s; backward counts twice the forward.

``python benchmarks/harness.py --filter gated_pixelcnn`` or
``pytest benchmarks/bench_gated_pixelcnn.py --benchmark-only``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastgen.ops import gated_pixelcnn_layer, gated_pixelcnn_layer_ref
from harness import Case, Provider, benchmark_with_pytest, op_providers

__all__ = ["cases", "test_gated_pixelcnn"]

BATCH, CHANNELS, KERNEL, SIZE = 16, 64, 7, 28
DTYPE = torch.float32


def _case(backward: bool, device: str) -> Case:
    p, k, c = CHANNELS, KERNEL, KERNEL // 2
    per_pixel = 2 * p * p * ((c + 1) * k + (c + 1)) + (2 * p) * (2 * p) + p * p
    forward_flops = 2 * BATCH * SIZE * SIZE * per_pixel
    flops = 3 * forward_flops if backward else forward_flops

    def setup() -> dict[str, Provider]:
        generator = torch.Generator().manual_seed(0)

        def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (scale * torch.randn(*shape, generator=generator, dtype=DTYPE)).to(device).requires_grad_()

        v, h = randn(BATCH, p, SIZE, SIZE), randn(BATCH, p, SIZE, SIZE)  # (B, p, H, W)
        params = [
            randn(2 * p, p, c + 1, k, scale=0.05), randn(2 * p), randn(2 * p, p, 1, c + 1, scale=0.1),
            randn(2 * p), randn(2 * p, 2 * p, scale=0.1), randn(p, p, scale=0.1), randn(p),
        ]
        leaves = [v, h, *params]
        grads = [torch.randn(BATCH, p, SIZE, SIZE, generator=generator, dtype=DTYPE).to(device) for _ in range(2)]

        def timed(impl: Callable[..., Any]) -> Provider:
            def forward() -> Any:
                return impl(v, h, *params)

            def forward_backward() -> None:
                for t in leaves:
                    t.grad = None  # else backward adds into them
                v_out, h_out, _ = forward()
                torch.autograd.backward((v_out, h_out), grads)

            return forward_backward if backward else forward

        return op_providers(
            "gated_pixelcnn_layer", gated_pixelcnn_layer_ref, gated_pixelcnn_layer, timed, device=device, dtype=DTYPE
        )

    name = f"gated_pixelcnn_layer p={p} {k}x{k} {SIZE}x{SIZE} B={BATCH} {'fwd+bwd' if backward else 'fwd'}"
    return Case(name, flops, setup)


def cases(device: str, quick: bool) -> list[Case]:
    """The target layer, forward and forward+backward (``quick`` keeps both: they are small)."""
    return [_case(backward, device) for backward in (False, True)]


def test_gated_pixelcnn(benchmark: Any, bench_device: str, case: Case, provider: str) -> None:
    """pytest-benchmark entry; ``conftest.py`` parametrizes ``(case, provider)`` from :func:`cases`."""
    benchmark_with_pytest(benchmark, case, provider, bench_device)
