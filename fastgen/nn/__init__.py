"""Drop-in ``nn.Module`` layers that own parameters and call :mod:`fastgen.ops`."""

from .masked_conv import MaskedConv2d
from .causal_conv import CausalConv1d

__all__ = ["MaskedConv2d"]
__all__ += ["CausalConv1d"]
