"""Triton kernels of the element-wise flow ops: :func:`fastgen.ops.affine_coupling`,
:func:`fastgen.ops.actnorm` and :func:`fastgen.ops.logit_transform`.

Each op is one forward kernel and one backward kernel, one program per (example, block of
its elements) (ActNorm: per (example, block of channels, block of the spatial positions)).
Per-example log-determinants and ActNorm's per-channel parameter gradients are partial
sums per program, written to a buffer and added by the launcher (deterministic, no
atomics). The coupling reads shift and log-scale only where the mask transforms.
Arithmetic is in float32 (float64 for float64 inputs); the sigmoid and its logarithm are
computed from exp(-|z|), finite for every z.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = [
    "actnorm_backward",
    "actnorm_forward",
    "affine_coupling_backward",
    "affine_coupling_forward",
    "logit_transform_backward",
    "logit_transform_forward",
]

_SCALES = {"exp": 0, "sigmoid": 1}
_ADDITIVE = 2


@triton.jit
def _sigmoid_parts(z):
    """(sigmoid(z), sigmoid(-z), log(1 + exp(-|z|))); log sigmoid(z) is min(z, 0) minus the
    third."""
    e = tl.exp(-tl.abs(z))
    d = 1.0 + e
    inv = 1.0 / d
    nonneg = z >= 0
    s = tl.where(nonneg, inv, e * inv)
    s_neg = tl.where(nonneg, e * inv, inv)
    # log1p(e) = log(d) + (e - (d - 1)) / d: the second term restores what rounding 1 + e lost.
    log1p_e = tl.log(d) + (e - (d - 1.0)) * inv
    return s, s_neg, log1p_e


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` if each example ``t[b]`` is contiguous (its batch stride may be anything), else a copy."""
    return t if t.shape[0] == 0 or t[0].is_contiguous() else t.contiguous()


def _acc(x: torch.Tensor):
    return (tl.float64, torch.float64) if x.dtype == torch.float64 else (tl.float32, torch.float32)


def _block(n: int, largest: int = 1024) -> int:
    return max(16, min(largest, triton.next_power_of_2(max(n, 1))))


# --------------------------------------------------------------------------- affine coupling


@triton.jit
def _coupling_forward_kernel(
    x_ptr, t_ptr, l_ptr, keep_ptr, y_ptr, partial_ptr,
    D, n_blocks, stride_x, stride_t, stride_l,
    SCALE: tl.constexpr, INVERSE: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    ok = offs < D
    x = tl.load(x_ptr + b * stride_x + offs, mask=ok, other=0.0).to(ACC)
    if HAS_MASK:
        on = ok & (tl.load(keep_ptr + offs, mask=ok, other=1) == 0)
    else:
        on = ok
    t = tl.load(t_ptr + b * stride_t + offs, mask=on, other=0.0).to(ACC)
    if SCALE == 2:  # additive
        term = tl.zeros((BLOCK,), dtype=ACC)
        if INVERSE:
            y = x - t
        else:
            y = x + t
    else:
        log_scale = tl.load(l_ptr + b * stride_l + offs, mask=on, other=0.0).to(ACC)
        if SCALE == 0:  # exp
            if INVERSE:
                y = (x - t) * tl.exp(-log_scale)
                term = -log_scale
            else:
                y = x * tl.exp(log_scale) + t
                term = log_scale
        else:  # sigmoid(log_scale + 2)
            z = log_scale + 2.0
            s, s_neg, log1p_e = _sigmoid_parts(z)
            log_s = tl.minimum(z, 0.0) - log1p_e
            if INVERSE:
                y = (x - t) * (1.0 + tl.exp(-z))  # 1 / s
                term = -log_s
            else:
                y = x * s + t
                term = log_s
    y = tl.where(on, y, x)
    tl.store(y_ptr + b * D + offs, y.to(y_ptr.dtype.element_ty), mask=ok)
    tl.store(partial_ptr + b * n_blocks + blk, tl.sum(tl.where(on, term, 0.0), axis=0))


@triton.jit
def _coupling_backward_kernel(
    gy_ptr, gld_ptr, x_ptr, t_ptr, l_ptr, keep_ptr, gx_ptr, gt_ptr, gl_ptr,
    D, stride_gy, stride_x, stride_t, stride_l,
    SCALE: tl.constexpr, INVERSE: tl.constexpr, HAS_MASK: tl.constexpr,
    NEED_X: tl.constexpr, NEED_T: tl.constexpr, NEED_L: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < D
    gy = tl.load(gy_ptr + b * stride_gy + offs, mask=ok, other=0.0).to(ACC)
    if HAS_MASK:
        on = ok & (tl.load(keep_ptr + offs, mask=ok, other=1) == 0)
    else:
        on = ok
    if SCALE == 2:
        gx = gy
        if INVERSE:
            gt = -gy
        else:
            gt = gy
        gl = tl.zeros((BLOCK,), dtype=ACC)
    else:
        gld = tl.load(gld_ptr + b).to(ACC)
        x = tl.load(x_ptr + b * stride_x + offs, mask=on, other=0.0).to(ACC)
        log_scale = tl.load(l_ptr + b * stride_l + offs, mask=on, other=0.0).to(ACC)
        if INVERSE:
            t = tl.load(t_ptr + b * stride_t + offs, mask=on, other=0.0).to(ACC)
            if SCALE == 0:
                r = tl.exp(-log_scale)
                gx = gy * r
                gl = -(gy * ((x - t) * r) + gld)
            else:
                z = log_scale + 2.0
                s, s_neg, log1p_e = _sigmoid_parts(z)
                r = 1.0 + tl.exp(-z)  # 1 / s
                gx = gy * r
                gl = -s_neg * (gy * ((x - t) * r) + gld)
            gt = -gx
        else:
            if SCALE == 0:
                s = tl.exp(log_scale)
                gl = gy * x * s + gld
            else:
                s, s_neg, log1p_e = _sigmoid_parts(log_scale + 2.0)
                gl = s_neg * (gy * x * s + gld)
            gx = gy * s
            gt = gy
    # Pass-through elements: gx = gy, nothing to their shift and log-scale.
    if NEED_X:
        tl.store(gx_ptr + b * D + offs, tl.where(on, gx, gy).to(gx_ptr.dtype.element_ty), mask=ok)
    if NEED_T:
        tl.store(gt_ptr + b * D + offs, tl.where(on, gt, 0.0).to(gt_ptr.dtype.element_ty), mask=ok)
    if NEED_L:
        tl.store(gl_ptr + b * D + offs, tl.where(on, gl, 0.0).to(gl_ptr.dtype.element_ty), mask=ok)


def _coupling_inputs(x, shift, log_scale, mask):
    x, shift = _rows(x), _rows(shift)
    log_scale = _rows(log_scale) if log_scale is not None else None
    # The mask broadcast to one example, as bytes (nonzero = pass through).
    keep = mask.ne(0).expand(x.shape[1:]).to(torch.uint8).reshape(-1) if mask is not None else None
    return x, shift, log_scale, keep


def affine_coupling_forward(x, shift, log_scale, mask, scale, inverse):
    x, shift, log_scale, keep = _coupling_inputs(x, shift, log_scale, mask)
    B, D = x.shape[0], math.prod(x.shape[1:])
    acc, acc_torch = _acc(x)
    BLOCK = _block(D)
    n_blocks = triton.cdiv(D, BLOCK)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    partial = torch.empty((B, n_blocks), dtype=acc_torch, device=x.device)
    if B > 0 and D > 0:
        l = log_scale if log_scale is not None else shift  # never read for additive coupling  # noqa: E741
        _coupling_forward_kernel[(B, n_blocks)](
            x, shift, l, keep if keep is not None else x, y, partial,
            D, n_blocks, x.stride(0), shift.stride(0), l.stride(0),
            SCALE=_SCALES[scale] if log_scale is not None else _ADDITIVE, INVERSE=inverse,
            HAS_MASK=keep is not None, ACC=acc, BLOCK=BLOCK,
        )
    return y, partial.sum(1).to(x.dtype)


def affine_coupling_backward(grad_y, grad_logdet, x, shift, log_scale, mask, scale, inverse, output_mask):
    x, shift, log_scale, keep = _coupling_inputs(x, shift, log_scale, mask)
    grad_y, grad_logdet = _rows(grad_y), grad_logdet.contiguous()
    B, D = x.shape[0], math.prod(x.shape[1:])
    need = [output_mask[0], output_mask[1], output_mask[2] and log_scale is not None]
    # Distinct empty tensors for the gradients not requested: outputs must not alias.
    grads = [torch.empty(x.shape, dtype=x.dtype, device=x.device) if n else x.new_empty(0) for n in need]
    if any(need) and B > 0 and D > 0:
        acc, _ = _acc(x)
        BLOCK = _block(D)
        l = log_scale if log_scale is not None else shift  # noqa: E741
        _coupling_backward_kernel[(B, triton.cdiv(D, BLOCK))](
            grad_y, grad_logdet, x, shift, l, keep if keep is not None else x,
            *(g if n else x for g, n in zip(grads, need)),
            D, grad_y.stride(0), x.stride(0), shift.stride(0), l.stride(0),
            SCALE=_SCALES[scale] if log_scale is not None else _ADDITIVE, INVERSE=inverse,
            HAS_MASK=keep is not None, NEED_X=need[0], NEED_T=need[1], NEED_L=need[2], ACC=acc, BLOCK=BLOCK,
        )
    return tuple(grads)


# ----------------------------------------------------------------------------------- ActNorm


@triton.jit
def _actnorm_kernel(
    x_ptr, loc_ptr, l_ptr, g_ptr, out_ptr, partial_ptr,
    C, N, n_nblocks, stride_x, stride_g,
    INVERSE: tl.constexpr, BACKWARD: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """x as (B, C, N). Forward: out = y. Backward: out = grad_x from g = grad_y, and per
    channel the sums of g and of g * (x + loc) (forward map) or g * x (inverse map) over this
    program's positions into partial (B, n_nblocks, 2, C)."""
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    nblk = tl.program_id(2)
    offs_n = nblk * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = offs_c < C
    ok = c_ok[:, None] & (offs_n < N)[None, :]
    idx = offs_c[:, None] * N + offs_n[None, :]
    loc = tl.load(loc_ptr + offs_c, mask=c_ok, other=0.0).to(ACC)[:, None]
    log_scale = tl.load(l_ptr + offs_c, mask=c_ok, other=0.0).to(ACC)[:, None]
    if INVERSE:
        s = tl.exp(-log_scale)
    else:
        s = tl.exp(log_scale)
    x = tl.load(x_ptr + b * stride_x + idx, mask=ok, other=0.0).to(ACC)
    if BACKWARD:
        g = tl.load(g_ptr + b * stride_g + idx, mask=ok, other=0.0).to(ACC)
        tl.store(out_ptr + b * C * N + idx, (g * s).to(out_ptr.dtype.element_ty), mask=ok)
        if INVERSE:
            gx = g * x
        else:
            gx = g * (x + loc)
        base = partial_ptr + (b * n_nblocks + nblk) * 2 * C
        tl.store(base + offs_c, tl.sum(g, axis=1), mask=c_ok)
        tl.store(base + C + offs_c, tl.sum(gx, axis=1), mask=c_ok)
    else:
        if INVERSE:
            y = x * s - loc
        else:
            y = (x + loc) * s
        tl.store(out_ptr + b * C * N + idx, y.to(out_ptr.dtype.element_ty), mask=ok)


def _actnorm_launch(x, loc, log_scale, inverse, out, grad_y=None, partial=None):
    B, C = x.shape[:2]
    N = math.prod(x.shape[2:])
    BLOCK_N = min(1024, triton.next_power_of_2(N))
    BLOCK_C = max(1, min(triton.next_power_of_2(C), 1024 // BLOCK_N))
    grid = (B, triton.cdiv(C, BLOCK_C), triton.cdiv(N, BLOCK_N))
    if B > 0 and C > 0 and N > 0:
        _actnorm_kernel[grid](
            x, loc.contiguous(), log_scale.contiguous(), grad_y if grad_y is not None else x, out,
            partial if partial is not None else out,
            C, N, grid[2], x.stride(0), grad_y.stride(0) if grad_y is not None else 0,
            INVERSE=inverse, BACKWARD=grad_y is not None, ACC=_acc(x)[0], BLOCK_C=BLOCK_C, BLOCK_N=BLOCK_N,
        )
    return grid[2]


def actnorm_forward(x, loc, log_scale, inverse):
    x = _rows(x)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _actnorm_launch(x, loc, log_scale, inverse, y)
    n = math.prod(x.shape[2:])
    logdet = (log_scale.sum() * (-n if inverse else n)).expand(x.shape[0]).contiguous()
    return y, logdet


def actnorm_backward(grad_y, grad_logdet, x, loc, log_scale, inverse, output_mask):
    x, grad_y = _rows(x), _rows(grad_y)
    B, C = x.shape[:2]
    N = math.prod(x.shape[2:])
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    n_nblocks = triton.cdiv(N, min(1024, triton.next_power_of_2(N)))
    partial = torch.zeros((B, n_nblocks, 2, C), dtype=_acc(x)[1], device=x.device)
    _actnorm_launch(x, loc, log_scale, inverse, gx, grad_y, partial)
    # forward: d loc = s sum(g), d l = s sum(g (x + loc)) + N sum(gld)   (s = exp(l))
    # inverse: d loc = -sum(g),  d l = -s sum(g x) - N sum(gld)          (s = exp(-l))
    sums = partial.sum((0, 1)).to(x.dtype)  # (2, C)
    s = torch.exp(-log_scale if inverse else log_scale)
    n_gld = grad_logdet.sum() * N
    grads = [gx, -sums[0] if inverse else s * sums[0], -(s * sums[1]) - n_gld if inverse else s * sums[1] + n_gld]
    return tuple(g if m else x.new_empty(0) for g, m in zip(grads, output_mask))


# ----------------------------------------------------------------------------- logit transform


@triton.jit
def _logit_kernel(
    x_ptr, gy_ptr, gld_ptr, alpha_ptr, out_ptr, partial_ptr, D, n_blocks, stride_x, stride_gy,
    INVERSE: tl.constexpr, BACKWARD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """Forward: out = y and the block's sum of log-derivatives (without the constant
    +-log(1 - 2 alpha)) into partial (B, n_blocks). Backward: out = grad_x."""
    b = tl.program_id(0)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    ok = offs < D
    x = tl.load(x_ptr + b * stride_x + offs, mask=ok, other=0.5).to(ACC)
    a = tl.load(alpha_ptr)
    scale = 1.0 - 2.0 * a
    if INVERSE:
        s, s_neg, log1p_e = _sigmoid_parts(x)
    else:
        p = a + scale * x
        q = a + scale * (1.0 - x)  # 1 - p without its cancellation
    if BACKWARD:
        gy = tl.load(gy_ptr + b * stride_gy + offs, mask=ok, other=0.0).to(ACC)
        gld = tl.load(gld_ptr + b).to(ACC)
        if INVERSE:
            gx = gy * (s * s_neg) / scale + gld * (s_neg - s)
        else:
            gx = scale / (p * q) * (gy - gld * (q - p))
        tl.store(out_ptr + b * D + offs, gx.to(out_ptr.dtype.element_ty), mask=ok)
    else:
        if INVERSE:
            y = (s - a) / scale
            term = -tl.abs(x) - 2.0 * log1p_e  # log sigma + log(1 - sigma)
        else:
            lp = tl.log(p)
            lq = tl.log(q)
            y = lp - lq
            term = -(lp + lq)
        tl.store(out_ptr + b * D + offs, y.to(out_ptr.dtype.element_ty), mask=ok)
        tl.store(partial_ptr + b * n_blocks + blk, tl.sum(tl.where(ok, term, 0.0), axis=0))


def _logit_launch(x, alpha, inverse, out, partial=None, grad_y=None, grad_logdet=None):
    B, D = x.shape[0], math.prod(x.shape[1:])
    BLOCK = _block(D)
    n_blocks = triton.cdiv(D, BLOCK)
    if B > 0 and D > 0:
        dummy = x
        # alpha as a tensor: a Python float argument would reach the kernel as float32.
        alpha_t = torch.tensor([alpha], dtype=_acc(x)[1], device=x.device)
        _logit_kernel[(B, n_blocks)](
            x, grad_y if grad_y is not None else dummy, grad_logdet if grad_logdet is not None else dummy, alpha_t,
            out, partial if partial is not None else dummy, D, n_blocks, x.stride(0),
            grad_y.stride(0) if grad_y is not None else 0,
            INVERSE=inverse, BACKWARD=grad_y is not None, ACC=_acc(x)[0], BLOCK=BLOCK,
        )
    return n_blocks


def logit_transform_forward(x, alpha, inverse):
    x = _rows(x)
    B, D = x.shape[0], math.prod(x.shape[1:])
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    partial = torch.zeros((B, triton.cdiv(D, _block(D))), dtype=_acc(x)[1], device=x.device)
    _logit_launch(x, alpha, inverse, y, partial)
    # Every element's constant log(1 - 2 alpha), once per example.
    constant = D * math.log1p(-2 * alpha) * (-1 if inverse else 1)
    return y, (partial.sum(1) + constant).to(x.dtype)


def logit_transform_backward(grad_y, grad_logdet, x, alpha, inverse):
    x, grad_y = _rows(x), _rows(grad_y)
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _logit_launch(x, alpha, inverse, gx, grad_y=grad_y, grad_logdet=grad_logdet.contiguous())
    return gx
