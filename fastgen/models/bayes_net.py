r"""Bayes net: a directed graphical model over discrete variables (CS294-158 lecture 1;
Russell & Norvig, "Artificial Intelligence: A Modern Approach", ch. 14)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..ops._checks import check_int
from .base import AutoregressiveModel, StepCache, register
from .histogram import log_frequencies

__all__ = ["BayesNet", "BayesNetCache"]

# Russell & Norvig's burglary network, as in CS294-158 lecture 1: (name, parents, P(true | parents)
# indexed by the parents' values, 0 = false and 1 = true).
_ALARM = (
    ("Burglary", [], 0.001),
    ("Earthquake", [], 0.002),
    ("Alarm", [0, 1], [[0.001, 0.29], [0.94, 0.95]]),
    ("JohnCalls", [2], [0.05, 0.90]),
    ("MaryCalls", [2], [0.01, 0.70]),
)


@dataclass
class BayesNetCache(StepCache):
    """The sampling cache of :class:`BayesNet` (with the :class:`~fastgen.models.StepCache`
    fields): ``x`` ``(B, V)`` long, the values generated so far (a parent is always generated
    before its children), zeros for the others."""

    x: torch.Tensor


@register("bayes_net")
class BayesNet(AutoregressiveModel):
    r"""A Bayes net over ``V`` discrete variables (Pearl 1988; CS294-158 lecture 1):

    .. math::

        p(x) = \prod_{i=1}^{V} p(x_i \mid x_{\mathrm{pa}(i)})

    with one conditional probability table (CPT) per variable, ``(*parent cardinalities,
    cardinality)``: entry ``[u_1, ..., u_m, v]`` is :math:`p(x_i = v \mid x_{\mathrm{pa}(i)} =
    u)`. The CPTs are softmax-parametrized logits, so the net trains by SGD on :meth:`loss`
    too; :meth:`fit_counts` sets them to their maximum-likelihood estimate in closed form.

    As an :class:`AutoregressiveModel` over ``x (B, V)`` (long), ``log_prob`` is the exact sum
    of the log CPT entries and sampling is ancestral: the variables are generated in a
    topological order of the graph (:meth:`generation_order`), each from its CPT row given its
    already generated parents. ``categories`` is the largest cardinality; a variable with fewer
    values gets ``-inf`` logits for the values it does not have, and :meth:`check_data` checks
    every variable against its own cardinality.

    Args:
        parents: ``parents[i]`` is the list of the parents' indices of variable ``i``; the
            graph must be acyclic (any numbering of the variables).
        cardinalities: the number of values of each variable (each ``>= 2``).
        cpts: optional probability tables, ``cpts[i]`` of shape ``(*[cardinalities[j] for j in
            parents[i]], cardinalities[i])`` with non-negative rows summing to 1; default: uniform.
        names: optional variable names (default ``x0, x1, ...``).

    Example:
        >>> net = BayesNet.alarm()
        >>> net.names
        ('Burglary', 'Earthquake', 'Alarm', 'JohnCalls', 'MaryCalls')
        >>> x = torch.tensor([[0, 0, 1, 1, 1]])  # an alarm without burglary nor earthquake, both call
        >>> round(net.log_prob(x).exp().item(), 6)  # 0.999 * 0.998 * 0.001 * 0.90 * 0.70
        0.000628
        >>> net.sample(2, generator=torch.Generator().manual_seed(0))
        tensor([[0, 0, 0, 0, 0],
                [0, 0, 0, 0, 0]])
    """

    cache_type = BayesNetCache

    def __init__(
        self,
        parents: Sequence[Sequence[int]],
        cardinalities: Sequence[int],
        cpts: Sequence[torch.Tensor] | None = None,
        names: Sequence[str] | None = None,
    ):
        super().__init__()
        self.parents, self.cardinalities = _check_graph(parents, cardinalities)
        num_vars = len(self.cardinalities)
        self.names = _check_names(names, num_vars)
        self.event_shape = (num_vars,)
        self.categories = max(self.cardinalities)
        self._order = _topological_order(self.parents)
        shapes = [self._cpt_shape(i) for i in range(num_vars)]
        self.cpt_logits = nn.ParameterList(nn.Parameter(torch.zeros(shape)) for shape in shapes)
        if cpts is not None:
            self._set_cpts(cpts)

    @classmethod
    def alarm(cls) -> BayesNet:
        """The burglary network of Russell & Norvig (CS294-158 lecture 1): Burglary and
        Earthquake cause the Alarm, which makes JohnCalls and MaryCalls; every variable is
        binary (0 = false, 1 = true)."""
        names, parents, p_true = zip(*_ALARM)
        p_true = [torch.tensor(p, dtype=torch.float64) for p in p_true]
        cpts = [torch.stack([1 - p, p], dim=-1) for p in p_true]
        return cls(list(parents), [2] * len(names), cpts, names=names)

    def cpts(self) -> list[torch.Tensor]:
        """The conditional probability tables, ``(*parent cardinalities, cardinality)`` each."""
        return [torch.softmax(logits, dim=-1) for logits in self.cpt_logits]

    def generation_order(self) -> list[int]:
        return list(self._order)

    def check_data(self, x: object, name: str = "x") -> torch.Tensor:
        x = super().check_data(x, name)
        for i, card in enumerate(self.cardinalities):
            top = int(x[:, i].max()) if card < self.categories and x.numel() else 0
            if top >= card:
                raise ValueError(f"BayesNet: {name}[:, {i}] ({self.names[i]}) must have values in [0, {card}), got {top}")
        return x

    @torch.no_grad()
    def fit_counts(self, x: torch.Tensor, smoothing: float = 0.0) -> BayesNet:
        """Set every CPT to its maximum likelihood estimate from the examples ``x (N, V)``, the
        frequency of each value among the examples with the same parent values, with
        ``smoothing`` pseudo-counts added to every entry; a parent configuration that never
        occurs (with ``smoothing = 0``) gets the uniform distribution. Returns the model."""
        x = self.check_data(x).long()
        if x.shape[0] == 0:
            raise ValueError("BayesNet.fit_counts: x must hold at least one example")
        for i, logits in enumerate(self.cpt_logits):
            shape = self._cpt_shape(i)
            columns = [*self.parents[i], i]
            flat = torch.zeros_like(x[:, 0])
            for j, size in zip(columns, shape):  # row-major index into the table
                flat = flat * size + x[:, j]
            counts = torch.bincount(flat, minlength=logits.numel()).view(shape).to(logits)
            logits.copy_(log_frequencies(counts, smoothing, "BayesNet.fit_counts"))
        return self

    def logits(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.check_inputs(x, cond).long()
        return torch.stack([self._conditional(i, x) for i in range(len(self.cardinalities))], dim=1)

    def init_cache(self, batch: int, cond: torch.Tensor | None = None) -> BayesNetCache:
        batch = self.check_init_cache(batch, cond)
        device = self.cpt_logits[0].device
        return self.new_cache(batch, x=torch.zeros(batch, len(self.cardinalities), dtype=torch.long, device=device))

    def step(self, cache: BayesNetCache, x_prev: torch.Tensor | None) -> torch.Tensor:
        t, x_prev = self.begin_step(cache, x_prev)
        if x_prev is not None:
            cache.x[:, self._order[t - 1]] = x_prev
        return self._conditional(self._order[t], cache.x)

    def step_categories(self, position: int) -> int:
        return self.cardinalities[self._order[position]]

    def _cpt_shape(self, i: int) -> tuple[int, ...]:
        return (*(self.cardinalities[j] for j in self.parents[i]), self.cardinalities[i])

    def _conditional(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, categories)`` of variable ``i`` given its parents' values in ``x (B, V)``."""
        table = self.cpt_logits[i]
        if self.parents[i]:
            rows = table[tuple(x[:, j] for j in self.parents[i])]  # (B, card_i)
        else:
            rows = table.expand(x.shape[0], -1)
        missing = self.categories - self.cardinalities[i]
        if missing == 0:
            return rows
        return torch.cat([rows, rows.new_full((rows.shape[0], missing), float("-inf"))], dim=-1)

    @torch.no_grad()
    def _set_cpts(self, cpts: Sequence[torch.Tensor]) -> None:
        if not isinstance(cpts, Sequence) or len(cpts) != len(self.cardinalities):
            raise ValueError(f"BayesNet: cpts must be a sequence of {len(self.cardinalities)} tables, got {cpts!r}")
        for i, (table, logits) in enumerate(zip(cpts, self.cpt_logits)):
            if not isinstance(table, torch.Tensor) or not table.is_floating_point():
                raise TypeError(f"BayesNet: cpts[{i}] must be a floating-point tensor, got {table!r}")
            if tuple(table.shape) != tuple(logits.shape):
                raise ValueError(f"BayesNet: cpts[{i}] must have shape {tuple(logits.shape)}, got {tuple(table.shape)}")
            table = table.double()
            if not bool(torch.isfinite(table).all()) or bool((table < 0).any()):
                raise ValueError(f"BayesNet: cpts[{i}] must hold finite probabilities >= 0")
            if not torch.allclose(table.sum(-1), torch.ones((), dtype=table.dtype), atol=1e-6):
                raise ValueError(f"BayesNet: every row of cpts[{i}] (last dimension) must sum to 1")
            logits.copy_(table.log())


def _check_graph(parents: object, cardinalities: object) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    if not isinstance(cardinalities, Sequence) or isinstance(cardinalities, str) or len(cardinalities) == 0:
        raise ValueError(f"BayesNet: cardinalities must be a non-empty sequence of ints, got {cardinalities!r}")
    cards = tuple(check_int("BayesNet", f"cardinalities[{i}]", c, minimum=2) for i, c in enumerate(cardinalities))
    if not isinstance(parents, Sequence) or isinstance(parents, str) or len(parents) != len(cards):
        raise ValueError(f"BayesNet: parents must be a sequence of {len(cards)} lists (one per variable), got {parents!r}")
    checked = []
    for i, pa in enumerate(parents):
        if not isinstance(pa, Sequence) or isinstance(pa, str):
            raise TypeError(f"BayesNet: parents[{i}] must be a list of variable indices, got {pa!r}")
        for j in pa:
            if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < len(cards) or j == i:
                raise ValueError(
                    f"BayesNet: parents[{i}] must hold indices of other variables in [0, {len(cards)}), got {list(pa)}"
                )
        if len(set(pa)) != len(pa):
            raise ValueError(f"BayesNet: parents[{i}] lists a parent twice: {list(pa)}")
        checked.append(tuple(pa))
    return tuple(checked), cards


def _check_names(names: object, num_vars: int) -> tuple[str, ...]:
    if names is None:
        return tuple(f"x{i}" for i in range(num_vars))
    if isinstance(names, str) or not isinstance(names, Sequence) or len(names) != num_vars:
        raise ValueError(f"BayesNet: names must be a sequence of {num_vars} strings, got {names!r}")
    if not all(isinstance(name, str) for name in names):
        raise TypeError(f"BayesNet: names must be strings, got {names!r}")
    return tuple(names)


def _topological_order(parents: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """The variables ordered parents first (the smallest ready index next, so an already
    topological numbering keeps its order); ValueError if the graph has a cycle."""
    order: list[int] = []
    placed: set[int] = set()
    while len(order) < len(parents):
        ready = [i for i in range(len(parents)) if i not in placed and placed.issuperset(parents[i])]
        if not ready:
            cycle = sorted(set(range(len(parents))) - placed)
            raise ValueError(f"BayesNet: the graph of parents has a cycle among variables {cycle}")
        order.append(ready[0])
        placed.add(ready[0])
    return tuple(order)
