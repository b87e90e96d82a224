"""Triton kernels of :func:`fastgen.ops.masked_conv2d`: forward, grad_x and grad_weight.

All three are implicit GEMMs over the kept taps only. The taps a PixelCNN mask keeps are
exactly the first ``n_taps`` taps of the kernel in raster order (the rows above the centre,
then the centre row up to the centre), so a tap loop ``for t in range(n_taps)`` never
touches a masked tap: a 7x7 mask A does 24 of 49 taps' work. The colour rule, which acts
at the centre tap only, is applied to the loaded weight tile (forward, grad_x) or to the
reduced tile (grad_weight), and channel chunks it zeroes entirely are skipped.

- ``_masked_conv2d_kernel``: a program computes ``BLOCK_P`` output pixels (flattened over
  batch, rows and columns) x ``BLOCK_CO`` output channels; for each kept tap (unrolled at
  compile time) and each ``BLOCK_CI`` chunk of input channels it accumulates
  ``x[pixels + offset, chunk] @ w[chunk, channels]``. With ``TRANSPOSED`` it computes the
  adjoint convolution, which is grad_x: grad_out convolved with the negated offsets, the
  weight's channel axes swapped and the colour rule's comparison flipped.
- ``_masked_conv2d_weight_grad_kernel``: a program owns one kept tap and one
  ``BLOCK_CO x BLOCK_CI`` tile of the weight gradient and reduces
  ``grad_out[channels, pixels] @ x[pixels + offset, chunk]`` over a range of pixels.
- ``_masked_conv2d_step_kernel``: the one-pixel form, ``(B, taps * C_in) @ (taps * C_in,
  C_out)``: a program computes ``BLOCK_B`` batch rows x ``BLOCK_CO`` output channels,
  reading each ``BLOCK_K`` chunk of the flattened (tap, channel) axis straight out of the
  padded channels-last buffer (every tap in bounds, so only the batch and k edges are
  masked) against rows of the packed weight.

Accumulation is in float32 (float64 for float64 inputs). Inputs may have any strides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["masked_conv2d_backward", "masked_conv2d_forward", "masked_conv2d_step"]


@triton.jit
def _masked_conv2d_kernel(
    x_ptr,  # (B, C_IN, H, W): x, or grad_out when TRANSPOSED
    w_ptr,  # (K, K, C_IN, C_OUT): the weight, transposed when TRANSPOSED
    bias_ptr,  # (C_OUT,), read only when HAS_BIAS
    y_ptr,  # (B, C_OUT, H, W): y, or grad_x when TRANSPOSED
    N_PIX, H, W, C_IN, C_OUT, IN_PER_GROUP, OUT_PER_GROUP, DILATION,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_wh, stride_ww, stride_wi, stride_wo,
    stride_bias,
    stride_yb, stride_yc, stride_yh, stride_yw,
    K: tl.constexpr,
    N_TAPS: tl.constexpr,
    COLOR_GROUPS: tl.constexpr,  # colour rule at the centre tap (color_channels > 1)
    STRICT: tl.constexpr,  # 1 for mask A (earlier groups only), 0 for mask B
    TRANSPOSED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_CI: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_co = tl.program_id(1)
    # int64 pixel coordinates: batch * stride_xb overflows int32 on large activations.
    offs_p = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < N_PIX
    b = offs_p // (H * W)
    h = (offs_p // W) % H
    w = offs_p % W
    co_start = pid_co * BLOCK_CO
    offs_co = co_start + tl.arange(0, BLOCK_CO)
    co_ok = offs_co < C_OUT
    offs_ci = tl.arange(0, BLOCK_CI)

    acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=ACC_DTYPE)
    for t in tl.static_range(N_TAPS):
        # t is a compile-time constant; kept in expressions (an assignment would make it a
        # runtime value) so that the tap offsets and the centre-tap branches fold away.
        dh = (t // K - K // 2) * DILATION
        dw = (t % K - K // 2) * DILATION
        if TRANSPOSED:
            dh = -dh
            dw = -dw
        hh = h + dh
        ww = w + dw
        # Zero padding: taps that fall outside the image load nothing.
        pix_ok = p_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        pix_off = b * stride_xb + hh * stride_xh + ww * stride_xw
        w_tap = w_ptr + (t // K) * stride_wh + (t % K) * stride_ww

        ci_lo = 0
        ci_hi = C_IN
        if COLOR_GROUPS and t == N_TAPS - 1:
            # Only the input groups this block of outputs may see (forward: groups up to
            # the block's last output group; transposed: groups from its first one on).
            if TRANSPOSED:
                ci_lo = (co_start // OUT_PER_GROUP + STRICT) * IN_PER_GROUP
            else:
                co_last = tl.minimum(co_start + BLOCK_CO, C_OUT) - 1
                ci_hi = (co_last // OUT_PER_GROUP + 1 - STRICT) * IN_PER_GROUP
        for ci0 in range(ci_lo, ci_hi, BLOCK_CI):
            ci = ci0 + offs_ci
            ci_ok = ci < C_IN
            x_tile = tl.load(
                x_ptr + pix_off[:, None] + ci.to(tl.int64)[None, :] * stride_xc,
                mask=pix_ok[:, None] & ci_ok[None, :],
                other=0.0,
            )
            w_ok = ci_ok[:, None] & co_ok[None, :]
            if COLOR_GROUPS and t == N_TAPS - 1:
                g_in = ci // IN_PER_GROUP
                g_out = offs_co // OUT_PER_GROUP
                if TRANSPOSED:  # here ci runs over the conv's outputs, co over its inputs
                    w_ok &= g_out[None, :] + STRICT <= g_in[:, None]
                else:
                    w_ok &= g_in[:, None] + STRICT <= g_out[None, :]
            w_tile = tl.load(
                w_tap + ci[:, None] * stride_wi + offs_co[None, :] * stride_wo, mask=w_ok, other=0.0
            )
            acc = tl.dot(x_tile, w_tile, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_co * stride_bias, mask=co_ok, other=0.0)
        acc += bias.to(ACC_DTYPE)[None, :]
    y_off = b * stride_yb + h * stride_yh + w * stride_yw
    tl.store(
        y_ptr + y_off[:, None] + offs_co.to(tl.int64)[None, :] * stride_yc,
        acc.to(y_ptr.dtype.element_ty),
        mask=p_ok[:, None] & co_ok[None, :],
    )


@triton.jit
def _masked_conv2d_weight_grad_kernel(
    grad_out_ptr,  # (B, C_OUT, H, W)
    x_ptr,  # (B, C_IN, H, W)
    partial_ptr,  # (SPLITS, C_OUT, C_IN, K, K) in ACC_DTYPE, zero-initialised
    N_PIX, H, W, C_IN, C_OUT, IN_PER_GROUP, OUT_PER_GROUP, DILATION, PIX_PER_SPLIT,
    stride_gb, stride_gc, stride_gh, stride_gw,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_ps, stride_po, stride_pi, stride_ph, stride_pw,
    K: tl.constexpr,
    N_TAPS: tl.constexpr,
    COLOR_GROUPS: tl.constexpr,
    STRICT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_CI: tl.constexpr,
):
    tap = tl.program_id(0)  # < N_TAPS: a kept tap, in raster order
    pid_c = tl.program_id(1)
    split = tl.program_id(2)
    n_ci_blocks = tl.cdiv(C_IN, BLOCK_CI)
    co_start = (pid_c // n_ci_blocks) * BLOCK_CO
    ci_start = (pid_c % n_ci_blocks) * BLOCK_CI
    offs_co = co_start + tl.arange(0, BLOCK_CO)
    offs_ci = ci_start + tl.arange(0, BLOCK_CI)
    co_ok = offs_co < C_OUT
    ci_ok = offs_ci < C_IN
    kh = tap // K
    kw = tap % K
    dh = (kh - K // 2) * DILATION
    dw = (kw - K // 2) * DILATION

    p_start = split.to(tl.int64) * PIX_PER_SPLIT
    p_end = tl.minimum(p_start + PIX_PER_SPLIT, N_PIX)
    is_centre = tap == N_TAPS - 1
    if COLOR_GROUPS:
        # A tile the colour rule zeroes entirely reduces nothing (its output stays 0).
        co_last = tl.minimum(co_start + BLOCK_CO, C_OUT) - 1
        if is_centre & (ci_start // IN_PER_GROUP + STRICT > co_last // OUT_PER_GROUP):
            p_end = p_start

    acc = tl.zeros((BLOCK_CO, BLOCK_CI), dtype=ACC_DTYPE)
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        p_ok = offs_p < p_end
        b = offs_p // (H * W)
        h = (offs_p // W) % H
        w = offs_p % W
        g_tile = tl.load(
            grad_out_ptr
            + (b * stride_gb + h * stride_gh + w * stride_gw)[None, :]
            + offs_co.to(tl.int64)[:, None] * stride_gc,
            mask=co_ok[:, None] & p_ok[None, :],
            other=0.0,
        )
        hh = h + dh
        ww = w + dw
        pix_ok = p_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        x_tile = tl.load(
            x_ptr
            + (b * stride_xb + hh * stride_xh + ww * stride_xw)[:, None]
            + offs_ci.to(tl.int64)[None, :] * stride_xc,
            mask=pix_ok[:, None] & ci_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(g_tile, x_tile, acc, input_precision=INPUT_PRECISION)

    if COLOR_GROUPS:
        keep = (offs_ci // IN_PER_GROUP)[None, :] + STRICT <= (offs_co // OUT_PER_GROUP)[:, None]
        acc = tl.where(keep | ~is_centre, acc, 0.0)
    tl.store(
        partial_ptr
        + split * stride_ps
        + kh * stride_ph
        + kw * stride_pw
        + offs_co[:, None] * stride_po
        + offs_ci[None, :] * stride_pi,
        acc,
        mask=co_ok[:, None] & ci_ok[None, :],
    )


def _n_kept_taps(k: int, mask_type: str, color_channels: int) -> int:
    """The kept taps are the first ``n`` in raster order: ``c`` full rows, ``c`` taps of the
    centre row, and the centre itself unless the mask removes it for every channel pair."""
    c = k // 2
    has_centre = mask_type == "B" or color_channels > 1
    return c * k + c + int(has_centre)


def _block(n: int, largest: int, interpret: bool) -> int:
    """A block size for a dimension of size ``n``: at least 16 (tl.dot's minimum), the
    minimum under the interpreter (whose cost grows with the block), else up to ``largest``."""
    return 16 if interpret else max(16, min(largest, triton.next_power_of_2(n)))


def _meta(x: torch.Tensor, n_pix: int, c_out: int, c_in: int, k: int, mask_type: str, color_channels: int) -> dict:
    """The compile-time parameters both kernels take: the mask's taps and colour rule, the
    accumulator and dot precision for inputs like ``x``, and the blocks (``c_out``: the
    produced channels, ``c_in``: the reduced ones)."""
    interpret = x.device.type != "cuda"
    # The interpreter computes dots exactly; on GPU float32 dots use TF32 tensor cores exactly
    # when torch's own convolutions do (torch.backends.cudnn.allow_tf32, on by default).
    # Non-float32 inputs ignore the setting.
    exact = interpret or x.dtype == torch.float64 or not torch.backends.cudnn.allow_tf32
    return dict(
        K=k,
        N_TAPS=_n_kept_taps(k, mask_type, color_channels),
        COLOR_GROUPS=color_channels > 1,
        STRICT=int(mask_type == "A"),
        ACC_DTYPE=tl.float64 if x.dtype == torch.float64 else tl.float32,
        INPUT_PRECISION="ieee" if exact else "tf32",
        BLOCK_P=_block(n_pix, 64, interpret),
        BLOCK_CO=_block(c_out, 64, interpret),
        BLOCK_CI=_block(c_in, 32, interpret),
        num_warps=4,
    )


def _clamp_dilation(dilation: int, height: int, width: int) -> int:
    # Beyond the image size every off-centre tap leaves the image, whatever the dilation:
    # clamping changes nothing and keeps the offsets far from integer overflow.
    return min(dilation, max(height, width, 1))


def _conv(inp, weight, bias, out, *, transposed, mask_type, color_channels, dilation):
    """out = masked conv of ``inp`` (``transposed``: its adjoint, for grad_x); out is written in full."""
    c_out, c_in, k, _ = weight.shape
    batch, _, height, width = inp.shape
    dilation = _clamp_dilation(dilation, height, width)
    n_pix = batch * height * width
    # The kernel reads one [BLOCK_CI, BLOCK_CO] weight tile per tap and chunk, whose elements
    # are k*k apart in the (C_out, C_in, k, k) layout; repacked as (k, k, C_red, C_prod), a
    # copy the size of the weight, its loads coalesce. Transposed, the conv's outputs are
    # the reduced channels and its inputs the produced ones.
    if transposed:
        c_red, c_prod, packed = c_out, c_in, weight.permute(2, 3, 0, 1).contiguous()
    else:
        c_red, c_prod, packed = c_in, c_out, weight.permute(2, 3, 1, 0).contiguous()
    meta = _meta(inp, n_pix, c_prod, c_red, k, mask_type, color_channels)
    grid = (triton.cdiv(n_pix, meta["BLOCK_P"]), triton.cdiv(c_prod, meta["BLOCK_CO"]))
    _masked_conv2d_kernel[grid](
        inp, packed, bias if bias is not None else out, out,
        n_pix, height, width, c_red, c_prod, c_red // color_channels, c_prod // color_channels, dilation,
        *inp.stride(),
        *packed.stride(),
        bias.stride(0) if bias is not None else 0,
        *out.stride(),
        TRANSPOSED=transposed,
        HAS_BIAS=bias is not None,
        **meta,
    )


def _weight_grad_splits(n_programs: int, n_pix: int, block_p: int, device: torch.device) -> int:
    """How many pixel ranges to reduce grad_weight over in parallel. One program per (tap,
    tile) leaves most of a GPU idle when channels are few and images many, so the pixels
    are split until there are a few programs per SM, keeping each range >= 8 blocks long."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(4 * sms, n_programs), triton.cdiv(n_pix, 8 * block_p)))


def _weight_grad(grad_out, x, weight, *, mask_type, color_channels, dilation):
    """grad_weight, ``(C_out, C_in, k, k)`` contiguous, exactly 0 wherever the mask is 0."""
    c_out, c_in, k, _ = weight.shape
    batch, _, height, width = x.shape
    dilation = _clamp_dilation(dilation, height, width)
    n_pix = batch * height * width
    meta = _meta(x, n_pix, c_out, c_in, k, mask_type, color_channels)
    n_taps, block_p = meta["N_TAPS"], meta["BLOCK_P"]
    if n_pix == 0 or n_taps == 0:
        return torch.zeros_like(weight, memory_format=torch.contiguous_format)
    n_tiles = triton.cdiv(c_out, meta["BLOCK_CO"]) * triton.cdiv(c_in, meta["BLOCK_CI"])
    splits = _weight_grad_splits(n_taps * n_tiles, n_pix, block_p, x.device)
    pix_per_split = triton.cdiv(triton.cdiv(n_pix, splits), block_p) * block_p
    splits = triton.cdiv(n_pix, pix_per_split)
    # Per-split partial sums (deterministic, unlike atomics), zero at every masked tap
    # since the kernel writes kept taps only.
    partial = torch.zeros(
        (splits, c_out, c_in, k, k),
        dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
        device=x.device,
    )
    _masked_conv2d_weight_grad_kernel[(n_taps, n_tiles, splits)](
        grad_out, x, partial,
        n_pix, height, width, c_in, c_out, c_in // color_channels, c_out // color_channels,
        dilation, pix_per_split,
        *grad_out.stride(),
        *x.stride(),
        *partial.stride(),
        **meta,
    )
    return partial.sum(0).to(x.dtype)


def masked_conv2d_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask_type: str,
    color_channels: int,
    dilation: int,
) -> torch.Tensor:
    """``y = masked_conv2d(x, weight, bias)``, ``(B, C_out, H, W)`` contiguous; arguments
    already checked by :func:`fastgen.ops.masked_conv2d`."""
    batch, _, height, width = x.shape
    y = torch.empty((batch, weight.shape[0], height, width), dtype=x.dtype, device=x.device)
    if y.numel() > 0:
        _conv(
            x, weight, bias, y,
            transposed=False, mask_type=mask_type, color_channels=color_channels, dilation=dilation,
        )
    return y


def masked_conv2d_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    mask_type: str,
    color_channels: int,
    dilation: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight, grad_bias), each contiguous, or empty where ``output_mask`` is False."""
    need_x, need_weight, need_bias = output_mask
    args = dict(mask_type=mask_type, color_channels=color_channels, dilation=dilation)
    grad_x = x.new_empty(0)
    if need_x:
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if grad_x.numel() > 0:
            _conv(grad_out, weight, None, grad_x, transposed=True, **args)
    grad_weight = _weight_grad(grad_out, x, weight, **args) if need_weight else x.new_empty(0)
    grad_bias = grad_out.sum((0, 2, 3)) if need_bias else x.new_empty(0)
    return grad_x, grad_weight, grad_bias


@triton.jit
def _masked_conv2d_step_kernel(
    buf_ptr,  # (B, H + P, W + 2P, C_IN), zero padded: every kept tap of pixel (i, j) is inside
    w_ptr,  # (N_TAPS * C_IN, C_OUT): the packed weight
    bias_ptr,  # (C_OUT,), read only when HAS_BIAS
    y_ptr,  # (B, C_OUT)
    B, C_IN, C_OUT, ROW0, COL0, DILATION, N_K,
    stride_bb, stride_bh, stride_bw, stride_bc,
    stride_wk, stride_wo,
    stride_bias,
    stride_yb, stride_yo,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_co = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = offs_b < B
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = offs_co < C_OUT
    row_base = offs_b.to(tl.int64) * stride_bb + ROW0 * stride_bh + COL0 * stride_bw
    acc = tl.zeros((BLOCK_B, BLOCK_CO), dtype=ACC_DTYPE)
    for k0 in range(0, N_K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < N_K
        tap = offs_k // C_IN
        ci = offs_k % C_IN
        # Taps in raster order: K // 2 full rows above the centre, then the centre row.
        above = tap < (K // 2) * K
        kh = tl.where(above, tap // K, K // 2)
        kw = tl.where(above, tap % K, tap - (K // 2) * K)
        k_off = (kh * DILATION).to(tl.int64) * stride_bh + (kw * DILATION).to(tl.int64) * stride_bw + ci * stride_bc
        x_tile = tl.load(buf_ptr + row_base[:, None] + k_off[None, :], mask=b_ok[:, None] & k_ok[None, :], other=0.0)
        w_tile = tl.load(
            w_ptr + offs_k.to(tl.int64)[:, None] * stride_wk + offs_co[None, :] * stride_wo,
            mask=k_ok[:, None] & co_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(x_tile, w_tile, acc, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_co * stride_bias, mask=co_ok, other=0.0)
        acc += bias.to(ACC_DTYPE)[None, :]
    tl.store(
        y_ptr + offs_b.to(tl.int64)[:, None] * stride_yb + offs_co[None, :] * stride_yo,
        acc.to(y_ptr.dtype.element_ty),
        mask=b_ok[:, None] & co_ok[None, :],
    )


def masked_conv2d_step(
    buffer: torch.Tensor,
    packed_weight: torch.Tensor,
    bias: torch.Tensor | None,
    i: int,
    j: int,
    kernel_size: int,
    mask_type: str,
    color_channels: int,
    dilation: int,
) -> torch.Tensor:
    """The output ``(B, C_out)`` at pixel ``(i, j)``; arguments already checked by
    :func:`fastgen.ops.masked_conv2d_step` (the buffer's padding puts every kept tap in bounds)."""
    batch, c_in = buffer.shape[0], buffer.shape[3]
    n_k, c_out = packed_weight.shape
    y = torch.empty((batch, c_out), dtype=buffer.dtype, device=buffer.device)
    if batch == 0 or c_out == 0:
        return y
    if n_k == 0:
        return y.copy_(bias.expand(batch, c_out)) if bias is not None else y.zero_()
    interpret = buffer.device.type != "cuda"
    exact = interpret or buffer.dtype == torch.float64 or not torch.backends.cudnn.allow_tf32
    block_b, block_co = _block(batch, 32, interpret), _block(c_out, 64, interpret)
    grid = (triton.cdiv(batch, block_b), triton.cdiv(c_out, block_co))
    _masked_conv2d_step_kernel[grid](
        buffer, packed_weight, bias if bias is not None else y, y,
        batch, c_in, c_out, i, j, dilation, n_k,
        *buffer.stride(),
        *packed_weight.stride(),
        bias.stride(0) if bias is not None else 0,
        *y.stride(),
        K=kernel_size,
        HAS_BIAS=bias is not None,
        ACC_DTYPE=tl.float64 if buffer.dtype == torch.float64 else tl.float32,
        INPUT_PRECISION="ieee" if exact else "tf32",
        BLOCK_B=block_b,
        BLOCK_CO=block_co,
        BLOCK_K=_block(n_k, 64, interpret),
    )
    return y
