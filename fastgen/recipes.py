"""Recipes: each zoo model with the built-in data set it is trained on, its configuration
and its training budget, and the baseline it must beat.

:func:`run` trains one recipe and reports its test bits per dimension;
``benchmarks/train_zoo.py`` runs them all for the README's table and
``tests/test_recipes.py`` checks each one against its stated bound (on smaller budgets).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import data
from .data import DataSplit
from .models import DensityModel, build
from .train import fit

__all__ = ["RECIPES", "Recipe", "RecipeResult", "run", "trivial_baseline"]


@dataclass(frozen=True)
class Recipe:
    """One model on one built-in data set.

    Attributes:
        model: the zoo name (:func:`fastgen.models.build`) and ``config`` its arguments.
        data: builds the :class:`~fastgen.data.DataSplit`; images are flattened to vectors
            for models whose examples are vectors.
        counts: fit by counting (``model.fit_counts``) instead of by SGD.
        conditional: train and evaluate on the data set's class labels (``cond``).
        epochs, batch_size, lr: the :func:`~fastgen.train.fit` budget (SGD recipes).
        fit_options: further arguments of :func:`~fastgen.train.fit` or ``fit_counts``.
        bound: the test bits/dim the recipe must reach (at the full budget).
        requires: the optional packages the model needs (an extra of fastgen's), by module name.
    """

    model: str
    config: dict[str, Any]
    data: Callable[[], DataSplit]
    bound: float
    counts: bool = False
    conditional: bool = False
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    fit_options: dict[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecipeResult:
    """What :func:`run` reports: the model trained, the data set's name, example shape
    (before any flattening) and values per dimension, the number of class labels the model
    is conditioned on (None if it is not), the test bits/dim, the trivial baseline's
    (:func:`trivial_baseline`), the budget used (epochs, 0 for counting) and the training
    time in seconds."""

    model: DensityModel
    data_name: str
    event_shape: tuple[int, ...]
    categories: int | None
    num_classes: int | None
    test_bits_per_dim: float
    baseline_bits_per_dim: float
    epochs: int
    seconds: float


RECIPES: dict[str, Recipe] = {
    "histogram": Recipe("histogram", {"num_bins": 100}, lambda: data.mixture_1d(bins=100), bound=6.05, counts=True,
                        fit_options={"smoothing": 1.0}),
    "histogram-sgd": Recipe(
        "histogram", {"num_bins": 100}, lambda: data.mixture_1d(bins=100), bound=6.1, epochs=20, batch_size=256, lr=0.05
    ),
    "bayes_net": Recipe("bayes_net", {"parents": [[], [], [0, 1], [2], [2]], "cardinalities": [2] * 5},
                        lambda: data.alarm(50_000), bound=0.085, counts=True),
    "discretized_mixture_of_logistics": Recipe(
        "discretized_mixture_of_logistics", {"num_bins": 100, "components": 4},
        lambda: data.mixture_1d(bins=100), bound=6.1, epochs=20, batch_size=256, lr=0.05,
    ),
    "mixture_of_gaussians": Recipe(
        "mixture_of_gaussians", {"dim": 2, "components": 8}, lambda: data.gaussian_mixture(), bound=1.45,
        epochs=30, batch_size=256, lr=0.05,
    ),
    # The 1-D CDF flow on a three-Gaussian density (true entropy 2.235 bits).
    "cdf_flow_1d": Recipe(
        "cdf_flow_1d", {"components": 5}, lambda: data.gaussian_mixture_1d(), bound=2.30,
        epochs=10, batch_size=256, lr=0.05,
    ),
    # MAF and IAF on two moons end their budgets between 0.78 and 0.93 bits/dim depending on
    # the seed and on the rounding of their MADEs' kernels (6 seeds each, constant lr: the
    # last epoch's test value is noisy): their bounds sit above that spread.
    "maf": Recipe(
        "maf", {"dim": 2, "hidden": [64, 64], "transforms": 5}, lambda: data.two_moons(), bound=0.95,
        epochs=15, batch_size=256, lr=5e-3,
    ),
    # IAF trains through its sequential direction (dim MADE passes per layer).
    "iaf": Recipe(
        "iaf", {"dim": 2, "hidden": [64, 64], "transforms": 5}, lambda: data.two_moons(), bound=0.95,
        epochs=10, batch_size=256, lr=5e-3,
    ),
    "made": Recipe(
        "made", {"dim": 64, "hidden": [256, 256]}, lambda: data.digits(binarized=True), bound=0.45,
        epochs=30, batch_size=64, lr=2e-3,
    ),
    "rnn": Recipe(
        "rnn", {"dim": 64, "categories": 2, "hidden": 128}, lambda: data.digits(binarized=True), bound=0.45,
        epochs=30, batch_size=64, lr=5e-3,
    ),
    "pixel_transformer": Recipe(
        "pixel_transformer", {"shape": (1, 8, 8), "levels": 2, "d_model": 32, "heads": 4, "layers": 2},
        lambda: data.digits(binarized=True), bound=0.435, epochs=30, batch_size=64, lr=3e-3,
    ),
    "pixelcnn": Recipe(
        "pixelcnn", {"shape": (1, 8, 8), "levels": 2, "channels": 32, "layers": 3, "kernel_size": 3},
        lambda: data.digits(binarized=True), bound=0.425, epochs=15, batch_size=64, lr=5e-3,
    ),
    # Class-conditional on the digit labels: the paper's conditional Gated PixelCNN.
    "gated_pixelcnn": Recipe(
        "gated_pixelcnn",
        {"shape": (1, 8, 8), "levels": 2, "channels": 32, "layers": 3, "kernel_size": 3, "num_classes": 10},
        lambda: data.digits(binarized=True), bound=0.355, conditional=True, epochs=10, batch_size=64, lr=5e-3,
    ),
    # Globally conditioned on the kind of sound; one stack of 6 layers sees 64 samples back.
    "wavenet": Recipe(
        "wavenet",
        {"residual_channels": 32, "gate_channels": 32, "skip_channels": 64, "layers_per_stack": 6, "stacks": 1,
         "num_classes": 3, "length": 256},
        lambda: data.synthetic_audio(600, length=256), bound=4.3, conditional=True, epochs=8, batch_size=32, lr=5e-3,
    ),
    # Vector RealNVP on a 2-D toy density (continuous: the baseline is one full Gaussian).
    "realnvp_2d": Recipe(
        "realnvp", {"shape": (2,), "hidden": 64, "couplings": 8}, lambda: data.two_moons(), bound=0.89,
        epochs=8, batch_size=256, lr=5e-3,
    ),
    # Multiscale RealNVP on the 17-level digits, dequantized: bits/dim is the dequantized bound.
    "realnvp": Recipe(
        "realnvp", {"shape": (1, 8, 8), "hidden": 16, "blocks": 1, "couplings": 2, "scales": 2, "bins": 17},
        lambda: data.digits(), bound=2.31, epochs=8, batch_size=64, lr=3e-3,
    ),
    # Glow on the 17-level digits, dequantized, with RealNVP's logit preprocessing (alpha).
    "glow": Recipe(
        "glow", {"shape": (1, 8, 8), "levels": 2, "depth": 2, "hidden": 32, "bins": 17, "alpha": 0.05},
        lambda: data.digits(), bound=2.38, epochs=12, batch_size=64, lr=5e-3,
    ),
    # The 17 grey levels of the digits, dequantized by a learned q(u|x): the bound in bits per
    # pixel, 2.250-2.274 at seeds 0-3 (trivial baseline 2.434) in about 10-20 s.
    "flowpp": Recipe(
        "flowpp",
        {"shape": (1, 8, 8), "bins": 17, "scales": 2, "steps": 2, "hidden": (32, 32), "components": 4,
         "dequant_steps": 2},
        lambda: data.digits(), bound=2.33, epochs=4, batch_size=32, lr=5e-3,
    ),
    # Trained with Hutchinson's trace, evaluated with the exact one, at loose tolerances:
    # 0.867-0.965 bits/dim at seeds 0-3 (a full-covariance Gaussian: 1.372) in about 9-14 s.
    "ffjord": Recipe(
        "ffjord", {"dim": 2, "hidden": (64, 64), "rtol": 1e-3, "atol": 1e-3},
        lambda: data.two_moons(), bound=0.99, epochs=6, batch_size=256, lr=1e-2, requires=("torchdiffeq",),
    ),
}


def trivial_baseline(split: DataSplit) -> float:
    """Test bits/dim of the trivial model a recipe must beat: uniform over the values for
    one discrete dimension; independent dimensions, each its own histogram of the training
    set (add-one smoothed, so no test value has probability 0), for several; one
    full-covariance Gaussian fitted to the training set for continuous data."""
    if split.categories is None:
        # (N, D), also for one real value per example (N,)
        train, test = (t.double().reshape(len(t), -1) for t in (split.train, split.test))
        dim = train.shape[1]
        gaussian = torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T).reshape(dim, dim))
        return float(-gaussian.log_prob(test).mean() / dim / math.log(2))
    if split.train.dim() == 1:
        return math.log2(split.categories)
    train, test = split.train.reshape(len(split.train), -1), split.test.reshape(len(split.test), -1)
    counts = torch.zeros(train.shape[1], split.categories, dtype=torch.float64)
    counts.scatter_add_(1, train.T, torch.ones_like(train.T, dtype=torch.float64)).add_(1)
    log_probs = (counts / counts.sum(1, keepdim=True)).log()  # (D, K)
    return float(-log_probs.gather(1, test.T).mean() / math.log(2))


def run(name: str, *, epochs: int | None = None, progress: bool = False, seed: int = 0) -> RecipeResult:
    """Train recipe ``name`` (a key of :data:`RECIPES`) from a model initialized with
    ``seed``, for ``epochs`` (default: the recipe's budget), and evaluate it on the test set.

    Example:
        >>> result = run("histogram")
        >>> result.test_bits_per_dim < result.baseline_bits_per_dim
        True
    """
    if name not in RECIPES:
        raise ValueError(f"run: unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    epochs = recipe.epochs if epochs is None else epochs
    torch.manual_seed(seed)
    model = build(recipe.model, **recipe.config)
    split = recipe.data()
    train, test = split.train, split.test
    if len(model.event_shape) == 1 and train.dim() > 2:
        train, test = train.flatten(1), test.flatten(1)
    train_cond, test_cond = (split.train_labels, split.test_labels) if recipe.conditional else (None, None)
    start = time.perf_counter()
    if recipe.counts:
        model.fit_counts(train, **recipe.fit_options)
        epochs = 0
    else:
        fit(model, train if train_cond is None else (train, train_cond), epochs=epochs, batch_size=recipe.batch_size, lr=recipe.lr, progress=progress, seed=seed,
            **recipe.fit_options)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        bits = float(model.bits_per_dim(test, test_cond))
    baseline = trivial_baseline(split)
    num_classes = split.num_classes if recipe.conditional else None
    return RecipeResult(model, split.name, split.event_shape, split.categories, num_classes, bits, baseline, epochs, seconds)
