r"""PixelCNN (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"): a stack of masked
convolutions over an image, each pixel's conditional given the pixels before it in raster
order, with optional class conditioning and a categorical or a discretized logistic mixture
(Salimans et al. 2017, "PixelCNN++") output per channel.

Sampling is incremental (Ramachandran et al. 2017, "Fast Generation for Convolutional
Autoregressive Models"): every layer keeps its input in a zero-padded step state, and a new
pixel computes each layer at that one position only, from the cached outputs of the layer
below (:meth:`fastgen.nn.MaskedConv2d.step`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..nn import MaskedConv2d
from ..ops._checks import check_bool, check_choice, check_int
from .base import ImageAutoregressiveModel, StepCache, register
from .discretized_logistic_mixture import discretized_logistic_log_probs

__all__ = ["PixelCNN", "PixelCNNCache"]

COLOR_MODES = ("autoregressive", "independent")
OUTPUTS = ("categorical", "dmol")


@dataclass
class PixelCNNCache(StepCache):
    """What :meth:`PixelCNN.step` carries from one value to the next, preallocated for the
    batch by :meth:`PixelCNN.init_cache` and updated in place (with the
    :class:`~fastgen.models.StepCache` fields: ``position``, the index in the generation order
    of the next value to generate, and ``batch``).

    Attributes:
        steps: each masked convolution's ``step(i, j)`` over its step state
            (:meth:`~fastgen.nn.MaskedConv2d.init_state`, :meth:`~fastgen.nn.MaskedConv2d.stepper`,
            weights packed when the cache was made): the first layer's state holds the image
            scaled to ``[-1, 1]``, layer ``l``'s ``ReLU(h_{l-1})``.
        inputs: the same states as ``(B, H, W, C_in)`` views of their pixels (no padding).
        class_biases: each layer's per-class bias of the batch's labels ``(B, p)``, or None.
        partial: each layer's output at the current pixel from the earlier pixels only
            ``(B, p)``, computed at its first colour.
        centres: the centre taps as matrices (:meth:`~fastgen.nn.MaskedConv2d.centre_matrix`):
            what the pixel itself adds to each layer (None for a first layer that sees none
            of it), taken when the cache was made.
        head: the head's two 1x1 weights as matrices ``(p, p)`` and ``(p, C * O)`` and their
            biases, taken when the cache was made.
        logits: the current pixel's logits ``(B, C, levels)`` when its colours share one
            evaluation (``color_mode="independent"``, or grey), else None.
    """

    steps: list[Callable[[int, int], torch.Tensor]]
    inputs: list[torch.Tensor]
    class_biases: list[torch.Tensor] | None
    partial: list[torch.Tensor]
    centres: list[torch.Tensor | None]
    head: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    logits: torch.Tensor | None = None


@register("pixelcnn")
class PixelCNN(ImageAutoregressiveModel):
    r"""PixelCNN (van den Oord et al. 2016) over images ``(C, H, W)`` with ``levels`` values
    per channel:

    .. math::

        p(x \mid y) = \prod_{i, j} \prod_{c=1}^{C} p(x_{c,i,j} \mid x_{:,<(i,j)},\, x_{<c,i,j},\, y)

    over pixels in raster order and, within a pixel, colours in order (R, G, B); with
    ``color_mode="independent"`` the colours of a pixel are independent given the earlier
    pixels (the :math:`x_{<c,i,j}` term drops). With :math:`\tilde x` the image scaled to
    ``[-1, 1]``, :math:`A` a mask-A convolution of kernel ``first_kernel_size``,
    :math:`B_l` mask-B convolutions of kernel ``kernel_size`` (:class:`~fastgen.nn.MaskedConv2d`)
    and :math:`e_l[y]` learned per-class biases (zero without ``num_classes``):

    .. math::

        h_0 = A\,\tilde x + e_0[y], \qquad
        h_l = h_{l-1} + B_l\, \mathrm{ReLU}(h_{l-1}) + e_l[y] \quad (l = 1..\text{layers}),

        o = W_2\, \mathrm{ReLU}\big(W_1\, \mathrm{ReLU}(h_L) + b_1\big) + b_2

    (without ``residual``, :math:`h_l = B_l\, \mathrm{ReLU}(h_{l-1}) + e_l[y]`), ``W_1, W_2``
    1x1 mask-B convolutions. With ``color_mode="autoregressive"`` every layer is colour-masked
    (channels in ``C`` groups; at the pixel itself group ``g`` sees the input groups before it,
    mask A, or up to it, mask B) and output group ``c`` gives colour ``c``; with
    ``"independent"`` there is one group, so nothing sees the pixel itself. Each channel gets
    ``O`` outputs of :math:`o`:

    - ``output="categorical"``: ``O = levels`` logits;
    - ``output="dmol"``: ``O = 3 K`` (``K = components``): mixture logits :math:`\pi`,
      locations :math:`\mu` and log-scales :math:`\log s` in the data's ``[-1, 1]`` scale,
      one bin ``2 / (levels - 1)`` wide as in PixelCNN++; the logits are the log-probabilities
      of the discretized mixture (:func:`~fastgen.models.discretized_logistic_mixture.discretized_logistic_log_probs`
      with :math:`\mu_\text{bins} = (\mu + 1)\,\tfrac{\text{levels} - 1}{2}` and
      :math:`s_\text{bins} = s\,\tfrac{\text{levels} - 1}{2}`).

    Stacked masked convolutions have a *blind spot*: with half-widths :math:`c_1` (mask A)
    and :math:`c` (mask B), the receptive field reaches :math:`c_1 + L c` columns to the left
    in the rows above, but :math:`r` rows up only :math:`c_1 + \min(r - 1, L)\, c` columns to
    the right (``L = layers``), so a wedge of earlier pixels above and to the right is never seen
    (:class:`~fastgen.models.GatedPixelCNN` has none).

    Sampling with ``cache=True`` computes each layer at the new pixel only. The step state
    of layer ``l`` holds :math:`\mathrm{ReLU}(h_{l-1})` (the first layer's, the image) of the
    pixels generated so far; at a pixel's first colour every layer's
    :meth:`~fastgen.nn.MaskedConv2d.step` sums its taps over the earlier pixels (the pixel's
    own entries are still zero), and the pixel's own centre tap is one colour-masked matrix
    product per layer, then the head's two. Colour-autoregressive models redo only these
    matrix products for the later colours; in independent mode one evaluation gives the
    logits of all colours. Each pixel's :math:`\mathrm{ReLU}(h_{l-1})` is then written into
    the states for the pixels after it.

    Args:
        shape: ``(C, H, W)``; ``C`` is 1 (grey) or the number of colour channels.
        levels: values per channel (2 for binary images), ``>= 2``.
        channels: ``p``, each layer's channels (``C`` must divide it in autoregressive colour mode).
        layers: the number of mask-B layers after the first, ``>= 0``.
        kernel_size: odd kernel of the mask-B layers.
        residual: mask-B layers as residual blocks :math:`h + B\,\mathrm{ReLU}(h)`.
        color_mode: ``"autoregressive"`` (R -> G -> B within a pixel) or ``"independent"``.
        num_classes: class-conditional with this many classes, or None.
        output: ``"categorical"`` or ``"dmol"`` (discretized mixture of logistics).
        components: ``K``, the logistic components per channel of ``output="dmol"``.
        first_kernel_size: odd kernel of the mask-A layer.

    Shape:
        ``x``: ``(B, C, H, W)`` long in ``[0, levels)``; ``cond``: ``(B,)`` long or None;
        :meth:`logits`: ``(B, C * H * W, levels)`` in data (channel-major) order.

    Example:
        >>> model = PixelCNN((1, 6, 6), levels=2, channels=8, layers=2)
        >>> x = model.sample(3, generator=torch.Generator().manual_seed(0))
        >>> x.shape, model.log_prob(x).shape
        (torch.Size([3, 1, 6, 6]), torch.Size([3]))
        >>> rgb = PixelCNN((3, 4, 4), levels=4, channels=12, layers=1, num_classes=5, output="dmol")
        >>> rgb.sample(2, cond=torch.tensor([1, 4])).shape
        torch.Size([2, 3, 4, 4])
    """

    cache_type = PixelCNNCache

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        channels: int,
        layers: int,
        kernel_size: int = 3,
        residual: bool = True,
        color_mode: str = "autoregressive",
        num_classes: int | None = None,
        output: str = "categorical",
        components: int = 5,
        first_kernel_size: int = 7,
    ):
        super().__init__()
        name = "PixelCNN"
        C, H, W = self.init_image(shape, levels, num_classes)
        p = check_int(name, "channels", channels, minimum=1)
        check_int(name, "layers", layers, minimum=0)
        for arg, k in (("kernel_size", kernel_size), ("first_kernel_size", first_kernel_size)):
            if check_int(name, arg, k, minimum=1) % 2 == 0:
                raise ValueError(f"{name}: {arg} must be odd, got {k}")
        self.residual = check_bool(name, "residual", residual)
        self.color_mode = check_choice(name, "color_mode", color_mode, COLOR_MODES)
        self.output = check_choice(name, "output", output, OUTPUTS)
        self.components = check_int(name, "components", components, minimum=1)
        groups = C if color_mode == "autoregressive" else 1
        if p % groups:
            raise ValueError(
                f"{name}: the {C} colour channels must divide channels with color_mode='autoregressive', got {p}"
            )
        self.channels, self.color_groups = p, groups
        self.kernel_size, self.first_kernel_size = kernel_size, first_kernel_size
        self.outputs_per_channel = levels if output == "categorical" else 3 * components
        self.layers = nn.ModuleList(
            [MaskedConv2d(C, p, first_kernel_size, mask_type="A", color_channels=groups)]
            + [MaskedConv2d(p, p, kernel_size, mask_type="B", color_channels=groups) for _ in range(layers)]
        )
        self.head_hidden = MaskedConv2d(p, p, 1, mask_type="B", color_channels=groups)
        self.head_out = MaskedConv2d(p, C * self.outputs_per_channel, 1, mask_type="B", color_channels=groups)
        if num_classes is None:
            self.register_parameter("class_bias", None)
        else:
            self.class_bias = nn.Parameter(torch.zeros(len(self.layers), num_classes, p))  # e_l[y]

    # -------------------------------------------------------------------- full forward

    def _logits_of_outputs(self, out: torch.Tensor) -> torch.Tensor:
        """The head's ``O`` outputs of each channel ``(..., O)`` to its logits ``(..., levels)``."""
        if self.output == "categorical":
            return out
        mixture_logits, loc, log_scale = out.split(self.components, dim=-1)
        half = (self.levels - 1) / 2  # bins per unit of the [-1, 1] scale
        return discretized_logistic_log_probs(mixture_logits, (loc + 1) * half, log_scale + math.log(half), self.levels)

    def logits_of_image(self, image: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The network on a float image ``(B, C, H, W)`` (the data scaled to ``[-1, 1]``,
        differentiable) and labels ``(B,)`` or None: logits ``(B, C * H * W, levels)``."""
        h = None
        for n, conv in enumerate(self.layers):
            out = conv(image if h is None else torch.relu(h))  # (B, p, H, W)
            if labels is not None:
                out = out + self.class_bias[n, labels][:, :, None, None]
            h = h + out if self.residual and n > 0 else out
        out = self.head_out(torch.relu(self.head_hidden(torch.relu(h))))  # (B, C * O, H, W)
        B, (C, H, W), O = image.shape[0], self.event_shape, self.outputs_per_channel
        out = out.view(B, C, O, H, W).permute(0, 1, 3, 4, 2)  # (B, C, H, W, O)
        return self._logits_of_outputs(out).reshape(B, C * H * W, self.levels)

    # ---------------------------------------------------------------- incremental step

    @torch.no_grad()
    def init_cache(self, batch: int, cond: torch.Tensor | None = None) -> PixelCNNCache:
        """A fresh :class:`PixelCNNCache` for ``batch`` images (with labels ``cond``)."""
        batch = self.check_init_cache(batch, cond)
        labels = self.labels(cond, batch, "init_cache")
        _, H, W = self.event_shape
        steps, inputs = [], []
        for conv in self.layers:
            state, P = conv.init_state(batch, H, W), conv.state_padding
            steps.append(conv.stepper(state))
            inputs.append(state[:, P:, P : P + W])  # (B, H, W, C_in)
        class_biases = None if labels is None else list(self.class_bias[:, labels])
        # a first layer with one colour group sees nothing of the pixel itself
        centres = [None if self.color_groups == 1 else self.layers[0].centre_matrix()]
        centres += [conv.centre_matrix() for conv in self.layers[1:]]
        head = (self.head_hidden.centre_matrix(), self.head_hidden.bias, self.head_out.centre_matrix(), self.head_out.bias)
        return self.new_cache(
            batch, steps=steps, inputs=inputs, class_biases=class_biases, partial=[], centres=centres, head=head
        )

    @torch.no_grad()
    def step(self, cache: PixelCNNCache, x_prev: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B, levels)`` of the next value in :meth:`generation_order`, given
        ``x_prev (B,)``, the value generated last (None at the first step); updates ``cache``."""
        t, x_prev = self.begin_step(cache, x_prev)
        C, H, W = self.event_shape
        if x_prev is not None:
            pixel, c = divmod(t - 1, C)
            image = cache.inputs[0]
            image[:, pixel // W, pixel % W, c] = x_prev.to(image.dtype) * (2 / (self.levels - 1)) - 1
        pixel, c = divmod(t, C)
        i, j = divmod(pixel, W)
        if c == 0:
            # Nothing of pixel (i, j) is in the states yet (its colours and ReLU(h) are
            # written from here on), so each step is the layer's sum over the earlier pixels.
            cache.partial = [step(i, j) for step in cache.steps]
            if cache.class_biases is not None:
                for partial, bias in zip(cache.partial, cache.class_biases):
                    partial += bias
        if self.color_groups > 1:
            return self._pixel_logits(cache, i, j, c, c + 1)[:, 0]
        if c == 0:
            cache.logits = self._pixel_logits(cache, i, j, 0, C)
        return cache.logits[:, c]

    def _pixel_logits(self, cache: PixelCNNCache, i: int, j: int, first: int, stop: int) -> torch.Tensor:
        """Every layer at pixel ``(i, j)`` from ``cache.partial`` and the pixel's own centre
        taps, then the logits ``(B, stop - first, levels)`` of channels ``first .. stop - 1``."""
        centres, partial, inputs = cache.centres, cache.partial, cache.inputs
        h = partial[0] if centres[0] is None else torch.addmm(partial[0], inputs[0][:, i, j], centres[0])
        for n in range(1, len(self.layers)):
            relu_h = torch.relu(h)
            # Later pixels read it from the state; a later colour of this pixel rewrites it,
            # and the last colour's is the final one.
            inputs[n][:, i, j] = relu_h
            out = torch.addmm(partial[n], relu_h, centres[n])
            h = h + out if self.residual else out
        w1, b1, w2, b2 = cache.head
        hidden = torch.addmm(b1, torch.relu(h), w1).relu_()
        O = self.outputs_per_channel
        out = torch.addmm(b2[first * O : stop * O], hidden, w2[:, first * O : stop * O])
        return self._logits_of_outputs(out.view(cache.batch, stop - first, O))

    def extra_repr(self) -> str:
        s = f"shape={self.event_shape}, levels={self.levels}, residual={self.residual}, color_mode={self.color_mode!r}"
        if self.num_classes is not None:
            s += f", num_classes={self.num_classes}"
        s += f", output={self.output!r}"
        return s + (f", components={self.components}" if self.output == "dmol" else "")
