"""The model registry."""

from __future__ import annotations

import pytest

from fastgen.models import available, build


def test_build_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build("nope")
    assert available() == sorted(available())
