"""Tests for uniseg.io.factory and uniseg.io.slide: backend choice in open_slide, argument checks, white padding."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from uniseg.io import open_slide, openslide_available
from uniseg.io.plain import PlainImageReader
from uniseg.io.tiff import TiffSlideReader
from uniseg.utils.imageio import ImageReadError



@pytest.fixture
def no_openslide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin the environment to 'OpenSlide not installed' whatever the machine has."""
    monkeypatch.setitem(sys.modules, "openslide", None)


@pytest.fixture
def image(tmp_path: Path) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)


def test_svs_opens_with_tifffile_without_openslide(svs_path: Path, no_openslide: None) -> None:
    assert not openslide_available()
    with open_slide(svs_path) as reader:
        assert isinstance(reader, TiffSlideReader)
        assert reader.dimensions == (2220, 2967)


@pytest.mark.parametrize("name, fmt", [("a.png", "PNG"), ("b.bmp", "BMP")])
def test_plain_formats_open_with_pillow(tmp_path: Path, image: np.ndarray, name: str, fmt: str) -> None:
    path = tmp_path / name
    Image.fromarray(image).save(path, format=fmt)
    with open_slide(path) as reader:
        assert isinstance(reader, PlainImageReader)
        np.testing.assert_array_equal(reader.read_region(0, 0, 50, 40), image)


def test_content_decides_not_the_suffix(tmp_path: Path, image: np.ndarray) -> None:
    path = tmp_path / "really_a_tiff.png"
    tifffile.imwrite(path, image, photometric="rgb")
    with open_slide(path) as reader:
        assert isinstance(reader, TiffSlideReader)
        np.testing.assert_array_equal(reader.read_region(0, 0, 50, 40), image)
    jpeg = tmp_path / "photo.tif"
    Image.fromarray(image).save(jpeg, format="JPEG")
    with open_slide(jpeg) as reader:
        assert isinstance(reader, PlainImageReader)


def test_explicit_backends(tmp_path: Path, image: np.ndarray, no_openslide: None) -> None:
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, image, photometric="rgb")
    with open_slide(path, backend="plain") as reader:
        assert isinstance(reader, PlainImageReader)
    with open_slide(path, backend="tifffile") as reader:
        assert isinstance(reader, TiffSlideReader)
    with pytest.raises(ImageReadError, match=r"x.tif.*pip install openslide-python openslide-bin"):
        open_slide(path, backend="openslide")
    with pytest.raises(ValueError, match="unknown slide backend 'magic'"):
        open_slide(path, backend="magic")


@pytest.mark.parametrize("name", ["noise.svs", "noise.tif", "noise.png", "noise.ndpi"])
def test_corrupt_files_raise_naming_the_file(tmp_path: Path, name: str, no_openslide: None) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match=name):
        open_slide(path)


def test_truncated_tiff_header_raises_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "short.svs"
    path.write_bytes(b"II*\x00\x10\x00")
    with pytest.raises(ImageReadError, match="short.svs"):
        open_slide(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="nothing.svs: no such file"):
        open_slide(tmp_path / "nothing.svs")
    with pytest.raises(ImageReadError, match="is not a file"):
        open_slide(tmp_path)


def test_mirax_without_openslide_explains_the_repair(tmp_path: Path, no_openslide: None) -> None:
    path = tmp_path / "slide.mrxs"
    path.write_bytes(b"[GENERAL]\n")
    with pytest.raises(ImageReadError, match=r"slide.mrxs.*OpenSlide.*pip install openslide-python openslide-bin"):
        open_slide(path)


def test_mpp_override(tmp_path: Path, image: np.ndarray) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(image).save(path)
    with open_slide(path) as reader:
        assert reader.mpp is None
    with open_slide(path, mpp=0.25) as reader:
        assert reader.mpp == (0.25, 0.25)
    with open_slide(path, mpp=(0.25, 0.3)) as reader:
        assert reader.mpp == (0.25, 0.3)
    for bad in (0, -1.0, (0.25,), float("nan")):
        with pytest.raises(ValueError, match="a.png"):
            open_slide(path, mpp=bad)


def test_auto_falls_back_to_tifffile_when_openslide_refuses(tmp_path: Path, image: np.ndarray) -> None:
    """A stripped (untiled) TIFF named .svs: the real OpenSlide refuses it, tifffile reads it."""
    path = tmp_path / "stripped.svs"
    tifffile.imwrite(path, image, photometric="rgb")
    with pytest.raises(ImageReadError, match="stripped.svs: OpenSlide cannot read this file"):
        open_slide(path, backend="openslide")
    with open_slide(path) as reader:
        assert isinstance(reader, TiffSlideReader)
        np.testing.assert_array_equal(reader.read_region(0, 0, 50, 40), image)


def test_unexpected_openslide_errors_are_not_swallowed(svs_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only OpenSlide's own errors mean 'try tifffile instead'; a bug must surface. The real library
    raises nothing but OpenSlideError for bad files, so the unexpected error is injected."""
    import openslide

    def broken(filename: str) -> None:
        raise RuntimeError("not this one")

    monkeypatch.setattr(openslide, "OpenSlide", broken)
    with pytest.raises(RuntimeError, match="not this one"):
        open_slide(svs_path)


def test_truncated_svs_names_the_file_and_both_readers(svs_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.svs"
    path.write_bytes(svs_path.read_bytes()[:1_000_000])  # the first IFD lies beyond the cut
    with pytest.raises(ImageReadError, match=r"cut.svs: .*; OpenSlide refused it too \(OpenSlide cannot read"):
        open_slide(path)


# ---------------------------------------------------------------------------- SlideReader base
def test_read_region_argument_checks(image: np.ndarray) -> None:
    reader = PlainImageReader.from_array(image, name="mem.png")
    with pytest.raises(ValueError, match="mem.png: level 1 does not exist.*1 level"):
        reader.read_region(0, 0, 4, 4, level=1)
    with pytest.raises(ValueError, match="mem.png: region size must be positive"):
        reader.read_region(0, 0, 0, 4)
    with pytest.raises(TypeError, match="mem.png: x must be an integer"):
        reader.read_region(1.5, 0, 4, 4)
    assert reader.read_region(np.int64(1), np.int32(2), 3, 4).shape == (4, 3, 3)
    with reader:
        pass
    with pytest.raises(ValueError, match="mem.png: reader is closed"):
        reader.read_region(0, 0, 4, 4)


def test_padding_on_every_side(image: np.ndarray) -> None:
    reader = PlainImageReader.from_array(image)
    out = reader.read_region(-3, -2, 56, 44)  # 3 left, 2 top, 3 right, 2 bottom beyond the image
    np.testing.assert_array_equal(out[2:42, 3:53], image)
    mask = np.ones(out.shape[:2], bool)
    mask[2:42, 3:53] = False
    assert (out[mask] == 255).all()
    assert (reader.read_region(100, 100, 5, 5) == 255).all()
