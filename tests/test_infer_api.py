"""Segmenting files: regions at pyramid levels mapped back to slide space, outputs, errors, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from uniseg.inference.api import Segmentor, load_segmentor, segment_file
from uniseg.utils.imageio import ImageReadError

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


def _segmentor(model=None) -> Segmentor:
    return Segmentor(model or _DarkIsClassOne().eval(), ("background", "dark"), [(0, 0, 0), (255, 0, 0)],
                     tile=(64, 64), stride=(48, 48), working_mpp=0.5, config_path="test")


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
    xs = [x for f in dark for x, _ in f["geometry"]["coordinates"][0]]
    ys = [y for f in dark for _, y in f["geometry"]["coordinates"][0]]
    # level-1 pixels are 2 level-0 pixels: the block's slide coordinates come back to within one of them
    assert min(xs) == pytest.approx(300, abs=2) and max(xs) == pytest.approx(380, abs=2)
    assert min(ys) == pytest.approx(200, abs=2) and max(ys) == pytest.approx(260, abs=2)
    mask = tifffile.imread(tmp_path / "out" / "slide_256_128_256_256_mask.tif")
    assert mask.shape == (128, 128) and mask[(230 - 128) // 2, (340 - 256) // 2] == 1


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
    assert not out.exists() or not any(out.iterdir())


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
    assert not out.exists() or not list(out.iterdir())


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
    gj = json.loads((out / f"{stem}.geojson").read_text())
    for feature in gj["features"]:
        xy = np.asarray(feature["geometry"]["coordinates"][0])
        assert (xy[:, 0] >= 1000).all() and (xy[:, 0] <= 1300).all() and (xy[:, 1] >= 1200).all()

    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00garbage")
    proc = subprocess.run(cmd[:4] + [str(bad), "--out", str(tmp_path / "out2"), "--no-progress"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "corrupt.tif" in proc.stderr
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").iterdir())
