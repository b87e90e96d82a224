"""pytest-benchmark wiring for the ``bench_*.py`` files (``pytest benchmarks/ --benchmark-only``).

A bench file's test takes ``case`` and ``provider``; this hook parametrizes them with
every (case, provider) of the file's ``cases(device, quick=False)``, so each bench file
holds one short test and no parametrization. ``--bench-device`` picks the device.
"""

from __future__ import annotations

import re

import pytest

from harness import provider_pairs, resolve_device

__all__ = ["bench_device", "pytest_addoption", "pytest_generate_tests"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-device",
        choices=("cpu", "cuda"),
        default=None,
        help="device of the bench_*.py benchmarks (default: cuda if available, else cpu)",
    )


def _device(config: pytest.Config) -> str:
    return resolve_device(config.getoption("--bench-device"))


@pytest.fixture(scope="session")
def bench_device(request: pytest.FixtureRequest) -> str:
    """The device the cases were built for."""
    return _device(request.config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not {"case", "provider"} <= set(metafunc.fixturenames):
        return
    params = provider_pairs(metafunc.module.cases(_device(metafunc.config), quick=False))
    # -k expressions accept only word characters and a few others ("=" and " " are not).
    ids = [re.sub(r"[^\w+.-]+", "-", f"{case.name} {provider}") for case, provider in params]
    metafunc.parametrize(("case", "provider"), params, ids=ids)
