"""Drop-in ``nn.Module`` layers that own parameters and call :mod:`fastgen.ops`."""

from .causal_conv import CausalConv1d
from .cnf import ContinuousNormalizingFlow, TimeMLP
from .coupling import AdditiveCoupling, AffineCoupling, MixtureCDFCoupling
from .dequantization import Logit, UniformDequantization, VariationalDequantization
from .flow import ActNorm, FlowSequential, InvConv1x1, Squeeze
from .gated_pixelcnn import GatedPixelCNNLayer, GatedPixelCNNState
from .masked_conv import MaskedConv2d
from .masked_linear import MaskedLinear
from .mixture_flow import ElementwiseMixtureCDFFlow
from .wavenet import GatedResidualBlock

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "CausalConv1d",
    "ContinuousNormalizingFlow",
    "ElementwiseMixtureCDFFlow",
    "FlowSequential",
    "GatedPixelCNNLayer",
    "GatedPixelCNNState",
    "GatedResidualBlock",
    "InvConv1x1",
    "Logit",
    "MaskedConv2d",
    "MaskedLinear",
    "MixtureCDFCoupling",
    "Squeeze",
    "TimeMLP",
    "UniformDequantization",
    "VariationalDequantization",
]
