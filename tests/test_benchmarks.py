"""The benchmark harness finds every case the README's benchmark command runs (nothing is
timed here): each ``benchmarks/bench_*.py`` either gives harness cases or runs on its own."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def harness():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        yield importlib.import_module("harness")
    finally:
        sys.path.remove(str(BENCH_DIR))


def test_every_bench_file_gives_cases_or_has_its_own_command(harness):
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        module = importlib.import_module(path.stem)
        assert hasattr(module, "cases") or hasattr(module, "main"), f"{path.name}: neither cases() nor main()"


def test_discovery_finds_the_cases_of_every_op_file(harness):
    cases = harness.discover_cases("cpu", quick=True)
    names = [case.name for case in cases]
    assert len(names) == len(set(names))
    for op in ("masked_conv2d", "causal_conv1d", "gated_residual_block", "gated_pixelcnn_layer", "affine_coupling",
               "masked_linear"):
        assert any(name.startswith(op) for name in names), f"no case of {op}"
    only = harness.discover_cases("cpu", quick=True, name_filter="gated_pixelcnn_layer")
    assert only and all("gated_pixelcnn_layer" in case.name for case in only)
