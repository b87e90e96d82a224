r"""What RealNVP and Glow share: a :class:`~fastgen.models.FlowModel` made of an optional
uniform dequantization of integer data and a :class:`~fastgen.nn.MultiscaleFlow` whose
latents are all standard normal.

.. math::

    y = (x + u) / \text{bins}, \quad [\epsilon_1, \dots, \epsilon_{L-1}, z] = f(y), \qquad
    \log p(x) \approx \sum_i \log\mathcal N(\epsilon_i) + \log\mathcal N(z)
    + \log|\det \partial f / \partial y| - D \log \text{bins}

(:math:`u \sim U[0, 1)^D`; without ``bins`` the data is continuous and ``y = x``). The
factored-out latents :math:`\epsilon_i` are accounted in ``transform``'s log terms and drawn
in ``inverse``, scaled by the temperature like the final ``z``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..nn import MultiscaleFlow, UniformDequantization
from ..ops._checks import check_finite, check_int, check_integer_values
from ..ops.dequantize import check_integer_data
from .base import FlowModel

__all__ = ["MultiscaleFlowModel"]


class MultiscaleFlowModel(FlowModel):
    """A flow model ``x -> [dequantize] -> MultiscaleFlow -> latents`` (see the module).

    Subclasses build the flow and call ``super().__init__`` with it.

    Args:
        shape: ``event_shape``.
        flow: the continuous part, from the (dequantized) data to every latent.
        latent_shapes: the shape of one example's latent for each of the flow's outputs,
            the last one the final ``z`` (``latent_shape``).
        bins: the number of integer values of the data (dequantized), or None for
            continuous data.
        num_classes: the model takes class labels ``(B,)`` as ``cond``, or None.
        data_interval: ``(low, high)`` that continuous data must lie in, or None.

    Attributes:
        flow: the :class:`~fastgen.nn.MultiscaleFlow`, the continuous part (its ``forward``
            gives every latent, standardized, and the log-determinant).
        dequantization: the :class:`~fastgen.nn.UniformDequantization`, or None.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        flow: MultiscaleFlow,
        latent_shapes: Sequence[tuple[int, ...]],
        *,
        bins: int | None,
        num_classes: int | None,
        data_interval: tuple[float, float] | None = None,
    ):
        super().__init__()
        self.event_shape = tuple(shape)
        self.flow = flow
        self.latent_shapes = [tuple(s) for s in latent_shapes]
        self.bins, self.num_classes, self.data_interval = bins, num_classes, data_interval
        self.dequantization = None if bins is None else UniformDequantization(bins)
        self.cond_shape = None if num_classes is None else ()

    @staticmethod
    def check_config(op: str, shape: object, ranks: tuple[int, ...], bins: object, num_classes: object) -> tuple[int, ...]:
        """The checks of the arguments every subclass takes: ``shape`` with one of ``ranks``
        dimensions (1: ``(D,)``, 3: ``(C, H, W)``), each ``>= 1`` (returned as a tuple);
        ``bins`` and ``num_classes`` None or ints."""
        if not (isinstance(shape, Sequence) and len(shape) in ranks):
            want = " or ".join({1: "(D,)", 3: "(C, H, W)"}[r] for r in ranks)
            raise ValueError(f"{op}: shape must be {want}, got {shape!r}")
        for n in shape:
            check_int(op, "shape's entries", n, minimum=1)
        if bins is not None:
            check_int(op, "bins", bins, minimum=2)
        if num_classes is not None:
            check_int(op, "num_classes", num_classes, minimum=1)
        return tuple(shape)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.latent_shapes[-1]

    def check_data(self, x: object) -> torch.Tensor:
        """``x`` must be ``(B, *event_shape)``: integers in ``[0, bins)`` (any integer or
        floating dtype) with ``bins``, else finite floats of the model's dtype (within
        ``data_interval`` if set). Returns it in the model's dtype."""
        op = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 1 + len(self.event_shape) or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"{op}: x must have shape (B, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}")
        device, dtype = self._device_dtype()
        if x.device != device:
            raise ValueError(f"{op}: x is on {x.device} but the model is on {device}; they must match")
        if self.bins is not None:
            check_integer_data(op, "x", x, self.bins)
            return x.to(dtype)
        if x.dtype != dtype:
            raise TypeError(f"{op}: x must have the model's dtype {dtype} (continuous data; bins=None), got {x.dtype}")
        check_finite(op, "x", x, self.data_interval)
        return x

    def check_labels(self, cond: object, batch: int) -> None:
        """``cond`` must be None without ``num_classes``, else labels ``(batch,)`` in ``[0, num_classes)``."""
        self._check_cond(cond, batch, self.cond_shape)  # type: ignore[arg-type]
        if cond is not None:
            check_integer_values(type(self).__name__, "cond", cond, self.num_classes)

    def transform(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.check_data(x)
        self.check_labels(cond, x.shape[0])
        if not x.shape[0]:  # no examples: nothing for the flow (nor a data-dependent init) to see
            return x.new_zeros(0, *self.latent_shape), x.new_zeros(0)
        if self.dequantization is None:
            log_terms = x.new_zeros(x.shape[0])
        else:
            x, log_terms = self.dequantization(x)
        latents, logdet = self.flow(x, cond)
        for eps in latents[:-1]:
            log_terms = log_terms + self.base_log_prob(eps)
        return latents[-1], log_terms + logdet

    def inverse(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``z (B, *latent_shape) -> x (B, *event_shape)``: the factored-out latents are
        drawn from ``generator`` (in order, after ``z``) scaled by ``temperature``; with
        ``bins`` the result is the integers (long), with ``data_interval`` it is clamped to it."""
        device, dtype = self._device_dtype()
        z = self.check_latent(z)
        temperature = self.check_temperature(temperature, f"{type(self).__name__}.inverse")
        self.check_labels(cond, z.shape[0])
        if not z.shape[0]:
            return z.new_zeros(0, *self.event_shape, dtype=dtype if self.dequantization is None else torch.long)
        factored = [
            temperature * torch.randn(z.shape[0], *shape, generator=generator, device=device, dtype=dtype)
            for shape in self.latent_shapes[:-1]
        ]
        y, _ = self.flow.inverse([*factored, z], cond)
        if self.dequantization is not None:
            return self.dequantization.inverse(y)[0].long()
        # The flow's density reaches a little past the data's interval (RealNVP's logit
        # preprocessing inverts to [-a, 1 + a], a = alpha / (1 - 2 alpha)): samples are
        # kept in it, as quantization keeps integer samples in [0, bins).
        return y if self.data_interval is None else y.clamp(*self.data_interval)
