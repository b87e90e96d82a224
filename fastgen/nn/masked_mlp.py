r"""MADE's masked network (Germain et al. 2015, "MADE: Masked Autoencoder for Distribution
Estimation"), shared by the zoo's MADE (one-hot inputs, softmax conditionals) and MAF / IAF
(real inputs, affine parameters), with its incremental evaluation one position at a time.

The network works in *ordering space*: position :math:`t` (0-based) is the :math:`t`-th
variable of the autoregressive order, and the caller permutes its data into that order.
Degrees (0-based):

- the ``I`` inputs of position :math:`t` have degree :math:`t`;
- hidden units have degrees in :math:`[0, D-2]`, sorted ascending in every layer; a unit of
  degree :math:`m` connects to the inputs / previous-layer units of degree :math:`\le m`;
- the ``O`` outputs of position :math:`t` connect to the last hidden units of degree
  :math:`< t` (position 0 gets only its bias and ``cond``).

So output :math:`t` depends only on the inputs of the positions before :math:`t`. Since
units are sorted by degree, every mask is a staircase (each row connects to a prefix of the
columns, growing with the row): :func:`fastgen.ops.masked_linear` skips its all-zero blocks,
and the incremental step touches only the blocks of the newly known position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..ops._checks import check_floating, check_int, check_labels, check_same_device, check_tensor, check_widths
from .masked_linear import MaskedLinear

__all__ = ["MaskedMLP", "MaskedMLPState", "check_cond"]


def check_cond(op: str, cond: object, batch: int, cond_features: int) -> None:
    """``cond`` must be None without ``cond_features``, else a tensor ``(batch, cond_features)``."""
    if not cond_features:
        if cond is not None:
            raise ValueError(f"{op}: this layer takes no cond (cond_features=0), got one")
    elif not isinstance(cond, torch.Tensor) or tuple(cond.shape) != (batch, cond_features):
        got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise ValueError(f"{op}: cond must be a Tensor of shape {(batch, cond_features)}, got {got}")


@dataclass
class MaskedMLPState:
    """The incremental state of :class:`MaskedMLP` for one mask set. Pre-activations are
    stored feature-major ``(units, B)``: every update adds into a range of rows (the units of
    degree at least some value, contiguous since the units are sorted), contiguous in this
    layout.

    Attributes:
        hidden: per hidden layer, its pre-activations ``(H_l, B)``.
        out: the outputs ``(D * O, B)``, position-major.
        bounds: per hidden layer, ``bounds[j]`` = the number of its units of degree ``< j``,
            ``j = 0..D``.
        inputs: the real inputs absorbed so far, ``(D, B)`` (``I == 1``), else None.
    """

    hidden: list[torch.Tensor]
    out: torch.Tensor
    bounds: list[list[int]]
    inputs: torch.Tensor | None


def _check_state(op: str, state: object) -> MaskedMLPState:
    if not isinstance(state, MaskedMLPState):
        raise TypeError(f"{op}: state must be a MaskedMLPState from init_state, got {type(state).__name__}")
    return state


class MaskedMLP(nn.Module):
    r"""MADE's masked MLP over ``D`` positions in ordering space: ``I`` inputs and ``O``
    outputs per position, ReLU hidden layers, the outputs of position :math:`t` depending
    only on the inputs of positions :math:`< t` (see the module docstring for the degrees).

    Mask set 0 spreads each layer's degrees evenly over :math:`[0, D-2]` (every degree
    present once the layer has :math:`\ge D-1` units); the others (``num_masks > 1``, MADE's
    connectivity-agnostic training) draw them as in the paper, uniformly from the previous
    layer's smallest degree to :math:`D-2`, from ``generator``. The degrees are buffers
    ``degrees<l>`` ``(M, H_l)``; :meth:`use_mask_set` loads a set's masks into the layers.

    ``cond`` ``(B, cond_features)`` feeds every hidden unit and output through unmasked
    linear maps without bias.

    Incremental evaluation (sampling): :meth:`init_state`, then for each position ``t``
    :meth:`outputs` (its ``O`` outputs, final once the positions before ``t`` are absorbed)
    and :meth:`absorb` (its value). Each absorbed position completes the hidden units of its
    degree and pushes them into the units and outputs they feed, so the ``D`` steps cost
    about one full forward in all.

    Args:
        dim: ``D >= 2``, the number of positions.
        hidden: the hidden layers' widths, an int (one layer) or a sequence of ints.
        outputs_per_position: ``O``.
        inputs_per_position: ``I`` (e.g. ``K`` one-hot inputs per categorical variable).
        cond_features: the size of the conditioning vector (0: none).
        num_masks: ``M``, the number of mask sets.
        generator: draws the random mask sets (``num_masks > 1``).

    Shape:
        ``(B, D * I) -> (B, D * O)``, both position-major.

    Example:
        >>> net = MaskedMLP(3, [8, 8], outputs_per_position=2)
        >>> net(torch.randn(5, 3)).shape
        torch.Size([5, 6])
    """

    def __init__(
        self,
        dim: int,
        hidden: int | Sequence[int],
        outputs_per_position: int,
        *,
        inputs_per_position: int = 1,
        cond_features: int = 0,
        num_masks: int = 1,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        self.dim = check_int(name, "dim", dim, minimum=2)
        self.hidden = check_widths(name, "hidden", hidden)
        self.outputs_per_position = check_int(name, "outputs_per_position", outputs_per_position, minimum=1)
        self.inputs_per_position = check_int(name, "inputs_per_position", inputs_per_position, minimum=1)
        self.cond_features = check_int(name, "cond_features", cond_features, minimum=0)
        self.num_masks = check_int(name, "num_masks", num_masks, minimum=1)

        sizes = [dim * inputs_per_position, *self.hidden, dim * outputs_per_position]
        self.layers = nn.ModuleList(MaskedLinear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.cond_layers = (
            nn.ModuleList(nn.Linear(cond_features, o, bias=False) for o in sizes[1:]) if cond_features else None
        )
        for layer, degrees in enumerate(self._draw_degrees(generator)):
            self.register_buffer(f"degrees{layer}", degrees)
        self._load_masks(0)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, hidden={list(self.hidden)}, outputs_per_position={self.outputs_per_position}, "
            f"inputs_per_position={self.inputs_per_position}, cond_features={self.cond_features}, "
            f"num_masks={self.num_masks}"
        )

    def _draw_degrees(self, generator: torch.Generator | None) -> list[torch.Tensor]:
        """Each hidden layer's degrees for every mask set: ``(M, H_l)`` long, rows sorted."""
        top = self.dim - 2
        per_set = []
        for m in range(self.num_masks):
            layers, low = [], 0
            for width in self.hidden:
                if m == 0:
                    degrees = torch.arange(width) * (top + 1) // width
                else:
                    degrees = torch.randint(low, top + 1, (width,), generator=generator).sort().values
                    low = int(degrees[0])
                layers.append(degrees)
            per_set.append(layers)
        return [torch.stack(layer) for layer in zip(*per_set)]

    def hidden_degrees(self, mask_set: int) -> list[torch.Tensor]:
        """The degrees of each hidden layer's units under mask set ``mask_set``: ``(H_l,)`` each."""
        return [getattr(self, f"degrees{layer}")[mask_set] for layer in range(len(self.hidden))]

    def _load_masks(self, mask_set: int) -> None:
        hidden = self.hidden_degrees(mask_set)
        positions = torch.arange(self.dim, device=hidden[0].device)
        inputs = positions.repeat_interleave(self.inputs_per_position)
        outputs = positions.repeat_interleave(self.outputs_per_position)
        for layer, (d_in, d_out) in enumerate(zip([inputs, *hidden], hidden)):
            self.layers[layer].set_mask(d_out[:, None] >= d_in[None, :])
        self.layers[-1].set_mask(outputs[:, None] > hidden[-1][None, :])

    def use_mask_set(self, mask_set: int) -> None:
        """Load mask set ``mask_set`` into the layers (a single set is loaded once, at
        construction, and saved with the layers)."""
        check_int(f"{type(self).__name__}.use_mask_set", "mask_set", mask_set, minimum=0, below=self.num_masks)
        if self.num_masks > 1:
            self._load_masks(mask_set)

    # -------------------------------------------------------------------- full forward

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, D * I)`` in ordering space, ``cond (B, cond_features)`` or None ->
        ``(B, D * O)``, with the mask set last loaded."""
        op = type(self).__name__
        width = self.dim * self.inputs_per_position
        if check_tensor(op, "x", x, ("B", "D * I")).shape[1] != width:
            raise ValueError(f"{op}: x must have shape (B, D * I) = (B, {width}), got shape {tuple(x.shape)}")
        self._check_cond(op, cond, x.shape[0])
        h = x
        for layer, masked in enumerate(self.layers):
            a = masked(h)
            if self.cond_layers is not None:
                a = a + self.cond_layers[layer](cond)
            h = torch.relu(a) if layer < len(self.hidden) else a
        return h

    def _check_cond(self, op: str, cond: object, batch: int) -> None:
        check_cond(op, cond, batch, self.cond_features)
        if cond is not None:
            check_same_device(op, "the network", self.cond_layers[0].weight, cond=cond)

    # ---------------------------------------------------------------- incremental form

    @torch.no_grad()
    def init_state(self, batch: int, cond: torch.Tensor | None = None, mask_set: int = 0) -> MaskedMLPState:
        """A fresh :class:`MaskedMLPState` for ``batch`` examples: each layer's
        pre-activations start at its bias plus its ``cond`` term."""
        op = f"{type(self).__name__}.init_state"
        check_int(op, "batch", batch, minimum=0)
        self._check_cond(op, cond, batch)
        check_int(op, "mask_set", mask_set, minimum=0, below=self.num_masks)
        pre = []
        for layer, masked in enumerate(self.layers):
            a = masked.bias[:, None].expand(-1, batch)
            if self.cond_layers is not None:
                a = a + self.cond_layers[layer](cond).t()
            pre.append(a.clone(memory_format=torch.contiguous_format))
        positions = torch.arange(self.dim + 1, device=pre[0].device)
        bounds = [torch.searchsorted(d, positions).tolist() for d in self.hidden_degrees(mask_set)]
        inputs = pre[0].new_empty(self.dim, batch) if self.inputs_per_position == 1 else None
        return MaskedMLPState(pre[:-1], pre[-1], bounds, inputs)

    def outputs(self, state: MaskedMLPState, position: int) -> torch.Tensor:
        """The ``O`` outputs of ``position``, ``(O, B)`` (a view into ``state``): final once
        every earlier position is absorbed."""
        _check_state(f"{type(self).__name__}.outputs", state)
        check_int(f"{type(self).__name__}.outputs", "position", position, minimum=0, below=self.dim)
        O = self.outputs_per_position
        return state.out[position * O : (position + 1) * O]

    @torch.no_grad()
    def absorb(self, state: MaskedMLPState, position: int, value: torch.Tensor) -> None:
        r"""Add ``position``'s inputs to ``state``: ``value`` ``(B,)`` floating is the input of
        a position with one input (``I == 1``); with ``I > 1``, ``(B,)`` integer is the index
        of the active one of the ``I`` one-hot inputs, in ``[0, I)``. ``0 <= position < D``.

        Invariant, on entry with ``j = position``: every hidden unit of degree ``< j`` is
        final and its activation is already added into every later unit (and output) it
        feeds, so each pre-activation holds its bias, ``cond`` term and the contributions of
        degrees ``< j`` (first layer, real inputs: only its bias and ``cond`` until its
        degree comes). Position ``j``'s value completes the units of degree ``j``, layer by
        layer. First layer: real inputs compute those units from the inputs ``0..j`` (one
        small GEMM; pushing each input into every later unit would be a rank-1 update per
        step, bound by memory and several times slower on the CPU); one-hot inputs add
        their weight column to every unit of degree ``>= j`` (a gather). Then each layer
        pushes the activations of its degree-``j`` units into the next layer's rows of
        degree ``>= j`` (outputs: positions ``> j``), a rank-(units of degree ``j``) update.
        Those blocks lie wholly inside the masks, so the weights are used unmasked; over the
        ``D`` positions every block is used once.
        """
        op = f"{type(self).__name__}.absorb"
        j, I = check_int(op, "position", position, minimum=0, below=self.dim), self.inputs_per_position
        batch = _check_state(op, state).out.shape[1]
        if I > 1:  # one reduction: an index outside [0, I) would read another position's weights
            value = check_labels(op, "value", value, I, batch)
        else:
            check_floating(op, "value", value)
            if value.shape != (batch,):
                raise ValueError(f"{op}: value must have shape ({batch},), got shape {tuple(value.shape)}")
        first = state.bounds[0][j]
        weight = self.layers[0].weight
        if I == 1:
            state.inputs[j] = value
            end = state.bounds[0][j + 1]
            state.hidden[0][first:end].addmm_(weight[first:end, : j + 1], state.inputs[: j + 1])
        else:
            state.hidden[0][first:] += weight[first:, j * I : (j + 1) * I][:, value]
        for layer, bounds in enumerate(state.bounds):
            lo, hi = bounds[j], bounds[j + 1]
            if lo == hi:
                continue
            h = torch.relu(state.hidden[layer][lo:hi])  # (units of degree j, B)
            if layer + 1 < len(state.hidden):
                rows, target = state.bounds[layer + 1][j], state.hidden[layer + 1]
            else:
                rows, target = (j + 1) * self.outputs_per_position, state.out
            target[rows:].addmm_(self.layers[layer + 1].weight[rows:, lo:hi], h)
