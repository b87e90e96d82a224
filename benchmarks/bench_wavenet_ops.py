"""Benchmarks of the WaveNet ops: :func:`fastgen.ops.causal_conv1d` and
:func:`fastgen.ops.gated_residual_block`.

Convolution cases (float32, with bias):

- 64 -> 128 channels, K=2, dilation 256, batch 4, T=16000: a dilated WaveNet layer's
  convolution (residual 64, gate 2x64) on one second of 16 kHz audio, forward ("fwd")
  and forward plus backward to x, weight and bias ("fwd+bwd");
- depthwise, 128 channels, K=4, dilation 1, batch 4, T=16000, forward and forward plus
  backward: the short depthwise convolution of Mamba-style blocks.

The eager reference is left padding then ``F.conv1d``. Useful FLOPs count the taps
that read inside the sequence only (a tap ``s`` steps back covers ``T - s`` outputs).

Residual-block cases (float32, all biases): residual 64, gate 2x64, skip 256, kernel 2,
dilation 64, batch 4, T = 8192, forward only and forward plus backward to h and every
weight and bias; and the same with a global conditioning ``cond`` of shape (B, 2G, 1)
(forward+backward, its gradient included). Useful FLOPs: the dilated conv
(2 * B * T * 2G * R * K) and the two 1x1 convs (2 * B * T * (R + S) * G) forward; backward
counts two products per forward product (input and weight gradients), not the
recomputation the fused kernel does.

``python benchmarks/harness.py --filter causal_conv1d`` (or ``gated_residual_block``), or
``pytest benchmarks/bench_wavenet_ops.py --benchmark-only``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastgen.ops import causal_conv1d, causal_conv1d_ref, gated_residual_block, gated_residual_block_ref
from harness import Case, Provider, benchmark_with_pytest, op_providers

__all__ = ["cases", "test_wavenet_ops"]

DTYPE = torch.float32
BATCH, T = 4, 16000  # the convolution cases
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
    """Every convolution and the residual block, forward and forward+backward (the block
    also with conditioning); ``quick`` keeps them all at full size (the harness takes
    fewer runs)."""
    convs = [_conv_case(*conv, backward, device) for conv in CONVS for backward in (False, True)]
    blocks = [_block_case(backward, cond, device) for backward, cond in ((False, False), (True, False), (True, True))]
    return convs + blocks


def test_wavenet_ops(benchmark: Any, bench_device: str, case: Case, provider: str) -> None:
    """pytest-benchmark entry; ``conftest.py`` parametrizes ``(case, provider)`` from :func:`cases`."""
    benchmark_with_pytest(benchmark, case, provider, bench_device)
