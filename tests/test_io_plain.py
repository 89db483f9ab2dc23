"""Tests for uniseg.io.plain (PlainImageReader: PNG/JPEG/BMP as a one-level slide)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniseg.io.plain import PlainImageReader
from uniseg.utils.imageio import ImageReadError, read_rgb


@pytest.fixture
def png(tmp_path: Path) -> tuple:
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    path = tmp_path / "roi.png"
    Image.fromarray(image).save(path)
    return path, image


def test_reads_png_as_one_level(png: tuple) -> None:
    path, image = png
    with PlainImageReader(path) as reader:
        assert reader.level_count == 1
        assert reader.level_dimensions == [(90, 70)] and reader.level_downsamples == [1.0]
        assert reader.mpp is None
        np.testing.assert_array_equal(reader.read_region(10, 20, 30, 40), image[20:60, 10:40])


def test_grey_png_becomes_rgb(tmp_path: Path) -> None:
    grey = np.arange(64 * 32, dtype=np.uint16).reshape(64, 32).astype(np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(grey).save(path)
    with PlainImageReader(path, mpp=0.5) as reader:
        assert reader.mpp == (0.5, 0.5)
        out = reader.read_region(0, 0, 32, 64)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_images_above_pillows_bomb_limit_still_load(png: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    path, image = png
    # Pillow raises DecompressionBombError above twice this many pixels: 70 x 90 > 2 x 1000.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    with PlainImageReader(path) as reader:
        np.testing.assert_array_equal(reader.read_region(0, 0, 90, 70), image)


def test_from_array_and_bad_arrays() -> None:
    image = np.zeros((5, 6, 3), np.uint8)
    reader = PlainImageReader.from_array(image, name="tile", mpp=0.25)
    assert reader.dimensions == (6, 5) and reader.mpp == (0.25, 0.25) and str(reader.path) == "tile"
    with pytest.raises(ValueError, match="tile: image must be uint8 RGB"):
        PlainImageReader.from_array(np.zeros((5, 6), np.uint8), name="tile")


def test_unreadable_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ImageReadError, match="broken.png"):
        PlainImageReader(path)
    with pytest.raises(ImageReadError, match="gone.png: no such file"):
        PlainImageReader(tmp_path / "gone.png")


def _rgba(tmp_path: Path) -> tuple:
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    rgba[:5, :, 3] = 0
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path, rgba


@pytest.mark.parametrize("above_bomb_limit", [False, True], ids=["pillow", "opencv"])
def test_16bit_png_is_refused_on_both_decoding_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     above_bomb_limit: bool) -> None:
    import cv2

    ramp = (np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) * 30).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    cv2.imwrite(str(tmp_path / "rgb16.png"), np.dstack([ramp, ramp, ramp]))
    if above_bomb_limit:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 40 x 50 > 2 x 500: Pillow refuses to open it
    for name in ("grey16.png", "rgb16.png"):
        with pytest.raises(ImageReadError, match=f"{name}: 16-bit samples"):
            PlainImageReader(tmp_path / name)


@pytest.mark.parametrize("above_bomb_limit", [False, True], ids=["pillow", "opencv"])
def test_alpha_is_composited_on_white_on_both_decoding_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             above_bomb_limit: bool) -> None:
    path, rgba = _rgba(tmp_path)
    expected = read_rgb(path)  # Pillow's path, the reference for OpenCV's
    assert (expected[:5] == 255).all() and not (expected[5:] == rgba[5:, :, :3]).all()
    if above_bomb_limit:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
        with pytest.raises(Image.DecompressionBombError):
            read_rgb(path)
    with PlainImageReader(path) as reader:
        np.testing.assert_array_equal(reader.read_region(0, 0, 50, 40), expected)
