"""Drop-in ``nn.Module`` layers that own parameters and call :mod:`fastgen.ops`."""

from .masked_conv import MaskedConv2d
from .gated_pixelcnn import GatedPixelCNNLayer, GatedPixelCNNState

__all__ = ["MaskedConv2d", "GatedPixelCNNLayer", "GatedPixelCNNState"]
