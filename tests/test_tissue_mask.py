"""Tests for slide-level tissue masks: detection, user masks, window selection and the thumbnail."""
from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from uniseg.inference.tiling import TileGrid
from uniseg.inference.tissue import (TissueMask, detect_tissue, otsu_threshold, saturation, selection_summary,
                                     tissue_fraction)
from uniseg.inference.tissue_masks import load_tissue_mask, tissue_from_geojson, tissue_from_image
from uniseg.inference.tissue_thumbnail import OUTLINE_RGB, WINDOW_RGB, window_boxes, write_thumbnail
from uniseg.io import PlainImageReader, Region, RegionSource, SlideReader, open_slide
from uniseg.io.overview import read_overview
from uniseg.utils.imageio import ImageReadError

SVS = Path(__file__).resolve().parents[1] / "data" / "wsi" / "CMU-1-Small-Region.svs"
PINK, PURPLE, GLASS = (232, 150, 200), (110, 60, 160), (243, 243, 241)


class PaintedSlide(SlideReader):
    """A pyramid whose pixels are painted from level-0 coordinates on demand; it records every read."""

    backend = "test"

    def __init__(self, dimensions, downsamples, mpp, paint, name="painted.tif"):
        self.paint = paint
        self.reads: list = []
        self._init_levels(name, dimensions, mpp, downsamples)

    def _read_inside(self, x, y, w, h, level):
        self.reads.append((level, x, y, w, h))
        ds = self.level_downsamples[level]
        xs = (x + np.arange(w) + 0.5) * ds  # level-0 centres of the level pixels
        ys = (y + np.arange(h) + 0.5) * ds
        return self.paint(xs[None, :], ys[:, None])


def disc_painter(cx, cy, radius):
    def paint(xs, ys):  # row by row half-widths: no (h, w) float temporaries in the memory test
        half = np.sqrt(np.clip(radius ** 2 - (ys - cy) ** 2, 0, None))
        inside = np.abs(xs - cx) < half
        out = np.empty(inside.shape + (3,), np.uint8)
        out[:] = GLASS
        out[inside] = PINK
        return out
    return paint


@pytest.fixture(scope="module")
def svs_reader():
    if not SVS.is_file():
        pytest.fail(f"test slide {SVS} is missing; see data/README.md for how to re-obtain it")
    with open_slide(SVS) as reader:
        yield reader


# ---------------------------------------------------------------------------- the overview
def test_overview_is_the_block_mean_of_level_zero_in_any_chunking(svs_reader):
    full = svs_reader.read_level(0, 0, *svs_reader.dimensions).astype(np.float64)
    view = read_overview(svs_reader, 16.0)
    assert view.level == 0 and view.factor == 16 and view.scale == (16.0, 16.0)
    h, w = full.shape[:2]
    assert view.rgb.shape == (math.ceil(h / 16), math.ceil(w / 16), 3)
    # Reference: mean over the pixels of each block that exist (edge blocks are partial, not padded).
    ref = np.empty(view.rgb.shape, np.float64)
    for i in range(ref.shape[0]):
        for j in range(ref.shape[1]):
            ref[i, j] = full[i * 16:(i + 1) * 16, j * 16:(j + 1) * 16].reshape(-1, 3).mean(axis=0)
    assert np.abs(view.rgb - ref).max() <= 0.5 + 1e-9
    small_chunks = read_overview(svs_reader, 16.0, chunk=40)  # 2 x 2 blocks per read: many seams
    np.testing.assert_array_equal(small_chunks.rgb, view.rgb)


# ---------------------------------------------------------------------------- detection on the real slide
def test_detects_the_tissue_and_not_the_glass_of_a_real_slide(svs_reader):
    tissue = detect_tissue(svs_reader)
    f = 16  # 8 um/px over 0.499 um/px
    assert tissue.scale == (f, f) and tissue.mask.shape == (186, 139)
    # Independent reference: the per-pixel rule of tissue_fraction at full resolution, per mask block.
    full = svs_reader.read_level(0, 0, *svs_reader.dimensions)
    ref = np.array([[tissue_fraction(full[i * f:(i + 1) * f, j * f:(j + 1) * f]) for j in range(139)]
                    for i in range(186)])
    tissue_ref = ref >= 0.5
    glass_ref = ~ndimage.binary_fill_holes(ref > 0)  # glass around the tissue (holes in it are filled on purpose)
    agreement = (tissue.mask == tissue_ref).mean()
    recall = tissue.mask[tissue_ref].mean()
    glass_kept_out = (~tissue.mask[glass_ref]).mean()
    # Measured: agreement 0.960, recall 0.979, glass 0.997; about 39% of the slide is tissue.
    assert agreement >= 0.95 and recall >= 0.97 and glass_kept_out >= 0.99, (agreement, recall, glass_kept_out)
    assert 0.3 < tissue.mask.mean() < 0.5
    assert tissue.tissue_area_mm2() == pytest.approx(tissue.mask.sum() * (f * 0.499) ** 2 * 1e-6)


def test_otsu_matches_the_exhaustive_search():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.03, 3000), rng.normal(0.45, 0.08, 1000)]).clip(0, 1)
    hist, edges = np.histogram(values, bins=256, range=(0, 1))
    centres = (edges[:-1] + edges[1:]) / 2

    def between(k):  # split after bin k, computed from the two classes directly
        lo, hi = hist[:k + 1], hist[k + 1:]
        if lo.sum() == 0 or hi.sum() == 0:
            return -1.0
        m0, m1 = (lo * centres[:k + 1]).sum() / lo.sum(), (hi * centres[k + 1:]).sum() / hi.sum()
        return lo.sum() * hi.sum() * (m0 - m1) ** 2

    scores = np.array([between(k) for k in range(255)])
    k = int(np.argmin(np.abs(edges[1:] - otsu_threshold(values))))  # the split the threshold stands for
    assert otsu_threshold(values) == pytest.approx(edges[k + 1])
    assert scores[k] >= scores.max() * (1 - 1e-9)  # a best split (empty bins between the classes tie)
    assert 0.15 < otsu_threshold(values) < 0.35


def test_a_blank_slide_gives_an_empty_mask_and_no_windows():
    rng = np.random.default_rng(1)
    glass = np.clip(rng.normal(243, 2.5, (1500, 2000, 3)), 0, 255).astype(np.uint8)  # colour noise on glass
    glass[:, :320] = (12, 4, 16)  # scanner padding: near black with a tint, i.e. "saturated" to HSV
    reader = PlainImageReader.from_array(glass, "blank.png", mpp=0.5)
    assert otsu_threshold(saturation(read_overview(reader, 16).rgb)) < 0.05  # what the lower bound guards
    tissue = detect_tissue(reader)
    assert not tissue.mask.any() and tissue.tissue_area_mm2() == 0.0
    source = RegionSource.open(reader, target_mpp=0.5)
    select = tissue.window_selection(TileGrid(source.width, source.height, (512, 512), (512, 512)), source)
    assert select.shape == (3, 4) and not select.any()


def test_a_slide_that_is_all_tissue_stays_whole():
    # Two stains side by side and no glass: Otsu splits them (pink would be lost) unless clamped.
    image = np.empty((1024, 1024, 3), np.uint8)
    image[:, :512], image[:, 512:] = PINK, PURPLE
    reader = PlainImageReader.from_array(image, "tissue.png", mpp=0.5)
    assert otsu_threshold(saturation(read_overview(reader, 16).rgb)) > saturation(np.array([[PINK]], np.uint8))[0, 0]
    assert detect_tissue(reader).mask.all()


def test_unknown_mpp_uses_a_fixed_mask_size():
    slide = PaintedSlide([(8192, 4096)], None, None, disc_painter(3000, 2000, 1200))
    tissue = detect_tissue(slide)
    assert tissue.mask.shape == (1024, 2048) and tissue.tissue_area_mm2() is None
    assert tissue.mask[500, 750] and not tissue.mask[50, 2000]


# ---------------------------------------------------------------------------- pyramids: only the low level
def _write_pyramid(path: Path, image: np.ndarray, mpp: float) -> Path:
    """Three levels (1, 4, 16) as SubIFDs, resolution in cm."""
    res = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(64, 64), subifds=2, photometric="rgb", resolution=res, resolutionunit="CENTIMETER")
        for k in (4, 16):
            tif.write(image[::k, ::k], tile=(16, 16) if k == 16 else (64, 64), subfiletype=1, photometric="rgb",
                      resolution=(res[0] / k, res[1] / k), resolutionunit="CENTIMETER")
    return path


def _count_reads(monkeypatch, reader) -> list:
    reads: list = []
    original = reader._read_inside

    def spy(x, y, w, h, level):
        reads.append((level, w * h))
        return original(x, y, w, h, level)

    monkeypatch.setattr(reader, "_read_inside", spy)
    return reads


def test_a_tiff_pyramid_is_read_at_its_low_level_only(tmp_path, monkeypatch):
    yy, xx = np.mgrid[:2048, :3072]
    image = np.empty((2048, 3072, 3), np.uint8)
    image[:] = GLASS
    blob = (xx - 1800) ** 2 / 900 ** 2 + (yy - 1000) ** 2 / 600 ** 2 < 1
    image[blob] = PINK
    path = _write_pyramid(tmp_path / "pyramid.tif", image, mpp=0.5)
    with open_slide(path, backend="tifffile") as reader:
        assert reader.level_downsamples == [1.0, 4.0, 16.0]
        reads = _count_reads(monkeypatch, reader)
        tissue = detect_tissue(reader)  # 8 um/px = level 2 as is
        assert {level for level, _ in reads} == {2} and sum(n for _, n in reads) == 192 * 128
        reads.clear()
        coarse = detect_tissue(reader, target_mpp=4.0)  # level 1 (2 um/px), 4 x 4 blocks
        assert {level for level, _ in reads} == {1}
    assert tissue.scale == (16.0, 16.0) and tissue.mask.shape == (128, 192)
    assert coarse.scale == (8.0, 8.0) and coarse.mask.shape == (256, 384)
    for mask, expected in ((tissue.mask, blob[::16, ::16]), (coarse.mask, blob[::8, ::8])):
        # The levels subsample level 0 (their pixel k is level-0 pixel 16 k): the blob as stored,
        # up to its one-pixel border, where block averages are part glass.
        border = ndimage.binary_dilation(expected) & ~ndimage.binary_erosion(expected)
        assert not (mask != expected)[~border].any()
        assert (mask != expected).sum() <= 0.03 * expected.sum()


def test_a_100k_pyramid_touches_only_its_low_level_in_bounded_memory():
    dims = [(100_000, 100_000), (25_000, 25_000), (6_250, 6_250), (1_562, 1_562)]
    slide = PaintedSlide(dims, [1.0, 4.0, 16.0, 64.0], (0.25, 0.25), disc_painter(40_000, 55_000, 20_000))
    tracemalloc.start()
    try:
        tissue = detect_tissue(slide, keep_overview=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert {level for level, *_ in slide.reads} == {2}  # 8 um/px: level 2 (4 um/px) in 2 x 2 blocks
    assert max(w * h for *_, w, h in slide.reads) <= 1024 * 1024
    assert sum(w * h for *_, w, h in slide.reads) == 6_250 * 6_250  # each level pixel read once
    assert tissue.mask.shape == (3125, 3125) and tissue.scale == (32.0, 32.0)
    # Level 2 alone would be 117 MB; the docstring promises ~16 bytes per mask pixel (156 MB) + one chunk.
    assert peak < 16 * 3125 ** 2 + 10 * 2 ** 20, peak / 2 ** 20
    area = math.pi * 20_000 ** 2 * 0.25 ** 2 * 1e-6  # the disc in mm^2
    assert tissue.tissue_area_mm2() == pytest.approx(area, rel=0.01)


# ---------------------------------------------------------------------------- window selection
def _brute_force(tissue: TissueMask, grid: TileGrid, source: RegionSource):
    """Per window: loop over every mask pixel and test whether its level-0 square overlaps the window."""
    (ox, oy), step = source.origin, source.scale
    h, w = tissue.mask.shape
    counts = np.zeros((len(grid.row_starts), len(grid.col_starts)), np.int64)
    area = np.zeros_like(counts)
    for r, y in enumerate(grid.row_starts):
        for c, x in enumerate(grid.col_starts):
            x0, x1 = ox + x * step, ox + (x + grid.tile_width) * step
            y0, y1 = oy + y * step, oy + (y + grid.tile_height) * step
            # every mask pixel index (also beyond the mask) whose span overlaps the window
            js = [j for j in range(-50, w + 50) if tissue.origin[0] + j * tissue.scale[0] < x1 - 1e-6
                  and tissue.origin[0] + (j + 1) * tissue.scale[0] > x0 + 1e-6]
            is_ = [i for i in range(-50, h + 50) if tissue.origin[1] + i * tissue.scale[1] < y1 - 1e-6
                   and tissue.origin[1] + (i + 1) * tissue.scale[1] > y0 + 1e-6]
            area[r, c] = len(js) * len(is_)
            counts[r, c] = sum(int(tissue.mask[i, j]) for i in is_ for j in js if 0 <= i < h and 0 <= j < w)
    return counts, area


@pytest.mark.parametrize("scale, region, target_mpp, tile, stride", [
    ((16.0, 16.0), None, 0.5, 256, 192),
    ((15.7, 16.3), Region(300, 170, 2500, 1700), 1.0, 200, 150),
    ((16.0, 16.0), Region(-400, 100, 2000, 1500), 0.5, 300, 300),  # overhangs the slide
])
def test_window_selection_equals_a_brute_force_count(scale, region, target_mpp, tile, stride):
    rng = np.random.default_rng(3)
    mask = ndimage.binary_opening(rng.random((130, 190)) < 0.35)
    reader = PlainImageReader.from_array(np.full((2100, 3000, 3), 255, np.uint8), "slide.png", mpp=0.5)
    tissue = TissueMask(mask, origin=(0.0, 0.0), scale=scale, mpp=reader.mpp)
    source = RegionSource.open(reader, region, target_mpp=target_mpp, allow_partial=True)
    grid = TileGrid(source.width, source.height, (tile, tile), (stride, stride))
    counts, fractions = tissue.window_fractions(grid, source)
    ref_counts, ref_area = _brute_force(tissue, grid, source)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(fractions, ref_counts / ref_area)
    for min_fraction in (0.0, 0.2, 0.5):
        expected = (ref_counts > 0) & (ref_counts / ref_area >= min_fraction)
        np.testing.assert_array_equal(tissue.window_selection(grid, source, min_fraction), expected)
    assert 0 < tissue.window_selection(grid, source).sum() < len(grid)
    with pytest.raises(ValueError, match="minimum tissue fraction"):
        tissue.window_selection(grid, source, 1.5)


def test_tissue_area_in_a_region_counts_partial_mask_pixels():
    mask = np.zeros((10, 10), bool)
    mask[2:6, 3:8] = True
    tissue = TissueMask(mask, origin=(0.0, 0.0), scale=(10.0, 10.0), mpp=(0.5, 0.5))
    fine = np.repeat(np.repeat(mask, 10, axis=0), 10, axis=1)  # level-0 pixels
    region = Region(35, 15, 32, 23)
    assert tissue.tissue_pixels(region) == fine[15:38, 35:67].sum()
    assert tissue.tissue_area_mm2(region) == pytest.approx(fine[15:38, 35:67].sum() * 0.25e-6)


# ---------------------------------------------------------------------------- user masks
SLIDE_W, SLIDE_H = 4096, 3072


@pytest.fixture()
def white_slide():
    return PaintedSlide([(SLIDE_W, SLIDE_H)], None, (0.5, 0.5), lambda xs, ys: np.full(
        (ys.shape[0], xs.shape[1], 3), 255, np.uint8), name="white.tif")


def _grid_and_source(reader):
    source = RegionSource.open(reader, target_mpp=0.5)
    return TileGrid(source.width, source.height, (512, 512), (512, 512)), source


def _windows_hit(geometry, grid, source):
    from shapely.geometry import box

    (ox, oy), step = source.origin, source.scale
    return np.array([[geometry.intersection(box(ox + x * step, oy + y * step, ox + (x + 512) * step,
                                                oy + (y + 512) * step)).area > 0
                      for x in grid.col_starts] for y in grid.row_starts])


def test_geojson_regions_select_exactly_the_windows_they_cover(tmp_path, white_slide):
    from shapely.geometry import MultiPolygon, Polygon, mapping
    from shapely.ops import unary_union

    # Edges stay more than one mask pixel (16 px) away from window borders they do not cross.
    rect = Polygon([(600, 1100), (1400, 1100), (1400, 1900), (600, 1900)])
    ring = Polygon([(2100, 100), (3990, 100), (3990, 1990), (2100, 1990)],
                   holes=[[(2530, 480), (3110, 480), (3110, 1060), (2530, 1060)]])  # frees window (1, 5)
    speck = Polygon([(200, 2800), (205, 2800), (205, 2805)])  # far smaller than a mask pixel
    shapes = MultiPolygon([rect, speck])
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": mapping(shapes), "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": mapping(ring), "properties": {"objectType": "annotation"}}]}
    path = tmp_path / "regions.geojson"
    path.write_text(json.dumps(doc))
    tissue = load_tissue_mask(path, white_slide)
    assert tissue.source == f"geojson: {path}" and tissue.scale == (16.0, 16.0)
    grid, source = _grid_and_source(white_slide)
    expected = _windows_hit(unary_union([rect, ring, speck]), grid, source)
    assert not expected[1, 5] and expected[5, 0] and expected.sum() == 4 + 15 + 1
    np.testing.assert_array_equal(tissue.window_selection(grid, source), expected)
    # The rasterised area matches the polygons' (to the mask pixels along the edges).
    ours = tissue.tissue_pixels()
    assert abs(ours - unary_union([rect, ring]).area) < 0.05 * ours
    # A QuPath list of features and a bare geometry read the same.
    path.write_text(json.dumps([doc["features"][1]]))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(mapping(ring)))
    np.testing.assert_array_equal(tissue_from_geojson(path, white_slide).mask, load_tissue_mask(bare, white_slide).mask)


def test_an_image_mask_selects_exactly_the_windows_it_covers(tmp_path, white_slide):
    mask = np.zeros((768, 1024), np.uint8)  # a quarter of the slide's size: 4 level-0 px per mask px
    mask[300:460, 140:350] = 255            # level-0 x 560..1400, y 1200..1840
    mask[20:40, 900:1010] = 1               # level-0 x 3600..4040, y 80..160
    grid, source = _grid_and_source(white_slide)
    from shapely.geometry import box
    from shapely.ops import unary_union
    expected = _windows_hit(unary_union([box(560, 1200, 1400, 1840), box(3600, 80, 4040, 160)]), grid, source)
    assert expected.sum() == 4 + 1
    for mode, data in (("L", mask), ("RGB", np.stack([np.zeros_like(mask), mask, np.zeros_like(mask)], -1)),
                       ("1", mask > 0)):
        path = tmp_path / f"mask_{mode}.png"
        image = Image.fromarray(data)
        assert image.mode == mode
        image.save(path)
        tissue = tissue_from_image(path, white_slide)
        assert tissue.scale == (4.0, 4.0), mode
        np.testing.assert_array_equal(tissue.window_selection(grid, source), expected, err_msg=mode)
    # Shrunk to fit a smaller mask size, nothing drawn is lost.
    small = tissue_from_image(tmp_path / "mask_L.png", white_slide, max_side=100)
    assert small.scale == (4.0 * 11, 4.0 * 11)
    chosen = small.window_selection(grid, source)
    assert (chosen | expected == chosen).all()  # a superset ...
    grown = unary_union([box(560, 1200, 1400, 1840), box(3600, 80, 4040, 160)]).buffer(44, cap_style="square")
    np.testing.assert_array_equal(chosen, _windows_hit(grown, grid, source))  # ... by at most one 44-px block


def test_bad_masks_are_refused_with_the_file_named(tmp_path, white_slide):
    def refused(path, error, *words):
        with pytest.raises(error) as info:
            load_tissue_mask(path, white_slide)
        for word in (str(path),) + words:
            assert word in str(info.value), (word, str(info.value))

    not_json = tmp_path / "broken.geojson"
    not_json.write_text("{ not json")
    refused(not_json, ValueError, "cannot be read as GeoJSON")
    points = tmp_path / "points.geojson"
    points.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}))
    refused(points, ValueError, "Point", "Polygon")
    outside = tmp_path / "outside.geojson"
    outside.write_text(json.dumps({"type": "Polygon", "coordinates": [[[9000, 9000], [9100, 9000], [9100, 9100],
                                                                        [9000, 9000]]]}))
    refused(outside, ValueError, "no polygon lies inside", "4096 x 3072")
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    refused(empty, ValueError, "no polygons")
    bowtie = tmp_path / "bowtie.geojson"
    bowtie.write_text(json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [100, 100], [100, 0], [0, 100],
                                                                       [0, 0]]]}))
    refused(bowtie, ValueError, "not a valid polygon")
    refused(tmp_path / "missing.geojson", FileNotFoundError, "no such file")

    wrong_aspect = tmp_path / "square.png"
    Image.fromarray(np.zeros((500, 500), np.uint8)).save(wrong_aspect)
    refused(wrong_aspect, ValueError, "500 x 500", "4096 x 3072")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    refused(garbage, ImageReadError)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((768, 1024, 4), np.uint8), "RGBA").save(rgba)
    refused(rgba, ImageReadError, "RGBA")


# ---------------------------------------------------------------------------- thumbnail
def test_thumbnail_is_published_atomically_with_outline_and_windows(tmp_path, white_slide):
    mask = np.zeros((192, 256), bool)
    mask[40:120, 60:200] = True  # level-0 x 960..3200, y 640..1920
    tissue = TissueMask(mask, origin=(0.0, 0.0), scale=(16.0, 16.0), mpp=(0.5, 0.5))
    grid, source = _grid_and_source(white_slide)
    select = tissue.window_selection(grid, source)
    boxes = window_boxes(grid, source, select)
    assert boxes.shape == (select.sum(), 4)
    path = tmp_path / "out" / "thumbnail.png"
    pending = write_thumbnail(path, white_slide, tissue, boxes, max_side=512)  # 8 level-0 px per thumbnail px
    assert not path.exists() and pending.tmp.is_file()
    pending.commit()
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (384, 512, 3)
    green = np.all(image == OUTLINE_RGB, axis=-1)
    ys, xs = np.nonzero(green)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (120, 399, 80, 239)  # the mask's border, 1/8 scale
    assert not green[81:239, 121:399].any()  # an outline, not a filled area
    blue = np.all(image == WINDOW_RGB, axis=-1)
    for x0, y0, x1, y1 in (boxes / 8).astype(int):
        edge = np.concatenate([blue[y0, x0:x1] | green[y0, x0:x1], blue[y0:y1, x0] | green[y0:y1, x0]])
        assert edge.all()
    assert blue.any() and not blue[:, 480:].any()  # no window runs over the glass on the right


def test_a_failed_thumbnail_leaves_nothing_behind(tmp_path, white_slide):
    with pytest.raises(ValueError, match="thumbnail.jpg"):
        write_thumbnail(tmp_path / "thumbnail.jpg", white_slide)
    assert list(tmp_path.iterdir()) == []


def test_thumbnail_of_a_real_slide_reuses_the_detection_overview(tmp_path, svs_reader, monkeypatch):
    tissue = detect_tissue(svs_reader)
    reads = _count_reads(monkeypatch, svs_reader)
    pending = write_thumbnail(tmp_path / "t.png", svs_reader, tissue, max_side=128)
    pending.commit()
    assert reads == []  # 128 px is coarser than the 8 um/px overview: no second read
    image = cv2.imread(str(tmp_path / "t.png"))[..., ::-1]
    assert image.shape[:2] == (128, 96) and np.all(image == OUTLINE_RGB, axis=-1).sum() > 100


def test_detection_in_a_region_reads_only_the_region(svs_reader, monkeypatch):
    whole = detect_tissue(svs_reader)
    region = Region(480, 640, 1200, 1504)  # on the 16-px block grid of the whole-slide mask
    reads = _count_reads(monkeypatch, svs_reader)
    part = detect_tissue(svs_reader, region=region)
    assert sum(n for _, n in reads) == region.w * region.h
    assert part.origin == (480.0, 640.0) and part.mask.shape == (94, 75)
    crop = whole.mask[40:134, 30:105]
    np.testing.assert_array_equal(part.overview, whole.overview[40:134, 30:105])  # the same blocks
    assert part.threshold == whole.threshold
    # Only morphology differs: glass enclosed by tissue in the slide may open onto the region's edge
    # (no hole to fill there). Tissue by the threshold itself is tissue in both. Measured: 97.2% agree.
    differ = part.mask != crop
    assert (part.mask == crop).mean() >= 0.96
    assert not (differ & (saturation(part.overview) > part.threshold)).any()
    # Windows over the region: the region's mask and the whole-slide mask choose alike.
    source = RegionSource.open(svs_reader, region, target_mpp=0.5)
    grid = TileGrid(source.width, source.height, (256, 256), (256, 256))
    chosen = part.window_selection(grid, source)
    assert (chosen != whole.window_selection(grid, source)).sum() <= 1 and 0 < chosen.sum() < chosen.size
    summary = selection_summary(part, chosen, region)
    assert summary["windows_skipped"] == chosen.size - chosen.sum() and summary["windows_total"] == len(grid)
    assert summary["tissue_area_mm2"] == pytest.approx(part.tissue_area_mm2(), rel=1e-5)
