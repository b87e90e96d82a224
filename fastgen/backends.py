"""Backend registry and per-call backend selection.

Every op has up to four implementations, its *backends*:

============  ================================================================
``ref``       pure PyTorch: the specification, test oracle and fallback
``cpp``       C++ kernels of ``fastgen._C`` (CPU)
``triton``    Triton kernels (CUDA; CPU tensors only under ``TRITON_INTERPRET=1``)
``cuda``      CUDA C++ kernels of ``fastgen._C`` (where Triton is the wrong tool)
============  ================================================================

Which one runs is decided per call, first match wins: the op's ``backend=`` argument,
the innermost :func:`use_backend` context, the ``FASTGEN_BACKEND`` environment variable
(read at import), else automatically by device: CUDA tensors try ``triton``, ``cuda``,
``ref``; CPU tensors try ``cpp``, ``ref``. An automatic choice silently skips what
cannot run the call; an explicit choice that cannot run raises
:class:`BackendUnavailableError` listing every backend's reason.

What each backend can run is decided once, at import, never inside traced code.

Example::

    with fastgen.use_backend("ref"):
        y = fastgen.ops.masked_conv2d(x, w, mask_type="A")
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from . import _ext

__all__ = [
    "AUTO",
    "BACKENDS",
    "BackendUnavailableError",
    "OpBackends",
    "REGISTRY",
    "Support",
    "cpp_support",
    "current",
    "ref_support",
    "triton_support",
    "use_backend",
]

BACKENDS = ("ref", "cpp", "triton", "cuda")
AUTO = "auto"
_AUTO_ORDER = {"cuda": ("triton", "cuda", "ref"), "cpu": ("cpp", "ref")}
FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_TRITON_MISSING = None if importlib.util.find_spec("triton") else "triton is not installed (pip install triton)"
_ENV_BACKEND = os.environ.get("FASTGEN_BACKEND") or None
_stack: list[str] = []


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this call; the message lists why, per backend."""


def _dtype_names(dtypes: tuple[torch.dtype, ...]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


@dataclass(frozen=True)
class Support:
    """What one backend of one op can run.

    Args:
        devices: device type (``"cpu"``, ``"cuda"``, or ``"*"`` for any) -> the dtypes it
            supports there, or a string saying why it cannot run on that device.
        unavailable: why the backend cannot run at all on this machine, else None.
    """

    devices: Mapping[str, tuple[torch.dtype, ...] | str]
    unavailable: str | None = None

    def reason(self, device_type: str, dtype: torch.dtype) -> str | None:
        """Why this backend cannot run on (device_type, dtype), or None if it can."""
        if self.unavailable is not None:
            return self.unavailable
        dtypes = self.devices.get(device_type, self.devices.get("*"))
        if dtypes is None:
            return f"does not run on {device_type} tensors"
        if isinstance(dtypes, str):
            return dtypes
        if dtype not in dtypes:
            return f"does not support {_dtype_names((dtype,))} on {device_type} (supports {_dtype_names(dtypes)})"
        return None

    def describe(self) -> str:
        """One line for ``fastgen.info``: "ok: ..." or "unavailable: ..."."""
        if self.unavailable is not None:
            return f"unavailable: {self.unavailable}"
        parts = []
        for device, dtypes in self.devices.items():
            where = "any device" if device == "*" else device
            parts.append(f"{where}: {dtypes}" if isinstance(dtypes, str) else f"{where} ({_dtype_names(dtypes)})")
        return "ok: " + "; ".join(parts)


def ref_support(dtypes: tuple[torch.dtype, ...] = FLOATING) -> Support:
    return Support({"*": dtypes})


def cpp_support(op: str, cpu_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)) -> Support:
    """The C++ CPU kernels of ``fastgen._C``; unavailable without the extension or the op."""
    if _ext.ERROR is not None:
        return Support({}, unavailable=_ext.ERROR)
    if not hasattr(torch.ops.fastgen, op):
        return Support({}, unavailable=f"fastgen._C has no op fastgen::{op}; rebuild the extension")
    return Support({"cpu": cpu_dtypes})


def triton_support(
    cuda_dtypes: tuple[torch.dtype, ...] = FLOATING,
    cpu_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64),
) -> Support:
    """Triton kernels: compiled for CUDA devices, interpreted for CPU tensors."""
    if _TRITON_MISSING is not None:
        return Support({}, unavailable=_TRITON_MISSING)
    cpu = cpu_dtypes if TRITON_INTERPRET else "needs the Triton interpreter (TRITON_INTERPRET=1 before import)"
    return Support({"cuda": cuda_dtypes, "cpu": cpu})


REGISTRY: dict[str, OpBackends] = {}


def _check_name(name: object, what: str) -> str:
    if name != AUTO and name not in BACKENDS:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, (AUTO,) + BACKENDS))}, got {name!r}")
    return name  # type: ignore[return-value]


def current() -> tuple[str, str]:
    """The backend request in force outside any ``backend=`` argument, and where it comes from."""
    if _stack:
        return _stack[-1], "use_backend"
    if _ENV_BACKEND is not None:
        return _ENV_BACKEND, "FASTGEN_BACKEND"
    return AUTO, "default"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every fastgen op inside the block on backend ``name`` (or ``"auto"``).

    An op's own ``backend=`` argument still wins. Nested contexts: the innermost wins.
    The setting is process-wide, like ``torch.backends`` flags, not per thread.
    """
    _stack.append(_check_name(name, "use_backend: name"))
    try:
        yield
    finally:
        _stack.pop()


class OpBackends:
    """The backends one op implements and what each can run; ops create one at import.

    Args:
        op: the op's name (as in ``fastgen.ops``).
        supports: backend name -> :class:`Support`. Must include ``"ref"``.
    """

    def __init__(self, op: str, supports: Mapping[str, Support]):
        assert "ref" in supports, "every op needs a reference backend"
        self.op = op
        self.supports = dict(supports)
        REGISTRY[op] = self

    def select(self, backend: str | None, x: torch.Tensor, *, small: bool = False) -> str:
        """The backend to run this call on: ``backend`` (the op's argument) or the current request.

        ``small``: the op judged this call (from its shapes) too small for its fast paths to
        pay for their fixed costs; an automatic choice then runs the reference, an explicit
        request is kept.
        """
        source = "backend"
        if backend is None:
            backend, source = current()
        _check_name(backend, source)
        device, dtype = x.device.type, x.dtype
        if backend == AUTO and small:
            return "ref"
        if backend == AUTO:
            for name in _AUTO_ORDER.get(device, ("ref",)):
                support = self.supports.get(name)
                if support is not None and support.reason(device, dtype) is None:
                    return name
            raise BackendUnavailableError(self._explain(AUTO, source, device, dtype))
        support = self.supports.get(backend)
        if support is None or support.reason(device, dtype) is not None:
            raise BackendUnavailableError(self._explain(backend, source, device, dtype))
        return backend

    def _explain(self, backend: str, source: str, device: str, dtype: torch.dtype) -> str:
        lines = [f"{self.op}: {source}={backend!r} cannot run on {device} {_dtype_names((dtype,))} tensors:"]
        for name in BACKENDS:
            support = self.supports.get(name)
            why = "not implemented for this op" if support is None else support.reason(device, dtype) or "ok"
            lines.append(f"  {name}: {why}")
        return "\n".join(lines)
