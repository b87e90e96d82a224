"""Triton kernels of :func:`fastgen.ops.causal_conv1d` and :func:`fastgen.ops.causal_conv1d_step`.

- ``_causal_conv1d_kernel``: a program computes ``BLOCK_T`` time steps x ``BLOCK_CO``
  output channels of one (batch, group); for each tap and each ``BLOCK_CI`` chunk of the
  group's input channels it accumulates ``x[chunk, t - s_k] @ w_k[chunk, channels]``,
  where ``s_k = (K-1-k) * dilation``; reads before the start load zeros (the causal
  padding is a load mask, never a copy). With ``TRANSPOSED`` it computes the adjoint,
  which is grad_x: ``grad_out[t + s_k]`` with the weight's channel axes swapped.
- ``_causal_conv1d_weight_grad_kernel``: a program owns one tap and one
  ``BLOCK_CO x BLOCK_CI`` tile of one group's weight gradient and reduces
  ``grad_out[channels, t] @ x[t - s_k, chunk]`` over a range of (batch, time) steps;
  the ranges' partial sums are added afterwards (deterministic, unlike atomics).
- ``_causal_conv1d_depthwise_kernel`` and ``_causal_conv1d_depthwise_weight_grad_kernel``:
  one input channel per group (depthwise), where a dot's tiles would be all but one lane
  empty: a program computes ``BLOCK_T`` steps of one (batch, channel) row as a sum over the
  taps of elementwise products (forward, and grad_x of plain depthwise), or reduces one
  (channel, tap) of the weight gradient over all (batch, time) steps.
- ``_causal_conv1d_step_kernel`` and ``_state_update_kernel``: the one-step form. The first
  gathers each output's ``K`` inputs (the state's taps and ``x_t``) and reduces them; the
  second, launched after it so that no program reads a state another has updated, shifts
  the state (shift register) or writes ``x_t`` into its ring slot.

Accumulation is in float32 (float64 for float64 inputs). Inputs may have any strides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["causal_conv1d_backward", "causal_conv1d_forward", "causal_conv1d_step"]


@triton.jit
def _tap_source(offs_t, t_ok, k, T, K, DILATION, TRANSPOSED: tl.constexpr):
    """The input times tap k reads for outputs offs_t, and which of them lie in [0, T): t - s_k
    (forward), or t + s_k (TRANSPOSED: the input gradient reads grad_out ahead)."""
    shift = (K - 1 - k) * DILATION
    if TRANSPOSED:
        src_t = offs_t + shift
        ok = t_ok & (src_t < T)
    else:
        src_t = offs_t - shift
        ok = t_ok & (src_t >= 0)
    return src_t, ok


@triton.jit
def _causal_conv1d_kernel(
    x_ptr,  # (B, C_IN, T): x, or grad_out when TRANSPOSED
    w_ptr,  # (K, C_in / groups, C_out): the weight, packed
    bias_ptr,  # (C_OUT,), read only when HAS_BIAS
    y_ptr,  # (B, C_OUT, T): y, or grad_x when TRANSPOSED
    T, GROUPS, RED_PER_GROUP, PROD_PER_GROUP, DILATION,
    stride_xb, stride_xc, stride_xt,
    stride_wk, stride_wi, stride_wo,
    stride_bias,
    stride_yb, stride_yc, stride_yt,
    K,
    TRANSPOSED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_CI: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_co = tl.program_id(1)
    pid_bg = tl.program_id(2)
    b = (pid_bg // GROUPS).to(tl.int64)
    g = pid_bg % GROUPS
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = offs_t < T
    offs_p = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)  # produced channel, within the group
    p_ok = offs_p < PROD_PER_GROUP
    offs_r = tl.arange(0, BLOCK_CI)  # reduced channel, within the group

    acc = tl.zeros((BLOCK_T, BLOCK_CO), dtype=ACC_DTYPE)
    for k in range(K):
        src_t, src_ok = _tap_source(offs_t, t_ok, k, T, K, DILATION, TRANSPOSED)
        for r0 in range(0, RED_PER_GROUP, BLOCK_CI):
            r = r0 + offs_r
            r_ok = r < RED_PER_GROUP
            x_tile = tl.load(
                x_ptr + b * stride_xb + (g * RED_PER_GROUP + r).to(tl.int64)[None, :] * stride_xc
                + src_t.to(tl.int64)[:, None] * stride_xt,
                mask=src_ok[:, None] & r_ok[None, :],
                other=0.0,
            )
            # Forward: w[o = g*PROD + p, i = r, k]; transposed: w[o = g*RED + r, i = p, k].
            if TRANSPOSED:
                w_off = offs_p[None, :] * stride_wi + (g * RED_PER_GROUP + r)[:, None] * stride_wo
            else:
                w_off = r[:, None] * stride_wi + (g * PROD_PER_GROUP + offs_p)[None, :] * stride_wo
            w_tile = tl.load(w_ptr + k * stride_wk + w_off, mask=r_ok[:, None] & p_ok[None, :], other=0.0)
            acc = tl.dot(x_tile, w_tile, acc, input_precision=INPUT_PRECISION)

    channel = g * PROD_PER_GROUP + offs_p
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channel * stride_bias, mask=p_ok, other=0.0)
        acc += bias.to(ACC_DTYPE)[None, :]
    tl.store(
        y_ptr + b * stride_yb + channel.to(tl.int64)[None, :] * stride_yc + offs_t.to(tl.int64)[:, None] * stride_yt,
        acc.to(y_ptr.dtype.element_ty),
        mask=t_ok[:, None] & p_ok[None, :],
    )


@triton.jit
def _causal_conv1d_depthwise_kernel(
    x_ptr,  # (B, C_IN, T): x, or grad_out when TRANSPOSED
    w_ptr,  # (C_OUT, 1, K)
    bias_ptr,
    y_ptr,  # (B, C_PROD, T)
    T, C_PROD, PROD_PER_IN, DILATION, K,
    stride_xb, stride_xc, stride_xt,
    stride_wo, stride_wk,
    stride_bias,
    stride_yb, stride_yc, stride_yt,
    TRANSPOSED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    row = tl.program_id(1).to(tl.int64)  # (batch, produced channel)
    b = row // C_PROD
    c = row % C_PROD
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = offs_t < T
    src_row = x_ptr + b * stride_xb + (c // PROD_PER_IN) * stride_xc
    acc = tl.zeros((BLOCK_T,), dtype=ACC_DTYPE)
    for k in range(K):
        src_t, ok = _tap_source(offs_t, t_ok, k, T, K, DILATION, TRANSPOSED)
        w = tl.load(w_ptr + c * stride_wo + k * stride_wk).to(ACC_DTYPE)
        acc += w * tl.load(src_row + src_t.to(tl.int64) * stride_xt, mask=ok, other=0.0).to(ACC_DTYPE)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c * stride_bias).to(ACC_DTYPE)
    tl.store(
        y_ptr + b * stride_yb + c * stride_yc + offs_t.to(tl.int64) * stride_yt,
        acc.to(y_ptr.dtype.element_ty),
        mask=t_ok,
    )


@triton.jit
def _causal_conv1d_depthwise_weight_grad_kernel(
    grad_out_ptr,  # (B, C_OUT, T)
    x_ptr,  # (B, C_IN, T)
    grad_w_ptr,  # (C_OUT, 1, K) in ACC_DTYPE
    B, T, OUT_PER_IN, DILATION, K,
    stride_gb, stride_gc, stride_gt,
    stride_xb, stride_xc, stride_xt,
    stride_wo, stride_wk,
    ACC_DTYPE: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    o = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1)
    shift = (K - 1 - k) * DILATION
    acc = tl.zeros((BLOCK_T,), dtype=ACC_DTYPE)
    for b in range(B):
        g_row = grad_out_ptr + b * stride_gb + o * stride_gc
        x_row = x_ptr + b * stride_xb + (o // OUT_PER_IN) * stride_xc
        for t0 in range(shift, T, BLOCK_T):
            t = (t0 + tl.arange(0, BLOCK_T)).to(tl.int64)
            ok = t < T
            g = tl.load(g_row + t * stride_gt, mask=ok, other=0.0).to(ACC_DTYPE)
            acc += g * tl.load(x_row + (t - shift) * stride_xt, mask=ok, other=0.0).to(ACC_DTYPE)
    tl.store(grad_w_ptr + o * stride_wo + k * stride_wk, tl.sum(acc, axis=0))


@triton.jit
def _causal_conv1d_weight_grad_kernel(
    grad_out_ptr,  # (B, C_OUT, T)
    x_ptr,  # (B, C_IN, T)
    partial_ptr,  # (SPLITS, C_OUT, C_in / groups, K) in ACC_DTYPE
    T, N_STEPS, STEPS_PER_SPLIT, DILATION, K, IN_PER_GROUP, OUT_PER_GROUP,
    stride_gb, stride_gc, stride_gt,
    stride_xb, stride_xc, stride_xt,
    stride_ps, stride_po, stride_pi, stride_pk,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_CI: tl.constexpr,
):
    pid_kg = tl.program_id(0)  # (group, tap)
    pid_c = tl.program_id(1)
    split = tl.program_id(2)
    g = pid_kg // K
    k = pid_kg % K
    n_ci_blocks = tl.cdiv(IN_PER_GROUP, BLOCK_CI)
    offs_co = (pid_c // n_ci_blocks) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    offs_ci = (pid_c % n_ci_blocks) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    co_ok = offs_co < OUT_PER_GROUP
    ci_ok = offs_ci < IN_PER_GROUP
    co = (g * OUT_PER_GROUP + offs_co).to(tl.int64)
    ci = (g * IN_PER_GROUP + offs_ci).to(tl.int64)
    shift = (K - 1 - k) * DILATION

    # The reduction runs over (batch, time) flattened; each element finds its own batch and
    # time, so a range may straddle batches.
    start = split.to(tl.int64) * STEPS_PER_SPLIT
    end = tl.minimum(start + STEPS_PER_SPLIT, N_STEPS)
    acc = tl.zeros((BLOCK_CO, BLOCK_CI), dtype=ACC_DTYPE)
    for s0 in range(start, end, BLOCK_T):
        steps = s0 + tl.arange(0, BLOCK_T).to(tl.int64)
        b = steps // T
        t = steps % T
        ok = (steps < end) & (t >= shift)
        g_tile = tl.load(
            grad_out_ptr + (b * stride_gb + t * stride_gt)[None, :] + co[:, None] * stride_gc,
            mask=co_ok[:, None] & ok[None, :],
            other=0.0,
        )
        x_tile = tl.load(
            x_ptr + (b * stride_xb + (t - shift) * stride_xt)[:, None] + ci[None, :] * stride_xc,
            mask=ok[:, None] & ci_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(g_tile, x_tile, acc, input_precision=INPUT_PRECISION)
    tl.store(
        partial_ptr + split * stride_ps + co[:, None] * stride_po + offs_ci[None, :] * stride_pi + k * stride_pk,
        acc,
        mask=co_ok[:, None] & ci_ok[None, :],
    )


@triton.jit
def _causal_conv1d_step_kernel(
    x_ptr,  # (B, C_IN)
    state_ptr,  # (B, C_IN, L), unit stride along L
    w_ptr,  # (C_OUT, C_in / groups, K)
    bias_ptr,
    position_ptr,  # (B,) int64, read only when RING
    y_ptr,  # (B, C_OUT)
    C_OUT, L, K, DILATION, IN_PER_GROUP, OUT_PER_GROUP,
    stride_xb, stride_xc,
    stride_sb, stride_sc,
    stride_wo, stride_wi, stride_wk,
    stride_bias, stride_pos,
    stride_yb, stride_yc,
    RING: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_CI: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_o = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    o_ok = offs_o < C_OUT
    first_in = (offs_o // OUT_PER_GROUP) * IN_PER_GROUP  # the first input channel of o's group
    base = 0
    if RING:
        p = tl.load(position_ptr + b * stride_pos)
        base = ((p % L) + L) % L  # a non-negative slot for any int64 position
    acc = tl.zeros((BLOCK_CO,), dtype=ACC_DTYPE)
    for r0 in range(0, IN_PER_GROUP, BLOCK_CI):
        r = r0 + tl.arange(0, BLOCK_CI)
        ok = o_ok[:, None] & (r < IN_PER_GROUP)[None, :]
        c = (first_in[:, None] + r[None, :]).to(tl.int64)  # (BLOCK_CO, BLOCK_CI) input channels
        w_row = w_ptr + offs_o[:, None] * stride_wo + r[None, :] * stride_wi
        for k in range(K - 1):
            if RING:
                slot = (base + k * DILATION) % L
            else:
                slot = k * DILATION
            v = tl.load(state_ptr + b * stride_sb + c * stride_sc + slot, mask=ok, other=0.0)
            w = tl.load(w_row + k * stride_wk, mask=ok, other=0.0)
            acc += tl.sum(w.to(ACC_DTYPE) * v.to(ACC_DTYPE), axis=1)
        v = tl.load(x_ptr + b * stride_xb + c * stride_xc, mask=ok, other=0.0)
        w = tl.load(w_row + (K - 1) * stride_wk, mask=ok, other=0.0)
        acc += tl.sum(w.to(ACC_DTYPE) * v.to(ACC_DTYPE), axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_o * stride_bias, mask=o_ok, other=0.0).to(ACC_DTYPE)
    tl.store(y_ptr + b * stride_yb + offs_o * stride_yc, acc.to(y_ptr.dtype.element_ty), mask=o_ok)


@triton.jit
def _state_update_kernel(
    x_ptr,  # (B, C_IN)
    state_ptr,  # (B, C_IN, L), unit stride along L
    position_ptr,
    C_IN, L,
    stride_xb, stride_xc,
    stride_sb, stride_sc,
    stride_pos,
    RING: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // C_IN
    c = row % C_IN
    state_row = state_ptr + b * stride_sb + c * stride_sc
    x_new = tl.load(x_ptr + b * stride_xb + c * stride_xc)
    if RING:
        p = tl.load(position_ptr + b * stride_pos)
        tl.store(state_row + ((p % L) + L) % L, x_new)
    else:
        # One program per row, moving it left block by block: a block's source is read
        # before any later block is written, and the barrier keeps every thread's read of
        # a block ahead of the writes into it.
        for j0 in range(0, L - 1, BLOCK_L):
            j = j0 + tl.arange(0, BLOCK_L)
            ok = j < L - 1
            v = tl.load(state_row + j + 1, mask=ok)
            tl.debug_barrier()
            tl.store(state_row + j, v, mask=ok)
        tl.debug_barrier()
        tl.store(state_row + L - 1, x_new)


def _precision(x: torch.Tensor) -> tuple:
    """(accumulator dtype, tl.dot input precision) for inputs like ``x``."""
    interpret = x.device.type != "cuda"
    # The interpreter computes dots exactly; on GPU float32 dots use TF32 tensor cores exactly
    # when torch's own convolutions do (torch.backends.cudnn.allow_tf32, on by default).
    exact = interpret or x.dtype == torch.float64 or not torch.backends.cudnn.allow_tf32
    return tl.float64 if x.dtype == torch.float64 else tl.float32, "ieee" if exact else "tf32"


def _block(n: int, largest: int, interpret: bool) -> int:
    """A block size for a dimension of size ``n``: at least 16 (tl.dot's minimum), the
    minimum under the interpreter (whose cost grows with the block), else up to ``largest``."""
    return 16 if interpret else max(16, min(largest, triton.next_power_of_2(n)))


def _clamp_dilation(dilation: int, length: int) -> int:
    # From T on every tap but the last reads outside the sequence, whatever the dilation:
    # clamping changes nothing and keeps the offsets far from integer overflow.
    return min(dilation, max(length, 1))


def _conv(inp, weight, bias, out, *, transposed, dilation, groups):
    """out = causal conv of ``inp`` (``transposed``: its adjoint, grad_x); written in full."""
    c_out, ci_g, k = weight.shape
    batch, _, length = inp.shape
    co_g = c_out // groups
    red, prod = (co_g, ci_g) if transposed else (ci_g, co_g)
    interpret = inp.device.type != "cuda"
    acc_dtype, precision = _precision(inp)
    if ci_g == 1 and (co_g == 1 or not transposed):
        # One input per output (depthwise forward, possibly with a channel multiplier, and
        # the adjoint of plain depthwise): a dot would waste all but one lane of its tiles.
        block_t = 16 if interpret else max(16, min(1024, triton.next_power_of_2(length)))
        c_prod = out.shape[1]
        _causal_conv1d_depthwise_kernel[(triton.cdiv(length, block_t), batch * c_prod)](
            inp, weight, bias if bias is not None else out, out,
            length, c_prod, 1 if transposed else co_g, _clamp_dilation(dilation, length), k,
            *inp.stride(),
            weight.stride(0), weight.stride(2),
            bias.stride(0) if bias is not None else 0,
            *out.stride(),
            TRANSPOSED=transposed, HAS_BIAS=bias is not None, ACC_DTYPE=acc_dtype, BLOCK_T=block_t,
        )
        return
    packed = weight.permute(2, 1, 0).contiguous()  # (K, C_in/g, C_out): coalesced along C_out
    meta = dict(
        BLOCK_T=_block(length, 64, interpret), BLOCK_CO=_block(prod, 64, interpret), BLOCK_CI=_block(red, 32, interpret)
    )
    grid = (triton.cdiv(length, meta["BLOCK_T"]), triton.cdiv(prod, meta["BLOCK_CO"]), batch * groups)
    _causal_conv1d_kernel[grid](
        inp, packed, bias if bias is not None else out, out,
        length, groups, red, prod, _clamp_dilation(dilation, length),
        *inp.stride(),
        *packed.stride(),
        bias.stride(0) if bias is not None else 0,
        *out.stride(),
        k,
        TRANSPOSED=transposed, HAS_BIAS=bias is not None, ACC_DTYPE=acc_dtype, INPUT_PRECISION=precision,
        num_warps=4, **meta,
    )


def _weight_grad(grad_out, x, weight, *, dilation, groups):
    """grad_weight, ``(C_out, C_in/groups, K)`` contiguous."""
    c_out, ci_g, k = weight.shape
    batch, _, length = x.shape
    co_g = c_out // groups
    n_steps = batch * length
    if n_steps == 0:
        return torch.zeros_like(weight, memory_format=torch.contiguous_format)
    interpret = x.device.type != "cuda"
    acc_dtype, precision = _precision(x)
    if ci_g == 1:
        # One reduction per (output channel, tap): elementwise products, no dot tiles.
        grad = torch.empty((c_out, 1, k), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device)
        _causal_conv1d_depthwise_weight_grad_kernel[(c_out, k)](
            grad_out, x, grad,
            batch, length, co_g, _clamp_dilation(dilation, length), k,
            *grad_out.stride(),
            *x.stride(),
            grad.stride(0), grad.stride(2),
            ACC_DTYPE=acc_dtype, BLOCK_T=16 if interpret else 1024,
        )
        return grad.to(x.dtype)
    meta = dict(BLOCK_T=_block(n_steps, 64, interpret), BLOCK_CO=_block(co_g, 64, interpret), BLOCK_CI=_block(ci_g, 32, interpret))
    n_tiles = triton.cdiv(co_g, meta["BLOCK_CO"]) * triton.cdiv(ci_g, meta["BLOCK_CI"])
    splits = 1
    if x.device.type == "cuda":
        # One program per (tap, tile) leaves most of a GPU idle for few channels and long
        # sequences: split the steps until there are a few programs per SM.
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        splits = max(1, min(triton.cdiv(4 * sms, groups * k * n_tiles), triton.cdiv(n_steps, 8 * meta["BLOCK_T"])))
    per_split = triton.cdiv(triton.cdiv(n_steps, splits), meta["BLOCK_T"]) * meta["BLOCK_T"]
    splits = triton.cdiv(n_steps, per_split)
    partial = torch.empty(
        (splits, c_out, ci_g, k), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device
    )
    _causal_conv1d_weight_grad_kernel[(groups * k, n_tiles, splits)](
        grad_out, x, partial,
        length, n_steps, per_split, _clamp_dilation(dilation, length), k, ci_g, co_g,
        *grad_out.stride(),
        *x.stride(),
        *partial.stride(),
        ACC_DTYPE=acc_dtype, INPUT_PRECISION=precision, num_warps=4, **meta,
    )
    return partial.sum(0).to(x.dtype)


def causal_conv1d_forward(x, weight, bias, dilation: int, groups: int) -> torch.Tensor:
    """``y = causal_conv1d(x, weight, bias)``, ``(B, C_out, T)`` contiguous; arguments
    already checked by :func:`fastgen.ops.causal_conv1d`."""
    batch, _, length = x.shape
    y = torch.empty((batch, weight.shape[0], length), dtype=x.dtype, device=x.device)
    if y.numel() > 0:
        _conv(x, weight, bias, y, transposed=False, dilation=dilation, groups=groups)
    return y


def causal_conv1d_backward(grad_out, x, weight, dilation: int, groups: int, output_mask: list[bool]):
    """(grad_x, grad_weight, grad_bias), each contiguous, or empty where ``output_mask`` is False."""
    need_x, need_weight, need_bias = output_mask
    grad_x = x.new_empty(0)
    if need_x:
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if grad_x.numel() > 0:
            _conv(grad_out, weight, None, grad_x, transposed=True, dilation=dilation, groups=groups)
    grad_weight = _weight_grad(grad_out, x, weight, dilation=dilation, groups=groups) if need_weight else x.new_empty(0)
    grad_bias = grad_out.sum((0, 2)) if need_bias else x.new_empty(0)
    return grad_x, grad_weight, grad_bias


def causal_conv1d_step(x_t, state, weight, bias, dilation: int, groups: int, position) -> torch.Tensor:
    """One step: returns ``(B, C_out)`` and updates ``state`` in place (see
    :func:`fastgen.ops.causal_conv1d_step`; arguments already checked there)."""
    batch, c_in = x_t.shape
    c_out, ci_g, k = weight.shape
    length = (k - 1) * dilation
    y = torch.empty((batch, c_out), dtype=x_t.dtype, device=x_t.device)
    if batch == 0:
        return y
    interpret = x_t.device.type != "cuda"
    acc_dtype, _ = _precision(x_t)
    ring = position is not None and length > 0
    pos = position if ring else y  # a placeholder pointer, never read
    block_co = _block(c_out, 64, interpret)
    _causal_conv1d_step_kernel[(batch, triton.cdiv(c_out, block_co))](
        x_t, state, weight, bias if bias is not None else y, pos, y,
        c_out, max(length, 1), k, dilation, ci_g, c_out // groups,
        *x_t.stride(),
        state.stride(0), state.stride(1),
        *weight.stride(),
        bias.stride(0) if bias is not None else 0, pos.stride(0),
        *y.stride(),
        RING=ring, HAS_BIAS=bias is not None, ACC_DTYPE=acc_dtype,
        BLOCK_CO=block_co, BLOCK_CI=_block(ci_g, 32, interpret),
    )
    if length > 0:
        _state_update_kernel[(batch * c_in,)](
            x_t, state, pos,
            c_in, length,
            *x_t.stride(),
            state.stride(0), state.stride(1),
            pos.stride(0),
            RING=ring, BLOCK_L=16 if interpret else max(16, min(1024, triton.next_power_of_2(length))),
        )
    return y
