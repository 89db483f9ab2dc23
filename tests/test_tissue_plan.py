"""Whole-slide runs read only the windows that touch tissue (segment_file and tools/infer.py).

The slide-level mask (:mod:`uniseg.inference.tissue`) is made before any window is read; these
tests check what a run then reads, writes and reports, against a run of every window.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from uniseg.inference.api import segment_file
from uniseg.inference.tiling import TileGrid
from uniseg.io import RegionSource
from uniseg.utils.imageio import read_label

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_infer_api import DEMO_CONFIG, REPO, _segmentor  # noqa: E402

SVS = REPO / "data/wsi/CMU-1-Small-Region.svs"
NUCLEI = REPO / "data/nuclei/images/nuclei_br.png"  # a greyscale (fluorescence) image


class _ReadLog:
    """Records every window rectangle the runners read from a RegionSource (any thread)."""

    def __init__(self, monkeypatch):
        self.rects = []
        original = RegionSource.read

        def read(source, x, y, w, h):
            self.rects.append((x, y, w, h))
            return original(source, x, y, w, h)

        monkeypatch.setattr(RegionSource, "read", read)

    def coverage(self, shape) -> np.ndarray:
        seen = np.zeros(shape, bool)
        for x, y, w, h in self.rects:
            seen[max(y, 0):y + h, max(x, 0):x + w] = True
        return seen


def _coverage(grid: TileGrid, select: np.ndarray) -> np.ndarray:
    """How many selected windows cover each pixel."""
    count = np.zeros((grid.height, grid.width), np.int32)
    th, tw = grid.tile_height, grid.tile_width
    for r, y in enumerate(grid.row_starts):
        for c, x in enumerate(grid.col_starts):
            if select[r, c]:
                count[y:y + th, x:x + tw] += 1
    return count


def test_windows_without_tissue_are_never_read_and_the_rest_equals_a_run_of_every_window(tmp_path, monkeypatch):
    from uniseg.inference.tissue import detect_tissue
    from uniseg.io import open_slide

    segmentor = _segmentor()
    every = segment_file(segmentor, str(SVS), str(tmp_path / "all"), formats=["png"], target_mpp=2.0,
                         tissue_detection=False, progress=False)
    log = _ReadLog(monkeypatch)
    summary = segment_file(segmentor, str(SVS), str(tmp_path / "tissue"), formats=["png"], target_mpp=2.0,
                           progress=False)
    assert every["size"] == summary["size"]
    width, height = summary["size"]
    # the same plan, made independently of the run: which windows touch the detected tissue
    with open_slide(SVS) as reader:
        source = RegionSource.open(reader, None, 2.0, None)
        grid = TileGrid(width, height, segmentor.tile, segmentor.stride)
        select = detect_tissue(reader).window_selection(grid, source)
    assert 0 < select.sum() < select.size  # this slide has glass: some windows are skipped
    assert summary["windows_outside_tissue"] == int(select.size - select.sum())
    assert summary["tiles_skipped"] == int(select.size - select.sum()) and summary["tiles"] == select.size
    assert summary["tissue_area_mm2"] > 0 and summary["tissue_mask"]["source"].startswith("detected")

    covered = _coverage(grid, select)
    read = log.coverage((height, width))
    np.testing.assert_array_equal(read, covered > 0)  # exactly the selected windows were read, nothing else

    labels = read_label(tmp_path / "tissue" / "CMU-1-Small-Region_mask.png")
    reference = read_label(tmp_path / "all" / "CMU-1-Small-Region_mask.png")
    # where no skipped window overlaps, a pixel is blended from the same windows as before: the same label
    only_selected = covered == _coverage(grid, np.ones_like(select))
    np.testing.assert_array_equal(labels[only_selected], reference[only_selected])
    assert (labels[covered == 0] == 0).all()  # never read: background
    assert (reference[covered == 0] == 1).sum() < (reference == 1).sum()  # the comparison covers the dark tissue


def test_a_geojson_mask_restricts_the_run_to_its_regions_and_the_thumbnail_joins_the_set(tmp_path, monkeypatch):
    regions = tmp_path / "regions.geojson"
    polygon = [[400, 400], [1000, 400], [1000, 900], [400, 900], [400, 400]]  # level-0 pixels
    regions.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [polygon]}}]}))
    log = _ReadLog(monkeypatch)
    summary = segment_file(_segmentor(), str(SVS), str(tmp_path / "out"), formats=["png"], target_mpp=2.0,
                           tissue_mask=str(regions), progress=False)
    scale = summary["scale"]
    # every read lies within the windows that touch the polygon (in output pixels: level-0 / scale)
    x0, y0, x1, y1 = 400 / scale, 400 / scale, 1000 / scale, 900 / scale
    th, tw = _segmentor().tile
    for x, y, w, h in log.rects:
        assert x < x1 and x + w > x0 - tw and y < y1 and y + h > y0 - th
    assert summary["windows_outside_tissue"] > 0 and summary["tissue_mask"]["source"].startswith("geojson")
    names = sorted(Path(p).name for p in summary["outputs"])
    assert names == ["CMU-1-Small-Region_mask.png", "CMU-1-Small-Region_summary.json", "CMU-1-Small-Region_tissue.png"]
    thumb = np.asarray(__import__("PIL.Image").Image.open(tmp_path / "out" / "CMU-1-Small-Region_tissue.png"))
    assert thumb.ndim == 3 and (thumb == [0, 0, 255]).all(-1).any()  # the windows run are drawn in blue


def test_a_greyscale_image_runs_every_window(tmp_path):
    summary = segment_file(_segmentor(), str(NUCLEI), str(tmp_path), formats=["png"], progress=False)
    assert summary["windows_outside_tissue"] == 0 and summary["tiles_skipped"] == 0
    assert "greyscale" in summary["tissue_mask"]["source"]


def test_a_broken_mask_names_the_file_and_writes_nothing(tmp_path):
    bad = tmp_path / "mask.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(OSError, match="mask.png"):
        segment_file(_segmentor(), str(SVS), str(tmp_path / "out"), formats=["png"], target_mpp=2.0,
                     tissue_mask=str(bad), progress=False)
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("args, message", [
    (["--tissue-mask", "nowhere.geojson"], r"--tissue-mask \(tissue_mask\): nowhere.geojson: no such file"),
    (["--tissue-min-fraction", "1.5"], r"--tissue-min-fraction \(tissue_min_fraction\) must be a fraction"),
    (["--tissue-mask", str(SVS), "--no-tissue-detection"], r"not allowed with argument"),
])
def test_the_cli_refuses_bad_tissue_options(tmp_path, args, message):
    proc = subprocess.run([sys.executable, str(REPO / "tools/infer.py"), str(DEMO_CONFIG), "none.pth", str(SVS),
                           "--out", str(tmp_path / "out"), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert __import__("re").search(message, proc.stderr), proc.stderr
    assert not (tmp_path / "out").exists()
