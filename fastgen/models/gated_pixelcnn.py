r"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"): a PixelCNN whose layers are gated and split into a vertical and a horizontal
stack, so that it has no blind spot, with optional class conditioning.

The original PixelCNN's stacked masked convolutions never see the pixels above and to the
right of the current one beyond the first layer's reach (the *blind spot*). The gated
version replaces each masked convolution by two stacks (:class:`fastgen.nn.GatedPixelCNNLayer`):
a vertical stack that sees every pixel of the rows above within its reach (a shifted,
unmasked convolution) and a horizontal stack that sees the current row up to the pixel and
reads the vertical stack through a 1x1 *link*. Sampling is incremental: at the start of
each row every layer's vertical stack computes that row once, and at each pixel every
layer's horizontal stack computes that one pixel (van den Oord et al.'s caching, as in
Ramachandran et al. 2017, "Fast Generation for Convolutional Autoregressive Models").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..nn import GatedPixelCNNLayer, GatedPixelCNNState, MaskedConv2d
from ..ops._checks import check_int
from .base import ImageAutoregressiveModel, StepCache, register

__all__ = ["GatedPixelCNN", "GatedPixelCNNCache"]


@dataclass
class GatedPixelCNNCache(StepCache):
    """What :meth:`GatedPixelCNN.step` carries from one dimension to the next, preallocated
    for the batch by :meth:`GatedPixelCNN.init_cache` and updated in place (with the
    :class:`~fastgen.models.StepCache` fields: ``position``, the index in the generation order
    of the next dimension to generate, and ``batch``).

    Attributes:
        labels: ``(B,)`` long class labels, or None.
        states: each layer's :class:`~fastgen.nn.GatedPixelCNNState`. The first layer's
            vertical and horizontal inputs are one buffer, the image scaled to ``[-1, 1]``;
            every later layer's are the previous layer's outputs.
        hidden: ``(B, S)``: the head's hidden units at the current pixel (scratch).
        head: the head's two colour-masked 1x1 weights as matrices ``(S, S)`` and
            ``(S, C * levels)`` and their biases, taken when the cache was made.
    """

    labels: torch.Tensor | None
    states: list[GatedPixelCNNState]
    hidden: torch.Tensor
    head: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@register("gated_pixelcnn")
class GatedPixelCNN(ImageAutoregressiveModel):
    r"""Gated PixelCNN (van den Oord et al. 2016) over images ``(C, H, W)`` with ``levels``
    values per channel:

    .. math::

        p(x \mid y) = \prod_{i, j} \prod_{c=1}^{C} p(x_{c,i,j} \mid x_{:,<(i,j)},\, x_{<c,i,j},\, y)

    over pixels in raster order and, within a pixel, colours in order (R, G, B). The image,
    scaled to ``[-1, 1]``, is both inputs of a first :class:`~fastgen.nn.GatedPixelCNNLayer`
    (``first_layer=True``: its vertical stack sees the rows above, its horizontal stack the
    pixels to the left and, through colour masks, the earlier colours of the pixel), followed
    by ``layers`` further layers. Each layer's skip output :math:`s_l` is summed and the head
    gives the logits

    .. math:: \text{logits} = W_2\, \mathrm{ReLU}\big(W_1\, \mathrm{ReLU}(\textstyle\sum_l s_l) + b_1\big) + b_2

    with ``W_1, W_2`` 1x1 convolutions colour-masked like mask B (output colour group
    :math:`\ge` input group), ``levels`` logits per channel. Stacked layers have no blind
    spot: the conditional of a pixel depends on every earlier pixel within the receptive
    field, the rows above on both sides included. With ``num_classes`` the model is
    class-conditional: every layer adds a learned per-class bias to its gates and ``cond``
    is a long tensor ``(B,)`` of labels.

    Sampling with ``cache=True`` does, at the start of each row, one row of every layer's
    vertical stack (layer ``l + 1``'s vertical input row ``i`` is layer ``l``'s output row
    ``i``), then at each pixel (and again for each colour of it) one pixel of every layer's
    horizontal stack and of the head: the work per generated value does not grow with the
    image.

    Args:
        shape: ``(C, H, W)``; ``C`` is 1 (grey) or the number of colour channels.
        levels: values per channel (2 for binary images), ``>= 2``.
        channels: ``p``, each layer's channels (``C`` must divide it).
        layers: the number of layers after the first, ``>= 0``.
        kernel_size: odd kernel of the later layers.
        first_kernel_size: odd kernel of the first layer.
        num_classes: class-conditional with this many classes, or None.
        skip_channels: channels of the skip outputs and of the head's hidden layer
            (default ``channels``; ``C`` must divide it).

    Shape:
        ``x``: ``(B, C, H, W)`` long in ``[0, levels)``; ``cond``: ``(B,)`` long or None;
        :meth:`logits`: ``(B, C * H * W, levels)`` in data (channel-major) order.

    Example:
        >>> model = GatedPixelCNN((1, 6, 6), levels=2, channels=8, layers=2)
        >>> x = model.sample(3, generator=torch.Generator().manual_seed(0))
        >>> x.shape, model.log_prob(x).shape
        (torch.Size([3, 1, 6, 6]), torch.Size([3]))
        >>> rgb = GatedPixelCNN((3, 4, 4), levels=4, channels=12, layers=1, num_classes=5)
        >>> rgb.sample(2, cond=torch.tensor([1, 4])).shape
        torch.Size([2, 3, 4, 4])
    """

    cache_type = GatedPixelCNNCache

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        channels: int,
        layers: int,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        num_classes: int | None = None,
        skip_channels: int | None = None,
    ):
        super().__init__()
        name = "GatedPixelCNN"
        C, H, W = self.init_image(shape, levels, num_classes)
        p = check_int(name, "channels", channels, minimum=1)
        self.num_layers = check_int(name, "layers", layers, minimum=0)
        for arg, k in (("kernel_size", kernel_size), ("first_kernel_size", first_kernel_size)):
            if check_int(name, arg, k, minimum=1) % 2 == 0:
                raise ValueError(f"{name}: {arg} must be odd, got {k}")
        S = p if skip_channels is None else check_int(name, "skip_channels", skip_channels, minimum=1)
        if p % C or S % C:
            raise ValueError(f"{name}: the {C} colour channels must divide channels and skip_channels, got {p} and {S}")
        self.channels, self.skip_channels = p, S
        self.kernel_size, self.first_kernel_size = kernel_size, first_kernel_size
        common = dict(num_classes=num_classes, color_channels=C, skip_channels=S)
        self.layers = nn.ModuleList(
            [GatedPixelCNNLayer(p, first_kernel_size, first_layer=True, in_channels=C, **common)]
            + [GatedPixelCNNLayer(p, kernel_size, **common) for _ in range(layers)]
        )
        self.head_hidden = MaskedConv2d(S, S, 1, mask_type="B", color_channels=C)
        self.head_out = MaskedConv2d(S, C * levels, 1, mask_type="B", color_channels=C)

    # -------------------------------------------------------------------- full forward

    def logits_of_image(self, image: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The network on a float image ``(B, C, H, W)`` (the data scaled to ``[-1, 1]``,
        differentiable) and labels ``(B,)`` or None: logits ``(B, C * H * W, levels)``."""
        v_out, h_out, skip = self.layers[0]((image, image), labels)
        for layer in self.layers[1:]:
            v_out, h_out, s = layer((v_out, h_out), labels)
            skip = skip + s
        out = self.head_out(torch.relu(self.head_hidden(torch.relu(skip))))  # (B, C * levels, H, W)
        B, (C, H, W) = image.shape[0], self.event_shape
        return out.view(B, C, self.levels, H, W).permute(0, 1, 3, 4, 2).reshape(B, C * H * W, self.levels)

    # ---------------------------------------------------------------- incremental step

    @torch.no_grad()
    def init_cache(self, batch: int, cond: torch.Tensor | None = None) -> GatedPixelCNNCache:
        """A fresh :class:`GatedPixelCNNCache` for ``batch`` images (with labels ``cond``)."""
        batch = self.check_init_cache(batch, cond)
        labels = self.labels(cond, batch, "init_cache")
        _, H, W = self.event_shape
        states = [layer.init_state(batch, H, W) for layer in self.layers]
        states[0].v_in = states[0].h_in  # the first layer reads the image in both stacks: one buffer
        device, dtype = self._device_dtype()
        head = (self.head_hidden.centre_matrix(), self.head_hidden.bias,
                self.head_out.centre_matrix(), self.head_out.bias)
        hidden = torch.empty(batch, self.skip_channels, device=device, dtype=dtype)
        return self.new_cache(batch, labels=labels, states=states, hidden=hidden, head=head)

    @torch.no_grad()
    def step(self, cache: GatedPixelCNNCache, x_prev: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B, levels)`` of the next value in :meth:`generation_order`, given
        ``x_prev (B,)``, the value generated last (None at the first step); updates ``cache``."""
        t, x_prev = self.begin_step(cache, x_prev)
        C, H, W = self.event_shape
        states, labels = cache.states, cache.labels
        if x_prev is not None:
            pixel, c = divmod(t - 1, C)
            image = states[0].h_in
            image[:, c, pixel // W, pixel % W] = x_prev.to(image.dtype) * (2 / (self.levels - 1)) - 1
        pixel, c = divmod(t, C)
        i, j = divmod(pixel, W)
        last = len(self.layers) - 1
        if c == 0 and j == 0:
            for n, (layer, state) in enumerate(zip(self.layers, states)):
                v_row = layer.step_row(state, i, labels)  # (B, p, W)
                if n < last:
                    states[n + 1].v_in[:, :, i] = v_row
        skip = None
        for n, (layer, state) in enumerate(zip(self.layers, states)):
            h_out, s = layer.step_pixel(state, i, j, labels)
            if n < last:
                states[n + 1].h_in[:, :, i, j] = h_out
            skip = s if skip is None else skip.add_(s)
        w1, b1, w2, b2 = cache.head
        hidden = torch.addmm(b1, skip.relu_(), w1, out=cache.hidden).relu_()
        L = self.levels
        return torch.addmm(b2[c * L : (c + 1) * L], hidden, w2[:, c * L : (c + 1) * L])

    def extra_repr(self) -> str:
        return f"shape={self.event_shape}, levels={self.levels}"
