"""Trains the vector flows of ``bench_flows.py`` (MAF and RealNVP, as fastgen and as each
installed peer builds them) on the same data for the same budget and records each one's
test log-likelihood: the benchmark compares architectures that learn alike, not one
package's smaller model against another's.

Data: draws of :func:`bench_flows.gaussian_mixture`, 8 correlated Gaussians on 64
dimensions: :data:`TRAIN` training and :data:`TEST` test vectors (enough that no model
overfits, and the mixture's own test log-likelihood is the ceiling). Every model: Adam at ``--lr``,
batches of ``bench_flows.VECTOR_BATCH`` in the same shuffled order (one seeded generator
per model), ``--epochs`` epochs, loss ``-log_prob(x).mean()``; then the mean
log-likelihood in nats per example of the training and the test set (no autograd).
Nothing is timed (``bench_flows.py`` times them).

``python benchmarks/flows_equivalence.py`` appends the run to
``benchmarks/results/flows_equivalence/<device-slug>.json``; ``--no-save``, ``--model maf``,
``--report`` (the README table from the latest run of every model).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

import torch

from bench_flows import FLOW_BUILDERS, VECTOR_BATCH, Flow, gaussian_mixture, installed_peers, mixture_vectors
from harness import RESULTS_DIR, environment, latest_reports, save_run

__all__ = ["main", "mean_log_prob", "train"]

VECTOR_MODELS = ("maf", "realnvp")
TRAIN, TEST = 20_000, 5_000
EQUIVALENCE_DIR = RESULTS_DIR / "flows_equivalence"


def train(flow: Flow, data: torch.Tensor, epochs: int, lr: float, seed: int = 0) -> None:
    """``epochs`` passes of Adam over ``data`` in batches of ``VECTOR_BATCH`` (shuffled by a
    generator seeded with ``seed``)."""
    optimizer = torch.optim.Adam(flow.module.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    flow.module.train()
    for _ in range(epochs):
        for batch in torch.randperm(data.shape[0], generator=g).split(VECTOR_BATCH):
            optimizer.zero_grad(set_to_none=True)
            (-flow.log_prob(data[batch]).mean()).backward()
            optimizer.step()


@torch.no_grad()
def mean_log_prob(flow: Flow, data: torch.Tensor) -> float:
    """Mean log-likelihood of ``data`` in nats per example."""
    flow.module.eval()
    return float(torch.cat([flow.log_prob(batch) for batch in data.split(VECTOR_BATCH)]).mean())


def run(models: Sequence[str], epochs: int, lr: float) -> list[dict[str, Any]]:
    train_data, test_data = mixture_vectors(TRAIN, seed=1), mixture_vectors(TEST, seed=2)
    truth = gaussian_mixture()
    rows = [{
        "model": "the mixture itself",
        "package": "-",
        "parameters": 0,
        "train_log_prob": float(truth.log_prob(train_data.double()).mean()),
        "test_log_prob": float(truth.log_prob(test_data.double()).mean()),
    }]
    for model in models:
        for package in ["fastgen", *installed_peers(model)]:
            torch.manual_seed(0)
            flow = FLOW_BUILDERS[model](package)
            train(flow, train_data, epochs, lr)
            row = {
                "model": model,
                "package": package,
                "parameters": sum(p.numel() for p in flow.module.parameters()),
                "train_log_prob": mean_log_prob(flow, train_data),
                "test_log_prob": mean_log_prob(flow, test_data),
            }
            print(f"[{model} {package}] {row['parameters']} parameters: train {row['train_log_prob']:.2f}, "
                  f"test {row['test_log_prob']:.2f} nats/example", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def format_report(record: dict[str, Any]) -> str:
    """A run as a markdown table."""
    fit = record["fit"]
    lines = [
        f"{record['device']['description']}, {record['date'][:10]}: {fit['epochs']} epochs of Adam (lr {fit['lr']:g}, "
        f"batch {VECTOR_BATCH}) on {TRAIN} draws of a 64-dim Gaussian mixture; mean log-likelihood, nats/example",
        "",
        "| model | package | parameters | train | test |",
        "|---|---|---:|---:|---:|",
    ]
    for r in record["results"]:
        test = "nan" if math.isnan(r["test_log_prob"]) else f"{r['test_log_prob']:.2f}"
        lines.append(f"| {r['model']} | {r['package']} | {r['parameters']} | {r['train_log_prob']:.2f} | **{test}** |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the benchmarked vector flows of every package alike.")
    parser.add_argument("--model", action="append", choices=VECTOR_MODELS, help="only this model (repeatable)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--no-save", action="store_true", help="do not append the run to benchmarks/results/")
    parser.add_argument("--report", action="store_true", help="print the README table from the results and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(latest_reports(EQUIVALENCE_DIR, lambda run: run["models"] is None, format_report))
        return 0
    models = args.model or list(VECTOR_MODELS)
    record = {
        **environment("cpu"),
        "models": args.model,
        "fit": {"epochs": args.epochs, "lr": args.lr, "batch_size": VECTOR_BATCH},
        "results": run(models, args.epochs, args.lr),
    }
    print(format_report(record))
    if not args.no_save:
        save_run(record, EQUIVALENCE_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
