"""fastgen.ops.gated_residual_block and gated_residual_block_step against the references.

Outputs and all gradients (h, the three weights and biases, cond of both shapes) over a
grid (kernel 1/2/3, dilations up to beyond T, batch 1, odd sizes, a sequence longer than
the CPU kernel's time tile, non-contiguous inputs, float32/float64); causality and the
exact taps through the Jacobian; step equals full for both state modes with bit-identical
state; opcheck, gradcheck and torch.compile(fullgraph=True); bad inputs.
"""

import pytest
import torch

from fastgen.ops import (
    gated_residual_block,
    gated_residual_block_ref,
    gated_residual_block_step,
    gated_residual_block_step_ref,
)

from ..helpers import assert_same_on_thread_counts, backend_params, fast_backends, tolerances

OP, STEP_OP = "gated_residual_block", "gated_residual_block_step"


def make_inputs(B, R, G, S, T, K, *, cond=None, dtype=torch.float64, device="cpu", contiguous=True, bias=True, seed=0):
    """[h, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias], cond;
    non-contiguous tensors are slices of larger ones."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        t = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
        if not contiguous:
            t = torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]  # last stride 2
        return t.detach().requires_grad_()

    args = [
        rand(B, R, T),
        rand(2 * G, R, K, scale=0.5),
        rand(2 * G) if bias else None,
        rand(R, G, scale=0.5),
        rand(R) if bias else None,
        rand(S, G, scale=0.5),
        rand(S) if bias else None,
    ]
    c = {None: None, "global": lambda: rand(B, 2 * G, 1), "local": lambda: rand(B, 2 * G, T)}[cond]
    return args, (c() if c else None)


def assert_matches_reference(backend, args, cond, dilation):
    tol = tolerances(args[0].dtype)
    out = gated_residual_block(*args, dilation=dilation, cond=cond, backend=backend)
    ref = gated_residual_block_ref(*args, dilation=dilation, cond=cond)
    for got, want in zip(out, ref):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, **tol)
    g = torch.Generator().manual_seed(1)
    grads_out = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in ref]
    inputs = [a for a in args + [cond] if a is not None]
    names = [n for n, a in zip(("h", "conv_w", "conv_b", "res_w", "res_b", "skip_w", "skip_b", "cond"), args + [cond]) if a is not None]
    got = torch.autograd.grad(out, inputs, grads_out)
    want = torch.autograd.grad(ref, inputs, grads_out)
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"grad of {name}: {m}")


GRID = [
    # (B, R, G, S, T, K, dilation, cond, contiguous, bias)
    (1, 3, 2, 5, 7, 2, 1, None, True, True),
    (2, 5, 3, 7, 11, 3, 2, "global", False, True),
    (3, 4, 5, 2, 9, 1, 1, "local", True, False),
    (2, 6, 4, 3, 13, 2, 20, "local", False, True),  # dilation > T: only the current tap
    (1, 3, 3, 4, 10, 4, 3, "global", True, False),
    (2, 7, 5, 9, 2100, 3, 64, "local", True, True),  # several CPU time tiles (1024 times)
    (2, 7, 5, 9, 1300, 2, 257, "global", False, True),  # shift crosses a tile boundary
    (1, 3, 2, 3, 5000, 3, 1100, None, True, True),  # the CPU backward's segments, shifts across them
    (2, 5, 3, 4, 40, 2, 17, "local", False, True),  # several Triton time blocks (16 interpreted)
    # K = 2 with dilation >= 32: the CPU's two-tap Winograd conv, tiles of whole 2d blocks
    (2, 6, 5, 7, 2100, 2, 40, None, True, True),  # several tiles, the last block partial
    (1, 4, 6, 3, 200, 2, 33, "local", True, False),  # the conv accumulates onto cond
]


@pytest.mark.parametrize("B,R,G,S,T,K,dilation,cond,contiguous,bias", GRID, ids=lambda v: str(v))
@pytest.mark.parametrize("backend,device,dtype", backend_params(OP))
def test_matches_reference(backend, device, dtype, B, R, G, S, T, K, dilation, cond, contiguous, bias):
    if backend == "triton" and T > 64:
        pytest.skip("the Triton interpreter is too slow for long sequences")
    args, c = make_inputs(B, R, G, S, T, K, cond=cond, dtype=dtype, device=device, contiguous=contiguous, bias=bias)
    assert contiguous or not args[0].is_contiguous()
    assert_matches_reference(backend, args, c, dilation)


@pytest.mark.parametrize("T,dilation", [(9, 2), (50, 20)])  # (50, 20): the CPU forward's two-tap pairs
@pytest.mark.parametrize("needed", [(1, 5), (0,), (1,)])
@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, (torch.float64,)))
def test_partial_gradients(backend, device, dtype, needed, T, dilation):
    """Only some inputs need a gradient; only one output is used (the other's grad is None)."""
    if backend == "triton" and T > 9:
        pytest.skip("the Triton interpreter is too slow for long sequences")
    args, cond = make_inputs(2, 3, 2, 4, T, 2, cond="global", device=device)
    for i, a in enumerate(args):
        if i not in needed:
            a.requires_grad_(False)
    inputs = [args[i] for i in needed] + [cond]
    out = gated_residual_block(*args, dilation=dilation, cond=cond, backend=backend)
    ref = gated_residual_block_ref(*args, dilation=dilation, cond=cond)
    got = torch.autograd.grad(out[1].sum(), inputs)
    want = torch.autograd.grad(ref[1].sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tolerances(dtype))


@pytest.mark.parametrize("K,dilation", [(1, 1), (2, 1), (3, 2), (2, 4)])
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_causality_jacobian(backend, K, dilation):
    """h_out and skip at t depend on h only at t, t-d, ..., t-(K-1)d (h_out also through the
    residual, at t only): exactly those Jacobian blocks are nonzero."""
    B, R, G, S, T = 1, 2, 2, 3, 9
    args, _ = make_inputs(B, R, G, S, T, K)
    rest = [a.detach() if a is not None else None for a in args[1:]]

    def f(h):
        h_out, skip = gated_residual_block(h, *rest, dilation=dilation, backend=backend)
        return torch.cat([h_out, skip], dim=1)

    J = torch.autograd.functional.jacobian(f, args[0].detach())  # (B, R+S, T, B, R, T)
    dep = J.abs().sum(dim=(0, 1, 3, 4)) != 0  # (T_out, T_in)
    expected = torch.zeros(T, T, dtype=torch.bool)
    for t in range(T):
        for k in range(K):
            if t - k * dilation >= 0:
                expected[t, t - k * dilation] = True
    assert torch.equal(dep, expected)


def run_steps(step, args, cond, dilation, position_mode, backend=None):
    h, conv_w, conv_b, res_w, res_b, skip_w, skip_b = [a.detach() if a is not None else None for a in args]
    B, R, T = h.shape
    K = conv_w.shape[2]
    state = torch.zeros(B, R, (K - 1) * dilation, dtype=h.dtype, device=h.device)
    position = torch.zeros(B, dtype=torch.int64, device=h.device) if position_mode else None
    outs, skips = [], []
    for t in range(T):
        kw = dict(dilation=dilation, position=position)
        if cond is not None:
            kw["cond_t"] = cond.detach()[:, :, t if cond.shape[2] > 1 else 0]
        if backend is not None:
            kw["backend"] = backend
        o, s = step(h[:, :, t], state, conv_w, conv_b, res_w, res_b, skip_w, skip_b, **kw)
        outs.append(o)
        skips.append(s)
        if position is not None:
            position += 1
    return torch.stack(outs, -1), torch.stack(skips, -1), state


@pytest.mark.parametrize("position_mode", [False, True], ids=["shift", "ring"])
@pytest.mark.parametrize(
    "B,K,dilation,cond,bias,channels",
    [
        (1, 1, 1, None, True, (3, 2, 4)),
        (2, 2, 1, "global", True, (3, 2, 4)),
        (3, 3, 2, "local", False, (3, 2, 4)),
        (2, 2, 5, None, True, (3, 2, 4)),
        (1, 3, 12, "global", False, (3, 2, 4)),
        (2, 2, 3, "local", True, (3, 2, 4)),
        # (R, G, S) past the CPU kernel's 8-lane, 4-row blocks of its small-batch dot products
        (2, 2, 3, "global", True, (5, 9, 7)),
        (6, 2, 3, "global", True, (3, 2, 4)),  # past its small-batch loops: the GEMM path
        (7, 3, 2, "local", False, (5, 9, 7)),
    ],
)
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(STEP_OP, "cpu", torch.float64))
def test_step_equals_full(backend, B, K, dilation, cond, bias, channels, position_mode):
    """Stepping a whole sequence (T = 10, dilation 12 >= T included) equals the full block,
    and the final state equals the reference's bit for bit."""
    R, G, S = channels
    args, c = make_inputs(B, R, G, S, 10, K, cond=cond, bias=bias)
    full = gated_residual_block_ref(*args, dilation=dilation, cond=c)
    o, s, state = run_steps(gated_residual_block_step, args, c, dilation, position_mode, backend=backend)
    o_ref, s_ref, state_ref = run_steps(gated_residual_block_step_ref, args, c, dilation, position_mode)
    torch.testing.assert_close(o, full[0].detach(), **tolerances(torch.float64))
    torch.testing.assert_close(s, full[1].detach(), **tolerances(torch.float64))
    assert torch.equal(state, state_ref)
    # The shift register after T steps holds the last L inputs in time order (zeros before).
    if not position_mode and state.shape[2] > 0:
        h = args[0].detach()
        L = state.shape[2]
        padded = torch.cat([h.new_zeros(B, R, L), h], dim=2)
        assert torch.equal(state, padded[:, :, -L:])


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu", torch.float32), reason="the C++ extension is not built")
def test_cpp_gradients_are_the_same_whatever_the_thread_count():
    """The CPU backward sums its per-segment weight-gradient partials in a fixed order:
    1 and 3 threads give bit-identical gradients (several sequences and time tiles)."""
    args, cond = make_inputs(5, 6, 5, 7, 2100, 2, cond="global", dtype=torch.float32)
    inputs = [a for a in args + [cond] if a is not None]
    grads_out = [torch.randn(5, 6, 2100), torch.randn(5, 7, 2100)]

    def run():
        out = gated_residual_block(*args, dilation=40, cond=cond, backend="cpp")
        return torch.autograd.grad(out, inputs, grads_out)

    assert_same_on_thread_counts(run)


@pytest.mark.parametrize("position_mode", [False, True], ids=["shift", "ring"])
@pytest.mark.parametrize("backend", fast_backends(STEP_OP, "cpu", torch.float64))
def test_step_on_state_copies_is_deterministic(backend, position_mode):
    args, _ = make_inputs(2, 3, 2, 4, 1, 3)
    w = [a.detach() if a is not None else None for a in args[1:]]
    g = torch.Generator().manual_seed(3)
    state = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    position = torch.tensor([5, 2]) if position_mode else None
    h_t = torch.randn(2, 3, generator=g, dtype=torch.float64)
    s1, s2, s3 = state.clone(), state.clone(), state.clone()
    a = gated_residual_block_step(h_t, s1, *w, dilation=2, position=position, backend=backend)
    b = gated_residual_block_step(h_t, s2, *w, dilation=2, position=position, backend=backend)
    r = gated_residual_block_step_ref(h_t, s3, *w, dilation=2, position=position)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(s1, s2) and torch.equal(s1, s3)
    torch.testing.assert_close(a[0], r[0])


@pytest.mark.parametrize("backend", fast_backends(STEP_OP, "cpu", torch.float64))
def test_step_strided_state_and_inputs(backend):
    """A state slice with stride(-1) == 1 but padded rows, and a non-contiguous h_t."""
    args, _ = make_inputs(2, 3, 2, 4, 1, 2)
    w = [a.detach() if a is not None else None for a in args[1:]]
    big = torch.randn(2, 5, 9, dtype=torch.float64)
    state, state_ref = big[:, 1:4, 2:5], big[:, 1:4, 2:5].clone()
    h_t = torch.randn(3, 2, dtype=torch.float64).t()
    a = gated_residual_block_step(h_t, state, *w, dilation=3, backend=backend)
    r = gated_residual_block_step_ref(h_t, state_ref, *w, dilation=3)
    torch.testing.assert_close(a, r)
    assert torch.equal(state, state_ref)


@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float64))
def test_opcheck(backend):
    names = {
        "cpp": ("gated_residual_block", "gated_residual_block_backward", "gated_residual_block_step"),
        "triton": (
            "gated_residual_block_triton",
            "gated_residual_block_triton_backward",
            "gated_residual_block_step_triton",
        ),
    }[backend]
    forward, backward, step = (getattr(torch.ops.fastgen, n).default for n in names)
    args, cond = make_inputs(2, 3, 2, 4, 7, 2, cond="local")
    detached = [a.detach() if a is not None else None for a in args]
    torch.library.opcheck(forward, (*args, cond, 2))
    torch.library.opcheck(forward, (*args[:2], None, args[3], None, args[5], None, None, 1))
    args_g, cond_g = make_inputs(2, 3, 2, 4, 7, 3, cond="global")
    torch.library.opcheck(forward, (*args_g, cond_g, 3))
    h, cw, cb, rw, rb, sw, sb = detached
    gates = forward(*detached, cond.detach(), 2)[2]
    gh, gs = torch.randn(2, 3, 7, dtype=torch.float64), torch.randn(2, 4, 7, dtype=torch.float64)
    for mask in ([True] * 8, [True, False, True, False, True, False, True, False]):
        torch.library.opcheck(backward, (gh, gs, h, gates, cw, cb, rw, sw, cond.detach(), 2, mask))
    state = torch.randn(2, 3, 2, dtype=torch.float64)
    torch.library.opcheck(step, (h[:, :, 0], state, cw, cb, rw, rb, sw, sb, None, 2, None))
    position = torch.tensor([3, 0])
    cond_t = torch.randn(2, 4, dtype=torch.float64)
    torch.library.opcheck(step, (h[:, :, 0], state, cw, cb, rw, rb, sw, sb, cond_t, 2, position))


@pytest.mark.parametrize("cond", ["global", "local"])
@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float64))
def test_gradcheck(backend, cond):
    args, c = make_inputs(2, 3, 2, 3, 6, 2, cond=cond)

    def f(*inputs):
        return gated_residual_block(*inputs[:7], dilation=2, cond=inputs[7], backend=backend)

    # Fast mode (one random direction) under the Triton interpreter, which is slow.
    assert torch.autograd.gradcheck(f, (*args, c), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", fast_backends(OP, "cpu", torch.float32))
def test_torch_compile_fullgraph(backend):
    args, cond = make_inputs(2, 4, 3, 5, 12, 2, cond="global", dtype=torch.float32)

    def f(*inputs):
        h_out, skip = gated_residual_block(*inputs, dilation=2, cond=cond, backend=backend)
        h2, skip2 = gated_residual_block(h_out, *inputs[1:], dilation=4, cond=cond, backend=backend)
        return (skip + skip2).square().sum() + h2.sum()

    compiled = torch.compile(f, fullgraph=True)
    y, y_eager = compiled(*args), f(*args)
    torch.testing.assert_close(y, y_eager, **tolerances(torch.float32))
    inputs = [a for a in args if a is not None] + [cond]
    for a, b in zip(torch.autograd.grad(y, inputs), torch.autograd.grad(y_eager, inputs)):
        torch.testing.assert_close(a, b, **tolerances(torch.float32))


# ------------------------------------------------------------------------------ bad inputs


def good_kwargs():
    args, _ = make_inputs(2, 3, 2, 4, 5, 2)
    names = ("h", "conv_weight", "conv_bias", "res_weight", "res_bias", "skip_weight", "skip_bias")
    return {n: a.detach() for n, a in zip(names, args)}


def call_block(kw, **extra):
    kw = dict(kw)
    opts = dict(dilation=kw.pop("dilation", 1), cond=kw.pop("cond", None))
    return gated_residual_block(**kw, **opts, **extra)


BAD_BLOCK = [
    ("dilation", 0, ValueError, "dilation"),
    ("dilation", 1.5, TypeError, "dilation"),
    ("conv_weight", torch.randn(4, 3, 0, dtype=torch.float64), ValueError, "conv_weight"),
    ("conv_weight", torch.randn(5, 3, 2, dtype=torch.float64), ValueError, "conv_weight"),
    ("conv_weight", torch.randn(4, 2, 2, dtype=torch.float64), ValueError, "conv_weight"),
    ("res_weight", torch.randn(3, 3, dtype=torch.float64), ValueError, "res_weight"),
    ("skip_weight", torch.randn(4, 3, dtype=torch.float64), ValueError, "skip_weight"),
    ("conv_bias", torch.randn(3, dtype=torch.float64), ValueError, "conv_bias"),
    ("res_bias", torch.randn(2, dtype=torch.float64), ValueError, "res_bias"),
    ("skip_bias", torch.randn(2, dtype=torch.float64), ValueError, "skip_bias"),
    ("h", torch.randn(2, 3, dtype=torch.float64), ValueError, "h"),
    ("h", torch.randn(2, 3, 5, dtype=torch.float32), TypeError, "dtype"),
    ("h", [1.0], TypeError, "h"),
    ("cond", torch.randn(2, 4, 3, dtype=torch.float64), ValueError, "cond"),
    ("cond", torch.randn(2, 3, 1, dtype=torch.float64), ValueError, "cond"),
    ("cond", torch.randn(1, 4, 1, dtype=torch.float64), ValueError, "cond"),
    ("cond", torch.randn(2, 4, dtype=torch.float64), ValueError, "cond"),
    ("h", torch.randn(2, 3, 0, dtype=torch.float64), ValueError, r"h must have T >= 1"),
]


@pytest.mark.parametrize("name,value,error,match", BAD_BLOCK, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_bad_block_input_raises(backend, name, value, error, match):
    kw = good_kwargs()
    kw[name] = value
    with pytest.raises(error, match=match):
        call_block(kw, backend=backend)


BAD_STEP = [
    ("state", torch.zeros(2, 3, 3, dtype=torch.float64), ValueError, "state"),
    ("state", torch.zeros(2, 4, 2, dtype=torch.float64), ValueError, "state"),
    ("state", torch.zeros(2, 3, 4, dtype=torch.float64)[:, :, ::2], ValueError, "state"),
    ("state", torch.zeros(2, 3, 2, dtype=torch.float32), TypeError, "state"),
    ("state", torch.zeros(1, 3, 2, dtype=torch.float64).expand(2, 3, 2), ValueError, "state is updated in place"),
    ("h_t", torch.randn(2, 3, 1, dtype=torch.float64), ValueError, "h_t"),
    ("cond_t", torch.randn(2, 4, 1, dtype=torch.float64), ValueError, "cond_t"),
    ("cond_t", torch.randn(2, 5, dtype=torch.float64), ValueError, "cond_t"),
    ("position", torch.zeros(3, dtype=torch.int64), ValueError, "position"),
    ("position", torch.zeros(2, dtype=torch.int32), ValueError, "position"),
    ("dilation", 0, ValueError, "dilation"),
]


@pytest.mark.parametrize("name,value,error,match", BAD_STEP, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(STEP_OP, "cpu", torch.float64))
def test_bad_step_input_raises(backend, name, value, error, match):
    kw = good_kwargs()
    kw["h_t"] = kw.pop("h")[:, :, 0]
    kw.update(state=torch.zeros(2, 3, 2, dtype=torch.float64), dilation=2, cond_t=None, position=None)
    kw[name] = value
    with pytest.raises(error, match=match):
        gated_residual_block_step(**kw, backend=backend)


@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_empty_sequence_raises_and_empty_batch_works(backend):
    """T = 0 is refused on every backend (as causal_conv1d's), B = 0 gives empty outputs."""
    args, _ = make_inputs(2, 3, 2, 4, 0, 2)
    with pytest.raises(ValueError, match=r"gated_residual_block: h must have T >= 1, got shape \(2, 3, 0\)"):
        gated_residual_block(*args, dilation=1, backend=backend)
    args, _ = make_inputs(0, 3, 2, 4, 5, 2)
    h_out, skip = gated_residual_block(*args, dilation=1, backend=backend)
    assert h_out.shape == (0, 3, 5) and skip.shape == (0, 4, 5)


@pytest.mark.parametrize("position", [None, torch.tensor([0, 1, 2])], ids=["shift", "ring"])
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(STEP_OP, "cpu"))
def test_step_refuses_a_state_whose_examples_share_memory(backend, position):
    """An expanded state would have every example write into one buffer: refused on every
    backend, before any kernel, the shared buffer unchanged."""
    R, G, S = 2, 1, 1
    base = torch.zeros(1, R, 2)
    with pytest.raises(ValueError, match="gated_residual_block_step: state is updated in place"):
        gated_residual_block_step(
            torch.ones(3, R), base.expand(3, R, 2), torch.ones(2 * G, R, 2), None, torch.ones(R, G), None,
            torch.ones(S, G), None, dilation=2, position=position, backend=backend,
        )
    assert torch.equal(base, torch.zeros(1, R, 2))


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="C++ extension not built")
def test_cpp_ops_called_directly_check_their_arguments():
    kw = good_kwargs()
    h, cw, cb, rw, rb, sw, sb = kw.values()
    ops = torch.ops.fastgen
    with pytest.raises(ValueError, match="conv_weight"):
        ops.gated_residual_block(h, cw[:3], cb, rw, rb, sw, sb, None, 1)
    with pytest.raises(ValueError, match="cond"):
        ops.gated_residual_block(h, cw, cb, rw, rb, sw, sb, torch.zeros(2, 4, 3, dtype=h.dtype), 1)
    with pytest.raises(ValueError, match="dilation"):
        ops.gated_residual_block(h, cw, cb, rw, rb, sw, sb, None, 0)
    gates = ops.gated_residual_block(h, cw, cb, rw, rb, sw, sb, None, 1)[2]
    with pytest.raises(ValueError, match="grad_skip"):
        ops.gated_residual_block_backward(h, h, h, gates, cw, cb, rw, sw, None, 1, [True] * 8)
    with pytest.raises(ValueError, match="gates"):
        ops.gated_residual_block_backward(h, torch.zeros(2, 4, 5, dtype=h.dtype), h, h, cw, cb, rw, sw, None, 1, [True] * 8)
    with pytest.raises(ValueError, match="state"):
        ops.gated_residual_block_step(h[:, :, 0], torch.zeros(2, 3, 5, dtype=h.dtype), cw, cb, rw, rb, sw, sb, None, 1, None)
    with pytest.raises(ValueError, match="position"):
        ops.gated_residual_block_step(
            h[:, :, 0], torch.zeros(2, 3, 1, dtype=h.dtype), cw, cb, rw, rb, sw, sb, None, 1, torch.zeros(5, dtype=torch.int64)
        )


def _stack(B, dilations, K, *, R=5, S=7, seed=0):
    """A stack of blocks (gate widths differing), with a ring-buffer position and random states."""
    g = torch.Generator().manual_seed(seed)
    blocks = [make_inputs(B, R, G, S, 1, K, seed=seed + l)[0][1:] for l, G in enumerate([3, 9, 4][: len(dilations)])]
    blocks = [[t.detach() for t in block] for block in blocks]
    states = [torch.randn(B, R, (K - 1) * d, generator=g, dtype=torch.float64) for d in dilations]
    gate_biases = [torch.randn(B, cw.shape[0], generator=g, dtype=torch.float64) for cw, *_ in blocks]
    position = torch.arange(B, dtype=torch.int64) * 3 + 5
    lists = (
        states, [b[0] for b in blocks], gate_biases, [b[2] for b in blocks], [b[3] for b in blocks],
        [b[4] for b in blocks], [b[5] for b in blocks], list(dilations), position,
    )
    return torch.randn(B, R, generator=g, dtype=torch.float64), lists


@pytest.mark.skipif("cpp" not in fast_backends(STEP_OP, "cpu", torch.float64), reason="the C++ extension is not built")
@pytest.mark.parametrize("B,K,dilations", [(1, 2, (1, 2, 4)), (2, 3, (3, 1)), (6, 2, (2, 5, 1))])
def test_stack_step_equals_the_blocks_in_turn(B, K, dilations):
    """fastgen::gated_residual_stack_step (the CPU's whole-stack step, WaveNet's cached
    sampling) equals stepping its blocks in turn: the last h_out and the sum of the skips
    match the reference's, and every state (which holds the blocks' inputs) equals, bit for
    bit, the state of the C++ block step called block by block."""
    h, lists = _stack(B, dilations, K)
    states, conv_w, gate_b, res_w, res_b, skip_w, skip_b, dils, position = lists
    ref_states, cpp_states = [s.clone() for s in states], [s.clone() for s in states]
    h_out, skip = torch.ops.fastgen.gated_residual_stack_step(h, *lists)
    want_h, want_skip, cpp_h = h, 0, h
    for ref_state, cpp_state, cw, gb, rw, rb, sw, sb, d in zip(ref_states, cpp_states, *lists[1:8]):
        want_h, s = gated_residual_block_step_ref(want_h, ref_state, cw, None, rw, rb, sw, sb, dilation=d, cond_t=gb, position=position)
        want_skip = want_skip + s
        cpp_h, _ = gated_residual_block_step(cpp_h, cpp_state, cw, None, rw, rb, sw, sb, dilation=d, cond_t=gb, position=position, backend="cpp")
    torch.testing.assert_close(h_out, want_h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(skip, want_skip, rtol=1e-12, atol=1e-12)
    for got, cpp, ref in zip(states, cpp_states, ref_states):
        assert torch.equal(got, cpp)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif("cpp" not in fast_backends(STEP_OP, "cpu", torch.float64), reason="the C++ extension is not built")
def test_stack_step_rejects_mismatched_lists():
    h, lists = _stack(1, (1, 2), 2)
    short = list(lists)
    short[3] = short[3][:1]  # one residual weight for two blocks
    with pytest.raises(ValueError, match="one entry per block"):
        torch.ops.fastgen.gated_residual_stack_step(h, *short)
    with pytest.raises(ValueError, match="at least one block"):
        torch.ops.fastgen.gated_residual_stack_step(h, *([] for _ in range(8)), None)
