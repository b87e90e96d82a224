"""fastgen.ops.gated_pixelcnn_layer: every fast backend against the reference.

Outputs and all 13 gradients over a grid (kernel 1/3/5/7, first/later layer, colour 1/3,
with/without skip and class conditioning, odd sizes, batch 1, non-contiguous inputs,
float32/float64); causality through the Jacobian (raster order and colour groups); the
blind spot: absent from a stack of gated layers, present in a stack of masked convs;
opcheck, gradcheck and torch.compile(fullgraph=True); bad inputs.
"""

import itertools

import pytest
import torch

from fastgen.nn import GatedPixelCNNLayer, MaskedConv2d
from fastgen.ops import gated_pixelcnn_layer, gated_pixelcnn_layer_ref, gated_pixelcnn_masks

from ..helpers import DEVICES, fast_backends, tolerances

OP = "gated_pixelcnn_layer"
NAMES = ("v", "h", "v_weight", "v_bias", "h_weight", "h_bias", "link_weight", "res_weight", "res_bias",
         "skip_weight", "skip_bias", "v_cond", "h_cond")


def backend_device_dtype_params():
    params = []
    for device in DEVICES:
        for dtype in (torch.float32, torch.float64):
            params += [pytest.param(b, device, dtype, id=f"{b}-{device}-{str(dtype)[6:]}") for b in fast_backends(OP, device, dtype)]
    return params


def backend_device_params():
    return [pytest.param(b, d, id=f"{b}-{d}") for d in DEVICES for b in fast_backends(OP, d)]


def make_inputs(B, c_in, p, H, W, k, *, skip=0, cond=False, dtype=torch.float64, device="cpu", contiguous=True, seed=0):
    """The op's 13 tensor arguments (None where absent), requiring grad; non-contiguous
    ones are views into larger tensors."""
    g = torch.Generator().manual_seed(seed)
    c = k // 2

    def rand(*shape, scale=1.0):
        if contiguous:
            t = (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device)
        else:
            t = torch.randn(*shape[:-1], 2 * shape[-1], generator=g, dtype=torch.float64)
            t = (scale * t).to(dtype=dtype, device=device)[..., ::2]
        return t.requires_grad_()

    tensors = [
        rand(B, c_in, H, W), rand(B, c_in, H, W), rand(2 * p, c_in, c + 1, k, scale=0.5), rand(2 * p),
        rand(2 * p, c_in, 1, c + 1, scale=0.5), rand(2 * p), rand(2 * p, 2 * p, scale=0.3), rand(p, p), rand(p),
        rand(skip, p) if skip else None, rand(skip) if skip else None,
        rand(B, 2 * p) if cond else None, rand(B, 2 * p) if cond else None,
    ]
    if not contiguous:
        assert not tensors[0].is_contiguous()
    return tensors


def call(fn, tensors, first, colour, **kw):
    *args, v_cond, h_cond = tensors
    return fn(*args, first_layer=first, color_channels=colour, v_cond=v_cond, h_cond=h_cond, **kw)


def assert_matches_reference(backend, tensors, first, colour):
    tol = tolerances(tensors[0].dtype)
    out = call(gated_pixelcnn_layer, tensors, first, colour, backend=backend)
    ref = call(gated_pixelcnn_layer_ref, tensors, first, colour)
    assert (out[2] is None) == (ref[2] is None)
    outs = [t for t in out if t is not None]
    refs = [t for t in ref if t is not None]
    for got, want in zip(outs, refs):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, **tol)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t) for t in refs]
    leaves = [(n, t) for n, t in zip(NAMES, tensors) if t is not None]
    got = torch.autograd.grad(outs, [t for _, t in leaves], grads)
    want = torch.autograd.grad(refs, [t for _, t in leaves], grads)
    for (name, _), a, b in zip(leaves, got, want):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"grad of {name}: {m}")


GRID = [
    pytest.param(k, first, colour, shape, extras, id=f"k{k}-{'first' if first else 'later'}-col{colour}-{'x'.join(map(str, shape))}-{extras}")
    for k, first, colour in itertools.product((1, 3, 5, 7), (True, False), (1, 3))
    for shape, extras in [((1, 3, 6, 5, 7), "skip-cond"), ((2, 3, 3, 6, 4), "strided")]
]


@pytest.mark.parametrize("k,first,colour,shape,extras", GRID)
@pytest.mark.parametrize("backend,device,dtype", backend_device_dtype_params())
def test_matches_reference(backend, device, dtype, k, first, colour, shape, extras):
    if backend == "triton" and device == "cpu" and k == 5:
        pytest.skip("interpreter time: kernels 1, 3 and 7 cover the Triton path's code")
    B, c_in, p, H, W = shape
    c_in = c_in if first else p
    tensors = make_inputs(B, c_in, p, H, W, k, skip=6 if extras == "skip-cond" else 0, cond=extras == "skip-cond",
                          dtype=dtype, device=device, contiguous=extras != "strided")
    assert_matches_reference(backend, tensors, first, colour)


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_degenerate_shapes(backend, device):
    """One row (the first layer's vertical stack sees nothing), one column, 1x1."""
    for H, W in ((1, 5), (4, 1), (1, 1)):
        for first in (True, False):
            tensors = make_inputs(1, 3, 3, H, W, 5, skip=3, cond=True, device=device)
            assert_matches_reference(backend, tensors, first, 3)


@pytest.mark.parametrize("k,first", [(3, False), (5, True), (7, False), (7, True)])
@pytest.mark.parametrize("backend,device,dtype", backend_device_dtype_params())
def test_large_image_wide_channels(backend, device, dtype, k, first):
    """Sizes the grid does not reach: several blocks of tile rows per image (the last one
    partial) on the CPU's Winograd path, more channels than the SIMD lanes (and not a
    multiple of them), an odd height with an odd width and batch 3. The weights are scaled
    by their fan-in, as in a network, so that float32's rounding stays within its tolerance."""
    if backend == "triton" and device == "cpu":
        pytest.skip("interpreter time: the grid covers the Triton path's code")
    p = 18
    tensors = make_inputs(3, 5 if first else p, p, 37, 9, k, skip=4, cond=True, dtype=dtype, device=device)
    for i, scale in ((2, 0.1), (4, 0.3), (6, 0.5), (7, 0.3), (9, 0.3)):
        tensors[i] = (tensors[i].detach() * scale).requires_grad_()
    assert_matches_reference(backend, tensors, first, 1)


# ---------------------------------------------------------------------------- causality


def _dependence(f, x):
    """|d out / d x| summed over batch: (C_out, H, W, C_in, H, W) booleans."""
    jac = torch.autograd.functional.jacobian(f, x)  # (1, C_out, H, W, 1, C_in, H, W)
    return jac[0, :, :, :, 0].abs() > 0


def _allowed(c_out, c_in, H, W, colour, *, strictly_above):
    """allowed[o, i, j, ci, i2, j2]: earlier in raster order (or strictly above), or the
    same pixel and an earlier colour group."""
    idx = torch.arange(H * W).view(H, W)
    rows = torch.arange(H)
    og = torch.arange(c_out) // (c_out // colour)
    ig = torch.arange(c_in) // (c_in // colour)
    if strictly_above:
        pix = (rows[:, None, None, None] > rows[None, None, :, None]).expand(H, W, H, W)
        return pix[None, :, :, None].expand(c_out, H, W, c_in, H, W)
    before = idx[:, :, None, None] > idx[None, None, :, :]
    same = idx[:, :, None, None] == idx[None, None, :, :]
    colour_ok = og[:, None] > ig[None, :]
    return before[None, :, :, None] | (same[None, :, :, None] & colour_ok[:, None, None, :, None, None])


# The full Jacobian takes hundreds of backward passes: too slow for the Triton interpreter.
# The Triton path equals the reference over the grid above, so the reference's causality
# covers it.
JACOBIAN_BACKENDS = ["ref"] + [b for b in fast_backends(OP, "cpu", torch.float64) if b != "triton"]


@pytest.mark.parametrize("kernel", [3, 7])
@pytest.mark.parametrize("colour", [1, 3])
@pytest.mark.parametrize("backend", JACOBIAN_BACKENDS)
def test_causality_jacobian(backend, colour, kernel):
    """A first layer and then a later layer on an image: v_out depends only on rows above,
    h_out only on earlier pixels and, at the pixel itself, on earlier colour groups; and
    on all of the pixels just before (so the test cannot pass vacuously). Exactly: kernel 7
    also checks that the CPU's Winograd tiles leave no rounding-level trace of later rows."""
    torch.manual_seed(0)
    H, W, c_img, p = 4, 5, 3, 3
    first = GatedPixelCNNLayer(
        p, kernel, first_layer=True, in_channels=c_img, color_channels=colour, backend=backend
    ).double()
    later = GatedPixelCNNLayer(p, kernel, color_channels=colour, backend=backend).double()
    x = torch.randn(1, c_img, H, W, dtype=torch.float64)
    for layers in ([first], [first, later]):
        def run(x, which):
            vh = (x, x)
            for layer in layers:
                vh = layer(vh)
            return vh[which]

        dep_v = _dependence(lambda x: run(x, 0), x)
        dep_h = _dependence(lambda x: run(x, 1), x)
        assert not (dep_v & ~_allowed(p, c_img, H, W, colour, strictly_above=True)).any()
        assert not (dep_h & ~_allowed(p, c_img, H, W, colour, strictly_above=False)).any()
        # h_out at (2, 3) sees the pixel to its left and the one above-right.
        assert dep_h[:, 2, 3, :, 2, 2].any() and dep_h[:, 2, 3, :, 1, 4].any()
        assert dep_v[:, 2, 3, :, 1, 4].any()
        if colour == 3:  # the last colour group sees the first at its own pixel
            assert dep_h[-1, 2, 3, 0, 2, 3]


@pytest.mark.parametrize("kernel,first", [(5, True), (7, False), (7, True)])
@pytest.mark.parametrize("backend", JACOBIAN_BACKENDS)
def test_vertical_stack_reads_exactly_its_kernel(backend, kernel, first):
    """v_out at (i, j) depends on exactly the rows i-c .. i (first layer: i-c-1 .. i-1) and
    the columns j-c .. j+c of v: no trace, even by rounding, of an input outside the kernel
    (the CPU's Winograd tiles split kernel columns in pieces, and pair rows and columns)."""
    torch.manual_seed(0)
    H, W, p, c = 7, 11, 2, kernel // 2
    layer = GatedPixelCNNLayer(p, kernel, first_layer=first, in_channels=p, backend=backend).double()
    v = torch.randn(1, p, H, W, dtype=torch.float64)
    h = torch.randn(1, p, H, W, dtype=torch.float64)
    dep = _dependence(lambda v: layer((v, h))[0], v).any(3)  # (p, H, W, H, W)
    i, j, i2, j2 = torch.meshgrid(*(torch.arange(n) for n in (H, W, H, W)), indexing="ij")
    top = i - c - (1 if first else 0)
    expected = (i2 >= top) & (i2 <= top + c) & ((j2 - j).abs() <= c)
    assert torch.equal(dep, expected.expand_as(dep))


def _input_gradient(stack, x, i, j):
    x = x.clone().requires_grad_()
    out = stack(x)
    (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), x)
    return grad[0].abs().sum(0)  # (H, W)


@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_no_blind_spot_unlike_masked_convs(backend):
    """Three gated layers (k=3): h_out at (i, j) depends on every pixel before it in its
    receptive field, rows i-4 .. i-1 (columns j-3 .. j+3) and the row's j-3 .. j-1,
    including those above and to the right. Three masked convs (A, B, B; k=3) have the
    known blind spot: pixels above-right of (i, j) in their receptive field (rows i-3 ..
    i-1, columns up to j+3) that it does not see. Both are asserted."""
    torch.manual_seed(0)
    H, W, i, j, L, c = 10, 11, 6, 5, 3, 1
    x = torch.randn(1, 1, H, W, dtype=torch.float64)
    layers = [GatedPixelCNNLayer(4, 3, first_layer=True, in_channels=1, backend=backend)]
    layers += [GatedPixelCNNLayer(4, 3, backend=backend) for _ in range(L - 1)]
    layers = [layer.double() for layer in layers]

    def gated(x):
        vh = (x, x)
        for layer in layers:
            vh = layer(vh)
        return vh[1]

    seen = _input_gradient(gated, x, i, j) > 0
    field = torch.zeros(H, W, dtype=torch.bool)
    field[i - L * c - 1 : i, j - L * c : j + L * c + 1] = True
    field[i, j - L * c : j] = True
    assert seen[field].all(), f"gated stack misses pixels of its receptive field:\n{(field & ~seen).int()}"
    later = torch.ones(H, W, dtype=torch.bool).flatten()
    later[: i * W + j] = False
    assert not seen.flatten()[later].any()

    masked = torch.nn.Sequential(
        MaskedConv2d(1, 4, 3, mask_type="A"), torch.nn.Tanh(), MaskedConv2d(4, 4, 3, mask_type="B"), torch.nn.Tanh(),
        MaskedConv2d(4, 4, 3, mask_type="B"),
    ).double()
    seen_masked = _input_gradient(masked, x, i, j) > 0
    above_right = torch.zeros(H, W, dtype=torch.bool)
    above_right[i - L : i, j + 1 : j + L + 1] = True
    assert seen_masked[i - 1, j + 1] and seen_masked[i - L, j]  # it does see some of it
    assert not seen_masked[above_right].all(), "masked-conv stack unexpectedly has no blind spot"
    assert not seen_masked[i - 1, j + L] and not seen_masked[i - 2, j + L]  # the blind spot


# -------------------------------------------------------------------- torch.library etc.


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_opcheck(backend, device):
    op_name = {"cpp": "gated_pixelcnn_layer", "triton": "gated_pixelcnn_layer_triton"}[backend]
    forward = getattr(torch.ops.fastgen, op_name).default
    backward = getattr(torch.ops.fastgen, op_name + "_backward").default
    for first, colour, skip, cond in ((True, 3, 3, True), (False, 1, 0, False)):
        t = make_inputs(2, 3, 3, 4, 5, 3, skip=skip, cond=cond, dtype=torch.float32, device=device)
        torch.library.opcheck(forward, (*t, first, colour))
        out = forward(*t, first, colour)
        grads = [torch.randn(2, 3, 4, 5, device=device) for _ in range(2)]
        gs = torch.randn(2, skip, 4, 5, device=device) if skip else None
        for mask in ([True] * 13, [False, True] + [False] * 11):
            mask = [m and x is not None for m, x in zip(mask, t)]
            args = (*grads, gs, t[0], t[1], out[3].detach(), out[4].detach(), t[2], t[4], t[6], t[7], t[9], first, colour, mask)
            torch.library.opcheck(backward, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("first,colour", [(True, 3), (False, 1)])
@pytest.mark.parametrize("backend,device", backend_device_params())
def test_gradcheck(backend, device, first, colour):
    t = make_inputs(1, 3, 3, 3, 4, 3, skip=3, cond=True, device=device)
    present = [x for x in t if x is not None]

    def f(*xs):
        out = call(gated_pixelcnn_layer, list(xs), first, colour, backend=backend)
        return tuple(o for o in out if o is not None)

    torch.autograd.gradcheck(f, present, fast_mode=True)


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    t = make_inputs(2, 3, 3, 4, 5, 3, skip=3, cond=True, dtype=torch.float32, device=device)

    def f(*xs):
        v, h, s = call(gated_pixelcnn_layer, list(xs), True, 3, backend=backend)
        return v.sum() + (h * h).sum() + s.sum()

    compiled = torch.compile(f, fullgraph=True)
    y, y_eager = compiled(*t), f(*t)
    torch.testing.assert_close(y, y_eager)
    grads = torch.autograd.grad(y, t[:11])
    grads_eager = torch.autograd.grad(y_eager, t[:11])
    for got, want in zip(grads, grads_eager):
        torch.testing.assert_close(got, want)


def test_double_backward_is_not_supported_on_fast_paths():
    backends = fast_backends(OP, "cpu", torch.float64)
    if not backends:
        pytest.skip("no fast backend")
    t = make_inputs(1, 3, 3, 3, 4, 3)
    v, h, _ = call(gated_pixelcnn_layer, t, False, 1, backend=backends[0])
    (g,) = torch.autograd.grad(h.sum(), t[2], create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(g.sum(), t[2])


# ---------------------------------------------------------------------------- bad input


def good_args():
    t = make_inputs(2, 3, 3, 4, 5, 3, skip=3, cond=True, dtype=torch.float32)
    kw = dict(zip(NAMES, [x.detach() for x in t]))
    kw.update(first_layer=True, color_channels=3)
    return kw


BAD = [
    ("v", torch.randn(2, 3, 4), ValueError, "v must have shape"),
    ("h", torch.randn(2, 3, 4, 6), ValueError, "h must have v's shape"),
    ("v", torch.randn(2, 3, 4, 5, dtype=torch.float64), TypeError, "dtype"),
    ("v", torch.zeros(2, 3, 4, 5, dtype=torch.int64), TypeError, "floating"),
    ("v_weight", torch.randn(6, 3, 2, 4), ValueError, "v_weight must be"),
    ("v_weight", torch.randn(6, 3, 3, 3), ValueError, "v_weight must be"),
    ("v_weight", torch.randn(5, 3, 2, 3), ValueError, "v_weight must be"),
    ("h_weight", torch.randn(6, 3, 1, 3), ValueError, "h_weight must have shape"),
    ("v_bias", torch.randn(5), ValueError, "v_bias"),
    ("h_bias", torch.randn(6, 1), ValueError, "h_bias"),
    ("link_weight", torch.randn(6, 3), ValueError, "link_weight"),
    ("res_weight", torch.randn(3, 6), ValueError, "res_weight"),
    ("res_bias", torch.randn(4), ValueError, "res_bias"),
    ("skip_weight", torch.randn(3, 4), ValueError, "skip_weight"),
    ("skip_bias", None, ValueError, "skip_weight and skip_bias"),
    ("skip_bias", torch.randn(2), ValueError, "skip_bias"),
    ("v_cond", torch.randn(3, 6), ValueError, "v_cond"),
    ("h_cond", torch.randn(2, 6, 1), ValueError, "h_cond"),
    ("color_channels", 2, ValueError, "color_channels"),
    ("color_channels", 0, ValueError, "color_channels"),
    ("color_channels", 1.0, TypeError, "color_channels"),
    ("first_layer", 1, TypeError, "first_layer"),
    ("v", "image", TypeError, "v must be a torch.Tensor"),
]


@pytest.mark.parametrize("name,value,error,match", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_raises(name, value, error, match):
    kw = good_args()
    kw[name] = value
    v, h = kw.pop("v"), kw.pop("h")
    args = [kw.pop(n) for n in NAMES[2:11]]
    with pytest.raises(error, match=match):
        gated_pixelcnn_layer(v, h, *args, **kw, backend="ref")


@pytest.mark.parametrize("backend", ["ref"] + fast_backends(OP, "cpu", torch.float64))
def test_empty_image_raises_and_empty_batch_works(backend):
    """H = 0 or W = 0 (the cpp kernels divided by zero on it) is refused on every backend
    before any kernel, forward or backward, the rule of masked_conv2d too; B = 0 gives
    empty outputs and gradients."""
    for H, W in ((0, 5), (4, 0), (0, 0)):
        for first in (True, False):
            t = make_inputs(1, 3, 3, H, W, 3, skip=3, cond=True)
            with pytest.raises(ValueError, match=r"gated_pixelcnn_layer: v must have H and W >= 1"):
                call(gated_pixelcnn_layer, t, first, 1, backend=backend)
    layer = GatedPixelCNNLayer(4, 3, backend=backend)
    x = torch.zeros(1, 4, 0, 5, requires_grad=True)
    with pytest.raises(ValueError, match=r"v must have H and W >= 1, got shape \(1, 4, 0, 5\)"):
        layer((x, x))
    t = make_inputs(0, 3, 3, 4, 5, 3, skip=3, cond=True)
    out = call(gated_pixelcnn_layer, t, False, 3, backend=backend)
    assert [o.shape for o in out] == [(0, 3, 4, 5)] * 3
    grads = torch.autograd.grad(sum(o.sum() for o in out), t[:2] + t[-2:])
    assert [g.shape for g in grads] == [(0, 3, 4, 5)] * 2 + [(0, 6)] * 2


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((-1, 3, 0), ValueError, "channels must be >= 1, got -1"),
        ((3, 0, 0), ValueError, "in_channels must be >= 1, got 0"),
        ((3, 3, -3), ValueError, "skip_channels must be >= 0, got -3"),
        ((4, 3, 0), ValueError, "color_channels=3 must divide channels p=4"),
        ((3.0, 3, 0), TypeError, "channels must be an int"),
    ],
)
def test_masks_bad_channels_raise(args, error, match):
    with pytest.raises(error, match=match):
        gated_pixelcnn_masks(*args, first_layer=True, color_channels=3)
    centre, res, skip = gated_pixelcnn_masks(3, 3, 3, first_layer=True, color_channels=3)
    assert torch.equal(centre, torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0]]).repeat(2, 1))
    assert torch.equal(res, torch.ones(3, 3).tril()) and torch.equal(skip, torch.ones(3, 3).tril())


def test_later_layer_needs_p_input_channels():
    t = [x.detach() if x is not None else None for x in make_inputs(1, 3, 6, 4, 5, 3)]
    with pytest.raises(ValueError, match="C_in = p"):
        call(gated_pixelcnn_layer, t, False, 1, backend="ref")


def test_cpp_op_called_directly_checks_its_arguments():
    if "cpp" not in fast_backends(OP, "cpu"):
        pytest.skip("no cpp backend")
    t = [x.detach() if x is not None else None for x in make_inputs(2, 3, 3, 4, 5, 3, dtype=torch.float32)]
    op = torch.ops.fastgen.gated_pixelcnn_layer.default
    with pytest.raises(ValueError, match="h_weight"):
        op(*t[:4], torch.randn(6, 3, 1, 3), *t[5:], True, 1)
    with pytest.raises(ValueError, match="color_channels"):
        op(*t, True, 2)
    t6 = [x.detach() if x is not None else None for x in make_inputs(1, 3, 6, 4, 5, 3, dtype=torch.float32)]
    with pytest.raises(ValueError, match="C_in = p"):
        op(*t6, False, 1)
    with pytest.raises(TypeError, match="dtype"):
        op(*t[:3], t[3].double(), *t[4:], True, 1)
    for H, W in ((0, 5), (4, 0)):  # the Winograd conv divided by zero on it
        empty = [x.detach() if x is not None else None for x in make_inputs(1, 3, 3, H, W, 3, dtype=torch.float32)]
        with pytest.raises(ValueError, match=r"v must have H >= 1 and W >= 1"):
            op(*empty, True, 1)
