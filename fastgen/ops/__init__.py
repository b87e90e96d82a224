"""fastgen ops: functional kernels, each with a pure-PyTorch reference ``<op>_ref``.

Every op takes ``backend=`` (see :mod:`fastgen.backends`) and checks its arguments
before any kernel runs.
"""

from .masked_conv2d import masked_conv2d, masked_conv2d_mask, masked_conv2d_ref
from .gated_pixelcnn import gated_pixelcnn_layer, gated_pixelcnn_layer_ref, gated_pixelcnn_masks

__all__ = ["masked_conv2d", "masked_conv2d_mask", "masked_conv2d_ref", "gated_pixelcnn_layer", "gated_pixelcnn_layer_ref", "gated_pixelcnn_masks"]
