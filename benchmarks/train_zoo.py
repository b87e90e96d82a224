"""Trains every zoo recipe (:data:`fastgen.recipes.RECIPES`: a model, its built-in data set
and its budget) and records each one's test bits/dim, the trivial baseline's and the
training time in ``benchmarks/results/zoo/<device-slug>.json``, with samples of the image
and audio models as PNGs (image grids, waveform plots) and the learned densities of the 2-D
models (``<recipe>_density.png``) in ``benchmarks/results/zoo/samples/``.

``python benchmarks/train_zoo.py`` (all recipes, about a minute on 2 CPU cores),
``--recipe made`` (one), ``--no-save``, ``--report`` (the README table from the latest
full run).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

import torch

from fastgen import recipes
from fastgen.data import mu_law_decode, save_image_grid, save_waveforms
from harness import RESULTS_DIR, environment, latest_reports, save_run

ZOO_DIR = RESULTS_DIR / "zoo"
SAMPLES = 64  # images per sample grid
GRID_ROW = 8  # images per row of the sample grids
AUDIO_SAMPLES = 8  # waveforms per plot
DENSITY_PIXELS = 128  # grid points per side of the 2-D density plots
DENSITY_DRAWS = 2000  # samples that set a density plot's box


def save_samples_png(name: str, result: recipes.RecipeResult) -> str:
    """Samples of a trained image or audio model as ``samples/<name>.png``: a grid of images,
    or waveform plots; conditional models get one class per row (image grid) or per
    waveform, in turn. Returns the path relative to the repository."""
    audio = len(result.event_shape) == 1
    n = AUDIO_SAMPLES if audio else SAMPLES
    per_class = 1 if audio else GRID_ROW
    cond = None if result.num_classes is None else torch.arange(n) // per_class % result.num_classes
    with torch.no_grad():
        samples = result.model.sample(n, cond, generator=torch.Generator().manual_seed(0))
    path = ZOO_DIR / "samples" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if audio:
        save_waveforms(mu_law_decode(samples, result.categories), path)
    else:
        save_image_grid(samples.view(n, *result.event_shape), path, nrow=GRID_ROW, levels=result.categories, scale=4)
    return str(path.relative_to(RESULTS_DIR.parent.parent))


def save_density_png(name: str, result: recipes.RecipeResult, size: int = DENSITY_PIXELS) -> str:
    """The learned density of a 2-D model as ``samples/<name>.png``: ``p(x)`` on a
    ``size x size`` grid (first coordinate across, second up) over the box holding 99% of
    :data:`DENSITY_DRAWS` of the model's samples (padded by a tenth), black 0 to white at the
    grid's maximum. Returns the path relative to the repository."""
    with torch.no_grad():
        draws = result.model.sample(DENSITY_DRAWS, generator=torch.Generator().manual_seed(0)).double()
        low, high = torch.quantile(draws, 0.005, dim=0), torch.quantile(draws, 0.995, dim=0)
        pad = (high - low) / 10
        axes = [torch.linspace(float(a), float(b), size, dtype=torch.float64) for a, b in zip(low - pad, high + pad)]
        x0, x1 = torch.meshgrid(axes[0], axes[1].flip(0), indexing="xy")  # rows from the top: x1 decreasing
        grid = torch.stack([x0.reshape(-1), x1.reshape(-1)], dim=1)
        dtype = next(result.model.parameters()).dtype
        density = torch.cat([result.model.log_prob(chunk.to(dtype)) for chunk in grid.split(4096)]).double().exp()
    image = (density / density.max()).nan_to_num(0.0).clamp(0, 1).view(1, 1, size, size)
    path = ZOO_DIR / "samples" / f"{name}_density.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(image, path, nrow=1, scale=2)
    return str(path.relative_to(RESULTS_DIR.parent.parent))


def train_all(names: Sequence[str], save_samples: bool) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        recipe = recipes.RECIPES[name]
        print(f"[{name}] training {recipe.model} ...", file=sys.stderr, flush=True)
        result = recipes.run(name)
        row = {
            "recipe": name,
            "model": recipe.model,
            "config": recipe.config,
            "data": result.data_name,
            "fit": "counts" if recipe.counts else {"epochs": result.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr},
            "test_bits_per_dim": result.test_bits_per_dim,
            "baseline_bits_per_dim": result.baseline_bits_per_dim,
            "bound": recipe.bound,
            "seconds": result.seconds,
            # continuous data: the negative log-likelihood per example, the figure 2-D toy densities are quoted in
            "test_nats": None if result.categories is not None else result.test_bits_per_dim * math.prod(result.event_shape) * math.log(2),
        }
        print(f"[{name}] test {result.test_bits_per_dim:.4f} bits/dim (baseline {result.baseline_bits_per_dim:.4f}) "
              f"in {result.seconds:.1f} s", file=sys.stderr, flush=True)
        if save_samples and (len(result.event_shape) == 3 or result.data_name == "synthetic_audio"):
            row["samples"] = save_samples_png(name, result)
        elif save_samples and result.event_shape == (2,) and result.categories is None:
            row["samples"] = save_density_png(name, result)
        rows.append(row)
    return rows


def format_report(run: dict[str, Any]) -> str:
    """A saved run as the README's markdown table (continuous data also in nats per
    example, ``-`` for discrete data)."""
    lines = [
        "| recipe | model | data | training | test bits/dim | trivial baseline | test NLL (nats/example) | train time (s) |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in run["results"]:
        fit = r["fit"] if r["fit"] == "counts" else f"{r['fit']['epochs']} epochs, batch {r['fit']['batch_size']}, lr {r['fit']['lr']:g}"
        nats = "-" if r.get("test_nats") is None else f"{r['test_nats']:.3f}"
        lines.append(f"| {r['recipe']} | `{r['model']}` | {r['data']} | {fit} | **{r['test_bits_per_dim']:.4f}** "
                     f"| {r['baseline_bits_per_dim']:.4f} | {nats} | {r['seconds']:.1f} |")
    caption = (f"{run['device']['description']}, {run['date'][:10]}, torch {run['versions']['torch']}, "
               f"fastgen {run['versions']['fastgen']} ({run['git_commit']}): `python benchmarks/train_zoo.py`")
    return caption + "\n\n" + "\n".join(lines)


def report() -> str:
    """The latest full run of each device."""
    return latest_reports(ZOO_DIR, lambda run: run["recipes"] is None, format_report)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train every zoo recipe and record its test bits/dim.")
    parser.add_argument("--recipe", action="append", choices=list(recipes.RECIPES), help="only this recipe (repeatable)")
    parser.add_argument("--no-save", action="store_true", help="do not record the run or write sample PNGs")
    parser.add_argument("--report", action="store_true", help="print the README table from the results and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(report())
        return 0
    rows = train_all(args.recipe or list(recipes.RECIPES), save_samples=not args.no_save)
    record = {**environment("cpu"), "recipes": args.recipe, "results": rows}
    print(format_report(record))
    if not args.no_save:
        save_run(record, ZOO_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
