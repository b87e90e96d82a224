"""fastgen: fast kernels and models for likelihood-based generative models.

- :mod:`fastgen.ops`: functional kernels (C++ on CPU, Triton on GPU) with references.
- :mod:`fastgen.nn`: drop-in layers built on them.
- :mod:`fastgen.models`: the model zoo (:func:`fastgen.models.build`).
- :mod:`fastgen.sampling`: cached (incremental) and naive autoregressive sampling.
- :mod:`fastgen.data`: built-in data sets (nothing is downloaded); :func:`fastgen.train.fit`: training.
- :mod:`fastgen.backends`: which implementation runs (:func:`use_backend`).

``python -m fastgen.info`` prints versions, build information and every op's backends.
"""

from . import backends, data, models, nn, ops, sampling, train
from .backends import BackendUnavailableError, use_backend

__version__ = "0.1.0"

__all__ = ["BackendUnavailableError", "backends", "data", "models", "nn", "ops", "sampling", "train", "use_backend", "__version__"]
