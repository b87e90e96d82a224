"""A grid of images, or a stack of waveform plots, saved as an 8-bit PNG with nothing but
:mod:`zlib` and :mod:`struct` (no Pillow, no matplotlib): for looking at data sets and model
samples."""

from __future__ import annotations

import os
import struct
import zlib

import torch

from .._atomic import write_atomic
from ..ops._checks import check_int, check_tensor

__all__ = ["save_image_grid", "save_waveforms"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type: greyscale, truecolour (RGB)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def save_image_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    *,
    nrow: int = 8,
    levels: int | None = None,
    padding: int = 1,
    scale: int = 1,
) -> None:
    """Saves ``images`` side by side, ``nrow`` per row, as one PNG at ``path``.

    The grid has ``ceil(N / nrow)`` rows of ``min(N, nrow)`` images separated and surrounded by
    ``padding`` black pixels; cells past the last image stay black. The file is written to a
    temporary file in the same directory and renamed over ``path``, so that an interrupted
    write never leaves a truncated image.

    Args:
        images: ``(N, C, H, W)`` with ``C = 1`` (grey) or ``C = 3`` (RGB), on any device: either
            integer levels in ``[0, levels)`` (e.g. a :class:`DataSplit`'s ``categories``), level
            ``v`` shown as ``round(255 v / (levels - 1))``, or floating values in ``[0, 1]``
            shown as ``round(255 v)``.
        path: file to write (``str`` or path-like); its directory must exist.
        nrow: images per row, >= 1.
        levels: number of levels of integer images, >= 2; must be None for floating images.
        padding: pixels between and around the images, >= 0.
        scale: each image pixel drawn as a ``scale x scale`` block (small images such as
            8x8 digits are unreadable at 1), >= 1; ``padding`` is not scaled.

    >>> import tempfile
    >>> from fastgen.data import shapes
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save_image_grid(shapes(16).train, os.path.join(folder, "shapes.png"), levels=2)
    """
    op = "save_image_grid"
    check_tensor(op, "images", images, ("N", "C", "H", "W"), floating=False)
    n, channels, height, width = images.shape
    if channels not in _COLOR_TYPES:
        raise ValueError(f"{op}: images must have 1 (grey) or 3 (RGB) channels, got shape {tuple(images.shape)}")
    if n == 0 or height == 0 or width == 0:
        raise ValueError(f"{op}: images must not be empty, got shape {tuple(images.shape)}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{op}: path must be a str or os.PathLike, got {type(path).__name__}")
    nrow = check_int(op, "nrow", nrow, minimum=1)
    padding = check_int(op, "padding", padding, minimum=0)
    scale = check_int(op, "scale", scale, minimum=1)
    if images.is_floating_point():
        if levels is not None:
            raise ValueError(f"{op}: levels is for integer images; floating images are in [0, 1], got levels={levels}")
        if not bool(((images >= 0) & (images <= 1)).all()):
            raise ValueError(f"{op}: floating images must have values in [0, 1] (and no NaN)")
        pixels = (images.double() * 255).round()
    elif images.is_complex() or images.dtype == torch.bool:
        raise TypeError(f"{op}: images must be integer levels or floating values, got dtype {images.dtype}")
    else:
        if levels is None:
            raise ValueError(f"{op}: levels (the number of levels) is required for integer images")
        levels = check_int(op, "levels", levels, minimum=2)
        values = images.long()  # a uint8 tensor would compare with levels=256 in uint8
        if not bool(((values >= 0) & (values < levels)).all()):
            raise ValueError(f"{op}: images must have values in [0, levels={levels})")
        # round half up in integers: no float rounding between the level and its grey value
        pixels = (2 * 255 * values + levels - 1) // (2 * (levels - 1))

    pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    height, width = height * scale, width * scale
    columns, rows = min(n, nrow), -(-n // nrow)
    # each image with its top and left padding, then the grid's bottom and right padding
    tiles = torch.zeros(rows * columns, channels, padding + height, padding + width, dtype=torch.uint8)
    tiles[:n, :, padding:, padding:] = pixels.to(device="cpu", dtype=torch.uint8)
    grid = tiles.reshape(rows, columns, channels, padding + height, padding + width).permute(2, 0, 3, 1, 4)
    grid = torch.nn.functional.pad(grid.reshape(channels, rows * (padding + height), -1), (0, padding, 0, padding))
    grid_height, grid_width = grid.shape[1:]
    # each PNG scanline is a filter-type byte (0: none) then the row's pixels, channels interleaved
    filters = torch.zeros(grid_height, 1, dtype=torch.uint8)
    scanlines = torch.cat([filters, grid.permute(1, 2, 0).reshape(grid_height, -1)], dim=1)
    header = struct.pack(">IIBBBBB", grid_width, grid_height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    png = (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scanlines.numpy().tobytes()))
        + _chunk(b"IEND", b"")
    )

    write_atomic(path, lambda file: file.write(png))


def save_waveforms(waveforms: torch.Tensor, path: str | os.PathLike, *, height: int = 64) -> None:
    """Plots each waveform as a white trace on black, one strip of ``height`` pixels per
    waveform and one pixel column per sample, the strips stacked in one PNG at ``path``
    (written like :func:`save_image_grid`).

    Args:
        waveforms: ``(N, T)`` floating, values in ``[-1, 1]`` (e.g. :func:`mu_law_decode` of
            audio samples); +1 is drawn at the top of a strip, -1 at the bottom.
        path: file to write; its directory must exist.
        height: pixels per strip, >= 2.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save_waveforms(torch.sin(torch.linspace(0, 20, 300)).expand(3, -1), os.path.join(folder, "w.png"))
    """
    op = "save_waveforms"
    check_tensor(op, "waveforms", waveforms, ("N", "T"), floating=True)
    height = check_int(op, "height", height, minimum=2)
    if waveforms.shape[0] == 0 or waveforms.shape[1] == 0:
        raise ValueError(f"{op}: waveforms must not be empty, got shape {tuple(waveforms.shape)}")
    if not bool(((waveforms >= -1) & (waveforms <= 1)).all()):
        raise ValueError(f"{op}: waveforms must have values in [-1, 1] (and no NaN)")
    rows = ((1 - waveforms.detach().cpu().double()) / 2 * (height - 1)).round().long()  # (N, T)
    previous = torch.cat([rows[:, :1], rows[:, :-1]], dim=1)
    # each column lights the rows between the previous sample's and this one's: a connected trace
    low, high = torch.minimum(rows, previous), torch.maximum(rows, previous)
    r = torch.arange(height)[None, :, None]
    strips = ((r >= low[:, None]) & (r <= high[:, None])).double()  # (N, height, T)
    save_image_grid(strips[:, None], path, nrow=1)
