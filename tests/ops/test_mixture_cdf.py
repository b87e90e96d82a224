"""fastgen.ops.mixture_cdf and mixture_icdf against the references.

Outputs and all gradients (x or u, logits, loc, log_scale) over a grid (K = 1, 4, 16, scalar,
batch-1, odd and multi-dimensional leading shapes, more elements than one CPU block,
non-contiguous inputs, float32/float64, both kinds); the bisection step for step with a
few iterations; the round trip icdf(cdf(x)) = x with very narrow and very wide components;
log_pdf against autograd's du/dx; the inverse's gradients against finite differences;
extreme and NaN inputs; opcheck, gradcheck, torch.compile(fullgraph=True); every CPU
instruction set; bad arguments.
"""

import pytest
import torch

from fastgen.backends import BackendUnavailableError
from fastgen.ops import default_icdf_iters, mixture_cdf, mixture_cdf_ref, mixture_icdf, mixture_icdf_ref

from ..helpers import backend_params, fast_backends, run_on_isa, tolerances

CDF_OP, ICDF_OP = "mixture_cdf", "mixture_icdf"
KINDS = ("logistic", "gaussian")


def rand(shape, g, *, dtype, device, scale=1.0, contiguous=True):
    """randn * scale, requiring grad; non-contiguous tensors are strided slices."""
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
    if not contiguous:
        t = torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]  # last stride 2
    return t.detach().requires_grad_()


def cpu_params(op):
    """(backend, dtype) for the reference and every fast CPU backend."""
    return [
        pytest.param(b, dt, id=f"{b}-{str(dt)[6:]}")
        for dt in (torch.float32, torch.float64)
        for b in ["ref"] + fast_backends(op, "cpu", dt)
    ]


def make_mixture(shape, K, *, dtype=torch.float64, device="cpu", contiguous=True, seed=0):
    """(logits, loc, log_scale), each shape + (K,): moderate scales (the grid's cases)."""
    g = torch.Generator().manual_seed(seed)
    kw = dict(dtype=dtype, device=device, contiguous=contiguous)
    return rand((*shape, K), g, **kw), rand((*shape, K), g, scale=2.0, **kw), rand((*shape, K), g, scale=0.5, **kw)


def make_u(shape, *, dtype=torch.float64, device="cpu", contiguous=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    u = (torch.rand(shape, generator=g, dtype=torch.float64) * 0.98 + 0.01).to(dtype=dtype, device=device)
    if not contiguous:
        u = torch.stack([u, torch.zeros_like(u)], dim=-1)[..., 0]
    return u.requires_grad_()


def assert_all_close(got, want, tol, names):
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")


GRID = [
    # (leading shape, K, contiguous)
    ((7,), 1, True),
    ((1,), 4, False),
    ((), 4, True),
    ((2, 3, 5), 16, False),
    ((3, 50), 4, True),  # more elements than one CPU block (64 float32, 32 float64), with a tail
    ((5,), 16, True),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape,K,contiguous", GRID, ids=str)
@pytest.mark.parametrize("backend,device,dtype", backend_params(CDF_OP))
def test_cdf_matches_reference(backend, device, dtype, shape, K, contiguous, kind):
    g = torch.Generator().manual_seed(2)
    x = rand(shape, g, dtype=dtype, device=device, scale=3.0, contiguous=contiguous)
    mix = make_mixture(shape, K, dtype=dtype, device=device, contiguous=contiguous)
    assert contiguous or not mix[0].is_contiguous()
    tol = tolerances(dtype)
    out = mixture_cdf(x, *mix, kind=kind, backend=backend)
    ref = mixture_cdf_ref(x, *mix, kind=kind)
    assert_all_close(out, ref, tol, ("u", "log_pdf"))
    grads = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in ref]
    inputs = (x, *mix)
    names = ("x", "logits", "loc", "log_scale")
    # Each output alone (the other's gradient is None inside the autograd formula), then both.
    for i in range(2):
        got = torch.autograd.grad(out[i], inputs, grads[i], retain_graph=True)
        assert_all_close(got, torch.autograd.grad(ref[i], inputs, grads[i], retain_graph=True), tol, names)
    assert_all_close(torch.autograd.grad(out, inputs, grads), torch.autograd.grad(ref, inputs, grads), tol, names)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape,K,contiguous", GRID, ids=str)
@pytest.mark.parametrize("backend,device,dtype", backend_params(ICDF_OP))
def test_icdf_matches_reference(backend, device, dtype, shape, K, contiguous, kind):
    """At the default iteration count (converged: the two x differ by rounding only)."""
    u = make_u(shape, dtype=dtype, device=device, contiguous=contiguous)
    mix = make_mixture(shape, K, dtype=dtype, device=device, contiguous=contiguous)
    tol = tolerances(dtype)
    x = mixture_icdf(u, *mix, kind=kind, backend=backend)
    x_ref = mixture_icdf_ref(u, *mix, kind=kind)
    assert_all_close((x,), (x_ref,), tol, ("x",))
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(x)
    inputs = (u, *mix)
    got, want = torch.autograd.grad(x, inputs, grad), torch.autograd.grad(x_ref, inputs, grad)
    assert_all_close(got, want, tol, ("u", "logits", "loc", "log_scale"))


@pytest.mark.parametrize("iters", [1, 2, 7])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend,device,dtype", backend_params(ICDF_OP))
def test_icdf_bisects_like_reference(backend, device, dtype, kind, iters):
    """The same bracket and the same steps: after a few iterations x is the middle of the
    same (still wide) bracket, not merely a nearby root."""
    u = make_u((40,), dtype=dtype, device=device).detach()
    mix = [t.detach() for t in make_mixture((40,), 4, dtype=dtype, device=device)]
    x = mixture_icdf(u, *mix, kind=kind, iters=iters, backend=backend)
    x_ref = mixture_icdf_ref(u, *mix, kind=kind, iters=iters)
    torch.testing.assert_close(x, x_ref, **tolerances(dtype))
    converged = mixture_icdf_ref(u, *mix, kind=kind)
    assert (x - converged).abs().max() > 1e-3  # the few steps did not converge: the test is sharp


def test_default_iters():
    assert default_icdf_iters(torch.float32) == 40 and default_icdf_iters(torch.float64) == 69


# ---------------------------------------------------------------------------- round trip


def round_trip_mixture(K, kind, case, dtype, seed):
    """(logits, loc, log_scale, x) in float64 for the round trip. K = 1: one component that is
    wide (log_scale 7, x over [-30, 30]), unit-ish, or very narrow (log_scale -10, x within
    20 scales of it, where its CDF is not yet 0 or 1 in float64). K > 1: locations over
    [-30, 30], log-scales spread over [-10, 7] with both ends present, component 0 wide so
    that the density covers the whole interval; x uniform on [-30, 30] plus points within
    a few scales of every component, narrow ones included."""
    g = torch.Generator().manual_seed(seed)
    if K == 1:
        log_scale = torch.tensor([{"wide": 7.0, "unit": 1.5, "narrow": -10.0}[case]], dtype=torch.float64)
        loc = torch.tensor([3.3], dtype=torch.float64)
        logits = torch.zeros(1, dtype=torch.float64)
        if case == "narrow":
            zmax = 20.0 if kind == "logistic" else 6.0
            x = loc + log_scale.exp() * torch.linspace(-zmax, zmax, 201, dtype=torch.float64)
        else:
            x = torch.linspace(-30, 30, 201, dtype=torch.float64)
    else:
        loc = torch.rand(K, generator=g, dtype=torch.float64) * 60 - 30
        log_scale = torch.rand(K, generator=g, dtype=torch.float64) * 17 - 10
        log_scale[0], log_scale[1] = 7.0, -10.0
        if K > 2:
            log_scale[2] = -10.0
        logits = torch.randn(K, generator=g, dtype=torch.float64)
        near = loc[:, None] + log_scale.exp()[:, None] * torch.linspace(-3, 3, 7, dtype=torch.float64)
        x = torch.cat([torch.rand(200, generator=g, dtype=torch.float64) * 60 - 30, near.flatten().clamp(-30, 30)])
    n = x.shape[0]
    return [t.expand(n, K).contiguous() for t in (logits, loc, log_scale)], x


@pytest.mark.parametrize("K,case", [(1, "wide"), (1, "unit"), (1, "narrow"), (4, "mixed"), (16, "mixed")])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend,dtype", cpu_params(ICDF_OP))
def test_round_trip(backend, dtype, kind, K, case):
    """icdf(cdf(x)) = x, within what the dtype can resolve:

        |x' - x| <= 8 eps (|x| + max_k |loc_k| + u / p(x))

    with eps the dtype's machine epsilon and u, p(x) the mixture CDF and density at x (in
    float64). The first term is the rounding of the components' arguments (x - loc_k) / s_k,
    the second the rounding of u to the dtype (a relative change eps in u moves x by
    eps u / p). In float64 this bound is below 1e-5 everywhere here, and x' is checked to
    1e-5 as well."""
    mix, x = round_trip_mixture(K, kind, case, dtype, seed=K)
    u64, log_pdf64 = mixture_cdf_ref(x, *mix, kind=kind)
    eps = torch.finfo(dtype).eps
    bound = 8 * eps * (x.abs() + mix[1].abs().amax(-1) + u64 / log_pdf64.exp())
    # The bound is sharp: across it the CDF moves by a few percent at most (median), so an
    # answer off by more than the dtype's resolution fails.
    assert (bound * log_pdf64.exp()).median() < 0.05
    mix_d = [t.to(dtype) for t in mix]
    u, _ = mixture_cdf(x.to(dtype), *mix_d, kind=kind, backend=backend)
    x_back = mixture_icdf(u, *mix_d, kind=kind, backend=backend).double()
    err = (x_back - x).abs()
    worst = (err / bound).argmax()
    assert (err <= bound).all(), f"x={x[worst].item()}: error {err[worst].item():.3g} > bound {bound[worst].item():.3g}"
    if dtype == torch.float64:
        assert err.max() <= 1e-5


# ----------------------------------------------------------------------- log-determinant


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(CDF_OP, "cpu", torch.float64))
def test_log_pdf_is_log_det_of_cdf(backend, kind):
    """log_pdf is log |det du/dx| of the elementwise flow x -> u: against the Jacobian of the
    reference's u by autograd, and the op's own du/dx (its backward) against log_pdf."""
    x = rand((9,), torch.Generator().manual_seed(4), dtype=torch.float64, device="cpu", scale=3.0)
    mix = [t.detach() for t in make_mixture((9,), 5, seed=5)]
    J = torch.autograd.functional.jacobian(lambda v: mixture_cdf_ref(v, *mix, kind=kind)[0], x.detach())
    assert torch.count_nonzero(J - torch.diag(torch.diagonal(J))) == 0  # elementwise
    u, log_pdf = mixture_cdf(x, *mix, kind=kind, backend=backend)
    torch.testing.assert_close(log_pdf, torch.diagonal(J).log(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_pdf.sum(), torch.linalg.slogdet(J).logabsdet, rtol=1e-10, atol=1e-10)
    (du_dx,) = torch.autograd.grad(u.sum(), x)
    torch.testing.assert_close(du_dx.log(), log_pdf.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(ICDF_OP, "cpu", torch.float64))
def test_icdf_gradients_by_finite_differences(backend, kind):
    """Implicit-function gradients against central differences of the op itself (which
    converges to the root, so its differences are the inverse's derivatives)."""
    u = make_u((6,)).detach()
    mix = [t.detach() for t in make_mixture((6,), 3, seed=6)]
    inputs = [u, *mix]

    def f(*args):
        return mixture_icdf(*args, kind=kind, backend=backend)

    leaves = [t.clone().requires_grad_() for t in inputs]
    analytic = torch.autograd.grad(f(*leaves).sum(), leaves)
    h = 1e-6
    for i, t in enumerate(inputs):
        numeric = torch.zeros_like(t)
        for j in range(t.numel()):
            plus, minus = t.clone(), t.clone()
            plus.view(-1)[j] += h
            minus.view(-1)[j] -= h
            args_p = inputs[:i] + [plus] + inputs[i + 1 :]
            args_m = inputs[:i] + [minus] + inputs[i + 1 :]
            numeric.view(-1)[j] = (f(*args_p).sum() - f(*args_m).sum()) / (2 * h)
        torch.testing.assert_close(analytic[i], numeric, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------ extreme inputs




def extreme_mixture(K, dtype):
    """Components with log-scales at -10 (very narrow) and 7 (very wide), locations up to 1e4."""
    log_scale = torch.tensor([-10.0, 7.0, 0.0, -10.0][:K], dtype=dtype)
    loc = torch.tensor([0.0, -1e4, 1e4, 3.0][:K], dtype=dtype)
    logits = torch.tensor([0.0, -3.0, 2.0, 40.0][:K], dtype=dtype)
    return logits, loc, log_scale


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend,dtype", cpu_params(CDF_OP))
def test_extreme_inputs_are_finite(backend, dtype, kind, K):
    """|x| up to 1e4, log-scales at -10 and 7, u at exactly 0 and 1, K = 1: finite outputs
    and gradients, never NaN."""
    x = torch.tensor([-1e4, -1e3, -30.0, -1e-3, 0.0, 1e-6, 3.0, 30.0, 1e3, 1e4], dtype=dtype)
    u = torch.tensor([0.0, 1e-30, 1e-7, 0.25, 0.5, 1 - 1e-7, 1.0], dtype=dtype)
    for values in (x, u):
        n = values.shape[0]
        mix = [t.expand(n, K).clone().requires_grad_() for t in extreme_mixture(K, dtype)]
        v = values.clone().requires_grad_()
        if values is x:
            outs = mixture_cdf(v, *mix, kind=kind, backend=backend)
            assert ((outs[0] >= 0) & (outs[0] <= 1 + 4 * torch.finfo(dtype).eps)).all()
        else:
            outs = (mixture_icdf(v, *mix, kind=kind, backend=backend),)
        for out in outs:
            assert torch.isfinite(out).all(), out
        grads = torch.autograd.grad(sum(o.sum() for o in outs), [v, *mix])
        for name, gr in zip(("input", "logits", "loc", "log_scale"), grads):
            assert torch.isfinite(gr).all(), f"{name}: {gr}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend,dtype", cpu_params(CDF_OP))
def test_u_at_0_and_1_give_the_extreme_quantiles(backend, dtype, kind):
    """u = 0 and 1 are clamped to the dtype's smallest normal and largest number below 1."""
    logits, loc, log_scale = (torch.full((2, 1), v, dtype=dtype) for v in (0.0, 2.0, 0.0))
    x = mixture_icdf(torch.tensor([0.0, 1.0], dtype=dtype), logits, loc, log_scale, kind=kind, backend=backend)
    finfo = torch.finfo(dtype)
    ends = torch.tensor([finfo.tiny, 1 - finfo.eps / 2], dtype=torch.float64)
    q = torch.logit(ends) if kind == "logistic" else torch.special.ndtri(ends)
    torch.testing.assert_close(x.double(), 2.0 + q, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,dtype", cpu_params(CDF_OP))
def test_nan_propagates(backend, dtype):
    logits, loc, log_scale = [t.detach() for t in make_mixture((4,), 3, dtype=dtype)]
    x = torch.tensor([0.5, float("nan"), 0.1, -0.2], dtype=dtype)
    u, log_pdf = mixture_cdf(x, logits, loc, log_scale, backend=backend)
    assert torch.isnan(u[1]) and torch.isnan(log_pdf[1]) and not torch.isnan(u[[0, 2, 3]]).any()
    loc, logits = loc.clone(), logits.clone()
    loc[2, 1] = float("nan")
    logits[3, 0] = float("nan")  # every weight of element 3 (the reference's bisection read it as 0)
    t = torch.tensor([0.3, float("nan"), 0.5, 0.7], dtype=dtype)
    for kind in KINDS:
        xs = mixture_icdf(t, logits, loc, log_scale, kind=kind, backend=backend)
        assert torch.isnan(xs[1:]).all() and torch.isfinite(xs[0])


@pytest.mark.parametrize("backend", fast_backends(CDF_OP, "cpu", torch.float64))
def test_empty(backend):
    mix = make_mixture((0, 3), 4)
    u, log_pdf = mixture_cdf(torch.zeros(0, 3, dtype=torch.float64), *mix, backend=backend)
    x = mixture_icdf(torch.zeros(0, 3, dtype=torch.float64), *mix, backend=backend)
    assert u.shape == log_pdf.shape == x.shape == (0, 3)


# --------------------------------------------------------------------- registration checks


def op_names(backend):
    suffix = "_triton" if backend == "triton" else ""
    names = [f"{op}{suffix}{part}" for op in ("mixture_cdf", "mixture_icdf") for part in ("", "_backward")]
    return [getattr(torch.ops.fastgen, name).default for name in names]


@pytest.mark.parametrize("backend", fast_backends(CDF_OP, "cpu", torch.float64))
def test_opcheck(backend):
    cdf, cdf_backward, icdf, icdf_backward = op_names(backend)
    mix = make_mixture((2, 3), 4)
    x = rand((2, 3), torch.Generator().manual_seed(7), dtype=torch.float64, device="cpu")
    u = make_u((2, 3))
    for kind in KINDS:
        torch.library.opcheck(cdf, (x, *mix, kind))
        torch.library.opcheck(icdf, (u, *mix, kind, 12))
        d = [t.detach() for t in (x, *mix)]
        u_x, log_pdf = cdf(*d, kind)
        g = torch.randn(2, 3, dtype=torch.float64)
        masks = ([True] * 4, [False, True, False, True], [True, False, True, False])
        for grads, mask in zip(((g, g), (None, g), (g, None)), masks):
            torch.library.opcheck(cdf_backward, (*grads, *d, u_x, log_pdf, kind, mask))
        xi = icdf(u.detach(), *d[1:], kind, 12)
        for mask in ([True] * 4, [True, False, False, True]):
            torch.library.opcheck(icdf_backward, (g, xi, *d[1:], kind, mask))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", fast_backends(CDF_OP, "cpu", torch.float64))
def test_gradcheck(backend, kind):
    x = rand((2, 3), torch.Generator().manual_seed(8), dtype=torch.float64, device="cpu")
    mix = make_mixture((2, 3), 3)
    fast = backend == "triton"  # the interpreter is slow: one random direction
    assert torch.autograd.gradcheck(lambda *a: mixture_cdf(*a, kind=kind, backend=backend), (x, *mix), fast_mode=fast)
    u = make_u((2, 3))
    assert torch.autograd.gradcheck(lambda *a: mixture_icdf(*a, kind=kind, backend=backend), (u, *mix), fast_mode=fast)


@pytest.mark.parametrize("backend", fast_backends(CDF_OP, "cpu", torch.float32))
def test_torch_compile_fullgraph(backend):
    """A Flow++-style step: the CDF's u and log-determinant, then the inverse, in one graph."""
    x = rand((4, 5), torch.Generator().manual_seed(9), dtype=torch.float32, device="cpu")
    mix = make_mixture((4, 5), 3, dtype=torch.float32)

    def f(x, logits, loc, log_scale):
        u, log_pdf = mixture_cdf(x, logits, loc, log_scale, kind="logistic", backend=backend)
        x_back = mixture_icdf(u * 0.5 + 0.25, logits, loc, log_scale, kind="gaussian", backend=backend)
        return log_pdf.sum() + x_back.square().sum()

    compiled = torch.compile(f, fullgraph=True)
    y, y_eager = compiled(x, *mix), f(x, *mix)
    torch.testing.assert_close(y, y_eager, **tolerances(torch.float32))
    inputs = (x, *mix)
    for a, b in zip(torch.autograd.grad(y, inputs), torch.autograd.grad(y_eager, inputs)):
        torch.testing.assert_close(a, b, **tolerances(torch.float32))


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_cpu_instruction_set_matches_reference(isa):
    """The CPU kernels are compiled once per instruction set; FASTGEN_CPU_ISA forces each."""
    if "cpp" not in fast_backends(CDF_OP, "cpu"):
        pytest.skip("C++ extension not built")
    code = (
        "from fastgen.ops import mixture_cdf, mixture_cdf_ref, mixture_icdf, mixture_icdf_ref\n"
        "for dtype in (torch.float32, torch.float64):\n"
        "    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)\n"
        "    for kind in ('logistic', 'gaussian'):\n"
        "        x = (torch.randn(70, dtype=dtype) * 3).requires_grad_()\n"
        "        u = (torch.rand(70, dtype=dtype) * 0.98 + 0.01).requires_grad_()\n"
        "        mix = [(torch.randn(70, 5, dtype=dtype) * s).requires_grad_() for s in (1.0, 2.0, 0.5)]\n"
        "        for op, ref, first in ((mixture_cdf, mixture_cdf_ref, x), (mixture_icdf, mixture_icdf_ref, u)):\n"
        "            out, want = op(first, *mix, kind=kind, backend='cpp'), ref(first, *mix, kind=kind)\n"
        "            out, want = (out, want) if op is mixture_cdf else ((out,), (want,))\n"
        "            g = [torch.randn_like(o) for o in out]\n"
        "            got = out + torch.autograd.grad(out, (first, *mix), g)\n"
        "            for a, b in zip(got, want + torch.autograd.grad(want, (first, *mix), g)):\n"
        "                torch.testing.assert_close(a, b, **tol)\n"
    )
    run_on_isa(isa, code)


# ------------------------------------------------------------------------------ bad inputs


def good_args(shape=(2, 3), K=4):
    return [torch.zeros(shape, dtype=torch.float64)] + [t.detach() for t in make_mixture(shape, K)]


# (argument index, value, error, message; {x} is the first argument's name)
BAD = [
    (0, [1.0], TypeError, "{x} must be a torch.Tensor"),
    (0, torch.zeros(2, 3, dtype=torch.int64), TypeError, "{x} must have a floating-point dtype"),
    (0, torch.zeros(2, 3, dtype=torch.float32), TypeError, "logits has dtype torch.float64 but {x} has torch.float32"),
    (0, torch.zeros(3, 2, dtype=torch.float64), ValueError, r"logits must have shape {x}.shape \+ \(K,\)"),
    (0, torch.zeros(2, 3, 4, dtype=torch.float64), ValueError, r"logits must have shape {x}.shape \+ \(K,\)"),
    (1, torch.zeros(2, 3, dtype=torch.float64), ValueError, "logits must have shape"),
    (1, torch.zeros(2, 3, 0, dtype=torch.float64), ValueError, "K >= 1"),
    (2, torch.zeros(2, 3, 5, dtype=torch.float64), ValueError, "same number K of components"),
    (3, torch.zeros(2, 3, 4, dtype=torch.float32), TypeError, "log_scale has dtype torch.float32"),
    (3, torch.zeros(2, 3, 4, dtype=torch.float64, device="meta"), ValueError, "log_scale is on meta but {x} is on cpu"),
    (2, "loc", TypeError, "loc must be a torch.Tensor"),
]


@pytest.mark.parametrize("index,value,error,match", BAD, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(CDF_OP, "cpu", torch.float64))
def test_bad_arguments_raise(backend, index, value, error, match):
    for op, name in ((mixture_cdf, "x"), (mixture_icdf, "u")):
        args = good_args()
        args[index] = value
        with pytest.raises(error, match=match.format(x=name)):
            op(*args, backend=backend)


@pytest.mark.parametrize("backend", ["ref"] + fast_backends(CDF_OP, "cpu", torch.float64))
def test_bad_options_raise(backend):
    args = good_args()
    for op in (mixture_cdf, mixture_icdf):
        with pytest.raises(ValueError, match="kind must be one of 'logistic', 'gaussian', got 'normal'"):
            op(*args, kind="normal", backend=backend)
    for iters, error in ((0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match="iters"):
            mixture_icdf(*args, iters=iters, backend=backend)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float32", None])
def test_default_icdf_iters_needs_a_floating_dtype(dtype):
    with pytest.raises(TypeError, match="default_icdf_iters: dtype must be a floating-point torch.dtype"):
        default_icdf_iters(dtype)
    assert default_icdf_iters(torch.float16) == 27


def test_half_precision_is_refused_with_reasons():
    args = [t.half() for t in good_args()]
    for op in (mixture_cdf, mixture_icdf):
        with pytest.raises(BackendUnavailableError, match="ref: does not support float16"):
            op(*args)


@pytest.mark.skipif("cpp" not in fast_backends(CDF_OP, "cpu"), reason="C++ extension not built")
def test_cpp_ops_called_directly_check_their_arguments():
    x, logits, loc, log_scale = good_args()
    ops = torch.ops.fastgen
    with pytest.raises(ValueError, match="loc must have shape"):
        ops.mixture_cdf(x, logits, loc[:, :2], log_scale, "logistic")
    with pytest.raises(ValueError, match="components"):
        ops.mixture_cdf(x, logits, loc[..., :3], log_scale, "logistic")
    with pytest.raises(TypeError, match="logits must have dtype"):
        ops.mixture_cdf(x, logits.float(), loc, log_scale, "logistic")
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.mixture_icdf(x.half(), logits.half(), loc.half(), log_scale.half(), "logistic", 3)
    with pytest.raises(ValueError, match="kind"):
        ops.mixture_icdf(x, logits, loc, log_scale, "laplace", 3)
    with pytest.raises(ValueError, match="iters"):
        ops.mixture_icdf(x, logits, loc, log_scale, "logistic", 0)
    u, log_pdf = ops.mixture_cdf(x, logits, loc, log_scale, "gaussian")
    with pytest.raises(ValueError, match="grad_u"):
        ops.mixture_cdf_backward(x[:1], None, x, logits, loc, log_scale, u, log_pdf, "gaussian", [True] * 4)
    with pytest.raises(ValueError, match="log_pdf"):
        ops.mixture_cdf_backward(x, x, x, logits, loc, log_scale, u, log_pdf[0], "gaussian", [True] * 4)
    with pytest.raises(ValueError, match="grad_x"):
        ops.mixture_icdf_backward(x.t(), x, logits, loc, log_scale, "gaussian", [True] * 4)
