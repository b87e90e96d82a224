"""Helpers shared by the tests."""

import os
import subprocess
import sys

import pytest
import torch

import fastgen

__all__ = [
    "DEVICES",
    "assert_same_on_thread_counts",
    "backend_params",
    "fast_backends",
    "flow_loss_grads",
    "logdet_by_jacobian",
    "randomize",
    "run_on_isa",
    "run_python",
    "tolerances",
]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tolerances(dtype: torch.dtype) -> dict:
    """assert_close tolerances per dtype: tight, but above the rounding of a reordered sum."""
    return {
        torch.float64: dict(atol=1e-10, rtol=1e-10),
        torch.float32: dict(atol=1e-4, rtol=1e-4),
        torch.float16: dict(atol=2e-2, rtol=2e-2),
        torch.bfloat16: dict(atol=1e-1, rtol=5e-2),
    }[dtype]


def assert_same_on_thread_counts(run, counts=(1, 3)) -> None:
    """Runs ``run()`` (a sequence of tensors) with ``torch.set_num_threads(n)`` for each ``n``
    in ``counts`` and asserts the results bit-identical: a CPU kernel's sums in a fixed order."""
    threads = torch.get_num_threads()
    results = []
    try:
        for n in counts:
            torch.set_num_threads(n)
            results.append(list(run()))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert len(other) == len(results[0])
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def fast_backends(op: str, device: str, dtype: torch.dtype = torch.float32) -> list[str]:
    """The non-reference backends of ``op`` that can run on (device, dtype) here."""
    supports = fastgen.backends.REGISTRY[op].supports
    return [name for name, s in supports.items() if name != "ref" and s.reason(device, dtype) is None]


def backend_params(op: str, dtypes=(torch.float32, torch.float64)) -> list:
    """pytest params ``(backend, device, dtype)`` of every fast backend of ``op`` that runs here."""
    return [
        pytest.param(b, dev, dt, id=f"{b}-{dev}-{str(dt)[6:]}")
        for dev in DEVICES
        for dt in dtypes
        for b in fast_backends(op, dev, dt)
    ]


def flow_loss_grads(out, inputs, seed: int = 1):
    """Gradients of ``inputs`` of a loss that uses both outputs ``(y, logdet)`` of a flow op,
    with random weights (fixed by ``seed``): what a negative log-likelihood gives the backward."""
    y, logdet = out
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
    gl = torch.randn(logdet.shape, generator=g, dtype=torch.float64).to(logdet)
    return torch.autograd.grad((y * gy).sum() + (logdet * gl).sum(), inputs)


def logdet_by_jacobian(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det J| per example of ``fn`` (a map of one example's tensor to one of the same
    size, applied to a batch of one), by ``torch.autograd.functional.jacobian`` and
    ``slogdet``: the oracle for a flow's log-determinant. ``x``: ``(B, ...)``; returns ``(B,)``."""
    out = []
    for example in x:
        jac = torch.autograd.functional.jacobian(lambda e: fn(e[None])[0], example)
        out.append(torch.linalg.slogdet(jac.reshape(example.numel(), example.numel()))[1])
    return torch.stack(out)


def randomize(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Moves every parameter of ``module`` away from its initialization (zero last layers,
    zero priors: identities that would let a flow's checks pass vacuously) by ``scale``
    standard normals; returns it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def run_python(code: str, cwd=None, **env: str) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter (import-time decisions need one)."""
    full_env = os.environ | env
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300
    )


def run_on_isa(isa: str, code: str) -> None:
    """Runs ``code`` (which may use ``torch`` and ``fastgen``) in a fresh interpreter whose CPU
    kernels are forced to the copy compiled for ``isa`` (``FASTGEN_CPU_ISA``); fails on an
    error, skips when this CPU does not have ``isa``."""
    header = "import torch, fastgen\nprint(fastgen._ext.cpu_isa())\n"
    out = run_python(header + code, FASTGEN_CPU_ISA=isa)
    assert out.returncode == 0, out.stderr
    if not out.stdout.startswith(isa):
        pytest.skip(f"this CPU has no {isa}: {out.stdout.strip()}")
