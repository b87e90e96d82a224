r"""The training loop of the zoo: :func:`fit` trains a :class:`~fastgen.models.DensityModel`
by maximum likelihood, reports the test loss after every epoch and checkpoints atomically,
so that an interrupted run resumes to exactly the parameters of an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from ._atomic import write_atomic
from .models.base import DensityModel
from .ops._checks import check_bool, check_int, check_real

__all__ = ["History", "fit"]

Data = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

_CHECKPOINT_KEYS = {"model", "optimizer", "epoch", "step", "history", "config", "shuffle_rng", "torch_rng", "cuda_rng"}


@dataclass
class History:
    """What :func:`fit` measured, one entry per epoch.

    Attributes:
        train_loss: mean training loss of the epoch in nats per dimension (over its examples,
            with the parameters of the moment each batch was seen).
        test_loss: test loss in nats per dimension after the epoch (empty without a test set).
        test_bits_per_dim: the same in bits per dimension.
        steps: optimizer steps done since the start of training, at the end of the epoch.
        seconds: wall time of the epoch (training and test evaluation).
    """

    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_bits_per_dim: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        """The number of epochs done."""
        return len(self.train_loss)


def fit(
    model: DensityModel,
    train: Data,
    test: Data | None = None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    grad_clip: float | None = None,
    warmup_steps: int = 0,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int = 0,
) -> History:
    r"""Train ``model`` by minimizing its :meth:`~fastgen.models.DensityModel.loss` (the mean
    negative log-likelihood in nats per dimension) with AdamW.

    Each epoch visits the training examples once in a fresh random order (drawn from a
    generator seeded with ``seed``; the global RNG is not used for it) in batches of
    ``batch_size`` (the last one may be smaller), one optimizer step per batch. The learning
    rate of step :math:`t = 1, 2, \dots` is :math:`\mathrm{lr} \cdot \min(1, t /
    \mathrm{warmup\_steps})` (constant ``lr`` if ``warmup_steps`` is 0). After each epoch the
    test loss is evaluated in eval mode without gradients, in batches of ``batch_size``.

    Every training loss is read (one synchronization with the device per step) and must be
    finite: a NaN or infinite loss raises :class:`FloatingPointError` naming the epoch and
    the step, before its backward pass and optimizer step, so the parameters stay those of
    the last good step and the checkpoint those of the last completed epoch.

    Args:
        model: the model to train, in place; its trainable parameters are optimized.
        train: the training examples ``(N, *event_shape)``, or a pair ``(examples, cond)``
            with ``cond (N, ...)`` (class labels or features) passed to
            ``model.loss(examples, cond)``. On the model's device. A
            :class:`~fastgen.data.DataSplit` gives ``split.train`` or
            ``(split.train, split.train_labels)``.
        test: test data of the same kind as ``train`` (same event shape, with a ``cond`` iff
            ``train`` has one), or None.
        epochs: the total number of epochs (including those done before a resume).
        batch_size: examples per optimizer step.
        lr: the learning rate after warm-up.
        weight_decay: AdamW's decoupled weight decay.
        grad_clip: if given, the gradient is rescaled to this norm (over all parameters)
            where it is larger.
        warmup_steps: optimizer steps over which the learning rate rises linearly to ``lr``.
        progress: show a tqdm progress bar with the running training loss and the last test
            loss (nats/dim) and bits/dim.
        checkpoint: a file path: after each epoch the model, the optimizer, the history and
            the states of the shuffling generator and of the global torch RNG (models may
            draw noise from it) are saved there. The file is replaced atomically (written to
            a temporary file in the same directory, then renamed), so an interrupt leaves
            either the previous checkpoint or the new one, never a partial file.
        resume: continue the run saved in ``checkpoint`` after its last epoch, with its
            optimizer state, random states and history. ``model`` must have the same
            parameters and buffers (names and shapes), and the other arguments but
            ``epochs``, ``test`` and ``progress`` must be those of the saved run. The run then
            reaches the same parameters as one that was never interrupted (for deterministic
            operations).
        seed: seeds the shuffling. The global RNG (model initialization, noise drawn by the
            model) is the caller's to seed.

    Returns:
        The :class:`History` of every epoch (with those before a resume).

    Example: a categorical distribution :math:`\mathrm{softmax}(\theta)` over 4 values,
    trained on data with frequencies (1/2, 1/4, 1/8, 1/8), reaches their entropy of 1.75 bits:

    >>> import torch
    >>> from fastgen.models import DensityModel
    >>> from fastgen.train import fit
    >>> class Categorical(DensityModel):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.event_shape = ()
    ...         self.theta = torch.nn.Parameter(torch.zeros(4))
    ...     def log_prob(self, x, cond=None):
    ...         return torch.log_softmax(self.theta, dim=0)[x]
    >>> data = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3] * 25)
    >>> history = fit(Categorical(), data, data, epochs=20, batch_size=50, lr=0.05, progress=False)
    >>> history.steps[-1], round(history.test_bits_per_dim[-1], 2)
    (80, 1.75)
    """
    params, (x, cond), test_data = _check_arguments(
        model, train, test, epochs, batch_size, lr, weight_decay, grad_clip, warmup_steps, progress, checkpoint, resume, seed
    )
    device, n = params[0].device, x.shape[0]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    shuffle = torch.Generator().manual_seed(seed)
    # what a resumed run must share with the saved one to continue it exactly
    config = dict(
        num_train=n,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        warmup_steps=warmup_steps,
        seed=seed,
    )
    history = _restore(checkpoint, model, optimizer, shuffle, config, epochs, device) if resume else History()

    step = history.steps[-1] if history.steps else 0
    postfix: dict[str, str] = {}
    was_training = model.training
    bar = tqdm(total=epochs * math.ceil(n / batch_size), initial=step, disable=not progress, desc="fit", unit="step")
    try:
        for epoch in range(history.epochs, epochs):
            start = time.perf_counter()
            postfix["epoch"] = f"{epoch + 1}/{epochs}"
            model.train()
            total, seen = 0.0, 0
            for idx in torch.randperm(n, generator=shuffle).to(device).split(batch_size):
                step += 1
                for group in optimizer.param_groups:
                    group["lr"] = lr * min(1.0, step / warmup_steps) if warmup_steps else lr
                loss = model.loss(x[idx], None if cond is None else cond[idx])
                # One read of the loss per step (a synchronization with the device): a step on
                # a NaN or infinite loss would write non-finite values into every parameter.
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"fit: the training loss is not finite ({value}) at epoch {epoch + 1}, step {step}; "
                        f"the parameters were not updated with it and the checkpoint (if any) keeps epoch "
                        f"{history.epochs}. Check the data, or lower lr or set grad_clip"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
                total += value * idx.numel()
                seen += idx.numel()
                if bar.update():
                    postfix["loss"] = f"{total / seen:.4f}"
                    bar.set_postfix(postfix)
            history.train_loss.append(total / n)
            history.steps.append(step)
            postfix["loss"] = f"{history.train_loss[-1]:.4f}"
            if test_data is not None:
                nats = _evaluate(model, *test_data, batch_size)
                history.test_loss.append(nats)
                history.test_bits_per_dim.append(nats / math.log(2))
                postfix.update(test=f"{nats:.4f}", bpd=f"{nats / math.log(2):.4f}")
            bar.set_postfix(postfix)
            history.seconds.append(time.perf_counter() - start)
            if checkpoint is not None:
                state = _checkpoint_state(model, optimizer, history, config, shuffle, device)
                write_atomic(checkpoint, lambda file: torch.save(state, file))
    finally:
        bar.close()
        model.train(was_training)
    return history


def _evaluate(model: DensityModel, x: torch.Tensor, cond: torch.Tensor | None, batch_size: int) -> float:
    """The loss over all of ``x`` in nats per dimension: the example-weighted mean of the batch losses."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size]
            loss = model.loss(batch, None if cond is None else cond[start : start + batch_size])
            total += loss.double() * batch.shape[0]
    return total.item() / x.shape[0]


# ------------------------------------------------------------------------------ checkpoints


def _checkpoint_state(
    model: DensityModel,
    optimizer: torch.optim.Optimizer,
    history: History,
    config: dict,
    shuffle: torch.Generator,
    device: torch.device,
) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": history.epochs,
        "step": history.steps[-1],
        "history": asdict(history),
        "config": config,
        "shuffle_rng": shuffle.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _restore(
    path: str | os.PathLike,
    model: DensityModel,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    config: dict,
    epochs: int,
    device: torch.device,
) -> History:
    """Load the checkpoint at ``path`` into the model, optimizer and random states, after
    checking that it fits them all; returns its history."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fit: resume=True but there is no checkpoint file {os.fspath(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"fit: cannot read the checkpoint {os.fspath(path)!r}: {e}") from e
    if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= state.keys():
        raise ValueError(f"fit: {os.fspath(path)!r} is not a checkpoint written by fastgen.train.fit")

    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    saved = {name: tuple(t.shape) for name, t in state["model"].items()}
    if saved != expected:
        problems = [f"missing {name}" for name in expected.keys() - saved.keys()]
        problems += [f"unexpected {name}" for name in saved.keys() - expected.keys()]
        problems += [
            f"{name} has shape {saved[name]} in the checkpoint but {shape} in the model"
            for name, shape in expected.items()
            if name in saved and saved[name] != shape
        ]
        raise ValueError(f"fit: the checkpoint {os.fspath(path)!r} does not match the model: {'; '.join(sorted(problems))}")
    differ = [f"{k}={state['config'].get(k)!r} (now {v!r})" for k, v in config.items() if state["config"].get(k) != v]
    if differ:
        raise ValueError(
            f"fit: the checkpoint {os.fspath(path)!r} was written by a run with other arguments: {', '.join(differ)}; "
            "resume with the same ones"
        )
    if state["epoch"] > epochs:
        raise ValueError(f"fit: epochs={epochs} but the checkpoint {os.fspath(path)!r} has already done {state['epoch']}")

    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    shuffle.set_state(state["shuffle_rng"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return History(**state["history"])


# ------------------------------------------------------------------------------ argument checks


def _check_part(what: str, t: object, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fit: {what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 0 or t.shape[0] == 0:
        raise ValueError(f"fit: {what} must have shape (N, ...) with N >= 1, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"fit: {what} is on {t.device} but the model is on {device}; they must match")


def _check_data(name: str, data: object, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``data`` must be examples ``(N, ...)`` or a pair ``(examples, cond)`` with ``cond (N, ...)``,
    N >= 1, on ``device``; returns ``(examples, cond or None)``."""
    if isinstance(data, torch.Tensor):
        x, cond = data, None
    elif isinstance(data, tuple) and len(data) == 2:
        x, cond = data
    else:
        raise TypeError(
            f"fit: {name} must be a tensor of examples (N, ...) or a pair (examples, cond), got {type(data).__name__}"
        )
    _check_part(f"{name}'s examples", x, device)
    if cond is not None:
        _check_part(f"{name}'s cond", cond, device)
        if cond.shape[0] != x.shape[0]:
            raise ValueError(
                f"fit: {name}'s cond has {cond.shape[0]} rows but there are {x.shape[0]} examples; they must match"
            )
    return x, cond


def _check_arguments(
    model, train, test, epochs, batch_size, lr, weight_decay, grad_clip, warmup_steps, progress, checkpoint, resume, seed
) -> tuple[list[torch.nn.Parameter], tuple, tuple | None]:
    """Every check of :func:`fit` before any work; returns the trainable parameters, the
    training data and the test data (or None) as ``(examples, cond or None)`` pairs."""
    if not isinstance(model, DensityModel):
        raise TypeError(f"fit: model must be a fastgen.models.DensityModel, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"fit: model ({type(model).__name__}) has no trainable parameters")
    check_int("fit", "epochs", epochs, minimum=1)
    check_int("fit", "batch_size", batch_size, minimum=1)
    check_real("fit", "lr", lr, above=0)
    check_real("fit", "weight_decay", weight_decay, at_least=0)
    if grad_clip is not None:
        check_real("fit", "grad_clip", grad_clip, above=0)
    check_int("fit", "warmup_steps", warmup_steps, minimum=0)
    check_bool("fit", "progress", progress)
    check_bool("fit", "resume", resume)
    check_int("fit", "seed", seed, minimum=0)
    if checkpoint is not None:
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"fit: checkpoint must be a file path (str or os.PathLike), got {type(checkpoint).__name__}")
        directory = os.path.dirname(os.path.abspath(checkpoint))
        if not os.path.isdir(directory):
            raise ValueError(f"fit: checkpoint's directory {directory!r} does not exist")
    elif resume:
        raise ValueError("fit: resume=True needs checkpoint, the file to resume from")

    device = params[0].device
    train_data = _check_data("train", train, device)
    if test is None:
        return params, train_data, None
    test_data = _check_data("test", test, device)
    (x, cond), (test_x, test_cond) = train_data, test_data
    if (cond is None) != (test_cond is None):
        only = "train" if test_cond is None else "test"
        raise ValueError(f"fit: train and test must both have a cond or neither; only {only} has one")
    for part, ours, theirs in (("examples", test_x, x), ("cond", test_cond, cond)):
        if ours is not None and (ours.shape[1:] != theirs.shape[1:] or ours.dtype != theirs.dtype):
            raise ValueError(
                f"fit: test's {part} are {tuple(ours.shape[1:])} {ours.dtype} per example but train's are "
                f"{tuple(theirs.shape[1:])} {theirs.dtype}; they must match"
            )
    return params, train_data, test_data
