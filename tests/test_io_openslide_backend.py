"""Tests for uniseg.io.openslide_backend against a fake ``openslide`` module.

openslide-python is an optional extra that is not installed in the test environment, so the fake
mimics exactly the API surface the backend uses: ``OpenSlide(path)``, ``level_count``,
``level_dimensions``, ``level_downsamples``, ``properties`` and ``read_region`` returning an
un-premultiplied RGBA PIL image that is transparent outside the scanned area.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniseg.io import open_slide
from uniseg.io.openslide_backend import OpenSlideReader
from uniseg.utils.imageio import ImageReadError


class FakeOpenSlideError(Exception):
    pass


class FakeUnsupportedFormatError(FakeOpenSlideError):
    pass


def make_fake_openslide(slides: dict) -> types.ModuleType:
    """A stand-in ``openslide`` module serving the RGBA pyramids in ``slides`` (path -> levels)."""
    module = types.ModuleType("openslide")
    module.calls = []

    class OpenSlide:
        def __init__(self, filename: str) -> None:
            if filename not in slides:
                raise FakeUnsupportedFormatError("Unsupported or missing image file")
            self._levels, self.properties = slides[filename]
            self.level_count = len(self._levels)
            self.level_dimensions = tuple((a.shape[1], a.shape[0]) for a in self._levels)
            w0 = self.level_dimensions[0][0]
            self.level_downsamples = tuple(w0 / w for w, _ in self.level_dimensions)
            self.closed = False

        def read_region(self, location: tuple, level: int, size: tuple) -> Image.Image:
            module.calls.append((location, level, size))
            (x, y), (w, h) = location, size
            ds = self.level_downsamples[level]
            lx, ly = int(x / ds), int(y / ds)
            src = self._levels[level]
            out = np.zeros((h, w, 4), np.uint8)  # transparent black, as OpenSlide returns
            x0, y0 = max(lx, 0), max(ly, 0)
            x1, y1 = min(lx + w, src.shape[1]), min(ly + h, src.shape[0])
            if x1 > x0 and y1 > y0:
                out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = src[y0:y1, x0:x1]
            return Image.fromarray(out, "RGBA")

        def close(self) -> None:
            self.closed = True

    module.OpenSlide = OpenSlide
    module.OpenSlideError = FakeOpenSlideError
    module.OpenSlideUnsupportedFormatError = FakeUnsupportedFormatError
    return module


def _rgba_pyramid(seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    level0 = np.concatenate([rng.integers(0, 256, (200, 160, 3), dtype=np.uint8),
                             np.full((200, 160, 1), 255, np.uint8)], axis=2)
    level0[:, 100:110, 3] = 0  # a gap between scanned areas (as in MIRAX slides)
    level0[:, 110:120, 3] = 128  # a blended seam
    return [level0, level0[::2, ::2].copy()]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "slide.mrxs"
    path.write_bytes(b"not really a MIRAX index")
    levels = _rgba_pyramid()
    module = make_fake_openslide({str(path): (levels, {"openslide.mpp-x": "0.2465", "openslide.mpp-y": "0.2475"})})
    monkeypatch.setitem(sys.modules, "openslide", module)
    return types.SimpleNamespace(path=path, levels=levels, module=module)


def test_levels_and_mpp_come_from_openslide(fake) -> None:
    with OpenSlideReader(fake.path) as reader:
        assert reader.backend == "openslide"
        assert reader.level_count == 2
        assert reader.level_dimensions == [(160, 200), (80, 100)]
        assert reader.level_downsamples == [1.0, 2.0]
        assert reader.mpp == (0.2465, 0.2475)
    assert reader._slide.closed


def test_read_region_composites_transparency_on_white(fake) -> None:
    level0 = fake.levels[0]
    with OpenSlideReader(fake.path) as reader:
        out = reader.read_region(90, 20, 40, 30).astype(int)
    np.testing.assert_array_equal(out[:, :10], level0[20:50, 90:100, :3])
    assert (out[:, 10:20] == 255).all()
    half = level0[20:50, 110:120, :3] * (128 / 255) + 255 * (1 - 128 / 255)
    assert np.abs(out[:, 20:30] - half).max() <= 1
    np.testing.assert_array_equal(out[:, 30:], level0[20:50, 120:130, :3])


def test_read_region_at_level_1_and_padding(fake) -> None:
    level1 = fake.levels[1]
    with OpenSlideReader(fake.path) as reader:
        out = reader.read_region(41, 60, 20, 10, level=1)
        fake.module.calls.clear()
        corner = reader.read_region(150, 190, 20, 20, level=1)
    # Level-0 x=41 is level-1 pixel 20; OpenSlide is asked for its level-0 position (40, 60).
    np.testing.assert_array_equal(out, level1[30:40, 20:40, :3])
    # The base class asks OpenSlide only for the part inside the level and pads the rest white.
    assert fake.module.calls == [((150, 190), 1, (5, 5))]
    np.testing.assert_array_equal(corner[:5, :5], level1[95:, 75:, :3])
    assert (corner[5:] == 255).all() and (corner[:, 5:] == 255).all()


def test_missing_mpp_is_none_and_override_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plain.svs"
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "openslide", make_fake_openslide({str(path): (_rgba_pyramid(), {})}))
    with OpenSlideReader(path) as reader:
        assert reader.mpp is None
    with OpenSlideReader(path, mpp=0.5) as reader:
        assert reader.mpp == (0.5, 0.5)


def test_unsupported_file_raises_image_read_error(fake, tmp_path: Path) -> None:
    other = tmp_path / "broken.ndpi"
    other.write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="broken.ndpi.*OpenSlide cannot read"):
        OpenSlideReader(other)


def test_not_installed_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "slide.mrxs"
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "openslide", None)  # makes `import openslide` fail
    with pytest.raises(ImageReadError, match=r'slide.mrxs.*pip install "uniseg\[wsi\]"'):
        OpenSlideReader(path)
    with pytest.raises(ImageReadError, match=r'slide.mrxs.*pip install "uniseg\[wsi\]"'):
        open_slide(path)


def test_open_slide_prefers_openslide_for_vendor_formats(fake) -> None:
    with open_slide(fake.path) as reader:
        assert isinstance(reader, OpenSlideReader)
        assert reader.level_count == 2
