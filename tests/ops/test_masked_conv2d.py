"""fastgen.ops.masked_conv2d: every fast backend against the reference.

Outputs and all gradients over a grid (kernel 1/3/5/7, mask A/B, colour 1/3, batch 1,
odd image sizes, channel counts that are not multiples of 8, non-contiguous inputs,
float32/float64); the exact set of taps each output sees (causality through the
Jacobian); opcheck, gradcheck and torch.compile(fullgraph=True); bad inputs.

masked_conv2d_step (the one-pixel form on a padded channels-last buffer): every backend
against the step reference and the full op at every pixel, with the buffer filled as a
sampler fills it (pixels up to the current one) and filled completely (a step that read a
masked tap would differ); packing, the write helper, strided buffers, opcheck, bad inputs.
"""

import itertools

import pytest
import torch

from fastgen.ops import (
    masked_conv2d,
    masked_conv2d_mask,
    masked_conv2d_ref,
    masked_conv2d_step,
    masked_conv2d_step_buffer,
    masked_conv2d_step_pack,
    masked_conv2d_step_ref,
    masked_conv2d_step_write,
    masked_conv2d_stepper,
)
from fastgen.ops.masked_conv2d import masked_conv2d_step_taps

from ..helpers import DEVICES, fast_backends, tolerances

OP = "masked_conv2d"
STEP_OP = "masked_conv2d_step"


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
    ("x-no-rows", dict(x=torch.randn(2, 3, 0, 5)), ValueError, r"x must have H and W >= 1, got shape \(2, 3, 0, 5\)"),
    ("x-no-columns", dict(x=torch.randn(2, 3, 5, 0)), ValueError, r"x must have H and W >= 1"),
    ("backend", dict(backend="fast"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("change,error,match", [pytest.param(c, e, m, id=i) for i, c, e, m in BAD])
def test_bad_input_raises_before_any_kernel(change, error, match):
    args = good_args() | change
    x, weight = args.pop("x"), args.pop("weight")
    with pytest.raises(error, match=match):
        masked_conv2d(x, weight, **args)


@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu"))
def test_empty_image_raises_on_every_backend(backend):
    """H = 0 or W = 0 is refused before any kernel (cpp returned an empty output, ref raised
    torch's own error), the rule of the other image and sequence ops; B = 0 still works."""
    weight = torch.randn(2, 1, 3, 3, requires_grad=True)
    for shape in ((1, 1, 0, 3), (1, 1, 3, 0), (1, 1, 0, 0)):
        with pytest.raises(ValueError, match=r"masked_conv2d: x must have H and W >= 1"):
            masked_conv2d(torch.zeros(shape, requires_grad=True), weight, mask_type="B", backend=backend)
    y = masked_conv2d(torch.zeros(0, 1, 3, 3), weight, mask_type="B", backend=backend)
    assert y.shape == (0, 2, 3, 3)


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((2, 1, 2, "A"), ValueError, "kernel_size must be odd, got 2"),
        ((2, 1, 0, "A"), ValueError, "kernel_size must be >= 1, got 0"),
        ((2, 1, 3.0, "A"), TypeError, "kernel_size must be an int"),
        ((-1, 1, 3, "A"), ValueError, "out_channels must be >= 1, got -1"),
        ((2, 0, 3, "B"), ValueError, "in_channels must be >= 1, got 0"),
        ((2, 1, 3, "C"), ValueError, "mask_type must be one of"),
    ],
)
def test_mask_bad_arguments_raise(args, error, match):
    """masked_conv2d_mask takes what the ops take: an odd kernel, channel counts >= 1."""
    with pytest.raises(error, match="masked_conv2d_mask: " + match):
        masked_conv2d_mask(*args)
    mask = masked_conv2d_mask(2, 1, 3, "A")
    assert torch.equal(mask[0, 0], torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 0, 0]]))


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


# --------------------------------------------------------------------------------- step


def fill_buffer(x, k, dilation):
    """The step buffer (B, H + P, W + 2P, C) holding all of x (B, C, H, W)."""
    B, C, H, W = x.shape
    buffer = masked_conv2d_step_buffer(B, H, W, C, k, dilation=dilation, dtype=x.dtype, device=x.device)
    pad = dilation * (k // 2)
    buffer[:, pad:, pad : pad + W] = x.permute(0, 2, 3, 1)
    return buffer


def assert_steps_equal_full(backend, x, weight, bias, *, mask_type, colour, dilation, pixels=None):
    """At every pixel (raster order), the step equals the full op: on a buffer filled up to
    and including that pixel (as in sampling) and on one holding the whole image; and so
    does a stepper made once over the filling buffer (it reads the buffer at each call)."""
    B, C, H, W = x.shape
    k = weight.shape[2]
    kw = dict(mask_type=mask_type, color_channels=colour, dilation=dilation)
    full = masked_conv2d_ref(x, weight, bias, **kw)
    tol = tolerances(x.dtype)
    whole = fill_buffer(x, k, dilation)
    packed = masked_conv2d_step_pack(weight, mask_type=mask_type, color_channels=colour)
    progressive = masked_conv2d_step_buffer(B, H, W, C, k, dilation=dilation, dtype=x.dtype)
    step = masked_conv2d_stepper(progressive, weight, bias, packed_weight=packed, backend=backend, **kw)
    for i, j in itertools.product(range(H), range(W)):
        masked_conv2d_step_write(progressive, x[:, :, i, j], i, j, kernel_size=k, dilation=dilation)
        if pixels is not None and (i, j) not in pixels:
            continue
        for buffer in (progressive, whole):
            y = masked_conv2d_step(buffer, weight, bias, i=i, j=j, packed_weight=packed, backend=backend, **kw)
            assert y.shape == (B, weight.shape[0]) and y.dtype == x.dtype
            torch.testing.assert_close(y, full[:, :, i, j], **tol, msg=lambda m: f"pixel ({i}, {j}): {m}")
            y_ref = masked_conv2d_step_ref(buffer, weight, bias, i=i, j=j, **kw)
            torch.testing.assert_close(y, y_ref, **tol, msg=lambda m: f"pixel ({i}, {j}) vs step ref: {m}")
        torch.testing.assert_close(step(i, j), full[:, :, i, j], **tol, msg=lambda m: f"stepper at ({i}, {j}): {m}")


STEP_GRID = [
    pytest.param(k, mask, colour, dilation, id=f"k{k}{mask}-col{colour}-d{dilation}")
    for k, mask, colour, dilation in itertools.product((3, 5, 7), "AB", (1, 3), (1, 2))
]


def step_backend_dtype_params():
    params = [pytest.param("ref", torch.float64, id="ref-float64")]
    for dtype in (torch.float32, torch.float64):
        params += [pytest.param(b, dtype, id=f"{b}-{str(dtype)[6:]}") for b in fast_backends(STEP_OP, "cpu", dtype) if b != "triton"]
    return params


@pytest.mark.parametrize("k,mask,colour,dilation", STEP_GRID)
@pytest.mark.parametrize("backend,dtype", step_backend_dtype_params())
def test_step_equals_full_at_every_pixel(backend, dtype, k, mask, colour, dilation):
    """Odd image sizes (every pixel: the borders, the corners, taps reaching into the padding);
    batch 1 and 3 alternate over the grid."""
    B = 1 if (k + dilation) % 2 else 3
    x, weight, bias = (t.detach() for t in make_inputs(B, 3, 6, 5, 7, k, dtype=dtype, device="cpu"))
    assert_steps_equal_full(backend, x, weight, bias, mask_type=mask, colour=colour, dilation=dilation)


@pytest.mark.skipif("triton" not in fast_backends(STEP_OP, "cpu"), reason="needs triton (interpreted on CPU)")
@pytest.mark.parametrize(
    "k,mask,colour,dilation,dtype",
    [(3, "A", 1, 1, torch.float32), (5, "B", 3, 2, torch.float64), (7, "A", 3, 1, torch.float32), (3, "B", 1, 2, torch.float64)],
)
def test_step_equals_full_triton(k, mask, colour, dilation, dtype):
    """The interpreter is slow: a tiny image, a few pixels (corners, borders, the middle)."""
    B = 3 if dtype == torch.float32 else 1
    x, weight, bias = (t.detach() for t in make_inputs(B, 3, 6, 3, 4, k, dtype=dtype, device="cpu"))
    pixels = [(0, 0), (0, 1), (0, 3), (1, 0), (1, 2), (2, 3)]
    assert_steps_equal_full("triton", x, weight, bias, mask_type=mask, colour=colour, dilation=dilation, pixels=pixels)


@pytest.mark.parametrize("backend", ["ref"] + fast_backends(STEP_OP, "cpu"))
def test_step_many_channels_and_strided_inputs(backend):
    """Output channels spanning several SIMD lane blocks with a partial last one (the CPU
    kernel's tail panel) and more batch rows than one register tile; the buffer a strided
    view into a larger tensor, weight and bias strided, the packing made on the fly."""
    B, c_in, c_out, H, W, k = 17, 5, 37, 3, 4, 3
    x, weight, bias = (t.detach() for t in make_inputs(B, c_in, c_out, H, W, k, dtype=torch.float32, device="cpu", contiguous=False))
    big = torch.randn(B + 1, H + 2, W + 4, 2 * c_in + 1)
    buffer = big[1:, 1:, 1:-1, 1::2]  # (B, H + 1, W + 2, c_in), no unit stride
    buffer.zero_()
    buffer[:, 1:, 1 : W + 1] = x.permute(0, 2, 3, 1)
    before = big.clone()
    full = masked_conv2d_ref(x, weight, bias, mask_type="B", color_channels=1)
    for i, j in [(0, 0), (1, 3), (2, 2)]:
        y = masked_conv2d_step(buffer, weight, bias, i=i, j=j, mask_type="B", backend=backend)
        torch.testing.assert_close(y, full[:, :, i, j], **tolerances(torch.float32))
    assert torch.equal(big, before), "the step wrote into its input"


def test_step_pack_layout():
    """Row t * C_in + i of the packing is kept tap t (raster order) of input channel i; the
    colour rule zeroes the centre's hidden pairs; masked taps never appear."""
    weight = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    for mask, colour in [("A", 1), ("B", 1), ("A", 3), ("B", 3)]:
        packed = masked_conv2d_step_pack(weight, mask_type=mask, color_channels=colour)
        T = masked_conv2d_step_taps(5, mask, colour)
        assert T == (12 if mask == "A" and colour == 1 else 13)
        assert packed.shape == (T * 3, 6) and packed.is_contiguous()
        kept = (weight * masked_conv2d_mask(6, 3, 5, mask, colour, dtype=weight.dtype)).flatten(2)[:, :, :T]
        assert torch.equal(packed.view(T, 3, 6), kept.permute(2, 1, 0))
    assert not masked_conv2d_step_pack(weight.requires_grad_(), mask_type="A").requires_grad


def test_step_write_helper():
    buffer = masked_conv2d_step_buffer(2, 4, 3, 3, 5, dilation=2, dtype=torch.float64)
    assert buffer.shape == (2, 8, 11, 3) and not buffer.any()
    masked_conv2d_step_write(buffer, torch.ones(2, 2), 3, 2, kernel_size=5, dilation=2, channel=1)
    expected = torch.zeros_like(buffer)
    expected[:, 4 + 3, 4 + 2, 1:] = 1
    assert torch.equal(buffer, expected)
    with pytest.raises(ValueError, match=r"channel \+ n <= C_in = 3"):
        masked_conv2d_step_write(buffer, torch.ones(2, 2), 0, 0, kernel_size=5, dilation=2, channel=2)
    with pytest.raises(ValueError, match=r"value must be \(B, n\) = \(2, n\)"):
        masked_conv2d_step_write(buffer, torch.ones(3, 1), 0, 0, kernel_size=5, dilation=2)
    with pytest.raises(ValueError, match=r"pixel \(i, j\) = \(4, 0\) is outside the 4x3 image"):
        masked_conv2d_step_write(buffer, torch.ones(2, 3), 4, 0, kernel_size=5, dilation=2)
    with pytest.raises(ValueError, match="buffer must have shape"):
        masked_conv2d_step_write(buffer, torch.ones(2, 3), 0, 0, kernel_size=9, dilation=2)
    # An expanded buffer: both examples would write into one memory, refused, left unchanged.
    base = masked_conv2d_step_buffer(1, 4, 3, 3, 5, dilation=2, dtype=torch.float64)
    with pytest.raises(ValueError, match="masked_conv2d_step_write: buffer is updated in place"):
        masked_conv2d_step_write(base.expand(2, -1, -1, -1), torch.ones(2, 3), 0, 0, kernel_size=5, dilation=2)
    assert not base.any()


def test_step_has_no_autograd():
    """The step is for sampling: it records no graph, even for inputs that require grad."""
    weight, bias = torch.randn(4, 3, 3, 3, requires_grad=True), torch.randn(4, requires_grad=True)
    buffer = torch.randn(2, 4, 6, 3, requires_grad=True)
    for backend in ["ref"] + fast_backends(STEP_OP, "cpu"):
        y = masked_conv2d_step(buffer, weight, bias, i=1, j=1, mask_type="B", backend=backend)
        assert not y.requires_grad


@pytest.mark.parametrize("backend,device", [pytest.param(b, d, id=f"{b}-{d}") for d in DEVICES for b in fast_backends(STEP_OP, d)])
def test_opcheck_step(backend, device):
    op = getattr(torch.ops.fastgen, {"cpp": "masked_conv2d_step", "triton": "masked_conv2d_step_triton"}[backend]).default
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(6, 3, 3, 3, generator=g).to(device), torch.randn(6, generator=g).to(device)
    buffer = torch.randn(2, 5, 6, 3, generator=g).to(device)  # a 4x4 image, P = 1
    torch.library.opcheck(op, (buffer, masked_conv2d_step_pack(weight, mask_type="B", color_channels=3), bias, 3, 0, 3, "B", 3, 1))
    torch.library.opcheck(op, (buffer, masked_conv2d_step_pack(weight, mask_type="A"), None, 0, 3, 3, "A", 1, 1))
    buffer2 = torch.randn(1, 7, 10, 3, generator=g).to(device)  # dilation 3: a 4x4 image, P = 3
    torch.library.opcheck(op, (buffer2, masked_conv2d_step_pack(weight, mask_type="A"), bias, 2, 1, 3, "A", 1, 3))


@pytest.mark.skipif("cpp" not in fast_backends(STEP_OP, "cpu"), reason="needs the extension")
def test_step_torch_compile_fullgraph():
    torch._dynamo.reset()
    weight, bias = torch.randn(6, 3, 3, 3), torch.randn(6)
    packed = masked_conv2d_step_pack(weight, mask_type="B", color_channels=3)

    def f(buffer, i, j):
        y = masked_conv2d_step(buffer, weight, bias, i=i, j=j, mask_type="B", color_channels=3, packed_weight=packed)
        return torch.relu(y)

    buffer = torch.randn(2, 5, 6, 3)
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(buffer, 2, 3), f(buffer, 2, 3))


def good_step_args():
    # k = 3, P = 1: a 4x5 image
    return dict(
        buffer=torch.zeros(2, 5, 7, 3), weight=torch.randn(6, 3, 3, 3), bias=torch.randn(6), i=3, j=4,
        mask_type="A", color_channels=3, dilation=1,
    )


BAD_STEP = [
    ("buffer-type", dict(buffer=[0.0]), TypeError, "buffer must be a torch.Tensor"),
    ("buffer-rank", dict(buffer=torch.zeros(2, 5, 7)), ValueError, r"buffer must have shape \(B, H \+ P, W \+ 2P, C_in\)"),
    ("buffer-int", dict(buffer=torch.zeros(2, 5, 7, 3, dtype=torch.int64)), TypeError, "buffer must have a floating-point dtype"),
    ("buffer-too-small", dict(buffer=torch.zeros(2, 5, 2, 3)), ValueError, r"P = dilation \* \(k // 2\) = 1 .* got shape \(2, 5, 2, 3\)"),
    ("buffer-too-small-dilation", dict(dilation=5), ValueError, r"P = dilation \* \(k // 2\) = 5"),
    ("buffer-channels", dict(buffer=torch.zeros(2, 5, 7, 4)), ValueError, r"C_in = buffer.shape\[3\] = 4"),
    ("weight-dtype", dict(weight=torch.randn(6, 3, 3, 3, dtype=torch.float64)), TypeError, "weight has dtype torch.float64"),
    ("weight-even", dict(weight=torch.randn(6, 3, 2, 2)), ValueError, "square kernel of odd size"),
    ("weight-device", dict(weight=torch.randn(6, 3, 3, 3, device="meta")), ValueError, "weight is on meta"),
    ("bias-shape", dict(bias=torch.randn(5)), ValueError, r"bias must have shape \(6,\)"),
    ("mask", dict(mask_type="C"), ValueError, "mask_type must be one of"),
    ("colour", dict(color_channels=2), ValueError, "color_channels=2 must divide"),
    ("dilation", dict(dilation=0), ValueError, "dilation must be >= 1"),
    ("i-range", dict(i=4), ValueError, r"pixel \(i, j\) = \(4, 4\) is outside the 4x5 image"),
    ("j-negative", dict(j=-1), ValueError, r"pixel \(i, j\) = \(3, -1\) is outside"),
    ("i-float", dict(i=1.0), TypeError, "i must be an int"),
    ("j-bool", dict(j=True), TypeError, "j must be an int"),
    ("j-tensor", dict(j=torch.tensor(1)), TypeError, "j must be an int, got Tensor"),
    ("packed-shape", dict(packed_weight=torch.randn(12, 6)), ValueError, r"packed_weight must be .* = \(15, 6\), got \(12, 6\)"),
    ("packed-dtype", dict(packed_weight=torch.randn(15, 6, dtype=torch.float64)), TypeError, "packed_weight has dtype"),
    ("backend", dict(backend="fast"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("change,error,match", [pytest.param(c, e, m, id=i) for i, c, e, m in BAD_STEP])
def test_step_bad_input_raises_before_any_kernel(change, error, match):
    args = good_step_args() | change
    buffer, weight = args.pop("buffer"), args.pop("weight")
    with pytest.raises(error, match=match):
        masked_conv2d_step(buffer, weight, **args)


@pytest.mark.parametrize("change,error,match", [pytest.param(c, e, m, id=i) for i, c, e, m in BAD_STEP])
def test_stepper_bad_input_raises_before_any_kernel(change, error, match):
    """The same errors from a stepper: its arguments when it is made, the pixel at each call."""
    args = good_step_args() | change
    buffer, weight, i, j = args.pop("buffer"), args.pop("weight"), args.pop("i"), args.pop("j")
    with pytest.raises(error, match=match):
        masked_conv2d_stepper(buffer, weight, **args)(i, j)


@pytest.mark.skipif("cpp" not in fast_backends(STEP_OP, "cpu"), reason="needs the extension")
def test_cpp_step_called_directly_checks_its_arguments():
    """torch.ops.fastgen.masked_conv2d_step bypasses the Python checks: it must still refuse
    anything it could read out of bounds, with a ValueError/TypeError."""
    step = torch.ops.fastgen.masked_conv2d_step.default
    buffer, w = torch.zeros(2, 5, 7, 3), torch.randn(6, 3, 3, 3)
    packed = masked_conv2d_step_pack(w, mask_type="A")  # 4 taps
    assert step(buffer, packed, None, 3, 4, 3, "A", 1, 1).shape == (2, 6)
    with pytest.raises(ValueError, match="outside the 4x5 image"):
        step(buffer, packed, None, 4, 0, 3, "A", 1, 1)
    with pytest.raises(ValueError, match="outside the 4x5 image"):
        step(buffer, packed, None, 0, -1, 3, "A", 1, 1)
    with pytest.raises(ValueError, match="packed_weight must be"):
        step(buffer, packed, None, 0, 0, 3, "B", 1, 1)  # mask B keeps 5 taps
    with pytest.raises(ValueError, match="too small"):
        step(buffer, packed, None, 0, 0, 3, "A", 1, 4)  # P = 4: W + 2P = 7 leaves no column
    with pytest.raises(ValueError, match="too small"):
        step(buffer, packed, None, 0, 0, 3, "A", 1, 2**62)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        step(buffer, packed, None, 0, 0, 2, "A", 1, 1)
    with pytest.raises(ValueError, match="mask_type"):
        step(buffer, packed, None, 0, 0, 3, "Z", 1, 1)
    with pytest.raises(ValueError, match="color_channels"):
        step(buffer, packed, None, 0, 0, 3, "A", 2, 1)
    with pytest.raises(ValueError, match="bias"):
        step(buffer, packed, torch.randn(5), 0, 0, 3, "A", 1, 1)
    with pytest.raises(TypeError, match="float32 or float64"):
        step(buffer.double(), packed, None, 0, 0, 3, "A", 1, 1)
    with pytest.raises(ValueError, match="buffer must be"):
        step(buffer[0], packed, None, 0, 0, 3, "A", 1, 1)
