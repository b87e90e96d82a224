"""The container every built-in data set is returned in."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DataSplit"]


@dataclass(frozen=True)
class DataSplit:
    """A data set split into train and test examples.

    Attributes:
        name: what the set is (e.g. ``"digits"``).
        train, test: ``(N, *event_shape)`` examples: long with values in ``[0, categories)``
            for discrete data, floating for continuous data.
        train_labels, test_labels: ``(N,)`` long class labels, or None.
        categories: values per dimension of discrete data; None for continuous data.
        num_classes: number of label values, or None without labels.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    categories: int | None = None
    num_classes: int | None = None

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one example."""
        return tuple(self.train.shape[1:])
