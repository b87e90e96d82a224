"""The examples in fastgen's docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

import fastgen


def _modules_with_examples() -> list[str]:
    finder = doctest.DocTestFinder()
    names = []
    for info in pkgutil.walk_packages(fastgen.__path__, "fastgen."):
        if info.name.startswith("fastgen.ops.triton"):  # kernels: no examples, and triton imports
            continue
        module = importlib.import_module(info.name)
        if any(test.examples for test in finder.find(module)):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"
