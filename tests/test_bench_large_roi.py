"""benchmarks/bench_large_roi.py end to end on a small ROI: both paths run, agree, and report (no timing checks)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_large_roi.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_large_roi", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_mmseg_requirement_rules_out_the_32k_roi_on_this_class_of_machine(bench):
    # float input + scores + count + one padded window: 3 classes at 32768^2 need 40 GiB, over 24
    assert bench.mmseg_bytes_needed(32768, 3) == 40 * 2**30
    assert bench.mmseg_bytes_needed(8192, 3) == 8192 * 8192 * (12 + 12 + 4 + 12)


def test_roi_is_the_real_slide_region_mirrored_and_cached(bench, tmp_path):
    import numpy as np
    import tifffile

    from uniseg.io import open_slide

    with open_slide(bench.SOURCE) as slide:
        w, h = slide.dimensions
        source = slide.read_region(0, 0, w, h)
    size = max(w, h) + 200  # past the source's edge in both directions
    path = bench.make_roi(size, tmp_path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.shape == (size, size, 3) and page.is_tiled
        img = page.asarray()
    np.testing.assert_array_equal(img[:h, :w], source)
    np.testing.assert_array_equal(img[:h, w:w + 10], source[:, ::-1][:, :10])  # mirrored, no seam
    mtime = path.stat().st_mtime_ns
    assert bench.make_roi(size, tmp_path) == path and path.stat().st_mtime_ns == mtime


def test_both_paths_run_on_the_same_windows_and_agree(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "320", "--tile", "128", "128", "--stride", "96", "96",
         "--threads", "1", "--batch-size", "4", "--cache", str(tmp_path / "cache"), "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    uniseg, mmseg = summary["results"]["uniseg"], summary["results"]["mmseg"]
    # ceil((320 - 128) / 96) + 1 = 3 windows per side, the last one flush with the edge
    assert uniseg["windows"] == mmseg["windows"] == 9
    assert uniseg["rss_added"] >= 0 and mmseg["rss_added"] > 0
    assert summary["memory_ratio"] == uniseg["rss_added"] / mmseg["rss_added"]
    assert summary["throughput_ratio"] > 0
    # random tiny model, uniform window: the streamed mask is mmseg's mask
    assert summary["pixel_agreement"] >= 0.999
    assert "memory added, uniseg / mmseg" in proc.stdout and "pixel agreement" in proc.stdout
