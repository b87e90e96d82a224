"""Built-in data sets: nothing is downloaded; every set is generated (or bundled) with a
fixed seed and split into train and test (:class:`DataSplit`)."""

from .alarm import alarm
from .base import DataSplit

__all__ = ["DataSplit", "alarm"]
