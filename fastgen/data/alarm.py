"""Samples of the burglary alarm Bayes net of CS294-158 lecture 1 (Russell & Norvig)."""

from __future__ import annotations

from ..models.bayes_net import BayesNet
from ..ops._checks import check_int, check_real
from ._split import make_split, seeded_generator
from .base import DataSplit

__all__ = ["alarm"]


def alarm(n: int = 10_000, *, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    """``n`` independent samples of :meth:`BayesNet.alarm() <fastgen.models.BayesNet.alarm>`
    (Burglary, Earthquake, Alarm, JohnCalls, MaryCalls; 0 = false, 1 = true), drawn in float64
    with a generator seeded by ``seed``; ``BayesNet.alarm().cpts()`` are the conditional
    probability tables they come from.

    A seeded shuffle puts ``round(n * test_fraction)`` samples in the test set, the others
    in the train set: long tensors ``(N, 5)`` with values in ``{0, 1}``, ``categories = 2``, no labels.

    Example:
        >>> data = alarm(1000, seed=0)
        >>> data.train.shape, data.test.shape, data.categories
        (torch.Size([800, 5]), torch.Size([200, 5]), 2)
    """
    check_int("alarm", "n", n, minimum=2)
    test_fraction = check_real("alarm", "test_fraction", test_fraction, above=0, below=1)
    generator = seeded_generator("alarm", seed)
    x = BayesNet.alarm().double().sample(n, generator=generator)
    return make_split("alarm", "alarm", x, None, test_fraction=test_fraction, generator=generator, categories=2)
