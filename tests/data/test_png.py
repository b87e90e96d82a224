"""save_image_grid: the PNG it writes decodes (chunks, CRCs, zlib, unfiltering) to exactly
the expected grid of pixels, and it is written atomically; save_waveforms draws connected
traces at the documented rows."""

import os
import struct
import zlib
from fractions import Fraction

import pytest
import torch

from fastgen.data import save_image_grid, save_waveforms


def _read_png(path) -> list:
    """Pixels of an 8-bit grey or RGB PNG as ``rows[y][x] = (channel values)``, checking its
    structure on the way."""
    with open(path, "rb") as file:
        blob = file.read()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(blob):
        (length,) = struct.unpack(">I", blob[offset : offset + 4])
        kind, data = blob[offset + 4 : offset + 8], blob[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", blob[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + data), kind
        chunks.append((kind, data))
        offset += 12 + length
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and set(kinds[1:-1]) == {b"IDAT"}
    width, height, depth, color, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, compression, filtering, interlace) == (8, 0, 0, 0) and color in (0, 2)
    channels = 1 if color == 0 else 3
    raw = zlib.decompress(b"".join(data for kind, data in chunks if kind == b"IDAT"))
    stride = 1 + width * channels
    assert len(raw) == height * stride
    rows = []
    for y in range(height):
        line = raw[y * stride : (y + 1) * stride]
        assert line[0] == 0  # filter type None: the bytes are the pixels
        rows.append([tuple(line[1 + x * channels : 1 + (x + 1) * channels]) for x in range(width)])
    return rows


def _expected_grid(pixels: list, nrow: int, padding: int) -> list:
    """The grid of ``pixels[i][c][y][x]`` (0..255) laid out by the documented rule, by loops."""
    n, channels, height, width = len(pixels), len(pixels[0]), len(pixels[0][0]), len(pixels[0][0][0])
    columns, rows = min(n, nrow), (n + nrow - 1) // nrow
    grid_width, grid_height = columns * (width + padding) + padding, rows * (height + padding) + padding
    grid = [[(0,) * channels for _ in range(grid_width)] for _ in range(grid_height)]
    for i in range(n):
        top, left = padding + (i // nrow) * (height + padding), padding + (i % nrow) * (width + padding)
        for y in range(height):
            for x in range(width):
                grid[top + y][left + x] = tuple(pixels[i][c][y][x] for c in range(channels))
    return grid


def test_scale_draws_each_pixel_as_a_block(tmp_path):
    images = torch.tensor([[[[0, 1], [1, 0]]]])
    save_image_grid(images, tmp_path / "big.png", levels=2, padding=1, scale=3)
    blocks = [[255 * ((y // 3 + x // 3) % 2) for x in range(6)] for y in range(6)]
    assert _read_png(tmp_path / "big.png") == _expected_grid([[blocks]], 8, 1)


@pytest.mark.parametrize("n, nrow, padding", [(5, 2, 1), (3, 8, 2), (4, 4, 0), (1, 1, 3)])
def test_grey_levels_are_scaled_and_laid_out_exactly(tmp_path, n, nrow, padding):
    levels = 17
    images = torch.randint(levels, (n, 1, 3, 5), generator=torch.Generator().manual_seed(n))
    images[0, 0, 0, :2] = torch.tensor([0, levels - 1])  # both ends of the scale
    path = tmp_path / "grid.png"
    save_image_grid(images, path, nrow=nrow, levels=levels, padding=padding)
    # level v -> round(255 v / 16), halves up, in exact arithmetic
    scaled = [[[[int(Fraction(255 * v, levels - 1) + Fraction(1, 2)) for v in row] for row in channel]
               for channel in image] for image in images.tolist()]
    assert _read_png(path) == _expected_grid(scaled, nrow, padding)
    assert scaled[0][0][0][:2] == [0, 255]


def test_rgb_floats_are_scaled_exactly(tmp_path):
    images = torch.rand(7, 3, 4, 2, generator=torch.Generator().manual_seed(0))
    images[0, :, 0, 0] = torch.tensor([0.0, 1.0, 0.5])
    path = str(tmp_path / "rgb.png")
    save_image_grid(images, path, nrow=3)
    scaled = [[[[round(v * 255) for v in row] for row in channel] for channel in image] for image in images.tolist()]
    assert _read_png(path) == _expected_grid(scaled, 3, 1)
    assert _read_png(path)[1][1] == (0, 255, 128)  # round half to even: 127.5 -> 128


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_binary_and_full_range_levels(tmp_path, dtype):
    images = torch.tensor([[[[0, 1], [1, 0]]]], dtype=dtype)
    save_image_grid(images, tmp_path / "binary.png", levels=2, padding=0)
    assert _read_png(tmp_path / "binary.png") == [[(0,), (255,)], [(255,), (0,)]]
    images = torch.arange(256, dtype=dtype).reshape(1, 1, 16, 16)
    save_image_grid(images, tmp_path / "full.png", levels=256, padding=0)
    assert _read_png(tmp_path / "full.png") == [[(16 * y + x,) for x in range(16)] for y in range(16)]


def test_non_contiguous_images(tmp_path):
    images = torch.randint(4, (4, 3, 6, 6), generator=torch.Generator().manual_seed(1))
    save_image_grid(images[:, :, ::2, 1:4], tmp_path / "a.png", levels=4)
    save_image_grid(images[:, :, ::2, 1:4].contiguous(), tmp_path / "b.png", levels=4)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_overwrites_atomically_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "grid.png"
    white, black = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    save_image_grid(white, path)
    save_image_grid(black, path)
    assert _read_png(path)[1][1] == (0,)
    assert os.listdir(tmp_path) == ["grid.png"]

    def interrupted(src, dst):
        raise KeyboardInterrupt

    # interrupted before the rename: the old image stays whole, the temporary file goes
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_image_grid(white, path)
    assert _read_png(path)[1][1] == (0,)
    assert os.listdir(tmp_path) == ["grid.png"]


@pytest.mark.parametrize(
    "images, kwargs, error, match",
    [
        (torch.zeros(2, 8, 8), {}, ValueError, r"images must have shape \(N, C, H, W\)"),
        ([[[[0.0]]]], {}, TypeError, "images must be a torch.Tensor"),
        (torch.zeros(2, 2, 8, 8), {}, ValueError, "1 \\(grey\\) or 3 \\(RGB\\) channels"),
        (torch.zeros(0, 1, 8, 8), {}, ValueError, "must not be empty"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.long), {}, ValueError, "levels .* is required"),
        (torch.zeros(2, 1, 8, 8), dict(levels=2), ValueError, "levels is for integer images"),
        (torch.full((2, 1, 8, 8), 1.5), {}, ValueError, r"values in \[0, 1\]"),
        (torch.full((2, 1, 8, 8), float("nan")), {}, ValueError, r"values in \[0, 1\]"),
        (torch.full((2, 1, 8, 8), 2), dict(levels=2), ValueError, r"values in \[0, levels=2\)"),
        (torch.full((2, 1, 8, 8), -1), dict(levels=2), ValueError, r"values in \[0, levels=2\)"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.long), dict(levels=1), ValueError, "levels must be >= 2"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.bool), dict(levels=2), TypeError, "dtype torch.bool"),
        (torch.zeros(2, 1, 8, 8), dict(nrow=0), ValueError, "nrow must be >= 1"),
        (torch.zeros(2, 1, 8, 8), dict(padding=-1), ValueError, "padding must be >= 0"),
        (torch.zeros(2, 1, 8, 8), dict(padding=1.0), TypeError, "padding must be an int"),
        (torch.zeros(2, 1, 8, 8), dict(scale=0), ValueError, "scale must be >= 1"),
    ],
)
def test_arguments_are_checked_and_nothing_is_written(tmp_path, images, kwargs, error, match):
    with pytest.raises(error, match=match):
        save_image_grid(images, tmp_path / "x.png", **kwargs)
    assert os.listdir(tmp_path) == []


def test_path_is_checked(tmp_path):
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        save_image_grid(torch.zeros(1, 1, 2, 2), 3)


def test_waveforms_are_connected_traces_at_the_documented_rows(tmp_path):
    # height 5: +1 -> row 0, 0 -> row 2, -1 -> row 4
    waveforms = torch.tensor([[1.0, 1.0, -1.0, 0.0], [0.0, 0.2, 0.3, -0.4]])
    save_waveforms(waveforms, tmp_path / "w.png", height=5)
    lit = [  # (row, column) of each strip's white pixels: each column spans from the previous sample's row
        {(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (3, 2), (4, 2), (2, 3), (3, 3), (4, 3)},
        {(2, 0), (2, 1), (1, 2), (2, 2), (1, 3), (2, 3), (3, 3)},  # rows 2, 2, 1, 3
    ]
    pixels = [[[[255 if (y, x) in strip else 0 for x in range(4)] for y in range(5)]] for strip in lit]
    assert _read_png(tmp_path / "w.png") == _expected_grid(pixels, 1, 1)


@pytest.mark.parametrize(
    "waveforms, kwargs, error, match",
    [
        (torch.zeros(4), {}, ValueError, r"waveforms must have shape \(N, T\)"),
        (torch.zeros(2, 4, dtype=torch.long), {}, TypeError, "floating"),
        (torch.zeros(0, 4), {}, ValueError, "must not be empty"),
        (torch.full((2, 4), 1.5), {}, ValueError, r"values in \[-1, 1\]"),
        (torch.full((2, 4), float("nan")), {}, ValueError, r"values in \[-1, 1\]"),
        (torch.zeros(2, 4), dict(height=1), ValueError, "height must be >= 2"),
    ],
)
def test_waveform_arguments_are_checked_and_nothing_is_written(tmp_path, waveforms, kwargs, error, match):
    with pytest.raises(error, match=match):
        save_waveforms(waveforms, tmp_path / "w.png", **kwargs)
    assert os.listdir(tmp_path) == []
