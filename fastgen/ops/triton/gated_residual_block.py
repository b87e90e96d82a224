"""Triton kernels of :func:`fastgen.ops.gated_residual_block` and its step.

- ``_block_kernel``: a program owns batch ``b``, ``BLOCK_T`` times and ``BLOCK_O`` rows of
  the stacked 1x1 output ``[h_out; skip]`` (R + S rows). For each ``BLOCK_G`` chunk of gate
  channels it computes both gate halves of z as implicit GEMMs over the taps (time-shifted,
  masked loads of h: no padded copy), gates them in registers, and accumulates the stacked
  1x1 GEMM ``[W_r; W_s][rows, chunk] @ g``: z and g never reach memory. With ``BACKWARD`` the
  program instead owns ``BLOCK_G`` gate channels, recomputes z, reduces
  ``dg = W_r^T dh_out + W_s^T dskip`` over all rows and writes g and dz = d(gate)/dz * dg;
  the launcher turns them into the weight, bias, cond and h gradients with GEMMs.
- The step reads the window of the conv's inputs from the state (the reference's copy, for
  a bit-identical state) and runs ``_block_kernel`` on it as a length-K sequence.

Accumulation is in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

__all__ = ["gated_residual_block_backward", "gated_residual_block_forward", "gated_residual_block_step"]


@triton.jit
def _z_chunk(h_ptr, w_ptr, cond_ptr, cb_ptr, b, offs_t, t_ok, g_idx, g_ok, half_off,
             R, T, DILATION, stride_hb, stride_hr, stride_ht, stride_wo, stride_wr, stride_wk,
             stride_cb, stride_cc, stride_ct,
             K: tl.constexpr, HAS_COND: tl.constexpr, COND_FULL: tl.constexpr, HAS_BIAS: tl.constexpr,
             ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_T: tl.constexpr,
             BLOCK_R: tl.constexpr):
    """z rows half_off + g_idx (BLOCK_G, BLOCK_T) at times offs_t."""
    acc = tl.zeros((BLOCK_G, BLOCK_T), dtype=ACC)
    for k in tl.static_range(K):
        t_in = offs_t - (K - 1 - k) * DILATION
        in_ok = t_ok & (t_in >= 0)
        for r0 in range(0, R, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            r_ok = offs_r < R
            w = tl.load(w_ptr + (half_off + g_idx)[:, None] * stride_wo + offs_r[None, :] * stride_wr + k * stride_wk,
                        mask=g_ok[:, None] & r_ok[None, :], other=0.0).to(ACC)
            x = tl.load(h_ptr + b * stride_hb + offs_r[:, None] * stride_hr + t_in[None, :] * stride_ht,
                        mask=r_ok[:, None] & in_ok[None, :], other=0.0).to(ACC)
            acc = tl.dot(w, x, acc, input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(cb_ptr + half_off + g_idx, mask=g_ok, other=0.0).to(ACC)[:, None]
    if HAS_COND:
        if COND_FULL:
            c_t = offs_t
        else:
            c_t = offs_t * 0
        acc += tl.load(cond_ptr + b * stride_cb + (half_off + g_idx)[:, None] * stride_cc + c_t[None, :] * stride_ct,
                       mask=g_ok[:, None] & t_ok[None, :], other=0.0).to(ACC)
    return acc


@triton.jit
def _gates(h_ptr, w_ptr, cond_ptr, cb_ptr, b, offs_t, t_ok, g_idx, g_ok, R, G, T, DILATION,
           stride_hb, stride_hr, stride_ht, stride_wo, stride_wr, stride_wk, stride_cb, stride_cc, stride_ct,
           K: tl.constexpr, HAS_COND: tl.constexpr, COND_FULL: tl.constexpr, HAS_BIAS: tl.constexpr,
           ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_T: tl.constexpr,
           BLOCK_R: tl.constexpr):
    """(tanh(z[g_idx]), sigmoid(z[G + g_idx])), each (BLOCK_G, BLOCK_T), at times offs_t."""
    za = _z_chunk(h_ptr, w_ptr, cond_ptr, cb_ptr, b, offs_t, t_ok, g_idx, g_ok, 0, R, T, DILATION,
                  stride_hb, stride_hr, stride_ht, stride_wo, stride_wr, stride_wk, stride_cb, stride_cc,
                  stride_ct, K, HAS_COND, COND_FULL, HAS_BIAS, ACC, PREC, BLOCK_G, BLOCK_T, BLOCK_R)
    zb = _z_chunk(h_ptr, w_ptr, cond_ptr, cb_ptr, b, offs_t, t_ok, g_idx, g_ok, G, R, T, DILATION,
                  stride_hb, stride_hr, stride_ht, stride_wo, stride_wr, stride_wk, stride_cb, stride_cc,
                  stride_ct, K, HAS_COND, COND_FULL, HAS_BIAS, ACC, PREC, BLOCK_G, BLOCK_T, BLOCK_R)
    return 2.0 * tl.sigmoid(2.0 * za) - 1.0, tl.sigmoid(zb)  # tanh(a) = 2 sigmoid(2a) - 1


@triton.jit
def _block_kernel(
    h_ptr, w_ptr, cb_ptr, cond_ptr, rw_ptr, sw_ptr, rb_ptr, sb_ptr,
    out_h_ptr, out_s_ptr,  # forward: h_out, skip; backward: dh_out, skip grads (inputs)
    g_out_ptr, dz_ptr,  # backward outputs: g (B, G, T), dz (B, 2G, T)
    R, G, S, T, DILATION,
    stride_hb, stride_hr, stride_ht,
    stride_wo, stride_wr, stride_wk,
    stride_cb, stride_cc, stride_ct,
    stride_rwo, stride_rwg, stride_swo, stride_swg,
    stride_ohb, stride_ohr, stride_oht,
    stride_osb, stride_oss, stride_ost,
    K: tl.constexpr, HAS_COND: tl.constexpr, COND_FULL: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RB: tl.constexpr, HAS_SB: tl.constexpr, BACKWARD: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr,
):
    b = tl.program_id(0)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = offs_t < T
    if BACKWARD:
        g_idx = tl.program_id(2) * BLOCK_G + tl.arange(0, BLOCK_G)
        g_ok = g_idx < G
        ta, sb = _gates(h_ptr, w_ptr, cond_ptr, cb_ptr, b, offs_t, t_ok, g_idx, g_ok, R, G, T, DILATION,
                        stride_hb, stride_hr, stride_ht, stride_wo, stride_wr, stride_wk, stride_cb, stride_cc,
                        stride_ct, K, HAS_COND, COND_FULL, HAS_BIAS, ACC, PREC, BLOCK_G, BLOCK_T, BLOCK_R)
        dg = tl.zeros((BLOCK_G, BLOCK_T), dtype=ACC)
        for o0 in range(0, R + S, BLOCK_O):
            offs_o = o0 + tl.arange(0, BLOCK_O)
            is_r = offs_o < R
            is_s = (offs_o >= R) & (offs_o < R + S)
            wt = tl.load(rw_ptr + offs_o[None, :] * stride_rwo + g_idx[:, None] * stride_rwg,
                         mask=is_r[None, :] & g_ok[:, None], other=0.0).to(ACC)
            wt += tl.load(sw_ptr + (offs_o - R)[None, :] * stride_swo + g_idx[:, None] * stride_swg,
                          mask=is_s[None, :] & g_ok[:, None], other=0.0).to(ACC)
            d = tl.load(out_h_ptr + b * stride_ohb + offs_o[:, None] * stride_ohr + offs_t[None, :] * stride_oht,
                        mask=is_r[:, None] & t_ok[None, :], other=0.0).to(ACC)
            d += tl.load(out_s_ptr + b * stride_osb + (offs_o - R)[:, None] * stride_oss + offs_t[None, :] * stride_ost,
                         mask=is_s[:, None] & t_ok[None, :], other=0.0).to(ACC)
            dg = tl.dot(wt, d, dg, input_precision=PREC)
        ok = g_ok[:, None] & t_ok[None, :]
        base = b * 2 * G * T + offs_t[None, :]
        tl.store(dz_ptr + base + g_idx[:, None] * T, dg * sb * (1.0 - ta * ta), mask=ok)
        tl.store(dz_ptr + base + (G + g_idx)[:, None] * T, dg * ta * sb * (1.0 - sb), mask=ok)
        tl.store(g_out_ptr + b * G * T + g_idx[:, None] * T + offs_t[None, :], ta * sb, mask=ok)
    else:
        offs_o = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
        is_r = offs_o < R
        is_s = (offs_o >= R) & (offs_o < R + S)
        acc = tl.zeros((BLOCK_O, BLOCK_T), dtype=ACC)
        for g0 in range(0, G, BLOCK_G):
            g_idx = g0 + tl.arange(0, BLOCK_G)
            g_ok = g_idx < G
            ta, sb = _gates(h_ptr, w_ptr, cond_ptr, cb_ptr, b, offs_t, t_ok, g_idx, g_ok, R, G, T, DILATION,
                            stride_hb, stride_hr, stride_ht, stride_wo, stride_wr, stride_wk, stride_cb, stride_cc,
                            stride_ct, K, HAS_COND, COND_FULL, HAS_BIAS, ACC, PREC, BLOCK_G, BLOCK_T, BLOCK_R)
            g = ta * sb
            w1 = tl.load(rw_ptr + offs_o[:, None] * stride_rwo + g_idx[None, :] * stride_rwg,
                         mask=is_r[:, None] & g_ok[None, :], other=0.0).to(ACC)
            w1 += tl.load(sw_ptr + (offs_o - R)[:, None] * stride_swo + g_idx[None, :] * stride_swg,
                          mask=is_s[:, None] & g_ok[None, :], other=0.0).to(ACC)
            acc = tl.dot(w1, g, acc, input_precision=PREC)
        if HAS_RB:
            acc += tl.load(rb_ptr + offs_o, mask=is_r, other=0.0).to(ACC)[:, None]
        if HAS_SB:
            acc += tl.load(sb_ptr + offs_o - R, mask=is_s, other=0.0).to(ACC)[:, None]
        res_ok = is_r[:, None] & t_ok[None, :]
        acc += tl.load(h_ptr + b * stride_hb + offs_o[:, None] * stride_hr + offs_t[None, :] * stride_ht,
                       mask=res_ok, other=0.0).to(ACC)
        tl.store(out_h_ptr + b * stride_ohb + offs_o[:, None] * stride_ohr + offs_t[None, :] * stride_oht,
                 acc.to(out_h_ptr.dtype.element_ty), mask=res_ok)
        tl.store(out_s_ptr + b * stride_osb + (offs_o - R)[:, None] * stride_oss + offs_t[None, :] * stride_ost,
                 acc.to(out_s_ptr.dtype.element_ty), mask=is_s[:, None] & t_ok[None, :])


def _meta(h: torch.Tensor, R: int, G: int, S: int, T: int) -> dict:
    interpret = not h.is_cuda
    exact = interpret or h.dtype == torch.float64 or not torch.backends.cuda.matmul.allow_tf32

    def block(n: int, largest: int) -> int:
        return max(16, min(largest, triton.next_power_of_2(n)))

    big = 16 if interpret else 64
    return dict(
        ACC=tl.float64 if h.dtype == torch.float64 else tl.float32,
        PREC="ieee" if exact else "tf32",
        BLOCK_T=block(T, big), BLOCK_G=block(G, big // 2 if not interpret else 16),
        BLOCK_R=block(R, 32 if not interpret else 16), BLOCK_O=block(R + S, big),
    )


def _launch(h, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation, out_h, out_s,
            g_out=None, dz=None):
    B, R, T = h.shape
    G, S, K = conv_weight.shape[0] // 2, skip_weight.shape[0], conv_weight.shape[2]
    backward = dz is not None
    # The kernel indexes biases with unit stride.
    conv_bias, res_bias, skip_bias = (b.contiguous() if b is not None else None for b in (conv_bias, res_bias, skip_bias))
    meta = _meta(h, R, G, S, T)
    third = triton.cdiv(G, meta["BLOCK_G"]) if backward else triton.cdiv(R + S, meta["BLOCK_O"])
    grid = (B, triton.cdiv(T, meta["BLOCK_T"]), third)
    dummy = h
    c = cond if cond is not None else dummy
    cstr = c.stride() if cond is not None else (0, 0, 0)
    _block_kernel[grid](
        h, conv_weight, conv_bias if conv_bias is not None else dummy, c, res_weight, skip_weight,
        res_bias if res_bias is not None else dummy, skip_bias if skip_bias is not None else dummy,
        out_h, out_s, g_out if backward else dummy, dz if backward else dummy,
        R, G, S, T, min(dilation, max(T, 1)),
        *h.stride(), *conv_weight.stride(), *cstr, *res_weight.stride(), *skip_weight.stride(),
        *out_h.stride(), *out_s.stride(),
        K=K, HAS_COND=cond is not None, COND_FULL=cond is not None and cond.shape[2] != 1,
        HAS_BIAS=conv_bias is not None, HAS_RB=res_bias is not None, HAS_SB=skip_bias is not None,
        BACKWARD=backward, **meta,
    )


def gated_residual_block_forward(h, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation):
    B, R, T = h.shape
    h_out = torch.empty((B, R, T), dtype=h.dtype, device=h.device)
    skip = torch.empty((B, skip_weight.shape[0], T), dtype=h.dtype, device=h.device)
    _launch(h, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation, h_out, skip)
    return h_out, skip


def gated_residual_block_backward(grad_h_out, grad_skip, h, conv_weight, conv_bias, res_weight, skip_weight, cond,
                                  dilation, output_mask):
    B, R, T = h.shape
    G, K = conv_weight.shape[0] // 2, conv_weight.shape[2]
    g = torch.empty((B, G, T), dtype=h.dtype, device=h.device)
    dz = torch.empty((B, 2 * G, T), dtype=h.dtype, device=h.device)
    _launch(h, conv_weight, conv_bias, res_weight, None, skip_weight, None, cond, dilation, grad_h_out, grad_skip,
            g_out=g, dz=dz)
    L = (K - 1) * dilation
    empty = lambda: h.new_empty(0)  # noqa: E731 -- distinct tensors: outputs must not alias
    grads = [empty() for _ in range(8)]
    if output_mask[0]:
        # grad_h[t] = dh_out[t] + sum_k W_k^T dz[t + (K-1-k) d]: a correlation with the
        # flipped, transposed kernel over dz padded on the right.
        grads[0] = grad_h_out + F.conv1d(F.pad(dz, (0, L)), conv_weight.flip(2).transpose(0, 1), dilation=dilation)
    if output_mask[1]:
        grads[1] = torch.nn.grad.conv1d_weight(F.pad(h, (L, 0)), conv_weight.shape, dz, dilation=dilation)
    if output_mask[2] and conv_bias is not None:
        grads[2] = dz.sum((0, 2))
    if output_mask[3]:
        grads[3] = torch.einsum("brt,bgt->rg", grad_h_out, g)
    if output_mask[4]:
        grads[4] = grad_h_out.sum((0, 2))
    if output_mask[5]:
        grads[5] = torch.einsum("bst,bgt->sg", grad_skip, g)
    if output_mask[6]:
        grads[6] = grad_skip.sum((0, 2))
    if output_mask[7] and cond is not None:
        grads[7] = dz.clone() if cond.shape[2] != 1 else dz.sum(2, keepdim=True)
    return tuple(grads)


def gated_residual_block_step(h_t, state, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias,
                              cond_t, dilation, position):
    """One step: the window of the conv's inputs at t - (K-1)d, ..., t is read from ``state``
    (updated in place) by the reference's copy, so the state is bit-identical to it; the
    kernel then runs the block on the window as a length-K sequence with dilation 1 and the
    last column is the step's output."""
    from ..causal_conv1d import step_window

    window = step_window(h_t, state, conv_weight.shape[2], dilation, position)  # (B, R, K)
    cond = cond_t[:, :, None] if cond_t is not None else None
    h_out, skip = gated_residual_block_forward(
        window, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, 1
    )
    return h_out[:, :, -1].contiguous(), skip[:, :, -1].contiguous()
