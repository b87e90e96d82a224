"""MADE: connectivity, exact normalization, the incremental step against the full forward,
sampling, connectivity-agnostic training over several mask sets, conditioning, saving."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chi2

from fastgen.models import MADE, build
from fastgen.models.made import MADECache
from tests.helpers import tolerances
from tests.models.autoregressive import assert_step_rejects_bad_input

TOL = tolerances(torch.float64)

# every feature, and hidden layers narrower than D - 1 (degrees missing, empty unit ranges)
CONFIGS = {
    "binary": dict(dim=4, hidden=[12, 12]),
    "random-k3-3masks": dict(dim=4, hidden=[10, 7], categories=3, num_masks=3, ordering="random", seed=1),
    "narrow": dict(dim=5, hidden=[3, 8, 2], ordering="random"),
    "cond-2masks": dict(dim=4, hidden=16, cond_dim=3, num_masks=2, ordering="random", seed=2),
}


def made(scale: float = 1.0, **config) -> MADE:
    """A float64 MADE in eval mode; ``scale`` multiplies every weight (sharper conditionals)."""
    torch.manual_seed(0)
    model = MADE(**config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def every_x(model: MADE) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(model.categories), repeat=model.dim)))


def random_x(model: MADE, batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, model.categories, (batch, model.dim), generator=torch.Generator().manual_seed(seed))


def random_cond(model: MADE, batch: int, seed: int = 1) -> torch.Tensor | None:
    if model.cond_dim is None:
        return None
    return torch.randn(batch, model.cond_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def positions(model: MADE) -> torch.Tensor:
    """The generation position of each data dimension."""
    pos = torch.empty(model.dim, dtype=torch.long)
    pos[model.order] = torch.arange(model.dim)
    return pos


# ------------------------------------------------------------------------------ structure


@pytest.mark.parametrize("ordering", ["natural", "random"])
def test_output_depends_only_on_earlier_inputs(ordering):
    D, K, M = 6, 3, 3
    model = made(dim=D, hidden=[40, 40], categories=K, num_masks=M, ordering=ordering, seed=5)
    pos = positions(model)
    if ordering == "random":
        assert not torch.equal(model.order, torch.arange(D))
    gen = torch.Generator().manual_seed(0)
    onehot = F.one_hot(torch.randint(0, K, (8, D), generator=gen), K).double().requires_grad_()
    weights = torch.randn(8, K, dtype=torch.float64, generator=gen)
    for mask_set in range(M):
        logits = model._logits_onehot(onehot, None, mask_set)
        for d in range(D):
            (grad,) = torch.autograd.grad((logits[:, d] * weights).sum(), onehot, retain_graph=True)
            depends = grad.abs().sum((0, 2)) > 0  # (D,)
            before = pos < pos[d]
            assert not depends[~before].any(), (mask_set, d)
            if pos[d] > 0:
                assert depends[before].any(), (mask_set, d)
            if pos[d] == D - 1:  # the hidden layers are wide enough to have every degree
                assert depends[before].all(), (mask_set, d)


def test_masks_are_staircases():
    model = made(dim=7, hidden=[20, 5, 9], categories=3, num_masks=4, ordering="random", seed=3)
    for mask_set in range(4):
        model.net.use_mask_set(mask_set)
        for layer in model.net.layers:
            mask = layer.mask
            connected = mask.sum(1)  # each row connects to a prefix of the columns, growing with the row
            assert torch.equal(mask, torch.arange(mask.shape[1]) < connected[:, None])
            assert (connected.diff() >= 0).all()
        assert (model.net.layers[-1].mask[: model.categories] == 0).all()  # position 0: bias (and cond) only


# ------------------------------------------------------------------------------ probabilities


@pytest.mark.parametrize("name", CONFIGS)
def test_probabilities_sum_to_one(name):
    model = made(scale=2.0, **CONFIGS[name])
    x = every_x(model)
    for seed in (1, 2):
        cond = random_cond(model, 1, seed)
        probs = model.log_prob(x, None if cond is None else cond.expand(len(x), -1)).exp()
        torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("name", CONFIGS)
def test_step_equals_full_logits_and_log_prob(name):
    model = made(**CONFIGS[name])
    x, cond = random_x(model, 7), random_cond(model, 7)
    full = model.logits(x, cond)
    cache, prev, log_prob = model.init_cache(7, cond), None, torch.zeros(7, dtype=torch.float64)
    for d in model.generation_order():
        logits = model.step(cache, prev)
        torch.testing.assert_close(logits, full[:, d], **TOL)
        log_prob += logits.log_softmax(-1).gather(-1, x[:, d, None]).squeeze(-1)
        prev = x[:, d]
    torch.testing.assert_close(log_prob, model.log_prob(x, cond), **TOL)
    assert isinstance(cache, MADECache) and cache.position == model.dim


def test_step_uses_only_the_weights_inside_the_masks():
    model = made(dim=5, hidden=[9, 6], categories=3, ordering="random")
    x = random_x(model, 4)
    full = model.logits(x)
    with torch.no_grad():
        for layer in model.net.layers:
            layer.weight.masked_fill_(~layer.mask, math.nan)
    cache, prev = model.init_cache(4), None
    for d in model.generation_order():
        torch.testing.assert_close(model.step(cache, prev), full[:, d], **TOL)
        prev = x[:, d]


# ------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_and_naive_samples_agree(name):
    model = made(scale=2.0, **CONFIGS[name])
    cond = random_cond(model, 300)
    cached = model.sample(300, cond, generator=torch.Generator().manual_seed(7))
    naive = model.sample(300, cond, generator=torch.Generator().manual_seed(7), cache=False)
    assert torch.equal(cached, naive)
    assert cached.shape == (300, model.dim) and cached.dtype == torch.long


def test_sample_frequencies_chi_square():
    # two mask sets: the samples come from the ensemble, the mixture log_prob describes
    model = made(scale=3.0, dim=4, hidden=[16, 16], num_masks=2, ordering="random", seed=4)
    x = every_x(model)
    probs = model.log_prob(x).exp()
    assert (probs - 1 / 16).abs().sum() > 0.5  # far from uniform, so the test can fail
    n = 20_000
    samples = model.sample(n, generator=torch.Generator().manual_seed(0))
    index = (samples * (2 ** torch.arange(3, -1, -1))).sum(1)  # the row of `x` of each sample
    counts = torch.bincount(index, minlength=16).double()
    statistic = ((counts - n * probs) ** 2 / (n * probs)).sum().item()
    assert chi2.sf(statistic, df=15) > 1e-3, statistic


# ------------------------------------------------------------------------------ mask sets


def test_training_cycles_mask_sets_and_evaluation_is_their_ensemble():
    model = made(dim=4, hidden=[16, 16], num_masks=3, ordering="random", seed=3).train()
    x = every_x(model)
    per_set = []
    for i in range(4):
        assert int(model.next_mask_set) == i % 3
        per_set.append(model.log_prob(x).detach())  # a training forward: one mask set
    torch.testing.assert_close(per_set[3], per_set[0], rtol=0, atol=0)
    for a, b in itertools.combinations(per_set[:3], 2):
        assert (a - b).abs().max() > 1e-3
    for log_prob in per_set[:3]:
        torch.testing.assert_close(log_prob.exp().sum(), torch.tensor(1.0, dtype=torch.float64), **TOL)
    ensemble = torch.logsumexp(torch.stack(per_set[:3]), 0) - math.log(3)
    with torch.no_grad():  # not a training forward: the ensemble, and the cycle stays put
        torch.testing.assert_close(model.log_prob(x), ensemble, **TOL)
    assert int(model.next_mask_set) == 1
    torch.testing.assert_close(model.eval().log_prob(x), ensemble, **TOL)


def test_single_mask_set_is_the_same_in_training_and_evaluation():
    model = made(dim=4, hidden=12, ordering="random")
    x = random_x(model, 5)
    evaluated = model.log_prob(x)
    torch.testing.assert_close(model.train().log_prob(x), evaluated, rtol=0, atol=0)
    assert int(model.next_mask_set) == 0


# ------------------------------------------------------------------------------ conditioning


def test_cond_feeds_every_output():
    model = made(dim=4, hidden=16, cond_dim=3, ordering="random")
    x = random_x(model, 6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    one_hot = F.one_hot(labels, 3)
    logits = model.logits(x, one_hot)  # a long one-hot is cast to the model's dtype
    torch.testing.assert_close(logits, model.logits(x, one_hot.double()), rtol=0, atol=0)
    other = model.logits(x, F.one_hot((labels + 1) % 3, 3))
    first = model.generation_order()[0]  # its conditional has only the bias and cond
    assert ((logits - other).abs().amax(-1) > 1e-6).all()
    assert (logits[:, first] - other[:, first]).abs().min() > 1e-6
    assert model.cond_shape == (3,)


# ------------------------------------------------------------------------------ saving


def test_state_dict_round_trip_through_build():
    config = dict(dim=5, hidden=[12, 9], categories=3, num_masks=2, ordering="random", cond_dim=2, seed=4)
    torch.manual_seed(0)
    saved = build("made", **config)
    x, cond = random_x(saved, 6), torch.randn(6, 2)
    saved.loss(x, cond).backward()  # a training forward: moves the mask-set cycle
    torch.manual_seed(1)
    loaded = build("made", **{**config, "seed": 5})  # other ordering and masks: all replaced on loading
    assert loaded.generation_order() != saved.generation_order()
    loaded.load_state_dict(saved.state_dict())
    assert loaded.generation_order() == saved.generation_order()
    assert int(loaded.next_mask_set) == 1
    torch.testing.assert_close(loaded.loss(x, cond), saved.loss(x, cond), rtol=0, atol=0)
    saved.eval(), loaded.eval()
    torch.testing.assert_close(loaded.log_prob(x, cond), saved.log_prob(x, cond), rtol=0, atol=0)
    samples = [m.sample(6, cond, generator=torch.Generator().manual_seed(0)) for m in (saved, loaded)]
    assert torch.equal(*samples)


# ------------------------------------------------------------------------------ training


@pytest.mark.parametrize("num_masks", [1, 2])
def test_training_reaches_the_entropy_of_a_tiny_distribution(num_masks):
    torch.manual_seed(0)
    target = torch.softmax(torch.tensor([2.0, 0.0, -1.0, 1.0, 0.5, -2.0, 1.5, 0.0]), 0)  # 3 dependent bits
    entropy = -(target * target.log()).sum()
    model = MADE(3, hidden=[16, 16], num_masks=num_masks, ordering="random", seed=1)
    x = every_x(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)

    def cross_entropy() -> torch.Tensor:
        return -(target * model.log_prob(x)).sum()

    start = cross_entropy().item()
    for _ in range(200):
        optimizer.zero_grad()
        cross_entropy().backward()
        optimizer.step()
    with torch.no_grad():
        end = cross_entropy().item()
    assert start > entropy + 0.1
    assert end < entropy + 1e-3, (end, entropy.item())


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "config, error, match",
    [
        (dict(dim=1, hidden=8), ValueError, "dim must be >= 2"),
        (dict(dim=4.0, hidden=8), TypeError, "dim must be an int"),
        (dict(dim=4, hidden=[]), TypeError, "hidden must be an int or a non-empty sequence"),
        (dict(dim=4, hidden="8"), TypeError, "hidden must be an int or a non-empty sequence"),
        (dict(dim=4, hidden=[8, 0]), ValueError, r"hidden\[1\] must be >= 1"),
        (dict(dim=4, hidden=8, categories=1), ValueError, "categories must be >= 2"),
        (dict(dim=4, hidden=8, num_masks=0), ValueError, "num_masks must be >= 1"),
        (dict(dim=4, hidden=8, ordering="reverse"), ValueError, "ordering must be one of"),
        (dict(dim=4, hidden=8, cond_dim=0), ValueError, "cond_dim must be >= 1"),
        (dict(dim=4, hidden=8, seed=-1), ValueError, "seed must be >= 0"),
    ],
)
def test_bad_config_raises(config, error, match):
    with pytest.raises(error, match=match):
        MADE(**config)


def test_bad_data_and_cond_raise():
    model = made(dim=4, hidden=8, categories=3, cond_dim=2)
    x, cond = random_x(model, 3), torch.zeros(3, 2)
    with pytest.raises(TypeError, match="integer dtype"):
        model.log_prob(x.double(), cond)
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(x[:, :3], cond)
    with pytest.raises(ValueError, match=r"values in \[0, 3\)"):
        model.log_prob(x + 3, cond)
    with pytest.raises(TypeError, match="cond must be a tensor"):
        model.log_prob(x)
    with pytest.raises(ValueError, match="cond must have shape"):
        model.logits(x, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="takes no cond"):
        made(dim=4, hidden=8).log_prob(x.clamp_max(1), cond)


def test_bad_step_raises():
    assert_step_rejects_bad_input(made(dim=3, hidden=8, categories=3), "MADECache")