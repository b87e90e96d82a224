"""fastgen.ops.masked_linear: every fast backend against the reference.

Outputs and all gradients (masked weights get exactly zero) for MADE staircase masks,
random, all-zero, all-one and block masks, batch 1, odd sizes, sizes spanning many panels
and tiles of the kernels (8 or 16 lanes on the CPU, 16 for Triton under the interpreter),
batches of several work items, results independent of the thread count, non-contiguous inputs,
float32/float64; masked weights that hold inf/NaN; the Triton tile ranges; opcheck,
gradcheck, gradgradcheck and torch.compile(fullgraph=True); bad inputs.
"""

import pytest
import torch

from fastgen.ops import masked_linear, masked_linear_ref

from ..helpers import DEVICES, assert_same_on_thread_counts, backend_params, fast_backends, tolerances

OP = "masked_linear"


def backend_device_params():
    return [pytest.param(b, d, id=f"{b}-{d}") for d in DEVICES for b in fast_backends(OP, d)]


def made_mask(out_features: int, in_features: int, *, strict: bool) -> torch.Tensor:
    """A MADE mask with sorted degrees (a staircase): input i has degree ``i + 1``, and the
    outputs' degrees cycle through ``1 .. in_features`` (hidden, ``strict=False``: see degrees
    <= own) or ``1 .. in_features`` spread over the outputs (output layer, ``strict=True``)."""
    d_in = torch.arange(in_features) + 1
    d_out = torch.sort(torch.arange(out_features) % max(in_features, 1) + 1).values
    return d_out[:, None] > d_in[None, :] if strict else d_out[:, None] >= d_in[None, :]


def block_mask(out_features: int, in_features: int, block: int, seed: int = 0) -> torch.Tensor:
    """``block x block`` tiles of ones or zeros: in every band (``block`` rows) tile 0 and
    tile 2 are non-zero and tile 1 is zero (a gap), bands 1 and 2 are equal (they can be
    processed as one), band 0's tiles are mixed (every fifth column cleared), the rest random."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = -(-out_features // block), -(-in_features // block)
    blocks = torch.rand(rows, cols, generator=g) < 0.5
    blocks[:, 0] = blocks[:, 2] = True
    blocks[:, 1] = False
    blocks[2] = blocks[1]
    mask = blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)[:out_features, :in_features].clone()
    mask[:block, ::5] = False
    return mask


def make_mask(kind: str, out_features: int, in_features: int, device) -> torch.Tensor:
    if kind == "made":
        mask = made_mask(out_features, in_features, strict=False)
    elif kind == "made-strict":
        mask = made_mask(out_features, in_features, strict=True)
    elif kind == "random":
        mask = torch.rand(out_features, in_features, generator=torch.Generator().manual_seed(3)) < 0.5
    elif kind == "zeros":
        mask = torch.zeros(out_features, in_features, dtype=torch.bool)
    elif kind == "ones":
        mask = torch.ones(out_features, in_features, dtype=torch.bool)
    else:
        mask = block_mask(out_features, in_features, int(kind.removeprefix("blocks")))
    return mask.to(device)


def make_inputs(B, in_features, out_features, *, dtype, device, contiguous=True, seed=0):
    """x, weight, bias (requiring grad); non-contiguous ones are views into larger tensors."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)

    if contiguous:
        x, weight, bias = rand(B, in_features), rand(out_features, in_features), rand(out_features)
    else:
        x = rand(in_features + 3, 2 * B)[1 : in_features + 1, ::2].t()  # column-major, strided
        weight = rand(out_features, in_features + 5)[:, 2 : in_features + 2]
        bias = rand(2 * out_features)[::2]
        assert not (x.is_contiguous() or weight.is_contiguous() or bias.is_contiguous())
    return [t.requires_grad_() for t in (x, weight, bias)]


def assert_matches_reference(backend, x, weight, mask, bias, grad_seed=1):
    tol = tolerances(x.dtype)
    y = masked_linear(x, weight, mask, bias, backend=backend)
    y_ref = masked_linear_ref(x, weight, mask, bias)
    assert y.shape == y_ref.shape and y.dtype == x.dtype and y.device == x.device and y.is_contiguous()
    torch.testing.assert_close(y, y_ref, **tol)
    g = torch.Generator().manual_seed(grad_seed)
    grad = torch.randn(y.shape[1], y.shape[0], generator=g, dtype=torch.float64).to(y).t()  # non-contiguous
    inputs = (x, weight) if bias is None else (x, weight, bias)
    grads = torch.autograd.grad(y, inputs, grad)
    grads_ref = torch.autograd.grad(y_ref, inputs, grad)
    for name, got, want in zip(("x", "weight", "bias"), grads, grads_ref):
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"grad of {name}: {m}")
    assert torch.count_nonzero(grads[1][~mask]) == 0, "a masked weight received gradient"


MASKS = ["made", "made-strict", "random", "zeros", "ones"]


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize(
    "B,in_features,out_features,contiguous",
    [(1, 7, 9, True), (5, 37, 45, True), (3, 20, 33, False)],
    ids=["batch1-7to9", "37to45", "20to33-strided"],
)
@pytest.mark.parametrize("backend,device,dtype", backend_params(OP))
def test_matches_reference(backend, device, dtype, B, in_features, out_features, contiguous, kind):
    x, weight, bias = make_inputs(B, in_features, out_features, dtype=dtype, device=device, contiguous=contiguous)
    mask = make_mask(kind, out_features, in_features, device)
    assert_matches_reference(backend, x, weight, mask, bias)


@pytest.mark.parametrize(
    "kind,B,in_features,out_features",
    [
        ("made", 3, 150, 200),  # many panels, spans of every length
        ("made-strict", 2, 200, 150),
        ("blocks64", 2, 140, 200),  # a zero tile between non-zero ones, equal bands
        ("blocks16", 2, 70, 90),  # Triton's 16-wide tiles under the interpreter
        ("ones", 2, 130, 140),
        ("random", 2, 100, 70),
    ],
)
@pytest.mark.parametrize("backend,device", backend_device_params())
def test_matches_reference_many_tiles(backend, device, kind, B, in_features, out_features):
    x, weight, bias = make_inputs(B, in_features, out_features, dtype=torch.float64, device=device)
    mask = make_mask(kind, out_features, in_features, device)
    assert_matches_reference(backend, x, weight, mask, bias)
    assert_matches_reference(backend, x, weight, mask, None)


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="needs the extension")
@pytest.mark.parametrize("kind", ["made", "blocks64"])
@pytest.mark.parametrize("B", [3, 700])
def test_cpp_items_on_several_threads(kind, B):
    """The CPU kernels share panels and runs of rows (of the batch, or of a panel's span)
    out among threads: the results match the reference and are bit-identical on 1 and 3
    threads (every k loop runs in a fixed order). Batch 700: several items per panel, and a
    gradient too large for the weight gradient to read in place (it packs a copy)."""
    for in_features, out_features in ((150, 530), (530, 150)):
        x, weight, bias = make_inputs(B, in_features, out_features, dtype=torch.float64, device="cpu")
        mask = make_mask(kind, out_features, in_features, "cpu")

        def run():
            assert_matches_reference("cpp", x, weight, mask, bias)
            y = masked_linear(x, weight, mask, bias, backend="cpp")
            return (y, *torch.autograd.grad(y, (x, weight, bias), torch.ones_like(y)))

        assert_same_on_thread_counts(run)


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_masked_weights_are_never_read(backend, device):
    """inf/NaN in masked weights (zero tiles, mixed tiles) reach neither y nor any gradient."""
    x, weight, bias = make_inputs(3, 70, 90, dtype=torch.float64, device=device)
    mask = make_mask("made", 90, 70, device)
    odd_column = (torch.arange(70, device=device) % 2 == 1).expand(90, 70)
    poisoned = weight.detach().masked_fill(~mask, float("nan")).masked_fill(~mask & odd_column, float("inf"))
    poisoned.requires_grad_()
    y = masked_linear(x, poisoned, mask, bias, backend=backend)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, masked_linear_ref(x, weight, mask, bias), **tolerances(torch.float64))
    grad_x, grad_w = torch.autograd.grad(y.sum(), (x, poisoned))
    assert torch.isfinite(grad_x).all() and torch.isfinite(grad_w).all()


def test_triton_tile_ranges():
    """Each band's range runs from its first to its last tile holding a True; an all-False
    band gets an empty range; a staircase leaves the tiles after the step out."""
    ranges_of = pytest.importorskip("fastgen.ops.triton.masked_linear")._tile_ranges
    mask = made_mask(45, 37, strict=False)
    mask[16:32] = False  # band 1 of 16 rows: nothing
    mask[40, 36] = True
    ranges = ranges_of(mask, 16, 8)
    assert ranges.dtype == torch.int32 and ranges.shape == (3, 2)
    expected = []
    for band in mask.split(16):
        tiles = [t for t in range(5) if band[:, 8 * t : 8 * t + 8].any()]
        expected.append([tiles[0], tiles[-1] + 1] if tiles else [5, 5])
    assert ranges.tolist() == expected
    # Rows 0..15 have degrees 1..8 (the 8 lowest twice): inputs 0..7, tile 0 alone; band 2
    # reaches tile 4 through the True at (40, 36).
    assert ranges.tolist() == [[0, 1], [5, 5], [0, 5]]
    assert ranges_of(torch.zeros(5, 0, dtype=torch.bool), 16, 8).tolist() == [[0, 0]]


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_degenerate_shapes(backend, device):
    """Empty batch; no inputs (y = bias); a single unit."""
    x, weight, bias = make_inputs(0, 5, 6, dtype=torch.float64, device=device)
    mask = make_mask("made", 6, 5, device)
    y = masked_linear(x, weight, mask, bias, backend=backend)
    assert y.shape == (0, 6)
    grad_x, grad_w, grad_b = torch.autograd.grad(y.sum(), (x, weight, bias))
    assert grad_x.shape == (0, 5) and torch.count_nonzero(grad_w) == 0 and torch.count_nonzero(grad_b) == 0
    x, weight, bias = make_inputs(2, 0, 3, dtype=torch.float64, device=device)
    y = masked_linear(x, weight, torch.ones(3, 0, dtype=torch.bool, device=device), bias, backend=backend)
    torch.testing.assert_close(y, bias.detach().expand(2, 3))
    x, weight, bias = make_inputs(2, 1, 1, dtype=torch.float64, device=device)
    assert_matches_reference(backend, x, weight, make_mask("ones", 1, 1, device), bias)


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_opcheck(backend, device):
    op_name = {"cpp": "masked_linear", "triton": "masked_linear_triton"}[backend]
    x, weight, bias = make_inputs(3, 20, 18, dtype=torch.float32, device=device)
    mask = make_mask("made", 18, 20, device)
    forward = getattr(torch.ops.fastgen, op_name).default
    backward = getattr(torch.ops.fastgen, op_name + "_backward").default
    torch.library.opcheck(forward, (x, weight, bias, mask))
    torch.library.opcheck(forward, (x, weight, None, mask))
    grad = torch.randn(3, 18, device=device, requires_grad=True)  # double backward too
    for output_mask in ([True, True, True], [False, True, False], [False, False, True]):
        torch.library.opcheck(backward, (grad, x, weight, mask, output_mask))


@pytest.mark.parametrize("kind", ["made-strict", "random"])
@pytest.mark.parametrize("backend,device", backend_device_params())
def test_gradcheck(backend, device, kind):
    x, weight, bias = make_inputs(2, 9, 11, dtype=torch.float64, device=device)
    mask = make_mask(kind, 11, 9, device)
    torch.autograd.gradcheck(
        lambda x, w, b: masked_linear(x, w, mask, b, backend=backend), (x, weight, bias), fast_mode=True
    )


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_gradgradcheck(backend, device):
    """Second derivatives run on the fast ops too: the backward op has its own autograd."""
    x, weight, bias = make_inputs(2, 9, 11, dtype=torch.float64, device=device)
    mask = make_mask("made", 11, 9, device)
    torch.autograd.gradgradcheck(
        lambda x, w, b: masked_linear(x, w, mask, b, backend=backend), (x, weight, bias), fast_mode=True
    )


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    mask1, mask2 = make_mask("made", 24, 10, device), make_mask("made-strict", 10, 24, device)

    def f(x, w1, b1, w2):
        h = torch.relu(masked_linear(x, w1, mask1, b1, backend=backend))
        return masked_linear(h, w2, mask2, backend=backend)

    x, w1, b1 = make_inputs(3, 10, 24, dtype=torch.float32, device=device)
    w2 = torch.randn(10, 24, device=device, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True)
    y, y_eager = compiled(x, w1, b1, w2), f(x, w1, b1, w2)
    torch.testing.assert_close(y, y_eager)
    grads = torch.autograd.grad(y.square().sum(), (x, w1, b1, w2))
    grads_eager = torch.autograd.grad(y_eager.square().sum(), (x, w1, b1, w2))
    for got, want in zip(grads, grads_eager):
        torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------- bad input


def good_args():
    return dict(
        x=torch.randn(2, 3), weight=torch.randn(4, 3), mask=torch.ones(4, 3, dtype=torch.bool), bias=torch.randn(4)
    )


BAD = [
    ("x", dict(x=[[1.0]]), TypeError, "x must be a torch.Tensor"),
    ("x-rank", dict(x=torch.randn(2, 1, 3)), ValueError, r"x must have shape \(B, in_features\)"),
    ("x-int", dict(x=torch.ones(2, 3, dtype=torch.int64)), TypeError, "x must have a floating-point dtype"),
    ("weight-rank", dict(weight=torch.randn(12)), ValueError, r"weight must have shape \(out_features, in_features\)"),
    ("weight-columns", dict(weight=torch.randn(4, 5)), ValueError, "weight must have x's in_features 3 columns"),
    ("weight-dtype", dict(weight=torch.randn(4, 3, dtype=torch.float64)), TypeError, "weight has dtype torch.float64"),
    ("weight-device", dict(weight=torch.randn(4, 3, device="meta")), ValueError, "weight is on meta"),
    ("mask", dict(mask=None), TypeError, "mask must be a torch.Tensor"),
    ("mask-float", dict(mask=torch.ones(4, 3)), TypeError, "mask must be a bool tensor, got torch.float32"),
    ("mask-shape", dict(mask=torch.ones(3, 4, dtype=torch.bool)), ValueError, r"mask must have weight's shape \(4, 3\)"),
    ("mask-device", dict(mask=torch.ones(4, 3, dtype=torch.bool, device="meta")), ValueError, "mask is on meta"),
    ("bias-shape", dict(bias=torch.randn(5)), ValueError, r"bias must have shape \(4,\)"),
    ("bias-rank", dict(bias=torch.randn(4, 1)), ValueError, r"bias must have shape \(out_features\)"),
    ("bias-dtype", dict(bias=torch.randn(4, dtype=torch.float64)), TypeError, "bias has dtype"),
    ("backend", dict(backend="fast"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("change,error,match", [pytest.param(c, e, m, id=i) for i, c, e, m in BAD])
def test_bad_input_raises_before_any_kernel(change, error, match):
    args = good_args() | change
    with pytest.raises(error, match=match):
        masked_linear(args.pop("x"), args.pop("weight"), args.pop("mask"), **args)


@pytest.mark.skipif("cpp" not in fast_backends(OP, "cpu"), reason="needs the extension")
def test_cpp_op_called_directly_checks_its_arguments():
    """torch.ops.fastgen.masked_linear bypasses the Python checks: it must still refuse
    anything it could read out of bounds, with a ValueError/TypeError."""
    x, w, m = torch.randn(2, 3), torch.randn(4, 3), torch.ones(4, 3, dtype=torch.bool)
    op, backward = torch.ops.fastgen.masked_linear.default, torch.ops.fastgen.masked_linear_backward.default
    with pytest.raises(ValueError, match="in_features = 3"):
        op(x, torch.randn(4, 5), None, torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must have weight's shape"):
        op(x, w, None, m[:, :2])
    with pytest.raises(TypeError, match="mask must be bool"):
        op(x, w, None, m.float())
    with pytest.raises(ValueError, match="bias"):
        op(x, w, torch.randn(5), m)
    with pytest.raises(TypeError, match="float32 or float64"):
        op(x.half(), w.half(), None, m)
    with pytest.raises(ValueError, match="grad_out"):
        backward(torch.randn(2, 5), x, w, m, [True, True, True])
