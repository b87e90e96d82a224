"""What every built-in data set shares: the seeded generator, the argument checks of the
common arguments (``n``, ``test_fraction``, ``seed``) and the fixed train/test split."""

from __future__ import annotations

import torch

from ..ops._checks import check_int
from .base import DataSplit

__all__ = ["make_split", "seeded_generator"]


def seeded_generator(op: str, seed: object) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (an int >= 0): every set is drawn from one."""
    return torch.Generator().manual_seed(check_int(op, "seed", seed, minimum=0))


def make_split(
    op: str,
    name: str,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    test_fraction: float,
    generator: torch.Generator,
    categories: int | None,
    num_classes: int | None = None,
) -> DataSplit:
    """Shuffles the ``N`` examples ``x (N, ...)`` (and ``labels (N,)``) with ``generator``
    and keeps the last ``round(N * test_fraction)`` for the test set."""
    num_test = round(len(x) * test_fraction)
    if not 0 < num_test < len(x):
        raise ValueError(
            f"{op}: test_fraction={test_fraction} of {len(x)} examples leaves an empty train or test set"
        )
    order = torch.randperm(len(x), generator=generator)
    train, test = order[:-num_test], order[-num_test:]
    return DataSplit(
        name=name,
        train=x[train],
        test=x[test],
        train_labels=None if labels is None else labels[train],
        test_labels=None if labels is None else labels[test],
        categories=categories,
        num_classes=num_classes,
    )
