"""Mu-law companding (exact round trips, the documented formula) and the synthetic audio
set (shapes, amplitudes, and each kind of sound being what its label says)."""

import math

import numpy as np
import pytest
import torch

from fastgen.data import AUDIO_KINDS, mu_law_decode, mu_law_encode, synthetic_audio


@pytest.mark.parametrize("channels", [2, 3, 16, 255, 256])
def test_decode_then_encode_gives_every_level_back(channels):
    levels = torch.arange(channels)
    values = mu_law_decode(levels, channels)
    assert values.dtype == torch.float32
    assert torch.equal(mu_law_encode(values, channels), levels)
    assert torch.equal(mu_law_encode(values.double(), channels), levels)
    assert (values.diff() > 0).all() and values[0] == -1
    torch.testing.assert_close(values[-1], torch.tensor(1.0))


def _compand(x: np.ndarray, mu: int) -> np.ndarray:
    return np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)


@pytest.mark.parametrize("channels", [16, 256])
def test_encode_picks_the_nearest_level_of_the_companded_value(channels):
    mu = channels - 1
    x = torch.linspace(-1, 1, 100_001, dtype=torch.float64)
    levels = mu_law_encode(x, channels)
    assert levels.dtype == torch.long and levels.min() == 0 and levels.max() == mu
    assert (levels.diff() >= 0).all() and len(levels.unique()) == channels
    assert mu_law_encode(torch.zeros(3), channels).tolist() == [channels // 2] * 3
    # the documented formula, with numpy: floor((F(x) + 1) / 2 * mu + 1/2)
    reference = np.floor((_compand(x.numpy(), mu) + 1) / 2 * mu + 0.5)
    assert np.array_equal(levels.numpy(), reference)
    # so decoding lands within half a level of x on the companded scale
    error = _compand(mu_law_decode(levels, channels).double().numpy(), mu) - _compand(x.numpy(), mu)
    assert np.abs(error).max() <= 1 / mu + 1e-6


def test_mu_law_keeps_the_shape_of_its_input():
    x = torch.rand(2, 3, 5, dtype=torch.float64) * 2 - 1
    q = mu_law_encode(x)
    assert q.shape == x.shape and mu_law_decode(q).shape == x.shape
    assert torch.equal(mu_law_encode(x[:, 1:, ::2]), q[:, 1:, ::2])  # non-contiguous input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: mu_law_encode(torch.tensor([0, 1])), TypeError, "x must have a floating-point dtype"),
        (lambda: mu_law_encode([0.5]), TypeError, "x must be a torch.Tensor"),
        (lambda: mu_law_encode(torch.tensor([0.5, 1.01])), ValueError, r"x must have values in \[-1, 1\]"),
        (lambda: mu_law_encode(torch.tensor([float("nan")])), ValueError, "x must have values"),
        (lambda: mu_law_encode(torch.tensor([0.5]), channels=1), ValueError, "channels"),
        (lambda: mu_law_decode(torch.tensor([0.5])), TypeError, "q must have an integer dtype"),
        (lambda: mu_law_decode(torch.tensor([True])), TypeError, "q must have an integer dtype"),
        (lambda: mu_law_decode(3), TypeError, "q must be a torch.Tensor"),
        (lambda: mu_law_decode(torch.tensor([256])), ValueError, r"q must have values in \[0, 256\)"),
        (lambda: mu_law_decode(torch.tensor([-1])), ValueError, "q must have values"),
        (lambda: mu_law_decode(torch.tensor([3]), channels=3), ValueError, r"\[0, 3\)"),
        (lambda: mu_law_decode(torch.tensor([3]), channels=4.0), TypeError, "channels"),
    ],
)
def test_mu_law_arguments_are_checked(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _dominant_frequency(waves: torch.Tensor) -> torch.Tensor:
    """The frequency (cycles per sample) of the largest non-constant Fourier coefficient."""
    power = torch.fft.rfft(waves, dim=1).abs()
    power[:, 0] = 0
    return power.argmax(dim=1).double() / waves.shape[1]


def test_synthetic_audio_is_each_kind_at_the_documented_amplitude():
    split = synthetic_audio(600, length=512, seed=1)
    assert split.train.shape == (480, 512) and split.test.shape == (120, 512) and split.train.dtype == torch.long
    assert (split.categories, split.num_classes) == (256, 3) and AUDIO_KINDS == ("harmonics", "chirp", "noise_burst")
    codes, labels = torch.cat([split.train, split.test]), torch.cat([split.train_labels, split.test_labels])
    assert codes.min() >= 0 and codes.max() < 256
    assert torch.bincount(labels, minlength=3).min() > 600 / 3 * 0.8
    waves = mu_law_decode(codes).double()
    peak = waves.abs().amax(dim=1)
    quantization = 0.025  # half a mu-law step at |x| = 0.9
    assert peak.max() <= 0.9 + quantization
    harmonics, chirps, noise = (waves[labels == k] for k in range(3))
    assert peak[labels == 0].min() >= 0.3 - quantization
    # noise has a flat spectrum (flatness: geometric over arithmetic mean power), tones a peaky one
    power = torch.fft.rfft(waves, dim=1).abs()[:, 1:] ** 2 + 1e-12
    flatness = power.log().mean(dim=1).exp() / power.mean(dim=1)
    assert flatness[labels == 2].min() > 0.3 and flatness[labels != 2].max() < 0.1
    # and decays between bursts to near silence
    assert (noise.abs() < 0.01).double().mean() > 0.3 > (harmonics.abs() < 0.01).double().mean()
    # a harmonic sound keeps its pitch from the first to the last quarter, a chirp sweeps
    quarter = waves.shape[1] // 4
    sweeps = [
        (_dominant_frequency(kind[:, -quarter:]) - _dominant_frequency(kind[:, :quarter])).abs()
        for kind in (harmonics, chirps)
    ]
    assert (sweeps[0] <= 1 / quarter).double().mean() > 0.95
    assert sweeps[1].mean() > 10 * sweeps[0].mean()


def test_synthetic_audio_length_is_checked():
    with pytest.raises(ValueError, match="length"):
        synthetic_audio(10, length=1)
    with pytest.raises(TypeError, match="length"):
        synthetic_audio(10, length=math.pi)
