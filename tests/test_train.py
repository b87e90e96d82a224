"""fastgen.train.fit: it reaches the maximum-likelihood optimum, records what it measures,
follows its learning-rate schedule and clipping, checkpoints atomically, and a resumed run
ends bit for bit where an uninterrupted one does."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from fastgen.models import DensityModel
from fastgen.train import History, fit


class Interrupt(Exception):
    """Stands for whatever stops a run (a kill, a crash, a KeyboardInterrupt)."""


class Categorical(DensityModel):
    """``D`` independent categoricals over ``K`` values, ``softmax(theta[c, d])``, with one
    table per class ``c = cond`` (``classes`` tables; one and no cond if None).

    The maximum-likelihood optimum is the empirical (conditional) frequencies; its loss, the
    empirical (conditional) entropy per dimension. ``noise`` > 0 perturbs the logits in
    training with draws from the global RNG (as dropout or dequantization noise would).
    Every call of ``loss`` is recorded; the ``fail_at``-th raises :class:`Interrupt`.
    """

    def __init__(self, dims=2, categories=3, classes=None, noise=0.0, fail_at=None):
        super().__init__()
        self.event_shape = (dims,)
        self.classes, self.noise, self.fail_at = classes, noise, fail_at
        self.theta = nn.Parameter(0.1 * torch.randn(classes or 1, dims, categories, dtype=torch.float64))
        self.calls = []  # (training, grad enabled, x, cond, loss)

    def log_prob(self, x, cond=None):
        logits = self.theta + self.noise * torch.randn_like(self.theta) if self.noise and self.training else self.theta
        logp = torch.log_softmax(logits, -1)  # (classes, D, K)
        logp = logp[cond] if self.classes else logp.expand(x.shape[0], -1, -1)
        return logp.gather(-1, x[..., None]).squeeze(-1).sum(-1)

    def loss(self, x, cond=None):
        if len(self.calls) + 1 == self.fail_at:
            raise Interrupt
        value = super().loss(x, cond)
        self.calls.append((self.training, torch.is_grad_enabled(), x, cond, value.item()))
        return value


def empirical_entropy(x, cond=None):
    """Mean over dimensions of the empirical conditional entropy of x[:, d] given cond, in nats."""
    cond = torch.zeros(len(x), dtype=torch.long) if cond is None else cond
    total = 0.0
    for c in cond.unique():
        rows = x[cond == c]
        for d in range(x.shape[1]):
            p = torch.bincount(rows[:, d]).double() / len(rows)
            p = p[p > 0]
            total -= len(rows) / len(x) * (p * p.log()).sum().item()
    return total / x.shape[1]


def data(n, dims=2, categories=3, classes=None, seed=0):
    """``(x (n, dims) long, labels (n,) long or None)``; x depends on the label when there is one."""
    g = torch.Generator().manual_seed(seed)
    probs = 0.05 + torch.rand(classes or 1, dims, categories, generator=g) ** 3
    labels = torch.randint(classes or 1, (n,), generator=g)
    x = torch.multinomial(probs[labels].reshape(-1, categories), 1, generator=g).reshape(n, dims)
    return x, (labels if classes else None)


@pytest.fixture
def optimizer_steps(monkeypatch):
    """Records (learning rate, gradient norm) at every AdamW step."""
    seen = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        params = [p for group in self.param_groups for p in group["params"]]
        seen.append((self.param_groups[0]["lr"], torch.cat([p.grad.flatten() for p in params]).norm().item()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return seen


def test_reaches_the_empirical_entropy():
    torch.manual_seed(0)
    x, _ = data(300, dims=3, categories=4)
    model = Categorical(dims=3, categories=4)
    history = fit(model, x, x, epochs=60, batch_size=100, lr=0.05, warmup_steps=10, progress=False)
    optimum = empirical_entropy(x)
    assert history.train_loss[0] > history.train_loss[-1]
    assert history.test_loss[0] > optimum + 0.05
    assert history.test_loss[-1] == pytest.approx(optimum, abs=2e-4)
    frequencies = torch.stack([torch.bincount(x[:, d], minlength=4) for d in range(3)]) / len(x)
    torch.testing.assert_close(torch.softmax(model.theta[0], -1), frequencies.double(), atol=0.01, rtol=0)


def test_cond_is_passed_with_its_examples():
    torch.manual_seed(0)
    (x, labels), (test_x, test_labels) = data(400, classes=3), data(100, classes=3, seed=1)
    model = Categorical(classes=3)
    history = fit(model, (x, labels), (test_x, test_labels), epochs=60, batch_size=100, lr=0.05, progress=False)
    # far below what ignoring the labels could reach: the pairs stayed together through shuffling
    assert empirical_entropy(x, labels) < empirical_entropy(x) - 0.1
    assert history.train_loss[-1] == pytest.approx(empirical_entropy(x, labels), abs=2e-3)
    assert history.test_loss[-1] == pytest.approx(model.loss(test_x, test_labels).item(), rel=1e-12)


def test_history_records_each_epoch():
    torch.manual_seed(0)
    (x, _), (test_x, _) = data(10), data(7, seed=1)
    model = Categorical()
    history = fit(model, x, test_x, epochs=3, batch_size=4, lr=0.1, progress=False)
    assert isinstance(history, History) and history.epochs == 3
    assert history.steps == [3, 6, 9]  # batches of 4, 4 and 2
    assert len(history.seconds) == 3 and all(s > 0 for s in history.seconds)
    train_calls = [c for c in model.calls if c[0]]
    eval_calls = [c for c in model.calls if not c[0]]
    assert [len(c[2]) for c in train_calls] == [4, 4, 2] * 3 and [len(c[2]) for c in eval_calls] == [4, 3] * 3
    for epoch in range(3):  # example-weighted means of the batch losses
        batches = train_calls[3 * epoch : 3 * epoch + 3]
        assert history.train_loss[epoch] == pytest.approx(sum(len(c[2]) * c[4] for c in batches) / 10, rel=1e-12)
        batches = eval_calls[2 * epoch : 2 * epoch + 2]
        assert history.test_loss[epoch] == pytest.approx(sum(len(c[2]) * c[4] for c in batches) / 7, rel=1e-12)
    assert history.test_loss[-1] == pytest.approx(model.loss(test_x).item(), rel=1e-12)
    assert history.test_bits_per_dim == [nats / math.log(2) for nats in history.test_loss]

    without_test = fit(Categorical(), x, epochs=2, batch_size=4, lr=0.1, progress=False)
    assert without_test.test_loss == without_test.test_bits_per_dim == [] and without_test.steps == [3, 6]


def test_trains_in_train_mode_and_evaluates_in_eval_mode_without_gradients():
    x, _ = data(10)
    model = Categorical().eval()
    fit(model, x, x, epochs=2, batch_size=4, lr=0.1, progress=False)
    modes = [(training, grad) for training, grad, *_ in model.calls]
    assert modes == ([(True, True)] * 3 + [(False, False)] * 3) * 2
    assert not model.training  # the mode it came in with
    fit(model.train(), x, x, epochs=1, batch_size=4, lr=0.1, progress=False)
    assert model.training


def test_shuffles_each_epoch_from_the_seed_only():
    x, _ = data(12)
    ids = torch.arange(12)  # labels that name each example: the recorded cond is the visiting order

    def orders(seed):
        model = Categorical(classes=12)
        rng = torch.get_rng_state()
        fit(model, (x, ids), epochs=3, batch_size=5, lr=0.1, seed=seed, progress=False)
        assert torch.equal(torch.get_rng_state(), rng)  # the global RNG was not used
        for _, _, batch_x, batch_ids, _ in model.calls:
            assert torch.equal(batch_x, x[batch_ids])
        visited = torch.cat([c[3] for c in model.calls])
        return visited.view(3, 12)

    first = orders(seed=1)
    for epoch in first:
        assert sorted(epoch.tolist()) == list(range(12))
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert torch.equal(orders(seed=1), first)
    assert not torch.equal(orders(seed=2), first)


def test_warmup_is_linear_then_constant(optimizer_steps):
    x, _ = data(12)
    fit(Categorical(), x, epochs=2, batch_size=4, lr=0.1, warmup_steps=4, progress=False)
    assert [lr for lr, _ in optimizer_steps] == [0.1 * 0.25, 0.1 * 0.5, 0.1 * 0.75, 0.1, 0.1, 0.1]
    optimizer_steps.clear()
    fit(Categorical(), x, epochs=2, batch_size=4, lr=0.1, progress=False)
    assert [lr for lr, _ in optimizer_steps] == [0.1] * 6


def test_grad_clip_rescales_the_gradient_norm(optimizer_steps):
    x, _ = data(12)
    torch.manual_seed(0)
    fit(Categorical(), x, epochs=2, batch_size=4, lr=0.1, progress=False)
    assert min(norm for _, norm in optimizer_steps) > 0.05
    optimizer_steps.clear()
    torch.manual_seed(0)
    fit(Categorical(), x, epochs=2, batch_size=4, lr=0.1, grad_clip=0.01, progress=False)
    assert [norm for _, norm in optimizer_steps] == pytest.approx([0.01] * 6, rel=1e-4)


def test_progress_bar_shows_the_losses(capsys):
    x, _ = data(10)
    fit(Categorical(), x, x, epochs=2, batch_size=4, lr=0.1)
    err = capsys.readouterr().err
    assert "6/6" in err and "epoch=2/2" in err and "loss=" in err and "test=" in err and "bpd=" in err
    fit(Categorical(), x, x, epochs=2, batch_size=4, lr=0.1, progress=False)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------ checkpoints


def load(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("noise", [0.0, 0.5], ids=["deterministic", "global-rng-noise"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, noise):
    (x, labels), test = data(30, classes=2), data(9, classes=2, seed=1)
    args = dict(epochs=4, batch_size=8, lr=0.05, weight_decay=0.01, grad_clip=0.5, warmup_steps=6, seed=3, progress=False)

    torch.manual_seed(0)
    model = Categorical(classes=2, noise=noise)
    history = fit(model, (x, labels), test, checkpoint=tmp_path / "full.pt", **args)
    rng_after = torch.get_rng_state()

    # each epoch makes 4 training calls and 2 test calls: stop in the third epoch's third step
    torch.manual_seed(0)
    with pytest.raises(Interrupt):
        fit(Categorical(classes=2, noise=noise, fail_at=2 * 6 + 3), (x, labels), test, checkpoint=tmp_path / "cut.pt", **args)
    assert sorted(os.listdir(tmp_path)) == ["cut.pt", "full.pt"]
    saved = load(tmp_path / "cut.pt")
    assert saved["epoch"] == 2 and saved["step"] == 8 and saved["history"]["steps"] == [4, 8]

    torch.manual_seed(1234)  # whatever happened since, the checkpoint's RNG state is what counts
    resumed = Categorical(classes=2, noise=noise)
    resumed_history = fit(resumed, (x, labels), test, checkpoint=tmp_path / "cut.pt", resume=True, **args)

    assert torch.equal(resumed.theta, model.theta)
    assert torch.equal(torch.get_rng_state(), rng_after)
    assert len(resumed.calls) == 2 * 6  # only the last two epochs ran
    for field in ("train_loss", "test_loss", "test_bits_per_dim", "steps"):
        assert getattr(resumed_history, field) == getattr(history, field)
    full, cut = load(tmp_path / "full.pt"), load(tmp_path / "cut.pt")
    assert cut["epoch"] == full["epoch"] == 4 and cut["step"] == full["step"] == 16
    assert torch.equal(cut["shuffle_rng"], full["shuffle_rng"]) and torch.equal(cut["torch_rng"], full["torch_rng"])
    assert cut["optimizer"]["param_groups"] == full["optimizer"]["param_groups"]
    for key, state in full["optimizer"]["state"][0].items():
        assert torch.equal(cut["optimizer"]["state"][0][key], state), key


def test_resume_when_all_epochs_are_done_changes_nothing(tmp_path):
    x, _ = data(10)
    model = Categorical()
    history = fit(model, x, epochs=2, batch_size=4, lr=0.1, checkpoint=tmp_path / "c.pt", progress=False)
    again = Categorical()
    assert fit(again, x, epochs=2, batch_size=4, lr=0.1, checkpoint=tmp_path / "c.pt", resume=True, progress=False) == history
    assert torch.equal(again.theta, model.theta) and again.calls == []


@pytest.mark.parametrize(
    "target, error",
    [("torch.save", OSError("No space left on device")), ("os.replace", KeyboardInterrupt())],
    ids=["write-fails", "interrupt-before-rename"],
)
def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch, target, error):
    x, _ = data(10)
    path = tmp_path / "c.pt"
    fit(Categorical(), x, epochs=1, batch_size=4, lr=0.1, checkpoint=path, progress=False)
    before = path.read_bytes()

    def fail(obj, dst, *args, **kwargs):
        if target == "torch.save":
            dst.write(b"half a checkpoint")
        raise error

    monkeypatch.setattr(torch if target == "torch.save" else os, target.split(".")[1], fail)
    with pytest.raises(type(error)):
        fit(Categorical(), x, epochs=2, batch_size=4, lr=0.1, checkpoint=path, progress=False)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind
    assert path.read_bytes() == before and load(path)["epoch"] == 1


def test_checkpoint_is_on_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_size)), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", src, dst)), replace(src, dst))[1])
    path = tmp_path / "c.pt"
    fit(Categorical(), data(10)[0], epochs=1, batch_size=4, lr=0.1, checkpoint=path, progress=False)
    monkeypatch.undo()
    (sync, size), (rename, src, dst), *_ = events
    assert sync == "fsync" and size == path.stat().st_size  # the whole file, synced
    assert rename == "replace" and os.path.dirname(src) == str(tmp_path) and dst == path and src != str(path)


def test_resume_errors(tmp_path):
    x, _ = data(10)
    path = tmp_path / "c.pt"
    args = dict(batch_size=4, lr=0.1, checkpoint=path, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        fit(Categorical(), x, epochs=1, resume=True, **args)
    fit(Categorical(), x, epochs=2, **args)

    with pytest.raises(ValueError, match=r"does not match the model: theta has shape \(1, 2, 3\) in the checkpoint but \(1, 2, 4\)"):
        fit(Categorical(categories=4), x, epochs=3, resume=True, **args)

    class Renamed(Categorical):
        def __init__(self):
            super().__init__()
            self.extra = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    with pytest.raises(ValueError, match="does not match the model: missing extra"):
        fit(Renamed(), x, epochs=3, resume=True, **args)
    with pytest.raises(ValueError, match=r"other arguments: batch_size=4 \(now 5\)"):
        fit(Categorical(), x, epochs=3, resume=True, **(args | dict(batch_size=5)))
    with pytest.raises(ValueError, match=r"other arguments: num_train=10 \(now 9\)"):
        fit(Categorical(), x[:9], epochs=3, resume=True, **args)
    with pytest.raises(ValueError, match="epochs=1 but the checkpoint .* has already done 2"):
        fit(Categorical(), x, epochs=1, resume=True, **args)

    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="is not a checkpoint written by fastgen.train.fit"):
        fit(Categorical(), x, epochs=3, resume=True, **args)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read the checkpoint"):
        fit(Categorical(), x, epochs=3, resume=True, **args)


class Diverges(Categorical):
    """A Categorical whose ``nan_at``-th training loss is ``value`` (NaN or inf), as a
    diverging run's or one with a bad example would be."""

    def __init__(self, nan_at: int, value: float = math.nan):
        super().__init__()
        self.nan_at, self.value = nan_at, value

    def loss(self, x, cond=None):
        loss = super().loss(x, cond)
        return loss * self.value if len(self.calls) == self.nan_at else loss


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_loss_stops_before_the_step_and_keeps_the_checkpoint(tmp_path, optimizer_steps, value):
    x, _ = data(10)
    path = tmp_path / "c.pt"
    model = Diverges(nan_at=5, value=value)  # epoch 2 (3 batches of 4, 4, 2 per epoch), step 5
    with pytest.raises(FloatingPointError, match=r"^fit: the training loss is not finite \((nan|inf)\) at epoch 2, step 5"):
        fit(model, x, epochs=3, batch_size=4, lr=0.1, checkpoint=path, progress=False)
    assert len(optimizer_steps) == 4  # the step of the non-finite loss was not taken
    assert model.theta.isfinite().all()
    saved = load(path)
    assert saved["epoch"] == 1 and saved["step"] == 3
    assert all(t.isfinite().all() for t in saved["model"].values())
    assert not torch.equal(saved["model"]["theta"], model.theta.detach())  # step 4 happened after it


class NoParameters(DensityModel):
    event_shape = (2,)


X, LABELS = data(10, classes=2)
BAD_ARGUMENTS = [
    (dict(model=nn.Linear(2, 2)), TypeError, "model must be a fastgen.models.DensityModel"),
    (dict(model=NoParameters()), ValueError, r"model \(NoParameters\) has no trainable parameters"),
    (dict(epochs=0), ValueError, "epochs must be >= 1"),
    (dict(epochs=2.0), TypeError, "epochs must be an int"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(batch_size=True), TypeError, "batch_size must be an int"),
    (dict(lr=0.0), ValueError, "lr must be a finite real number > 0"),
    (dict(lr=math.nan), ValueError, "lr must be a finite real number"),
    (dict(lr="0.1"), TypeError, "lr must be a real number"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay must be a finite real number >= 0"),
    (dict(grad_clip=0.0), ValueError, "grad_clip must be a finite real number > 0"),
    (dict(grad_clip=math.inf), ValueError, "grad_clip must be a finite real number"),
    (dict(warmup_steps=-1), ValueError, "warmup_steps must be >= 0"),
    (dict(warmup_steps=1.5), TypeError, "warmup_steps must be an int"),
    (dict(progress=1), TypeError, "progress must be a bool"),
    (dict(resume="yes"), TypeError, "resume must be a bool"),
    (dict(resume=True), ValueError, "resume=True needs checkpoint"),
    (dict(checkpoint=3), TypeError, "checkpoint must be a file path"),
    (dict(checkpoint="/no/such/directory/c.pt"), ValueError, "checkpoint's directory '/no/such/directory' does not exist"),
    (dict(seed=-1), ValueError, "seed must be >= 0"),
    (dict(seed=None), TypeError, "seed must be an int"),
    (dict(train=[X, LABELS]), TypeError, "train must be a tensor of examples"),
    (dict(train=(X, LABELS, LABELS)), TypeError, "train must be a tensor of examples"),
    (dict(train=(X.tolist(), LABELS)), TypeError, "train's examples must be a torch.Tensor"),
    (dict(train=(X[:0], LABELS[:0])), ValueError, r"train's examples must have shape \(N, ...\) with N >= 1"),
    (dict(train=(X, LABELS[:9])), ValueError, "train's cond has 9 rows but there are 10 examples"),
    (dict(train=(X.to("meta"), LABELS)), ValueError, "train's examples is on meta but the model is on cpu"),
    (dict(test=X), ValueError, "train and test must both have a cond or neither; only train has one"),
    (dict(test=(X, torch.tensor(3))), ValueError, r"test's cond must have shape \(N, ...\)"),
    (dict(test=(X[:, :1], LABELS)), ValueError, r"test's examples are \(1,\) torch.int64 per example but train's are \(2,\)"),
    (dict(test=(X.int(), LABELS)), ValueError, "test's examples are .* torch.int32 per example"),
]


@pytest.mark.parametrize("change, error, message", BAD_ARGUMENTS, ids=[m for *_, m in BAD_ARGUMENTS])
def test_bad_arguments_raise_before_any_work(tmp_path, change, error, message):
    model = Categorical(classes=2)
    theta = model.theta.detach().clone()
    args = dict(model=model, train=(X, LABELS), test=(X, LABELS), epochs=1, batch_size=4, lr=0.1, progress=False)
    with pytest.raises(error, match=f"^fit: {message}"):
        fit(**(args | change))
    assert model.calls == [] and torch.equal(model.theta, theta)

