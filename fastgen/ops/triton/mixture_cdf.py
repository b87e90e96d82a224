"""Triton kernels of :func:`fastgen.ops.mixture_cdf` and :func:`fastgen.ops.mixture_icdf`.

A program owns ``BLOCK_N`` elements and holds their K components as a ``(BLOCK_N, BLOCK_K)``
tile in registers (K padded to a power of two; padded components get weight 0 and stay out
of the bracket). The forward kernels compute the softmax once per element; ``_icdf_kernel``
then runs every bisection step on the tile; the backward kernels recompute the components
from the inputs and the forward's outputs and write all gradients in the same pass.

The normal CDF uses the erfc form of the CPU kernels (csrc/cpu/mixture_cdf.cpp):
``erfc(c) = t exp(G(y) - c^2)``, ``t = 2 / (2 + c)``, ``y = (2 - c) / (2 + c)``, with the same
polynomial fit ``G`` (passed to the kernels as a small tensor), which keeps the lower tail's
relative accuracy (1 - erf does not), and the same normal quantile (a rational start
refined by Newton steps on log Phi). Arithmetic is in the inputs' dtype.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

__all__ = ["mixture_cdf_backward", "mixture_cdf_forward", "mixture_icdf_backward", "mixture_icdf_forward"]

# (Constants multiply tensors from the right: constexpr * tensor fails under the interpreter.)
_SQRT_HALF = tl.constexpr(0.7071067811865476)
_SQRT_2PI = tl.constexpr(2.5066282746310002)
_HALF_LOG_2PI = tl.constexpr(0.9189385332046728)

# G(y) by degree (highest first), as in csrc/cpu/mixture_cdf.cpp: degree 11 for float32
# (error 1.4e-8), 25 for float64 (1.7e-16).
_ERFC_G = {
    torch.float32: (
        -9.246457921108231e-05, 8.508316568622831e-06, 0.0005880717071704566, -0.00022919225739315152,
        -0.002303143497556448, 0.001795201445929706, 0.008815157227218151, -0.009880431927740574,
        -0.04689478129148483, 0.047343939542770386, 0.6726431846618652, -0.6717941164970398,
    ),
    torch.float64: (
        -1.1141466421901909e-09, -1.2776506237493277e-08, 3.675878538183882e-08, 7.746001345360312e-08,
        -3.086559820402206e-07, -4.1484920834124593e-08, 1.3137199073509803e-06, -1.4094127307024207e-06,
        -2.994294118363313e-06, 8.662494482986981e-06, 1.6080205095439494e-07, -3.023780825572967e-05,
        3.1737328155349395e-05, 7.141808767204543e-05, -0.00017430116360991256, -9.373894209180262e-05,
        0.0006736785371369921, -0.00014624628859718252, -0.0023458124784660516, 0.0017589335075480397,
        0.00882493855611383, -0.00987268936410846, -0.046895610231160824, 0.047343306841863754,
        0.6726432239776567, -0.6717940840566922,
    ),
}
# Erfc's argument is clamped there (its square stays finite; erfc is 0 long before).
_ERFC_ARG_LIMIT = {torch.float32: 1e18, torch.float64: 1e150}
# Newton steps of the normal quantile after its 4.5e-4 start (the error squares each step).
_QUANTILE_NEWTON_STEPS = {torch.float32: 2, torch.float64: 3}
_KINDS = {"logistic": 0, "gaussian": 1}


@functools.lru_cache(maxsize=None)
def _erfc_coefficients(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(_ERFC_G[dtype], dtype=dtype, device=device)


@triton.jit
def _horner(y, coef_ptr, N_COEF: tl.constexpr):
    acc = tl.zeros_like(y) + tl.load(coef_ptr)
    for i in tl.static_range(1, N_COEF):
        acc = acc * y + tl.load(coef_ptr + i)
    return acc


@triton.jit
def _erfc_parts(a, coef_ptr, N_COEF: tl.constexpr, ARG_LIMIT: tl.constexpr):
    """(t, G, c^2) with erfc(c) = t exp(G - c^2), c = |a| clamped (NaN stays NaN)."""
    c = tl.abs(a)
    c = tl.where(c > ARG_LIMIT, ARG_LIMIT, c)
    inv = 1.0 / (2.0 + c)
    return 2.0 * inv, _horner((2.0 - c) * inv, coef_ptr, N_COEF), c * c


@triton.jit
def _normal_cdf_scaled(a, coef_ptr, N_COEF: tl.constexpr, ARG_LIMIT: tl.constexpr):
    """Phi(z) for a = -z / sqrt(2): erfc(a) / 2, the upper half as 1 - erfc(|a|) / 2."""
    t, g, c2 = _erfc_parts(a, coef_ptr, N_COEF, ARG_LIMIT)
    half_erfc = 0.5 * t * tl.exp(g - c2)
    return tl.where(a >= 0, half_erfc, 1.0 - half_erfc)


@triton.jit
def _component_cdf(z, KIND: tl.constexpr, coef_ptr, N_COEF: tl.constexpr, ARG_LIMIT: tl.constexpr):
    if KIND == 0:
        F = 1.0 / (1.0 + tl.exp(-z))
    else:
        F = _normal_cdf_scaled(z * -_SQRT_HALF, coef_ptr, N_COEF, ARG_LIMIT)
    return F


@triton.jit
def _component(z, KIND: tl.constexpr, coef_ptr, N_COEF: tl.constexpr, ARG_LIMIT: tl.constexpr):
    """(F, log f, d log f / dz) of the standard component at z."""
    if KIND == 0:
        abs_z = tl.abs(z)
        e = tl.exp(-abs_z)
        r = 1.0 / (1.0 + e)
        F = tl.where(z >= 0, r, e * r)
        log_f = -abs_z - 2.0 * tl.log(1.0 + e)
        tanh_half = (1.0 - e) * r
        score = tl.where(z >= 0, -tanh_half, tanh_half)
    else:
        F = _normal_cdf_scaled(z * -_SQRT_HALF, coef_ptr, N_COEF, ARG_LIMIT)
        log_f = -0.5 * z * z - _HALF_LOG_2PI
        score = -z
    return F, log_f, score


@triton.jit
def _quantile(u, KIND: tl.constexpr, coef_ptr, N_COEF: tl.constexpr, ARG_LIMIT: tl.constexpr,
              NEWTON: tl.constexpr):
    """The standard component's quantile at u in [tiny, 1 - eps/2]."""
    if KIND == 0:
        q = tl.log(u / (1.0 - u))
    else:
        # p = min(u, 1 - u), Abramowitz & Stegun 26.2.23, then Newton on log Phi(q) = log p
        # with log Phi and Phi / phi from erfc's pieces (finite deep in the tail).
        one_minus = 1.0 - u
        p = tl.where(u < one_minus, u, one_minus)
        log_p = tl.log(p)
        s = tl.sqrt(-2.0 * log_p)
        q = (2.515517 + s * (0.802853 + s * 0.010328)) / (1.0 + s * (1.432788 + s * (0.189269 + s * 0.001308))) - s
        for _ in tl.static_range(NEWTON):
            a = q * -_SQRT_HALF
            t, g, c2 = _erfc_parts(a, coef_ptr, N_COEF, ARG_LIMIT)
            upper_phi = 1.0 - 0.5 * t * tl.exp(g - c2)
            log_phi = tl.where(a >= 0, tl.log(0.5 * t) + g - c2, tl.log(upper_phi))
            ratio = tl.where(a >= 0, t * tl.exp(g) * (0.5 * _SQRT_2PI), upper_phi * _SQRT_2PI * tl.exp(c2))
            q = q - (log_phi - log_p) * ratio
        q = tl.where(u < one_minus, q, -q)
    return q


@triton.jit
def _load_mixture(logits_ptr, loc_ptr, ls_ptr, offs_n, offs_k, n_ok, k_ok, K):
    """(log w, loc, log_scale) tiles; padded components have log w = -inf."""
    ok = n_ok[:, None] & k_ok[None, :]
    off = offs_n[:, None] * K + offs_k[None, :]
    logits = tl.where(k_ok[None, :], tl.load(logits_ptr + off, mask=ok, other=0.0), float("-inf"))
    loc = tl.load(loc_ptr + off, mask=ok, other=0.0)
    log_scale = tl.load(ls_ptr + off, mask=ok, other=0.0)
    m = tl.max(logits, axis=1)
    log_norm = m + tl.log(tl.sum(tl.exp(logits - m[:, None]), axis=1))
    return logits - log_norm[:, None], loc, log_scale


@triton.jit
def _log_sum_exp(a):
    m = tl.max(a, axis=1)
    m = tl.where(m == float("-inf"), 0.0, m)  # all -inf: -inf, not NaN
    return m + tl.log(tl.sum(tl.exp(a - m[:, None]), axis=1))


@triton.jit
def _offsets(N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    return offs_n, offs_k, offs_n < N, offs_k < K


@triton.jit
def _cdf_kernel(x_ptr, logits_ptr, loc_ptr, ls_ptr, u_ptr, log_pdf_ptr, coef_ptr, N, K,
                KIND: tl.constexpr, N_COEF: tl.constexpr, ARG_LIMIT: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n, offs_k, n_ok, k_ok = _offsets(N, K, BLOCK_N, BLOCK_K)
    log_w, loc, log_scale = _load_mixture(logits_ptr, loc_ptr, ls_ptr, offs_n, offs_k, n_ok, k_ok, K)
    x = tl.load(x_ptr + offs_n, mask=n_ok, other=0.0)
    z = (x[:, None] - loc) * tl.exp(-log_scale)
    F, log_f, _ = _component(z, KIND, coef_ptr, N_COEF, ARG_LIMIT)
    tl.store(u_ptr + offs_n, tl.sum(tl.exp(log_w) * F, axis=1), mask=n_ok)
    tl.store(log_pdf_ptr + offs_n, _log_sum_exp(log_w + log_f - log_scale), mask=n_ok)


@triton.jit
def _cdf_backward_kernel(gu_ptr, gl_ptr, x_ptr, logits_ptr, loc_ptr, ls_ptr, u_ptr, log_pdf_ptr,
                         gx_ptr, glogits_ptr, gloc_ptr, gls_ptr, coef_ptr, N, K,
                         HAS_GU: tl.constexpr, HAS_GL: tl.constexpr, NEED_X: tl.constexpr,
                         NEED_LOGITS: tl.constexpr, NEED_LOC: tl.constexpr, NEED_LS: tl.constexpr,
                         KIND: tl.constexpr, N_COEF: tl.constexpr, ARG_LIMIT: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n, offs_k, n_ok, k_ok = _offsets(N, K, BLOCK_N, BLOCK_K)
    log_w, loc, log_scale = _load_mixture(logits_ptr, loc_ptr, ls_ptr, offs_n, offs_k, n_ok, k_ok, K)
    x = tl.load(x_ptr + offs_n, mask=n_ok, other=0.0)
    u = tl.load(u_ptr + offs_n, mask=n_ok, other=0.0)
    L = tl.load(log_pdf_ptr + offs_n, mask=n_ok, other=0.0)
    gu = tl.zeros_like(x)
    if HAS_GU:
        gu = tl.load(gu_ptr + offs_n, mask=n_ok, other=0.0)
    gl = tl.zeros_like(x)
    if HAS_GL:
        gl = tl.load(gl_ptr + offs_n, mask=n_ok, other=0.0)
    inv_scale = tl.exp(-log_scale)
    d = x[:, None] - loc
    z = d * inv_scale
    F, log_f, score = _component(z, KIND, coef_ptr, N_COEF, ARG_LIMIT)
    w = tl.exp(log_w)
    r = tl.exp(log_w + log_f - log_scale - L[:, None])  # responsibilities
    gu_p = gu * tl.exp(L)
    gl_score = gl[:, None] * score
    ok = n_ok[:, None] & k_ok[None, :]
    off = offs_n[:, None] * K + offs_k[None, :]
    if NEED_X:
        tl.store(gx_ptr + offs_n, gu_p + tl.sum(r * gl_score * inv_scale, axis=1), mask=n_ok)
    if NEED_LOGITS:
        tl.store(glogits_ptr + off, gu[:, None] * w * (F - u[:, None]) + gl[:, None] * (r - w), mask=ok)
    if NEED_LOC:
        tl.store(gloc_ptr + off, -r * (gu_p[:, None] + gl_score * inv_scale), mask=ok)
    if NEED_LS:
        tl.store(gls_ptr + off, -r * (gu_p[:, None] * d + gl[:, None] + gl_score * z), mask=ok)


@triton.jit
def _icdf_kernel(u_ptr, logits_ptr, loc_ptr, ls_ptr, x_ptr, coef_ptr, N, K, iters,
                 KIND: tl.constexpr, N_COEF: tl.constexpr, ARG_LIMIT: tl.constexpr, NEWTON: tl.constexpr,
                 TINY: tl.constexpr, BELOW_ONE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n, offs_k, n_ok, k_ok = _offsets(N, K, BLOCK_N, BLOCK_K)
    log_w, loc, log_scale = _load_mixture(logits_ptr, loc_ptr, ls_ptr, offs_n, offs_k, n_ok, k_ok, K)
    w = tl.exp(log_w)
    inv_scale = tl.exp(-log_scale)
    u = tl.load(u_ptr + offs_n, mask=n_ok, other=0.5)
    target = tl.where(u < TINY, TINY, tl.where(u > BELOW_ONE, BELOW_ONE, u))  # NaN stays NaN
    quantiles = loc + tl.exp(log_scale) * _quantile(target, KIND, coef_ptr, N_COEF, ARG_LIMIT, NEWTON)[:, None]
    lo = tl.min(tl.where(k_ok[None, :], quantiles, float("inf")), axis=1)
    hi = tl.max(tl.where(k_ok[None, :], quantiles, float("-inf")), axis=1)
    # A NaN anywhere in an element's inputs makes its x NaN (min / max may drop NaN; NaN
    # weights, from a NaN logit, fail every comparison of the bisection).
    has_nan = tl.max(tl.where((quantiles != quantiles) | (w != w), 1.0, 0.0), axis=1) > 0
    lo = tl.where(has_nan, float("nan"), lo)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        cdf = tl.sum(w * _component_cdf((mid[:, None] - loc) * inv_scale, KIND, coef_ptr, N_COEF, ARG_LIMIT), axis=1)
        below = cdf < target
        lo = tl.where(below, mid, lo)
        hi = tl.where(below, hi, mid)
    tl.store(x_ptr + offs_n, 0.5 * (lo + hi), mask=n_ok)


@triton.jit
def _icdf_backward_kernel(gx_ptr, x_ptr, logits_ptr, loc_ptr, ls_ptr, gu_ptr, glogits_ptr, gloc_ptr, gls_ptr,
                          coef_ptr, N, K,
                          NEED_U: tl.constexpr, NEED_LOGITS: tl.constexpr, NEED_LOC: tl.constexpr,
                          NEED_LS: tl.constexpr, KIND: tl.constexpr, N_COEF: tl.constexpr,
                          ARG_LIMIT: tl.constexpr, TINY: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n, offs_k, n_ok, k_ok = _offsets(N, K, BLOCK_N, BLOCK_K)
    log_w, loc, log_scale = _load_mixture(logits_ptr, loc_ptr, ls_ptr, offs_n, offs_k, n_ok, k_ok, K)
    x = tl.load(x_ptr + offs_n, mask=n_ok, other=0.0)
    g = tl.load(gx_ptr + offs_n, mask=n_ok, other=0.0)
    d = x[:, None] - loc
    F, log_f, _ = _component(d * tl.exp(-log_scale), KIND, coef_ptr, N_COEF, ARG_LIMIT)
    w = tl.exp(log_w)
    a = log_w + log_f - log_scale
    L = _log_sum_exp(a)
    p = tl.exp(L)
    g_over_p = g / tl.where(p > TINY, p, TINY)  # an underflowed density: huge, not NaN
    gr = g[:, None] * tl.exp(a - L[:, None])  # times the responsibilities
    ok = n_ok[:, None] & k_ok[None, :]
    off = offs_n[:, None] * K + offs_k[None, :]
    if NEED_U:
        tl.store(gu_ptr + offs_n, g_over_p, mask=n_ok)
    if NEED_LOGITS:
        cdf = tl.sum(w * F, axis=1)
        tl.store(glogits_ptr + off, -g_over_p[:, None] * w * (F - cdf[:, None]), mask=ok)
    if NEED_LOC:
        tl.store(gloc_ptr + off, gr, mask=ok)
    if NEED_LS:
        tl.store(gls_ptr + off, gr * d, mask=ok)


# ------------------------------------------------------------------------------ launchers


def _flatten(x, logits, loc, log_scale):
    """(N,) and (N, K) contiguous views or copies, and N, K."""
    K = logits.shape[-1]
    N = x.numel()
    return (x.reshape(N).contiguous(), *(t.reshape(N, K).contiguous() for t in (logits, loc, log_scale)), N, K)


def _meta(t: torch.Tensor, kind: str, N: int, K: int) -> dict:
    block_k = triton.next_power_of_2(K)
    # About 1024 tile values per program: a few per thread on a GPU, few programs interpreted.
    block_n = max(1, min(1024 // block_k, triton.next_power_of_2(N)))
    return dict(
        KIND=_KINDS[kind], N_COEF=len(_ERFC_G[t.dtype]), ARG_LIMIT=_ERFC_ARG_LIMIT[t.dtype],
        BLOCK_N=block_n, BLOCK_K=block_k,
    )


def _grid(meta: dict, N: int) -> tuple[int]:
    return (triton.cdiv(N, meta["BLOCK_N"]),)


def _grads(first, logits, output_mask, N, K):
    """Outputs for the gradients of (first, logits, loc, log_scale): (N,) or (N, K), empty when
    not requested (distinct tensors: outputs must not alias)."""
    shapes = ((N,), (N, K), (N, K), (N, K))
    return [first.new_empty(s) if m else first.new_empty(0) for s, m in zip(shapes, output_mask)]


def _reshaped(grads, first, logits, output_mask):
    shapes = (first.shape, logits.shape, logits.shape, logits.shape)
    return tuple(g.reshape(s) if m else g for g, s, m in zip(grads, shapes, output_mask))


def mixture_cdf_forward(x, logits, loc, log_scale, kind):
    xf, lf, mf, sf, N, K = _flatten(x, logits, loc, log_scale)
    u, log_pdf = torch.empty_like(xf), torch.empty_like(xf)
    if N > 0:
        meta = _meta(x, kind, N, K)
        _cdf_kernel[_grid(meta, N)](xf, lf, mf, sf, u, log_pdf, _erfc_coefficients(x.dtype, x.device), N, K, **meta)
    return u.reshape(x.shape), log_pdf.reshape(x.shape)


def mixture_cdf_backward(grad_u, grad_log_pdf, x, logits, loc, log_scale, u, log_pdf, kind, output_mask):
    xf, lf, mf, sf, N, K = _flatten(x, logits, loc, log_scale)
    grads = _grads(x, logits, output_mask, N, K)
    if N > 0 and any(output_mask):
        meta = _meta(x, kind, N, K)
        gu = grad_u.reshape(N).contiguous() if grad_u is not None else xf
        gl = grad_log_pdf.reshape(N).contiguous() if grad_log_pdf is not None else xf
        _cdf_backward_kernel[_grid(meta, N)](
            gu, gl, xf, lf, mf, sf, u.reshape(N).contiguous(), log_pdf.reshape(N).contiguous(), *grads,
            _erfc_coefficients(x.dtype, x.device), N, K,
            HAS_GU=grad_u is not None, HAS_GL=grad_log_pdf is not None, NEED_X=output_mask[0],
            NEED_LOGITS=output_mask[1], NEED_LOC=output_mask[2], NEED_LS=output_mask[3], **meta,
        )
    return _reshaped(grads, x, logits, output_mask)


def mixture_icdf_forward(u, logits, loc, log_scale, kind, iters):
    uf, lf, mf, sf, N, K = _flatten(u, logits, loc, log_scale)
    x = torch.empty_like(uf)
    if N > 0:
        meta = _meta(u, kind, N, K)
        finfo = torch.finfo(u.dtype)
        _icdf_kernel[_grid(meta, N)](
            uf, lf, mf, sf, x, _erfc_coefficients(u.dtype, u.device), N, K, iters,
            NEWTON=_QUANTILE_NEWTON_STEPS[u.dtype], TINY=finfo.tiny, BELOW_ONE=1 - finfo.eps / 2, **meta,
        )
    return x.reshape(u.shape)


def mixture_icdf_backward(grad_x, x, logits, loc, log_scale, kind, output_mask):
    xf, lf, mf, sf, N, K = _flatten(x, logits, loc, log_scale)
    grads = _grads(x, logits, output_mask, N, K)
    if N > 0 and any(output_mask):
        meta = _meta(x, kind, N, K)
        _icdf_backward_kernel[_grid(meta, N)](
            grad_x.reshape(N).contiguous(), xf, lf, mf, sf, *grads, _erfc_coefficients(x.dtype, x.device), N, K,
            NEED_U=output_mask[0], NEED_LOGITS=output_mask[1], NEED_LOC=output_mask[2], NEED_LS=output_mask[3],
            TINY=torch.finfo(x.dtype).tiny, **meta,
        )
    return _reshaped(grads, x, logits, output_mask)
