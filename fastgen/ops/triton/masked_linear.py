"""Triton kernels of :func:`fastgen.ops.masked_linear`: forward, grad_x and grad_weight.

All three are block-sparse GEMMs. The mask is cut into tiles, and per band of tiles (a
block of rows or of columns of the mask) the launcher computes, with a few torch ops on
the mask, the range ``[lo, hi)`` of tiles between the first and the last one that holds a
True: MADE's staircase masks leave about half of the tiles outside these ranges, and the
kernels never touch them.

- ``_masked_gemm_kernel``: ``c[m, n] = bias[n] + sum_k a[m, k] (W * M)[k, n]`` with the
  weight and mask read through strides, so that one kernel is the forward
  (``a = x``, ``W^T``: n runs over outputs, k over inputs) and grad_x (``a = grad_out``,
  ``W``: n over inputs, k over outputs). A program owns a ``BLOCK_M x BLOCK_N`` tile of c
  and loops over the k-tiles of its band's range only; the weight tile is loaded where
  the mask is True only (a masked weight is never read, whatever it holds).
- ``_masked_linear_weight_grad_kernel``: a program owns a ``BLOCK_N x BLOCK_K`` tile of
  ``grad_weight = (grad_out^T x) * M``; a tile outside its band's range is written as zeros
  without reading anything, one inside reduces over the batch and is zeroed where the
  mask is False.

Accumulation is in float32 (float64 for float64 inputs). Inputs may have any strides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["masked_linear_backward", "masked_linear_forward"]


@triton.jit
def _masked_gemm_kernel(
    a_ptr,  # (M, K): x, or grad_out for grad_x
    w_ptr,  # W, read as (K, N) through its strides: W^T for the forward, W for grad_x
    mask_ptr,  # bool, W's shape, read like it
    bias_ptr,  # (N,), read only when HAS_BIAS
    c_ptr,  # (M, N): y, or grad_x
    range_ptr,  # (cdiv(N, BLOCK_N), 2) int32: the band's k-tiles [lo, hi)
    M, N, K,
    stride_am, stride_ak,
    stride_wk, stride_wn,
    stride_mk, stride_mn,
    stride_bias,
    stride_cm, stride_cn,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # int64 rows: row * stride overflows int32 on large batches.
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    k_lo = tl.load(range_ptr + 2 * pid_n)
    k_hi = tl.load(range_ptr + 2 * pid_n + 1)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for kt in range(k_lo, k_hi):
        offs_k = kt * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
        k_ok = offs_k < K
        a = tl.load(
            a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
            mask=m_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        tile_ok = k_ok[:, None] & n_ok[None, :]
        keep = tl.load(mask_ptr + offs_k[:, None] * stride_mk + offs_n[None, :] * stride_mn, mask=tile_ok, other=0)
        w = tl.load(
            w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
            mask=tile_ok & (keep != 0),
            other=0.0,
        )
        acc = tl.dot(a, w, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n * stride_bias, mask=n_ok, other=0.0)
        acc += bias.to(ACC_DTYPE)[None, :]
    tl.store(
        c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn,
        acc.to(c_ptr.dtype.element_ty),
        mask=m_ok[:, None] & n_ok[None, :],
    )


@triton.jit
def _masked_linear_weight_grad_kernel(
    g_ptr,  # (B, OUT): grad_out
    x_ptr,  # (B, IN)
    mask_ptr,  # (OUT, IN) bool
    gw_ptr,  # (OUT, IN): grad_weight, written in full
    range_ptr,  # (cdiv(OUT, BLOCK_N), 2) int32: the row band's input tiles [lo, hi)
    B, OUT, IN,
    stride_gb, stride_go,
    stride_xb, stride_xi,
    stride_mo, stride_mi,
    stride_wo, stride_wi,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_o = tl.program_id(0)
    pid_i = tl.program_id(1)
    offs_o = pid_o.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_i = pid_i.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    o_ok = offs_o < OUT
    i_ok = offs_i < IN
    tile_ok = o_ok[:, None] & i_ok[None, :]
    k_lo = tl.load(range_ptr + 2 * pid_o)
    k_hi = tl.load(range_ptr + 2 * pid_o + 1)
    # A tile outside the band's range is all masked: it reduces nothing and stays 0.
    b_end = tl.where((pid_i >= k_lo) & (pid_i < k_hi), B, 0)

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC_DTYPE)
    for b0 in range(0, b_end, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
        b_ok = offs_b < B
        g = tl.load(
            g_ptr + offs_o[:, None] * stride_go + offs_b[None, :] * stride_gb,
            mask=o_ok[:, None] & b_ok[None, :],
            other=0.0,
        )
        x = tl.load(
            x_ptr + offs_b[:, None] * stride_xb + offs_i[None, :] * stride_xi,
            mask=b_ok[:, None] & i_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(g, x, acc, input_precision=INPUT_PRECISION)

    if b_end > 0:
        keep = tl.load(mask_ptr + offs_o[:, None] * stride_mo + offs_i[None, :] * stride_mi, mask=tile_ok, other=0)
        acc = tl.where(keep != 0, acc, 0.0)
    tl.store(
        gw_ptr + offs_o[:, None] * stride_wo + offs_i[None, :] * stride_wi,
        acc.to(gw_ptr.dtype.element_ty),
        mask=tile_ok,
    )


def _tile_ranges(mask: torch.Tensor, block_rows: int, block_cols: int) -> torch.Tensor:
    """Per band of ``block_rows`` rows of ``mask``, the column tiles ``[lo, hi)`` from its first
    to its last tile holding a True (``lo = hi`` for an all-False band): ``(bands, 2)`` int32."""
    rows, cols = mask.shape
    bands, tiles = triton.cdiv(rows, block_rows), triton.cdiv(cols, block_cols)
    if mask.numel() == 0:
        return torch.zeros((bands, 2), dtype=torch.int32, device=mask.device)
    padded = mask.new_zeros((bands * block_rows, tiles * block_cols))
    padded[:rows, :cols] = mask
    occupied = padded.view(bands, block_rows, tiles, block_cols).any(3).any(1)  # (bands, tiles)
    index = torch.arange(tiles, device=mask.device)
    lo = torch.where(occupied, index, tiles).amin(1)
    hi = torch.maximum(torch.where(occupied, index + 1, 0).amax(1), lo)
    return torch.stack((lo, hi), 1).to(torch.int32)


def _meta(x: torch.Tensor) -> dict:
    """Accumulator, dot precision and blocks for inputs like ``x``."""
    interpret = x.device.type != "cuda"
    # The interpreter computes dots exactly; on GPU float32 dots use TF32 tensor cores exactly
    # when torch's own matmuls do (torch.backends.cuda.matmul.allow_tf32). Non-float32
    # inputs ignore the setting.
    exact = interpret or x.dtype == torch.float64 or not torch.backends.cuda.matmul.allow_tf32
    # The interpreter's cost grows with the block: the smallest tl.dot takes there.
    big, small = (16, 16) if interpret else (64, 32)
    return dict(
        ACC_DTYPE=tl.float64 if x.dtype == torch.float64 else tl.float32,
        INPUT_PRECISION="ieee" if exact else "tf32",
        BLOCK_M=big,
        BLOCK_N=big,
        BLOCK_K=small,
    )


def _gemm(a, weight, mask, bias, c, *, transposed: bool) -> None:
    """c = a (W * M)^T + bias (forward), or c = a (W * M) (``transposed``: grad_x)."""
    meta = _meta(a)
    w_strides, m_strides = weight.stride(), mask.stride()
    if transposed:  # n runs over W's columns (inputs), k over its rows (outputs)
        ranges = _tile_ranges(mask.t(), meta["BLOCK_N"], meta["BLOCK_K"])
    else:
        ranges = _tile_ranges(mask, meta["BLOCK_N"], meta["BLOCK_K"])
        w_strides, m_strides = w_strides[::-1], m_strides[::-1]
    M, K = a.shape
    N = c.shape[1]
    grid = (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))
    _masked_gemm_kernel[grid](
        a, weight, mask, bias if bias is not None else c, c, ranges,
        M, N, K,
        *a.stride(),
        *w_strides,
        *m_strides,
        bias.stride(0) if bias is not None else 0,
        *c.stride(),
        HAS_BIAS=bias is not None,
        **meta,
        num_warps=4,
    )


def _weight_grad(grad_out: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """grad_weight, contiguous, exactly 0 wherever the mask is False."""
    meta = _meta(x)
    out, inp = mask.shape
    grad_w = torch.empty((out, inp), dtype=x.dtype, device=x.device)
    if grad_w.numel() == 0:
        return grad_w
    ranges = _tile_ranges(mask, meta["BLOCK_N"], meta["BLOCK_K"])
    grid = (triton.cdiv(out, meta["BLOCK_N"]), triton.cdiv(inp, meta["BLOCK_K"]))
    _masked_linear_weight_grad_kernel[grid](
        grad_out, x, mask, grad_w, ranges,
        x.shape[0], out, inp,
        *grad_out.stride(),
        *x.stride(),
        *mask.stride(),
        *grad_w.stride(),
        ACC_DTYPE=meta["ACC_DTYPE"],
        INPUT_PRECISION=meta["INPUT_PRECISION"],
        BLOCK_B=meta["BLOCK_M"],
        BLOCK_N=meta["BLOCK_N"],
        BLOCK_K=meta["BLOCK_K"],
        num_warps=4,
    )
    return grad_w


def masked_linear_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor
) -> torch.Tensor:
    """``y = x (W * M)^T + bias``, ``(B, out_features)`` contiguous; arguments already
    checked by :func:`fastgen.ops.masked_linear`."""
    y = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    if y.numel() > 0:
        _gemm(x, weight, mask, bias, y, transposed=False)
    return y


def masked_linear_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, output_mask: list[bool]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight, grad_bias), each contiguous, or empty where ``output_mask`` is False."""
    need_x, need_weight, need_bias = output_mask
    grad_x = x.new_empty(0)
    if need_x:
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if grad_x.numel() > 0:
            _gemm(grad_out, weight, mask, None, grad_x, transposed=True)
    grad_weight = _weight_grad(grad_out, x, mask) if need_weight else x.new_empty(0)
    grad_bias = grad_out.sum(0) if need_bias else x.new_empty(0)
    return grad_x, grad_weight, grad_bias
