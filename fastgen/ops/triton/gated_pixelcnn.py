"""Triton path of the Gated PixelCNN layer: the convolutions and 1x1s are cuDNN/cuBLAS
calls (dense, nothing to skip), the element-wise work around them is fused into Triton
kernels: one pass adds the per-example bias and applies the gate, one pass turns the
gate's output gradient into its pre-activations' gradient.

Tensors are (B, 2p, N) contiguous (N = H * W); program (b * p + ch, block of N)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BLOCK = 256


@triton.jit
def _gate_forward_kernel(pre_ptr, cond_ptr, out_ptr, P, N, HAS_COND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # b * P + channel
    b, ch = row // P, row % P
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    keep = cols < N
    a_ptr = pre_ptr + (b * 2 * P + ch) * N + cols
    s_ptr = a_ptr + P * N
    a = tl.load(a_ptr, mask=keep).to(ACC)
    s = tl.load(s_ptr, mask=keep).to(ACC)
    if HAS_COND:
        a += tl.load(cond_ptr + b * 2 * P + ch).to(ACC)
        s += tl.load(cond_ptr + b * 2 * P + P + ch).to(ACC)
        tl.store(a_ptr, a.to(pre_ptr.dtype.element_ty), mask=keep)
        tl.store(s_ptr, s.to(pre_ptr.dtype.element_ty), mask=keep)
    t = 2.0 / (1.0 + tl.exp(-2.0 * a)) - 1.0  # tanh
    sig = 1.0 / (1.0 + tl.exp(-s))
    tl.store(out_ptr + row * N + cols, (t * sig).to(out_ptr.dtype.element_ty), mask=keep)


@triton.jit
def _gate_backward_kernel(grad_ptr, pre_ptr, out_ptr, P, N, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    b, ch = row // P, row % P
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    keep = cols < N
    offset = (b * 2 * P + ch) * N + cols
    a = tl.load(pre_ptr + offset, mask=keep).to(ACC)
    s = tl.load(pre_ptr + offset + P * N, mask=keep).to(ACC)
    g = tl.load(grad_ptr + row * N + cols, mask=keep).to(ACC)
    t = 2.0 / (1.0 + tl.exp(-2.0 * a)) - 1.0
    sig = 1.0 / (1.0 + tl.exp(-s))
    gs = g * sig
    tl.store(out_ptr + offset, (gs * (1.0 - t * t)).to(out_ptr.dtype.element_ty), mask=keep)
    tl.store(out_ptr + offset + P * N, (gs * t * (1.0 - sig)).to(out_ptr.dtype.element_ty), mask=keep)


def _acc(t: torch.Tensor):
    """Arithmetic in float32, or float64 for float64 tensors."""
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _gate(pre: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """pre (B, 2p, N) contiguous, cond added to it in place; returns the gate (B, p, N)."""
    B, two_p, N = pre.shape
    p = two_p // 2
    out = pre.new_empty((B, p, N))
    if out.numel():
        _gate_forward_kernel[(B * p, triton.cdiv(N, BLOCK))](
            pre, cond if cond is not None else pre, out, p, N, HAS_COND=cond is not None, ACC=_acc(pre), BLOCK=BLOCK
        )
    return out


def _gate_grad(grad: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    B, p, N = grad.shape
    out = torch.empty_like(pre)
    if out.numel():
        _gate_backward_kernel[(B * p, triton.cdiv(N, BLOCK))](grad.contiguous(), pre, out, p, N, ACC=_acc(pre), BLOCK=BLOCK)
    return out


def _pads(k: int, first: bool):
    c = k // 2
    return ((c, c, c + 1, 0) if first else (c, c, c, 0)), (c, 0, 0, 0)


def _masks(p, c_in, s, first, n, like):
    from ..gated_pixelcnn import gated_pixelcnn_masks

    return gated_pixelcnn_masks(p, c_in, s, first_layer=first, color_channels=n, dtype=like.dtype, device=like.device)


def _h_weight(h_weight, centre):
    c = h_weight.shape[3] - 1
    mask = torch.ones_like(h_weight)
    mask[:, :, 0, c] = centre
    return h_weight * mask


def gated_pixelcnn_forward(v, h, v_weight, v_bias, h_weight, h_bias, link_weight, res_weight, res_bias, skip_weight,
                           skip_bias, v_cond, h_cond, first, n):
    B, c_in, H, W = v.shape
    two_p, k = v_weight.shape[0], v_weight.shape[3]
    p, s = two_p // 2, 0 if skip_weight is None else skip_weight.shape[0]
    centre, res_mask, skip_mask = _masks(p, c_in, s, first, n, v_weight)
    v_pad, h_pad = _pads(k, first)
    # The first layer's padding puts c + 1 rows on top: drop the last row of the input.
    v_in = v[:, :, : H - 1] if first else v
    v_pre = F.conv2d(F.pad(v_in, v_pad), v_weight, v_bias).contiguous()
    v_out = _gate(v_pre.view(B, two_p, H * W), v_cond)
    h_pre = F.conv2d(F.pad(h, h_pad), _h_weight(h_weight, centre), h_bias).view(B, two_p, H * W)
    h_pre = torch.baddbmm(h_pre, link_weight.expand(B, two_p, two_p), v_pre.view(B, two_p, H * W)).contiguous()
    g = _gate(h_pre, h_cond)
    h_out = torch.matmul(res_weight * res_mask, g) + res_bias[:, None]
    if not first:
        h_out = h_out + h.reshape(B, p, H * W)
    skip = v.new_empty(0)
    if skip_weight is not None:
        skip = (torch.matmul(skip_weight * skip_mask, g) + skip_bias[:, None]).view(B, s, H, W)
    return (v_out.view(B, p, H, W), h_out.view(B, p, H, W), skip, v_pre.view(B, two_p, H, W),
            h_pre.view(B, two_p, H, W))


def _conv_grads(grad, x, weight, pad, rows, need_x, need_w):
    """Gradients of F.conv2d(F.pad(x[:, :, :rows], pad), weight) for x and weight."""
    xp = F.pad(x[:, :, :rows], pad)
    gx, gw, _ = torch.ops.aten.convolution_backward(
        grad, xp, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [need_x, need_w, False]
    )
    if gx is not None:
        left, right, top, bottom = pad
        gx = gx[:, :, top : gx.shape[2] - bottom, left : gx.shape[3] - right]
        gx = F.pad(gx, (0, 0, 0, x.shape[2] - rows))
    return gx, gw


def gated_pixelcnn_backward(grad_v_out, grad_h_out, grad_skip, v, h, v_pre, h_pre, v_weight, h_weight, link_weight,
                            res_weight, skip_weight, first, n, need):
    B, c_in, H, W = v.shape
    two_p = v_weight.shape[0]
    p, s, N = two_p // 2, 0 if skip_weight is None else skip_weight.shape[0], H * W
    centre, res_mask, skip_mask = _masks(p, c_in, s, first, n, v_weight)
    v_pre, h_pre = v_pre.contiguous().view(B, two_p, N), h_pre.contiguous().view(B, two_p, N)
    gho = grad_h_out.reshape(B, p, N)
    dg = torch.matmul((res_weight * res_mask).T, gho)
    if skip_weight is not None:
        gs = grad_skip.reshape(B, s, N)
        dg = dg + torch.matmul((skip_weight * skip_mask).T, gs)
    dH = _gate_grad(dg, h_pre)
    dV = torch.baddbmm(_gate_grad(grad_v_out.reshape(B, p, N), v_pre), link_weight.T.expand(B, two_p, two_p), dH)
    dV4, dH4 = dV.view(B, two_p, H, W), dH.view(B, two_p, H, W)
    v_pad, h_pad = _pads(v_weight.shape[3], first)
    empty = v.new_empty(0)
    grads = [empty.clone() for _ in range(13)]
    rows = H - 1 if first else H
    if (need[0] or need[2]) and rows > 0:
        gx, gw = _conv_grads(dV4, v, v_weight, v_pad, rows, need[0], need[2])
        grads[0] = gx if need[0] else grads[0]
        grads[2] = gw if need[2] else grads[2]
    elif need[0] or need[2]:  # one row: the first layer's vertical stack sees nothing
        grads[0] = torch.zeros_like(v) if need[0] else grads[0]
        grads[2] = torch.zeros_like(v_weight) if need[2] else grads[2]
    if need[1] or need[4]:
        gx, gw = _conv_grads(dH4, h, _h_weight(h_weight, centre), h_pad, H, need[1], need[4])
        if need[1]:
            grads[1] = gx if first else gx + grad_h_out
        if need[4]:
            grads[4] = _h_weight(gw, centre)
    if need[3] or need[11]:
        cond = dV.sum(2)
        grads[11] = cond if need[11] else grads[11]
        grads[3] = cond.sum(0) if need[3] else grads[3]
    if need[5] or need[12]:
        cond = dH.sum(2)
        grads[12] = cond if need[12] else grads[12]
        grads[5] = cond.sum(0) if need[5] else grads[5]
    if need[6]:
        grads[6] = torch.matmul(dH, v_pre.transpose(1, 2)).sum(0)
    if need[7] or need[9]:
        g = torch.tanh(h_pre[:, :p]) * torch.sigmoid(h_pre[:, p:])
        if need[7]:
            grads[7] = torch.matmul(gho, g.transpose(1, 2)).sum(0) * res_mask
        if need[9] and skip_weight is not None:
            grads[9] = torch.matmul(gs, g.transpose(1, 2)).sum(0) * skip_mask
    if need[8]:
        grads[8] = gho.sum((0, 2))
    if need[10] and skip_weight is not None:
        grads[10] = gs.sum((0, 2))
    return grads
