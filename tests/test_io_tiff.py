"""Tests for uniseg.io.tiff (TiffSlideReader): pyramid discovery, metadata and tile-wise reads."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile

from uniseg.io.tiff import TiffSlideReader
from uniseg.utils.imageio import ImageReadError

MPP = 0.499


@pytest.fixture(scope="module")
def svs_pixels(svs_path: Path) -> np.ndarray:
    """The whole baseline image decoded by tifffile in one go: the reference for region reads."""
    return tifffile.imread(svs_path)


def pyramid_levels(image: np.ndarray) -> list:
    """Exact 2x subsampling, so that level-k pixel (x, y) is level-0 pixel (x * 2**k, y * 2**k)."""
    return [image, image[::2, ::2], image[::4, ::4]]


def write_pyramid(path: Path, levels: list, layout: str, mpp: float | None = MPP,
                  tile: int = 256) -> Path:
    """Write a tiled, lossless pyramid; reduced levels are flagged ``subfiletype=1`` either as
    SubIFDs of the first page or as pages that follow it; ``layout='unflagged'`` omits the flag."""
    resolution = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    kwargs = dict(tile=(tile, tile), compression="zlib", photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(levels):
            extra = dict(resolution) if i == 0 else {}
            if i == 0 and layout == "subifds":
                extra["subifds"] = len(levels) - 1
            if i > 0 and layout != "unflagged":
                extra["subfiletype"] = 1
            tif.write(level, **kwargs, **extra)
    return path


@pytest.fixture(scope="module")
def pyramids(tmp_path_factory: pytest.TempPathFactory, svs_pixels: np.ndarray) -> dict:
    root = tmp_path_factory.mktemp("pyramids")
    levels = pyramid_levels(svs_pixels)
    return {layout: write_pyramid(root / f"{layout}.tif", levels, layout)
            for layout in ("subifds", "pages", "unflagged")}


# ---------------------------------------------------------------------------- the real SVS
def test_svs_levels_and_metadata(svs_path: Path) -> None:
    with TiffSlideReader(svs_path) as reader:
        assert reader.level_count == 1  # thumbnail, label and macro pages are not levels
        assert reader.level_dimensions == [(2220, 2967)]
        assert reader.level_downsamples == [1.0]
        assert reader.mpp == (MPP, MPP)
        assert reader.pages[0].index == 0 and reader.pages[0].is_tiled
        assert reader.pages[0].compression == 7  # JPEG tiles with shared JPEGTables


@pytest.mark.parametrize("region", [(0, 0, 240, 240), (100, 200, 500, 300), (239, 479, 2, 2),
                                    (1000, 1500, 1, 700), (1980, 2727, 240, 240)])
def test_svs_read_region_equals_decoded_crop(svs_path: Path, svs_pixels: np.ndarray, region: tuple) -> None:
    x, y, w, h = region
    with TiffSlideReader(svs_path) as reader:
        out = reader.read_region(x, y, w, h)
    assert out.dtype == np.uint8 and out.shape == (h, w, 3)
    np.testing.assert_array_equal(out, svs_pixels[y:y + h, x:x + w])


def test_svs_border_regions_are_padded_white(svs_path: Path, svs_pixels: np.ndarray) -> None:
    with TiffSlideReader(svs_path) as reader:
        corner = reader.read_region(2100, 2900, 300, 200)
        before = reader.read_region(-50, -30, 100, 80)
        outside = reader.read_region(5000, 0, 16, 16)
    np.testing.assert_array_equal(corner[:67, :120], svs_pixels[2900:, 2100:])
    assert (corner[67:] == 255).all() and (corner[:, 120:] == 255).all()
    np.testing.assert_array_equal(before[30:, 50:], svs_pixels[:50, :50])
    assert (before[:30] == 255).all() and (before[:, :50] == 255).all()
    assert (outside == 255).all()


def test_small_region_decodes_only_its_tiles(svs_path: Path, svs_pixels: np.ndarray,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with TiffSlideReader(svs_path) as reader:
        decoded: list = []
        original = reader._decode_segment

        def spy(level: int, index: int):
            decoded.append(index)
            return original(level, index)

        monkeypatch.setattr(reader, "_decode_segment", spy)
        out = reader.read_region(250, 250, 100, 100)  # inside tile row 1, column 1 of 13 x 10
        assert decoded == [1 * 10 + 1]
        np.testing.assert_array_equal(out, svs_pixels[250:350, 250:350])
        # Straddles tile rows 1-2 and columns 0-1; tile 11 comes from the cache.
        out = reader.read_region(230, 470, 20, 20)
        assert sorted(decoded) == [10, 11, 20, 21] and decoded.count(11) == 1
        np.testing.assert_array_equal(out, svs_pixels[470:490, 230:250])
        assert len(reader.pages[0].dataoffsets) == 130


# ---------------------------------------------------------------------------- written pyramids
def test_multi_level_svs_layout(tmp_path: Path, svs_pixels: np.ndarray) -> None:
    """Aperio layout: baseline, stripped thumbnail, tiled reduced levels, then label and macro."""
    path = tmp_path / "three_levels.svs"
    aperio = "Aperio Image Library v12.0.0\r\n2220x2967 (256x256) JPEG/RGB Q=70|AppMag = 20|MPP = 0.4990"
    jpeg = dict(compression="jpeg", photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path) as tif:
        tif.write(svs_pixels, tile=(256, 256), description=aperio, **jpeg)
        tif.write(svs_pixels[::8, ::8], description="Aperio Image Library v12.0.0\r\n-> 278x371", **jpeg)
        for step in (2, 4):
            tif.write(svs_pixels[::step, ::step], tile=(256, 256), description=aperio, **jpeg)
        tif.write(svs_pixels[:300, :200], subfiletype=1, description="Aperio Image Library\r\nlabel 200x300",
                  compression="lzw", photometric="rgb", metadata=None)
        tif.write(svs_pixels[:200, :600], subfiletype=9, description="Aperio Image Library\r\nmacro 600x200",
                  **jpeg)
    with TiffSlideReader(path) as reader:
        assert [page.index for page in reader.pages] == [0, 2, 3]  # not thumbnail, label, macro
        assert reader.level_dimensions == [(2220, 2967), (1110, 1484), (555, 742)]
        assert reader.mpp == (MPP, MPP)
        with tifffile.TiffFile(path) as tif:
            for level, page in enumerate((0, 2, 3)):
                expected = tif.pages[page].asarray()
                out = reader.read_region(800, 600, 200, 300, level=level)
                lx, ly = 800 // 2 ** level, 600 // 2 ** level
                np.testing.assert_array_equal(out, expected[ly:ly + 300, lx:lx + 200])


@pytest.mark.parametrize("layout", ["subifds", "pages"])
def test_pyramid_levels_are_discovered(pyramids: dict, svs_pixels: np.ndarray, layout: str) -> None:
    levels = pyramid_levels(svs_pixels)
    with TiffSlideReader(pyramids[layout]) as reader:
        assert reader.level_count == 3
        assert reader.level_dimensions == [(2220, 2967), (1110, 1484), (555, 742)]
        np.testing.assert_allclose(reader.level_downsamples, [1.0, 2.0, 4.0], rtol=1e-3)
        assert reader.mpp == pytest.approx((MPP, MPP))
        for level, expected in enumerate(levels):
            out = reader.read_region(400, 800, 300, 200, level=level)
            lx, ly = 400 // 2 ** level, 800 // 2 ** level
            np.testing.assert_array_equal(out, expected[ly:ly + 200, lx:lx + 300])
        # The bottom-right corner of level 2 is padded like level 0's.
        corner = reader.read_region(2200, 2950, 20, 20, level=2)
        np.testing.assert_array_equal(corner[:742 - 737, :555 - 550], levels[2][737:, 550:])
        assert (corner[5:] == 255).all() and (corner[:, 5:] == 255).all()


def test_unflagged_pages_count_only_when_they_are_exact_reductions(pyramids: dict, tmp_path: Path,
                                                                  svs_pixels: np.ndarray) -> None:
    # tifffile (unlike OpenSlide) recognises unflagged pages that are exact 2x reductions ...
    with TiffSlideReader(pyramids["unflagged"]) as reader:
        assert reader.level_dimensions == [(2220, 2967), (1110, 1484), (555, 742)]
    # ... but an unrelated smaller image after the slide (a thumbnail, a label) is not a level.
    other = write_pyramid(tmp_path / "other.tif", [svs_pixels, svs_pixels[:500, :700]], "unflagged")
    with TiffSlideReader(other) as reader:
        assert reader.level_dimensions == [(2220, 2967)]


def test_reader_pickles_by_path_and_reopens(pyramids: dict, svs_pixels: np.ndarray) -> None:
    with TiffSlideReader(pyramids["pages"], mpp=0.3) as reader:
        clone = pickle.loads(pickle.dumps(reader))
    with clone:
        assert clone.mpp == (0.3, 0.3) and clone.level_count == 3
        np.testing.assert_array_equal(clone.read_region(0, 0, 64, 64), svs_pixels[:64, :64])


# ---------------------------------------------------------------------------- sample layouts
def _random_image(shape: tuple, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_stripped_greyscale(tmp_path: Path) -> None:
    grey = _random_image((301, 257))
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, grey, photometric="minisblack", rowsperstrip=7, compression="zlib")
    with TiffSlideReader(path) as reader:
        assert not reader.pages[0].is_tiled
        out = reader.read_region(10, 20, 100, 50)
    np.testing.assert_array_equal(out, np.repeat(grey[20:70, 10:110, None], 3, axis=2))


def test_miniswhite_is_inverted(tmp_path: Path) -> None:
    grey = _random_image((64, 64))
    path = tmp_path / "white.tif"
    tifffile.imwrite(path, grey, photometric="miniswhite")
    with TiffSlideReader(path) as reader:
        np.testing.assert_array_equal(reader.read_region(0, 0, 64, 64)[..., 1], 255 - grey)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = _random_image((100, 130, 4))
    rgba[:, :40, 3] = 0      # transparent: glass
    rgba[:, 40:80, 3] = 255  # opaque
    rgba[:, 80:, 3] = 128    # half transparent
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"], tile=(32, 32))
    with TiffSlideReader(path) as reader:
        out = reader.read_region(0, 0, 130, 100).astype(int)
    assert (out[:, :40] == 255).all()
    np.testing.assert_array_equal(out[:, 40:80], rgba[:, 40:80, :3])
    expected = rgba[:, 80:, :3] * (128 / 255) + 255 * (1 - 128 / 255)
    assert np.abs(out[:, 80:] - expected).max() <= 1


def test_planar_separate_rgb(tmp_path: Path) -> None:
    rgb = _random_image((96, 80, 3))
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(rgb, 2, 0), photometric="rgb", planarconfig="separate",
                     tile=(32, 32), compression="zlib")
    with TiffSlideReader(path) as reader:
        np.testing.assert_array_equal(reader.read_region(5, 7, 60, 70), rgb[7:77, 5:65])


# ---------------------------------------------------------------------------- resolution metadata
def test_mpp_from_ome_metadata(tmp_path: Path) -> None:
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(path, _random_image((64, 64, 3)), photometric="rgb", tile=(32, 32),
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.26})
    with TiffSlideReader(path) as reader:
        assert reader.mpp == pytest.approx((0.25, 0.26))


@pytest.mark.parametrize("resolution, unit, expected", [
    ((1e4 / 0.5, 1e4 / 0.5), "CENTIMETER", (0.5, 0.5)),
    ((25400 / 0.25, 25400 / 0.25), "INCH", (0.25, 0.25)),
    ((72, 72), "INCH", None),  # a screen default, not a microscope's resolution
    ((1, 1), "NONE", None),
])
def test_mpp_from_resolution_tags(tmp_path: Path, resolution: tuple, unit: str, expected) -> None:
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, _random_image((32, 32, 3)), photometric="rgb", resolution=resolution,
                     resolutionunit=unit, metadata=None)
    with TiffSlideReader(path) as reader:
        assert reader.mpp == (None if expected is None else pytest.approx(expected))
    with TiffSlideReader(path, mpp=0.33) as reader:  # an explicit value always wins
        assert reader.mpp == (0.33, 0.33)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["noise.svs", "noise.tif"])
def test_random_bytes_raise_image_read_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match=name):
        TiffSlideReader(path)


def test_missing_file_raises_image_read_error(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="absent.svs.*no such file"):
        TiffSlideReader(tmp_path / "absent.svs")


def test_truncated_tile_data_raises_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, _random_image((512, 512, 3)), photometric="rgb", tile=(128, 128),
                     compression="zlib", metadata=None)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 3 // 4])
    with TiffSlideReader(path) as reader:
        reader.read_region(0, 0, 128, 128)  # the first tiles are intact
        with pytest.raises(ImageReadError, match="cut.tif.*truncated"):
            reader.read_region(0, 384, 512, 128)


def test_closed_reader_refuses_to_read(svs_path: Path) -> None:
    reader = TiffSlideReader(svs_path)
    reader.close()
    reader.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        reader.read_region(0, 0, 8, 8)
