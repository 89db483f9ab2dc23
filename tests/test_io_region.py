"""Tests for uniseg.io.region: region parsing, level/resolution planning and RegionSource reads."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from uniseg.io import open_slide
from uniseg.io.plain import PlainImageReader
from uniseg.io.region import Region, RegionSource, parse_region, plan_read
from uniseg.io.slide import SlideReader

SVS = Path(__file__).resolve().parents[1] / "data" / "wsi" / "CMU-1-Small-Region.svs"
MPP = 0.499


class StubReader(SlideReader):
    """Levels and resolution only: enough for planning, which never reads pixels."""

    def __init__(self, dimensions: list, mpp: tuple | None, name: str = "stub.svs") -> None:
        self._init_levels(name, dimensions, mpp)

    def _read_inside(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        raise AssertionError("planning must not read pixels")


@pytest.fixture
def stub() -> StubReader:
    # 40x scan (0.25 um/px) with 2x, 4x and 16x levels.
    return StubReader([(16000, 12000), (8000, 6000), (4000, 3000), (1000, 750)], (0.25, 0.25))


@pytest.fixture(scope="module")
def svs_pixels() -> np.ndarray:
    if not SVS.is_file():
        pytest.fail(f"test slide {SVS} is missing; see data/README.md for how to re-obtain it")
    return tifffile.imread(SVS)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory, svs_pixels: np.ndarray) -> Path:
    """The SVS rewritten as a lossless 3-level pyramid (SubIFDs flagged reduced, mpp in the
    resolution tags); level k is exact 2**k subsampling so positions can be checked exactly."""
    path = tmp_path_factory.mktemp("region") / "pyramid.tif"
    levels = [svs_pixels, svs_pixels[::2, ::2], svs_pixels[::4, ::4]]
    with tifffile.TiffWriter(path) as tif:
        common = dict(tile=(256, 256), compression="zlib", photometric="rgb", metadata=None)
        tif.write(levels[0], subifds=2, resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER", **common)
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **common)
    return path


# ---------------------------------------------------------------------------- Region
def test_parse_region() -> None:
    assert parse_region("10,20,300,400") == Region(10, 20, 300, 400)
    assert parse_region(" -5, 0 ,7,8 ") == Region(-5, 0, 7, 8)
    assert str(parse_region("1,2,3,4")) == "1,2,3,4"
    for bad in ("1,2,3", "1,2,3,4,5", "a,b,c,d", "1.5,2,3,4", ""):
        with pytest.raises(ValueError, match="expected 'x,y,w,h'"):
            parse_region(bad)
    with pytest.raises(ValueError, match="non-positive size"):
        parse_region("0,0,0,10")
    with pytest.raises(TypeError, match="integer"):
        Region(0, 0, 1.5, 2)


# ---------------------------------------------------------------------------- planning
@pytest.mark.parametrize("target, level, read_scale", [
    (0.25, 0, 1.0),     # native
    (0.2512, 0, 1.0),   # within 1 %: no interpolation pass
    (0.5, 1, 1.0),      # exactly the 2x level
    (0.6, 1, 1.2),      # between levels: shrink the finer one
    (0.9, 1, 1.8),
    (1.0, 2, 1.0),
    (3.0, 2, 3.0),
    (5.0, 3, 1.25),
    (0.1, 0, 0.4),      # finer than the scan: enlarge level 0
])
def test_plan_chooses_the_coarsest_sufficient_level(stub: StubReader, target: float, level: int,
                                                    read_scale: float) -> None:
    plan = plan_read(stub, Region(4000, 2000, 2000, 1000), target_mpp=target)
    assert plan.level == level
    assert plan.read_scale == pytest.approx(read_scale)
    assert plan.resample == (read_scale != 1.0)
    assert plan.mpp == pytest.approx(target, rel=0.01)
    assert plan.size == (round(2000 / plan.scale), round(1000 / plan.scale))


def test_plan_with_a_level_and_with_both(stub: StubReader) -> None:
    plan = plan_read(stub, Region(4001, 2003, 2000, 1000), level=2)
    assert (plan.level, plan.resample, plan.scale, plan.mpp) == (2, False, 4.0, 1.0)
    # No resampling: the output is level 2's grid, snapped to cover the region.
    assert plan.origin == (4000.0, 2000.0) and plan.size == (501, 251)
    both = plan_read(stub, Region(4000, 2000, 2000, 1000), target_mpp=0.6, level=2)
    assert both.level == 2 and both.read_scale == pytest.approx(0.6) and both.resample
    whole = plan_read(stub)
    assert whole.region == Region(0, 0, 16000, 12000) and whole.level == 0 and whole.size == (16000, 12000)


def test_target_mpp_needs_a_known_resolution() -> None:
    unknown = StubReader([(1000, 800), (500, 400)], None, name="anon.tif")
    with pytest.raises(ValueError, match=r"anon.tif: the slide does not record its resolution.*mpp=.*level"):
        plan_read(unknown, target_mpp=0.5)
    assert plan_read(unknown, level=1).mpp is None
    assert plan_read(StubReader([(1000, 800)], (0.25, 0.25)), target_mpp=0.5).size == (500, 400)
    for bad in (0, -0.5, float("inf"), "fast"):
        with pytest.raises(ValueError, match="positive number of microns"):
            plan_read(StubReader([(10, 10)], (0.25, 0.25)), target_mpp=bad)


def test_regions_outside_the_slide(stub: StubReader) -> None:
    with pytest.raises(ValueError, match=r"stub.svs: region x,y,w,h = 15000,0,2000,100 .*extends beyond "
                                         r"the slide, which is 16000 x 12000 pixels.*allow_partial"):
        plan_read(stub, Region(15000, 0, 2000, 100), target_mpp=0.5)
    with pytest.raises(ValueError, match=r"stub.svs: region x,y,w,h = -10,5,10,10 .*lies entirely outside"):
        plan_read(stub, Region(-10, 5, 10, 10), allow_partial=True)
    plan = plan_read(stub, Region(15000, 0, 2000, 100), allow_partial=True)
    assert plan.size == (2000, 100)
    with pytest.raises(ValueError, match="stub.svs: level 4 does not exist"):
        plan_read(stub, level=4)


def test_mpp_override_through_open_slide(tmp_path: Path) -> None:
    path = tmp_path / "roi.png"
    cv2.imwrite(str(path), np.zeros((100, 80, 3), np.uint8))
    with pytest.raises(ValueError, match="does not record its resolution"):
        plan_read(open_slide(path), target_mpp=0.5)
    assert plan_read(open_slide(path, mpp=0.25), target_mpp=0.5).size == (40, 50)


# ---------------------------------------------------------------------------- reading real pixels
def test_level_1_patch_maps_back_to_level_0(pyramid: Path, svs_pixels: np.ndarray) -> None:
    x0, y0 = 1000, 1200  # a 64 x 64 level-0 patch of tissue
    template = svs_pixels[y0:y0 + 64:2, x0:x0 + 64:2]
    assert template.std() > 10  # distinctive, not glass
    with open_slide(pyramid) as reader:
        for source in (RegionSource.open(reader, Region(800, 1000, 600, 600), level=1),
                       RegionSource.open(reader, Region(800, 1000, 600, 600), target_mpp=2 * MPP)):
            assert source.plan.level == 1 and not source.plan.resample
            # Level 1 is 1110 x 1484 of 2220 x 2967: its (OpenSlide-style, averaged) downsample is
            # 1.9997, so covering the region can take one pixel more than 600 / 2.
            assert source.size in ((300, 300), (301, 301)) and source.scale == pytest.approx(2.0, rel=1e-3)
            view = source.read_all()
            scores = cv2.matchTemplate(view, template, cv2.TM_SQDIFF)
            by, bx = np.unravel_index(scores.argmin(), scores.shape)
            assert (bx, by) == ((x0 - 800) // 2, (y0 - 1000) // 2)
            np.testing.assert_array_equal(view[by:by + 32, bx:bx + 32], template)
            assert source.to_slide(bx, by) == pytest.approx((x0, y0), abs=0.5)


def test_resampled_positions_map_back(svs_pixels: np.ndarray) -> None:
    canvas = np.full((900, 1000, 3), 255, np.uint8)
    canvas[400:460, 300:340] = 0  # dark block centred on level-0 (320, 430)
    reader = PlainImageReader.from_array(canvas, mpp=0.25)
    source = RegionSource.open(reader, Region(101, 207, 700, 600), target_mpp=0.25 * 2.5)
    assert source.plan.resample and source.scale == pytest.approx(2.5)
    dark = 255.0 - source.read_all()[..., 0]
    ys, xs = np.mgrid[:dark.shape[0], :dark.shape[1]]
    cx, cy = (xs * dark).sum() / dark.sum() + 0.5, (ys * dark).sum() / dark.sum() + 0.5  # pixel centres
    assert source.to_slide(cx, cy) == pytest.approx((320, 430), abs=0.5)
    assert source.plan.from_slide(*source.to_slide(12.5, 40.0)) == pytest.approx((12.5, 40.0))


@pytest.mark.parametrize("target, level, exact", [
    (None, 0, True), (None, 1, True), (0.7, None, False), (1.3, None, False), (0.3, None, False),
    (0.8, 1, False),
])
def test_quadrants_equal_the_whole(pyramid: Path, target, level, exact: bool) -> None:
    with open_slide(pyramid) as reader:
        source = RegionSource.open(reader, Region(101, 203, 801, 603), target_mpp=target, level=level)
        assert source.plan.resample == (not exact)
        whole = source.read_all()
        w, h = source.size
        hx, hy = w // 2 + 1, h // 2 - 1
        quads = np.full_like(whole, 7)
        for x, y, qw, qh in ((0, 0, hx, hy), (hx, 0, w - hx, hy), (0, hy, hx, h - hy), (hx, hy, w - hx, h - hy)):
            quads[y:y + qh, x:x + qw] = source.read(x, y, qw, qh)
    if exact:
        np.testing.assert_array_equal(quads, whole)
    else:
        assert np.abs(quads.astype(int) - whole).max() <= 1


def test_no_resampling_reads_the_level_verbatim(pyramid: Path, svs_pixels: np.ndarray) -> None:
    with open_slide(pyramid) as reader:
        source = RegionSource.open(reader, Region(101, 203, 801, 603), level=1)
        lx, ly = (int(v) for v in source.plan.level_origin)
        w, h = source.size
        assert (lx, ly) == (50, 101) and abs(w - 401) <= 1 and abs(h - 302) <= 1
        assert source.origin == pytest.approx((100.0, 202.0), abs=0.1)
        np.testing.assert_array_equal(source.read_all(), svs_pixels[::2, ::2][ly:ly + h, lx:lx + w])
        native = RegionSource.open(reader, Region(101, 203, 801, 603))
        np.testing.assert_array_equal(native.read(10, 20, 30, 40), svs_pixels[223:263, 111:141])


def test_partial_region_and_reads_outside_are_white(pyramid: Path, svs_pixels: np.ndarray) -> None:
    with open_slide(pyramid) as reader:
        source = RegionSource.open(reader, Region(2100, 2900, 300, 200), target_mpp=2 * MPP,
                                   allow_partial=True)
        out = source.read_all()
        w, h = source.size
        beyond = source.read(w - 10, h - 10, 20, 20)  # past the virtual image's own edge
        with pytest.raises(ValueError, match="window size must be positive"):
            source.read(0, 0, 0, 5)
    assert abs(w - 150) <= 1 and abs(h - 100) <= 1
    inside = svs_pixels[::2, ::2][1450:, 1050:]  # 34 x 60 level-1 pixels are on the slide
    np.testing.assert_array_equal(out[:34, :60], inside)
    assert (out[34:] == 255).all() and (out[:, 60:] == 255).all()
    assert (beyond[10:] == 255).all() and (beyond[:, 10:] == 255).all()
