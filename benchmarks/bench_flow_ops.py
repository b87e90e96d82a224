"""Benchmarks of the flow ops: :func:`fastgen.ops.affine_coupling`,
:func:`fastgen.ops.affine_coupling_mlp`, :func:`fastgen.ops.masked_affine_autoregressive`,
:func:`fastgen.ops.actnorm`, :func:`fastgen.ops.logit_transform`,
:func:`fastgen.ops.mixture_icdf` and :func:`fastgen.ops.mixture_cdf`.

Element-wise cases (float32, the shapes of a RealNVP/Glow layer on CIFAR-sized activations):

- affine_coupling, checkerboard mask, ``scale="exp"``, x (64, 6, 32, 32): forward plus
  backward to x, shift and log_scale through both y and logdet ("fwd+bwd", the issue's
  target), and the forward alone; the channel-split form (mask None) fwd+bwd; the Glow
  form (``scale="sigmoid"``, mask None) fwd+bwd.
- affine_coupling_mlp, RealNVP's vector coupling (the benchmarked RealNVP of
  ``bench_flows.py``): x (256, 64), parity 0, an MLP 32 -> 256 -> 256 -> 64, fwd+bwd to x,
  every weight and bias and the log-scale bound.
- masked_affine_autoregressive, MAF's layer (the benchmarked MAF of ``bench_flows.py``):
  x (256, 64), a MADE 64 -> 256 -> 256 -> 128 (``fastgen.nn.MaskedMLP``'s masks), fwd+bwd to
  x, every weight and bias and the log-scale bound.
- actnorm, x (64, 12, 16, 16), fwd+bwd to x, loc and log_scale.
- logit_transform, alpha = 0.05, x (64, 3, 32, 32) in [0, 1], fwd+bwd to x.

The backward gets a random gradient for y and one for logdet, as a loss that uses both
(the negative log-likelihood) gives it.

Mixture cases (float32, 2^20 elements, K = 8 logistic components, logits ~ N(0, 1),
locations ~ N(0, 2^2), log-scales ~ N(0, 0.5^2)):

- mixture_icdf forward (sampling), 40 bisection steps (the float32 default) for every
  provider: the eager reference is a vectorized PyTorch bisection with the same bracket and
  the same step count, ``compile`` is ``torch.compile`` of it.
- mixture_cdf forward plus backward to x and the three parameter tensors, from the
  gradients of both outputs (a 1-D CDF flow's training step: u and its log-determinant).

Glow step (float32, (64, 12, 16, 16)): ``FlowSequential(ActNorm, InvConv1x1,
AffineCoupling)`` with Glow's channel-split coupling (``scale="sigmoid"``, a 3x3 / 1x1 / 3x3
network of 64 hidden channels), inverse direction without autograd (sampling). ``eager`` runs
the three layers one by one on the reference backend (ActNorm and the 1x1 conv as two
passes), ``compile`` is ``torch.compile`` of that, ``fastgen-cpp`` is the FlowSequential on
the cpp backend (ActNorm fused into the 1x1 conv, the fused coupling op). The coupling
network's convolutions are PyTorch's in every provider.

No FLOP counts: the element-wise ops are memory-bound, the mixture ops' work is
transcendental functions.

``python benchmarks/harness.py --filter affine_coupling`` (or ``affine_coupling_mlp``,
``masked_affine_autoregressive``, ``actnorm``,
``logit_transform``, ``mixture``, ``glow``), or ``pytest benchmarks/bench_flow_ops.py --benchmark-only``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastgen.ops import (
    actnorm,
    actnorm_ref,
    affine_coupling,
    affine_coupling_mlp,
    affine_coupling_mlp_ref,
    affine_coupling_ref,
    default_icdf_iters,
    logit_transform,
    logit_transform_ref,
    masked_affine_autoregressive,
    masked_affine_autoregressive_ref,
    mixture_cdf,
    mixture_cdf_ref,
    mixture_icdf,
    mixture_icdf_ref,
)
from fastgen.backends import use_backend
from fastgen.nn import ActNorm, AffineCoupling, FlowSequential, InvConv1x1, MaskedMLP
from harness import COMPILE, EAGER, Case, Provider, benchmark_with_pytest, fastgen_backends, op_providers

__all__ = ["cases", "test_flow_ops"]

DTYPE = torch.float32
COUPLING_SHAPE = (64, 6, 32, 32)
ACTNORM_SHAPE = (64, 12, 16, 16)
LOGIT_SHAPE = (64, 3, 32, 32)
MIXTURE_N, MIXTURE_K = 1 << 20, 8
GLOW_SHAPE, GLOW_HIDDEN = (64, 12, 16, 16), (64, 64)
MLP_COUPLING_BATCH, MLP_COUPLING_DIM, MLP_COUPLING_HIDDEN = 256, 64, (256, 256)
MAF_LAYER_BATCH, MAF_LAYER_DIM, MAF_LAYER_HIDDEN = 256, 64, (256, 256)


def _checkerboard(h: int, w: int, device: str) -> torch.Tensor:
    return ((torch.arange(h)[:, None] + torch.arange(w)) % 2).to(device=device, dtype=DTYPE)[None]  # (1, H, W)


def _timed(
    inputs: list[torch.Tensor], grads: tuple[torch.Tensor, ...], call: Callable[[Any], Any], backward: bool
) -> Callable[[Callable[..., Any]], Provider]:
    """The harness's ``timed``: forward, or forward and backward with ``grads`` for the
    outputs (y and logdet), zeroing the gradients of ``inputs`` first."""

    def timed(impl: Callable[..., Any]) -> Provider:
        def forward() -> Any:
            return call(impl)

        def forward_backward() -> None:
            for t in inputs:
                t.grad = None  # else backward adds into them
            torch.autograd.backward(forward(), grads)

        return forward_backward if backward else forward

    return timed


def _randn(generator: torch.Generator, shape: tuple[int, ...], device: str, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=generator, dtype=DTYPE) * scale).to(device)


def _coupling_case(mask: bool, scale: str, backward: bool, device: str) -> Case:
    def setup() -> dict[str, Provider]:
        g = torch.Generator().manual_seed(0)
        # x and the coupling net's outputs require grad in the forward case too: a training step.
        x, shift = (_randn(g, COUPLING_SHAPE, device).requires_grad_() for _ in range(2))
        log_scale = _randn(g, COUPLING_SHAPE, device, 0.5).requires_grad_()
        m = _checkerboard(*COUPLING_SHAPE[2:], device) if mask else None
        grads = (_randn(g, COUPLING_SHAPE, device), _randn(g, COUPLING_SHAPE[:1], device))

        def call(impl: Callable[..., Any]) -> Any:
            return impl(x, shift, log_scale, mask=m, scale=scale)

        timed = _timed([x, shift, log_scale], grads, call, backward)
        return op_providers("affine_coupling", affine_coupling_ref, affine_coupling, timed, device=device, dtype=DTYPE)

    shape = "x".join(map(str, COUPLING_SHAPE))
    kind = "checkerboard" if mask else "mask=None"
    name = f"affine_coupling {kind} {scale} {shape} {'fwd+bwd' if backward else 'fwd'}"
    return Case(name, None, setup)


def _coupling_mlp_case(device: str) -> Case:
    def setup() -> dict[str, Provider]:
        g = torch.Generator().manual_seed(0)
        B, D = MLP_COUPLING_BATCH, MLP_COUPLING_DIM
        widths = [D // 2, *MLP_COUPLING_HIDDEN, D]
        x = _randn(g, (B, D), device).requires_grad_()
        weights = [_randn(g, (o, i), device, i**-0.5).requires_grad_() for i, o in zip(widths[:-1], widths[1:])]
        biases = [_randn(g, (o,), device, 0.1).requires_grad_() for o in widths[1:]]
        bound = torch.ones(D - D // 2, device=device, dtype=DTYPE, requires_grad=True)
        grads = (_randn(g, (B, D), device), _randn(g, (B,), device))

        def call(impl: Callable[..., Any]) -> Any:
            return impl(x, weights, biases, bound, parity=0)

        timed = _timed([x, *weights, *biases, bound], grads, call, True)
        return op_providers(
            "affine_coupling_mlp", affine_coupling_mlp_ref, affine_coupling_mlp, timed, device=device, dtype=DTYPE
        )

    hidden = "-".join(map(str, MLP_COUPLING_HIDDEN))
    return Case(f"affine_coupling_mlp {MLP_COUPLING_BATCH}x{MLP_COUPLING_DIM} hidden={hidden} fwd+bwd", None, setup)


def _maf_layer_case(device: str) -> Case:
    def setup() -> dict[str, Provider]:
        g = torch.Generator().manual_seed(0)
        B, D = MAF_LAYER_BATCH, MAF_LAYER_DIM
        made = MaskedMLP(D, list(MAF_LAYER_HIDDEN), 2).to(device)
        x = _randn(g, (B, D), device).requires_grad_()
        weights = [
            _randn(g, tuple(m.weight.shape), device, m.weight.shape[1] ** -0.5).requires_grad_() for m in made.layers
        ]
        masks = [m.mask for m in made.layers]
        biases = [_randn(g, (m.weight.shape[0],), device, 0.1).requires_grad_() for m in made.layers]
        bound = torch.ones(D, device=device, dtype=DTYPE, requires_grad=True)
        grads = (_randn(g, (B, D), device), _randn(g, (B,), device))

        def call(impl: Callable[..., Any]) -> Any:
            return impl(x, weights, masks, biases, bound)

        timed = _timed([x, *weights, *biases, bound], grads, call, True)
        return op_providers(
            "masked_affine_autoregressive",
            masked_affine_autoregressive_ref,
            masked_affine_autoregressive,
            timed,
            device=device,
            dtype=DTYPE,
        )

    hidden = "-".join(map(str, MAF_LAYER_HIDDEN))
    return Case(f"masked_affine_autoregressive {MAF_LAYER_BATCH}x{MAF_LAYER_DIM} hidden={hidden} fwd+bwd", None, setup)


def _actnorm_case(device: str) -> Case:
    def setup() -> dict[str, Provider]:
        g = torch.Generator().manual_seed(0)
        C = ACTNORM_SHAPE[1]
        x = _randn(g, ACTNORM_SHAPE, device).requires_grad_()
        loc, log_scale = (_randn(g, (C,), device, 0.1).requires_grad_() for _ in range(2))
        grads = (_randn(g, ACTNORM_SHAPE, device), _randn(g, ACTNORM_SHAPE[:1], device))
        timed = _timed([x, loc, log_scale], grads, lambda impl: impl(x, loc, log_scale), True)
        return op_providers("actnorm", actnorm_ref, actnorm, timed, device=device, dtype=DTYPE)

    return Case(f"actnorm {'x'.join(map(str, ACTNORM_SHAPE))} fwd+bwd", None, setup)


def _logit_case(device: str) -> Case:
    def setup() -> dict[str, Provider]:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(LOGIT_SHAPE, generator=g, dtype=DTYPE).to(device).requires_grad_()
        grads = (_randn(g, LOGIT_SHAPE, device), _randn(g, LOGIT_SHAPE[:1], device))
        timed = _timed([x], grads, lambda impl: impl(x, alpha=0.05), True)
        return op_providers("logit_transform", logit_transform_ref, logit_transform, timed, device=device, dtype=DTYPE)

    return Case(f"logit_transform alpha=0.05 {'x'.join(map(str, LOGIT_SHAPE))} fwd+bwd", None, setup)


def _mixture(g: torch.Generator, device: str) -> tuple[torch.Tensor, ...]:
    """(logits, loc, log_scale), each (N, K)."""
    return tuple(_randn(g, (MIXTURE_N, MIXTURE_K), device, scale) for scale in (1.0, 2.0, 0.5))


def _mixture_icdf_case(device: str) -> Case:
    iters = default_icdf_iters(DTYPE)

    def setup() -> dict[str, Provider]:
        g = torch.Generator().manual_seed(0)
        mixture = _mixture(g, device)
        u = torch.rand(MIXTURE_N, generator=g, dtype=DTYPE).to(device)  # (N,)
        timed = _timed([], (), lambda impl: impl(u, *mixture, kind="logistic", iters=iters), False)
        return op_providers("mixture_icdf", mixture_icdf_ref, mixture_icdf, timed, device=device, dtype=DTYPE)

    return Case(f"mixture_icdf logistic K={MIXTURE_K} N=2^20 iters={iters} fwd", None, setup)


def _mixture_cdf_case(device: str) -> Case:
    def setup() -> dict[str, Provider]:
        g = torch.Generator().manual_seed(0)
        mixture = [t.requires_grad_() for t in _mixture(g, device)]
        x = _randn(g, (MIXTURE_N,), device, 3.0).requires_grad_()
        grads = (_randn(g, (MIXTURE_N,), device), _randn(g, (MIXTURE_N,), device))  # for u, log_pdf
        timed = _timed([x, *mixture], grads, lambda impl: impl(x, *mixture, kind="logistic"), True)
        return op_providers("mixture_cdf", mixture_cdf_ref, mixture_cdf, timed, device=device, dtype=DTYPE)

    return Case(f"mixture_cdf logistic K={MIXTURE_K} N=2^20 fwd+bwd", None, setup)


def _glow_step_case(device: str) -> Case:
    def setup() -> dict[str, Provider]:
        torch.manual_seed(0)
        C = GLOW_SHAPE[1]
        coupling = AffineCoupling(C, GLOW_HIDDEN, mask="channel", scale="sigmoid", image=True)
        flow = FlowSequential(ActNorm(C), InvConv1x1(C), coupling).to(device)
        with torch.no_grad():  # away from the identity: initialized ActNorm, a coupling that acts
            flow(_randn(torch.Generator().manual_seed(1), GLOW_SHAPE, device, 2.0))
            for p in coupling.parameters():
                p.add_(0.05 * torch.randn_like(p))
        flow.eval()
        y = _randn(torch.Generator().manual_seed(2), GLOW_SHAPE, device)

        def layer_by_layer(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logdet = z.new_zeros(z.shape[0])
            for layer in reversed(flow):
                z, ld = layer.inverse(z)
                logdet = logdet + ld
            return z, logdet

        def provider(impl: Callable[[torch.Tensor], Any], backend: str) -> Provider:
            def inverse() -> Any:
                with torch.no_grad(), use_backend(backend):
                    return impl(y)

            return inverse

        compiled = torch.compile(layer_by_layer, dynamic=False)
        providers = {EAGER: provider(layer_by_layer, "ref"), COMPILE: provider(compiled, "ref")}
        for backend in fastgen_backends("affine_coupling", device, DTYPE):
            providers[f"fastgen-{backend}"] = provider(flow.inverse, backend)
        return providers

    hidden = "-".join(map(str, GLOW_HIDDEN))
    return Case(f"glow_step {'x'.join(map(str, GLOW_SHAPE))} hidden={hidden} inverse", None, setup)


def cases(device: str, quick: bool) -> list[Case]:
    """The coupling (checkerboard fwd+bwd and fwd, channel-split, Glow's sigmoid), the vector
    coupling with its MLP, MAF's layer, ActNorm, logit, mixture and Glow step cases; ``quick`` keeps them all (the harness takes fewer runs)."""
    coupling = [
        _coupling_case(True, "exp", True, device),
        _coupling_case(True, "exp", False, device),
        _coupling_case(False, "exp", True, device),
        _coupling_case(False, "sigmoid", True, device),
    ]
    mixture = [_mixture_icdf_case(device), _mixture_cdf_case(device)]
    flow_layers = [_coupling_mlp_case(device), _maf_layer_case(device), _actnorm_case(device), _logit_case(device)]
    return coupling + flow_layers + mixture + [_glow_step_case(device)]


def test_flow_ops(benchmark: Any, bench_device: str, case: Case, provider: str) -> None:
    """pytest-benchmark entry; ``conftest.py`` parametrizes ``(case, provider)`` from :func:`cases`."""
    benchmark_with_pytest(benchmark, case, provider, bench_device)
