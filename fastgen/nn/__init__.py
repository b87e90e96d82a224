"""Drop-in ``nn.Module`` layers that own parameters and call :mod:`fastgen.ops`."""

from .causal_conv import CausalConv1d
from .gated_pixelcnn import GatedPixelCNNLayer, GatedPixelCNNState
from .masked_conv import MaskedConv2d
from .wavenet import GatedResidualBlock

__all__ = ["CausalConv1d", "GatedPixelCNNLayer", "GatedPixelCNNState", "GatedResidualBlock", "MaskedConv2d"]
