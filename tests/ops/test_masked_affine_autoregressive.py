"""fastgen.ops.masked_affine_autoregressive against masked_affine_autoregressive_ref.

MADE's masks from fastgen.nn.MaskedMLP. Outputs and every gradient (x, each weight, zero
where masked, and bias, the log-scale bound) through u and logdet over a grid (batch 1, D = 2,
odd D, one to three hidden layers, non-contiguous x, float32/float64); autoregressive
structure and the log-determinant against the Jacobian in float64; partial gradients; the same
bits on several thread counts; opcheck, gradcheck and torch.compile(fullgraph=True); bad
inputs, also straight into the C++ ops.
"""

import pytest
import torch

from fastgen.nn import MaskedMLP
from fastgen.ops import masked_affine_autoregressive, masked_affine_autoregressive_ref

from ..helpers import assert_same_on_thread_counts, backend_params, fast_backends, flow_loss_grads, tolerances

OP = "masked_affine_autoregressive"


def make_inputs(B, D, hidden, *, dtype=torch.float64, strided=False, seed=0):
    """(x, weights, masks, biases, log_scale_bound): MADE's layers with random values, leaves
    requiring grad (but the masks); ``strided``: x a slice of a wider tensor."""
    torch.manual_seed(seed)
    net = MaskedMLP(D, hidden, 2).to(dtype)
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    x = leaf(B, D + 3)[:, 1 : D + 1].detach().requires_grad_() if strided else leaf(B, D)
    weights = [leaf(*layer.weight.shape, scale=layer.weight.shape[1] ** -0.5) for layer in net.layers]
    masks = [layer.mask.clone() for layer in net.layers]
    biases = [leaf(layer.weight.shape[0], scale=0.3) for layer in net.layers]
    bound = (torch.rand(D, generator=g, dtype=torch.float64) + 0.5).to(dtype).requires_grad_()
    return x, weights, masks, biases, bound


def leaves(x, weights, masks, biases, bound):
    return [x, *weights, *biases, bound]


GRID = [
    # (B, D, hidden, strided)
    (1, 5, [8], False),  # batch 1
    (3, 2, [4, 4], True),  # D = 2
    (4, 7, [16, 9, 12], True),  # odd D, three hidden layers
    (40, 16, [32, 32], False),  # more than one task of rows
]


@pytest.mark.parametrize("B,D,hidden,strided", GRID, ids=lambda v: str(v))
@pytest.mark.parametrize("backend,device,dtype", backend_params(OP))
def test_matches_reference(backend, device, dtype, B, D, hidden, strided):
    inputs = make_inputs(B, D, hidden, dtype=dtype, strided=strided)
    assert inputs[0].is_contiguous() != strided
    out = masked_affine_autoregressive(*inputs, backend=backend)
    ref = masked_affine_autoregressive_ref(*inputs)
    tol = tolerances(dtype)
    for got, want in zip(out, ref):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, **tol)
    got_grads = flow_loss_grads(out, leaves(*inputs))
    for k, (a, b) in enumerate(zip(got_grads, flow_loss_grads(ref, leaves(*inputs)))):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"gradient of input {k}: {m}")
    weights, masks = inputs[1], inputs[2]
    for grad, mask in zip(got_grads[1 : 1 + len(weights)], masks):
        assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))


@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_autoregressive_and_logdet(backend):
    """u_j depends on x_k for k <= j only (the Jacobian is lower triangular, its diagonal
    exp(-alpha_j)), and logdet is log|det| of that Jacobian."""
    x, weights, masks, biases, bound = make_inputs(3, 6, [12, 12])
    x = x.detach()

    def f(x):
        return masked_affine_autoregressive(x, weights, masks, biases, bound, backend=backend)[0]

    _, logdet = masked_affine_autoregressive(x, weights, masks, biases, bound, backend=backend)
    for b in range(3):
        J = torch.autograd.functional.jacobian(lambda e: f(e[None])[0], x[b])
        assert torch.equal(J.triu(1), torch.zeros_like(J))
        assert (J.tril(-1) != 0).any()  # a real autoregressive map
        torch.testing.assert_close(torch.linalg.slogdet(J)[1], logdet[b], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, (torch.float64,)))
def test_partial_gradients(backend, device, dtype):
    """x is data (no gradient), the first layer is frozen; only u, or only logdet, is used."""
    x, weights, masks, biases, bound = make_inputs(4, 5, [8])
    x.requires_grad_(False)
    weights[0].requires_grad_(False)
    wanted = [weights[1], *biases, bound]
    for pick in (0, 1):
        out = masked_affine_autoregressive(x, weights, masks, biases, bound, backend=backend)
        ref = masked_affine_autoregressive_ref(x, weights, masks, biases, bound)
        got = torch.autograd.grad(out[pick].square().sum(), wanted)
        want = torch.autograd.grad(ref[pick].square().sum(), wanted)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **tolerances(dtype))


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
def test_cpp_is_deterministic_across_thread_counts():
    inputs = make_inputs(700, 10, [24, 24], dtype=torch.float32)

    def run():
        out = masked_affine_autoregressive(*inputs, backend="cpp")
        return [*out, *flow_loss_grads(out, leaves(*inputs))]

    assert_same_on_thread_counts(run, counts=(1, 3))


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
def test_keep_activations():
    """keep_activations=False (what the module and the public function use): no activations
    returned, the same u and logdet, with or without autograd, and the same gradients (the
    autograd keeps its own); True returns each layer's output."""
    forward = torch.ops.fastgen.masked_affine_autoregressive
    x, weights, masks, biases, bound = make_inputs(6, 5, [8, 7])
    kept = forward(x, weights, masks, biases, bound, True)
    assert [a.shape for a in kept[2]] == [(6, 8), (6, 7), (6, 10)]
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            u, logdet, activations = forward(x, weights, masks, biases, bound, False)
        assert activations == [] and u.requires_grad == grad
        assert torch.equal(u, kept[0]) and torch.equal(logdet, kept[1])
    inputs = leaves(x, weights, masks, biases, bound)
    got = torch.autograd.grad(u.square().sum() + logdet.sum(), inputs)
    want = torch.autograd.grad(kept[0].square().sum() + kept[1].sum(), inputs)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
def test_opcheck():
    """The C++ ops (the Triton path is a composition of other ops, checked with them)."""
    ops = torch.ops.fastgen
    x, weights, masks, biases, bound = make_inputs(3, 5, [8, 6])
    for keep in (True, False):
        torch.library.opcheck(ops.masked_affine_autoregressive.default, (x, weights, masks, biases, bound, keep))
    d, ws, bs, a = x.detach(), [w.detach() for w in weights], [b.detach() for b in biases], bound.detach()
    _, _, activations = ops.masked_affine_autoregressive(d, ws, masks, bs, a)
    gu, gl = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    for need in ([True] * 4, [False, True, True, False]):
        torch.library.opcheck(ops.masked_affine_autoregressive_backward.default, (gu, gl, d, ws, masks, a, activations, need))


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
def test_gradcheck():
    x, weights, masks, biases, bound = make_inputs(3, 4, [6])

    def f(x, w0, w1, b0, b1, bound):
        return masked_affine_autoregressive(x, [w0, w1], masks, [b0, b1], bound, backend="cpp")

    assert torch.autograd.gradcheck(f, (x, *weights, *biases, bound))


@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float32))
def test_torch_compile_fullgraph(backend):
    x, weights, masks, biases, bound = make_inputs(4, 6, [8], dtype=torch.float32)
    inputs = [x, *weights, *biases, bound]

    def f(x, w0, w1, b0, b1, bound):
        u, ld = masked_affine_autoregressive(x, [w0, w1], masks, [b0, b1], bound, backend=backend)
        v, ld2 = masked_affine_autoregressive(u.flip(1), [w0, w1], masks, [b0, b1], bound, backend=backend)
        return v.square().sum() + (ld + ld2).sum()

    compiled = torch.compile(f, fullgraph=True)
    out, out_eager = compiled(*inputs), f(*inputs)
    torch.testing.assert_close(out, out_eager, **tolerances(torch.float32))
    for a, b in zip(torch.autograd.grad(out, inputs), torch.autograd.grad(out_eager, inputs)):
        torch.testing.assert_close(a, b, **tolerances(torch.float32))


# ------------------------------------------------------------------------------ bad inputs


def good_kwargs():
    x, weights, masks, biases, bound = make_inputs(2, 4, [6])
    detach = lambda ts: [t.detach() for t in ts]  # noqa: E731
    return dict(x=x.detach(), weights=detach(weights), masks=masks, biases=detach(biases), log_scale_bound=bound.detach())


BAD = [
    ("x", torch.randn(4, dtype=torch.float64), ValueError, "x"),
    ("x", torch.randn(2, 1, dtype=torch.float64), ValueError, "D >= 2"),
    ("x", torch.zeros(2, 4, dtype=torch.int64), TypeError, "x"),
    ("x", torch.randn(2, 5, dtype=torch.float64), ValueError, r"weights\[0\]"),
    ("weights", torch.randn(6, 4, dtype=torch.float64), TypeError, "weights"),
    ("weights", [torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64)], ValueError,
     "last layer"),
    ("masks", [torch.ones(6, 4, dtype=torch.bool)], ValueError, "masks"),
    ("masks", [torch.ones(6, 4), torch.ones(8, 6)], TypeError, r"masks\[0\]"),
    ("masks", [torch.ones(6, 4, dtype=torch.bool), torch.ones(8, 5, dtype=torch.bool)], ValueError, r"masks\[1\]"),
    ("masks", None, TypeError, "masks"),
    ("biases", [torch.zeros(6, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)], ValueError, r"biases\[1\]"),
    ("log_scale_bound", torch.ones(3, dtype=torch.float64), ValueError, "log_scale_bound"),
    ("log_scale_bound", torch.ones(4), TypeError, "log_scale_bound"),
]


@pytest.mark.parametrize("name,value,error,match", BAD, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_bad_input_raises(backend, name, value, error, match):
    kw = good_kwargs()
    kw[name] = value
    with pytest.raises(error, match=match):
        masked_affine_autoregressive(**kw, backend=backend)


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
def test_cpp_ops_called_directly_check_their_arguments():
    kw = good_kwargs()
    x, ws, ms, bs, a = kw["x"], kw["weights"], kw["masks"], kw["biases"], kw["log_scale_bound"]
    ops = torch.ops.fastgen
    with pytest.raises(ValueError, match="x"):
        ops.masked_affine_autoregressive(x[0], ws, ms, bs, a)
    with pytest.raises(ValueError, match="masks"):
        ops.masked_affine_autoregressive(x, ws, ms[:1], bs, a)
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        ops.masked_affine_autoregressive(x, ws, [ms[0].float(), ms[1]], bs, a)
    with pytest.raises(ValueError, match="biases"):
        ops.masked_affine_autoregressive(x, ws, ms, bs[:1], a)
    with pytest.raises(ValueError, match="log_scale_bound"):
        ops.masked_affine_autoregressive(x, ws, ms, bs, a[:2])
    _, _, acts = ops.masked_affine_autoregressive(x, ws, ms, bs, a)
    with pytest.raises(ValueError, match="grad_logdet"):
        ops.masked_affine_autoregressive_backward(x, torch.zeros(3, dtype=x.dtype), x, ws, ms, a, acts, [True] * 4)
    with pytest.raises(ValueError, match="activations"):
        ops.masked_affine_autoregressive_backward(x, torch.zeros(2, dtype=x.dtype), x, ws, ms, a, acts[::-1], [True] * 4)
