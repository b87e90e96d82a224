"""Samples of the burglary alarm Bayes net of CS294-158 lecture 1 (Russell & Norvig)."""

from __future__ import annotations

import torch

from ..models.bayes_net import BayesNet
from ..ops._checks import check_int
from .base import DataSplit

__all__ = ["alarm"]


def alarm(n: int = 10_000, *, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    """``n`` independent samples of :meth:`BayesNet.alarm() <fastgen.models.BayesNet.alarm>`
    (Burglary, Earthquake, Alarm, JohnCalls, MaryCalls; 0 = false, 1 = true), drawn in float64
    with a generator seeded by ``seed``; ``BayesNet.alarm().cpts()`` are the conditional
    probability tables they come from.

    The last ``round(n * test_fraction)`` samples are the test set, the others the train set:
    long tensors ``(N, 5)`` with values in ``{0, 1}``, ``categories = 2``, no labels.

    Example:
        >>> data = alarm(1000, seed=0)
        >>> data.train.shape, data.test.shape, data.categories
        (torch.Size([800, 5]), torch.Size([200, 5]), 2)
    """
    check_int("alarm", "n", n, minimum=2)
    check_int("alarm", "seed", seed, minimum=0)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise TypeError(f"alarm: test_fraction must be a float, got {type(test_fraction).__name__}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"alarm: test_fraction must be in (0, 1), got {test_fraction}")
    num_test = round(n * test_fraction)
    if not 0 < num_test < n:
        raise ValueError(f"alarm: test_fraction={test_fraction} of {n} examples leaves an empty train or test set")
    x = BayesNet.alarm().double().sample(n, generator=torch.Generator().manual_seed(seed))
    return DataSplit(name="alarm", train=x[: n - num_test], test=x[n - num_test :], categories=2)
