"""Benchmarks of whole flow models against the packages a user would pick instead: zuko
and nflows (vector flows), normflows (Glow), each built with the same architecture.

Cases (float32; providers ``fastgen``, with the backends chosen automatically as a user
gets them, and every installed peer; the speedup columns are each provider's over each
peer):

- MAF on 64 dimensions: 5 affine autoregressive transforms, each a MADE of two hidden
  layers of 256 ReLU units, the entries reversed between transforms, standard normal
  base. fastgen ``MAF(64, hidden=[256, 256], transforms=5)``; zuko
  ``MAF(64, transforms=5, hidden_features=(256, 256))``; nflows
  ``MaskedAutoregressiveFlow(64, hidden_features=256, num_layers=5,
  num_blocks_per_layer=1, use_residual_blocks=False)`` (its MADE: input layer, one block,
  output layer).
- RealNVP on 64 dimensions: 8 affine couplings of alternating halves, each network an MLP
  of two hidden layers of 256 ReLU units, standard normal base, no normalization layers.
  fastgen ``RealNVP((64,), hidden=256, blocks=2, couplings=8, actnorm=False)``; zuko
  ``RealNVP(64, transforms=8, hidden_features=(256, 256))``; nflows: ``SimpleRealNVP``'s
  construction (``AffineCouplingTransform`` on alternating masks) with nflows' ``MLP``
  of the same widths as the network, where ``SimpleRealNVP`` hard-codes a ``ResidualNet``.
- Glow on 3x32x32 images: 3 levels of 8 steps (ActNorm, LU-parametrized 1x1 convolution,
  channel-split affine coupling with a sigmoid scale and a 3x3 / 1x1 / 3x3 network of
  :data:`GLOW_HIDDEN` channels), half of the channels factored out after each level but
  the last. fastgen ``Glow((3, 32, 32), levels=3, depth=8, hidden=GLOW_HIDDEN)``;
  normflows built as its Glow example does (``GlowBlock`` s, ``Squeeze``, ``Merge``,
  ``MultiscaleFlow``) with ``GlowBase`` priors (unconditional). fastgen's split priors
  are learned from the kept half (a 3x3 convolution), normflows' are not: a small extra
  cost on fastgen's side.

Each model is timed for

- a training step: ``loss = -log_prob(x).mean()`` and its backward to every parameter
  (gradients cleared first; no optimizer step), on :data:`VECTOR_BATCH` draws of a
  64-dimensional Gaussian mixture (:func:`gaussian_mixture`) or :data:`GLOW_BATCH` uniform
  3x32x32 images;
- sampling without autograd: :data:`VECTOR_SAMPLES` vectors, :data:`GLOW_SAMPLES` images.

Every model is first run once on data (ActNorm's data initialization) and its parameters
moved away from their initialization (flows start as the identity, with zero last layers).
A peer that is not installed (``pip install fastgen[bench]`` installs them) is left out
with a note. ``flows_equivalence.py`` trains the vector models built here on the same data
to show that they reach comparable test log-likelihoods.

``python benchmarks/harness.py --filter flows/`` or
``pytest benchmarks/bench_flows.py --benchmark-only``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

import fastgen.models
from harness import Case, Provider, benchmark_with_pytest

__all__ = [
    "FLOW_BUILDERS",
    "Flow",
    "cases",
    "gaussian_mixture",
    "installed_peers",
    "mixture_vectors",
    "test_flows",
]

DTYPE = torch.float32
VECTOR_DIM, VECTOR_BATCH, VECTOR_SAMPLES = 64, 256, 10_000
MAF_TRANSFORMS, MAF_HIDDEN = 5, (256, 256)
REALNVP_COUPLINGS, REALNVP_HIDDEN = 8, (256, 256)
GLOW_SHAPE, GLOW_LEVELS, GLOW_DEPTH, GLOW_HIDDEN = (3, 32, 32), 3, 8, 128
GLOW_BATCH, GLOW_SAMPLES = 16, 16
MIXTURE_COMPONENTS = 8
PEERS = {"maf": ("zuko", "nflows"), "realnvp": ("zuko", "nflows"), "glow": ("normflows",)}


@dataclass(frozen=True)
class Flow:
    """One package's model behind a common interface: ``log_prob(x) -> (B,)`` and
    ``sample(n) -> (n, *shape)``; ``module`` owns the parameters."""

    module: nn.Module
    log_prob: Callable[[torch.Tensor], torch.Tensor]
    sample: Callable[[int], torch.Tensor]


def _fastgen(model: fastgen.models.FlowModel) -> Flow:
    return Flow(model, model.log_prob, model.sample)


def _zuko(flow: nn.Module) -> Flow:
    # zuko's flows are lazy: calling the module (with the context, none here) builds the distribution.
    return Flow(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))


def _nflows(flow: nn.Module) -> Flow:
    return Flow(flow, flow.log_prob, flow.sample)


def _maf(package: str) -> Flow:
    if package == "fastgen":
        return _fastgen(fastgen.models.MAF(VECTOR_DIM, hidden=list(MAF_HIDDEN), transforms=MAF_TRANSFORMS))
    if package == "zuko":
        import zuko

        return _zuko(zuko.flows.MAF(VECTOR_DIM, transforms=MAF_TRANSFORMS, hidden_features=MAF_HIDDEN))
    from nflows.flows import MaskedAutoregressiveFlow

    hidden, blocks = MAF_HIDDEN[0], len(MAF_HIDDEN) - 1  # nflows' MADE: one width, input layer + blocks
    return _nflows(
        MaskedAutoregressiveFlow(
            VECTOR_DIM, hidden, MAF_TRANSFORMS, num_blocks_per_layer=blocks, use_residual_blocks=False
        )
    )


def _realnvp(package: str) -> Flow:
    if package == "fastgen":
        hidden, blocks = REALNVP_HIDDEN[0], len(REALNVP_HIDDEN)
        model = fastgen.models.RealNVP((VECTOR_DIM,), hidden, blocks, REALNVP_COUPLINGS, actnorm=False)
        return _fastgen(model)
    if package == "zuko":
        import zuko

        return _zuko(zuko.flows.RealNVP(VECTOR_DIM, transforms=REALNVP_COUPLINGS, hidden_features=REALNVP_HIDDEN))
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow as NflowsFlow
    from nflows.nn.nets import MLP
    from nflows.transforms import AffineCouplingTransform, CompositeTransform

    class ContextFreeMLP(MLP):
        def forward(self, inputs: torch.Tensor, context: None = None) -> torch.Tensor:
            return super().forward(inputs)  # couplings pass a context, which the MLP does not take

    def net(in_features: int, out_features: int) -> nn.Module:
        return ContextFreeMLP([in_features], [out_features], list(REALNVP_HIDDEN))

    layers, mask = [], torch.ones(VECTOR_DIM)
    mask[::2] = -1  # as SimpleRealNVP: > 0 transformed, alternating between layers
    for _ in range(REALNVP_COUPLINGS):
        layers.append(AffineCouplingTransform(mask.clone(), net))
        mask *= -1
    return _nflows(NflowsFlow(CompositeTransform(layers), StandardNormal([VECTOR_DIM])))


def _glow(package: str) -> Flow:
    if package == "fastgen":
        return _fastgen(fastgen.models.Glow(GLOW_SHAPE, GLOW_LEVELS, GLOW_DEPTH, GLOW_HIDDEN))
    import normflows as nf

    # normflows' Glow example: level i = 0 is the deepest (its blocks run last in log_prob).
    L, (c, h, w) = GLOW_LEVELS, GLOW_SHAPE
    q0, merges, flows = [], [], []
    for i in range(L):
        channels = c * 2 ** (L + 1 - i)
        blocks = [nf.flows.GlowBlock(channels, GLOW_HIDDEN, split_mode="channel", scale=True) for _ in range(GLOW_DEPTH)]
        flows.append([*blocks, nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (L - i), h // 2 ** (L - i), w // 2 ** (L - i))
        else:
            latent = (c * 2 ** (L + 1), h // 2**L, w // 2**L)
        q0.append(nf.distributions.GlowBase(latent))
    model = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)
    return Flow(model, lambda x: model.log_prob(x, None), lambda n: model.sample(n)[0])


FLOW_BUILDERS: dict[str, Callable[[str], Flow]] = {"maf": _maf, "realnvp": _realnvp, "glow": _glow}


def installed_peers(model: str) -> list[str]:
    """The peers of ``model`` (a key of :data:`FLOW_BUILDERS`) that are installed."""
    return [peer for peer in PEERS[model] if importlib.util.find_spec(peer) is not None]


def gaussian_mixture(seed: int = 0) -> MixtureSameFamily:
    """A fixed random mixture of :data:`MIXTURE_COMPONENTS` equally likely Gaussians on
    ``VECTOR_DIM`` dimensions: means ``N(0, 2^2 I)``, covariances ``L L^T`` with ``L`` lower
    triangular, off-diagonal entries ``N(0, 0.3^2)`` and diagonal ``U[0.5, 1.5)``, so that
    the components are strongly correlated (float64)."""
    g = torch.Generator().manual_seed(seed)
    K, D = MIXTURE_COMPONENTS, VECTOR_DIM
    means = 2 * torch.randn(K, D, generator=g, dtype=torch.float64)
    off = torch.tril(0.3 * torch.randn(K, D, D, generator=g, dtype=torch.float64), -1)
    scale_tril = off + torch.diag_embed(0.5 + torch.rand(K, D, generator=g, dtype=torch.float64))
    return MixtureSameFamily(Categorical(torch.ones(K, dtype=torch.float64)), MultivariateNormal(means, scale_tril=scale_tril))


def mixture_vectors(n: int, seed: int) -> torch.Tensor:
    """``n`` draws ``(n, VECTOR_DIM)`` of :func:`gaussian_mixture`, from a generator seeded
    with ``seed``, as float32."""
    mixture, g = gaussian_mixture(), torch.Generator().manual_seed(seed)
    components = mixture.component_distribution
    k = torch.randint(MIXTURE_COMPONENTS, (n,), generator=g)
    eps = torch.randn(n, VECTOR_DIM, 1, generator=g, dtype=torch.float64)
    return (components.loc[k] + (components.scale_tril[k] @ eps).squeeze(-1)).to(DTYPE)


def _perturb(module: nn.Module, seed: int, scale: float = 0.01) -> None:
    """Moves every parameter a little away from its initialization (zero last layers make
    a fresh flow the identity), the same relative amount in every package."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))


def _training_step(flow: Flow, x: torch.Tensor) -> Provider:
    params = list(flow.module.parameters())

    def step() -> None:
        for p in params:
            p.grad = None  # else backward adds into them
        (-flow.log_prob(x).mean()).backward()

    return step


def _sampling(flow: Flow, n: int) -> Provider:
    def sample() -> Any:
        with torch.no_grad():
            return flow.sample(n)

    return sample


def _case(model: str, task: str, device: str) -> Case:
    peers = installed_peers(model)

    def setup() -> dict[str, Provider]:
        if model == "glow":
            x = torch.rand(GLOW_BATCH, *GLOW_SHAPE, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
            n = GLOW_SAMPLES
        else:
            x, n = mixture_vectors(VECTOR_BATCH, seed=0), VECTOR_SAMPLES
        x = x.to(device)
        providers = {}
        for package in ["fastgen", *peers]:
            torch.manual_seed(0)
            flow = FLOW_BUILDERS[model](package)
            flow.module.to(device)
            with torch.no_grad():
                flow.log_prob(x)  # data-dependent initialization (ActNorm)
            _perturb(flow.module, seed=1)
            providers[package] = _training_step(flow, x) if task == "train" else _sampling(flow, n)
        return providers

    if model == "glow":
        what = f"{'x'.join(map(str, GLOW_SHAPE))} L={GLOW_LEVELS} K={GLOW_DEPTH} hidden={GLOW_HIDDEN}"
        size = f"batch {GLOW_BATCH}" if task == "train" else f"{GLOW_SAMPLES} samples"
    else:
        depth = f"transforms={MAF_TRANSFORMS}" if model == "maf" else f"couplings={REALNVP_COUPLINGS}"
        hidden = MAF_HIDDEN if model == "maf" else REALNVP_HIDDEN
        what = f"D={VECTOR_DIM} {depth} hidden={'-'.join(map(str, hidden))}"
        size = f"batch {VECTOR_BATCH}" if task == "train" else f"{VECTOR_SAMPLES} samples"
    label = "training step" if task == "train" else "sampling"
    return Case(f"flows/{model} {what} {label} {size}", None, setup, baselines=tuple(peers))


def cases(device: str, quick: bool) -> list[Case]:
    """Training step and sampling of MAF, RealNVP and Glow; ``quick`` keeps them all."""
    for model in PEERS:
        missing = sorted(set(PEERS[model]) - set(installed_peers(model)))
        if missing:
            print(f"bench_flows: {', '.join(missing)} not installed (pip install fastgen[bench]): "
                  f"left out of the {model} cases", file=sys.stderr)
    return [_case(model, task, device) for model in PEERS for task in ("train", "sample")]


def test_flows(benchmark: Any, bench_device: str, case: Case, provider: str) -> None:
    """pytest-benchmark entry; ``conftest.py`` parametrizes ``(case, provider)`` from :func:`cases`."""
    benchmark_with_pytest(benchmark, case, provider, bench_device)
