"""Drop-in ``nn.Module`` layers that own parameters and call :mod:`fastgen.ops`."""

from .autoregressive_flow import MaskedAffineAutoregressive, Reverse
from .causal_conv import CausalConv1d
from .cnf import ContinuousNormalizingFlow, TimeMLP
from .coupling import AdditiveCoupling, AffineCoupling, MixtureCDFCoupling, resnet_coupling_net
from .dequantization import Logit, UniformDequantization, VariationalDequantization
from .flow import ActNorm, FlowSequential, InvConv1x1, Squeeze
from .gated_pixelcnn import GatedPixelCNNLayer, GatedPixelCNNState
from .masked_conv import MaskedConv2d
from .masked_linear import MaskedLinear
from .masked_mlp import MaskedMLP, MaskedMLPState
from .mixture_flow import ElementwiseMixtureCDFFlow
from .multiscale import GaussianPrior, MultiscaleFlow, Split
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
    "GaussianPrior",
    "InvConv1x1",
    "Logit",
    "MaskedAffineAutoregressive",
    "MaskedConv2d",
    "MaskedLinear",
    "MaskedMLP",
    "MaskedMLPState",
    "MixtureCDFCoupling",
    "MultiscaleFlow",
    "Reverse",
    "Split",
    "Squeeze",
    "TimeMLP",
    "UniformDequantization",
    "VariationalDequantization",
    "resnet_coupling_net",
]
