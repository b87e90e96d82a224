"""fastgen ops: functional kernels, each with a pure-PyTorch reference ``<op>_ref``.

Every op takes ``backend=`` (see :mod:`fastgen.backends`) and checks its arguments
before any kernel runs.
"""

from .masked_conv2d import masked_conv2d, masked_conv2d_mask, masked_conv2d_ref
from .causal_conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_step, causal_conv1d_step_ref

__all__ = ["masked_conv2d", "masked_conv2d_mask", "masked_conv2d_ref"]
__all__ += ["causal_conv1d", "causal_conv1d_ref", "causal_conv1d_step", "causal_conv1d_step_ref"]
