r"""Synthetic 8-bit audio for WaveNet-like models, and the mu-law companding that quantizes
it (WaveNet: van den Oord et al., 2016, "WaveNet: A Generative Model for Raw Audio", section
2.2; ITU-T G.711).

Mu-law maps a waveform :math:`x \in [-1, 1]` to :math:`F(x) = \operatorname{sign}(x)
\ln(1 + \mu |x|) / \ln(1 + \mu)` with :math:`\mu = \text{channels} - 1` before quantizing it
uniformly to ``channels`` levels: quiet samples get finer steps than loud ones, which suits
audio's heavy concentration near 0 better than uniform 8-bit quantization.
"""

from __future__ import annotations

import math

import torch

from ..ops._checks import check_floating, check_int, check_integer_values, check_real
from ._split import make_split, seeded_generator
from .base import DataSplit

__all__ = ["AUDIO_KINDS", "mu_law_decode", "mu_law_encode", "synthetic_audio"]

AUDIO_KINDS = ("harmonics", "chirp", "noise_burst")
"""The sound of label ``k`` is ``AUDIO_KINDS[k]``."""

_CHANNELS = 256
_HARMONICS = 4
_BURSTS = 3


def mu_law_encode(x: torch.Tensor, channels: int = 256) -> torch.Tensor:
    r"""Quantizes a waveform by mu-law to ``channels`` levels.

    :math:`q = \lfloor (F(x) + 1) / 2 \cdot \mu + 1/2 \rfloor` with :math:`\mu = \text{channels} - 1`:
    the level nearest to :math:`F(x)` on the grid :math:`-1, -1 + 2/\mu, \dots, 1`.

    Args:
        x: floating tensor of any shape with values in ``[-1, 1]``.
        channels: number of levels, >= 2.

    Returns:
        long tensor of ``x``'s shape with values in ``[0, channels)``: 0 for -1,
        ``channels // 2`` for 0, ``channels - 1`` for 1.

    >>> mu_law_encode(torch.tensor([-1.0, -0.1, 0.0, 0.1, 1.0]))
    tensor([  0,  52, 128, 203, 255])
    """
    check_floating("mu_law_encode", "x", x)
    mu = check_int("mu_law_encode", "channels", channels, minimum=2) - 1
    if not bool(((x >= -1) & (x <= 1)).all()):
        raise ValueError("mu_law_encode: x must have values in [-1, 1] (and no NaN)")
    companded = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return torch.floor((companded + 1) / 2 * mu + 0.5).long()


def mu_law_decode(q: torch.Tensor, channels: int = 256) -> torch.Tensor:
    r"""The waveform value of each mu-law level: the inverse of :math:`F` at the level's
    grid point :math:`y = 2q/\mu - 1`, :math:`x = \operatorname{sign}(y) ((1 + \mu)^{|y|} - 1) / \mu`.
    ``mu_law_encode(mu_law_decode(q)) == q`` for every level.

    Args:
        q: integer tensor of any shape with values in ``[0, channels)``.
        channels: number of levels, >= 2.

    Returns:
        float32 tensor of ``q``'s shape with values in ``[-1, 1]``.

    >>> q = torch.tensor([0, 32, 224, 255])
    >>> mu_law_decode(q)
    tensor([-1.0000, -0.2457,  0.2568,  1.0000])
    >>> bool((mu_law_encode(mu_law_decode(q)) == q).all())
    True
    """
    mu = check_int("mu_law_decode", "channels", channels, minimum=2) - 1
    check_integer_values("mu_law_decode", "q", q, mu + 1)
    y = 2 * q.float() / mu - 1
    # the rounding of expm1 can overshoot the ends by an ulp, which encode would reject
    return (torch.sign(y) * torch.expm1(y.abs() * math.log1p(mu)) / mu).clamp(-1, 1)


def _harmonics(m: int, t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``m`` sums of the first 4 harmonics of a fundamental of period 25 to 200 samples, with
    amplitudes ``U[0.5, 1] / k`` (the fundamental) and ``U[0, 1] / k``, random phases, peak 1."""
    period = 25 + 175 * torch.rand(m, 1, 1, generator=generator, dtype=torch.float32)
    k = torch.arange(1, _HARMONICS + 1, dtype=torch.float32)[:, None]  # (harmonics, 1)
    amplitude = torch.rand(m, _HARMONICS, 1, generator=generator, dtype=torch.float32)
    amplitude[:, 0] = 0.5 + 0.5 * amplitude[:, 0]  # a clear fundamental: never silent
    phase = 2 * math.pi * torch.rand(m, _HARMONICS, 1, generator=generator, dtype=torch.float32)
    wave = (amplitude / k * torch.sin(2 * math.pi * k * t / period + phase)).sum(dim=1)  # (m, T)
    return wave / wave.abs().amax(dim=1, keepdim=True)


def _chirps(m: int, t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``m`` sines whose frequency sweeps linearly between two frequencies in ``[1/200, 1/10]``
    cycles per sample from the first to the last sample, random start phase."""
    start, end = 1 / 200 + (1 / 10 - 1 / 200) * torch.rand(2, m, 1, generator=generator, dtype=torch.float32)
    phase = 2 * math.pi * torch.rand(m, 1, generator=generator, dtype=torch.float32)
    return torch.sin(2 * math.pi * (start * t + (end - start) * t**2 / (2 * (len(t) - 1))) + phase)


def _noise_bursts(m: int, t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``m`` uniform noises ``U[-1, 1]`` under an envelope of 3 bursts that start at random
    and decay exponentially (time constants ``T/50`` to ``T/10``), the envelope capped at 1."""
    onset = len(t) * torch.rand(m, _BURSTS, 1, generator=generator, dtype=torch.float32)
    decay = len(t) * (1 / 50 + (1 / 10 - 1 / 50) * torch.rand(m, _BURSTS, 1, generator=generator, dtype=torch.float32))
    since = t - onset  # (m, bursts, T)
    envelope = (torch.exp(-since / decay) * (since >= 0)).sum(dim=1).clamp(max=1)  # before onset: exp <= e^50
    return envelope * (2 * torch.rand(m, len(t), generator=generator, dtype=torch.float32) - 1)


def synthetic_audio(n: int = 2000, *, length: int = 512, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    """8-bit mu-law waveforms of three kinds of sound (:data:`AUDIO_KINDS`, about a third
    each, at random): sums of harmonics of a random pitch, linear chirps, and bursts of noise.
    Each waveform is scaled by a random amplitude ``a`` in ``[0.3, 0.9]`` (``|x| <= a``: the
    harmonics peak at ``a``, the chirps and the noise bursts' envelopes reach it) and encoded by
    :func:`mu_law_encode` to 256 levels; frequencies are in cycles per sample (no sample rate).

    Args:
        n: number of waveforms in all (train and test), >= 2.
        length: samples per waveform ``T``, >= 2.
        test_fraction: share of the waveforms in the test set (``round(n * test_fraction)``).
        seed: int >= 0 fixing the waveforms and the split.

    Returns:
        :class:`DataSplit` named ``"synthetic_audio"``: ``(N, T)`` long in ``[0, 256)``
        (``categories=256``), labels ``(N,)`` long in ``0..2`` (``num_classes=3``), the index of
        the kind in :data:`AUDIO_KINDS`; use the labels as the condition of a class-conditional
        model or ignore them.

    >>> data = synthetic_audio(30, length=100)
    >>> data.train.shape, data.categories, data.num_classes
    (torch.Size([24, 100]), 256, 3)
    """
    n = check_int("synthetic_audio", "n", n, minimum=2)
    length = check_int("synthetic_audio", "length", length, minimum=2)
    test_fraction = check_real("synthetic_audio", "test_fraction", test_fraction, above=0, below=1)
    generator = seeded_generator("synthetic_audio", seed)
    labels = torch.randint(len(AUDIO_KINDS), (n,), generator=generator)
    peak = 0.3 + 0.6 * torch.rand(n, 1, generator=generator, dtype=torch.float32)
    t = torch.arange(length, dtype=torch.float32)
    waves = torch.empty(n, length, dtype=torch.float32)
    for kind, synthesize in enumerate((_harmonics, _chirps, _noise_bursts)):
        index = (labels == kind).nonzero().squeeze(1)
        waves[index] = synthesize(len(index), t, generator)
    return make_split(
        "synthetic_audio",
        "synthetic_audio",
        mu_law_encode(peak * waves, _CHANNELS),
        labels,
        test_fraction=test_fraction,
        generator=generator,
        categories=_CHANNELS,
        num_classes=len(AUDIO_KINDS),
    )
