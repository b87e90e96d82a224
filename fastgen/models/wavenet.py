r"""WaveNet (van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio"): stacks
of dilated causal gated residual blocks over 8-bit mu-law audio, with a categorical output
per sample, and the cached sampling of Paine et al. 2016 ("Fast Wavenet Generation
Algorithm"): every block keeps a queue of its past inputs, so one new sample costs one
position per layer, whatever the length of the sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import GatedResidualBlock
from ..ops.gated_residual_block import (
    _FAST_STACK_STEP_OPS,
    _FAST_STEP_OPS,
    _STEP_BACKENDS,
    gated_residual_block_step_ref,
)
from ..ops._checks import check_int, check_integer_values, check_tensor
from .base import AutoregressiveModel, StepCache, register

__all__ = ["WaveNet", "WaveNetCache"]


@dataclass
class WaveNetCache(StepCache):
    """What :meth:`WaveNet.step` carries from one sample to the next (Paine et al.'s queues),
    with the :class:`~fastgen.models.StepCache` fields (``position``: the steps taken so far).

    Attributes:
        states: per block, its ring buffer of past inputs ``(B, R, (K-1) * dilation)``
            (zeros before the start, which is the full forward's causal zero padding).
        time: ``(B,)`` int64, ``position`` as the kernels read it (the ring buffers' write
            slot is ``time mod (K-1) * dilation``).
        gate_bias: per block, ``(B, 2G)``: the dilated conv's bias plus the projection of the
            class embedding, computed once for the whole sampling call.
        start: ``(B, R)``, the input of the first step (the learned start vector).
        stack_step: steps every block, ``(h_t, *blocks) -> (h_out_t, sum of skip_t)`` (see
            :func:`_stack_step_kernel`).
        blocks: the arguments of ``stack_step`` after ``h_t``: the per-block lists (states,
            conv weights, gate biases, residual weights and biases, skip weights and
            biases, dilations) and ``time``.
    """

    states: list[torch.Tensor]
    time: torch.Tensor
    gate_bias: list[torch.Tensor]
    start: torch.Tensor
    stack_step: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    blocks: tuple[Any, ...] = field(default_factory=tuple)


def _stack_step_kernel(like: torch.Tensor) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """One time step through every block, for tensors like ``like``, as a function of
    ``(h_t, states, conv_weights, gate_biases, res_weights, res_biases, skip_weights,
    skip_biases, dilations, position)`` returning the last block's ``h_out_t`` and the sum of
    the blocks' ``skip_t``; block ``l`` is :func:`fastgen.ops.gated_residual_block_step` with
    ``cond_t = gate_biases[l]`` (its conv bias and class projection) and no conv bias.

    On the backend that the selection picks (the ``backend`` argument,
    :func:`fastgen.use_backend`, the environment, or the device): the C++ backend steps the
    whole stack in one call (``fastgen::gated_residual_stack_step``); the others loop over
    the blocks calling the step kernel directly. :meth:`WaveNet.step` skips the public
    function's argument checks (about twice the kernel itself per block at batch 1): the
    cache's tensors are built to the right shapes, dtypes and devices once by
    :meth:`WaveNet.init_cache`.
    """
    name = _STEP_BACKENDS.select(None, like)
    if name in _FAST_STACK_STEP_OPS:
        return _FAST_STACK_STEP_OPS[name]
    block_step = _FAST_STEP_OPS.get(name)

    def loop(h, states, conv_weights, gate_biases, res_weights, res_biases, skip_weights, skip_biases, dilations, position):
        skips = []
        for block in zip(states, conv_weights, gate_biases, res_weights, res_biases, skip_weights, skip_biases, dilations):
            state, conv_weight, gate_bias, res_weight, res_bias, skip_weight, skip_bias, dilation = block
            if block_step is None:
                h, skip = gated_residual_block_step_ref(
                    h, state, conv_weight, None, res_weight, res_bias, skip_weight, skip_bias,
                    dilation=dilation, cond_t=gate_bias, position=position,
                )
            else:
                h, skip = block_step(
                    h, state, conv_weight, None, res_weight, res_bias, skip_weight, skip_bias, gate_bias, dilation, position
                )
            skips.append(skip)
        return h, torch.stack(skips).sum(0)  # one stacked sum instead of a Python-level add per block

    return loop


@register("wavenet")
class WaveNet(AutoregressiveModel):
    r"""WaveNet over sequences of ``length`` discrete samples with ``levels`` values each
    (e.g. 8-bit mu-law audio, :func:`fastgen.data.synthetic_audio`):

    .. math::

        p(x \mid y) = \prod_{t=0}^{T-1} p(x_t \mid x_{<t}, y), \qquad
        p(x_t \mid x_{<t}, y) = \operatorname{softmax}\Big(W_2 \operatorname{ReLU}\big(W_1
        \operatorname{ReLU}(\textstyle\sum_l s^l_t) + b_1\big) + b_2\Big)

    - **Input** (the causal conv with its current tap masked, "mask A"): the input of time
      ``t`` is an embedding :math:`h^0_t = E[x_{t-1}]` of the previous sample (a learned
      1x1 conv of its one-hot), and a learned start vector at ``t = 0``.
    - **Blocks** (:class:`fastgen.nn.GatedResidualBlock`): ``stacks`` stacks of
      ``layers_per_stack`` blocks with dilations :math:`1, 2, 4, \dots,
      2^{\text{layers\_per\_stack}-1}`; block :math:`l` computes
      :math:`z = W_c * h^{l-1} + b_c + V_l e_y`, the gate :math:`g = \tanh(z_{:G}) \odot
      \sigma(z_{G:})`, the residual :math:`h^l = h^{l-1} + W_r g + b_r` and the skip
      :math:`s^l = W_s g + b_s`.
    - **Global conditioning** (``num_classes`` set): a learned embedding :math:`e_y`
      (``R`` channels) of the class label ``y`` (``cond``, long ``(B,)``) enters every
      block through its own 1x1 projection :math:`V_l`.
    - **Head**: the sum of the skips, ReLU, 1x1 conv, ReLU, 1x1 conv to ``levels`` logits.

    The logits of time ``t`` see the samples ``t - receptive_field, ..., t - 1``
    (``receptive_field`` :math:`= 1 + \text{stacks} \cdot (K-1)(2^{\text{layers\_per\_stack}}
    - 1)`, 2047 for 2 stacks of 10 layers with ``K = 2``).

    **Cached sampling** (Paine et al. 2016): each block keeps a ring buffer of its last
    ``(K-1) * dilation`` inputs (its queue), preallocated for the batch by
    :meth:`init_cache`; :meth:`step` runs every block at the new time step only
    (:func:`fastgen.ops.gated_residual_block_step`, reading the dilated past from the
    queue and pushing the new input into it), so a step costs O(layers), independent of
    the length. Everything that is constant during a sampling call (the class
    projections folded into the gate biases, the start vector expanded to the batch) is
    computed once in :meth:`init_cache`.

    Args:
        levels: ``K_out >= 2``, the values of each sample (256 for 8-bit mu-law).
        residual_channels: ``R``, the blocks' input/output channels (and the embeddings').
        gate_channels: ``G``; each dilated conv has ``2G`` outputs (tanh and sigmoid
            halves), so ``G = 64`` is the paper's "gate 2 x 64".
        skip_channels: ``S``, the skip outputs' channels and the head's width.
        layers_per_stack: blocks per stack (dilations up to ``2^(layers_per_stack-1)``).
        stacks: the number of stacks.
        kernel_size: ``K >= 2`` of the dilated convs.
        num_classes: the number of class labels for global conditioning, or None.
        length: ``T``, the number of samples of a sequence (``x`` is long ``(B, T)``).

    Shape:
        ``x``: ``(B, T)`` long in ``[0, levels)``; ``cond``: ``(B,)`` long in
        ``[0, num_classes)`` or None; :meth:`logits`: ``(B, T, levels)``.

    Example:
        >>> model = WaveNet(levels=16, residual_channels=8, gate_channels=8, skip_channels=16,
        ...                 layers_per_stack=3, stacks=2, num_classes=3, length=40)
        >>> model.receptive_field
        15
        >>> labels = torch.tensor([0, 2])
        >>> x = model.sample(2, labels, generator=torch.Generator().manual_seed(0))
        >>> x.shape, model.log_prob(x, labels).shape
        (torch.Size([2, 40]), torch.Size([2]))
    """

    cache_type = WaveNetCache

    def __init__(
        self,
        levels: int = 256,
        residual_channels: int = 64,
        gate_channels: int = 64,
        skip_channels: int = 256,
        layers_per_stack: int = 10,
        stacks: int = 2,
        kernel_size: int = 2,
        num_classes: int | None = None,
        *,
        length: int = 512,
    ):
        super().__init__()
        name = type(self).__name__
        self.levels = self.categories = check_int(name, "levels", levels, minimum=2)
        R = check_int(name, "residual_channels", residual_channels, minimum=1)
        G = check_int(name, "gate_channels", gate_channels, minimum=1)
        S = check_int(name, "skip_channels", skip_channels, minimum=1)
        check_int(name, "layers_per_stack", layers_per_stack, minimum=1)
        check_int(name, "stacks", stacks, minimum=1)
        check_int(name, "kernel_size", kernel_size, minimum=2)
        if num_classes is not None:
            check_int(name, "num_classes", num_classes, minimum=1)
        self.length = check_int(name, "length", length, minimum=1)
        self.num_classes = num_classes
        self.event_shape = (length,)
        self.cond_shape = None if num_classes is None else ()
        self.residual_channels, self.gate_channels, self.skip_channels = R, G, S
        self.layers_per_stack, self.stacks, self.kernel_size = layers_per_stack, stacks, kernel_size

        self.embedding = nn.Embedding(levels, R)  # the mask-A input conv: a 1x1 conv of the previous one-hot
        self.start = nn.Parameter(torch.randn(R))  # the input at t = 0 (there is no previous sample)
        self.label_embedding = None if num_classes is None else nn.Embedding(num_classes, R)
        cond_channels = None if num_classes is None else R
        self.blocks = nn.ModuleList(
            GatedResidualBlock(R, G, S, kernel_size, dilation=2**layer, cond_channels=cond_channels)
            for _ in range(stacks)
            for layer in range(layers_per_stack)
        )
        self.head1 = nn.Linear(S, S)
        self.head2 = nn.Linear(S, levels)

    @property
    def receptive_field(self) -> int:
        """The number of past samples the logits of one time step see."""
        return 1 + self.stacks * (self.kernel_size - 1) * (2**self.layers_per_stack - 1)

    # ------------------------------------------------------------------------ full forward

    def logits(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.check_data(x)
        return self.logits_from_embedding(self.embedding(x.long()).transpose(1, 2), cond)

    def logits_from_embedding(self, embedded: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`logits` from the embedding of the samples instead of the samples:
        ``embedded`` ``(B, R, T)`` (``embedded[:, :, t] = E[x_t]``, not yet shifted) ->
        ``(B, T, levels)``. Differentiable in ``embedded`` (the causality tests take its
        Jacobian)."""
        op = f"{type(self).__name__}.logits_from_embedding"
        check_tensor(op, "embedded", embedded, ("B", "R", "T"))
        B, R, T = embedded.shape
        if R != self.residual_channels or T < 1:
            raise ValueError(
                f"{op}: embedded must have shape (B, {self.residual_channels}, T) with T >= 1 "
                f"(R = residual_channels), got {tuple(embedded.shape)}"
            )
        if embedded.dtype != self.start.dtype or embedded.device != self.start.device:
            raise TypeError(
                f"{op}: embedded must have the model's dtype {self.start.dtype} and device {self.start.device}, "
                f"got {embedded.dtype} on {embedded.device}"
            )
        self._check_cond(cond, B, self.cond_shape)
        # Shift right by one: time t sees x_{t-1}, and the start vector at t = 0.
        h = torch.cat([self.start.expand(B, 1, -1).transpose(1, 2), embedded[:, :, : T - 1]], dim=2)
        label = self._label(cond)
        label = None if label is None else label[:, :, None]  # (B, R, 1): broadcast over time
        skip = None
        for block in self.blocks:
            h, s = block(h, label)
            skip = s if skip is None else skip + s
        out = F.relu(self.head1(F.relu(skip).transpose(1, 2)))  # (B, T, S)
        return self.head2(out)  # (B, T, levels)

    def _label(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        """The class embedding ``(B, R)`` after checking the labels (their shape was checked
        by the base), or None for an unconditional model."""
        if self.label_embedding is None:
            return None
        check_integer_values(type(self).__name__, "cond (class labels)", cond, self.num_classes)
        return self.label_embedding(cond.long())

    # --------------------------------------------------------------------- cached sampling

    def init_cache(self, batch: int, cond: torch.Tensor | None = None) -> WaveNetCache:
        batch = self.check_init_cache(batch, cond)
        with torch.no_grad():
            label = self._label(cond)
            states = [block.init_state(batch) for block in self.blocks]
            time = torch.zeros(batch, dtype=torch.long, device=self.start.device)
            gate_bias = []
            for block in self.blocks:
                bias = block.conv_bias.expand(batch, -1)
                if label is not None:
                    bias = bias + F.linear(label, block.cond_weight)
                gate_bias.append(bias.contiguous())
            start = self.start.expand(batch, -1).contiguous()
        per_block = [
            [getattr(block, name) for block in self.blocks]
            for name in ("conv_weight", "res_weight", "res_bias", "skip_weight", "skip_bias", "dilation")
        ]
        conv_weights, res_weights, res_biases, skip_weights, skip_biases, dilations = per_block
        blocks = (states, conv_weights, gate_bias, res_weights, res_biases, skip_weights, skip_biases, dilations, time)
        return self.new_cache(
            batch, states=states, time=time, gate_bias=gate_bias, start=start,
            stack_step=_stack_step_kernel(start), blocks=blocks,
        )

    def step(self, cache: WaveNetCache, x_prev: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B, levels)`` of the next sample, given ``x_prev (B,)``, the sample
        generated last (None at the first step); updates ``cache`` in place."""
        _, x_prev = self.begin_step(cache, x_prev)
        h = cache.start if x_prev is None else F.embedding(x_prev, self.embedding.weight)
        _, skip = cache.stack_step(h, *cache.blocks)
        cache.time += 1
        out = F.relu(F.linear(skip.relu_(), self.head1.weight, self.head1.bias))
        return F.linear(out, self.head2.weight, self.head2.bias)

    def extra_repr(self) -> str:
        cond = f", num_classes={self.num_classes}" if self.num_classes is not None else ""
        return (
            f"levels={self.levels}, length={self.length}, receptive_field={self.receptive_field}{cond}"
        )
