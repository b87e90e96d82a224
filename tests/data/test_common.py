"""What every built-in data set promises: determinism per seed, the documented train/test
sizes, and checked arguments."""

import functools

import pytest
import torch

from fastgen import data

# every set, small enough to be fast; the set's own arguments beyond n, test_fraction and seed
SETS = {
    "digits": data.digits,
    "binarized_digits": functools.partial(data.digits, binarized=True),
    "shapes": functools.partial(data.shapes, 200),
    "colored_shapes": functools.partial(data.colored_shapes, 200),
    "mixture_1d": functools.partial(data.mixture_1d, 500),
    "smiley_2d": functools.partial(data.smiley_2d, 500),
    "two_moons": functools.partial(data.two_moons, 500),
    "rings": functools.partial(data.rings, 500),
    "checkerboard": functools.partial(data.checkerboard, 500),
    "gaussian_mixture": functools.partial(data.gaussian_mixture, 500),
    "synthetic_audio": functools.partial(data.synthetic_audio, 30, length=64),
}
GENERATED = [name for name in SETS if "digits" not in name]  # the sets that take n


def _fields(split: data.DataSplit) -> list:
    return [split.train, split.test, split.train_labels, split.test_labels]


@pytest.mark.parametrize("name", SETS)
def test_same_seed_same_data_other_seed_other_data(name):
    make = SETS[name]
    first, again, other = make(seed=3), make(seed=3), make(seed=4)
    assert first.name == name
    for a, b in zip(_fields(first), _fields(again)):
        assert (a is None and b is None) or torch.equal(a, b)
    assert not torch.equal(first.train, other.train)
    assert not torch.equal(first.test, other.test)


@pytest.mark.parametrize("name", SETS)
def test_default_seed_is_zero_and_split_sizes(name):
    make = SETS[name]
    default, zero = make(), make(seed=0)
    assert torch.equal(default.train, zero.train)
    split = make(test_fraction=0.25)
    total = len(split.train) + len(split.test)
    assert len(split.test) == round(total * 0.25)
    assert split.event_shape == tuple(split.test.shape[1:])
    assert split.train.is_contiguous() and split.test.is_contiguous()
    if split.train_labels is not None:
        assert split.train_labels.shape == (len(split.train),) and split.test_labels.shape == (len(split.test),)
        assert split.train_labels.dtype == torch.long
        labels = torch.cat([split.train_labels, split.test_labels])
        assert labels.min() == 0 and labels.max() == split.num_classes - 1
    else:
        assert split.num_classes is None and split.test_labels is None
    if split.categories is None:
        assert split.train.dtype == torch.float32
    else:
        values = torch.cat([split.train.flatten(), split.test.flatten()])
        assert split.train.dtype == torch.long
        assert values.min() >= 0 and values.max() < split.categories


@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=1.0), TypeError, "seed"),
        (dict(seed=True), TypeError, "seed"),
        (dict(test_fraction=0.0), ValueError, "test_fraction"),
        (dict(test_fraction=1.0), ValueError, "test_fraction"),
        (dict(test_fraction=-0.5), ValueError, "test_fraction"),
        (dict(test_fraction="0.2"), TypeError, "test_fraction"),
        (dict(test_fraction=1e-6), ValueError, "test_fraction"),  # rounds to an empty test set
        (dict(test_fraction=1 - 1e-6), ValueError, "test_fraction"),  # and to an empty train set
    ],
)
def test_common_arguments_are_checked(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        SETS[name](**kwargs)


@pytest.mark.parametrize("name", GENERATED)
@pytest.mark.parametrize("n, error", [(1, ValueError), (0, ValueError), (10.0, TypeError), (True, TypeError)])
def test_n_is_checked(name, n, error):
    make = SETS[name].func
    with pytest.raises(error, match="n must"):
        make(n, **SETS[name].keywords)
