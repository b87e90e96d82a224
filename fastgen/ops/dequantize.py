r"""Uniform dequantization (Theis et al. 2016; RealNVP, Glow): integer data with ``bins``
values to continuous data in :math:`[0, 1]`.

.. math::

    y = \frac{x + u}{\text{bins}}, \quad u \sim U[0, 1)^D, \qquad
    \log|\det \partial y / \partial (x + u)|_b = -D \log(\text{bins})

with :math:`D` the number of elements per example. (The noise is clamped to
:math:`[\delta, 1 - \delta]`, :math:`\delta = 4\,\text{bins}\,\epsilon` of the dtype, 1.2e-4
for 256 bins in float32: every ``y`` then lies inside its own bin in floating point,
``floor(y * bins) == x``, where ``x + u`` could otherwise round up to ``x + 1``.) A flow's density :math:`p(y)` of the
dequantized data then lower-bounds the discrete log-likelihood:
:math:`\log P(x) \ge \mathbb{E}_u[\log p(y)] + \text{logdet}`.

This op has no kernel, on purpose: it is one element-wise add and scale on the output of
``torch.rand``, which PyTorch fuses and vectorizes already, and a kernel would have to
reproduce torch's random stream to keep ``generator`` meaningful. It is its own reference.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_int

__all__ = ["bin_margin", "check_integer_data", "uniform_dequantize"]

OP = "uniform_dequantize"


def check_integer_data(op: str, name: str, x: object, bins: object) -> None:
    """``x`` must be a tensor ``(B, ...)`` of integers (any integer or floating dtype) in
    ``[0, bins)``, ``bins`` an int >= 1. The values are checked in eager mode only: under
    ``torch.compile`` that check, which needs them on the host, is skipped."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"{op}: {name} must have shape (B, ...) with at least 2 dimensions, got shape {tuple(x.shape)}"
        )
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{op}: {name} must be an integer or floating-point tensor, got {x.dtype}")
    check_int(op, "bins", bins, minimum=1)
    if not torch.compiler.is_compiling() and x.numel() > 0:
        # Compared as Python numbers: bins may not fit x's dtype (256 in uint8).
        lo, hi = (v.item() for v in torch.aminmax(x))
        fractional = x.is_floating_point() and bool((x != torch.floor(x)).any())  # NaN included
        if fractional or lo < 0 or hi >= bins:
            raise ValueError(
                f"{op}: {name} must hold integers in [0, bins) = [0, {bins}), got values in [{lo}, {hi}]"
                + (" and non-integers" if fractional else "")
            )


def bin_margin(op: str, bins: int, dtype: torch.dtype) -> float:
    """How far dequantization noise in ``[0, 1]`` keeps from the bin edges: more than the
    rounding of ``(x + u) / bins`` and of ``y * bins`` (< 1.5 ``bins`` eps in all), so that
    ``floor(y * bins)`` is ``x`` again. Unclamped, ``x + u`` rounds up to ``x + 1`` for ``u``
    within half a float spacing of 1 (1 draw in ~10^5 in float32 with 256 bins)."""
    margin = 4 * bins * torch.finfo(dtype).eps
    if margin >= 0.25:
        raise ValueError(f"{op}: {dtype} is too coarse to dequantize {bins} bins; use float32 or float64")
    return margin


def uniform_dequantize(
    x: torch.Tensor, *, bins: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantizes integer data uniformly within each bin.

    Args:
        x: ``(B, ...)``, an integer tensor (e.g. uint8 images) or a floating-point one
            holding integers, every value in ``[0, bins)``. Checked (a ValueError naming
            ``x`` otherwise) in eager mode; under ``torch.compile`` the check, which needs
            the values on the host, is skipped.
        bins: the number of values of the data (256 for 8-bit images), an int >= 1 (and
            small enough for the dtype to resolve: float16 up to 63, bfloat16 up to 7).
        generator: the random generator of the noise (``x``'s device), or None for the
            default one. (``torch.compile`` does not trace a generator argument: compiled
            code passes None and draws from the compiler's random stream.)

    Returns:
        ``(y, logdet)``: ``y`` of ``x``'s shape in ``(0, 1)`` (``x``'s dtype if floating,
        else the default dtype), each value inside its bin (``floor(y * bins) == x``), and
        ``logdet`` ``(B,)``, ``-D log(bins)`` for every example.

    Example:
        >>> images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
        >>> y, logdet = uniform_dequantize(images, bins=256)
        >>> bool((y * 256).floor().eq(images).all()), torch.allclose(logdet, torch.full((8,), -3072 * math.log(256)))
        (True, True)
    """
    check_integer_data(OP, "x", x, bins)
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    margin = bin_margin(OP, bins, dtype)
    u = torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device).clamp_(margin, 1 - margin)
    y = (x.to(dtype) + u) / bins
    logdet = torch.full((x.shape[0],), -math.prod(x.shape[1:]) * math.log(bins), dtype=dtype, device=x.device)
    return y, logdet
