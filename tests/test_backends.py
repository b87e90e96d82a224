"""Backend selection, the extension loader and ``python -m fastgen.info``."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import fastgen
from fastgen.backends import BackendUnavailableError, OpBackends, Support

from .helpers import DEVICES, fast_backends, run_on_isa, run_python


def test_the_suite_exercises_every_fast_backend():
    """CI must run the cpp and triton kernels, not skip them: both must be available
    (Triton on the GPU when there is one, else under the interpreter)."""
    assert fastgen._ext.ERROR is None, fastgen._ext.ERROR
    assert "cpp" in fast_backends("masked_conv2d", "cpu")
    assert "triton" in fast_backends("masked_conv2d", DEVICES[-1])


def test_build_info_matches_running_torch():
    info = fastgen._ext.BUILD_INFO
    assert info["torch"] == torch.__version__
    assert "-O3" in info["cxx_flags"] and "-fopenmp" in info["cxx_flags"]
    assert fastgen._ext.cpu_isa().split()[0] in ("avx512", "avx2", "base")


# A toy op with known support, independent of what this machine has.
TOY = OpBackends(
    "toy",
    {
        "ref": Support({"*": (torch.float32, torch.float64)}),
        "cpp": Support({"cpu": (torch.float32,)}),
        "triton": Support({}, unavailable="triton is not installed"),
    },
)


def test_auto_picks_the_first_backend_that_can_run():
    x32, x64 = torch.zeros(1), torch.zeros(1, dtype=torch.float64)
    assert TOY.select(None, x32) == "cpp"
    assert TOY.select(None, x64) == "ref"  # cpp has no float64: skipped silently
    assert TOY.select("auto", x32) == "cpp"


def test_auto_runs_the_reference_on_calls_the_op_judges_small():
    x = torch.zeros(1)
    assert TOY.select(None, x, small=True) == "ref"
    assert TOY.select("auto", x, small=True) == "ref"
    assert TOY.select("cpp", x, small=True) == "cpp"  # an explicit request is kept
    with fastgen.use_backend("cpp"):
        assert TOY.select(None, x, small=True) == "cpp"


def test_overrides_argument_then_context_then_default():
    x = torch.zeros(1)
    with fastgen.use_backend("ref"):
        assert TOY.select(None, x) == "ref"
        assert TOY.select("cpp", x) == "cpp"  # the argument wins
        with fastgen.use_backend("auto"):
            assert TOY.select(None, x) == "cpp"  # innermost context wins
        assert TOY.select(None, x) == "ref"
    assert TOY.select(None, x) == "cpp"


def test_explicit_choice_that_cannot_run_lists_every_reason():
    with pytest.raises(BackendUnavailableError) as info:
        TOY.select("cpp", torch.zeros(1, dtype=torch.float64))
    message = str(info.value)
    assert "toy: backend='cpp' cannot run on cpu float64" in message
    assert "cpp: does not support float64 on cpu (supports float32)" in message
    assert "triton: triton is not installed" in message
    assert "ref: ok" in message
    assert "cuda: not implemented for this op" in message
    with pytest.raises(BackendUnavailableError, match="use_backend='triton'"):
        with fastgen.use_backend("triton"):
            TOY.select(None, torch.zeros(1))


def test_unknown_backend_names_are_value_errors():
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'ref', 'cpp', 'triton', 'cuda', got 'fast'"):
        TOY.select("fast", torch.zeros(1))
    with pytest.raises(ValueError, match="use_backend: name must be one of"):
        with fastgen.use_backend("gpu"):
            pass


def test_real_op_explicit_unavailable_backend():
    x, w = torch.randn(1, 1, 3, 3, dtype=torch.float16), torch.randn(2, 1, 3, 3, dtype=torch.float16)
    with pytest.raises(BackendUnavailableError, match="cpp: does not support float16 on cpu"):
        fastgen.ops.masked_conv2d(x, w, mask_type="A", backend="cpp")
    with pytest.raises(BackendUnavailableError, match="cuda: not implemented for this op"):
        fastgen.ops.masked_conv2d(x.float(), w.float(), mask_type="A", backend="cuda")
    # auto falls back to the reference for what no fast path supports
    y = fastgen.ops.masked_conv2d(x, w, mask_type="A")
    assert y.dtype == torch.float16


def test_environment_variable_selects_and_is_checked():
    code = (
        "import torch, fastgen\n"
        "from fastgen.ops import masked_conv2d\n"
        "x, w = torch.randn(1, 1, 4, 4), torch.randn(2, 1, 3, 3)\n"
        "print(fastgen.backends.current())\n"
        "masked_conv2d(x, w, mask_type='B')\n"
    )
    out = run_python(code, FASTGEN_BACKEND="ref")
    assert out.returncode == 0, out.stderr
    assert "('ref', 'FASTGEN_BACKEND')" in out.stdout
    out = run_python(code, FASTGEN_BACKEND="gpu")
    assert out.returncode != 0 and "ValueError: FASTGEN_BACKEND must be one of" in out.stderr


def test_import_without_the_extension_falls_back_to_reference():
    code = (
        "import torch, fastgen\n"
        "from fastgen.ops import masked_conv2d, masked_conv2d_ref\n"
        "x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3)\n"
        "assert torch.equal(masked_conv2d(x, w, mask_type='B'), masked_conv2d_ref(x, w, mask_type='B'))\n"
        "try:\n"
        "    masked_conv2d(x, w, mask_type='B', backend='cpp')\n"
        "except fastgen.BackendUnavailableError as e:\n"
        "    print(e)\n"
    )
    out = run_python(code, FASTGEN_DISABLE_EXTENSION="1")
    assert out.returncode == 0, out.stderr
    assert "cpp: disabled by FASTGEN_DISABLE_EXTENSION=1" in out.stdout


def test_extension_built_for_another_torch_is_not_loaded(tmp_path):
    """The build info is checked before the library is loaded: a stale build is refused."""
    spec = importlib.util.find_spec("fastgen._C")
    package = tmp_path / "fastgen"
    package.mkdir()
    source = os.path.dirname(fastgen.__file__)
    for name in os.listdir(source):
        if name.endswith(".py") or name in ("ops", "nn"):
            os.symlink(os.path.join(source, name), package / name)
    os.symlink(spec.origin, package / os.path.basename(spec.origin))
    info = dict(fastgen._ext.BUILD_INFO, torch="1.0.0")
    (package / "_build_info.json").write_text(json.dumps(info))
    out = run_python("import fastgen; print(fastgen._ext.ERROR)", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"built against torch 1.0.0 but torch {torch.__version__} is running" in out.stdout


def test_info_reports_every_op_and_backend():
    out = subprocess.run(
        [sys.executable, "-m", "fastgen.info"], capture_output=True, text=True, timeout=300, env=os.environ
    )
    assert out.returncode == 0, out.stderr
    assert f"torch {torch.__version__}" in out.stdout
    assert "extension fastgen._C: loaded; CPU micro-kernels:" in out.stdout
    lines = {tuple(line.split()[:2]): line for line in out.stdout.splitlines() if line.startswith("masked_conv2d")}
    assert "ok: cpu (float32, float64)" in lines["masked_conv2d", "cpp"]
    assert "cpu (float32, float64)" in lines["masked_conv2d", "triton"]
    assert "ok: any device" in lines["masked_conv2d", "ref"]
    assert "not implemented" in lines["masked_conv2d", "cuda"]


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_cpu_instruction_set_matches_reference(isa):
    """Each compiled copy of the CPU micro-kernels (the tap GEMM under masked_conv2d and
    masked_linear, whose panels are as wide as its lanes, and the two-tap Winograd kernel
    under causal_conv1d with K = 2), forced by FASTGEN_CPU_ISA."""
    code = (
        "from fastgen.ops import causal_conv1d, causal_conv1d_ref, masked_conv2d, masked_conv2d_ref\n"
        "for dtype, (c_in, c_out) in [(torch.float32, (6, 39)), (torch.float64, (6, 39)), (torch.float32, (39, 6))]:\n"
        "    x = torch.randn(2, c_in, 9, 20, dtype=dtype, requires_grad=True)\n"
        "    w = torch.randn(c_out, c_in, 5, 5, dtype=dtype, requires_grad=True)\n"
        "    for kw in (dict(mask_type='A', color_channels=3), dict(mask_type='B')):\n"
        "        y, r = masked_conv2d(x, w, backend='cpp', **kw), masked_conv2d_ref(x, w, **kw)\n"
        "        g = torch.randn_like(y)\n"
        "        for a, b in zip((y,) + torch.autograd.grad(y, (x, w), g), (r,) + torch.autograd.grad(r, (x, w), g)):\n"
        "            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)\n"
        "for dtype in (torch.float32, torch.float64):\n"
        "    x = torch.randn(2, 5, 150, dtype=dtype, requires_grad=True)\n"
        "    w = torch.randn(7, 5, 2, dtype=dtype, requires_grad=True)\n"
        "    y, r = causal_conv1d(x, w, dilation=40, backend='cpp'), causal_conv1d_ref(x, w, dilation=40)\n"
        "    g = torch.randn_like(y)\n"
        "    for a, b in zip((y,) + torch.autograd.grad(y, (x, w), g), (r,) + torch.autograd.grad(r, (x, w), g)):\n"
        "        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)\n"
        "from fastgen.ops import masked_linear, masked_linear_ref\n"
        "for dtype in (torch.float32, torch.float64):\n"
        "    x = torch.randn(13, 45, dtype=dtype, requires_grad=True)\n"
        "    w = torch.randn(70, 45, dtype=dtype, requires_grad=True)\n"
        "    mask = torch.rand(70, 45) < torch.linspace(0, 1, 45)  # ragged, denser to the right\n"
        "    y, r = masked_linear(x, w, mask, backend='cpp'), masked_linear_ref(x, w, mask)\n"
        "    g = torch.randn_like(y)\n"
        "    for a, b in zip((y,) + torch.autograd.grad(y, (x, w), g), (r,) + torch.autograd.grad(r, (x, w), g)):\n"
        "        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)\n"
    )
    run_on_isa(isa, code)


def _flow_op_calls():
    """(op name, a call of it on float64 leaves, the leaves, the ops that may name themselves in
    the error: a Triton path composed of other fastgen kernels raises the first one's) for the
    ops without a fast double backward."""
    from fastgen.ops import (
        actnorm,
        affine_coupling,
        affine_coupling_mlp,
        logit_transform,
        masked_affine_autoregressive,
        mixture_cdf,
        mixture_icdf,
    )

    x, shift, log_scale = (torch.randn(2, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    loc, ls = (torch.zeros(5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    u = torch.rand(2, 5, dtype=torch.float64, requires_grad=True)
    mixture = [torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    # An MLP 3 -> 6 -> 6 (a coupling on 6 entries), and a MADE 6 -> 6 -> 12 (any masks).
    mlp = [torch.randn(6, 3 if i == 0 else 6, dtype=torch.float64, requires_grad=True) for i in range(2)]
    made = [torch.randn(6 * (i + 1), 6, dtype=torch.float64, requires_grad=True) for i in range(2)]
    biases = [torch.randn(len(w), dtype=torch.float64, requires_grad=True) for w in mlp + made]
    masks = [torch.rand(w.shape) < 0.5 for w in made]
    z = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    bound = torch.ones(3, dtype=torch.float64, requires_grad=True)
    bound6 = torch.ones(6, dtype=torch.float64, requires_grad=True)
    return [
        ("affine_coupling", lambda b: affine_coupling(x, shift, log_scale, backend=b), [x, shift, log_scale], ()),
        ("actnorm", lambda b: actnorm(x, loc, ls, backend=b), [x, loc, ls], ()),
        ("logit_transform", lambda b: logit_transform(u, alpha=0.05, backend=b), [u], ()),
        ("mixture_cdf", lambda b: mixture_cdf(x, *mixture, backend=b), [x, *mixture], ()),
        ("mixture_icdf", lambda b: (mixture_icdf(u, *mixture, backend=b),), [u, *mixture], ()),
        (
            "affine_coupling_mlp",
            lambda b: affine_coupling_mlp(z, mlp, biases[:2], bound, parity=0, backend=b),
            [z, *mlp, *biases[:2], bound],
            ("affine_coupling",),
        ),
        (
            "masked_affine_autoregressive",
            lambda b: masked_affine_autoregressive(z, made, masks, biases[2:], bound6, backend=b),
            [z, *made, *biases[2:], bound6],
            ("affine_coupling",),
        ),
    ]


_FLOW_OPS = [
    "affine_coupling",
    "actnorm",
    "logit_transform",
    "mixture_cdf",
    "mixture_icdf",
    "affine_coupling_mlp",
    "masked_affine_autoregressive",
]


@pytest.mark.parametrize("index", range(len(_FLOW_OPS)), ids=_FLOW_OPS)
def test_double_backward_of_a_fast_path_is_a_clear_error(index):
    """Differentiating a fast path's backward op raises NotImplementedError naming the op,
    instead of a silently wrong (missing) second derivative."""
    op, call, leaves, inner = _flow_op_calls()[index]
    for backend in fast_backends(op, "cpu", torch.float64):
        outputs = call(backend)
        grads = torch.autograd.grad(sum(o.sum() for o in outputs), leaves, create_graph=True)
        named = op if backend == "cpp" else "|".join((op, *inner))
        with pytest.raises(NotImplementedError, match=f"^({named}): double backward"):
            torch.autograd.grad(sum(g.sum() for g in grads), leaves, allow_unused=True)
