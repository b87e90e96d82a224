"""Test configuration shared by the whole suite.

Without a CUDA device the Triton kernels run under the Triton interpreter, which must be
switched on before triton (and fastgen, which records it) is imported: hence here.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The references must be exact on GPU too: no TF32 in cuBLAS/cuDNN (fastgen's Triton
# kernels follow the cuDNN setting).
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
