r"""The pixel Transformer: a causal decoder-only Transformer over the raster sequence of an
image's sub-pixel values (image GPT, Chen et al. 2020, "Generative Pretraining from Pixels";
the Transformer of Vaswani et al. 2017, "Attention Is All You Need", with the pre-LayerNorm
blocks of GPT-2; CS294-158 lecture 3).

Training computes every conditional in one pass (causal attention through
:func:`torch.nn.functional.scaled_dot_product_attention` with ``is_causal=True``). Sampling
keeps the keys and values of the positions generated so far in a preallocated
:class:`fastgen.sampling.KVCache`: a step runs every layer at the one new position and
attends over the cached prefix, instead of running the whole sequence again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops._checks import check_int
from ..sampling import KVCache
from .base import ImageAutoregressiveModel, StepCache, register

__all__ = ["PixelTransformer", "PixelTransformerCache"]


@dataclass
class PixelTransformerCache(StepCache):
    """The sampling cache of :class:`PixelTransformer` (with the
    :class:`~fastgen.models.StepCache` fields).

    Attributes:
        kv: every layer's keys and values of the positions generated so far,
            ``(layers, B, heads, C * H * W, d_model // heads)`` each; ``kv.length`` is
            ``position`` once a step is done.
        label: the class embeddings ``(B, d_model)`` of a conditional model, else None.
    """

    kv: KVCache
    label: torch.Tensor | None


class _Block(nn.Module):
    """A pre-LayerNorm Transformer block: ``h + attn(LN(h))``, then ``h + MLP(LN(h))``."""

    def __init__(self, d_model: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, d_model))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, L, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(B, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, L, head_dim)
        h = h + self.proj(attn.transpose(1, 2).reshape(B, L, d))
        return h + self.mlp(self.norm2(h))

    def step(self, h: torch.Tensor, kv: KVCache, layer: int) -> torch.Tensor:
        """The block at the one new position ``kv.length``: ``h (B, d_model) -> (B, d_model)``,
        writing its key and value into ``kv``."""
        B, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(B, 3, self.heads, d // self.heads).unbind(1)
        keys, values = kv.update(layer, k, v)  # (B, heads, t + 1, head_dim)
        # the newest position attends to every cached one: no mask
        attn = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values)  # (B, heads, 1, head_dim)
        h = h + self.proj(attn.reshape(B, d))
        return h + self.mlp(self.norm2(h))


@register("pixel_transformer")
class PixelTransformer(ImageAutoregressiveModel):
    r"""A causal Transformer over the sub-pixel values of ``(C, H, W)`` images with ``levels``
    values each (image GPT style):

    .. math::

        p(x) = \prod_{t=0}^{D-1} p(s_t \mid s_{<t}), \qquad
        p(s_t \mid s_{<t}) = \operatorname{softmax}\big(W\, \mathrm{LN}(h^{(L)}_t) + b\big),

    over the sequence :math:`s` of the ``D = C * H * W`` values in raster order, pixel by
    pixel and the channels of a pixel in turn (``x.permute(0, 2, 3, 1)``: R, G, B of pixel
    0, then of pixel 1, ...; :meth:`generation_order`). The input at position :math:`t` is

    .. math:: h^{(0)}_t = e(s_{t-1}) + p_t + e_y,

    a learned embedding of the previous value (a learned start vector at :math:`t = 0`), a
    learned position embedding :math:`p_t`, and, for a conditional model (``num_classes``
    set, ``cond`` a long tensor ``(B,)`` of class labels), the learned embedding
    :math:`e_y` of the label, added at every position (so that the first value is
    conditioned too, and every layer sees the label without attending back to a token).
    Each of the ``layers`` blocks is pre-LayerNorm,

    .. math::

        h \leftarrow h + \mathrm{Attn}(\mathrm{LN}(h)), \qquad
        h \leftarrow h + W_2\, \mathrm{GELU}(W_1\, \mathrm{LN}(h)),

    with causal multi-head attention over ``heads`` heads of size ``d_model // heads``
    (:func:`torch.nn.functional.scaled_dot_product_attention`, ``is_causal=True``) and an
    MLP of width ``mlp_ratio * d_model``.

    :meth:`step` decodes one position with a preallocated :class:`~fastgen.sampling.KVCache`:
    each layer computes its query, key and value at the new position only, writes the key
    and value in place and attends over the cached prefix, ``O(t)`` work per layer at
    position ``t`` where a full forward costs ``O(D^2)``.

    Args:
        shape: ``(C, H, W)``, the image shape (``x`` is a long tensor ``(B, C, H, W)``).
        levels: values per sub-pixel, ``>= 2``.
        d_model: the width of the residual stream (and of every embedding), a multiple of
            ``heads``.
        heads: attention heads per layer, ``>= 1``.
        layers: Transformer blocks, ``>= 1``.
        num_classes: the number of class labels for conditional generation, or None.
        mlp_ratio: the MLP's hidden width in units of ``d_model``, ``>= 1``.

    Shape:
        ``x``: ``(B, C, H, W)`` long in ``[0, levels)``; :meth:`logits`: ``(B, C * H * W,
        levels)`` in data order (``x.reshape(B, -1)``).

    Example:
        >>> model = PixelTransformer((3, 4, 4), levels=4, d_model=32, heads=4, layers=2, num_classes=10)
        >>> x = model.sample(2, cond=torch.tensor([3, 7]), generator=torch.Generator().manual_seed(0))
        >>> x.shape, model.log_prob(x, torch.tensor([3, 7])).shape
        (torch.Size([2, 3, 4, 4]), torch.Size([2]))
        >>> model.generation_order()[:6]  # R, G, B of pixel 0, then of pixel 1
        [0, 16, 32, 1, 17, 33]
    """

    cache_type = PixelTransformerCache

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        d_model: int,
        heads: int,
        layers: int,
        num_classes: int | None = None,
        *,
        mlp_ratio: int = 4,
    ):
        super().__init__()
        name = "PixelTransformer"
        C, H, W = self.init_image(shape, levels, num_classes)
        check_int(name, "d_model", d_model, minimum=1)
        check_int(name, "heads", heads, minimum=1)
        if d_model % heads:
            raise ValueError(f"{name}: d_model must be a multiple of heads, got d_model={d_model}, heads={heads}")
        check_int(name, "layers", layers, minimum=1)
        check_int(name, "mlp_ratio", mlp_ratio, minimum=1)
        self.d_model, self.heads, self.num_layers = d_model, heads, layers

        D = C * H * W
        self.value_embedding = nn.Embedding(levels, d_model)
        self.start = nn.Parameter(torch.zeros(d_model))
        self.position_embedding = nn.Parameter(torch.zeros(D, d_model))
        self.label_embedding = None if num_classes is None else nn.Embedding(num_classes, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, heads, mlp_ratio * d_model) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, levels)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02) weights and embeddings, zero biases, and the projections into the
        # residual stream scaled by 1/sqrt(2 * layers) so that its variance stays O(1) with depth
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for residual in (block.proj, block.mlp[2]):
                nn.init.normal_(residual.weight, std=0.02 / (2 * self.num_layers) ** 0.5)
        nn.init.normal_(self.start, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)

    # -------------------------------------------------------------------- full forward

    def _label(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The embeddings ``(B, d_model)`` of checked labels (:meth:`labels`), or None."""
        return None if labels is None else self.label_embedding(labels)

    def _logits_from_embeddings(self, values: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        """The network on the embedded values: ``values (B, D, d_model)``, the embedding of
        each value in generation order, ``label (B, d_model)`` or None ``-> (B, D, levels)``
        logits in data order. (A float input, for the Jacobian checks of causality.)"""
        B, D, _ = values.shape
        h = torch.cat([self.start.expand(B, 1, -1), values[:, :-1]], dim=1) + self.position_embedding  # (B, D, d)
        if label is not None:
            h = h + label[:, None]
        for block in self.blocks:
            h = block(h)
        logits = self.head(self.norm(h))  # (B, H * W * C, levels), generation order
        C, H, W = self.event_shape
        return logits.view(B, H * W, C, self.levels).transpose(1, 2).reshape(B, D, self.levels)

    def logits(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.check_data(x)
        labels = self.labels(cond, x.shape[0], "logits")
        sequence = x.long().permute(0, 2, 3, 1).reshape(x.shape[0], self.num_dims)  # (B, D), generation order
        return self._logits_from_embeddings(self.value_embedding(sequence), self._label(labels))

    # ---------------------------------------------------------------- incremental step

    @torch.no_grad()
    def init_cache(self, batch: int, cond: torch.Tensor | None = None) -> PixelTransformerCache:
        """A fresh :class:`PixelTransformerCache` for ``batch`` examples: an empty
        :class:`~fastgen.sampling.KVCache` for the whole sequence, allocated once."""
        batch = self.check_init_cache(batch, cond)
        labels = self.labels(cond, batch, "init_cache")
        kv = KVCache.allocate(
            self.num_layers, batch, self.heads, self.num_dims, self.d_model // self.heads,
            dtype=self.start.dtype, device=self.start.device,
        )
        return self.new_cache(batch, kv=kv, label=self._label(labels))

    @torch.no_grad()
    def step(self, cache: PixelTransformerCache, x_prev: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B, levels)`` of the next value in :meth:`generation_order`, given
        ``x_prev (B,)``, the value generated last (None at the first step); writes the new
        position's keys and values into ``cache``. Runs without autograd (it is for
        sampling; train through :meth:`logits`)."""
        t, x_prev = self.begin_step(cache, x_prev)
        kv, B = cache.kv, cache.batch
        h = self.start.expand(B, -1) if x_prev is None else self.value_embedding(x_prev)
        h = h + self.position_embedding[t]  # (B, d_model)
        if cache.label is not None:
            h = h + cache.label
        for layer, block in enumerate(self.blocks):
            h = block.step(h, kv, layer)
        kv.advance()
        return self.head(self.norm(h))
