"""Benchmark harness: runs every ``benchmarks/bench_*.py`` case and prints one table.

Each ``bench_<topic>.py`` exposes ``cases(device, quick) -> list[Case]`` (except those that
measure something other than providers side by side and have their own command line:
``bench_sampling.py``, cached against naive sampling). A case builds
its inputs once (``Case.setup``) and returns one zero-argument callable per *provider*:

==================  ==============================================================
``eager``           the op's pure-PyTorch reference
``compile``         ``torch.compile`` of that reference (the peer a user would pick)
``fastgen-<name>``  fastgen on backend ``<name>`` (only backends native to the device)
``fastgen``         fastgen with its backends chosen automatically (whole models)
peers               other packages, added to the dict by the bench file when installed
==================  ==============================================================

The speedups are over each of the case's *baselines* (``Case.baselines``): ``eager`` and
``compile`` for an op; a case with no reference to compile (a whole model against other
packages' models) names the peers instead, and the table gets a ``x vs <peer>`` column.

Each provider is warmed up (``torch.compile`` compiles here, untimed), then timed
``runs`` times, the providers' runs interleaved; a run is enough back-to-back calls to
last ``min_run_s`` and gives the time per call; the table shows the median, the
throughput and the speedup over each baseline from the same run (baseline time / provider
time, > 1 is faster). Each run is appended to ``benchmarks/results/<device-slug>.json``.

Usage::

    python benchmarks/harness.py [--quick] [--filter SUBSTR] [--device cpu|cuda]
                                 [--runs N] [--no-save]
    python benchmarks/harness.py --report    # README tables from benchmarks/results/

The same cases run under pytest-benchmark (``pytest benchmarks/ --benchmark-only``)
through :func:`provider_pairs` and :func:`benchmark_with_pytest`. The command line pins
glibc's allocator thresholds (:data:`PINNED_MALLOC`, see there why); set the same
variables for pytest-benchmark timings that compare with it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import importlib
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import fastgen
from fastgen._atomic import write_atomic

__all__ = [
    "COMPILE",
    "EAGER",
    "Case",
    "Provider",
    "Result",
    "benchmark_with_pytest",
    "device_info",
    "discover_cases",
    "environment",
    "fastgen_backends",
    "format_report",
    "format_table",
    "main",
    "calibrate",
    "op_providers",
    "provider_pairs",
    "resolve_device",
    "run_case",
    "report",
    "run_record",
    "latest_reports",
    "save_run",
    "warm_up",
]

EAGER = "eager"
COMPILE = "compile"
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

# (runs, min_run_s): a run of at least 50 ms puts timer resolution and per-call jitter
# well below 1% of the measurement, and 15 interleaved runs give a median that a few
# slow spells of a shared host do not move; quick mode trades that for speed.
FULL = (15, 0.050)
QUICK = (3, 0.005)
# glibc hands large freed blocks back to the OS and page-faults them in again on the next
# allocation, unless an earlier, larger free has raised its thresholds: an eager reference
# that allocates big temporaries then runs up to 2-3x slower or faster depending on which
# cases ran before it in the process. Fixed thresholds keep freed memory in the heap, so
# every case is timed in the same (fast, steady-state) regime, whatever ran before it.
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 27), "MALLOC_TRIM_THRESHOLD_": str(1 << 28)}

Provider = Callable[[], object]


@dataclass(frozen=True)
class Case:
    """One benchmark case: an op or model at one shape, timed for several providers.

    Args:
        name: unique and descriptive, e.g. ``"masked_conv2d 7x7 A C_in=64 fwd+bwd"``.
        flops: useful floating-point operations per call (for GFLOP/s), or None.
        setup: builds the inputs once and returns provider name -> callable to time.
        baselines: the providers that every provider's speedup is over (those that
            ``setup`` returns; a peer that is not installed is simply absent).
    """

    name: str
    flops: float | None
    setup: Callable[[], dict[str, Provider]]
    baselines: tuple[str, ...] = (EAGER, COMPILE)


@dataclass
class Result:
    """The timings of one (case, provider); ``error`` is set instead when it failed.
    ``ratios``: baseline provider -> its median time / this one's (None if it failed)."""

    case: str
    provider: str
    median_ms: float | None = None
    times_ms: list[float] = field(default_factory=list)
    calls_per_run: int | None = None
    gflops: float | None = None
    ratios: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None


# ----------------------------------------------------------------------------- providers


def fastgen_backends(op: str, device: str, dtype: torch.dtype) -> list[str]:
    """The fastgen backends of ``op`` (other than ``ref``) that run natively on ``device``.

    Triton on CPU is skipped even when ``TRITON_INTERPRET=1`` makes it runnable: the
    interpreter is a correctness tool, its timings mean nothing.
    """
    supports = fastgen.backends.REGISTRY[op].supports
    return [
        name
        for name, support in supports.items()
        if name != "ref" and support.reason(device, dtype) is None and not (name == "triton" and device == "cpu")
    ]


def op_providers(
    op: str,
    reference: Callable[..., Any],
    fast: Callable[..., Any],
    timed: Callable[[Callable[..., Any]], Provider],
    *,
    device: str,
    dtype: torch.dtype,
) -> dict[str, Provider]:
    """The standard providers of a fastgen op: eager and compiled reference, then its backends.

    Args:
        op: the op's name in :data:`fastgen.backends.REGISTRY`.
        reference: ``<op>_ref``.
        fast: the public op, which takes the reference's arguments plus ``backend=``.
        timed: turns an implementation with the reference's signature into the
            zero-argument callable to time (e.g. forward, or forward and backward).
        device, dtype: of the case's inputs, to select the backends that can run it.

    A bench file adds peers to the returned dict under their package's name.
    """
    # dynamic=False: specialise on each shape, as a user with fixed shapes gets, rather
    # than switch to a (slower) dynamic-shape graph when a case meets a second shape.
    impls: dict[str, Callable[..., Any]] = {EAGER: reference, COMPILE: torch.compile(reference, dynamic=False)}
    for backend in fastgen_backends(op, device, dtype):
        impls[f"fastgen-{backend}"] = functools.partial(fast, backend=backend)
    return {name: timed(impl) for name, impl in impls.items()}


# -------------------------------------------------------------------------------- timing


def _synchronizer(device: str) -> Callable[[], None]:
    # CUDA calls return before the kernels finish: timing without a sync measures launches.
    return torch.cuda.synchronize if device == "cuda" else lambda: None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # A garbage collection inside a timed run is noise unrelated to the kernels (as timeit).
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _time_calls(fn: Provider, calls: int, sync: Callable[[], None]) -> float:
    with _gc_paused():
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return time.perf_counter() - start


def warm_up(fn: Provider, device: str) -> None:
    """Calls ``fn`` once, untimed: compiles, autotunes and fills caches."""
    _time_calls(fn, 1, _synchronizer(device))


def calibrate(fn: Provider, device: str, min_run_s: float) -> int:
    """Calls per run so that a run of ``fn`` lasts at least ``min_run_s``.

    Warms up first (:func:`warm_up`); the calibration runs are warm-up too.
    """
    sync = _synchronizer(device)
    warm_up(fn, device)
    calls = 1
    while (elapsed := _time_calls(fn, calls, sync)) < min_run_s:
        # Aim 20% over the target so that jitter rarely needs another calibration round.
        calls = math.ceil(1.2 * calls * min_run_s / max(elapsed, 1e-9))
    return calls


# ----------------------------------------------------------------------------- discovery


def resolve_device(device: str | None) -> str:
    """``device``, or ``"cuda"`` when a GPU is available and ``"cpu"`` otherwise."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device")
    return device


def discover_cases(device: str, quick: bool, name_filter: str | None = None) -> list[Case]:
    """The cases of every ``bench_*.py`` beside this file that has ``cases`` (see the module
    docstring) whose name contains ``name_filter``."""
    # Bench files `import harness`; that resolves from this directory whoever runs us.
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    cases: list[Case] = []
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        module = importlib.import_module(path.stem)
        if hasattr(module, "cases"):
            cases.extend(module.cases(device, quick))
    names = [case.name for case in cases]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"case names must be unique; repeated: {duplicates}")
    return [case for case in cases if name_filter is None or name_filter in case.name]


# ---------------------------------------------------------------------------------- runs


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_case(case: Case, device: str, runs: int, min_run_s: float, label: str) -> list[Result]:
    """Times every provider of ``case``; a provider that raises is recorded, not fatal.

    The providers' runs are interleaved (round r times each provider once, starting from
    a different one each round), so a slow spell of the machine hits all of them alike
    and the speedups, which compare medians, stay meaningful on a busy or throttling host.
    """
    # Each case compiles afresh: Dynamo's cache is per code object, so shapes of earlier
    # cases would count towards the recompile limit of the same reference function.
    torch._dynamo.reset()
    sync = _synchronizer(device)
    results: dict[str, Result] = {}
    calls: dict[str, int] = {}
    providers = case.setup()
    for provider, fn in providers.items():
        _progress(f"{label} {case.name} | {provider}: warming up")
        try:
            calls[provider] = calibrate(fn, device, min_run_s)
            results[provider] = Result(case.name, provider, calls_per_run=calls[provider])
        except Exception as error:  # one broken provider must not lose a run of many minutes
            traceback.print_exc()
            results[provider] = Result(case.name, provider, error=f"{type(error).__name__}: {error}")
    timed = list(calls)
    for r in range(runs):
        for provider in timed[r % len(timed) :] + timed[: r % len(timed)]:
            elapsed = _time_calls(providers[provider], calls[provider], sync)
            results[provider].times_ms.append(elapsed / calls[provider] * 1e3)
    for provider in timed:
        result = results[provider]
        result.median_ms = statistics.median(result.times_ms)
        if case.flops is not None:
            result.gflops = case.flops / result.median_ms / 1e6
        _progress(f"{label} {case.name} | {provider}: {result.median_ms:.3f} ms ({calls[provider]} calls/run)")
    by_provider = {r.provider: r.median_ms for r in results.values()}
    baselines = [b for b in case.baselines if b in results]
    for result in results.values():
        if result.median_ms is not None:
            result.ratios = {b: _ratio(by_provider[b], result.median_ms) for b in baselines}
    return list(results.values())


def _ratio(baseline_ms: float | None, ms: float) -> float | None:
    return baseline_ms / ms if baseline_ms is not None else None


def _ratios(result: dict[str, Any]) -> dict[str, float | None]:
    """A saved result's speedups; runs saved before cases named their baselines have
    ``ratio_vs_eager`` and ``ratio_vs_compile`` instead."""
    if "ratios" in result:
        return result["ratios"]
    return {EAGER: result["ratio_vs_eager"], COMPILE: result["ratio_vs_compile"]}


# --------------------------------------------------------------------------------- table

def _baselines(ratios: Sequence[dict[str, float | None]]) -> list[str]:
    """Every baseline that some result has a speedup over, in order of appearance."""
    return list(dict.fromkeys(b for r in ratios for b in r))


def _row(r: Result, baselines: Sequence[str]) -> tuple[str, ...]:
    if r.error is not None:
        return (r.case, r.provider, "error", "", *("" for _ in baselines))

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    ratios = (fmt(r.ratios.get(b), ".2f") for b in baselines)
    return (r.case, r.provider, fmt(r.median_ms, ".3f"), fmt(r.gflops, ".1f"), *ratios)


def format_table(results: Sequence[Result]) -> str:
    """The results as an aligned text table, one row per (case, provider), with a speedup
    column per baseline (``-`` where a case has no such baseline)."""
    baselines = _baselines([r.ratios for r in results])
    header = ("case", "provider", "median ms", "GFLOP/s", *(f"x vs {b}" for b in baselines))
    rows = [_row(r, baselines) for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        # Text left-aligned, numbers right-aligned.
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _is_fastgen(provider: str) -> bool:
    return provider == "fastgen" or provider.startswith("fastgen-")


def format_report(run: dict[str, Any]) -> str:
    """A saved run as markdown tables for the README, one per set of providers (the ops
    against eager and compile, the models against their peers): one row per case, the median
    ms of every provider, and each fastgen provider's speedup over each baseline."""
    by_case: dict[str, dict[str, dict[str, Any]]] = {}
    for r in run["results"]:
        by_case.setdefault(r["case"], {})[r["provider"]] = r
    groups: dict[tuple[str, ...], list[str]] = {}
    for case, results in by_case.items():
        groups.setdefault(tuple(results), []).append(case)
    tables = []
    for providers, cases in groups.items():
        fast = [p for p in providers if _is_fastgen(p)]
        baselines = _baselines([_ratios(by_case[c][p]) for c in cases for p in providers])
        header = ["case", *(f"{p} ms" for p in providers), *(f"{p} vs {b}" for p in fast for b in baselines)]
        lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
        for case in cases:
            results = by_case[case]
            cells = [case]
            for p in providers:
                ms = results[p].get("median_ms")
                cells.append("-" if ms is None else f"{ms:.2f}")
            for p in fast:
                for base in baselines:
                    ratio = _ratios(results[p]).get(base)
                    cells.append("-" if ratio is None else f"**{ratio:.2f}x**")
            lines.append("| " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    versions = run["versions"]
    caption = (
        f"{run['device']['description']}, {run['date'][:10]}, torch {versions['torch']}, "
        f"fastgen {versions['fastgen']} ({run['git_commit']}), CPU kernels {run['cpu_isa']}: "
        f"median of {len(run['results'][0]['times_ms'])} runs"
    )
    for rerun in run.get("reruns", []):
        caption += f"; the cases matching `{rerun['filter']}` from a run of {rerun['date'][:10]} ({rerun['git_commit']})"
    return caption + "\n\n" + "\n\n".join(tables)


def report() -> str:
    """The README's benchmark tables: the latest full (not quick, unfiltered) run per device,
    with the cases of any later full-length ``--filter`` run (measured again) taken from it."""
    return latest_reports(
        RESULTS_DIR,
        lambda run: not run["quick"] and run["filter"] is None,
        format_report,
        is_rerun=lambda run: not run["quick"] and run["filter"] is not None,
    )


# ------------------------------------------------------------------------------- results


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_info(device: str) -> dict[str, str]:
    """The device's slug (the results file's name) and a description for humans."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        return {"slug": f"cuda-{_slug(name)}", "description": f"{name} (sm_{major}{minor}, CUDA {torch.version.cuda})"}
    model = _cpu_model()
    threads = torch.get_num_threads()
    # Marketing noise would make the same CPU model file under several names.
    short = re.sub(r"\((r|tm)\)|@.*$|\bcpu\b|\bprocessor\b|\b\d+-core\b", " ", model, flags=re.IGNORECASE)
    return {"slug": f"cpu-{_slug(short)}-{threads}t", "description": f"{model}, {threads} threads"}


def _version(dist: str) -> str | None:
    # importlib.metadata, not import: importing triton on a CPU machine is slow and pointless.
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            # "-dirty" marks a run of code that differs from the commit
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def environment(device: str) -> dict[str, Any]:
    """Where and on what a run was made: date, device, versions, threads, commit."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(device),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": _version("triton"),
            "fastgen": fastgen.__version__,
        },
        "num_threads": torch.get_num_threads(),
        "cpu_isa": fastgen._ext.cpu_isa(),
        "malloc": {k: os.environ.get(k) for k in PINNED_MALLOC},
        "git_commit": _git_commit(),
    }


def run_record(device: str, quick: bool, name_filter: str | None, results: Sequence[Result]) -> dict[str, Any]:
    """One run as stored in the results file: environment and every (case, provider)."""
    return {
        **environment(device),
        "quick": quick,
        "filter": name_filter,
        "results": [asdict(r) for r in results],
    }


def save_run(record: dict[str, Any], directory: Path) -> Path:
    """Appends ``record`` to the JSON list in ``directory/<device-slug>.json`` and says so on
    stderr; a crash mid-write leaves the previous runs intact
    (:func:`fastgen._atomic.write_atomic`). Returns the path."""
    path = directory / f"{record['device']['slug']}.json"
    runs: list[dict[str, Any]] = []
    if path.exists():
        try:
            runs = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); not overwriting it") from error
        if not isinstance(runs, list):
            raise ValueError(f"{path} must hold a JSON list of runs; not overwriting it")
    runs.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda file: file.write((json.dumps(runs, indent=2) + "\n").encode()))
    _progress(f"appended to {path}")
    return path


def latest_reports(
    directory: Path,
    is_full: Callable[[dict[str, Any]], bool],
    format_run: Callable[[dict[str, Any]], str],
    is_rerun: Callable[[dict[str, Any]], bool] | None = None,
) -> str:
    """The README's tables from ``directory``: per device file, ``format_run`` of its latest
    run for which ``is_full`` holds (not a quick or filtered one). With ``is_rerun``, the
    later runs for which it holds (some cases measured again) replace those cases' results,
    and those that still supply a result are listed in the run's ``"reruns"`` (their date,
    commit and filter)."""
    sections = []
    for path in sorted(directory.glob("*.json")):
        runs = json.loads(path.read_text())
        full = [i for i, run in enumerate(runs) if is_full(run)]
        if not full:
            continue
        run = runs[full[-1]]
        later = [r for r in runs[full[-1] + 1 :] if is_rerun is not None and is_rerun(r)]
        if later:
            results = {(r["case"], r["provider"]): r for r in run["results"]}
            for rerun in later:
                cases = {r["case"] for r in rerun["results"]}
                results = {k: r for k, r in results.items() if k[0] not in cases}
                results.update({(r["case"], r["provider"]): r for r in rerun["results"]})
            order = list(dict.fromkeys(r["case"] for r in run["results"]))
            ordered = sorted(results.values(), key=lambda r: order.index(r["case"]) if r["case"] in order else len(order))
            # A rerun whose cases were all measured again later contributes nothing: not listed.
            kept = {id(r) for r in results.values()}
            reruns = [
                {"date": r["date"], "git_commit": r["git_commit"], "filter": r["filter"]}
                for r in later
                if any(id(result) in kept for result in r["results"])
            ]
            run = {**run, "results": ordered, "reruns": reruns}
        repo = RESULTS_DIR.parent.parent
        sections.append(f"`{path.relative_to(repo) if path.is_relative_to(repo) else path}`: " + format_run(run))
    return "\n\n".join(sections)


# -------------------------------------------------------------------------------- pytest

_pytest_current: tuple[Case, dict[str, Provider]] | None = None


def provider_pairs(cases: Sequence[Case]) -> list[tuple[Case, str]]:
    """Every (case, provider) pair, for ``metafunc.parametrize``.

    pytest needs the provider names at collection, so each case is set up once here and
    its inputs dropped; :func:`benchmark_with_pytest` sets it up again when it runs.
    """
    return [(case, provider) for case in cases for provider in case.setup()]


def benchmark_with_pytest(benchmark: Any, case: Case, provider: str, device: str) -> None:
    """Times ``provider`` of ``case`` with the pytest-benchmark fixture ``benchmark``."""
    global _pytest_current
    if _pytest_current is None or _pytest_current[0] is not case:
        # Tests run case by case: keep only the current case's inputs alive.
        _pytest_current = None
        torch._dynamo.reset()
        _pytest_current = (case, case.setup())
    fn = _pytest_current[1][provider]
    benchmark.group = case.name
    benchmark.extra_info["flops"] = case.flops
    warm_up(fn, device)  # compile outside pytest-benchmark's calibration and rounds
    sync = _synchronizer(device)

    def call() -> None:
        fn()
        sync()

    benchmark(call)


# ----------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (1 if any provider failed)."""
    parser = argparse.ArgumentParser(description="Run the benchmarks/bench_*.py cases and print one table.")
    quick_help = (
        f"fewer, shorter runs ({QUICK[0]} of >= {QUICK[1] * 1e3:g} ms instead of {FULL[0]} of >= {FULL[1] * 1e3:g} ms)"
    )
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--filter", metavar="SUBSTR", help="only cases whose name contains SUBSTR")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    parser.add_argument("--runs", type=int, help=f"timed runs per provider (default {FULL[0]}, quick {QUICK[0]})")
    parser.add_argument("--no-save", action="store_true", help="do not append the run to benchmarks/results/")
    parser.add_argument(
        "--report", action="store_true", help="print the README tables from benchmarks/results/ and exit"
    )
    args = parser.parse_args(argv)
    if args.report:
        print(report())
        return 0
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    runs, min_run_s = QUICK if args.quick else FULL
    if args.runs is not None:
        if args.runs < 1:
            parser.error("--runs must be >= 1")
        runs = args.runs

    cases = discover_cases(device, args.quick, args.filter)
    if not cases:
        parser.error(f"no case matches --filter {args.filter!r}")
    results: list[Result] = []
    for i, case in enumerate(cases, 1):
        results.extend(run_case(case, device, runs, min_run_s, f"[{i}/{len(cases)}]"))

    print(format_table(results))
    if not args.no_save:
        save_run(run_record(device, args.quick, args.filter, results), RESULTS_DIR)
    return 1 if any(r.error is not None for r in results) else 0


def pin_allocator() -> None:
    """Re-executes this command with :data:`PINNED_MALLOC` set (glibc reads it at start-up);
    a no-op off Linux or once set."""
    if sys.platform.startswith("linux") and any(k not in os.environ for k in PINNED_MALLOC):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **PINNED_MALLOC})


if __name__ == "__main__":
    pin_allocator()
    sys.exit(main())
