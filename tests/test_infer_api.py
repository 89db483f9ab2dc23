"""Segmenting files: regions at pyramid levels mapped back to slide space, outputs as complete sets
(full disk, kill -9, leftovers of killed runs), option checks, errors, the CLI."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely
import tifffile
import torch
from torch import nn

from uniseg.inference import SlidingWindowInferencer
from uniseg.inference.api import Segmentor, check_distinct_stems, load_segmentor, segment_file
from uniseg.utils import atomic
from uniseg.utils.atomic import OutputWriteError
from uniseg.utils.imageio import ImageReadError, read_label

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs/uni/mask2former_uni-tiny-adapter_1xb4-1k_ihc-demo-128x128.py"


class _DarkIsClassOne(nn.Module):
    """Position-independent stand-in for a segmentor: class 1 where the pixel is dark."""

    def __init__(self):
        super().__init__()
        self.data_preprocessor = nn.Module()
        self.data_preprocessor.register_buffer("mean", torch.zeros(3, 1, 1))
        self.data_preprocessor.register_buffer("std", torch.ones(3, 1, 1))
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode_decode(self, x, metas):
        dark = (x.mean(1, keepdim=True) < 100).float()
        return torch.cat([1 - dark, dark], 1)


class _LightIsClassOne(_DarkIsClassOne):
    """The opposite answer: tells the outputs of two runs apart."""

    def encode_decode(self, x, metas):
        return super().encode_decode(x, metas).flip(1)


class _SoftDarkness(_DarkIsClassOne):
    """Graded class scores (a logistic of the brightness), so probabilities take many values."""

    def encode_decode(self, x, metas):
        dark = torch.sigmoid((110 - x.mean(1, keepdim=True)) / 25)
        return torch.cat([1 - dark, dark], 1)


def _segmentor(model=None) -> Segmentor:
    return Segmentor(model or _DarkIsClassOne().eval(), ("background", "dark"), [(0, 0, 0), (255, 0, 0)],
                     tile=(64, 64), stride=(48, 48), working_mpp=0.5, config_path="test")


def _blobs(height=96, width=112, seed=0) -> np.ndarray:
    """Light background with dark discs: clearly two classes for the stand-in models."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 225, np.uint8)
    for _ in range(6):
        cv2.circle(image, (int(rng.integers(0, width)), int(rng.integers(0, height))), int(rng.integers(5, 15)),
                   tuple(int(v) for v in rng.integers(20, 70, 3)), -1)
    return image


def _write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def _dark(image: np.ndarray) -> np.ndarray:
    """What _DarkIsClassOne predicts, computed directly."""
    return (image.astype(np.float32).mean(2) < 100).astype(np.uint8)


def _read_mask(path: Path) -> np.ndarray:
    return read_label(path)  # the palette PNG's indices, not its colours


def _assert_features_cover_exactly(features, mask: np.ndarray, origin, scale) -> None:
    """The polygons contain the slide-space centre of an output pixel if and only if its label is 1."""
    area = shapely.union_all([shapely.geometry.shape(f["geometry"]) for f in features])
    ys, xs = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    inside = shapely.contains_xy(area, origin[0] + (xs + 0.5) * scale, origin[1] + (ys + 0.5) * scale)
    np.testing.assert_array_equal(inside, mask == 1)


def _pyramid(path: Path, image: np.ndarray, mpp: float) -> Path:
    """Two-level tiled TIFF, reduced level as a SubIFD (subfiletype 1), resolution tags in cm."""
    half = image[::2, ::2]
    res = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(64, 64), subifds=1, photometric="rgb", resolution=res, resolutionunit="CENTIMETER")
        tif.write(half, tile=(64, 64), subfiletype=1, photometric="rgb",
                  resolution=(res[0] / 2, res[1] / 2), resolutionunit="CENTIMETER")
    return path


def _rasterize(features, shape, origin=(0, 0), scale=1.0) -> np.ndarray:
    import cv2

    mask = np.zeros(shape, np.uint8)
    for feature in features:
        rings = feature["geometry"]["coordinates"]
        pts = [np.round((np.asarray(r) - origin) / scale).astype(np.int32) for r in rings]
        cv2.fillPoly(mask, pts[:1], 1)
        if len(pts) > 1:
            cv2.fillPoly(mask, pts[1:], 0)
    return mask


def test_region_at_level_one_maps_back_to_slide_coordinates(tmp_path):
    image = np.full((512, 640, 3), 230, np.uint8)
    image[200:260, 300:380] = 20  # a dark block at level-0 (x 300..380, y 200..260)
    slide = _pyramid(tmp_path / "slide.tif", image, mpp=0.25)
    summary = segment_file(_segmentor(), str(slide), str(tmp_path / "out"), formats=["geojson", "tiff"],
                           region="256,128,256,256", level=1, progress=False)
    assert summary["level"] == 1 and summary["scale"] == pytest.approx(2.0, rel=1e-3)
    assert summary["size"] == [128, 128] and summary["origin"] == [256.0, 128.0]
    assert summary["mpp"] == pytest.approx(0.5, rel=1e-3)
    gj = json.loads((tmp_path / "out" / "slide_256_128_256_256.geojson").read_text())
    dark = [f for f in gj["features"] if f["properties"]["classification"]["name"] == "dark"]
    assert len(dark) == 1
    xs = [x for f in dark for x, _ in f["geometry"]["coordinates"][0]]
    ys = [y for f in dark for _, y in f["geometry"]["coordinates"][0]]
    # level-1 pixels are 2 level-0 pixels, and the block's edges are on even coordinates: exact
    assert (min(xs), max(xs), min(ys), max(ys)) == (300, 380, 200, 260)
    mask = tifffile.imread(tmp_path / "out" / "slide_256_128_256_256_mask.tif")
    assert mask.shape == (128, 128) and mask[(230 - 128) // 2, (340 - 256) // 2] == 1
    _assert_features_cover_exactly(dark, mask, origin=(256, 128), scale=2.0)


def test_geojson_of_the_real_svs_maps_back_exactly_to_the_mask(tmp_path):
    """A model with a known answer (dark pixels), a region of the real slide: features exist, and every
    one of them, in slide coordinates, covers exactly the mask's class-1 pixels."""
    svs = REPO / "data/wsi/CMU-1-Small-Region.svs"
    summary = segment_file(_segmentor(), str(svs), str(tmp_path), formats=["geojson", "png"],
                           region="1000,1200,300,200", progress=False)
    assert summary["origin"] == [1000.0, 1200.0] and summary["scale"] == 1.0  # 0.499 um/px is read as is
    stem = "CMU-1-Small-Region_1000_1200_300_200"
    mask = _read_mask(tmp_path / f"{stem}_mask.png")
    from uniseg.io import RegionSource, open_slide, parse_region

    with open_slide(svs) as reader:
        pixels = RegionSource.open(reader, parse_region("1000,1200,300,200"), 0.5).read(0, 0, 300, 200)
    np.testing.assert_array_equal(mask, _dark(pixels))  # the mask is the model's known answer
    assert 0.05 < mask.mean() < 0.95
    features = json.loads((tmp_path / f"{stem}.geojson").read_text())["features"]
    assert len(features) > 10 and {f["properties"]["classification"]["name"] for f in features} == {"dark"}
    _assert_features_cover_exactly(features, mask, origin=(1000, 1200), scale=1.0)


def test_probability_maps_sum_to_one_and_their_argmax_is_the_mask(tmp_path):
    image = _blobs(90, 130)
    image[::3] = np.linspace(20, 230, 130).astype(np.uint8)[:, None]  # rows of a ramp: graded probabilities
    path = _write_png(tmp_path / "in" / "soft.png", image)
    summary = segment_file(_segmentor(_SoftDarkness().eval()), str(path), str(tmp_path / "out"),
                           formats=["png", "probs"], progress=False)
    labels = _read_mask(tmp_path / "out" / "soft_mask.png")
    probs = np.stack([tifffile.imread(tmp_path / "out" / "soft_probs" / f"{name}.tif")
                      for name in ("background", "dark")]).astype(int)
    assert probs.shape == (2, 90, 130) and len(np.unique(probs[1])) > 20
    assert np.abs(probs.sum(0) - 255).max() <= 1
    top = probs.max(0)
    assert (np.take_along_axis(probs, labels[None].astype(np.int64), 0)[0] == top).all()
    unique = (probs == top).sum(0) == 1
    np.testing.assert_array_equal(probs.argmax(0)[unique], labels[unique])
    # and the values are the model's, normalised over the classes (a pixel-wise model: any window agrees)
    mean = image.astype(np.float32).mean(2)
    expected = 255 / (1 + np.exp(-(110 - mean) / 25))
    assert np.abs(probs[1] - expected).max() <= 1
    assert sorted(Path(p).name for p in summary["outputs"]) == [
        "background.tif", "dark.tif", "soft_mask.png", "soft_summary.json", "soft_tissue.png"]


def test_working_resolution_is_the_default_for_slides_with_mpp(tmp_path):
    image = np.full((256, 256, 3), 230, np.uint8)
    slide = _pyramid(tmp_path / "s.tif", image, mpp=0.25)
    summary = segment_file(_segmentor(), str(slide), str(tmp_path / "o"), formats=["png"], progress=False)
    assert summary["mpp"] == pytest.approx(0.5, rel=1e-3) and summary["size"] == [128, 128]


def test_corrupt_input_names_the_file_and_writes_nothing(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out = tmp_path / "out"
    with pytest.raises(ImageReadError, match="broken.svs"):
        segment_file(_segmentor(), str(bad), str(out), formats=["png", "tiff", "geojson"], progress=False)
    assert not out.exists()  # the input is read before the output folder is touched


def test_region_outside_the_image_is_an_error(tmp_path):
    slide = _pyramid(tmp_path / "s.tif", np.full((128, 128, 3), 200, np.uint8), mpp=0.5)
    with pytest.raises(ValueError, match=r"s.tif.*beyond"):
        segment_file(_segmentor(), str(slide), str(tmp_path / "o"), region="100,100,64,64", progress=False)


def test_failure_midway_leaves_no_partial_outputs(tmp_path):
    class FailsLater(_DarkIsClassOne):
        calls = 0

        def encode_decode(self, x, metas):
            FailsLater.calls += 1
            if FailsLater.calls > 3:
                raise RuntimeError("device lost")
            return super().encode_decode(x, metas)

    slide = _pyramid(tmp_path / "s.tif", np.full((512, 512, 3), 200, np.uint8), mpp=0.5)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="device lost"):
        segment_file(_segmentor(FailsLater().eval()), str(slide), str(out),
                     formats=["png", "tiff", "geojson", "overlay", "probs"], batch_size=1, progress=False)
    assert list(out.iterdir()) == []  # the folder was prepared, nothing of this input is in it


@pytest.mark.parametrize("workers", [0, 2])
def test_a_sink_failing_in_the_writer_thread_leaves_no_outputs(tmp_path, monkeypatch, workers):
    from uniseg.export.png import IndexedPngSink

    original, calls = IndexedPngSink._write_band, []

    def fails_on_the_second_band(self, *args):
        calls.append(__import__("threading").current_thread().name)
        if len(calls) == 2:
            raise OSError("disk full (test)")
        return original(self, *args)

    monkeypatch.setattr(IndexedPngSink, "_write_band", fails_on_the_second_band)
    slide = _pyramid(tmp_path / "s.tif", np.full((512, 512, 3), 200, np.uint8), mpp=0.5)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        segment_file(_segmentor(), str(slide), str(out), formats=["png", "overlay"], tile=(64, 64), progress=False,
                     num_workers=workers)
    assert len(calls) == 2 and set(calls) == {"MainThread" if workers == 0 else "uniseg-writer"}
    assert list(out.iterdir()) == []  # nothing of this input was written


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
    """A checkpoint of the demo config's tiny model, in tools/train.py's format."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    cfg = Config.fromfile(str(DEMO_CONFIG))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    return path


def test_config_without_class_names_is_an_error(tmp_path, demo_checkpoint):
    config = tmp_path / "no_classes.py"
    config.write_text(f"_base_ = ['{REPO}/configs/_base_/models/mask2former_vit-adapter_uni-tiny.py']\n"
                      "model = dict(decode_head=dict(num_classes=3, loss_cls=dict(class_weight=[1.0] * 3 + [0.1])))\n")
    with pytest.raises(ValueError, match=r"no_classes.py: no class names"):
        load_segmentor(str(config), str(demo_checkpoint))


def test_cli_segments_a_region_of_the_real_svs(tmp_path, demo_checkpoint):
    svs = REPO / "data/wsi/CMU-1-Small-Region.svs"
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "tools/infer.py"), str(DEMO_CONFIG), str(demo_checkpoint), str(svs),
           "--out", str(out), "--formats", "png", "tiff", "geojson", "overlay", "--region", "1000,1200,300,200",
           "--no-progress", "--batch-size", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stem = "CMU-1-Small-Region_1000_1200_300_200"
    for name in (f"{stem}_mask.png", f"{stem}_mask.tif", f"{stem}.geojson", f"{stem}_overlay.jpg",
                 f"{stem}_summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / f"{stem}_summary.json").read_text())
    assert summary["mpp"] == pytest.approx(0.499) and summary["size"] == [300, 200]  # 0.499 is within 1% of 0.5
    assert summary["window"] == "cosine"
    assert json.loads((out / f"{stem}.geojson").read_text())["type"] == "FeatureCollection"
    # (the coordinates of GeoJSON features are checked exactly with a model of known output above)

    # a failing input is reported and skipped, the next one is still segmented, and the exit status says so
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00garbage")
    proc = subprocess.run(cmd[:4] + [str(bad), str(svs), "--out", str(tmp_path / "out2")] + cmd[7:],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "corrupt.tif" in proc.stderr and "1 of 2 input(s) failed" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == sorted(p.name for p in out.iterdir())



def test_cli_reports_output_errors_per_input_without_a_traceback(tmp_path, demo_checkpoint):
    """--out is an existing file: each input fails with a message naming it, and the run goes on to the next."""
    not_a_folder = tmp_path / "results"
    not_a_folder.write_text("a file")
    inputs = [str(REPO / "data/ihc/images/ihc_br.png"), str(REPO / "data/ihc/images/ihc_bl.png")]
    proc = subprocess.run([sys.executable, str(REPO / "tools/infer.py"), str(DEMO_CONFIG), str(demo_checkpoint),
                           *inputs, "--out", str(not_a_folder), "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count(f"error: {not_a_folder}: the output folder (--out, out_dir) is an existing file") == 2
    assert "2 of 2 input(s) failed" in proc.stderr and "Traceback" not in proc.stderr
    assert not_a_folder.read_text() == "a file"


# ---------------------------------------------------------------------------- outputs as one set
def _listed(summary_path: Path) -> list:
    outputs = json.loads(summary_path.read_text())["outputs"]
    return sorted(str(Path(p).relative_to(summary_path.parent)) for p in outputs)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rerun_replaces_the_set_and_removes_outputs_of_formats_not_requested_any_more(tmp_path):
    image = _write_png(tmp_path / "in" / "case.png", _blobs())
    out = tmp_path / "out"
    segment_file(_segmentor(), str(image), str(out), formats=["png", "geojson", "probs"], progress=False)
    (out / "notes.txt").write_text("a user's file")
    assert (out / "case.geojson").exists() and (out / "case_probs" / "dark.tif").exists()
    summary = segment_file(_segmentor(_LightIsClassOne().eval()), str(image), str(out), formats=["png", "tiff"],
                           progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["case_mask.png", "case_mask.tif", "case_summary.json",
                                                     "case_tissue.png", "notes.txt"]
    assert _listed(out / "case_summary.json") == ["case_mask.png", "case_mask.tif", "case_tissue.png"]
    assert summary["outputs"][-1] == str(out / "case_summary.json")
    np.testing.assert_array_equal(_read_mask(out / "case_mask.png"), 1 - _dark(_blobs()))
    np.testing.assert_array_equal(tifffile.imread(out / "case_mask.tif"), 1 - _dark(_blobs()))


_OUTPUT_ERROR_CHILD = """
import resource, sys
sys.path.insert(0, {tests!r})
from test_infer_api import _LightIsClassOne, _segmentor
from uniseg.inference.api import segment_file
from uniseg.utils.atomic import OutputWriteError

if {limit}:
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    segment_file(_segmentor(_LightIsClassOne().eval()), {image!r}, {out!r}, formats=["png", "tiff"],
                 export_options={{"tiff": {{"compression": "none"}}}}, progress=False)
except OutputWriteError as exc:
    print("OutputWriteError:", exc)
"""


def test_a_full_disk_keeps_the_earlier_set_whole(tmp_path):
    """ulimit -f: the small PNG fits, the uncompressed TIFF does not. Committing sink by sink would
    replace the PNG and keep the old TIFF and summary; the set must stay the earlier run's, byte for byte."""
    image = _write_png(tmp_path / "in" / "case.png", _blobs(256, 256))
    out = tmp_path / "out"
    segment_file(_segmentor(), str(image), str(out), formats=["png", "tiff", "geojson"], progress=False)
    before = _snapshot(out)
    assert (out / "case_mask.png").stat().st_size < 16384  # the limit below lets the PNG through
    code = _OUTPUT_ERROR_CHILD.format(tests=str(REPO / "tests"), limit=32768, image=str(image), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OutputWriteError:" in proc.stdout, proc.stdout
    assert "case_mask.tif: cannot write this output" in proc.stdout and "earlier outputs" in proc.stdout
    assert _snapshot(out) == before  # no temporaries either


def test_a_read_only_folder_keeps_the_earlier_set_and_names_the_file(tmp_path):
    image = _write_png(tmp_path / "in" / "case.png", _blobs())
    out = tmp_path / "out"
    segment_file(_segmentor(), str(image), str(out), formats=["png", "geojson"], progress=False)
    before = _snapshot(out)
    prefix = []
    if os.geteuid() == 0:  # root writes anywhere: drop the capability that allows it, in the child only
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: a read-only folder cannot be made")
        os.chown(out, 65534, -1)  # owned by nobody; root is then "other", and other may not write
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    out.chmod(0o555)
    try:
        code = _OUTPUT_ERROR_CHILD.format(tests=str(REPO / "tests"), limit=0, image=str(image), out=str(out))
        proc = subprocess.run(prefix + [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              cwd=REPO)
    finally:
        out.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OutputWriteError:" in proc.stdout and "case_mask.png: cannot write this output (Permission denied)" in \
        proc.stdout, proc.stdout
    assert _snapshot(out) == before


# A child process that SIGKILLs itself at the 2nd rename of the output commit (a journal exists then).
# Format with tests, out, and `run`: the imports and the segment_file call of the test.
KILL_AT_COMMIT_CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from uniseg.inference.api import segment_file

out, renames = {out!r}, []
real_replace = os.replace

def replace(src, dst, *args, **kwargs):
    if any(".journal-" in name for name in os.listdir(out)) and ".journal-" not in str(dst):
        renames.append(dst)
        if len(renames) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)

os.replace = replace
{run}
"""
_KILL_RUN = """from test_infer_api import _LightIsClassOne, _segmentor
segment_file(_segmentor(_LightIsClassOne().eval()), {image!r}, out, formats=["png", "tiff", "probs"], progress=False)"""


def test_kill_9_during_the_commit_then_the_next_run_completes_the_set(tmp_path):
    image_path = _write_png(tmp_path / "in" / "case.png", _blobs())
    other = _write_png(tmp_path / "in" / "other.png", _blobs(seed=1))
    out = tmp_path / "out"
    segment_file(_segmentor(), str(image_path), str(out), formats=["png", "tiff", "geojson"], progress=False)
    code = KILL_AT_COMMIT_CHILD.format(tests=str(REPO / "tests"), out=str(out),
                                       run=_KILL_RUN.format(image=str(image_path)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    # killed half-way through the renames: the old summary is gone, so nothing looks complete
    assert not (out / "case_summary.json").exists()
    assert any(".journal-" in p.name for p in out.iterdir())

    segment_file(_segmentor(), str(other), str(out), formats=["png"], progress=False)  # the next start
    assert _listed(out / "case_summary.json") == [
        "case_mask.png", "case_mask.tif", "case_probs/background.tif", "case_probs/dark.tif", "case_tissue.png"]
    light = 1 - _dark(_blobs())
    np.testing.assert_array_equal(_read_mask(out / "case_mask.png"), light)
    np.testing.assert_array_equal(tifffile.imread(out / "case_mask.tif"), light)
    assert not (out / "case.geojson").exists()  # the old set's other format went with it
    assert not [p for p in out.rglob(".*")], "journal or temporaries left"


def test_leftovers_of_dead_runs_are_removed_and_those_of_live_runs_kept(tmp_path):
    out = tmp_path / "out"
    (out / "x_probs").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = atomic._host()
        dead_files = [out / f".x_mask.partial-{host}-{dead.pid}-1a2b3c4d.png",
                      out / "x_probs" / f".dark.partial-{host}-{dead.pid}-1a2b3c4d.tif"]
        live_files = [out / f".y_mask.partial-{host}-{live.pid}-1a2b3c4d.png"]
        for path in dead_files + live_files:
            path.write_bytes(b"partial")
        image = _write_png(tmp_path / "in" / "case.png", _blobs())
        segment_file(_segmentor(), str(image), str(out), formats=["png"], progress=False)
        assert not any(p.exists() for p in dead_files)
        assert all(p.exists() for p in live_files)
    finally:
        live.kill()
        live.wait()


def test_output_folder_that_is_a_file_is_an_output_error_naming_it(tmp_path):
    image = _write_png(tmp_path / "case.png", _blobs())
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(OutputWriteError, match=r"out: the output folder \(--out, out_dir\) is an existing file"):
        segment_file(_segmentor(), str(image), str(tmp_path / "out"), progress=False)


def test_region_beyond_the_slide_needs_allow_partial(tmp_path):
    image = _write_png(tmp_path / "case.png", _blobs(64, 64))
    with pytest.raises(ValueError, match=r"extends beyond.*--allow-partial \(allow_partial=True\)"):
        segment_file(_segmentor(), str(image), str(tmp_path / "o"), region="32,32,64,64", progress=False)
    summary = segment_file(_segmentor(), str(image), str(tmp_path / "o"), region="32,32,64,64",
                           allow_partial=True, progress=False)
    mask = _read_mask(tmp_path / "o" / "case_32_32_64_64_mask.png")
    np.testing.assert_array_equal(mask[:32, :32], _dark(_blobs(64, 64))[32:, 32:])
    assert summary["size"] == [64, 64] and (mask[32:] == 0).all() and (mask[:, 32:] == 0).all()  # white outside


# ---------------------------------------------------------------------------- option checks
BAD_OPTIONS = [  # (segment_file keyword, value, CLI arguments, expected words)
    ("tissue_threshold", 1.5, ["--tissue-threshold", "1.5"], r"--tissue-threshold \(tissue_threshold\).*\[0, 1\]"),
    ("tissue_threshold", -0.1, ["--tissue-threshold", "-0.1"], r"--tissue-threshold \(tissue_threshold\)"),
    ("batch_size", 0, ["--batch-size", "0"], r"--batch-size \(batch_size\) must be an integer >= 1"),
    ("batch_size", -2, ["--batch-size", "-2"], r"--batch-size \(batch_size\)"),
    ("num_workers", -1, ["--workers", "-1"], r"--workers \(num_workers\) must be an integer >= 0"),
    ("tile", (0, 64), ["--tile", "0,64"], r"--tile \(tile\) must be a positive integer"),
    ("stride", (65, 65), ["--tile", "64", "--stride", "65"], r"--stride \(stride\) \(65, 65\) is larger than"),
    ("level", -1, ["--level", "-1"], r"--level \(level\) must be a pyramid level >= 0"),
    ("target_mpp", 0.0, ["--mpp", "0"], r"--mpp \(target_mpp\) must be a positive number"),
    ("target_mpp", -0.5, ["--mpp", "-0.5"], r"--mpp \(target_mpp\)"),
    ("slide_mpp", 0.0, ["--slide-mpp", "0"], r"--slide-mpp \(slide_mpp\)"),
    ("region", "1,2,3", ["--region", "1,2,3"], r"--region \(region\).*x,y,w,h"),
    ("export_options", {"geojson": {"simplify_tolerance": -1.0}}, ["--formats", "geojson", "--simplify", "-1"],
     r"simplify_tolerance \(--simplify\) must be >= 0"),
]


def _load_cli():
    spec = importlib.util.spec_from_file_location("uniseg_infer_cli", REPO / "tools/infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("keyword, value, cli, message", BAD_OPTIONS)
def test_nonsense_options_are_refused_by_the_api_and_the_cli(tmp_path, capsys, keyword, value, cli, message):
    image = _write_png(tmp_path / "case.png", _blobs(64, 64))
    kwargs = {keyword: value}
    if keyword == "export_options":
        kwargs["formats"] = ["geojson"]
    with pytest.raises(ValueError, match=message):
        segment_file(_segmentor(), str(image), str(tmp_path / "out"), progress=False, **kwargs)
    assert not (tmp_path / "out").exists()  # refused before anything was touched
    with pytest.raises(SystemExit) as exit_info:
        _load_cli().parse_args(["config.py", "model.pth", str(image), "--out", str(tmp_path / "out")] + cli)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_the_inferencer_refuses_nonsense_options_too():
    with pytest.raises(ValueError, match=r"--batch-size \(batch_size\)"):
        SlidingWindowInferencer(_DarkIsClassOne(), 2, tile=(64, 64), batch_size=0)
    with pytest.raises(ValueError, match=r"--tissue-threshold \(tissue_threshold\)"):
        SlidingWindowInferencer(_DarkIsClassOne(), 2, tile=(64, 64), tissue_threshold=2)


def test_one_default_window_everywhere(tmp_path):
    """segment_file and the CLI leave the window unset (None: cell models have none, and giving one to them is
    an error); for semantic models it then is DEFAULT_WINDOW, as in the inferencer."""
    import inspect

    from uniseg.inference.tiling import DEFAULT_WINDOW

    assert DEFAULT_WINDOW == "cosine"
    assert inspect.signature(segment_file).parameters["window"].default is None
    assert inspect.signature(SlidingWindowInferencer).parameters["window"].default == DEFAULT_WINDOW
    parser = _load_cli().build_parser()
    assert parser.get_default("window") is None
    assert f"default {DEFAULT_WINDOW}" in parser.format_help()
    image = _write_png(tmp_path / "case.png", _blobs(64, 64))
    assert segment_file(_segmentor(), str(image), str(tmp_path / "o"), progress=False)["window"] == DEFAULT_WINDOW


def test_inputs_with_the_same_stem_are_refused_before_any_work(tmp_path, capsys):
    a = _write_png(tmp_path / "a" / "ihc_br.png", _blobs())
    b = _write_png(tmp_path / "b" / "ihc_br.png", _blobs(seed=1))
    c = _write_png(tmp_path / "c" / "IHC_BR.tif", _blobs(seed=2))
    with pytest.raises(ValueError, match=rf"{a} and {b} would both write outputs named ihc_br_\*"):
        check_distinct_stems([str(a), str(b)])
    with pytest.raises(ValueError, match="IHC_BR"):  # the same files on case-insensitive file systems
        check_distinct_stems([str(a), str(c)])
    assert check_distinct_stems([str(a), str(tmp_path / "other.png")], "0,0,8,8") == {
        str(a): "ihc_br_0_0_8_8", str(tmp_path / "other.png"): "other_0_0_8_8"}
    with pytest.raises(SystemExit) as exit_info:
        _load_cli().parse_args(["config.py", "model.pth", str(a), str(b), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(a) in err and str(b) in err and "ihc_br_*" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- process settings of the tools
def _load_script(relative: str, name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


@pytest.mark.parametrize("tool", ["tools/infer.py", "tools/extract_features.py", "benchmarks/bench_segmentor.py"])
def test_tools_flush_denormals_while_they_work_and_restore_the_setting_after(tool, tmp_path, monkeypatch):
    """The library never flips the process switch; each tool does, for its own work only."""
    from uniseg.engine.hooks import flush_denormal_enabled

    seen = []
    image = _write_png(tmp_path / "images" / "case.png", _blobs(32, 32))
    if tool == "tools/infer.py":
        module = _load_cli()
        monkeypatch.setattr(module, "run", lambda args, parser: seen.append(flush_denormal_enabled()) or 0)
        run = lambda: module.main(["config.py", "model.pth", str(image), "--out", str(tmp_path / "o")])  # noqa: E731
    elif tool == "tools/extract_features.py":
        import uniseg.inference.features as features

        module = _load_script(tool, "extract_features_cli")
        monkeypatch.setattr(features, "extract_features", lambda *args, **kwargs: (
            seen.append(flush_denormal_enabled()), (np.zeros((1, 4), np.float32), ["case.png"]))[1])
        run = lambda: module.main([str(image.parent), str(tmp_path / "f.npz"), "--no-progress"])  # noqa: E731
    else:
        module = _load_script(tool, "bench_segmentor_cli")
        monkeypatch.setattr(module, "measure_case", lambda **case: seen.append(flush_denormal_enabled()) or {})
        args = module.parse_args(["--configs", "tiny", "--with-cp", "off", "--device", "cpu",
                                  "--worker-out", str(tmp_path / "case.json")])
        run = lambda: module._worker(args)  # noqa: E731  (the process that times the steps)
    before = flush_denormal_enabled()
    try:
        for state in (False, True):
            torch.set_flush_denormal(state)
            assert run() == 0
            assert seen.pop() is True and flush_denormal_enabled() is state
    finally:
        torch.set_flush_denormal(before)
