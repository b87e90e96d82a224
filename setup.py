"""Builds fastgen and its compiled extension fastgen._C.

The C++ CPU kernels are always built (OpenMP, -O3). CUDA sources (csrc/cuda/*.cu) are
added only when torch is a CUDA build and CUDA_HOME points at a toolkit; otherwise they
are skipped with a note, never an error. Build with the torch you will run:

    pip install --no-build-isolation -e .

The build writes fastgen/_build_info.json next to the extension; fastgen/_ext.py reads
it at import and refuses an extension built against another torch.
"""

import datetime
import glob
import json
import os
import platform
import subprocess
import sys

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast", "-Wall", "-Wno-unknown-pragmas"]
LINK_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo"]


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _cuda_decision(cuda_sources):
    """(build CUDA?, why) -- never raises: a machine without nvcc still gets the CPU build."""
    if not cuda_sources:
        return False, "no CUDA sources"
    if os.environ.get("FASTGEN_NO_CUDA") == "1":
        return False, "FASTGEN_NO_CUDA=1"
    if torch.version.cuda is None:
        return False, "torch is a CPU build"
    if CUDA_HOME is None:
        return False, "CUDA_HOME not found"
    return True, f"CUDA {torch.version.cuda} at {CUDA_HOME}"


def _compiler_version():
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
        return out.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return f"{cxx} (version unknown)"


CPP_SOURCES = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
CUDA_SOURCES = _sources("csrc/cuda/*.cu")
WITH_CUDA, CUDA_REASON = _cuda_decision(CUDA_SOURCES)
if CUDA_SOURCES and not WITH_CUDA:
    print(f"fastgen: building without CUDA kernels ({CUDA_REASON})", file=sys.stderr)

if WITH_CUDA:
    extension = CUDAExtension(
        "fastgen._C",
        CPP_SOURCES + CUDA_SOURCES,
        extra_compile_args={"cxx": CXX_FLAGS + ["-DFASTGEN_WITH_CUDA"], "nvcc": NVCC_FLAGS},
        extra_link_args=LINK_FLAGS,
    )
else:
    extension = CppExtension(
        "fastgen._C", CPP_SOURCES, extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=LINK_FLAGS
    )


class BuildExtWithInfo(BuildExtension):
    """BuildExtension that also writes _build_info.json beside the built library."""

    def run(self):
        super().run()
        info = {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "compiler": _compiler_version(),
            "cxx_flags": CXX_FLAGS,
            "cuda": WITH_CUDA,
            "cuda_reason": CUDA_REASON,
            "nvcc_flags": NVCC_FLAGS if WITH_CUDA else [],
            "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        target = os.path.dirname(self.get_ext_fullpath("fastgen._C"))
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, "_build_info.json"), "w") as f:
            json.dump(info, f, indent=2)


setup(
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtWithInfo.with_options(use_ninja=True)},
    package_data={"fastgen": ["_build_info.json"]},
)
