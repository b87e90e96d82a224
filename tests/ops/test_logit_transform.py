"""fastgen.ops.logit_transform against logit_transform_ref.

Outputs and the gradient of x through y and logdet over a grid (vectors and images, batch
1, odd sizes, an example longer than the CPU kernel's chunk, non-contiguous inputs,
float32/float64, alpha 0 / 1e-6 / 0.05), forward and inverse; the round trip and the
log-determinant against the Jacobian in float64; extreme inputs (x at 0 and 1, |y| up to
1e4); opcheck, gradcheck and torch.compile(fullgraph=True); bad inputs, also straight
into the C++ op.
"""

import math

import pytest
import torch

from fastgen.ops import logit_transform, logit_transform_ref

from ..helpers import backend_params, fast_backends, tolerances

OP = "logit_transform"


def make_x(shape, *, inverse, dtype=torch.float64, device="cpu", contiguous=True, seed=0):
    """Data in (0, 1) kept off the edges (forward) or logits (inverse), a leaf requiring grad."""
    g = torch.Generator().manual_seed(seed)
    if inverse:
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    else:
        x = torch.rand(shape, generator=g, dtype=torch.float64) * 0.98 + 0.01
    x = x.to(dtype=dtype, device=device)
    if not contiguous:
        x = torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]
    return x.detach().requires_grad_()


def loss_grad(out, x, seed=1):
    y, logdet = out
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
    gl = torch.randn(logdet.shape, generator=g, dtype=torch.float64).to(logdet)
    return torch.autograd.grad((y * gy).sum() + (logdet * gl).sum(), x)[0]


GRID = [
    # (shape, contiguous, alpha)
    ((1, 6), True, 0.05),  # batch 1
    ((3, 7), False, 0.0),
    ((2, 3, 5, 7), True, 1e-6),
    ((2, 1, 4, 4), False, 0.05),
    ((2, 3, 80, 80), True, 0.05),  # longer than one CPU chunk (16384 elements)
]


@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("shape,contiguous,alpha", GRID, ids=lambda v: str(v))
@pytest.mark.parametrize("backend,device,dtype", backend_params(OP))
def test_matches_reference(backend, device, dtype, shape, contiguous, alpha, inverse):
    if backend == "triton" and math.prod(shape) > 4096 and device == "cpu":
        pytest.skip("the Triton interpreter is too slow for large inputs")
    x = make_x(shape, inverse=inverse, dtype=dtype, device=device, contiguous=contiguous)
    assert contiguous or not x.is_contiguous()
    tol = tolerances(dtype)
    out = logit_transform(x, alpha=alpha, inverse=inverse, backend=backend)
    ref = logit_transform_ref(x, alpha=alpha, inverse=inverse)
    for got, want in zip(out, ref):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(loss_grad(out, x), loss_grad(ref, x), **tol)


@pytest.mark.parametrize("alpha", [0.0, 0.05])
@pytest.mark.parametrize("shape", [(3, 6), (2, 2, 4, 4)])
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_round_trip_and_jacobian(backend, shape, alpha):
    """inverse(forward(x)) == x, the log-determinants sum to zero, and each equals slogdet
    of the Jacobian of its map (vectors of 6, images of 2x4x4)."""
    x = make_x(shape, inverse=False).detach()
    y, ld = logit_transform(x, alpha=alpha, backend=backend)
    x2, ld2 = logit_transform(y, alpha=alpha, inverse=True, backend=backend)
    torch.testing.assert_close(x2, x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ld + ld2, torch.zeros_like(ld), atol=1e-10, rtol=0)
    D = x[0].numel()
    for inp, inverse, logdet in ((x, False, ld), (y, True, ld2)):
        J = torch.autograd.functional.jacobian(
            lambda t: logit_transform(t, alpha=alpha, inverse=inverse, backend=backend)[0], inp
        ).reshape(shape[0], D, shape[0], D)
        for b in range(shape[0]):
            sign, logabs = torch.linalg.slogdet(J[b, :, b])
            assert sign == 1
            torch.testing.assert_close(logabs, logdet[b], atol=1e-10, rtol=1e-10)


# log(0) = -inf on purpose (alpha = 0); the Triton interpreter's numpy warns about it.
@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize("backend,device,dtype", [pytest.param("ref", "cpu", torch.float32, id="ref")] + backend_params(OP))
def test_extreme_inputs(backend, device, dtype):
    """The inverse of |y| up to 1e4 and the forward of x at exactly 0 and 1 (alpha > 0) are
    finite, gradients included; with alpha = 0 the forward at 0 and 1 is -inf and +inf (the
    math), not NaN."""
    y = torch.tensor([[-1e4, 1e4, -100.0, 100.0, -30.0, 30.0, 0.0, 1e-8]], dtype=dtype, device=device)
    x = torch.tensor([[0.0, 1.0, 1e-30, 1 - 1e-7, 0.5, 0.25]], dtype=dtype, device=device)
    for inp, inverse, alpha in ((y, True, 0.05), (y, True, 0.0), (x, False, 0.05), (x, False, 1e-6)):
        leaf = inp.clone().requires_grad_()
        out, logdet = logit_transform(leaf, alpha=alpha, inverse=inverse, backend=backend)
        assert torch.isfinite(out).all() and torch.isfinite(logdet).all(), (inverse, alpha)
        (grad,) = torch.autograd.grad(out.sum() + logdet.sum(), leaf)
        assert torch.isfinite(grad).all(), (inverse, alpha)
        ref = logit_transform_ref(inp, alpha=alpha, inverse=inverse)
        torch.testing.assert_close(out, ref[0], **tolerances(dtype))
        torch.testing.assert_close(logdet, ref[1], **tolerances(dtype))
    out, logdet = logit_transform(x[:, :2], alpha=0.0, backend=backend)
    assert out[0, 0] == -math.inf and out[0, 1] == math.inf and logdet[0] == math.inf


OP_NAMES = {
    "cpp": ("logit_transform", "logit_transform_backward"),
    "triton": ("logit_transform_triton", "logit_transform_triton_backward"),
}


@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float64))
def test_opcheck(backend):
    forward, backward = (getattr(torch.ops.fastgen, n).default for n in OP_NAMES[backend])
    for inverse in (False, True):
        x = make_x((2, 3, 4), inverse=inverse)
        torch.library.opcheck(forward, (x, 0.05, inverse))
        gy, gl = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
        torch.library.opcheck(backward, (gy, gl, x.detach(), 0.05, inverse))


@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float64))
def test_gradcheck(backend):
    for inverse in (False, True):
        x = make_x((2, 3, 4), inverse=inverse)
        assert torch.autograd.gradcheck(
            lambda t: logit_transform(t, alpha=0.05, inverse=inverse, backend=backend), (x,),
            fast_mode=backend == "triton",
        )


@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float32))
def test_torch_compile_fullgraph(backend):
    x = make_x((2, 3, 4, 5), inverse=False, dtype=torch.float32)

    def f(x):
        y, ld = logit_transform(x, alpha=0.05, backend=backend)
        z, ld2 = logit_transform(y * 0.5, alpha=0.01, inverse=True, backend=backend)
        return z.square().sum() + (ld + ld2).sum()

    compiled = torch.compile(f, fullgraph=True)
    out, out_eager = compiled(x), f(x)
    torch.testing.assert_close(out, out_eager, **tolerances(torch.float32))
    torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(out_eager, x)[0],
                               **tolerances(torch.float32))


# ------------------------------------------------------------------------------ bad inputs

BAD = [
    ("x", torch.rand(4, dtype=torch.float64), ValueError, "x"),
    ("x", torch.zeros(2, 3, dtype=torch.int64), TypeError, "x"),
    ("x", 0.5, TypeError, "x"),
    ("alpha", -0.1, ValueError, "alpha"),
    ("alpha", 0.5, ValueError, "alpha"),
    ("alpha", float("nan"), ValueError, "alpha"),
    ("alpha", "0.05", TypeError, "alpha"),
    ("alpha", True, TypeError, "alpha"),
    ("alpha", torch.tensor(0.05), TypeError, "alpha"),
    ("inverse", None, TypeError, "inverse"),
]


@pytest.mark.parametrize("name,value,error,match", BAD, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_bad_input_raises(backend, name, value, error, match):
    kw = dict(x=torch.rand(2, 3, dtype=torch.float64), alpha=0.05, inverse=False)
    kw[name] = value
    with pytest.raises(error, match=match):
        logit_transform(kw.pop("x"), **kw, backend=backend)


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
def test_cpp_ops_called_directly_check_their_arguments():
    x = torch.rand(2, 3, dtype=torch.float64)
    ops = torch.ops.fastgen
    with pytest.raises(ValueError, match="alpha"):
        ops.logit_transform(x, 0.5, False)
    with pytest.raises(ValueError, match="x"):
        ops.logit_transform(x[0], 0.1, False)
    with pytest.raises(TypeError, match="x"):
        ops.logit_transform(x.half(), 0.1, False)
    with pytest.raises(ValueError, match="grad_logdet"):
        ops.logit_transform_backward(x, torch.zeros(3, dtype=x.dtype), x, 0.1, False)
    with pytest.raises(TypeError, match="grad_y"):
        ops.logit_transform_backward(x.float(), torch.zeros(2, dtype=x.dtype), x, 0.1, False)
