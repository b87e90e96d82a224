"""The benchmark harness finds every case the README's benchmark command runs (nothing is
timed here): each ``benchmarks/bench_*.py`` either gives harness cases or runs on its own."""

from __future__ import annotations

import importlib
import json
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


def _run(date, name_filter, cases, ms):
    """A saved harness run: ``cases`` maps a case to (its providers, its baseline); every
    provider takes ``ms``, and its speedup over the baseline is recorded as 2 (1 for itself)."""
    results = [
        {"case": case, "provider": p, "median_ms": ms, "times_ms": [ms], "ratios": {baseline: 1.0 if p == baseline else 2.0}}
        for case, (providers, baseline) in cases.items()
        for p in providers
    ]
    return {"device": {"description": "CPU", "slug": "cpu"}, "date": date, "git_commit": "abc", "cpu_isa": "avx2",
            "versions": {"torch": "t", "fastgen": "f"}, "quick": False, "filter": name_filter, "results": results}


def test_report_takes_reruns_of_some_cases_and_groups_tables_by_providers(harness, tmp_path):
    ops = {"op_a fwd": (("eager", "fastgen-cpp"), "eager"), "op_b fwd": (("eager", "fastgen-cpp"), "eager")}
    models = {"flows/m train": (("fastgen", "peer"), "peer")}
    runs = [
        _run("2026-01-01", None, {**ops, **models}, 10.0),
        _run("2026-01-02", "op_", {"op_b fwd": ops["op_b fwd"]}, 3.0),  # superseded by the next: not listed
        _run("2026-01-03", "op_b", {"op_b fwd": ops["op_b fwd"]}, 4.0),
    ]
    (tmp_path / "cpu.json").write_text(json.dumps(runs))
    harness.RESULTS_DIR, saved = tmp_path, harness.RESULTS_DIR
    try:
        text = harness.report()
    finally:
        harness.RESULTS_DIR = saved
    assert "the cases matching `op_b` from a run of 2026-01-03" in text and "`op_`" not in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| op_") or line.startswith("| flows")}
    assert "| 10.00 | 10.00 |" in rows["op_a fwd"] and "| 4.00 | 4.00 |" in rows["op_b fwd"]
    assert rows["flows/m train"] == "| flows/m train | 10.00 | 10.00 | **2.00x** |"  # its own table, vs its peer
    assert text.count("| case |") == 2
