r"""CDF of a 1-D mixture and its inverse: the 1-D CDF flows and Flow++'s mixture-of-logistics
coupling (Ho et al. 2019, "Flow++").

Per element, a mixture of K components with weights :math:`w = \operatorname{softmax}(\ell)`,
locations :math:`\mu_k` and scales :math:`s_k = e^{\lambda_k}`:

.. math::

    u = \sum_k w_k\, F\!\left(\frac{x - \mu_k}{s_k}\right), \qquad
    \log p(x) = \operatorname*{logsumexp}_k \left(\log w_k + \log f(z_k) - \lambda_k\right),
    \quad z_k = \frac{x - \mu_k}{s_k}

with :math:`F, f` the standard logistic (``kind="logistic"``: :math:`F = \sigma`,
:math:`\log f(z) = -|z| - 2\log(1 + e^{-|z|})`) or Gaussian (``kind="gaussian"``: :math:`F = \Phi`,
:math:`\log f(z) = -z^2/2 - \log\sqrt{2\pi}`) CDF and density. ``log_pdf`` is the
log-determinant of the flow ``x -> u``.

``mixture_icdf`` inverts ``u`` per element by bisection with a fixed number of iterations
(no data-dependent loop, no reduction across elements). ``u`` is first clamped to
``[tiny, 1 - eps/2]`` of its dtype (the smallest normal number and the largest number below
1), so that ``u = 0`` and ``u = 1`` give finite ``x``. Since ``u`` is a convex combination of
the component CDFs, the root lies between the smallest and the largest component quantile,
:math:`\min_k, \max_k\, \mu_k + s_k Q(u)` (:math:`Q` = logit or :math:`\Phi^{-1}`): that is
the initial bracket, and ``x`` is the middle of the bracket after ``iters`` halvings, so
:math:`|x - x^*| \le 2^{-(\text{iters}+1)}(\max_k - \min_k)` plus rounding. The default
``iters`` is the dtype's precision plus 16 bits (40 for float32, 69 for float64, see
:func:`default_icdf_iters`): a bracket up to :math:`2^{16}` times wider than the root's
magnitude then still shrinks to the root's last bit.

Gradients of the inverse follow the implicit function theorem at the computed ``x``:
:math:`\partial x/\partial u = 1/p(x)` and :math:`\partial x/\partial\theta =
-(\partial u/\partial\theta)/p(x)`; the density in the divisions is clamped to ``tiny`` so
that a density that underflows gives a huge gradient instead of NaN.

Shapes: ``x`` (or ``u``) any shape ``(...)``; ``logits``, ``loc``, ``log_scale`` ``(..., K)`` with
the same leading shape (no broadcasting; expand them first). Outputs have ``x``'s shape.
Dtypes: float32 or float64, the same for all four tensors.

The fast paths (``cpp``, ``triton``) run forward and backward per element in one pass, with
no ``(..., K)`` intermediate: the backward recomputes the components from the inputs and the
forward's outputs. ``mixture_icdf`` on the CPU loads an element's K parameters once
(softmax and each component's affine map computed once) and runs every iteration in SIMD
registers, 16 float32 elements per vector. Double backward is not supported.

This file holds, in order: the references, the registrations of the fast paths (fake
tensors and autograd), and the public functions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import backends
from ._checks import check_choice, check_floating, check_int, check_same_device
from ._registration import PairAutograd

__all__ = ["KINDS", "default_icdf_iters", "mixture_cdf", "mixture_cdf_ref", "mixture_icdf", "mixture_icdf_ref"]

CDF_OP = "mixture_cdf"
ICDF_OP = "mixture_icdf"
KINDS = ("logistic", "gaussian")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_SQRT_HALF = math.sqrt(0.5)


def default_icdf_iters(dtype: torch.dtype) -> int:
    """Bisection steps of :func:`mixture_icdf` by default: the dtype's precision in bits plus 16
    (float32 40, float64 69)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"default_icdf_iters: dtype must be a floating-point torch.dtype, got {dtype!r}")
    precision_bits = 1 - round(math.log2(torch.finfo(dtype).eps))
    return precision_bits + 16


# ----------------------------------------------------------------------------- reference


def _component_cdf(z: torch.Tensor, kind: str) -> torch.Tensor:
    # Phi by erfc, not torch.special.ndtr: ndtr is 1 + erf, which loses the lower tail (0 in
    # float32 from z = -6), and the bisection of a small u needs it.
    return torch.sigmoid(z) if kind == "logistic" else 0.5 * torch.special.erfc(z * -_SQRT_HALF)


def _component_log_pdf(z: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "logistic":
        return -z.abs() - 2 * F.softplus(-z.abs())
    return -0.5 * z * z - _HALF_LOG_2PI


def mixture_cdf_ref(
    x: torch.Tensor, logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, *, kind: str = "logistic"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference mixture CDF and log-density in plain PyTorch.

    Args:
        x: ``(...)``.
        logits, loc, log_scale: ``(..., K)``: the components' unnormalized log-weights,
            locations and log-scales.
        kind: ``"logistic"`` or ``"gaussian"``.

    Returns:
        ``(u, log_pdf)``, both ``(...)``.
    """
    log_w = torch.log_softmax(logits, dim=-1)
    z = (x.unsqueeze(-1) - loc) * torch.exp(-log_scale)
    u = (log_w.exp() * _component_cdf(z, kind)).sum(-1)
    log_pdf = torch.logsumexp(log_w + _component_log_pdf(z, kind) - log_scale, dim=-1)
    return u, log_pdf


def mixture_icdf_ref(
    u: torch.Tensor,
    logits: torch.Tensor,
    loc: torch.Tensor,
    log_scale: torch.Tensor,
    *,
    kind: str = "logistic",
    iters: int | None = None,
) -> torch.Tensor:
    """Reference inverse mixture CDF: vectorized bisection in plain PyTorch (see the module
    docstring for the bracket and the implicit gradients).

    Args:
        u: ``(...)``, in [0, 1] (clamped to ``[tiny, 1 - eps/2]``).
        logits, loc, log_scale: ``(..., K)``.
        kind: ``"logistic"`` or ``"gaussian"``.
        iters: bisection steps, default :func:`default_icdf_iters` of ``u.dtype``.

    Returns:
        ``x``, ``(...)``.
    """
    iters = default_icdf_iters(u.dtype) if iters is None else iters
    finfo = torch.finfo(u.dtype)
    with torch.no_grad():
        w = torch.softmax(logits, dim=-1)
        inv_scale = torch.exp(-log_scale)
        target = u.clamp(finfo.tiny, 1 - finfo.eps / 2)
        q = torch.logit(target) if kind == "logistic" else torch.special.ndtri(target)
        quantiles = loc + torch.exp(log_scale) * q.unsqueeze(-1)
        lo, hi = quantiles.amin(-1), quantiles.amax(-1)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            below = (w * _component_cdf((mid.unsqueeze(-1) - loc) * inv_scale, kind)).sum(-1) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        # NaN weights (a NaN logit) fail every comparison above: the bracket would close on
        # its lower end. NaN, as the fast paths give (a NaN u, loc or scale is NaN already).
        x = (0.5 * (lo + hi)).masked_fill_(w.isnan().any(-1), float("nan"))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, logits, loc, log_scale)):
        # One implicit-function step whose value is exactly 0: (u - F(x)) / p has the
        # gradients 1/p for u and -(dF/dtheta)/p for the parameters.
        u_at_x, log_pdf = mixture_cdf_ref(x, logits, loc, log_scale, kind=kind)
        step = (u - u_at_x) / log_pdf.detach().exp().clamp_min(finfo.tiny)
        x = x + (step - step.detach())
    return x


# ------------------------------------------------------------------------- registrations
# The cpp ops' schemas are in csrc/fastgen.cpp, their CPU kernels in csrc/cpu/mixture_cdf.cpp;
# the Triton ops are defined here, with kernels in fastgen/ops/triton/mixture_cdf.py. Both get
# the same fakes and autograd; the backward ops return empty tensors for unrequested grads.


@torch.library.custom_op("fastgen::mixture_cdf_triton", mutates_args=())
def _mixture_cdf_triton(
    x: torch.Tensor, logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton.mixture_cdf import mixture_cdf_forward

    return mixture_cdf_forward(x, logits, loc, log_scale, kind)


@torch.library.custom_op("fastgen::mixture_cdf_triton_backward", mutates_args=())
def _mixture_cdf_triton_backward(
    grad_u: torch.Tensor | None,
    grad_log_pdf: torch.Tensor | None,
    x: torch.Tensor,
    logits: torch.Tensor,
    loc: torch.Tensor,
    log_scale: torch.Tensor,
    u: torch.Tensor,
    log_pdf: torch.Tensor,
    kind: str,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton.mixture_cdf import mixture_cdf_backward

    return mixture_cdf_backward(grad_u, grad_log_pdf, x, logits, loc, log_scale, u, log_pdf, kind, output_mask)


@torch.library.custom_op("fastgen::mixture_icdf_triton", mutates_args=())
def _mixture_icdf_triton(
    u: torch.Tensor, logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, kind: str, iters: int
) -> torch.Tensor:
    from .triton.mixture_cdf import mixture_icdf_forward

    return mixture_icdf_forward(u, logits, loc, log_scale, kind, iters)


@torch.library.custom_op("fastgen::mixture_icdf_triton_backward", mutates_args=())
def _mixture_icdf_triton_backward(
    grad_x: torch.Tensor,
    x: torch.Tensor,
    logits: torch.Tensor,
    loc: torch.Tensor,
    log_scale: torch.Tensor,
    kind: str,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton.mixture_cdf import mixture_icdf_backward

    return mixture_icdf_backward(grad_x, x, logits, loc, log_scale, kind, output_mask)


def _fake_grads(first, logits, loc, log_scale, output_mask):
    """Gradients of (first, logits, loc, log_scale): their shapes, or empty when not requested."""
    inputs = (first, logits, loc, log_scale)
    return tuple(t.new_empty(t.shape) if m else first.new_empty(0) for t, m in zip(inputs, output_mask))


def _fake_cdf(x, logits, loc, log_scale, kind):
    return x.new_empty(x.shape), x.new_empty(x.shape)


def _fake_cdf_backward(grad_u, grad_log_pdf, x, logits, loc, log_scale, u, log_pdf, kind, output_mask):
    return _fake_grads(x, logits, loc, log_scale, output_mask)


def _fake_icdf(u, logits, loc, log_scale, kind, iters):
    return u.new_empty(u.shape)


def _fake_icdf_backward(grad_x, x, logits, loc, log_scale, kind, output_mask):
    return _fake_grads(x, logits, loc, log_scale, output_mask)


def _setup_cdf(ctx, inputs, output):
    x, logits, loc, log_scale, kind = inputs
    ctx.save_for_backward(x, logits, loc, log_scale, *output)
    ctx.kind = kind
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: nothing to read


def _cdf_grads(backward_op):
    def backward(ctx, grad_u, grad_log_pdf):
        need = list(ctx.needs_input_grad[:4])
        if grad_u is None and grad_log_pdf is None:
            return (None,) * 5
        grads = backward_op(grad_u, grad_log_pdf, *ctx.saved_tensors, ctx.kind, need)
        return tuple(g if n else None for g, n in zip(grads, need)) + (None,)

    return backward


def _setup_icdf(ctx, inputs, output):
    u, logits, loc, log_scale, kind, iters = inputs
    ctx.save_for_backward(output, logits, loc, log_scale)
    ctx.kind = kind


def _icdf_grads(backward_op):
    def backward(ctx, grad_x):
        need = list(ctx.needs_input_grad[:4])
        grads = backward_op(grad_x, *ctx.saved_tensors, ctx.kind, need)
        return tuple(g if n else None for g, n in zip(grads, need)) + (None, None)

    return backward


_CDF_AUTOGRAD = PairAutograd(_fake_cdf, _fake_cdf_backward, _setup_cdf, _cdf_grads)
_ICDF_AUTOGRAD = PairAutograd(_fake_icdf, _fake_icdf_backward, _setup_icdf, _icdf_grads)


def _register(cdf_name: str, icdf_name: str) -> tuple:
    """Registers the four ops ``<name>`` and ``<name>_backward``; returns the (cdf, icdf) forward ops."""
    return _CDF_AUTOGRAD.register(cdf_name, f"{cdf_name}_backward"), _ICDF_AUTOGRAD.register(
        icdf_name, f"{icdf_name}_backward"
    )


# float32 and float64 only: a bisection to 16-bit precision is of little use, and PyTorch has
# no half-precision ndtri on the CPU.
_REAL = (torch.float32, torch.float64)
_CDF_BACKENDS = backends.OpBackends(
    CDF_OP,
    {"ref": backends.ref_support(_REAL), "cpp": backends.cpp_support(CDF_OP), "triton": backends.triton_support(_REAL)},
)
_ICDF_BACKENDS = backends.OpBackends(
    ICDF_OP,
    {"ref": backends.ref_support(_REAL), "cpp": backends.cpp_support(ICDF_OP), "triton": backends.triton_support(_REAL)},
)
_FAST_OPS = {"triton": _register("mixture_cdf_triton", "mixture_icdf_triton")}
if _CDF_BACKENDS.supports["cpp"].unavailable is None and _ICDF_BACKENDS.supports["cpp"].unavailable is None:
    _FAST_OPS["cpp"] = _register("mixture_cdf", "mixture_icdf")


# ------------------------------------------------------------------------------ public


def _check_args(op: str, x_name: str, x, logits, loc, log_scale, kind) -> None:
    check_floating(op, x_name, x)
    for name, t in (("logits", logits), ("loc", loc), ("log_scale", log_scale)):
        check_floating(op, name, t)
        if t.dim() != x.dim() + 1 or t.shape[:-1] != x.shape or t.shape[-1] < 1:
            raise ValueError(
                f"{op}: {name} must have shape {x_name}.shape + (K,) = {(*x.shape, 'K')} with K >= 1, "
                f"got {tuple(t.shape)}"
            )
    if not logits.shape[-1] == loc.shape[-1] == log_scale.shape[-1]:
        raise ValueError(
            f"{op}: logits, loc and log_scale must have the same number K of components (last dimension), "
            f"got {logits.shape[-1]}, {loc.shape[-1]} and {log_scale.shape[-1]}"
        )
    check_same_device(op, x_name, x, logits=logits, loc=loc, log_scale=log_scale)
    check_choice(op, "kind", kind, KINDS)


def mixture_cdf(
    x: torch.Tensor,
    logits: torch.Tensor,
    loc: torch.Tensor,
    log_scale: torch.Tensor,
    *,
    kind: str = "logistic",
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CDF and log-density of a K-component mixture per element, equal to :func:`mixture_cdf_ref`.

    Args:
        x: ``(...)``, any strides.
        logits: ``(..., K)``, unnormalized log-weights of the components (softmax over K).
        loc: ``(..., K)``, the components' locations.
        log_scale: ``(..., K)``, the components' log-scales.
        kind: ``"logistic"`` or ``"gaussian"`` components.
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None (see :mod:`fastgen.backends`).

    Returns:
        ``(u, log_pdf)``, both ``(...)``: the mixture CDF at ``x`` and the log of its density
        (the log-determinant of ``x -> u``).

    Example:
        >>> x = torch.randn(8, 3)
        >>> logits, loc, log_scale = torch.randn(3, 8, 3, 4).unbind(0)
        >>> u, log_pdf = mixture_cdf(x, logits, loc, log_scale)
        >>> u.shape, log_pdf.shape
        (torch.Size([8, 3]), torch.Size([8, 3]))
    """
    _check_args(CDF_OP, "x", x, logits, loc, log_scale, kind)
    name = _CDF_BACKENDS.select(backend, x)
    if name == "ref":
        return mixture_cdf_ref(x, logits, loc, log_scale, kind=kind)
    return _FAST_OPS[name][0](x, logits, loc, log_scale, kind)


def mixture_icdf(
    u: torch.Tensor,
    logits: torch.Tensor,
    loc: torch.Tensor,
    log_scale: torch.Tensor,
    *,
    kind: str = "logistic",
    iters: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Inverse of :func:`mixture_cdf` in ``x`` per element, by bisection; equal to
    :func:`mixture_icdf_ref`.

    Args:
        u: ``(...)``, any strides; values in [0, 1] (clamped to ``[tiny, 1 - eps/2]``, so 0
            and 1 give finite ``x``).
        logits, loc, log_scale: ``(..., K)``, as in :func:`mixture_cdf`.
        kind: ``"logistic"`` or ``"gaussian"``.
        iters: bisection steps (int >= 1), each halving the bracket of the component
            quantiles; default :func:`default_icdf_iters` of ``u.dtype`` (40 for float32, 69
            for float64).
        backend: ``"ref"``, ``"cpp"``, ``"triton"``, ``"auto"`` or None.

    Returns:
        ``x``, ``(...)``, with ``mixture_cdf(x)[0] == u`` up to the final bracket and rounding.

    Example:
        >>> logits, loc, log_scale = torch.randn(3, 8, 4).unbind(0)
        >>> x = torch.randn(8)
        >>> u, _ = mixture_cdf(x, logits, loc, log_scale)
        >>> torch.allclose(mixture_icdf(u, logits, loc, log_scale), x, atol=1e-4)
        True
    """
    _check_args(ICDF_OP, "u", u, logits, loc, log_scale, kind)
    iters = default_icdf_iters(u.dtype) if iters is None else check_int(ICDF_OP, "iters", iters, minimum=1)
    name = _ICDF_BACKENDS.select(backend, u)
    if name == "ref":
        return mixture_icdf_ref(u, logits, loc, log_scale, kind=kind, iters=iters)
    return _FAST_OPS[name][1](u, logits, loc, log_scale, kind, iters)
