"""fastgen.ops.masked_conv2d: every fast backend against the reference.

Outputs and all gradients over a grid (kernel 1/3/5/7, mask A/B, colour 1/3, batch 1,
odd image sizes, channel counts that are not multiples of 8, non-contiguous inputs,
float32/float64); the exact set of taps each output sees (causality through the
Jacobian); opcheck, gradcheck and torch.compile(fullgraph=True); bad inputs.
"""

import itertools

import pytest
import torch

from fastgen.ops import masked_conv2d, masked_conv2d_mask, masked_conv2d_ref

from ..helpers import DEVICES, fast_backends, tolerances

OP = "masked_conv2d"


def backend_device_dtype_params():
    """(backend, device, dtype) for every fast backend that can run here."""
    params = []
    for device in DEVICES:
        dtypes = [torch.float32, torch.float64] + ([torch.float16, torch.bfloat16] if device == "cuda" else [])
        for dtype in dtypes:
            params += [pytest.param(b, device, dtype, id=f"{b}-{device}-{str(dtype)[6:]}") for b in fast_backends(OP, device, dtype)]
    return params


def backend_device_params():
    return [pytest.param(b, d, id=f"{b}-{d}") for d in DEVICES for b in fast_backends(OP, d)]


def make_inputs(B, c_in, c_out, H, W, k, *, dtype, device, contiguous=True, seed=0):
    """x, weight, bias (requiring grad); non-contiguous ones are views into larger tensors."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)

    if contiguous:
        x, weight, bias = rand(B, c_in, H, W), rand(c_out, c_in, k, k), rand(c_out)
    else:
        x = rand(B, c_in + 2, H + 1, 2 * W)[:, 1 : c_in + 1, 1:, ::2]
        weight = rand(c_out, c_in, k, k + 3)[..., 2 : k + 2]
        bias = rand(2 * c_out)[::2]
        assert not (x.is_contiguous() or weight.is_contiguous() or bias.is_contiguous())
    return [t.requires_grad_() for t in (x, weight, bias)]


def assert_matches_reference(backend, x, weight, bias, grad_seed=1, contiguous=True, **kw):
    tol = tolerances(x.dtype)
    y = masked_conv2d(x, weight, bias, backend=backend, **kw)
    y_ref = masked_conv2d_ref(x, weight, bias, **kw)
    assert y.shape == y_ref.shape and y.dtype == x.dtype and y.device == x.device
    torch.testing.assert_close(y, y_ref, **tol)
    g = torch.Generator().manual_seed(grad_seed)
    B, C, H, W = y.shape
    grad = torch.randn(B, C, W, H, generator=g, dtype=torch.float64).to(y).transpose(2, 3)
    if contiguous:
        grad = grad.contiguous()
    grads = torch.autograd.grad(y, (x, weight, bias), grad)
    grads_ref = torch.autograd.grad(y_ref, (x, weight, bias), grad)
    for name, got, want in zip(("x", "weight", "bias"), grads, grads_ref):
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"grad of {name}: {m}")


GRID = [
    pytest.param(k, mask, colour, shape, dilation, contiguous, id=f"k{k}{mask}-col{colour}-{'x'.join(map(str, shape))}-d{dilation}{'' if contiguous else '-strided'}")
    for k, mask, colour in itertools.product((1, 3, 5, 7), "AB", (1, 3))
    for shape, dilation, contiguous in [((1, 3, 6, 5, 7), 1, True), ((2, 6, 9, 4, 3), 2, False)]
]


@pytest.mark.parametrize("k,mask,colour,shape,dilation,contiguous", GRID)
@pytest.mark.parametrize("backend,device,dtype", backend_device_dtype_params())
def test_matches_reference(backend, device, dtype, k, mask, colour, shape, dilation, contiguous):
    B, c_in, c_out, H, W = shape
    x, weight, bias = make_inputs(B, c_in, c_out, H, W, k, dtype=dtype, device=device, contiguous=contiguous)
    assert_matches_reference(
        backend, x, weight, bias, contiguous=contiguous, mask_type=mask, color_channels=colour, dilation=dilation
    )


@pytest.mark.parametrize("c_in,c_out", [(36, 51), (48, 3), (3, 45)])
@pytest.mark.parametrize("k,mask,colour", [(3, "B", 3), (7, "A", 1), (7, "A", 3)])
@pytest.mark.parametrize("backend,device", backend_device_params())
def test_matches_reference_many_channels(backend, device, k, mask, colour, c_in, c_out):
    """Channel counts spanning several register/program blocks with partial last blocks, and
    very unequal counts (the CPU kernels then put pixels or input channels in the lanes)."""
    x, weight, bias = make_inputs(2, c_in, c_out, 6, 17, k, dtype=torch.float32, device=device)
    assert_matches_reference(backend, x, weight, bias, mask_type=mask, color_channels=colour)


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_degenerate_shapes(backend, device):
    """Empty batch; dilations wider than the image; mask A 1x1 (every tap masked: y = bias)."""
    x, weight, bias = make_inputs(0, 3, 6, 5, 5, 3, dtype=torch.float64, device=device)
    assert masked_conv2d(x, weight, bias, mask_type="A", backend=backend).shape == (0, 6, 5, 5)
    x, weight, bias = make_inputs(1, 3, 6, 4, 5, 5, dtype=torch.float64, device=device)
    assert_matches_reference(backend, x, weight, bias, mask_type="B", dilation=7)
    # A dilation whose offsets would overflow 64 bits: every off-centre tap is outside.
    y = masked_conv2d(x, weight, bias, mask_type="B", dilation=2**62, backend=backend)
    centre = weight[:, :, 2:3, 2:3]
    torch.testing.assert_close(y, masked_conv2d_ref(x, centre, bias, mask_type="B"))
    x, weight, bias = make_inputs(2, 3, 6, 4, 5, 1, dtype=torch.float64, device=device)
    y = masked_conv2d(x, weight, bias, mask_type="A", backend=backend)
    torch.testing.assert_close(y, bias[None, :, None, None].expand_as(y).detach())
    (grad_w,) = torch.autograd.grad(y.sum(), weight)
    assert torch.count_nonzero(grad_w) == 0


def expected_support(c_out, c_in, H, W, k, mask, colour, dilation):
    """S[o, h, w, i, h2, w2] = 1 where output (o, h, w) may depend on input (i, h2, w2)."""
    kept = masked_conv2d_mask(c_out, c_in, k, mask, colour, dtype=torch.bool)
    S = torch.zeros(c_out, H, W, c_in, H, W, dtype=torch.bool)
    c = k // 2
    for h, w, kh, kw in itertools.product(range(H), range(W), range(k), range(k)):
        h2, w2 = h + (kh - c) * dilation, w + (kw - c) * dilation
        if 0 <= h2 < H and 0 <= w2 < W:
            S[:, h, w, :, h2, w2] = kept[:, :, kh, kw]
    return S


@pytest.mark.parametrize("k,mask,colour,dilation", [(3, "A", 1, 1), (3, "B", 1, 1), (5, "A", 3, 1), (5, "B", 3, 2), (3, "A", 3, 2)])
@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu"))
def test_causality_jacobian(backend, k, mask, colour, dilation):
    """Output (o, h, w) depends on exactly the inputs its mask keeps: none at or after it in
    raster order (A) / after it (B), none of a later colour group at the same pixel, and
    every kept one (no tap masked by mistake). The layer is linear, so its Jacobian is read
    off one batched forward on the basis inputs, and its transpose off one backward."""
    c_in, c_out, H, W = 3, 6, 4, 5
    n_in, n_out = c_in * H * W, c_out * H * W
    weight = torch.randn(c_out, c_in, k, k, dtype=torch.float64)
    kw = dict(mask_type=mask, color_channels=colour, dilation=dilation, backend=backend)
    y = masked_conv2d(torch.eye(n_in, dtype=torch.float64).view(n_in, c_in, H, W), weight, **kw)
    J = y.reshape(n_in, n_out).T  # column j: the response to input element j
    support = expected_support(c_out, c_in, H, W, k, mask, colour, dilation).reshape(n_out, n_in)
    assert torch.equal(J != 0, support), "forward reads a masked tap or misses a kept one"
    x = torch.zeros(n_out, c_in, H, W, dtype=torch.float64, requires_grad=True)
    basis_out = torch.eye(n_out, dtype=torch.float64).view(n_out, c_out, H, W)
    (J_rows,) = torch.autograd.grad(masked_conv2d(x, weight, **kw), x, basis_out)
    torch.testing.assert_close(J_rows.reshape(n_out, n_in), J, atol=0, rtol=0)


@pytest.mark.parametrize("colour", [1, 3])
@pytest.mark.parametrize("backend", fast_backends(OP, "cpu"))
def test_causality_of_a_stack(backend, colour):
    """A-then-B stack with a nonlinearity: each output sees only earlier pixels, and at its
    own pixel only earlier colour groups (checked through backward, output by output)."""
    torch.manual_seed(0)
    c, H, W = 3, 5, 5
    w1, w2 = torch.randn(6, c, 3, 3, dtype=torch.float64), torch.randn(c, 6, 3, 3, dtype=torch.float64)
    x = torch.randn(1, c, H, W, dtype=torch.float64, requires_grad=True)
    h = torch.tanh(masked_conv2d(x, w1, mask_type="A", color_channels=colour, backend=backend))
    y = masked_conv2d(h, w2, mask_type="B", color_channels=colour, backend=backend)
    for o, r, s in [(0, 0, 0), (2, 2, 3), (1, 4, 4), (0, 3, 1)]:
        (grad,) = torch.autograd.grad(y[0, o, r, s], x, retain_graph=True)
        dep = grad[0] != 0  # (c, H, W)
        raster = torch.arange(H * W).view(H, W)
        later_pixel = raster > r * W + s
        assert not dep[:, later_pixel].any(), "depends on a later pixel"
        own = dep[:, r, s]
        allowed = torch.arange(c) < (o if colour > 1 else 0)
        assert not (own & ~allowed).any(), "depends on its own pixel beyond the earlier colour groups"


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_opcheck(backend, device):
    op_name = {"cpp": "masked_conv2d", "triton": "masked_conv2d_triton"}[backend]
    x, weight, bias = make_inputs(2, 3, 6, 4, 5, 3, dtype=torch.float32, device=device)
    forward = getattr(torch.ops.fastgen, op_name).default
    backward = getattr(torch.ops.fastgen, op_name + "_backward").default
    torch.library.opcheck(forward, (x, weight, bias, "B", 3, 1))
    torch.library.opcheck(forward, (x, weight, None, "A", 1, 2))
    grad = torch.randn(2, 6, 4, 5, device=device, requires_grad=True)  # double backward too
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(backward, (grad, x, weight, "A", 3, 1, mask))


@pytest.mark.parametrize("mask,colour", [("A", 3), ("B", 1)])
@pytest.mark.parametrize("backend,device", backend_device_params())
def test_gradcheck(backend, device, mask, colour):
    x, weight, bias = make_inputs(1, 3, 3, 4, 5, 3, dtype=torch.float64, device=device)
    torch.autograd.gradcheck(
        lambda x, w, b: masked_conv2d(x, w, b, mask_type=mask, color_channels=colour, backend=backend),
        (x, weight, bias),
        fast_mode=True,
    )


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_gradgradcheck(backend, device):
    """Second derivatives (gradient penalties, Hessian-vector products) run on the fast
    ops too: the backward op has its own autograd formula."""
    x, weight, bias = make_inputs(1, 3, 3, 4, 3, 3, dtype=torch.float64, device=device)
    torch.autograd.gradgradcheck(
        lambda x, w, b: masked_conv2d(x, w, b, mask_type="A", color_channels=3, dilation=2, backend=backend),
        (x, weight, bias),
        fast_mode=True,
    )


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()

    def f(x, w1, w2, b):
        h = torch.relu(masked_conv2d(x, w1, b, mask_type="A", color_channels=3, backend=backend))
        return masked_conv2d(h, w2, mask_type="B", color_channels=3, backend=backend)

    x, w1, b = make_inputs(2, 3, 6, 5, 4, 3, dtype=torch.float32, device=device)
    w2 = torch.randn(3, 6, 1, 1, device=device, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True)
    y, y_eager = compiled(x, w1, w2, b), f(x, w1, w2, b)
    torch.testing.assert_close(y, y_eager)
    grads = torch.autograd.grad(y.square().sum(), (x, w1, w2, b))
    grads_eager = torch.autograd.grad(y_eager.square().sum(), (x, w1, w2, b))
    for got, want in zip(grads, grads_eager):
        torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------- bad input


def good_args():
    return dict(x=torch.randn(2, 3, 5, 5), weight=torch.randn(6, 3, 3, 3), bias=torch.randn(6), mask_type="A", color_channels=3, dilation=1)


BAD = [
    ("x", dict(x=[[1.0]]), TypeError, "x must be a torch.Tensor"),
    ("x-rank", dict(x=torch.randn(3, 5, 5)), ValueError, r"x must have shape \(B, C_in, H, W\)"),
    ("x-int", dict(x=torch.ones(2, 3, 5, 5, dtype=torch.int64)), TypeError, "x must have a floating-point dtype"),
    ("weight-rank", dict(weight=torch.randn(6, 3, 3)), ValueError, "weight must have shape"),
    ("weight-even", dict(weight=torch.randn(6, 3, 4, 4)), ValueError, "weight must have a square kernel of odd size"),
    ("weight-nonsquare", dict(weight=torch.randn(6, 3, 3, 5)), ValueError, "weight must have a square kernel"),
    ("weight-channels", dict(weight=torch.randn(6, 4, 3, 3)), ValueError, r"C_in = x.shape\[1\] = 3"),
    ("weight-dtype", dict(weight=torch.randn(6, 3, 3, 3, dtype=torch.float64)), TypeError, "weight has dtype torch.float64"),
    ("weight-device", dict(weight=torch.randn(6, 3, 3, 3, device="meta")), ValueError, "weight is on meta"),
    ("bias-shape", dict(bias=torch.randn(5)), ValueError, r"bias must have shape \(6,\)"),
    ("bias-rank", dict(bias=torch.randn(6, 1)), ValueError, r"bias must have shape \(C_out\)"),
    ("bias-dtype", dict(bias=torch.randn(6, dtype=torch.float64)), TypeError, "bias has dtype"),
    ("mask", dict(mask_type="C"), ValueError, "mask_type must be one of 'A', 'B'"),
    ("mask-type", dict(mask_type=1), ValueError, "mask_type must be one of"),
    ("colour-divides", dict(weight=torch.randn(4, 3, 3, 3), bias=None), ValueError, "color_channels=3 must divide"),
    ("colour-zero", dict(color_channels=0), ValueError, "color_channels must be >= 1"),
    ("colour-float", dict(color_channels=3.0), TypeError, "color_channels must be an int"),
    ("dilation", dict(dilation=0), ValueError, "dilation must be >= 1"),
    ("backend", dict(backend="fast"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("change,error,match", [pytest.param(c, e, m, id=i) for i, c, e, m in BAD])
def test_bad_input_raises_before_any_kernel(change, error, match):
    args = good_args() | change
    x, weight = args.pop("x"), args.pop("weight")
    with pytest.raises(error, match=match):
        masked_conv2d(x, weight, **args)


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="needs the extension")
def test_cpp_op_called_directly_checks_its_arguments():
    """torch.ops.fastgen.masked_conv2d bypasses the Python checks: it must still refuse
    anything it could read out of bounds, with a ValueError/TypeError."""
    x, w = torch.randn(2, 3, 5, 5), torch.randn(6, 3, 3, 3)
    op, backward = torch.ops.fastgen.masked_conv2d.default, torch.ops.fastgen.masked_conv2d_backward.default
    with pytest.raises(ValueError, match="input channels"):
        op(x, torch.randn(6, 4, 3, 3), None, "A", 1, 1)
    with pytest.raises(ValueError, match="odd k"):
        op(x, torch.randn(6, 3, 2, 2), None, "A", 1, 1)
    with pytest.raises(ValueError, match="bias"):
        op(x, w, torch.randn(7), "A", 1, 1)
    with pytest.raises(ValueError, match="mask_type"):
        op(x, w, None, "Z", 1, 1)
    with pytest.raises(ValueError, match="color_channels"):
        op(x, w, None, "A", 2, 1)
    with pytest.raises(TypeError, match="float32 or float64"):
        op(x.half(), w.half(), None, "A", 1, 1)
    with pytest.raises(ValueError, match="grad_out"):
        backward(torch.randn(2, 6, 5, 4), x, w, "A", 1, 1, [True, True, True])
