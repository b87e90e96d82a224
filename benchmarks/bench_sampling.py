"""Cached (incremental) against naive autoregressive sampling, same model and batch, in one run.

Each case builds a zoo model (random initialization, seed 0, float32, eval mode) and times:

- **cached**: ``model.sample(n, cache=True)``, the whole generation (median of ``--runs``);
- **naive**: the loop of ``model.sample(n, cache=False)`` recomputes the full ``logits`` for
  every generated dimension, so each of its ``D`` steps costs one full forward and one
  categorical draw whatever the step. The time of one such step (median of
  ``naive_steps`` timed steps) times ``D`` is its total; a full naive run (about 100 s
  for PixelCNN at batch 16, far longer for WaveNet) would measure the same thing.

The ratio is naive over cached. Rate: generated values (pixels or audio samples) per
second of cached sampling, over the whole batch.

``python benchmarks/bench_sampling.py`` (every case, a few minutes on 2 CPU cores),
``--case wavenet`` (the cases whose name contains it), ``--no-save``, ``--report`` (the
README table from the latest full run in ``benchmarks/results/sampling/``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fastgen.models import AutoregressiveModel, build
from fastgen.sampling import sample_categorical
from harness import RESULTS_DIR, environment, latest_reports, pin_allocator, save_run

SAMPLING_DIR = RESULTS_DIR / "sampling"


@dataclass(frozen=True)
class SamplingCase:
    """One model timed at several batch sizes.

    Args:
        name: unique and descriptive.
        model, config: the zoo name and its constructor arguments.
        batches: batch sizes to time.
        target: ``(batch, ratio)``: the issue's target, naive/cached at least ``ratio`` at
            ``batch`` (None: report only).
        naive_steps: naive steps timed per batch size.
    """

    name: str
    model: str
    config: dict[str, Any]
    batches: tuple[int, ...]
    target: tuple[int, float] | None = None
    naive_steps: int = 5


CASES = (
    SamplingCase(
        "PixelCNN 28x28 binary, 7x7 A + 5 x 7x7 B + 2 x 1x1, 64 channels",
        "pixelcnn",
        dict(shape=(1, 28, 28), levels=2, channels=64, layers=5, kernel_size=7),
        batches=(1, 16, 64),
        target=(16, 100.0),
    ),
    SamplingCase(
        "GatedPixelCNN 28x28 binary, 64 channels, 6 layers",
        "gated_pixelcnn",
        dict(shape=(1, 28, 28), levels=2, channels=64, layers=6, kernel_size=7),
        batches=(1, 16),
    ),
    SamplingCase(
        "WaveNet 256 levels, residual 64, gate 2x64, skip 256, 2 x 10 layers, T=2048",
        "wavenet",
        dict(levels=256, residual_channels=64, gate_channels=64, skip_channels=256, layers_per_stack=10, stacks=2,
             length=2048),
        batches=(1, 16),
        target=(1, 100.0),
        naive_steps=3,
    ),
    SamplingCase(
        "PixelTransformer 28x28 binary, d_model 128, 4 heads, 4 layers",
        "pixel_transformer",
        dict(shape=(1, 28, 28), levels=2, d_model=128, heads=4, layers=4),
        batches=(1, 16),
    ),
)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def time_cached(model: AutoregressiveModel, batch: int, runs: int) -> float:
    """Median seconds of one cached generation of ``batch`` examples."""
    times = []
    for run in range(runs):
        generator = torch.Generator().manual_seed(run)
        start = time.perf_counter()
        model.sample(batch, generator=generator, cache=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def time_naive_step(model: AutoregressiveModel, batch: int, steps: int) -> float:
    """Median seconds of one step of the naive loop: the full forward and the draw."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(model.categories, (batch, *model.event_shape), generator=generator)
    u = torch.rand(batch, dtype=torch.float32, generator=generator)
    model.logits(x)  # warm-up (first-call allocations, lazily packed weights)
    times = []
    for d in torch.linspace(0, model.num_dims - 1, steps).long().tolist():
        start = time.perf_counter()
        sample_categorical(model.logits(x)[:, d], u)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_case(case: SamplingCase, runs: int) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = build(case.model, **case.config).eval()
    rows = []
    for batch in case.batches:
        _progress(f"[{case.name}] batch {batch}: cached ...")
        model.sample(batch, generator=torch.Generator().manual_seed(0), cache=True)  # warm-up
        cached_s = time_cached(model, batch, runs)
        _progress(f"[{case.name}] batch {batch}: cached {cached_s:.3f} s; naive steps ...")
        naive_step_s = time_naive_step(model, batch, case.naive_steps)
        naive_s = naive_step_s * model.num_dims
        row = {
            "case": case.name,
            "model": case.model,
            "config": case.config,
            "batch": batch,
            "dims": model.num_dims,
            "cached_s": cached_s,
            "naive_step_ms": naive_step_s * 1e3,
            "naive_s": naive_s,
            "ratio": naive_s / cached_s,
            "values_per_s": batch * model.num_dims / cached_s,
            "target_ratio": case.target[1] if case.target and case.target[0] == batch else None,
        }
        _progress(f"[{case.name}] batch {batch}: naive {naive_s:.1f} s (est.), {row['ratio']:.0f}x")
        rows.append(row)
    return rows


def format_report(run: dict[str, Any]) -> str:
    """A saved run as the README's markdown table."""
    lines = [
        "| model | batch | cached (s) | naive (s, est.) | naive / cached | target | values/s (cached) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in run["results"]:
        target = "-" if r["target_ratio"] is None else f">= {r['target_ratio']:.0f}x"
        lines.append(f"| {r['case']} | {r['batch']} | {r['cached_s']:.2f} | {r['naive_s']:.1f} | **{r['ratio']:.0f}x** "
                     f"| {target} | {r['values_per_s']:,.0f} |")
    caption = (f"{run['device']['description']}, {run['date'][:10]}, torch {run['versions']['torch']}, "
               f"fastgen {run['versions']['fastgen']} ({run['git_commit']}): `python benchmarks/bench_sampling.py`")
    return caption + "\n\n" + "\n".join(lines)


def report() -> str:
    """The latest full run of each device."""
    return latest_reports(SAMPLING_DIR, lambda run: run["filter"] is None, format_report)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time cached against naive autoregressive sampling.")
    parser.add_argument("--case", help="only the cases whose name contains this (case-insensitive)")
    parser.add_argument("--runs", type=int, default=3, help="cached generations timed per batch size (median)")
    parser.add_argument("--no-save", action="store_true", help="do not record the run")
    parser.add_argument("--report", action="store_true", help="print the README table from the results and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(report())
        return 0
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    cases = [c for c in CASES if args.case is None or args.case.lower() in c.name.lower()]
    if not cases:
        parser.error(f"no case matches {args.case!r}; cases: {', '.join(c.name for c in CASES)}")
    rows = [row for case in cases for row in run_case(case, args.runs)]
    record = {**environment("cpu"), "filter": args.case, "results": rows}
    print(format_report(record))
    missed = [r for r in rows if r["target_ratio"] is not None and r["ratio"] < r["target_ratio"]]
    for r in missed:
        _progress(f"target missed: {r['case']} batch {r['batch']}: {r['ratio']:.0f}x < {r['target_ratio']:.0f}x")
    if not args.no_save:
        save_run(record, SAMPLING_DIR)
    return 0


if __name__ == "__main__":
    pin_allocator()
    sys.exit(main())
