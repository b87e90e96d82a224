"""Procedurally drawn images of simple shapes (one shape per image, random position and
size), with the kind of shape as the label: a small image set with visible structure for
PixelCNN-like models, generated in milliseconds by evaluating each shape's inequalities on a
coordinate grid for the whole batch at once."""

from __future__ import annotations

import torch

from ..ops._checks import check_int, check_real
from ._split import make_split, seeded_generator
from .base import DataSplit

__all__ = ["SHAPE_KINDS", "colored_shapes", "shapes"]

SHAPE_KINDS = ("square", "circle", "triangle", "cross")
"""The shape of label ``k`` is ``SHAPE_KINDS[k]``."""

_COLOR_LEVELS = 4


def _draw(op: str, n: object, size: object, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` shape masks ``(n, size, size)`` bool and their kinds ``(n,)`` long.

    Each shape has a radius ``r`` uniform in ``[0.2, 0.45] * size`` pixels and a centre
    uniform over the positions where its bounding circle fits in the image.
    """
    n = check_int(op, "n", n, minimum=2)
    size = check_int(op, "size", size, minimum=8)
    labels = torch.randint(len(SHAPE_KINDS), (n,), generator=generator)
    r = size * (0.2 + 0.25 * torch.rand(n, generator=generator, dtype=torch.float32))
    cy, cx = r + torch.rand(2, n, generator=generator, dtype=torch.float32) * (size - 2 * r)
    centres = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    dy = (centres[None, :] - cy[:, None])[:, :, None]  # (n, size, 1)
    dx = (centres[None, :] - cx[:, None])[:, None, :]  # (n, 1, size)
    r = r[:, None, None]
    near, far = torch.minimum(dy.abs(), dx.abs()), torch.maximum(dy.abs(), dx.abs())
    masks = torch.stack(
        [
            far <= 0.8 * r,  # square
            dx**2 + dy**2 <= r**2,  # circle
            (dy <= 0.8 * r) & (dx.abs() <= (dy + r) / 1.8),  # triangle: apex r above the centre, base 0.8 r below
            (near <= r / 3) & (far <= r),  # cross: arms r long, 2r/3 wide
        ]
    )  # (kinds, n, size, size)
    return masks[labels, torch.arange(n)], labels


def shapes(n: int = 4000, *, size: int = 20, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    """Binary images of one white shape (a :data:`SHAPE_KINDS` kind, random size and
    position) on black.

    A shape of radius ``r`` (uniform in ``[0.2, 0.45] * size`` pixels) is a square of side
    ``1.6 r``, a disc of radius ``r``, an upward triangle ``1.8 r`` high with a base of ``2 r``,
    or a cross of arms ``2 r`` long and ``2r/3`` wide, centred uniformly where the circle of
    radius ``r`` around it fits in the image; a pixel is on when its centre is inside.

    Args:
        n: number of images in all (train and test), >= 2.
        size: image height and width in pixels, >= 8 (below 20, the smallest shapes get hard to
            tell apart).
        test_fraction: share of the images in the test set (``round(n * test_fraction)``).
        seed: int >= 0 fixing the images and the split.

    Returns:
        :class:`DataSplit` named ``"shapes"``: images ``(N, 1, size, size)`` long in ``{0, 1}``
        (``categories=2``), labels ``(N,)`` long in ``0..3`` (``num_classes=4``), the index of
        the kind in :data:`SHAPE_KINDS`.

    >>> data = shapes(100, seed=1)
    >>> data.train.shape, data.train.dtype, data.categories, data.num_classes
    (torch.Size([80, 1, 20, 20]), torch.int64, 2, 4)
    """
    test_fraction = check_real("shapes", "test_fraction", test_fraction, above=0, below=1)
    generator = seeded_generator("shapes", seed)
    masks, labels = _draw("shapes", n, size, generator)
    return make_split(
        "shapes",
        "shapes",
        masks.long().unsqueeze(1),
        labels,
        test_fraction=test_fraction,
        generator=generator,
        categories=2,
        num_classes=len(SHAPE_KINDS),
    )


def colored_shapes(n: int = 4000, *, size: int = 20, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    """RGB images of one shape (a :data:`SHAPE_KINDS` kind, random size and position) with 4
    levels per channel: the shape and the background each get one of the 64 colours at random,
    never the same one.

    Args:
        n: number of images in all (train and test), >= 2.
        size: image height and width in pixels, >= 8.
        test_fraction: share of the images in the test set (``round(n * test_fraction)``).
        seed: int >= 0 fixing the images and the split.

    Returns:
        :class:`DataSplit` named ``"colored_shapes"``: images ``(N, 3, size, size)`` long in
        ``0..3`` (``categories=4``; channels red, green, blue), labels ``(N,)`` long in ``0..3``
        (``num_classes=4``), the index of the kind in :data:`SHAPE_KINDS`.

    >>> data = colored_shapes(100)
    >>> data.test.shape, data.categories, int(data.test.max()) <= 3
    (torch.Size([20, 3, 20, 20]), 4, True)
    """
    test_fraction = check_real("colored_shapes", "test_fraction", test_fraction, above=0, below=1)
    generator = seeded_generator("colored_shapes", seed)
    masks, labels = _draw("colored_shapes", n, size, generator)
    colors = _COLOR_LEVELS**3
    background = torch.randint(colors, (len(masks),), generator=generator)
    # a shift of 1..63 (mod 64) makes the shape's colour differ from the background's
    foreground = (background + torch.randint(1, colors, (len(masks),), generator=generator)) % colors
    powers = _COLOR_LEVELS ** torch.arange(2, -1, -1)  # colour index -> (red, green, blue) digits in base 4

    def rgb(index: torch.Tensor) -> torch.Tensor:
        return (index[:, None] // powers % _COLOR_LEVELS)[:, :, None, None]  # (n, 3, 1, 1)

    images = torch.where(masks.unsqueeze(1), rgb(foreground), rgb(background))
    return make_split(
        "colored_shapes",
        "colored_shapes",
        images,
        labels,
        test_fraction=test_fraction,
        generator=generator,
        categories=_COLOR_LEVELS,
        num_classes=len(SHAPE_KINDS),
    )
