r"""Recurrent autoregressive model: an LSTM over the dimensions of a discrete sequence (Graves
2013, "Generating Sequences With Recurrent Neural Networks"; CS294-158 lecture 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..ops._checks import check_int, check_integer_values
from .base import AutoregressiveModel, StepCache, register

__all__ = ["RecurrentAR", "RecurrentCache"]


@dataclass
class RecurrentCache(StepCache):
    """The sampling cache of :class:`RecurrentAR` (with the :class:`~fastgen.models.StepCache`
    fields): the LSTM state after the dimensions generated so far, and the embedding of the
    class labels (if any)."""

    h: torch.Tensor  # (num_layers, B, hidden)
    c: torch.Tensor  # (num_layers, B, hidden)
    label: torch.Tensor | None  # (B, hidden)


@register("rnn")
class RecurrentAR(AutoregressiveModel):
    r"""An LSTM autoregressive model over ``dim`` discrete dimensions (Graves 2013; LSTM of
    Hochreiter & Schmidhuber 1997):

    .. math::

        p(x) = \prod_{t=1}^{D} p(x_t \mid x_{<t}), \qquad
        p(x_t \mid x_{<t}) = \operatorname{softmax}(W h_t + b), \quad
        h_t = \operatorname{LSTM}(h_{t-1}, e(x_{t-1}) + e_y)

    The input at step ``t`` is a learned embedding of the previous value (a learned start
    vector :math:`e(x_0)` at ``t = 1``), plus the embedding :math:`e_y` of the class label when
    the model is conditional (``num_classes`` set; ``cond`` is then a long tensor ``(B,)``).
    :meth:`logits` runs the whole sequence through ``nn.LSTM`` at once (training); the sampling
    cache is the LSTM state ``(h, c)``, and :meth:`step` advances it by one step of the same
    ``nn.LSTM`` (same weights, so cached and naive sampling agree).

    Args:
        dim: the number of dimensions ``D`` (``x`` is a long tensor ``(B, dim)``), ``>= 1``.
        categories: values per dimension, ``>= 2``.
        hidden: the LSTM's hidden size (and the embeddings' size), ``>= 1``.
        num_layers: stacked LSTM layers, ``>= 1``.
        num_classes: the number of class labels for conditional generation, or None.

    Example:
        >>> model = RecurrentAR(dim=6, categories=3, hidden=16)
        >>> x = model.sample(4, generator=torch.Generator().manual_seed(0))
        >>> x.shape, model.log_prob(x).shape
        (torch.Size([4, 6]), torch.Size([4]))
        >>> labelled = RecurrentAR(dim=6, categories=3, hidden=16, num_classes=10)
        >>> labelled.sample(2, cond=torch.tensor([3, 7])).shape
        torch.Size([2, 6])
    """

    cache_type = RecurrentCache

    def __init__(self, dim: int, categories: int, hidden: int, *, num_layers: int = 1, num_classes: int | None = None):
        super().__init__()
        self.dim = check_int("RecurrentAR", "dim", dim, minimum=1)
        self.categories = check_int("RecurrentAR", "categories", categories, minimum=2)
        check_int("RecurrentAR", "hidden", hidden, minimum=1)
        check_int("RecurrentAR", "num_layers", num_layers, minimum=1)
        if num_classes is not None:
            check_int("RecurrentAR", "num_classes", num_classes, minimum=1)
        self.num_classes = num_classes
        self.event_shape = (dim,)
        self.cond_shape = None if num_classes is None else ()
        self.embedding = nn.Embedding(categories + 1, hidden)  # row `categories`: the start input
        self.label_embedding = None if num_classes is None else nn.Embedding(num_classes, hidden)
        self.lstm = nn.LSTM(hidden, hidden, num_layers, batch_first=True)
        self.head = nn.Linear(hidden, categories)

    def logits(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.check_inputs(x, cond).long()  # values in [0, categories): the start token is never data
        start = torch.full_like(x[:, :1], self.categories)
        inputs = self.embedding(torch.cat([start, x[:, :-1]], dim=1))  # (B, D, hidden)
        label = self._label(cond)
        if label is not None:
            inputs = inputs + label[:, None]
        out, _ = self.lstm(inputs)  # (B, D, hidden)
        return self.head(out)  # (B, D, categories)

    def init_cache(self, batch: int, cond: torch.Tensor | None = None) -> RecurrentCache:
        batch = self.check_init_cache(batch, cond)
        h = self.head.weight.new_zeros(self.lstm.num_layers, batch, self.lstm.hidden_size)
        return self.new_cache(batch, h=h, c=torch.zeros_like(h), label=self._label(cond))

    def step(self, cache: RecurrentCache, x_prev: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B, categories)`` of the next dimension, given ``x_prev (B,)``, the value
        generated last (None at the first step: the start input); updates ``cache``."""
        _, x_prev = self.begin_step(cache, x_prev)
        if x_prev is None:
            x_prev = torch.full((cache.batch,), self.categories, dtype=torch.long, device=cache.device)
        inputs = self.embedding(x_prev)  # (B, hidden)
        if cache.label is not None:
            inputs = inputs + cache.label
        out, (cache.h, cache.c) = self.lstm(inputs[:, None], (cache.h, cache.c))
        return self.head(out[:, 0])

    def _label(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        """The label embedding ``(B, hidden)``, after checking the labels (their shape was
        checked by the base)."""
        if self.label_embedding is None:
            return None
        check_integer_values("RecurrentAR", "cond (class labels)", cond, self.num_classes)
        return self.label_embedding(cond.long())
