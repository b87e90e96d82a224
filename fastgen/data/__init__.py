"""Built-in data sets: nothing is downloaded; every set is generated (or bundled) with a
fixed seed and split into train and test (:class:`DataSplit`).

- Images: :func:`digits` (the real 8x8 digits bundled with scikit-learn), :func:`shapes`
  (binary) and :func:`colored_shapes` (RGB, 4 levels per channel).
- Low-dimensional discrete data with a known distribution: :func:`mixture_1d`
  (:func:`mixture_1d_probs`) and :func:`smiley_2d` (:func:`smiley_2d_probs`).
- Continuous densities for flows: 1-D :func:`gaussian_mixture_1d` (its log-density
  :func:`gaussian_mixture_1d_log_prob`); 2-D :func:`two_moons`, :func:`rings`,
  :func:`checkerboard`, :func:`gaussian_mixture`.
- Audio: :func:`synthetic_audio` (8-bit mu-law), with :func:`mu_law_encode` /
  :func:`mu_law_decode`.
- Discrete variables of a Bayes net: :func:`alarm` (the lecture's burglary network).
- :func:`save_image_grid`: images (data or samples) to a PNG; :func:`save_waveforms`: audio.
"""

from .alarm import alarm
from .audio import AUDIO_KINDS, mu_law_decode, mu_law_encode, synthetic_audio
from .base import DataSplit
from .digits import digits
from .discrete import mixture_1d, mixture_1d_probs, smiley_2d, smiley_2d_probs
from .png import save_image_grid, save_waveforms
from .shapes import SHAPE_KINDS, colored_shapes, shapes
from .toy1d import gaussian_mixture_1d, gaussian_mixture_1d_log_prob
from .toy2d import checkerboard, gaussian_mixture, rings, two_moons

__all__ = [
    "AUDIO_KINDS",
    "DataSplit",
    "SHAPE_KINDS",
    "alarm",
    "checkerboard",
    "colored_shapes",
    "digits",
    "gaussian_mixture",
    "gaussian_mixture_1d",
    "gaussian_mixture_1d_log_prob",
    "mixture_1d",
    "mixture_1d_probs",
    "mu_law_decode",
    "mu_law_encode",
    "rings",
    "save_image_grid",
    "save_waveforms",
    "shapes",
    "smiley_2d",
    "smiley_2d_probs",
    "synthetic_audio",
    "two_moons",
]
