"""Drop-in ``nn.Module`` layers that own parameters and call :mod:`fastgen.ops`."""

from .causal_conv import CausalConv1d
from .flow import FlowSequential, InvConv1x1, Squeeze
from .gated_pixelcnn import GatedPixelCNNLayer, GatedPixelCNNState
from .masked_conv import MaskedConv2d
from .wavenet import GatedResidualBlock

__all__ = [
    "CausalConv1d",
    "FlowSequential",
    "GatedPixelCNNLayer",
    "GatedPixelCNNState",
    "GatedResidualBlock",
    "InvConv1x1",
    "MaskedConv2d",
    "Squeeze",
]
