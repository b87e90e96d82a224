"""fastgen ops: functional kernels, each with a pure-PyTorch reference ``<op>_ref``.

Every op takes ``backend=`` (see :mod:`fastgen.backends`) and checks its arguments
before any kernel runs.
"""

from .actnorm import actnorm, actnorm_ref
from .affine_coupling import affine_coupling, affine_coupling_ref
from .affine_coupling_mlp import affine_coupling_mlp, affine_coupling_mlp_ref
from .causal_conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_step, causal_conv1d_step_ref
from .dequantize import uniform_dequantize
from .gated_pixelcnn import gated_pixelcnn_layer, gated_pixelcnn_layer_ref, gated_pixelcnn_masks
from .gated_residual_block import (
    gated_residual_block,
    gated_residual_block_ref,
    gated_residual_block_step,
    gated_residual_block_step_ref,
)
from .logit_transform import logit_transform, logit_transform_ref
from .masked_conv2d import (
    masked_conv2d,
    masked_conv2d_mask,
    masked_conv2d_ref,
    masked_conv2d_step,
    masked_conv2d_step_buffer,
    masked_conv2d_step_pack,
    masked_conv2d_step_ref,
    masked_conv2d_step_write,
    masked_conv2d_stepper,
)
from .masked_affine_autoregressive import masked_affine_autoregressive, masked_affine_autoregressive_ref
from .masked_linear import masked_linear, masked_linear_ref
from .mixture_cdf import default_icdf_iters, mixture_cdf, mixture_cdf_ref, mixture_icdf, mixture_icdf_ref

__all__ = [
    "actnorm",
    "actnorm_ref",
    "affine_coupling",
    "affine_coupling_ref",
    "affine_coupling_mlp",
    "affine_coupling_mlp_ref",
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_step",
    "causal_conv1d_step_ref",
    "default_icdf_iters",
    "gated_pixelcnn_layer",
    "gated_pixelcnn_layer_ref",
    "gated_pixelcnn_masks",
    "gated_residual_block",
    "gated_residual_block_ref",
    "gated_residual_block_step",
    "gated_residual_block_step_ref",
    "logit_transform",
    "logit_transform_ref",
    "masked_affine_autoregressive",
    "masked_affine_autoregressive_ref",
    "masked_conv2d",
    "masked_conv2d_mask",
    "masked_conv2d_ref",
    "masked_conv2d_step",
    "masked_conv2d_step_buffer",
    "masked_conv2d_step_pack",
    "masked_conv2d_step_ref",
    "masked_conv2d_step_write",
    "masked_conv2d_stepper",
    "masked_linear",
    "masked_linear_ref",
    "mixture_cdf",
    "mixture_cdf_ref",
    "mixture_icdf",
    "mixture_icdf_ref",
    "uniform_dequantize",
]
