"""fastgen.ops.causal_conv1d and causal_conv1d_step: every fast backend against the reference.

Outputs and all gradients over a grid (K 1..5, dilations up to beyond T, groups 1, 2,
depthwise and depthwise with a channel multiplier, batch 1, odd sizes, non-contiguous
inputs, float32/float64); equality with left padding + F.conv1d; the exact inputs each
output sees (causality through the Jacobian); the step form against the full op in both
state layouts, with exact final states; opcheck, gradcheck and torch.compile(fullgraph=True);
bad inputs.
"""

import pytest
import torch
import torch.nn.functional as F

from fastgen.ops import causal_conv1d, causal_conv1d_ref, causal_conv1d_step, causal_conv1d_step_ref

from ..helpers import DEVICES, fast_backends, tolerances

OP = "causal_conv1d"
STEP_OP = "causal_conv1d_step"


def backend_device_dtype_params(op=OP):
    params = []
    for device in DEVICES:
        dtypes = [torch.float32, torch.float64] + ([torch.float16, torch.bfloat16] if device == "cuda" else [])
        for dtype in dtypes:
            params += [pytest.param(b, device, dtype, id=f"{b}-{device}-{str(dtype)[6:]}") for b in fast_backends(op, device, dtype)]
    return params


def backend_device_params(op=OP):
    return [pytest.param(b, d, id=f"{b}-{d}") for d in DEVICES for b in fast_backends(op, d)]


def make_inputs(B, c_in, c_out, T, K, groups=1, *, dtype=torch.float64, device="cpu", contiguous=True, seed=0):
    """x, weight, bias (requiring grad); non-contiguous ones are views into larger tensors."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)

    if contiguous:
        x, weight, bias = rand(B, c_in, T), rand(c_out, c_in // groups, K), rand(c_out)
    else:
        x = rand(B, c_in + 2, 2 * T)[:, 1 : c_in + 1, ::2]
        weight = rand(c_out, c_in // groups, K + 3)[..., 2 : K + 2]
        bias = rand(2 * c_out)[::2]
        assert not (x.is_contiguous() or bias.is_contiguous())
    return [t.requires_grad_() for t in (x, weight, bias)]


def assert_matches_reference(backend, x, weight, bias, *, dilation, groups, grad_seed=1):
    tol = tolerances(x.dtype)
    y = causal_conv1d(x, weight, bias, dilation=dilation, groups=groups, backend=backend)
    y_ref = causal_conv1d_ref(x, weight, bias, dilation=dilation, groups=groups)
    assert y.shape == y_ref.shape and y.dtype == x.dtype and y.device == x.device
    torch.testing.assert_close(y, y_ref, **tol)
    g = torch.Generator().manual_seed(grad_seed)
    B, C, T = y.shape
    grad = torch.randn(B, T, C, generator=g, dtype=torch.float64).to(y).transpose(1, 2)  # non-contiguous
    grads = torch.autograd.grad(y, (x, weight, bias), grad)
    grads_ref = torch.autograd.grad(y_ref, (x, weight, bias), grad)
    for name, got, want in zip(("x", "weight", "bias"), grads, grads_ref):
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"grad of {name}: {m}")


# (B, C_in, C_out, T, K, dilation, groups, contiguous)
GRID = [
    (1, 3, 5, 7, 1, 1, 1, True),  # K = 1: a 1x1 conv
    (2, 5, 7, 11, 2, 1, 1, True),
    (2, 4, 6, 13, 3, 2, 1, False),
    (1, 3, 4, 9, 2, 20, 1, True),  # dilation > T: only the current input is seen
    (2, 3, 4, 9, 3, 4, 1, False),  # the oldest tap reaches before the start for all t < 8
    (1, 3, 2, 3, 5, 1, 1, True),  # K > T
    (2, 6, 4, 10, 4, 3, 2, True),  # groups = 2
    (2, 5, 5, 12, 3, 2, 5, False),  # depthwise
    (1, 3, 6, 8, 2, 3, 3, True),  # depthwise with 2 outputs per channel
    (1, 4, 4, 37, 2, 3, 4, True),  # depthwise, long enough for the CPU kernels' vector lanes
    # K = 2 with dilation >= 32: the CPU's two-tap Winograd path (float64 from dilation 16)
    (2, 5, 7, 150, 2, 32, 1, True),  # dilation = its lane count; a partial last block; 7 outputs
    (1, 6, 9, 130, 2, 40, 1, False),  # runs of first-half times shorter than the lanes
    (2, 3, 5, 70, 2, 48, 1, True),  # dilation > T / 2: most pairs lack their second time
]


def grid_id(p):
    B, ci, co, T, K, d, g, contiguous = p
    return f"B{B}-{ci}to{co}-T{T}-K{K}-d{d}-g{g}{'' if contiguous else '-strided'}"


@pytest.mark.parametrize("params", GRID, ids=grid_id)
@pytest.mark.parametrize("backend,device,dtype", backend_device_dtype_params())
def test_matches_reference(backend, device, dtype, params):
    B, c_in, c_out, T, K, dilation, groups, contiguous = params
    x, weight, bias = make_inputs(B, c_in, c_out, T, K, groups, dtype=dtype, device=device, contiguous=contiguous)
    assert_matches_reference(backend, x, weight, bias, dilation=dilation, groups=groups)


@pytest.mark.parametrize("c_in,c_out,groups", [(36, 51, 1), (20, 20, 20), (18, 12, 3)])
@pytest.mark.parametrize("backend,device", backend_device_params())
def test_equals_left_pad_and_conv1d(backend, device, c_in, c_out, groups):
    """The definition, independently of the reference: pad (K-1)*d zeros on the left, then
    F.conv1d; with channel counts spanning several blocks and partial last blocks."""
    K, dilation = 3, 5
    x, weight, bias = make_inputs(2, c_in, c_out, 21, K, groups, dtype=torch.float32, device=device)
    y = causal_conv1d(x, weight, bias, dilation=dilation, groups=groups, backend=backend)
    expected = F.conv1d(F.pad(x, ((K - 1) * dilation, 0)), weight, bias, dilation=dilation, groups=groups)
    torch.testing.assert_close(y, expected, **tolerances(torch.float32))


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_empty_batch_and_huge_dilation(backend, device):
    x, weight, bias = make_inputs(0, 3, 4, 5, 2, dtype=torch.float64, device=device)
    assert causal_conv1d(x, weight, bias, backend=backend).shape == (0, 4, 5)
    # Offsets of a dilation near 2**62 would overflow 64 bits: every past tap is outside.
    x, weight, bias = make_inputs(2, 3, 4, 6, 3, dtype=torch.float64, device=device)
    y = causal_conv1d(x, weight, bias, dilation=2**62, backend=backend)
    torch.testing.assert_close(y, F.conv1d(x, weight[:, :, -1:], bias))
    grads = torch.autograd.grad(y.sum(), (x, weight))
    assert torch.count_nonzero(grads[1][:, :, :-1]) == 0


def expected_support(c_out, c_in, T, K, dilation, groups):
    """S[o, t, i, t2] = 1 where output (o, t) depends on input (i, t2)."""
    S = torch.zeros(c_out, T, c_in, T, dtype=torch.bool)
    ci_g, co_g = c_in // groups, c_out // groups
    for o in range(c_out):
        g = o // co_g
        for t in range(T):
            for j in range(K):
                if t - j * dilation >= 0:
                    S[o, t, g * ci_g : (g + 1) * ci_g, t - j * dilation] = True
    return S


@pytest.mark.parametrize("K,dilation,groups", [(2, 1, 1), (3, 2, 1), (2, 3, 3), (3, 9, 1)])
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu"))
def test_causality_jacobian(backend, K, dilation, groups):
    """Output (o, t) depends on exactly the inputs t, t-d, ..., t-(K-1)d of its group's
    channels: nothing later, nothing in between, and every one of them. The op is linear,
    so its Jacobian is one batched forward on the basis inputs, its transpose one backward."""
    c_in, c_out, T = 3, 6, 8
    n_in, n_out = c_in * T, c_out * T
    weight = torch.randn(c_out, c_in // groups, K, dtype=torch.float64)
    kw = dict(dilation=dilation, groups=groups, backend=backend)
    y = causal_conv1d(torch.eye(n_in, dtype=torch.float64).view(n_in, c_in, T), weight, **kw)
    J = y.reshape(n_in, n_out).T
    support = expected_support(c_out, c_in, T, K, dilation, groups).reshape(n_out, n_in)
    assert torch.equal(J != 0, support), "an output sees an input it must not, or misses one it must"
    x = torch.zeros(n_out, c_in, T, dtype=torch.float64, requires_grad=True)
    basis_out = torch.eye(n_out, dtype=torch.float64).view(n_out, c_out, T)
    (J_rows,) = torch.autograd.grad(causal_conv1d(x, weight, **kw), x, basis_out)
    torch.testing.assert_close(J_rows.reshape(n_out, n_in), J, atol=0, rtol=0)


# --------------------------------------------------------------------------------- step


def expected_state(x, length, ring):
    """The state after stepping all of x (B, C, T) from zeros, built from x by indexing."""
    B, C, T = x.shape
    state = torch.zeros(B, C, length, dtype=x.dtype)
    if length == 0:
        return state
    for t in range(max(0, T - length), T):
        slot = t % length if ring else length - T + t
        state[:, :, slot] = x[:, :, t]
    return state


def run_steps(backend, x, weight, bias, *, dilation, groups, ring, state=None):
    """Steps x (B, C_in, T) from a zero state: outputs (B, C_out, T) and the final state."""
    B, c_in, T = x.shape
    length = (weight.shape[2] - 1) * dilation
    if state is None:
        state = torch.zeros(B, c_in, length, dtype=x.dtype, device=x.device)
    position = torch.zeros(B, dtype=torch.int64, device=x.device) if ring else None
    outs = []
    for t in range(T):
        outs.append(
            causal_conv1d_step(
                x[:, :, t], state, weight, bias, dilation=dilation, groups=groups, position=position, backend=backend
            )
        )
        if ring:
            position += 1
    return torch.stack(outs, dim=2), state


# (B, C_in, C_out, T, K, dilation, groups)
STEP_GRID = [
    (1, 3, 4, 7, 1, 1, 1),  # K = 1: no state
    (2, 3, 5, 9, 2, 1, 1),
    (3, 4, 4, 11, 3, 2, 1),
    (2, 3, 2, 6, 2, 8, 1),  # dilation > T: the state never fills
    (1, 2, 3, 7, 3, 7, 1),  # dilation = T
    (2, 4, 6, 10, 4, 3, 2),
    (2, 5, 5, 9, 3, 2, 5),  # depthwise
]


@pytest.mark.parametrize("ring", [False, True], ids=["shift", "ring"])
@pytest.mark.parametrize("params", STEP_GRID, ids=lambda p: "B{}-{}to{}-T{}-K{}-d{}-g{}".format(*p))
@pytest.mark.parametrize("backend,dtype", [pytest.param("ref", torch.float64, id="ref-float64")] + [
    pytest.param(b, dt, id=f"{b}-{str(dt)[6:]}") for dt in (torch.float32, torch.float64) for b in fast_backends(STEP_OP, "cpu", dt)
])
def test_step_equals_full(backend, dtype, params, ring):
    B, c_in, c_out, T, K, dilation, groups = params
    x, weight, bias = (t.detach() for t in make_inputs(B, c_in, c_out, T, K, groups, dtype=dtype))
    y_full = causal_conv1d_ref(x, weight, bias, dilation=dilation, groups=groups)
    y_steps, state = run_steps(backend, x, weight, bias, dilation=dilation, groups=groups, ring=ring)
    torch.testing.assert_close(y_steps, y_full, **tolerances(dtype))
    length = (K - 1) * dilation
    assert torch.equal(state, expected_state(x, length, ring)), "final state differs from the inputs it must hold"
    _, state_ref = run_steps("ref", x, weight, bias, dilation=dilation, groups=groups, ring=ring)
    assert torch.equal(state, state_ref)


@pytest.mark.parametrize("ring", [False, True], ids=["shift", "ring"])
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(STEP_OP, "cpu"))
def test_step_on_copies_of_a_state_is_deterministic(backend, ring):
    """Same input, copies of one (non-trivial) state: identical outputs and states, and a
    state per sequence: positions that differ across the batch read their own slots."""
    torch.manual_seed(0)
    B, c_in, c_out, K, dilation = 3, 4, 5, 3, 2
    weight, bias = torch.randn(c_out, c_in, K), torch.randn(c_out)
    state = torch.randn(B, c_in, (K - 1) * dilation)
    position = torch.tensor([0, 5, 11]) if ring else None
    x_t = torch.randn(B, c_in)
    s1, s2 = state.clone(), state.clone()
    kw = dict(dilation=dilation, position=position, backend=backend)
    y1, y2 = causal_conv1d_step(x_t, s1, weight, bias, **kw), causal_conv1d_step(x_t, s2, weight, bias, **kw)
    assert torch.equal(y1, y2) and torch.equal(s1, s2)
    s_ref = state.clone()
    y_ref = causal_conv1d_step_ref(x_t, s_ref, weight, bias, dilation=dilation, position=position)
    torch.testing.assert_close(y1, y_ref)
    assert torch.equal(s1, s_ref)
    assert not torch.equal(s1, state), "the state was not updated"


@pytest.mark.parametrize("backend", fast_backends(STEP_OP, "cpu"))
def test_step_non_contiguous(backend):
    """x_t, weight and bias as strided views, and the state a slice of a larger buffer (any
    batch and channel strides; unit stride in time): only the slice is written."""
    B, c_in, c_out, T, K, dilation = 2, 3, 4, 8, 3, 2
    x, weight, bias = (t.detach() for t in make_inputs(B, c_in, c_out, T, K, contiguous=False))
    length = (K - 1) * dilation
    for ring in (False, True):
        buffer = torch.full((B + 1, c_in + 2, length + 3), 7.0, dtype=torch.float64)
        state = buffer[1:, 1 : c_in + 1, 2 : length + 2]
        state.zero_()
        outside = buffer.clone()
        outside[1:, 1 : c_in + 1, 2 : length + 2] = 0
        y_steps, _ = run_steps(backend, x, weight, bias, dilation=dilation, groups=1, ring=ring, state=state)
        torch.testing.assert_close(y_steps, causal_conv1d_ref(x, weight, bias, dilation=dilation))
        assert torch.equal(state, expected_state(x, length, ring))
        rest = buffer.clone()
        rest[1:, 1 : c_in + 1, 2 : length + 2] = 0
        assert torch.equal(rest, outside), "wrote outside the state's view"


def test_step_has_no_autograd():
    """The step is for sampling: it records no graph, even for inputs that require grad."""
    x_t, weight = torch.randn(2, 3, requires_grad=True), torch.randn(4, 3, 2, requires_grad=True)
    for backend in ["ref"] + fast_backends(STEP_OP, "cpu"):
        y = causal_conv1d_step(x_t, torch.zeros(2, 3, 1), weight, backend=backend)
        assert not y.requires_grad


# -------------------------------------------------------------------- library contracts


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_opcheck(backend, device):
    names = {"cpp": ("causal_conv1d", "causal_conv1d_backward"), "triton": ("causal_conv1d_triton", "causal_conv1d_triton_backward")}
    forward, backward = (getattr(torch.ops.fastgen, n).default for n in names[backend])
    x, weight, bias = make_inputs(2, 4, 6, 9, 3, dtype=torch.float32, device=device)
    torch.library.opcheck(forward, (x, weight, bias, 2, 1))
    torch.library.opcheck(forward, (x, weight[:, :2], None, 3, 2))
    xd, wd, bd = make_inputs(2, 4, 4, 9, 2, 4, dtype=torch.float32, device=device)
    torch.library.opcheck(forward, (xd, wd, bd, 20, 4))
    grad = torch.randn(2, 6, 9, device=device, requires_grad=True)  # double backward too
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(backward, (grad, x, weight, 2, 1, mask))


@pytest.mark.parametrize("backend,device", backend_device_params(STEP_OP))
def test_opcheck_step(backend, device):
    """Including the declared mutation of state (and nothing else)."""
    op = getattr(torch.ops.fastgen, {"cpp": "causal_conv1d_step", "triton": "causal_conv1d_step_triton"}[backend]).default
    g = torch.Generator().manual_seed(0)
    x_t, weight, bias = torch.randn(2, 4, generator=g), torch.randn(6, 4, 3, generator=g), torch.randn(6, generator=g)
    x_t, weight, bias = x_t.to(device), weight.to(device), bias.to(device)
    state = torch.randn(2, 4, 4, generator=g).to(device)
    torch.library.opcheck(op, (x_t, state, weight, bias, 2, 1, None))
    torch.library.opcheck(op, (x_t, state, weight, None, 2, 1, torch.tensor([3, 6], device=device)))
    torch.library.opcheck(op, (x_t, state.new_empty(2, 4, 0), weight[:, :2, :1], bias, 1, 2, None))


@pytest.mark.parametrize("dilation,groups", [(2, 1), (3, 3)])
@pytest.mark.parametrize("backend,device", backend_device_params())
def test_gradcheck(backend, device, dilation, groups):
    x, weight, bias = make_inputs(1, 3, 3, 7, 3, groups, device=device)
    torch.autograd.gradcheck(
        lambda x, w, b: causal_conv1d(x, w, b, dilation=dilation, groups=groups, backend=backend),
        (x, weight, bias),
        fast_mode=True,
    )


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_gradgradcheck(backend, device):
    """The backward op has its own autograd formula: second derivatives run on the fast ops."""
    x, weight, bias = make_inputs(1, 2, 4, 6, 2, 2, device=device)
    torch.autograd.gradgradcheck(
        lambda x, w, b: causal_conv1d(x, w, b, dilation=2, groups=2, backend=backend), (x, weight, bias), fast_mode=True
    )


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_torch_compile_fullgraph(backend, device):
    """A two-layer stack and a step, compiled without graph breaks: same outputs, gradients
    and state updates as eager."""
    torch._dynamo.reset()

    def f(x, w1, w2, b):
        h = torch.tanh(causal_conv1d(x, w1, b, dilation=2, backend=backend))
        return causal_conv1d(h, w2, dilation=4, groups=3, backend=backend)

    x, w1, b = make_inputs(2, 3, 6, 9, 2, dtype=torch.float32, device=device)
    w2 = torch.randn(3, 2, 3, device=device, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True)
    y, y_eager = compiled(x, w1, w2, b), f(x, w1, w2, b)
    torch.testing.assert_close(y, y_eager)
    grads = torch.autograd.grad(y.square().sum(), (x, w1, w2, b))
    grads_eager = torch.autograd.grad(y_eager.square().sum(), (x, w1, w2, b))
    for got, want in zip(grads, grads_eager):
        torch.testing.assert_close(got, want)

    def step(x_t, state, position):
        return causal_conv1d_step(x_t, state, w1.detach(), b.detach(), dilation=2, position=position, backend=backend)

    compiled_step = torch.compile(step, fullgraph=True)
    state = torch.randn(2, 3, 2, device=device)
    state_eager = state.clone()
    position = torch.tensor([1, 4], device=device)
    x_t = torch.randn(2, 3, device=device)
    torch.testing.assert_close(compiled_step(x_t, state, position), step(x_t, state_eager, position))
    assert torch.equal(state, state_eager), "the compiled step did not update the state in place"


# ---------------------------------------------------------------------------- bad input


def good_args():
    return dict(x=torch.randn(2, 4, 9), weight=torch.randn(6, 2, 3), bias=torch.randn(6), dilation=2, groups=2)


BAD = [
    ("x", dict(x=[[1.0]]), TypeError, "x must be a torch.Tensor"),
    ("x-rank", dict(x=torch.randn(4, 9)), ValueError, r"x must have shape \(B, C_in, T\)"),
    ("x-int", dict(x=torch.ones(2, 4, 9, dtype=torch.int64)), TypeError, "x must have a floating-point dtype"),
    ("weight-rank", dict(weight=torch.randn(6, 2)), ValueError, "weight must have shape"),
    ("weight-no-taps", dict(weight=torch.randn(6, 2, 0)), ValueError, "weight must have K >= 1 taps"),
    ("weight-channels", dict(weight=torch.randn(6, 3, 3)), ValueError, r"C_in / groups = 4 / 2 = 2"),
    ("weight-dtype", dict(weight=torch.randn(6, 2, 3, dtype=torch.float64)), TypeError, "weight has dtype torch.float64"),
    ("weight-device", dict(weight=torch.randn(6, 2, 3, device="meta")), ValueError, "weight is on meta"),
    ("bias-shape", dict(bias=torch.randn(5)), ValueError, r"bias must have shape \(6,\)"),
    ("bias-dtype", dict(bias=torch.randn(6, dtype=torch.float64)), TypeError, "bias has dtype"),
    ("groups-divides", dict(groups=3, weight=torch.randn(6, 1, 3)), ValueError, "groups=3 must divide"),
    ("groups-out", dict(weight=torch.randn(5, 2, 3), bias=None), ValueError, "groups=2 must divide .* got 4 and 5"),
    ("groups-zero", dict(groups=0), ValueError, "groups must be >= 1"),
    ("dilation-zero", dict(dilation=0), ValueError, "dilation must be >= 1"),
    ("dilation-float", dict(dilation=2.0), TypeError, "dilation must be an int"),
    ("x-no-time", dict(x=torch.randn(2, 4, 0)), ValueError, r"x must have T >= 1, got shape \(2, 4, 0\)"),
    ("backend", dict(backend="fast"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("change,error,match", [pytest.param(c, e, m, id=i) for i, c, e, m in BAD])
def test_bad_input_raises_before_any_kernel(change, error, match):
    args = good_args() | change
    x, weight = args.pop("x"), args.pop("weight")
    with pytest.raises(error, match=match):
        causal_conv1d(x, weight, **args)


def good_step_args():
    # K = 3, dilation 2: L = 4
    return dict(
        x_t=torch.randn(2, 4), state=torch.zeros(2, 4, 4), weight=torch.randn(6, 2, 3), bias=torch.randn(6),
        dilation=2, groups=2, position=None,
    )


BAD_STEP = [
    ("x_t-rank", dict(x_t=torch.randn(2, 4, 1)), ValueError, r"x_t must have shape \(B, C_in\)"),
    ("state-type", dict(state=[0.0]), TypeError, "state must be a torch.Tensor"),
    ("state-rank", dict(state=torch.zeros(2, 4)), ValueError, r"state must have shape \(B, C_in, \(K-1\)\*dilation\)"),
    ("state-length", dict(state=torch.zeros(2, 4, 3)), ValueError, r"state must have shape .* = \(2, 4, 4\), got \(2, 4, 3\)"),
    ("state-batch", dict(state=torch.zeros(3, 4, 4)), ValueError, r"= \(2, 4, 4\), got \(3, 4, 4\)"),
    ("state-dtype", dict(state=torch.zeros(2, 4, 4, dtype=torch.float64)), TypeError, "state has dtype torch.float64"),
    ("state-device", dict(state=torch.zeros(2, 4, 4, device="meta")), ValueError, "state is on meta"),
    ("state-stride", dict(state=torch.zeros(2, 4, 8)[:, :, ::2]), ValueError, r"state must be contiguous in its last dimension"),
    ("state-int", dict(state=torch.zeros(2, 4, 4, dtype=torch.int64)), TypeError, "state must have a floating-point dtype"),
    ("state-expanded", dict(state=torch.zeros(1, 4, 4).expand(2, 4, 4)), ValueError, "state is updated in place"),
    ("weight-no-taps", dict(weight=torch.randn(6, 2, 0), state=torch.zeros(2, 4, 0)), ValueError, "K >= 1 taps"),
    ("weight-channels", dict(weight=torch.randn(6, 4, 3)), ValueError, "C_in / groups"),
    ("groups", dict(groups=3), ValueError, "groups=3 must divide"),
    ("dilation", dict(dilation=0), ValueError, "dilation must be >= 1"),
    ("position-dtype", dict(position=torch.zeros(2, dtype=torch.int32)), TypeError, "position must have dtype torch.int64"),
    ("position-float", dict(position=torch.zeros(2)), TypeError, "position must have dtype torch.int64"),
    ("position-shape", dict(position=torch.zeros(3, dtype=torch.int64)), ValueError, r"position must have shape \(B,\) = \(2,\)"),
    ("position-rank", dict(position=torch.zeros(2, 1, dtype=torch.int64)), ValueError, r"position must have shape \(B\)"),
    ("position-int", dict(position=3), TypeError, "position must be a torch.Tensor"),
    ("position-device", dict(position=torch.zeros(2, dtype=torch.int64, device="meta")), ValueError, "position is on meta"),
]


@pytest.mark.parametrize("change,error,match", [pytest.param(c, e, m, id=i) for i, c, e, m in BAD_STEP])
def test_step_bad_input_raises_before_any_kernel(change, error, match):
    args = good_step_args() | change
    state_before = args["state"].clone() if isinstance(args["state"], torch.Tensor) and args["state"].device.type == "cpu" else None
    x_t, state, weight = args.pop("x_t"), args.pop("state"), args.pop("weight")
    with pytest.raises(error, match=match):
        causal_conv1d_step(x_t, state, weight, **args)
    if state_before is not None:
        assert torch.equal(state, state_before), "the state changed although the call was refused"


@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu"))
def test_empty_sequence_raises_and_empty_batch_works(backend):
    """T = 0 is refused on every backend (the same rule as the image ops' H, W = 0), before
    any kernel, forward or backward; B = 0 returns an empty output with empty gradients."""
    x, weight, bias = make_inputs(2, 3, 4, 0, 2)
    with pytest.raises(ValueError, match=r"causal_conv1d: x must have T >= 1"):
        causal_conv1d(x, weight, bias, backend=backend)
    x, weight, bias = make_inputs(0, 3, 4, 5, 2)
    y = causal_conv1d(x, weight, bias, backend=backend)
    assert y.shape == (0, 4, 5)
    grad_x, grad_w = torch.autograd.grad(y.sum(), (x, weight))
    assert grad_x.shape == (0, 3, 5) and torch.count_nonzero(grad_w) == 0


@pytest.mark.parametrize("ring", [False, True], ids=["shift", "ring"])
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(STEP_OP, "cpu"))
def test_step_refuses_a_state_whose_examples_share_memory(backend, ring):
    """An expanded state (stride 0 over the batch) would have every example write into one
    buffer: refused on every backend, the shared buffer left as it was."""
    base = torch.zeros(1, 2, 3)
    position = torch.tensor([0, 1, 2]) if ring else None
    x_t, weight = torch.arange(6.0).view(3, 2), torch.ones(1, 2, 2)
    with pytest.raises(ValueError, match="state is updated in place"):
        causal_conv1d_step(x_t, base.expand(3, 2, 3), weight, dilation=3, position=position, backend=backend)
    assert torch.equal(base, torch.zeros(1, 2, 3))
    # The same memory layout given to each example separately (a slice along the batch of
    # a larger buffer, strides (12, 3, 1)) is fine.
    state = torch.zeros(6, 2, 3)[::2]
    y = causal_conv1d_step(x_t, state, weight, dilation=3, position=position, backend=backend)
    torch.testing.assert_close(y, x_t.sum(1, keepdim=True))


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="needs the extension")
def test_cpp_ops_called_directly_check_their_arguments():
    """torch.ops.fastgen.causal_conv1d* bypass the Python checks: they must still refuse
    anything they could read or write out of bounds, with a ValueError/TypeError."""
    x, w = torch.randn(2, 4, 9), torch.randn(6, 4, 3)
    op, backward = torch.ops.fastgen.causal_conv1d.default, torch.ops.fastgen.causal_conv1d_backward.default
    step = torch.ops.fastgen.causal_conv1d_step.default
    with pytest.raises(ValueError, match="input channels"):
        op(x, torch.randn(6, 3, 3), None, 1, 1)
    with pytest.raises(ValueError, match="K >= 1"):
        op(x, torch.randn(6, 4, 0), None, 1, 1)
    with pytest.raises(ValueError, match="bias"):
        op(x, w, torch.randn(7), 1, 1)
    with pytest.raises(ValueError, match="groups"):
        op(x, torch.randn(6, 2, 3), None, 1, 3)
    with pytest.raises(ValueError, match="dilation"):
        op(x, w, None, 0, 1)
    with pytest.raises(TypeError, match="float32 or float64"):
        op(x.half(), w.half(), None, 1, 1)
    with pytest.raises(ValueError, match="grad_out"):
        backward(torch.randn(2, 6, 8), x, w, 1, 1, [True, True, True])
    x_t, state = torch.randn(2, 4), torch.zeros(2, 4, 4)
    with pytest.raises(ValueError, match="state must be"):
        step(x_t, torch.zeros(2, 4, 3), w, None, 2, 1, None)
    with pytest.raises(ValueError, match="contiguous in its last dimension"):
        step(x_t, torch.zeros(2, 4, 8)[:, :, ::2], w, None, 2, 1, None)
    with pytest.raises(TypeError, match="state must have x_t's dtype"):
        step(x_t, state.double(), w, None, 2, 1, None)
    with pytest.raises(TypeError, match="position must be int64"):
        step(x_t, state, w, None, 2, 1, torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="position must be a"):
        step(x_t, state, w, None, 2, 1, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="overflows"):
        step(x_t, state, w, None, 2**62, 1, None)
