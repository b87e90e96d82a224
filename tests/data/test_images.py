"""The image sets: the scikit-learn digits (exactly sklearn's data, split) and the drawn
shapes (each image shows the kind its label names)."""

import pytest
import torch

from fastgen.data import SHAPE_KINDS, colored_shapes, digits, shapes

# images per digit 0..9 in scikit-learn's copy of the UCI digits
DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def _sorted_rows(images: torch.Tensor, labels: torch.Tensor) -> list:
    return sorted(zip(labels.tolist(), images.flatten(1).tolist()))


def test_digits_is_sklearns_digits_split():
    from sklearn.datasets import load_digits

    split = digits()
    assert split.train.shape == (1438, 1, 8, 8) and split.test.shape == (359, 1, 8, 8)
    assert split.train.dtype == torch.long and (split.categories, split.num_classes) == (17, 10)
    labels = torch.cat([split.train_labels, split.test_labels])
    assert torch.bincount(labels).tolist() == DIGIT_COUNTS
    images = torch.cat([split.train, split.test])
    assert images.min() == 0 and images.max() == 16
    # train and test together are exactly the 1797 (image, label) pairs, each used once
    bunch = load_digits()
    reference = torch.from_numpy(bunch.images).long(), torch.from_numpy(bunch.target)
    assert _sorted_rows(images, labels) == _sorted_rows(*reference)


def test_binarized_digits_threshold_the_same_split():
    grey, binary = digits(seed=5), digits(binarized=True, seed=5)
    assert (binary.name, binary.categories, binary.num_classes) == ("binarized_digits", 2, 10)
    assert torch.equal(binary.train, (grey.train >= 8).long())
    assert torch.equal(binary.test, (grey.test >= 8).long())
    assert torch.equal(binary.train_labels, grey.train_labels)


def test_digits_arguments_are_checked():
    with pytest.raises(TypeError, match="binarized"):
        digits(binarized=1)
    with pytest.raises(TypeError):
        digits(0.2)  # keyword-only


def _classify(mask: torch.Tensor) -> int:
    """The kind of one drawn shape ``(H, W)`` bool, from its row and column widths."""
    rows, columns = mask.sum(1), mask.sum(0)
    row_widths, column_widths = rows[rows > 0].tolist(), columns[columns > 0].tolist()
    if mask.sum() == len(row_widths) * len(column_widths):
        return SHAPE_KINDS.index("square")  # fills its bounding box
    if all(a <= b for a, b in zip(row_widths, row_widths[1:])) and row_widths[0] < row_widths[-1]:
        return SHAPE_KINDS.index("triangle")  # widens downwards
    if all(len(set(w)) == 2 and 2 * min(w) <= max(w) for w in (row_widths, column_widths)):
        return SHAPE_KINDS.index("cross")  # narrow arms and one full bar, both ways
    return SHAPE_KINDS.index("circle")


def _check_kinds(masks: torch.Tensor, labels: torch.Tensor) -> None:
    """Every mask ``(N, H, W)`` shows the kind its label names, each kind about a quarter."""
    assert [_classify(m) for m in masks] == labels.tolist()
    assert torch.bincount(labels, minlength=4).min() > len(labels) / 4 * 0.8


@pytest.mark.parametrize("size", [20, 27])
def test_shapes_are_binary_images_of_their_kind(size):
    split = shapes(1000, size=size, seed=1)
    assert split.train.shape == (800, 1, size, size) and split.test.shape == (200, 1, size, size)
    assert split.train.dtype == torch.long and (split.categories, split.num_classes) == (2, 4)
    images, labels = torch.cat([split.train, split.test]), torch.cat([split.train_labels, split.test_labels])
    assert set(images.unique().tolist()) == {0, 1}
    # each shape's bounding circle fits inside the image: the corners stay black
    assert not images[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]].any()
    _check_kinds(images[:, 0].bool(), labels)


def test_colored_shapes_have_two_colors_and_the_shape_of_their_kind():
    split = colored_shapes(1000, seed=2)
    assert split.train.shape == (800, 3, 20, 20) and split.test.shape == (200, 3, 20, 20)
    assert split.train.dtype == torch.long and (split.categories, split.num_classes) == (4, 4)
    images, labels = torch.cat([split.train, split.test]), torch.cat([split.train_labels, split.test_labels])
    assert set(images.unique().tolist()) == {0, 1, 2, 3}
    background = images[:, :, :1, :1]  # a corner pixel: shapes never reach it
    shape = (images != background).any(dim=1)  # (N, H, W)
    assert shape.any(dim=(1, 2)).all()
    # exactly two colours per image: every pixel off the background has one colour
    foreground = torch.stack([img[:, m][:, 0] for img, m in zip(images, shape)])  # (N, 3)
    assert torch.equal(torch.where(shape[:, None], foreground[:, :, None, None], background), images)
    _check_kinds(shape, labels)
    # all 64 x 63 colour pairs are possible: many distinct ones appear
    pairs = torch.cat([background.flatten(1), foreground], 1).unique(dim=0)
    assert len(pairs) > 500


@pytest.mark.parametrize("make", [shapes, colored_shapes])
def test_shapes_arguments_are_checked(make):
    with pytest.raises(ValueError, match="size"):
        make(10, size=7)
    with pytest.raises(TypeError, match="size"):
        make(10, size=20.0)
