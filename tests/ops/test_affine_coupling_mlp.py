"""fastgen.ops.affine_coupling_mlp against affine_coupling_mlp_ref.

Outputs and every gradient (x, each weight and bias, the log-scale bound) through y and
logdet over a grid (batch 1, odd D, networks of one to three layers, more rows than one
task of the CPU kernel's column sums and than one block of its GEMMs, non-contiguous x,
float32/float64), both parities,
forward and inverse; the round trip and the log-determinant against the Jacobian in float64;
partial gradients; the same bits on several thread counts; opcheck, gradcheck and
torch.compile(fullgraph=True); every CPU instruction set; bad inputs, also straight into
the C++ ops.
"""

import pytest
import torch
import torch.nn.functional as F

from fastgen.ops import affine_coupling_mlp, affine_coupling_mlp_ref

from ..helpers import (
    assert_same_on_thread_counts,
    backend_params,
    fast_backends,
    flow_loss_grads,
    logdet_by_jacobian,
    run_on_isa,
    tolerances,
)

OP = "affine_coupling_mlp"


def make_inputs(B, D, hidden, parity, *, dtype=torch.float64, strided=False, seed=0):
    """(x, weights, biases, log_scale_bound), leaves requiring grad; ``strided``: x a slice
    of a wider tensor."""
    g = torch.Generator().manual_seed(seed)
    n_pass = D // 2 if parity == 0 else D - D // 2
    widths = [n_pass, *hidden, 2 * (D - n_pass)]

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    x = leaf(B, D + 3)[:, 1 : D + 1].detach().requires_grad_() if strided else leaf(B, D)
    weights = [leaf(o, i, scale=i**-0.5) for i, o in zip(widths[:-1], widths[1:])]
    biases = [leaf(o, scale=0.3) for o in widths[1:]]
    bound = (torch.rand(D - n_pass, generator=g, dtype=torch.float64) + 0.5).to(dtype).requires_grad_()
    return x, weights, biases, bound


def flat(x, weights, biases, bound):
    return [x, *weights, *biases, bound]


GRID = [
    # (B, D, hidden, strided)
    (1, 6, [8, 8], False),  # batch 1
    (3, 7, [5], True),  # odd D: the halves differ in size
    (5, 2, [4, 3, 6], False),  # D = 2, three hidden layers
    (2, 9, [], True),  # one layer: no ReLU
    (70, 64, [32, 32], True),  # more than one task of rows
    (2100, 6, [8], True),  # more than one block of the forward's GEMMs
]


@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("parity", [0, 1])
@pytest.mark.parametrize("B,D,hidden,strided", GRID, ids=lambda v: str(v))
@pytest.mark.parametrize("backend,device,dtype", backend_params(OP))
def test_matches_reference(backend, device, dtype, B, D, hidden, strided, parity, inverse):
    if backend == "triton" and device == "cpu" and B > 100:
        pytest.skip("the Triton interpreter is too slow for large batches (the row blocks are the C++ kernel's)")
    x, weights, biases, bound = make_inputs(B, D, hidden, parity, dtype=dtype, strided=strided)
    assert x.is_contiguous() != strided
    out = affine_coupling_mlp(x, weights, biases, bound, parity=parity, inverse=inverse, backend=backend)
    ref = affine_coupling_mlp_ref(x, weights, biases, bound, parity=parity, inverse=inverse)
    tol = tolerances(dtype)
    for got, want in zip(out, ref):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, **tol)
    assert out[0].is_contiguous()
    inputs = flat(x, weights, biases, bound)
    for k, (a, b) in enumerate(zip(flow_loss_grads(out, inputs), flow_loss_grads(ref, inputs))):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"gradient of input {k}: {m}")


@pytest.mark.parametrize("parity", [0, 1])
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_round_trip_and_logdet(backend, parity):
    """inverse(forward(x)) == x, the log-determinants sum to zero and equal the Jacobian's."""
    x, weights, biases, bound = (t.detach() if isinstance(t, torch.Tensor) else [w.detach() for w in t]
                                 for t in make_inputs(3, 7, [6, 6], parity))
    y, logdet = affine_coupling_mlp(x, weights, biases, bound, parity=parity, backend=backend)
    x2, logdet2 = affine_coupling_mlp(y, weights, biases, bound, parity=parity, inverse=True, backend=backend)
    torch.testing.assert_close(x2, x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(logdet + logdet2, torch.zeros_like(logdet), atol=1e-12, rtol=0)
    assert logdet.abs().min() > 1e-3  # a real transform
    passed = slice(0, 3) if parity == 0 else slice(3, 7)
    assert torch.equal(y[:, passed], x[:, passed])
    for inverse, inp, want in ((False, x, logdet), (True, y, logdet2)):
        def f(e, inverse=inverse):
            return affine_coupling_mlp(e, weights, biases, bound, parity=parity, inverse=inverse, backend=backend)[0]

        torch.testing.assert_close(logdet_by_jacobian(f, inp), want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, (torch.float64,)))
def test_partial_gradients(backend, device, dtype):
    """x is data (no gradient), the first layer is frozen; only y, or only logdet, is used."""
    x, weights, biases, bound = make_inputs(4, 6, [5], 1, dtype=dtype)
    x.requires_grad_(False)
    weights[0].requires_grad_(False)
    wanted = [weights[1], *biases, bound]
    for pick in (0, 1):
        out = affine_coupling_mlp(x, weights, biases, bound, parity=1, backend=backend)
        ref = affine_coupling_mlp_ref(x, weights, biases, bound, parity=1)
        got = torch.autograd.grad(out[pick].square().sum(), wanted)
        want = torch.autograd.grad(ref[pick].square().sum(), wanted)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **tolerances(dtype))


@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float64))
def test_nan_propagates_as_in_the_reference(backend):
    """A NaN in the passed half reaches y and logdet of its example, as on the reference
    (the ReLUs keep it), never a silent number; other examples stay finite."""
    x, weights, biases, bound = (t.detach() if isinstance(t, torch.Tensor) else [w.detach() for w in t]
                                 for t in make_inputs(3, 6, [8, 8], 0))
    x[1, 0] = float("nan")
    y, logdet = affine_coupling_mlp(x, weights, biases, bound, parity=0, backend=backend)
    y_ref, logdet_ref = affine_coupling_mlp_ref(x, weights, biases, bound, parity=0)
    assert torch.equal(y.isnan(), y_ref.isnan()) and torch.equal(logdet.isnan(), logdet_ref.isnan())
    assert y[1, 3:].isnan().all() and logdet[1].isnan()
    assert torch.isfinite(y[[0, 2]]).all() and torch.isfinite(logdet[[0, 2]]).all()


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
def test_cpp_is_deterministic_across_thread_counts():
    """The element-wise passes' column sums per fixed block of rows, added in order: the
    same bits whatever the threads (the GEMMs are ATen's, whose results agree too here)."""
    inputs = make_inputs(700, 10, [12, 12], 0, dtype=torch.float32)

    def run():
        out = affine_coupling_mlp(*inputs, parity=0, backend="cpp")
        return [*out, *flow_loss_grads(out, flat(*inputs))]

    assert_same_on_thread_counts(run, counts=(1, 3))


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
@pytest.mark.parametrize("B", [5, 5000])
def test_keep_activations(B):
    """keep_activations=False (what the module and the public function use): no activations
    returned, the same y and logdet (up to rounding: a block's products then start at another
    alignment) with or without autograd, and the same gradients (the autograd keeps its own);
    True returns each layer's output."""
    forward = torch.ops.fastgen.affine_coupling_mlp
    x, weights, biases, bound = make_inputs(B, 7, [5, 4], 1, dtype=torch.float32)
    leaves = flat(x, weights, biases, bound)
    kept = forward(x, weights, biases, bound, 1, False, True)
    h = x[:, 3:].detach()
    for w, b, last in zip(weights, biases, (False, False, True)):
        h = F.linear(h, w.detach(), b.detach())
        h = h if last else h.relu()
    assert [a.shape for a in kept[2]] == [(B, 5), (B, 4), (B, 6)]
    torch.testing.assert_close(kept[2][-1], h, **tolerances(torch.float32))
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            y, logdet, activations = forward(x, weights, biases, bound, 1, False, False)
        assert activations == [] and y.requires_grad == grad
        torch.testing.assert_close(y, kept[0], **tolerances(torch.float32))
        torch.testing.assert_close(logdet, kept[1], **tolerances(torch.float32))
    loss = y.square().sum() + logdet.sum()
    want = torch.autograd.grad(kept[0].square().sum() + kept[1].sum(), leaves)
    for a, b in zip(torch.autograd.grad(loss, leaves), want):
        assert torch.equal(a, b)


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
def test_opcheck():
    """The C++ ops (the Triton path is a composition of other ops, checked with them)."""
    forward, backward = torch.ops.fastgen.affine_coupling_mlp.default, torch.ops.fastgen.affine_coupling_mlp_backward.default
    x, weights, biases, bound = make_inputs(3, 7, [5, 4], 1)
    for inverse in (False, True):
        for keep in (True, False):
            torch.library.opcheck(forward, (x, weights, biases, bound, 1, inverse, keep))
    d = x.detach()
    ws, b = [w.detach() for w in weights], bound.detach()
    _, _, activations = forward(d, ws, [t.detach() for t in biases], b, 1, False)
    gy, gl = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    for mask in ([True] * 4, [False, True, False, True]):
        torch.library.opcheck(backward, (gy, gl, d, ws, b, activations, 1, False, mask))


@pytest.mark.parametrize("backend", [b for b in fast_backends(OP, "cpu", torch.float64) if b == "cpp"])
def test_gradcheck(backend):
    x, weights, biases, bound = make_inputs(3, 5, [4], 0)
    for inverse in (False, True):
        def f(x, w0, w1, b0, b1, bound, inverse=inverse):
            return affine_coupling_mlp(x, [w0, w1], [b0, b1], bound, parity=0, inverse=inverse, backend=backend)

        assert torch.autograd.gradcheck(f, (x, *weights, *biases, bound))


@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float32))
def test_torch_compile_fullgraph(backend):
    x, weights, biases, bound = make_inputs(4, 6, [8], 0, dtype=torch.float32)
    inputs = flat(x, weights, biases, bound)

    def f(x, w0, w1, b0, b1, bound):
        y, ld = affine_coupling_mlp(x, [w0, w1], [b0, b1], bound, parity=0, backend=backend)
        z, ld2 = affine_coupling_mlp(y.flip(1), [w0, w1], [b0, b1], bound, parity=0, inverse=True, backend=backend)
        return z.square().sum() + (ld - ld2).sum()

    compiled = torch.compile(f, fullgraph=True)
    out, out_eager = compiled(*inputs), f(*inputs)
    torch.testing.assert_close(out, out_eager, **tolerances(torch.float32))
    for a, b in zip(torch.autograd.grad(out, inputs), torch.autograd.grad(out_eager, inputs)):
        torch.testing.assert_close(a, b, **tolerances(torch.float32))


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_cpu_instruction_set_matches_reference(isa):
    """The element-wise passes (csrc/cpu/affine_mlp.cpp) in each compiled copy,
    forced by FASTGEN_CPU_ISA: outputs and every gradient against the reference."""
    if "cpp" not in fast_backends(OP, "cpu"):
        pytest.skip("C++ extension not built")
    code = (
        "from fastgen.ops import affine_coupling_mlp, affine_coupling_mlp_ref\n"
        "for dtype in (torch.float32, torch.float64):\n"
        "    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)\n"
        "    x = torch.randn(37, 11, dtype=dtype, requires_grad=True)\n"
        "    for parity, inverse in ((0, False), (1, True)):\n"
        "        n_pass = 5 if parity == 0 else 6\n"
        "        ws = [torch.randn(9, n_pass, dtype=dtype, requires_grad=True),\n"
        "              torch.randn(2 * (11 - n_pass), 9, dtype=dtype, requires_grad=True)]\n"
        "        bs = [torch.randn(w.shape[0], dtype=dtype, requires_grad=True) for w in ws]\n"
        "        a = torch.rand(11 - n_pass, dtype=dtype, requires_grad=True)\n"
        "        args, kw = (x, ws, bs, a), dict(parity=parity, inverse=inverse)\n"
        "        out, want = affine_coupling_mlp(*args, backend='cpp', **kw), affine_coupling_mlp_ref(*args, **kw)\n"
        "        g = [torch.randn_like(o) for o in out]\n"
        "        leaves = [x, *ws, *bs, a]\n"
        "        for p, q in zip(out + torch.autograd.grad(out, leaves, g), want + torch.autograd.grad(want, leaves, g)):\n"
        "            torch.testing.assert_close(p, q, **tol)\n"
    )
    run_on_isa(isa, code)


# ------------------------------------------------------------------------------ bad inputs


def good_kwargs():
    x, weights, biases, bound = (t.detach() if isinstance(t, torch.Tensor) else [w.detach() for w in t]
                                 for t in make_inputs(2, 6, [5], 0))
    return dict(x=x, weights=weights, biases=biases, log_scale_bound=bound, parity=0, inverse=False)


BAD = [
    ("x", torch.randn(6, dtype=torch.float64), ValueError, "x"),
    ("x", torch.randn(2, 1, dtype=torch.float64), ValueError, "D >= 2"),
    ("x", torch.zeros(2, 6, dtype=torch.int64), TypeError, "x"),
    ("x", [[1.0] * 6], TypeError, "x"),
    ("x", torch.randn(2, 8, dtype=torch.float64), ValueError, r"weights\[0\]"),
    ("weights", torch.randn(5, 3, dtype=torch.float64), TypeError, "weights"),
    ("weights", [], TypeError, "weights"),
    ("weights", [torch.randn(5, 4, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)], ValueError,
     r"weights\[0\]"),
    ("weights", [torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)], ValueError,
     "last layer"),
    ("weights", [torch.randn(5, 3), torch.randn(6, 5)], TypeError, r"weights\[0\]"),
    ("weights", [torch.randn(5, 3, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64, device="meta")],
     ValueError, r"weights\[1\]"),
    ("biases", [torch.zeros(5, dtype=torch.float64)], ValueError, "biases"),
    ("biases", [torch.zeros(4, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)], ValueError, r"biases\[0\]"),
    ("biases", [torch.zeros(5, 1, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)], ValueError,
     r"biases\[0\]"),
    ("log_scale_bound", torch.ones(4, dtype=torch.float64), ValueError, "log_scale_bound"),
    ("log_scale_bound", torch.ones(3), TypeError, "log_scale_bound"),
    ("log_scale_bound", None, TypeError, "log_scale_bound"),
    ("parity", 2, ValueError, "parity"),
    ("parity", True, ValueError, "parity"),
    ("inverse", 1, TypeError, "inverse"),
]


@pytest.mark.parametrize("name,value,error,match", BAD, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_bad_input_raises(backend, name, value, error, match):
    kw = good_kwargs()
    kw[name] = value
    with pytest.raises(error, match=match):
        affine_coupling_mlp(kw.pop("x"), kw.pop("weights"), kw.pop("biases"), kw.pop("log_scale_bound"), **kw,
                            backend=backend)


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
def test_cpp_ops_called_directly_check_their_arguments():
    kw = good_kwargs()
    x, ws, bs, a = kw["x"], kw["weights"], kw["biases"], kw["log_scale_bound"]
    ops = torch.ops.fastgen
    with pytest.raises(ValueError, match="x"):
        ops.affine_coupling_mlp(x[0], ws, bs, a, 0, False)
    with pytest.raises(TypeError, match="x"):
        ops.affine_coupling_mlp(x.long(), ws, bs, a, 0, False)
    with pytest.raises(ValueError, match="parity"):
        ops.affine_coupling_mlp(x, ws, bs, a, 2, False)
    with pytest.raises(ValueError, match="weight"):
        ops.affine_coupling_mlp(x, ws[::-1], bs, a, 0, False)
    with pytest.raises(ValueError, match="last layer"):
        ops.affine_coupling_mlp(x, ws[:1], bs[:1], a, 0, False)
    with pytest.raises(ValueError, match="biases"):
        ops.affine_coupling_mlp(x, ws, bs[:1], a, 0, False)
    with pytest.raises(ValueError, match="log_scale_bound"):
        ops.affine_coupling_mlp(x, ws, bs, a[:2], 0, False)
    _, _, acts = ops.affine_coupling_mlp(x, ws, bs, a, 0, False)
    with pytest.raises(ValueError, match="grad_logdet"):
        ops.affine_coupling_mlp_backward(x, torch.zeros(3, dtype=x.dtype), x, ws, a, acts, 0, False, [True] * 4)
    with pytest.raises(ValueError, match="activations"):
        ops.affine_coupling_mlp_backward(x, torch.zeros(2, dtype=x.dtype), x, ws, a, acts[:1], 0, False, [True] * 4)
