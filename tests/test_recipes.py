"""Every zoo recipe (a model trained on its built-in data set for a short fixed budget)
reaches its stated test bits/dim and beats the trivial baseline."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from fastgen import recipes
from fastgen.data import DataSplit


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_recipe_reaches_its_bound(name):
    missing = [m for m in recipes.RECIPES[name].requires if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"recipe {name} needs {', '.join(missing)}, which is not installed")
    result = recipes.run(name)
    assert math.isfinite(result.test_bits_per_dim)
    assert result.test_bits_per_dim < recipes.RECIPES[name].bound
    assert result.test_bits_per_dim < result.baseline_bits_per_dim


def test_trivial_baselines():
    one_dim = DataSplit("d", torch.tensor([0, 1]), torch.tensor([2]), categories=8)
    assert recipes.trivial_baseline(one_dim) == 3.0  # uniform over 8 values
    # dimension 0 trains on (0, 0), dimension 1 on (0, 1): add-one smoothed over 2 values
    two_dims = DataSplit("d", torch.tensor([[0, 0], [0, 1]]), torch.tensor([[1, 1]]), categories=2)
    expected = -(math.log2(1 / 4) + math.log2(2 / 4)) / 2
    assert recipes.trivial_baseline(two_dims) == pytest.approx(expected, abs=1e-12)
    # continuous: the Gaussian fitted to the training set, also for one value per example (N,)
    train, test = torch.tensor([0.0, 2.0, 4.0]), torch.tensor([2.0])  # mean 2, unbiased variance 4
    expected = (0.5 * math.log(2 * math.pi * 4)) / math.log(2)
    assert recipes.trivial_baseline(DataSplit("c", train, test)) == pytest.approx(expected, abs=1e-12)
    assert recipes.trivial_baseline(DataSplit("c", train[:, None], test[:, None])) == pytest.approx(expected, abs=1e-12)


def test_unknown_recipe():
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        recipes.run("nope")
