r"""The contract every zoo model follows, and the registry that builds them by name.

- :class:`DensityModel`: ``log_prob`` (nats per example), ``loss`` (mean NLL in nats per
  dimension), ``bits_per_dim`` and ``sample``.
- :class:`AutoregressiveModel`: a discrete model over ``D`` dimensions with ``categories``
  values each, factorized as :math:`p(x) = \prod_t p(x_{\pi_t} \mid x_{\pi_1}, \dots,
  x_{\pi_{t-1}})` in a generation order :math:`\pi`. Subclasses give the conditionals of
  every dimension at once (``logits``, for training) and one at a time from a cache
  (``init_cache`` / ``step``, for sampling); the base derives ``log_prob`` and both kinds of
  sampling from them, and checks the step protocol (:class:`StepCache`).
- :class:`ImageAutoregressiveModel`: the pixel-by-pixel order, labels and scaling shared by
  the image models.
- :class:`FlowModel`: a normalizing flow, ``log_prob`` by the change of variables through
  ``transform`` (data to latent) and ``sample`` through ``inverse``.
- :func:`register`, :func:`build`, :func:`available`: the zoo by name.

Sampling (cached or naive, the same uniforms for both) is :mod:`fastgen.sampling`'s.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from .. import sampling
from ..ops._checks import check_finite, check_int, check_integer_values, check_real

__all__ = [
    "AutoregressiveModel",
    "DensityModel",
    "FlowModel",
    "ImageAutoregressiveModel",
    "StepCache",
    "available",
    "build",
    "register",
]


class DensityModel(nn.Module):
    """Base of every zoo model: an exact density (or probability mass) over examples of
    shape ``event_shape``.

    Subclasses set ``event_shape`` in ``__init__`` and implement :meth:`log_prob` and
    :meth:`sample`; :meth:`loss` and :meth:`bits_per_dim` follow. ``cond`` is an optional
    per-example conditioning input (class labels ``(B,)`` or features ``(B, F)``) for the
    models that take one.
    """

    event_shape: tuple[int, ...]
    cond_shape: tuple[int, ...] | None = None  # one example's cond; None: the model takes none

    @property
    def num_dims(self) -> int:
        """The number of dimensions of one example, ``prod(event_shape)``."""
        return math.prod(self.event_shape)

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log-likelihood of each example, in nats: ``x (B, *event_shape) -> (B,)``."""
        raise NotImplementedError

    def loss(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood in nats per dimension (a scalar), the training loss;
        ``x`` must hold at least one example (an empty batch has no mean)."""
        log_prob = self.log_prob(x, cond)
        if not log_prob.numel():
            raise ValueError(f"{type(self).__name__}.loss: x must hold at least one example (the loss is their mean), got none")
        return -log_prob.mean() / self.num_dims

    def bits_per_dim(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood in bits per dimension (a scalar)."""
        return self.loss(x, cond) / math.log(2)

    def sample(
        self, n: int, cond: torch.Tensor | None = None, generator: torch.Generator | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """``n`` samples ``(n, *event_shape)``, drawn with ``generator`` (the default one if None)."""
        raise NotImplementedError

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Device and floating dtype of the model's parameters and buffers (CPU float32 if it has none)."""
        # Lazily: listing every parameter of a deep model costs milliseconds, per call.
        for t in itertools.chain(self.parameters(), self.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
        return torch.device("cpu"), torch.get_default_dtype()

    def _check_n(self, n: object) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{type(self).__name__}.sample: n must be a positive int, got {n!r}")
        return n

    def _check_cond(self, cond: torch.Tensor | None, batch: int, cond_shape: tuple[int, ...] | None) -> None:
        """``cond`` must be None when the model takes no conditioning (``cond_shape`` None),
        else a tensor ``(batch, *cond_shape)``."""
        name = type(self).__name__
        if cond_shape is None:
            if cond is not None:
                raise ValueError(f"{name}: this model takes no cond, got a {type(cond).__name__}")
            return
        if not isinstance(cond, torch.Tensor):
            raise TypeError(f"{name}: cond must be a tensor of shape {(batch, *cond_shape)}, got {type(cond).__name__}")
        if tuple(cond.shape) != (batch, *cond_shape):
            raise ValueError(f"{name}: cond must have shape {(batch, *cond_shape)}, got {tuple(cond.shape)}")

    def check_features(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """A feature ``cond`` (any real dtype) checked like :meth:`_check_cond`, with finite
        values, and cast to the model's dtype; None where the model takes none."""
        self._check_cond(cond, batch, self.cond_shape)
        if cond is None:
            return None
        check_finite(type(self).__name__, "cond", cond)
        return cond.to(self._device_dtype()[1])


@dataclass(kw_only=True, eq=False)
class StepCache:
    """What every sampling cache of an :class:`AutoregressiveModel` carries (model caches
    subclass it; models with nothing else to cache use it as is), made by
    :meth:`AutoregressiveModel.new_cache` in ``init_cache`` and checked by
    :meth:`AutoregressiveModel.begin_step` at every ``step``.

    Attributes:
        model: the model whose ``init_cache`` made it (a cache holds that model's weights,
            shapes and batch: another model's cache is refused).
        batch: ``B``, the number of sequences generated.
        device: where the cache's tensors are (``x_prev`` must be there too).
        position: the number of dimensions generated so far, the position in the
            generation order of the next one.
        conversions: the model's count of dtype/device conversions (``.to``, ``.double``,
            ...) when the cache was made: a cache made before a conversion is refused.
    """

    model: nn.Module = field(repr=False)
    batch: int
    device: torch.device
    position: int = 0
    conversions: int = 0


class AutoregressiveModel(DensityModel):
    """A discrete autoregressive model: ``x`` is a long tensor ``(B, *event_shape)`` with
    values in ``[0, categories)``.

    Subclasses set ``event_shape`` and ``categories`` (and ``cond_shape``, the shape of one
    example's ``cond``, if they are conditional) and implement:

    - :meth:`logits`: every conditional at once, ``x (B, *event_shape) -> (B, D, categories)``
      over the flattened dimensions in data order, entry ``d`` depending only on the
      dimensions before ``d`` in the generation order; it checks ``x`` (:meth:`check_data`)
      and ``cond`` first, for itself and for :meth:`log_prob`;
    - :meth:`init_cache` and :meth:`step`: the incremental form, one dimension per call, each
      step computing only what the new dimension needs;
    - :meth:`generation_order` if it is not the data order.

    ``init_cache`` starts with :meth:`check_init_cache` and makes its cache (a
    :class:`StepCache`, of ``cache_type``) with :meth:`new_cache`; ``step`` starts with
    :meth:`begin_step`, which checks the cache and ``x_prev`` and counts the step: every model
    refuses the same bad calls.
    """

    categories: int
    cache_type: type[StepCache] = StepCache  # what init_cache returns
    _conversions: int = 0  # dtype/device conversions so far (see _apply)

    def logits(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every dimension's conditional: ``(B, *event_shape) -> (B, D, categories)``."""
        raise NotImplementedError

    def init_cache(self, batch: int, cond: torch.Tensor | None = None) -> Any:
        """A fresh cache for generating ``batch`` examples (with their ``cond``)."""
        raise NotImplementedError

    def step(self, cache: Any, x_prev: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B, categories)`` of the next dimension in the generation order, given the
        value ``x_prev (B,)`` of the dimension generated last (None at the first step);
        updates ``cache`` in place."""
        raise NotImplementedError

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> AutoregressiveModel:
        # .to(), .double(), .cuda() ... all come here: count them, so that a sampling cache
        # made before one (tensors of the old dtype or device) is refused by begin_step.
        self._conversions += 1
        return super()._apply(fn, *args, **kwargs)

    def check_init_cache(self, batch: object, cond: torch.Tensor | None) -> int:
        """The checks every :meth:`init_cache` makes first: ``batch`` an int >= 1 and ``cond``
        of the model's ``cond_shape`` for ``batch`` examples, or None for a model that takes
        none (the values of labels are the model's to check); returns ``batch``."""
        check_int(f"{type(self).__name__}.init_cache", "batch", batch, minimum=1)
        self._check_cond(cond, batch, self.cond_shape)
        return batch

    def new_cache(self, batch: int, **fields: Any) -> StepCache:
        """The cache that :meth:`init_cache` returns, ``cache_type(**fields)``, stamped with
        this model, ``batch`` and the model's device for :meth:`begin_step`."""
        device, _ = self._device_dtype()
        return self.cache_type(model=self, batch=batch, device=device, conversions=self._conversions, **fields)

    def begin_step(self, cache: object, x_prev: object) -> tuple[int, torch.Tensor | None]:
        """The checks every :meth:`step` makes before touching its cache, then the step is
        counted (``cache.position`` advances); returns the position (in the generation order)
        of the dimension to generate and ``x_prev`` as long (or None). A refused call leaves
        the cache as it was.

        ``cache`` must come from this model's :meth:`init_cache` (not another model's, not
        from before a dtype/device conversion of the model), with a dimension left to
        generate; ``x_prev`` must be None exactly at the first step and otherwise a ``(B,)``
        integer tensor on the cache's device with values in ``[0, categories)``.

        Cost: attribute checks and one read of ``x_prev`` (a list for the small CPU batches
        of decoding, else one reduction): about 2 us a step on CPU."""
        op = f"{type(self).__name__}.step"
        if not isinstance(cache, self.cache_type):
            raise TypeError(f"{op}: cache must be a {self.cache_type.__name__} from init_cache, got {type(cache).__name__}")
        if cache.model is not self:
            raise ValueError(f"{op}: cache was made by another model's init_cache; make one with this model's")
        if cache.conversions != self._conversions:
            raise ValueError(f"{op}: cache was made before the model was moved or converted (.to, .double, ...); make a new one")
        t = cache.position
        if t >= self.num_dims:
            raise ValueError(f"{op}: all {self.num_dims} dimensions were already generated")
        if (x_prev is None) != (t == 0):
            raise ValueError(f"{op}: x_prev must be None at the first step and a tensor (B,) after it")
        if x_prev is not None:
            high = self.step_categories(t - 1)
            if not isinstance(x_prev, torch.Tensor):
                check_integer_values(op, "x_prev", x_prev, high)  # raises the TypeError
            if x_prev.shape != (cache.batch,):
                raise ValueError(f"{op}: x_prev must have shape ({cache.batch},), got {tuple(x_prev.shape)}")
            if x_prev.device != cache.device:
                raise ValueError(f"{op}: x_prev is on {x_prev.device} but the cache is on {cache.device}; they must match")
            # the few values of decoding are quicker to read as a list than by a reduction
            values = x_prev.tolist() if x_prev.dtype == torch.long and x_prev.is_cpu and cache.batch <= 64 else None
            if values is None or min(values) < 0 or max(values) >= high:
                x_prev = check_integer_values(op, "x_prev", x_prev, high).long()
        cache.position = t + 1
        return t, x_prev

    def step_categories(self, position: int) -> int:
        """The number of values of the dimension at ``position`` in the generation order
        (``x_prev``'s bound in :meth:`begin_step`): ``categories`` unless a subclass's
        dimensions have fewer."""
        return self.categories

    def generation_order(self) -> list[int]:
        """The flattened dimensions in the order they are generated (default: data order)."""
        return list(range(self.num_dims))

    def check_data(self, x: object, name: str = "x") -> torch.Tensor:
        """``x`` must be an integer tensor ``(B, *event_shape)`` with values in ``[0, categories)``."""
        model = type(self).__name__
        if isinstance(x, torch.Tensor) and (x.dim() != 1 + len(self.event_shape) or x.shape[1:] != self.event_shape):
            raise ValueError(f"{model}: {name} must have shape (B, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}")
        return check_integer_values(model, name, x, self.categories)

    def check_inputs(self, x: object, cond: torch.Tensor | None) -> torch.Tensor:
        """:meth:`check_data` of ``x``, and ``cond`` of the model's ``cond_shape`` for its
        batch (or None for a model that takes none); returns ``x``."""
        x = self.check_data(x)
        self._check_cond(cond, x.shape[0], self.cond_shape)
        return x

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        logp = torch.log_softmax(self.logits(x, cond), dim=-1)  # (B, D, K); logits checked x and cond
        return logp.gather(-1, x.reshape(x.shape[0], self.num_dims, 1).long()).squeeze(-1).sum(-1)

    def sample(
        self,
        n: int,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        cache: bool = True,
        progress: bool = False,
    ) -> torch.Tensor:
        """``n`` samples ``(n, *event_shape)`` long, one dimension at a time in
        :meth:`generation_order` (:func:`fastgen.sampling.sample`).

        ``cache=True`` steps the model incrementally (:meth:`init_cache` / :meth:`step`);
        ``cache=False`` recomputes the full :meth:`logits` for every dimension. Both turn the
        same uniforms (drawn up front, one per dimension in data order) into values, so they
        agree for the same ``generator``. ``progress`` shows a bar over the dimensions.
        """
        n = self._check_n(n)
        for name, flag in (("cache", cache), ("progress", progress)):
            if not isinstance(flag, bool):
                raise TypeError(f"{type(self).__name__}.sample: {name} must be a bool, got {type(flag).__name__}")
        self._check_cond(cond, n, self.cond_shape)
        device, dtype = self._device_dtype()
        return sampling.sample(
            self, n, cond, generator, cache=cache, progress=progress, device=device, dtype=dtype
        )


class ImageAutoregressiveModel(AutoregressiveModel):
    """An :class:`AutoregressiveModel` over images ``(C, H, W)`` with ``levels`` values per
    channel, generated pixel by pixel in raster order and, within a pixel, channel by channel
    (R, G, B), optionally conditioned on a class label (``cond``: long ``(B,)``).

    Subclasses call :meth:`init_image` first in ``__init__``; :meth:`labels` checks a
    ``cond`` and :meth:`scale` maps values to the ``[-1, 1]`` floats networks take. Those
    whose network reads that float image implement :meth:`logits_of_image`, and
    :meth:`logits` is the network on the checked data.
    """

    levels: int
    num_classes: int | None

    def init_image(self, shape: object, levels: object, num_classes: object) -> tuple[int, int, int]:
        """Checks and sets ``event_shape``, ``levels`` (= ``categories``), ``num_classes`` and
        ``cond_shape``; returns ``(C, H, W)``."""
        name = type(self).__name__
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) != 3:
            raise TypeError(f"{name}: shape must be a sequence (C, H, W) of three ints, got {shape!r}")
        C, H, W = (check_int(name, f"shape[{d}]", s, minimum=1) for d, s in enumerate(shape))
        self.levels = self.categories = check_int(name, "levels", levels, minimum=2)
        self.num_classes = None if num_classes is None else check_int(name, "num_classes", num_classes, minimum=1)
        self.event_shape = (C, H, W)
        self.cond_shape = None if num_classes is None else ()
        return C, H, W

    def generation_order(self) -> list[int]:
        """Pixel by pixel in raster order, the channels of each pixel in turn (data order is
        channel-major: index ``c * H * W + p`` at position ``p * C + c``)."""
        C, H, W = self.event_shape
        return [c * H * W + pixel for pixel in range(H * W) for c in range(C)]

    def labels(self, cond: torch.Tensor | None, batch: int, op: str) -> torch.Tensor | None:
        """``cond`` checked for ``batch`` examples (``op`` names the caller in errors): long
        labels ``(B,)`` in ``[0, num_classes)``, or None for an unconditional model."""
        self._check_cond(cond, batch, self.cond_shape)
        if cond is None:
            return None
        return check_integer_values(f"{type(self).__name__}.{op}", "cond", cond, self.num_classes).long()

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Values ``[0, levels)`` to floats in ``[-1, 1]`` of the model's dtype."""
        return x.to(self._device_dtype()[1]) * (2 / (self.levels - 1)) - 1

    def logits_of_image(self, image: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The network on a float image ``(B, C, H, W)`` (the data scaled to ``[-1, 1]``,
        differentiable) and labels ``(B,)`` or None: logits ``(B, C * H * W, levels)``."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.check_data(x)
        return self.logits_of_image(self.scale(x), self.labels(cond, x.shape[0], "logits"))


class FlowModel(DensityModel):
    r"""A normalizing flow: an invertible map :math:`z = f(x)` from the data to a latent
    variable with a simple density, and the change of variables

    .. math:: \log p(x) = \log p_Z(f(x)) + \log\left|\det \frac{\partial f}{\partial x}\right|.

    Subclasses set ``event_shape`` (and ``latent_shape`` if ``z`` has another shape, and
    ``cond_shape`` if they are conditional) and implement:

    - :meth:`transform` ``(x, cond) -> (z, log_terms)``: the data-to-latent direction and, per
      example, every log-likelihood term it accounts for besides :meth:`base_log_prob` of the
      final ``z`` (the log-determinants; a dequantization's ``-D log bins`` and
      ``-log q(u|x)``; the priors of latent parts factored out early, as in Glow's splits);
    - :meth:`inverse` ``(z, cond, temperature, generator) -> x``: the latent-to-data
      direction (latent parts factored out early are drawn inside it, scaled by
      ``temperature``); integer data comes back as its integer values.

    :meth:`log_prob` is ``base_log_prob(z) + log_terms``: exact for continuous data, and for
    integer data (models that dequantize in :meth:`transform`) the one-sample estimate of the
    dequantized bound (Theis et al. 2016; Ho et al. 2019), whose ``bits_per_dim`` is the
    standard figure. :meth:`sample` draws ``z`` from the base (standard normal unless
    overridden) scaled by ``temperature`` and inverts it.
    """

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one example's final ``z`` (default: ``event_shape``)."""
        return self.event_shape

    def check_data(self, x: object, name: str = "x", shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """``x`` must be a tensor ``(B, *shape)`` (default ``event_shape``) with the model's
        floating dtype (else TypeError) and device (else ValueError), and finite values."""
        model = type(self).__name__
        shape = self.event_shape if shape is None else shape
        want = f"({', '.join(['B', *map(str, shape)])})"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{model}: {name} must be a tensor of shape {want}, got {type(x).__name__}")
        if x.dim() != 1 + len(shape) or tuple(x.shape[1:]) != shape:
            raise ValueError(f"{model}: {name} must have shape {want}, got {tuple(x.shape)}")
        device, dtype = self._device_dtype()
        if x.dtype != dtype:
            raise TypeError(f"{model}: {name} must have the model's dtype {dtype}, got {x.dtype}")
        if x.device != device:
            raise ValueError(f"{model}: {name} must be on the model's device {device}, got {x.device}")
        check_finite(model, name, x)
        return x

    def check_latent(self, z: object) -> torch.Tensor:
        """The checks of :meth:`inverse`'s ``z``: :meth:`FlowModel.check_data` with the shape
        ``(B, *latent_shape)`` (finite values of the model's dtype and device)."""
        return FlowModel.check_data(self, z, "z", self.latent_shape)

    def check_temperature(self, temperature: object, op: str) -> float:
        """``temperature`` must be a finite real number >= 0 (``op`` names the caller)."""
        return check_real(op, "temperature", temperature, at_least=0)

    def transform(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, *event_shape) -> (z (B, *latent_shape), log_terms (B,))``."""
        raise NotImplementedError

    def inverse(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``z (B, *latent_shape) -> x (B, *event_shape)``."""
        raise NotImplementedError

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of the latent ``z`` per example, ``(B,)``: standard normal by default."""
        return -0.5 * (z.square() + math.log(2 * math.pi)).flatten(1).sum(1)

    def sample_base(self, n: int, generator: torch.Generator | None, temperature: float) -> torch.Tensor:
        """``n`` latents ``(n, *latent_shape)`` from the base scaled by ``temperature``."""
        device, dtype = self._device_dtype()
        return temperature * torch.randn(n, *self.latent_shape, generator=generator, device=device, dtype=dtype)

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        z, log_terms = self.transform(x, cond)
        return self.base_log_prob(z) + log_terms

    def sample(
        self,
        n: int,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """``n`` samples ``(n, *event_shape)``: base latents scaled by ``temperature`` (1 is
        the model's distribution, 0 its mode path), inverted."""
        n = self._check_n(n)
        temperature = self.check_temperature(temperature, f"{type(self).__name__}.sample")
        self._check_cond(cond, n, self.cond_shape)
        z = self.sample_base(n, generator, temperature)
        return self.inverse(z, cond, temperature=temperature, generator=generator)


# ------------------------------------------------------------------------------ registry

_MODELS: dict[str, type[DensityModel]] = {}

M = TypeVar("M", bound=type[DensityModel])


def register(name: str) -> Callable[[M], M]:
    """Class decorator: make a :class:`DensityModel` subclass buildable as ``build(name, ...)``."""

    def decorate(cls: M) -> M:
        if name in _MODELS:
            raise ValueError(f"register: a model named {name!r} is already registered ({_MODELS[name].__name__})")
        _MODELS[name] = cls
        return cls

    return decorate


def available() -> list[str]:
    """The names of every zoo model, sorted."""
    return sorted(_MODELS)


def build(name: str, **config: Any) -> DensityModel:
    """The zoo model ``name`` constructed with ``config`` (its constructor's keyword arguments)."""
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(f"build: unknown model {name!r}; available: {', '.join(available())}")
    return _MODELS[name](**config)
