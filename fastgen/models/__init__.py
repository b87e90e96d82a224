"""The model zoo: every model is a :class:`DensityModel`, built by name with :func:`build`.

``fastgen.models.available()`` lists the names.
"""

from .base import AutoregressiveModel, DensityModel, available, build, register, sample_categorical
from .made import MADE, MADECache

__all__ = [
    "AutoregressiveModel",
    "DensityModel",
    "MADE",
    "MADECache",
    "available",
    "build",
    "register",
    "sample_categorical",
]
