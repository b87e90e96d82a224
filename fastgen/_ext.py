"""Loads the compiled extension ``fastgen._C`` if it was built, and records why not.

``import fastgen`` never fails because of the extension: without it the ``cpp`` backend
is unavailable (``python -m fastgen.info`` says why) and ops fall back to their
references. The build writes ``_build_info.json`` beside the library; an extension built
against another torch is not loaded, since its ABI would not match.

Set ``FASTGEN_DISABLE_EXTENSION=1`` to run without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["BUILD_INFO", "C", "ERROR", "cpu_isa"]

_REBUILD = "rebuild with `pip install --no-build-isolation -e .`"


def _load() -> tuple[ModuleType | None, dict | None, str | None]:
    if os.environ.get("FASTGEN_DISABLE_EXTENSION") == "1":
        return None, None, "disabled by FASTGEN_DISABLE_EXTENSION=1"
    spec = importlib.util.find_spec("fastgen._C")
    if spec is None or spec.origin is None:
        return None, None, f"fastgen._C is not built; {_REBUILD}"
    info_path = Path(spec.origin).with_name("_build_info.json")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as e:
        return None, None, f"cannot read {info_path.name} ({e}); {_REBUILD}"
    if info.get("torch") != torch.__version__:
        return None, info, f"built against torch {info.get('torch')} but torch {torch.__version__} is running; {_REBUILD}"
    try:
        module = importlib.import_module("fastgen._C")
    except (ImportError, OSError) as e:
        return None, info, f"fastgen._C failed to load ({e}); {_REBUILD}"
    return module, info, None


C, BUILD_INFO, ERROR = _load()


def cpu_isa() -> str | None:
    """Instruction set of the CPU micro-kernels in use, or None without the extension."""
    return C.cpu_isa() if C is not None else None
