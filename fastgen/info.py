"""``python -m fastgen.info``: versions, build information, and every op x backend.

Prints, for each op and backend, "ok" with the devices and dtypes it runs, or the reason
it is unavailable on this machine. Paste its output into bug reports.
"""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from . import __version__, _ext, backends  # importing fastgen registers every op's backends

__all__ = ["report"]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> str:
    """The text that ``python -m fastgen.info`` prints."""
    cuda = torch.version.cuda or "none (CPU build)"
    devices = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    lines = [
        f"fastgen {__version__}",
        f"python {platform.python_version()} on {platform.platform()}",
        f"torch {torch.__version__} (CUDA {cuda}; {devices}); {torch.get_num_threads()} CPU threads",
        f"triton {_version('triton')} (interpreter {'on' if backends.TRITON_INTERPRET else 'off'})",
    ]
    if _ext.C is None:
        lines.append(f"extension fastgen._C: not loaded: {_ext.ERROR}")
    else:
        info = _ext.BUILD_INFO or {}
        lines.append(f"extension fastgen._C: loaded; CPU micro-kernels: {_ext.cpu_isa()}")
        lines.append(f"  built {info.get('built')} against torch {info.get('torch')} with {info.get('compiler')}")
        lines.append(f"  flags {' '.join(info.get('cxx_flags', []))}; CUDA kernels: {info.get('cuda_reason')}")
    request, source = backends.current()
    lines.append(f"backend request: {request} ({source})")
    lines.append("")
    width = max(len(op) for op in backends.REGISTRY)
    lines.append(f"{'op':<{width}}  {'backend':<7}  status")
    for op, entry in backends.REGISTRY.items():
        for name in backends.BACKENDS:
            support = entry.supports.get(name)
            status = "not implemented" if support is None else support.describe()
            lines.append(f"{op:<{width}}  {name:<7}  {status}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
