"""The examples in fastgen's docstrings run and print what they show.

A module whose examples need an optional dependency lists it in ``__doctest_requires__``
(a tuple of module names, after pytest-doctestplus); they are skipped where it is missing.
"""

import doctest
import importlib
import importlib.util
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
    module = importlib.import_module(name)
    missing = [m for m in getattr(module, "__doctest_requires__", ()) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{name}'s examples need {', '.join(missing)}, which is not installed")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"
