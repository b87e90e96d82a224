"""The model zoo: every model is a :class:`DensityModel`, built by name with :func:`build`.

``fastgen.models.available()`` lists the names.
"""

from .base import AutoregressiveModel, DensityModel, FlowModel, available, build, register
from .bayes_net import BayesNet
from .discretized_logistic_mixture import DiscretizedMixtureOfLogistics
from .ffjord import FFJORD
from .flowpp import FlowPlusPlus
from .gated_pixelcnn import GatedPixelCNN
from .gaussian_mixture import MixtureOfGaussians
from .histogram import Histogram
from .made import MADE
from .pixel_transformer import PixelTransformer, PixelTransformerCache
from .pixelcnn import PixelCNN, PixelCNNCache
from .recurrent import RecurrentAR
from .wavenet import WaveNet, WaveNetCache

__all__ = [
    "AutoregressiveModel",
    "BayesNet",
    "DensityModel",
    "DiscretizedMixtureOfLogistics",
    "FFJORD",
    "FlowModel",
    "FlowPlusPlus",
    "GatedPixelCNN",
    "Histogram",
    "MADE",
    "MixtureOfGaussians",
    "PixelCNN",
    "PixelCNNCache",
    "PixelTransformer",
    "PixelTransformerCache",
    "RecurrentAR",
    "WaveNet",
    "WaveNetCache",
    "available",
    "build",
    "register",
]
