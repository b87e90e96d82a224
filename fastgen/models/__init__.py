"""The model zoo: every model is a :class:`DensityModel`, built by name with :func:`build`.

``fastgen.models.available()`` lists the names.
"""

from .base import AutoregressiveModel, DensityModel, FlowModel, StepCache, available, build, register
from .bayes_net import BayesNet
from .cdf_flow_1d import CDFFlow1D
from .discretized_logistic_mixture import DiscretizedMixtureOfLogistics
from .ffjord import FFJORD
from .flowpp import FlowPlusPlus
from .gated_pixelcnn import GatedPixelCNN
from .gaussian_mixture import MixtureOfGaussians
from .glow import Glow
from .histogram import Histogram
from .iaf import IAF
from .made import MADE
from .maf import MAF
from .multiscale_flow import MultiscaleFlowModel
from .pixel_transformer import PixelTransformer, PixelTransformerCache
from .pixelcnn import PixelCNN, PixelCNNCache
from .realnvp import RealNVP
from .recurrent import RecurrentAR
from .wavenet import WaveNet, WaveNetCache

__all__ = [
    "AutoregressiveModel",
    "BayesNet",
    "CDFFlow1D",
    "DensityModel",
    "DiscretizedMixtureOfLogistics",
    "FFJORD",
    "FlowModel",
    "FlowPlusPlus",
    "GatedPixelCNN",
    "Glow",
    "Histogram",
    "IAF",
    "MADE",
    "MAF",
    "MixtureOfGaussians",
    "MultiscaleFlowModel",
    "PixelCNN",
    "PixelCNNCache",
    "PixelTransformer",
    "PixelTransformerCache",
    "RealNVP",
    "RecurrentAR",
    "StepCache",
    "WaveNet",
    "WaveNetCache",
    "available",
    "build",
    "register",
]
