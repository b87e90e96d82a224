"""The real 8x8 handwritten digits bundled with scikit-learn (UCI optical recognition of
handwritten digits, 1797 images by 43 writers): read from a file inside the installed
scikit-learn package, never downloaded."""

from __future__ import annotations

import torch

from ..ops._checks import check_bool, check_real
from ._split import make_split, seeded_generator
from .base import DataSplit

__all__ = ["digits"]


def digits(*, binarized: bool = False, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    """The 1797 digits of :func:`sklearn.datasets.load_digits`, split at random (fixed by
    ``seed``) into train and test.

    Args:
        binarized: threshold the grey levels (``value >= 8`` -> 1, else 0).
        test_fraction: share of the 1797 images in the test set (``round(1797 * test_fraction)``).
        seed: int >= 0 fixing the split.

    Returns:
        :class:`DataSplit` named ``"digits"`` (``"binarized_digits"``): images ``(N, 1, 8, 8)``
        long with the 17 grey levels ``0..16`` (``categories=17``) or ``0..1``
        (``categories=2``); labels ``(N,)`` long ``0..9`` (``num_classes=10``). With the
        default ``test_fraction``: 1438 train and 359 test images.

    >>> data = digits()
    >>> data.train.shape, data.test.shape, data.categories, int(data.train.max())
    (torch.Size([1438, 1, 8, 8]), torch.Size([359, 1, 8, 8]), 17, 16)
    >>> digits(binarized=True).categories
    2
    """
    binarized = check_bool("digits", "binarized", binarized)
    test_fraction = check_real("digits", "test_fraction", test_fraction, above=0, below=1)
    generator = seeded_generator("digits", seed)
    # scikit-learn takes about a second to import: only when the set is asked for
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).long().unsqueeze(1)  # (1797, 1, 8, 8), exact integers 0..16
    labels = torch.from_numpy(bunch.target).long()
    if binarized:
        images = (images >= 8).long()
    return make_split(
        "digits",
        "binarized_digits" if binarized else "digits",
        images,
        labels,
        test_fraction=test_fraction,
        generator=generator,
        categories=2 if binarized else 17,
        num_classes=10,
    )
