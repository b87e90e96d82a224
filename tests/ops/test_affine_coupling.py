"""fastgen.ops.affine_coupling against affine_coupling_ref.

Outputs and the gradients of x, shift and log_scale through y and logdet over a grid
(vectors and images, batch 1, odd sizes, an example longer than the CPU kernel's chunk,
non-contiguous inputs and the channel halves of a network output, float32/float64), both
scales, additive coupling, forward and inverse, masks: none, checkerboards of both
parities (even and odd widths), channel masks, a random mask; the round trip and the
log-determinant against the Jacobian in float64; pass-through positions (garbage there
cannot leak); extreme inputs; opcheck, gradcheck and torch.compile(fullgraph=True); bad
inputs, also straight into the C++ op.
"""

import importlib

import pytest
import torch

from fastgen.ops import affine_coupling, affine_coupling_ref

from ..helpers import (
    assert_same_on_thread_counts,
    backend_params,
    fast_backends,
    flow_loss_grads,
    run_on_isa,
    tolerances,
)

OP = "affine_coupling"


def make_mask(kind, shape, device="cpu"):
    """A mask for examples of ``shape`` (no batch dimension); 1 = pass through."""
    if kind == "none":
        return None
    if kind in ("checker", "checker1"):
        parity = int(kind == "checker1")
        if len(shape) == 1:  # vectors: alternate
            return ((torch.arange(shape[0]) + parity) % 2).to(device)
        h, w = shape[-2:]
        return ((torch.arange(h)[:, None] + torch.arange(w) + parity) % 2)[None].to(device)  # (1, H, W)
    if kind == "channel":  # the first half of the channels (or of the vector) pass through
        m = (torch.arange(shape[0]) < shape[0] // 2).float()
        return m.view(-1, *([1] * (len(shape) - 1))).to(device)
    if kind == "random":
        g = torch.Generator().manual_seed(7)
        return (torch.rand(shape, generator=g) < 0.5).to(device)  # bool
    raise ValueError(kind)


def make_inputs(shape, *, dtype=torch.float64, device="cpu", layout="contiguous", log_scale=True, seed=0):
    """[x, shift, log_scale or None], leaves requiring grad. layout "strided": slices with
    last stride 2; "split": shift and log_scale are the channel halves of one tensor."""
    g = torch.Generator().manual_seed(seed)

    def rand(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)

    def leaf(t):
        if layout == "strided":
            t = torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]
        return t.detach().requires_grad_()

    x = leaf(rand(*shape))
    if layout == "split":
        net = rand(shape[0], 2 * shape[1], *shape[2:], scale=0.7)
        shift, ls = (t.detach().requires_grad_() for t in net.chunk(2, dim=1))
        assert not shift.is_contiguous() or shape[0] == 1
    else:
        shift, ls = leaf(rand(*shape)), leaf(rand(*shape, scale=0.7))
    return [x, shift, ls if log_scale else None]


def assert_matches_reference(backend, args, mask, scale, inverse):
    tol = tolerances(args[0].dtype)
    out = affine_coupling(*args, mask=mask, scale=scale, inverse=inverse, backend=backend)
    ref = affine_coupling_ref(*args, mask=mask, scale=scale, inverse=inverse)
    for got, want in zip(out, ref):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, **tol)
    inputs = [a for a in args if a is not None]
    for name, a, b in zip(("x", "shift", "log_scale"), flow_loss_grads(out, inputs), flow_loss_grads(ref, inputs)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"grad of {name}: {m}")


GRID = [
    # (shape, mask, layout)
    ((1, 6), "checker", "contiguous"),  # batch 1, vectors
    ((3, 7), "channel", "strided"),  # odd D
    ((2, 7), "none", "contiguous"),
    ((2, 3, 4, 6), "checker", "contiguous"),
    ((3, 2, 5, 7), "checker1", "strided"),  # odd width: pairs straddle rows
    ((2, 4, 3, 5), "channel", "split"),
    ((2, 3, 4, 5), "random", "strided"),
    ((1, 3, 5, 5), "none", "strided"),
    ((2, 2, 96, 96), "checker1", "split"),  # longer than one CPU chunk (16384 elements)
]


@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("scale", ["exp", "sigmoid"])
@pytest.mark.parametrize("shape,mask,layout", GRID, ids=lambda v: str(v))
@pytest.mark.parametrize("backend,device,dtype", backend_params(OP))
def test_matches_reference(backend, device, dtype, shape, mask, layout, scale, inverse):
    if backend == "triton" and shape[-1] > 32 and device == "cpu":
        pytest.skip("the Triton interpreter is too slow for large examples")
    args = make_inputs(shape, dtype=dtype, device=device, layout=layout)
    assert layout == "contiguous" or not args[0].is_contiguous() or not args[1].is_contiguous()
    assert_matches_reference(backend, args, make_mask(mask, shape[1:], device), scale, inverse)


@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("shape,mask,layout", GRID[:6], ids=lambda v: str(v))
@pytest.mark.parametrize("backend,device,dtype", backend_params(OP))
def test_additive_matches_reference(backend, device, dtype, shape, mask, layout, inverse):
    args = make_inputs(shape, dtype=dtype, device=device, layout=layout, log_scale=False)
    assert_matches_reference(backend, args, make_mask(mask, shape[1:], device), "exp", inverse)
    y, logdet = affine_coupling(*args, mask=make_mask(mask, shape[1:], device), inverse=inverse, backend=backend)
    assert torch.equal(logdet, torch.zeros_like(logdet))


@pytest.mark.parametrize("mask", ["none", "checker", "channel", "random"])
@pytest.mark.parametrize("scale", ["exp", "sigmoid", "additive"])
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_round_trip(backend, scale, mask):
    """inverse(forward(x)) == x and the two log-determinants sum to zero."""
    shape = (3, 2, 4, 6)
    x, shift, ls = (a.detach() if a is not None else None for a in make_inputs(shape, log_scale=scale != "additive"))
    m = make_mask(mask, shape[1:])
    kw = dict(mask=m, scale="exp" if scale == "additive" else scale, backend=backend)
    y, ld = affine_coupling(x, shift, ls, **kw)
    x2, ld2 = affine_coupling(y, shift, ls, inverse=True, **kw)
    torch.testing.assert_close(x2, x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ld + ld2, torch.zeros_like(ld), atol=1e-12, rtol=0)
    if scale != "additive" and mask == "none":
        assert ld.abs().min() > 0.1  # a real transform


@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("scale", ["exp", "sigmoid"])
@pytest.mark.parametrize(
    "shape,mask", [((2, 6), "checker"), ((2, 6), "none"), ((2, 2, 4, 4), "checker1"), ((2, 2, 4, 4), "channel")]
)
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_logdet_matches_jacobian(backend, shape, mask, scale, inverse):
    x, shift, ls = (a.detach() for a in make_inputs(shape))
    m = make_mask(mask, shape[1:])

    def f(x):
        return affine_coupling(x, shift, ls, mask=m, scale=scale, inverse=inverse, backend=backend)[0]

    D = x[0].numel()
    J = torch.autograd.functional.jacobian(f, x).reshape(shape[0], D, shape[0], D)
    _, logdet = affine_coupling(x, shift, ls, mask=m, scale=scale, inverse=inverse, backend=backend)
    for b in range(shape[0]):
        sign, logabs = torch.linalg.slogdet(J[b, :, b])
        assert sign == 1
        torch.testing.assert_close(logabs, logdet[b], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("scale", ["exp", "sigmoid"])
@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("backend,device,dtype", [pytest.param("ref", "cpu", torch.float32, id="ref")] + backend_params(OP))
def test_pass_through_ignores_shift_and_log_scale(backend, device, dtype, inverse, scale):
    """Where the mask is 1: y = x exactly, grad_x = grad_y, zero gradient to shift and
    log_scale, whatever they hold there (NaN, inf, huge)."""
    shape = (2, 3, 4, 6)
    x, shift, ls = make_inputs(shape, dtype=dtype, device=device)
    m = make_mask("checker", shape[1:], device).bool()
    keep = m.expand(shape)
    junk = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], dtype=dtype, device=device)
    junk = junk.repeat(keep.sum() // 4 + 1)[: keep.sum()]
    shift, ls = (t.detach().masked_scatter(keep, junk).requires_grad_() for t in (shift, ls))
    y, logdet = affine_coupling(x, shift, ls, mask=m, scale=scale, inverse=inverse, backend=backend)
    assert torch.equal(y[keep], x.detach()[keep])
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
    gy = torch.randn(shape, dtype=dtype, device=device)
    gx, gs, gl = torch.autograd.grad((y * gy).sum() + logdet.sum(), (x, shift, ls))
    assert torch.equal(gx[keep], gy[keep])
    assert torch.equal(gs[keep], torch.zeros_like(gs[keep])) and torch.equal(gl[keep], torch.zeros_like(gl[keep]))
    assert all(torch.isfinite(g).all() for g in (gx, gs, gl))


@pytest.mark.parametrize("backend,device,dtype", [pytest.param("ref", "cpu", torch.float32, id="ref")] + backend_params(OP))
def test_extreme_inputs_are_finite(backend, device, dtype):
    """|x| up to 1e4; exp log-scales of +-50 (exp(50) * 1e4 is still finite in float32);
    sigmoid log-scales of +-1e4 (s saturates at 0 and 1, log s stays finite). Outputs and
    gradients are finite; the inverse of the saturated-high sigmoid too."""
    shape = (2, 2, 4, 6)
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(shape, generator=g, dtype=torch.float64) * 2e4 - 1e4).to(dtype=dtype, device=device)
    x.view(-1)[:4] = torch.tensor([0.0, 1e4, -1e4, 1e-30])
    shift = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).to(dtype=dtype, device=device)
    m = make_mask("checker", shape[1:], device)
    cases = [("exp", 50 * sign, (False, True)), ("sigmoid", 1e4 * sign, (False,)), ("sigmoid", 1e4 + 0 * sign, (True,))]
    for scale, log_scale, directions in cases:
        for inverse in directions:
            for mask in (None, m):
                xs, ts, ls = (t.clone().requires_grad_() for t in (x, shift, log_scale))
                y, logdet = affine_coupling(xs, ts, ls, mask=mask, scale=scale, inverse=inverse, backend=backend)
                assert torch.isfinite(y).all() and torch.isfinite(logdet).all(), (scale, inverse)
                grads = torch.autograd.grad(y.sum() + logdet.sum(), (xs, ts, ls))
                assert all(torch.isfinite(gr).all() for gr in grads), (scale, inverse)
                ref = affine_coupling_ref(x, shift, log_scale, mask=mask, scale=scale, inverse=inverse)
                torch.testing.assert_close(y, ref[0], **tolerances(dtype))
                torch.testing.assert_close(logdet, ref[1], **tolerances(dtype))


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, (torch.float64,)))
def test_partial_gradients(backend, device, dtype):
    """Only shift and log_scale need a gradient (x is data); only y is used."""
    shape = (2, 3, 4, 6)
    x, shift, ls = make_inputs(shape, dtype=dtype, device=device)
    x.requires_grad_(False)
    m = make_mask("checker", shape[1:], device)
    for use in ("y", "logdet"):
        out = affine_coupling(x, shift, ls, mask=m, backend=backend)
        ref = affine_coupling_ref(x, shift, ls, mask=m)
        pick = 0 if use == "y" else 1
        got = torch.autograd.grad(out[pick].square().sum(), (shift, ls), allow_unused=True)
        want = torch.autograd.grad(ref[pick].square().sum(), (shift, ls), allow_unused=True)
        for a, b in zip(got, want):
            if b is None:  # the logdet does not depend on shift
                assert a is None or torch.equal(a, torch.zeros_like(a))
            else:
                torch.testing.assert_close(a, b, **tolerances(dtype))


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
def test_cpp_is_deterministic_across_thread_counts():
    """Chunk partials are added in order: bit-identical results whatever the threads."""
    shape = (3, 2, 96, 96)
    args = make_inputs(shape, dtype=torch.float32, layout="split")
    m = make_mask("checker", shape[1:])

    def run():
        out = affine_coupling(*args, mask=m, backend="cpp")
        return [*out, *flow_loss_grads(out, args)]

    assert_same_on_thread_counts(run, counts=(1, 2))


OP_NAMES = {"cpp": ("affine_coupling", "affine_coupling_backward"),
            "triton": ("affine_coupling_triton", "affine_coupling_triton_backward")}


@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float64))
def test_opcheck(backend):
    forward, backward = (getattr(torch.ops.fastgen, n).default for n in OP_NAMES[backend])
    shape = (2, 3, 4, 6)
    x, shift, ls = make_inputs(shape)
    m = make_mask("checker", shape[1:])
    torch.library.opcheck(forward, (x, shift, ls, m, "exp", False))
    torch.library.opcheck(forward, (x, shift, ls, None, "sigmoid", True))
    torch.library.opcheck(forward, (x, shift, None, m.bool(), "exp", False))
    d = [t.detach() for t in (x, shift, ls)]
    gy, gl = torch.randn(shape, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    for mask in ([True] * 3, [False, True, False]):
        torch.library.opcheck(backward, (gy, gl, *d, m, "sigmoid", False, mask))
    torch.library.opcheck(backward, (gy, gl, d[0], d[1], None, None, "exp", True, [True] * 3))


@pytest.mark.parametrize("scale", ["exp", "sigmoid"])
@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float64))
def test_gradcheck(backend, scale):
    shape = (2, 2, 3, 4)
    args = make_inputs(shape)
    m = make_mask("checker1", shape[1:])
    for inverse in (False, True):
        def f(*inputs):
            return affine_coupling(*inputs, mask=m, scale=scale, inverse=inverse, backend=backend)

        assert torch.autograd.gradcheck(f, tuple(args), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float32))
def test_torch_compile_fullgraph(backend):
    shape = (2, 3, 4, 6)
    x, shift, ls = make_inputs(shape, dtype=torch.float32)
    m = make_mask("checker", shape[1:])

    def f(x, shift, ls):
        y, ld = affine_coupling(x, shift, ls, mask=m, backend=backend)
        z, ld2 = affine_coupling(y, shift * 0.5, ls, mask=1 - m, scale="sigmoid", backend=backend)
        return z.square().sum() + (ld - ld2).sum()

    compiled = torch.compile(f, fullgraph=True)
    out, out_eager = compiled(x, shift, ls), f(x, shift, ls)
    torch.testing.assert_close(out, out_eager, **tolerances(torch.float32))
    for a, b in zip(torch.autograd.grad(out, (x, shift, ls)), torch.autograd.grad(out_eager, (x, shift, ls))):
        torch.testing.assert_close(a, b, **tolerances(torch.float32))


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_cpu_instruction_set_matches_reference(isa):
    """The element-wise flow kernels (csrc/cpu/flow_elementwise.cpp: coupling with a
    checkerboard and a dense run, ActNorm, logit both ways) in each compiled copy, forced by
    FASTGEN_CPU_ISA: outputs, logdets and every gradient against the references."""
    if "cpp" not in fast_backends(OP, "cpu"):
        pytest.skip("C++ extension not built")
    code = (
        "from fastgen.ops import actnorm, actnorm_ref, affine_coupling, affine_coupling_ref\n"
        "from fastgen.ops import logit_transform, logit_transform_ref\n"
        "for dtype in (torch.float32, torch.float64):\n"
        "    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)\n"
        "    x, t, l = (torch.randn(3, 4, 5, 6, dtype=dtype, requires_grad=True) for _ in range(3))\n"
        "    p = torch.rand(3, 4, 5, 6, dtype=dtype, requires_grad=True)\n"
        "    loc, ls = (torch.randn(4, dtype=dtype, requires_grad=True) for _ in range(2))\n"
        "    checker = (torch.arange(5)[:, None] + torch.arange(6)) % 2\n"
        "    cases = [((x, t, l), dict(mask=checker, scale=s, inverse=i), affine_coupling, affine_coupling_ref)\n"
        "             for s in ('exp', 'sigmoid') for i in (False, True)]\n"
        "    cases += [((x, t, l), dict(mask=None, scale='sigmoid'), affine_coupling, affine_coupling_ref)]\n"
        "    cases += [((x, loc, ls), dict(inverse=i), actnorm, actnorm_ref) for i in (False, True)]\n"
        "    cases += [((p,), dict(alpha=0.05), logit_transform, logit_transform_ref),\n"
        "              ((x,), dict(alpha=0.05, inverse=True), logit_transform, logit_transform_ref)]\n"
        "    for args, kw, op, ref in cases:\n"
        "        out, want = op(*args, backend='cpp', **kw), ref(*args, **kw)\n"
        "        g = [torch.randn_like(o) for o in out]\n"
        "        got = out + torch.autograd.grad(out, args, g)\n"
        "        for a, b in zip(got, want + torch.autograd.grad(want, args, g)):\n"
        "            torch.testing.assert_close(a, b, **tol)\n"
    )
    run_on_isa(isa, code)


# ------------------------------------------------------------------------------ bad inputs


def good_kwargs():
    x, shift, ls = (a.detach() for a in make_inputs((2, 3, 4, 6)))
    return dict(x=x, shift=shift, log_scale=ls, mask=make_mask("checker", (3, 4, 6)), scale="exp", inverse=False)


BAD = [
    ("x", torch.randn(5, dtype=torch.float64), ValueError, "x"),
    ("x", torch.zeros(2, 3, 4, 6, dtype=torch.int64), TypeError, "x"),
    ("x", [1.0, 2.0], TypeError, "x"),
    ("shift", torch.randn(2, 3, 4, 5, dtype=torch.float64), ValueError, "shift"),
    ("shift", torch.randn(2, 3, 4, 6, dtype=torch.float32), TypeError, "shift"),
    ("shift", torch.empty(2, 3, 4, 6, dtype=torch.float64, device="meta"), ValueError, "shift"),
    ("log_scale", torch.randn(1, 3, 4, 6, dtype=torch.float64), ValueError, "log_scale"),
    ("log_scale", torch.randn(2, 3, 4, 6, dtype=torch.float32), TypeError, "log_scale"),
    ("mask", torch.ones(2, 3, 4, 6), ValueError, "mask"),  # with a batch dimension
    ("mask", torch.ones(2, 4, 6), ValueError, "mask"),
    ("mask", torch.ones(4, 5), ValueError, "mask"),
    ("mask", [[0, 1]], TypeError, "mask"),
    ("mask", torch.ones(4, 6, device="meta"), ValueError, "mask"),
    ("scale", "softplus", ValueError, "scale"),
    ("scale", None, ValueError, "scale"),
    ("inverse", 1, TypeError, "inverse"),
]


@pytest.mark.parametrize("name,value,error,match", BAD, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_bad_input_raises(backend, name, value, error, match):
    kw = good_kwargs()
    kw[name] = value
    with pytest.raises(error, match=match):
        affine_coupling(kw.pop("x"), kw.pop("shift"), kw.pop("log_scale"), **kw, backend=backend)


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
def test_cpp_ops_called_directly_check_their_arguments():
    kw = good_kwargs()
    x, shift, ls, m = kw["x"], kw["shift"], kw["log_scale"], kw["mask"]
    ops = torch.ops.fastgen
    with pytest.raises(ValueError, match="shift"):
        ops.affine_coupling(x, shift[:, :2], ls, m, "exp", False)
    with pytest.raises(TypeError, match="log_scale"):
        ops.affine_coupling(x, shift, ls.float(), m, "exp", False)
    with pytest.raises(ValueError, match="mask"):
        ops.affine_coupling(x, shift, ls, torch.ones(2, 3, 4, 6), "exp", False)
    with pytest.raises(ValueError, match="scale"):
        ops.affine_coupling(x, shift, ls, m, "tanh", False)
    with pytest.raises(ValueError, match="x"):
        ops.affine_coupling(x[0, 0, 0], shift[0, 0, 0], None, None, "exp", False)
    with pytest.raises(TypeError, match="x"):
        ops.affine_coupling(x.long(), shift.long(), None, None, "exp", False)
    with pytest.raises(ValueError, match="grad_logdet"):
        ops.affine_coupling_backward(x, torch.zeros(3, dtype=x.dtype), x, shift, ls, m, "exp", False, [True] * 3)
    with pytest.raises(ValueError, match="grad_y"):
        ops.affine_coupling_backward(x[:1], torch.zeros(2, dtype=x.dtype), x, shift, ls, m, "exp", False, [True] * 3)


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu", torch.float32), reason="the C++ extension is not built")
def test_auto_runs_small_unmasked_cpu_calls_on_the_reference(monkeypatch):
    """Chosen automatically on the CPU, a call of at most CPU_SMALL elements without a mask
    and with scale "exp" (or additive) runs on the reference (the kernel's fixed costs
    outweigh its fused passes); a larger one, a masked one, one with the sigmoid scale or an
    explicit request runs the kernel."""
    module = importlib.import_module("fastgen.ops.affine_coupling")  # the package exports the function
    calls = []
    kernel = module._FAST_OPS["cpp"]
    monkeypatch.setitem(module._FAST_OPS, "cpp", lambda *args: calls.append(args) or kernel(*args))
    checkerboard = torch.arange(8) % 2
    small = module.CPU_SMALL // 4  # features: 4 examples of these are CPU_SMALL elements
    cases = [  # features, mask, scale, additive, kernel runs
        (small, None, "exp", False, 0),
        (small, None, "sigmoid", True, 0),  # additive: the scale is ignored
        (small + 1, None, "exp", False, 1),
        (8, checkerboard, "exp", False, 1),
        (8, None, "sigmoid", False, 1),
    ]
    for features, mask, scale, additive, kernel_runs in cases:
        x, shift, log_scale = torch.randn(3, 4, features, dtype=torch.float64).unbind(0)
        log_scale = None if additive else log_scale
        calls.clear()
        got = affine_coupling(x, shift, log_scale, mask=mask, scale=scale)
        want = affine_coupling_ref(x, shift, log_scale, mask=mask, scale=scale)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **tolerances(torch.float64))
        assert len(calls) == kernel_runs and got[0].is_contiguous()
        affine_coupling(x, shift, log_scale, mask=mask, scale=scale, backend="cpp")
        assert len(calls) == kernel_runs + 1
    x, shift, log_scale = torch.randn(3, 8, 4).transpose(1, 2).unbind(0)  # (4, 8), column-major
    assert affine_coupling(x, shift, log_scale)[0].is_contiguous()  # on the reference, as documented
