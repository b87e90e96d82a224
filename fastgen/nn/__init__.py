"""Drop-in ``nn.Module`` layers that own parameters and call :mod:`fastgen.ops`."""

from .masked_conv import MaskedConv2d
from .wavenet import GatedResidualBlock

__all__ = ["MaskedConv2d"]
__all__ += ["GatedResidualBlock"]
