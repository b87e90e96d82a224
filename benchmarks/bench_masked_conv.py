"""Benchmarks of :func:`fastgen.ops.masked_conv2d`: PixelCNN layers on 28x28 images.

Cases (batch 16, C_out 64, float32, with bias), each forward only ("fwd") and forward
plus backward to x, weight and bias ("fwd+bwd"):

- 7x7 mask A, C_in=1: the first layer of a PixelCNN on MNIST;
- 7x7 mask A and mask B, C_in=64: the wide masked layers;
- 3x3 mask B, C_in=64: the small layers of the residual blocks.

Useful FLOPs count only the kept taps (24 of 49 for 7x7 mask A): the work a kernel that
skips masked taps must do, so the dense reference is charged for the work it wastes.
No peer package implements a standalone masked convolution to add as a provider.

``python benchmarks/harness.py --filter masked_conv2d`` or
``pytest benchmarks/bench_masked_conv.py --benchmark-only``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastgen.ops import masked_conv2d, masked_conv2d_mask, masked_conv2d_ref
from harness import Case, Provider, benchmark_with_pytest, op_providers

__all__ = ["cases", "test_masked_conv2d"]

BATCH, C_OUT, SIZE = 16, 64, 28
DTYPE = torch.float32
LAYERS = ((7, "A", 1), (7, "A", 64), (7, "B", 64), (3, "B", 64))  # (kernel, mask, C_in)


def _case(kernel: int, mask_type: str, c_in: int, backward: bool, device: str) -> Case:
    kept_taps = int(masked_conv2d_mask(1, 1, kernel, mask_type).sum())
    forward_flops = 2 * BATCH * C_OUT * SIZE * SIZE * c_in * kept_taps
    # Backward computes two products of the forward's size: grad of x and grad of weight.
    flops = 3 * forward_flops if backward else forward_flops

    def setup() -> dict[str, Provider]:
        generator = torch.Generator().manual_seed(0)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, dtype=DTYPE).to(device)

        # x requires grad in the forward cases too: the forward of a training step.
        x = randn(BATCH, c_in, SIZE, SIZE).requires_grad_()  # (B, C_in, H, W)
        weight = randn(C_OUT, c_in, kernel, kernel).requires_grad_()
        bias = randn(C_OUT).requires_grad_()
        grad = randn(BATCH, C_OUT, SIZE, SIZE)  # (B, C_out, H, W)

        def timed(impl: Callable[..., torch.Tensor]) -> Provider:
            def forward() -> torch.Tensor:
                return impl(x, weight, bias, mask_type=mask_type)

            def forward_backward() -> None:
                x.grad = weight.grad = bias.grad = None  # else backward adds into them
                forward().backward(grad)

            return forward_backward if backward else forward

        return op_providers("masked_conv2d", masked_conv2d_ref, masked_conv2d, timed, device=device, dtype=DTYPE)

    name = f"masked_conv2d {kernel}x{kernel} {mask_type} C_in={c_in} {'fwd+bwd' if backward else 'fwd'}"
    return Case(name, flops, setup)


def cases(device: str, quick: bool) -> list[Case]:
    """Every layer, forward and forward+backward; ``quick`` keeps them all (the harness
    takes fewer runs), since each is small."""
    return [_case(k, mask, c_in, backward, device) for k, mask, c_in in LAYERS for backward in (False, True)]


def test_masked_conv2d(benchmark: Any, bench_device: str, case: Case, provider: str) -> None:
    """pytest-benchmark entry; ``conftest.py`` parametrizes ``(case, provider)`` from :func:`cases`."""
    benchmark_with_pytest(benchmark, case, provider, bench_device)
