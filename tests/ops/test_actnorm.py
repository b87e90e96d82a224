"""fastgen.ops.actnorm against actnorm_ref.

Outputs and the gradients of x, loc and log_scale through y and logdet over a grid
(vectors, sequences and images, batch 1, odd sizes, more examples or positions than the
CPU kernel's blocks, non-contiguous inputs, float32/float64), forward and inverse; the
round trip and the log-determinant against the Jacobian in float64; extreme inputs;
opcheck, gradcheck and torch.compile(fullgraph=True); bad inputs, also straight into the
C++ op.
"""

import math

import pytest
import torch

from fastgen.ops import actnorm, actnorm_ref

from ..helpers import backend_params, fast_backends, flow_loss_grads, tolerances

OP = "actnorm"


def make_inputs(shape, *, dtype=torch.float64, device="cpu", contiguous=True, seed=0):
    """[x, loc, log_scale], leaves requiring grad; non-contiguous x is a slice (last stride 2)
    and non-contiguous parameters are every other element of a longer vector."""
    g = torch.Generator().manual_seed(seed)

    def rand(*s, scale=1.0):
        t = (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
        if not contiguous:
            t = torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]
        return t.detach().requires_grad_()

    C = shape[1]
    return [rand(*shape, scale=2.0), rand(C), rand(C, scale=0.5)]


GRID = [
    # (shape, contiguous)
    ((1, 5), True),  # batch 1 vectors
    ((3, 7), False),
    ((2, 3, 11), True),  # sequences
    ((2, 4, 5, 3), False),  # images, odd sizes
    ((1, 2, 4, 4), True),
    ((4100, 3), True),  # vectors: more examples than one CPU block (4096 rows)
    ((3, 2, 70, 70), False),  # images: more positions than one block (4900 > 4096)
]


@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("shape,contiguous", GRID, ids=lambda v: str(v))
@pytest.mark.parametrize("backend,device,dtype", backend_params(OP))
def test_matches_reference(backend, device, dtype, shape, contiguous, inverse):
    if backend == "triton" and math.prod(shape) > 4096 and device == "cpu":
        pytest.skip("the Triton interpreter is too slow for large inputs")
    args = make_inputs(shape, dtype=dtype, device=device, contiguous=contiguous)
    assert contiguous or not args[0].is_contiguous()
    tol = tolerances(dtype)
    out = actnorm(*args, inverse=inverse, backend=backend)
    ref = actnorm_ref(*args, inverse=inverse)
    for got, want in zip(out, ref):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, **tol)
    for name, a, b in zip(("x", "loc", "log_scale"), flow_loss_grads(out, args), flow_loss_grads(ref, args)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("shape", [(3, 6), (2, 2, 4, 4)])
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_round_trip_and_jacobian(backend, shape):
    """inverse(forward(x)) == x, the log-determinants sum to zero, and each equals slogdet
    of the Jacobian of its map (vectors of 6, images of 2x4x4)."""
    x, loc, ls = (a.detach() for a in make_inputs(shape))
    y, ld = actnorm(x, loc, ls, backend=backend)
    x2, ld2 = actnorm(y, loc, ls, inverse=True, backend=backend)
    torch.testing.assert_close(x2, x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ld + ld2, torch.zeros_like(ld), atol=1e-12, rtol=0)
    D = x[0].numel()
    for inp, inverse, logdet in ((x, False, ld), (y, True, ld2)):
        J = torch.autograd.functional.jacobian(
            lambda t: actnorm(t, loc, ls, inverse=inverse, backend=backend)[0], inp
        ).reshape(shape[0], D, shape[0], D)
        for b in range(shape[0]):
            sign, logabs = torch.linalg.slogdet(J[b, :, b])
            assert sign == 1
            torch.testing.assert_close(logabs, logdet[b], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend,device,dtype", [pytest.param("ref", "cpu", torch.float32, id="ref")] + backend_params(OP))
def test_extreme_inputs_are_finite(backend, device, dtype):
    """|x| up to 1e4 and log-scales of +-50 (exp(50) * 1e4 is finite in float32): finite
    outputs and gradients, both directions."""
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(2, 4, 3, 3, generator=g, dtype=torch.float64) * 2e4 - 1e4).to(dtype=dtype, device=device)
    loc = torch.tensor([0.0, 1e3, -1e3, 5.0], dtype=dtype, device=device)
    ls = torch.tensor([50.0, -50.0, 0.0, 20.0], dtype=dtype, device=device)
    for inverse in (False, True):
        leaves = [t.clone().requires_grad_() for t in (x, loc, ls)]
        y, logdet = actnorm(*leaves, inverse=inverse, backend=backend)
        assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
        grads = torch.autograd.grad(y.sum() + logdet.sum(), leaves)
        assert all(torch.isfinite(gr).all() for gr in grads)
        ref = actnorm_ref(x, loc, ls, inverse=inverse)
        torch.testing.assert_close(y, ref[0], **tolerances(dtype))
        torch.testing.assert_close(logdet, ref[1], **tolerances(dtype))


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, (torch.float64,)))
def test_partial_gradients(backend, device, dtype):
    """Only the parameters need a gradient (x is data); only y or only logdet is used."""
    x, loc, ls = make_inputs((2, 3, 4, 4), dtype=dtype, device=device)
    x.requires_grad_(False)
    for pick in (0, 1):
        out = actnorm(x, loc, ls, backend=backend)[pick].square().sum()
        ref = actnorm_ref(x, loc, ls)[pick].square().sum()
        got = torch.autograd.grad(out, (loc, ls), allow_unused=True)
        want = torch.autograd.grad(ref, (loc, ls), allow_unused=True)
        for a, b in zip(got, want):
            if b is None:  # logdet does not depend on loc
                assert a is None or torch.equal(a, torch.zeros_like(a))
            else:
                torch.testing.assert_close(a, b, **tolerances(dtype))


OP_NAMES = {"cpp": ("actnorm", "actnorm_backward"), "triton": ("actnorm_triton", "actnorm_triton_backward")}


@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float64))
def test_opcheck(backend):
    forward, backward = (getattr(torch.ops.fastgen, n).default for n in OP_NAMES[backend])
    for shape in ((3, 4), (2, 3, 4, 5)):
        x, loc, ls = make_inputs(shape)
        torch.library.opcheck(forward, (x, loc, ls, False))
        torch.library.opcheck(forward, (x, loc, ls, True))
        d = [t.detach() for t in (x, loc, ls)]
        gy, gl = torch.randn(shape, dtype=torch.float64), torch.randn(shape[0], dtype=torch.float64)
        for mask in ([True] * 3, [False, True, True], [True, False, False]):
            torch.library.opcheck(backward, (gy, gl, *d, False, mask))


@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float64))
def test_gradcheck(backend):
    args = make_inputs((2, 3, 2, 3))
    for inverse in (False, True):
        assert torch.autograd.gradcheck(
            lambda *a: actnorm(*a, inverse=inverse, backend=backend), tuple(args), fast_mode=backend == "triton"
        )


@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float32))
def test_torch_compile_fullgraph(backend):
    x, loc, ls = make_inputs((2, 3, 4, 5), dtype=torch.float32)

    def f(x, loc, ls):
        y, ld = actnorm(x, loc, ls, backend=backend)
        z, ld2 = actnorm(y.tanh(), loc * 2, ls, inverse=True, backend=backend)
        return z.square().sum() + (ld * ld2).sum()

    compiled = torch.compile(f, fullgraph=True)
    out, out_eager = compiled(x, loc, ls), f(x, loc, ls)
    torch.testing.assert_close(out, out_eager, **tolerances(torch.float32))
    for a, b in zip(torch.autograd.grad(out, (x, loc, ls)), torch.autograd.grad(out_eager, (x, loc, ls))):
        torch.testing.assert_close(a, b, **tolerances(torch.float32))


# ------------------------------------------------------------------------------ bad inputs


def good_kwargs():
    x, loc, ls = (a.detach() for a in make_inputs((2, 3, 4, 4)))
    return dict(x=x, loc=loc, log_scale=ls, inverse=False)


BAD = [
    ("x", torch.randn(3, dtype=torch.float64), ValueError, "x"),
    ("x", torch.zeros(2, 3, 4, 4, dtype=torch.int32), TypeError, "x"),
    ("x", "x", TypeError, "x"),
    ("loc", torch.randn(4, dtype=torch.float64), ValueError, "loc"),
    ("loc", torch.randn(1, 3, dtype=torch.float64), ValueError, "loc"),
    ("loc", torch.randn(3, dtype=torch.float32), TypeError, "loc"),
    ("log_scale", torch.randn(2, dtype=torch.float64), ValueError, "log_scale"),
    ("log_scale", torch.empty(3, dtype=torch.float64, device="meta"), ValueError, "log_scale"),
    ("log_scale", None, TypeError, "log_scale"),
    ("inverse", "yes", TypeError, "inverse"),
]


@pytest.mark.parametrize("name,value,error,match", BAD, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_bad_input_raises(backend, name, value, error, match):
    kw = good_kwargs()
    kw[name] = value
    with pytest.raises(error, match=match):
        actnorm(kw.pop("x"), kw.pop("loc"), kw.pop("log_scale"), **kw, backend=backend)


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
def test_cpp_ops_called_directly_check_their_arguments():
    x, loc, ls = good_kwargs()["x"], good_kwargs()["loc"], good_kwargs()["log_scale"]
    ops = torch.ops.fastgen
    with pytest.raises(ValueError, match="loc"):
        ops.actnorm(x, loc[:2], ls, False)
    with pytest.raises(TypeError, match="log_scale"):
        ops.actnorm(x, loc, ls.float(), False)
    with pytest.raises(ValueError, match="x"):
        ops.actnorm(x[0, 0, 0], loc, ls, False)
    with pytest.raises(ValueError, match="grad_y"):
        ops.actnorm_backward(x[:, :2], torch.zeros(2, dtype=x.dtype), x, loc, ls, False, [True] * 3)
    with pytest.raises(ValueError, match="grad_logdet"):
        ops.actnorm_backward(x, torch.zeros(5, dtype=x.dtype), x, loc, ls, False, [True] * 3)
