"""Cells from files: instance configs through load_segmentor, segment_file and tools/infer.py.

Two models are used. A tiny mmdet Mask2Former (uni-tiny ViT-Adapter, instance mode) built from a config
written here and saved the way uniseg writes checkpoints (plain data + checksum): it exercises loading,
the CLI and the checkpoint checks; with random weights it predicts arbitrary cells (with --score-thr 0),
so its outputs are checked for agreement with each other, not against a truth. And a deterministic
stand-in with mmdet's predict interface (each bright connected component of a window is one cell) on a
real image of data/nuclei: there the cells are known, computed another way (scipy on the whole image).
The nuclei image is fluorescence: nuclei are bright on a dark background, hence "bright" components.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely
import tifffile
import torch
from scipy import ndimage
from torch import nn

from uniseg.inference.api import Segmentor, load_segmentor, segment_file
from uniseg.utils.imageio import read_rgb

REPO = Path(__file__).resolve().parents[1]
NUCLEI = REPO / "data/nuclei/images/nuclei_br.png"
SEMANTIC_CONFIG = REPO / "configs/uni/mask2former_uni-tiny-adapter_1xb4-1k_ihc-demo-128x128.py"
BRIGHT = 90      # on nuclei_br: 97 components, the largest 31 px across
TILE, STRIDE = (96, 96), (56, 56)  # overlap 40 px > 31 px: every component lies whole in some window

INSTANCE_CONFIG = """\
# A tiny instance model: mmdet's COCO instance Mask2Former with uniseg's uni-tiny ViT-Adapter, CPU-sized.
_base_ = ['mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py']
num_things_classes = {num_classes}
feat = 32
crop_size = (96, 96)
model = dict(
    data_preprocessor=dict(batch_augments=None),
    backbone=dict(_delete_=True, type='mmseg.ViTAdapter', encoder='uni-tiny', encoder_weights=None, conv_inplane=16,
                  deform_num_heads=4, interaction_indexes=None, norm_cfg=dict(type='BN', requires_grad=True)),
    panoptic_head=dict(
        in_channels=[64] * 4, feat_channels=feat, out_channels=feat, num_queries=20,
        num_things_classes=num_things_classes, num_stuff_classes=0,
        loss_cls=dict(class_weight=[1.0] * num_things_classes + [0.1]),
        pixel_decoder=dict(
            encoder=dict(num_layers=1, layer_cfg=dict(self_attn_cfg=dict(embed_dims=feat, num_heads=4),
                                                      ffn_cfg=dict(embed_dims=feat, feedforward_channels=2 * feat))),
            positional_encoding=dict(num_feats=feat // 2)),
        positional_encoding=dict(num_feats=feat // 2),
        transformer_decoder=dict(
            num_layers=2,
            layer_cfg=dict(self_attn_cfg=dict(embed_dims=feat, num_heads=4),
                           cross_attn_cfg=dict(embed_dims=feat, num_heads=4),
                           ffn_cfg=dict(embed_dims=feat, feedforward_channels=2 * feat)))),
    panoptic_fusion_head=dict(num_things_classes=num_things_classes, num_stuff_classes=0),
    test_cfg=dict(max_per_image=12))
{dataset}
"""
METAINFO = "test_dataloader = dict(dataset=dict(metainfo=dict(classes={classes!r})))"


# ---------------------------------------------------------------------------- models and checkpoints
def _write_instance_config(path: Path, num_classes: int = 1, dataset: str = None) -> Path:
    classes = ("nucleus", "lymphocyte")[:num_classes]
    dataset = METAINFO.format(classes=classes) if dataset is None else dataset
    path.write_text(INSTANCE_CONFIG.format(num_classes=num_classes, dataset=dataset))
    return path


def _save(model: nn.Module, path: Path, meta: dict) -> Path:
    """Saved as uniseg's SafeCheckpointHook writes checkpoints: plain data, with a checksum of the tensors."""
    from uniseg.engine.hooks import SafeCheckpointHook

    checkpoint = {"state_dict": model.state_dict(), "meta": meta}
    SafeCheckpointHook().before_save_checkpoint(None, checkpoint)
    torch.save(checkpoint, path)
    return path


def _build_instance_model(config: Path) -> nn.Module:
    """Built here as mmdet would (its registry, its scope), independently of load_segmentor."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope("mmdet"):
        return MODELS.build(Config.fromfile(str(config)).model)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The instance config and its checkpoint, plus checkpoints that must be refused for it."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    root = tmp_path_factory.mktemp("models")
    config = _write_instance_config(root / "cells_cfg.py")
    checkpoint = _save(_build_instance_model(config), root / "cells.pth", {"dataset_meta": {"classes": ["nucleus"]}})
    two = _write_instance_config(root / "two_classes_cfg.py", num_classes=2)
    wrong_classes = _save(_build_instance_model(two), root / "two_classes.pth", {})
    torch.manual_seed(0)
    semantic = _save(MODELS.build(Config.fromfile(str(SEMANTIC_CONFIG)).model), root / "semantic.pth", {})
    return dict(config=config, checkpoint=checkpoint, wrong_classes=wrong_classes, semantic=semantic, root=root)


class _BrightComponents(nn.Module):
    """Stand-in for an mmdet Mask2Former in instance mode: each 8-connected component of pixels brighter
    than ``threshold`` (mean of R, G, B) in a window is one cell (OpenCV; the reference below uses scipy)."""

    def __init__(self, threshold: float = BRIGHT):
        super().__init__()
        self.threshold = threshold
        self.test_cfg = dict(instance_on=True)
        self.panoptic_fusion_head = nn.Module()
        self.panoptic_fusion_head.num_things_classes = 1
        self.data_preprocessor = nn.Module()
        self.data_preprocessor.register_buffer("mean", torch.zeros(3))
        self.data_preprocessor.register_buffer("std", torch.ones(3))
        self.data_preprocessor.pad_size_divisor = 1
        self.dummy = nn.Parameter(torch.zeros(1))

    def predict(self, inputs, samples, rescale=False):
        from mmengine.structures import InstanceData

        for image, sample in zip(inputs, samples):
            h, w = sample.img_shape
            bright = (image[:, :h, :w].mean(0) > self.threshold).numpy().astype(np.uint8)
            count, ids = cv2.connectedComponents(bright, connectivity=8)
            masks = torch.from_numpy(ids[None] == np.arange(1, count)[:, None, None])
            sample.pred_instances = InstanceData(masks=masks, scores=torch.full((count - 1,), 0.9),
                                                 labels=torch.zeros(count - 1, dtype=torch.long))
        return samples


def _stand_in(threshold: float = BRIGHT) -> Segmentor:
    return Segmentor(_BrightComponents(threshold).eval(), ("nucleus",), [(86, 180, 233)], tile=TILE, stride=STRIDE,
                     working_mpp=None, config_path="stand-in", task="cells",
                     window_sources=("the test's tile", "the test's stride"))


def _reference(rgb: np.ndarray, threshold: float = BRIGHT) -> np.ndarray:
    """The cells of the whole image at once: scipy's 8-connected components."""
    labels, _ = ndimage.label(rgb.astype(np.float64).mean(2) > threshold, structure=np.ones((3, 3), bool))
    return labels


# ---------------------------------------------------------------------------- reading the outputs
def _outputs(out: Path, stem: str) -> dict:
    summary = json.loads((out / f"{stem}_cells_summary.json").read_text())
    found = dict(summary=summary)
    if (out / f"{stem}_cells.csv").exists():
        with open(out / f"{stem}_cells.csv", newline="") as fh:
            found["rows"] = list(csv.DictReader(fh))
    if (out / f"{stem}_cells.geojson").exists():
        found["features"] = json.loads((out / f"{stem}_cells.geojson").read_text())["features"]
    if (out / f"{stem}_cells.tif").exists():
        found["ids"] = tifffile.imread(out / f"{stem}_cells.tif")
    return found


def _assert_consistent(found: dict, origin=(0.0, 0.0), scale: float = 1.0) -> int:
    """Table, GeoJSON, id TIFF and summary describe the same cells; returns their number.

    The TIFF is in output pixels; the table and the GeoJSON in slide pixels (``origin + scale * ...``)."""
    summary, rows, features, ids = found["summary"], found["rows"], found["features"], found["ids"]
    present = np.unique(ids[ids > 0]).tolist()
    table_ids = [int(r["id"]) for r in rows]
    assert summary["cells"] == len(rows) == len(features) == len(present)
    assert table_ids == present == sorted(f["properties"]["measurements"]["Cell ID"] for f in features)
    assert sum(c["cells"] for c in summary["classes"].values()) == summary["cells"]
    assert summary["cells"] + summary["duplicates_dropped"] + summary["fragments_dropped"] + \
        summary["border_cells_dropped"] == summary["predicted"]
    areas = np.bincount(ids.ravel().astype(np.int64))
    assert [int(r["area_pixels"]) for r in rows] == areas[table_ids].tolist()
    if table_ids:  # centroids of the TIFF's pixels, by scipy: the table's, in slide coordinates
        centres = np.asarray(ndimage.center_of_mass(np.ones_like(ids), ids, table_ids))
        np.testing.assert_allclose([float(r["centroid_x"]) for r in rows], origin[0] + scale * (centres[:, 1] + 0.5),
                                   atol=6e-4)
        np.testing.assert_allclose([float(r["centroid_y"]) for r in rows], origin[1] + scale * (centres[:, 0] + 0.5),
                                   atol=6e-4)
    height, width = ids.shape
    for feature in features:
        geometry = shapely.geometry.shape(feature["geometry"])
        assert feature["properties"]["objectType"] == "detection"
        assert geometry.area == areas[feature["properties"]["measurements"]["Cell ID"]] * scale ** 2
        x0, y0, x1, y1 = geometry.bounds
        assert origin[0] <= x0 and x1 <= origin[0] + scale * width
        assert origin[1] <= y0 and y1 <= origin[1] + scale * height
    return len(rows)


def _assert_same_cells(reference: np.ndarray, ids: np.ndarray) -> None:
    """The same partition of the pixels: every reference cell is exactly one output cell and vice versa."""
    assert reference.shape == ids.shape
    np.testing.assert_array_equal(reference > 0, ids > 0)
    both = reference > 0
    pairs = np.unique(np.stack([reference[both], ids[both].astype(np.int64)]), axis=1)
    assert pairs.shape[1] == reference.max() == len(np.unique(ids[both]))  # one-to-one


# ---------------------------------------------------------------------------- loading
def test_an_instance_config_loads_as_a_cell_model(models):
    from uniseg.engine.checkpoint import verify_checksum

    assert verify_checksum(torch.load(models["checkpoint"], weights_only=True)) is True  # written with a checksum
    segmentor = load_segmentor(str(models["config"]), str(models["checkpoint"]))
    assert segmentor.task == "cells" and segmentor.classes == ("nucleus",)
    assert type(segmentor.model).__name__ == "Mask2Former" and segmentor.model.test_cfg["instance_on"]
    assert segmentor.tile == (96, 96) and segmentor.stride == (72, 72)  # crop_size, and 3/4 of it
    assert segmentor.window_sources[0] == "the config's crop_size" and segmentor.working_mpp == 0.5
    saved = torch.load(models["checkpoint"], weights_only=True)["state_dict"]
    loaded = segmentor.model.state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in loaded.items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)


def test_thing_classes_come_from_meta_json_when_the_config_and_checkpoint_have_none(models, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text(json.dumps(
        {"classes": ["background", "tumour", "nucleus"], "thing_classes": ["nucleus"]}))
    dataset = f"test_dataloader = dict(dataset=dict(data_root={str(tmp_path / 'data')!r}))"
    config = _write_instance_config(tmp_path / "meta_cfg.py", dataset=dataset)
    bare = _save(_build_instance_model(config), tmp_path / "bare.pth", {})
    assert load_segmentor(str(config), str(bare)).classes == ("nucleus",)


# ---------------------------------------------------------------------------- known cells, real image
def test_cells_of_a_real_image_are_its_connected_components_in_every_output(tmp_path):
    rgb = read_rgb(NUCLEI)
    reference = _reference(rgb)
    summary = segment_file(_stand_in(), str(NUCLEI), str(tmp_path), formats=["geojson", "csv", "tiff"],
                           progress=False)
    found = _outputs(tmp_path, "nuclei_br")
    assert _assert_consistent(found) == reference.max() == 97
    _assert_same_cells(reference, found["ids"])
    assert summary["task"] == "cells" and summary["size"] == [256, 256] and summary["mpp"] is None
    assert summary["tile"] == list(TILE) and summary["stride"] == list(STRIDE) and summary["windows"] == 16
    assert summary["duplicates_dropped"] + summary["fragments_dropped"] > 0  # the overlaps did see cells twice
    assert summary["classes"] == {"nucleus": {"cells": 97, "cells_per_mm2_tissue": None}}  # no pixel size
    assert summary["score_thr"] == 0.5 and summary["border_cells"] == "keep"  # the defaults, recorded
    assert sorted(Path(p).name for p in summary["outputs"]) == [
        "nuclei_br_cells.csv", "nuclei_br_cells.geojson", "nuclei_br_cells.tif", "nuclei_br_cells_summary.json",
        "nuclei_br_cells_tissue.png"]
    assert summary["outputs"][-1].endswith("_cells_summary.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(p).name for p in summary["outputs"])
    assert json.loads((tmp_path / "nuclei_br_cells_summary.json").read_text())["outputs"] == summary["outputs"][:-1]


def test_a_region_maps_cells_to_slide_coordinates(tmp_path):
    x, y, w, h = 40, 24, 200, 216
    reference = _reference(read_rgb(NUCLEI)[y:y + h, x:x + w])
    summary = segment_file(_stand_in(), str(NUCLEI), str(tmp_path), formats=["geojson", "csv", "tiff"],
                           region=f"{x},{y},{w},{h}", progress=False)
    assert summary["origin"] == [40.0, 24.0] and summary["size"] == [w, h]
    found = _outputs(tmp_path, f"nuclei_br_{x}_{y}_{w}_{h}")
    assert _assert_consistent(found, origin=(x, y)) == reference.max() > 50
    _assert_same_cells(reference, found["ids"])  # the TIFF covers the region only
    # the table's boxes are the reference's, shifted by the region's origin
    boxes = sorted((s[1].start + x, s[0].start + y, s[1].stop + x, s[0].stop + y)
                   for s in ndimage.find_objects(reference))
    table = sorted(tuple(round(float(r[k])) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"))
                   for r in found["rows"])
    assert table == boxes


def test_a_slide_is_read_at_the_working_resolution_and_densities_use_the_tissue_area(tmp_path):
    """A 0.25 um/px slide whose level 1 (0.5 um/px, the encoder's resolution) is the nuclei image: the cells are
    found at level 1 and reported in level-0 pixels and microns."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_infer_api import _pyramid

    from uniseg.inference.tissue import tissue_fraction

    rgb = read_rgb(NUCLEI)
    slide = _pyramid(tmp_path / "slide.tif", np.repeat(np.repeat(rgb, 2, 0), 2, 1), mpp=0.25)  # level 1 = rgb
    segmentor = _stand_in()
    segmentor.working_mpp = 0.5
    summary = segment_file(segmentor, str(slide), str(tmp_path / "o"), formats=["geojson", "csv", "tiff"],
                           progress=False)
    assert summary["level"] == 1 and summary["scale"] == pytest.approx(2.0) and summary["mpp"] == pytest.approx(0.5)
    found = _outputs(tmp_path / "o", "slide")
    assert _assert_consistent(found, scale=summary["scale"]) == 97
    _assert_same_cells(_reference(rgb), found["ids"])
    areas = np.bincount(found["ids"].ravel().astype(np.int64))
    np.testing.assert_allclose([float(r["area_um2"]) for r in found["rows"]],
                               areas[[int(r["id"]) for r in found["rows"]]] * summary["mpp"] ** 2, atol=6e-5)
    tissue_pixels = round(tissue_fraction(rgb) * rgb.shape[0] * rgb.shape[1])  # every pixel counted once
    assert summary["tissue_pixels"] == tissue_pixels
    tissue_mm2 = tissue_pixels * (summary["mpp"] / 1000) ** 2
    assert summary["tissue_area_mm2"] == pytest.approx(tissue_mm2, abs=1e-6)
    assert summary["cells_per_mm2_tissue"] == pytest.approx(97 / tissue_mm2, abs=1e-3)
    assert summary["classes"]["nucleus"]["cells_per_mm2_tissue"] == summary["cells_per_mm2_tissue"]


def test_windows_without_tissue_are_skipped_in_cell_mode(tmp_path):
    from uniseg.inference.tiling import TileGrid
    from uniseg.inference.tissue import tissue_fraction

    rgb = np.concatenate([read_rgb(NUCLEI), np.full((256, 160, 3), 250, np.uint8)], axis=1)  # + glass
    path = tmp_path / "half_glass.png"
    assert cv2.imwrite(str(path), rgb[..., ::-1])
    summary = segment_file(_stand_in(), str(path), str(tmp_path / "out"), formats=["csv"], tissue_threshold=0.5,
                           progress=False)
    grid = TileGrid(416, 256, TILE, STRIDE)
    expected = sum(tissue_fraction(rgb[y:y + 96, x:x + 96]) < 0.5 for y in grid.row_starts for x in grid.col_starts)
    assert summary["windows"] == len(grid) and summary["windows_skipped"] == expected > 0
    assert summary["tissue_threshold"] == 0.5


def test_cell_and_mask_sets_of_one_image_live_side_by_side(tmp_path):
    """A semantic run and a cell run of the same stem in one folder: neither removes the other's set."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_infer_api import _segmentor

    segment_file(_segmentor(), str(NUCLEI), str(tmp_path), formats=["png", "geojson"], progress=False)
    segment_file(_stand_in(), str(NUCLEI), str(tmp_path), formats=["geojson", "csv"], progress=False)
    segment_file(_stand_in(), str(NUCLEI), str(tmp_path), formats=["csv"], progress=False)  # drops its own geojson
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "nuclei_br.geojson", "nuclei_br_cells.csv", "nuclei_br_cells_summary.json", "nuclei_br_cells_tissue.png",
        "nuclei_br_mask.png", "nuclei_br_summary.json", "nuclei_br_tissue.png"]


def test_a_cell_set_never_replaces_the_mask_set_of_another_input_with_the_same_names(tmp_path):
    """Masks of ``x_cells.png`` and cells of ``x.png`` share names (``x_cells_summary.json``, ``x_cells.geojson``):
    the second run into the folder is refused for that input, and the first set stays as it was."""
    import shutil

    sys.path.insert(0, str(REPO / "tests"))
    from test_infer_api import _segmentor

    from uniseg.utils.atomic import OutputWriteError

    shutil.copy(NUCLEI, tmp_path / "x_cells.png")
    shutil.copy(NUCLEI, tmp_path / "x.png")
    out = tmp_path / "out"
    segment_file(_segmentor(), str(tmp_path / "x_cells.png"), str(out), formats=["png", "geojson"], progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["x_cells.geojson", "x_cells_mask.png", "x_cells_summary.json", "x_cells_tissue.png"]
    with pytest.raises(OutputWriteError, match=r"x_cells_summary.json is the summary of the mask outputs of "
                                               r".*x_cells.png; the cell outputs of this input have the same names"):
        segment_file(_stand_in(), str(tmp_path / "x.png"), str(out), formats=["geojson", "csv"], progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the other way round as well
    out2 = tmp_path / "out2"
    segment_file(_stand_in(), str(tmp_path / "x.png"), str(out2), formats=["geojson"], progress=False)
    with pytest.raises(OutputWriteError, match="is the summary of the cell outputs of .*x.png"):
        segment_file(_segmentor(), str(tmp_path / "x_cells.png"), str(out2), formats=["png"], progress=False)


_KILL_RUN = """from test_infer_cells import _stand_in
segment_file(_stand_in(), {image!r}, out, formats=["csv", "tiff", "geojson"], progress=False)"""


def test_kill_9_during_the_commit_of_cells_then_the_next_run_completes_the_set(tmp_path):
    out = tmp_path / "out"
    segment_file(_stand_in(128), str(NUCLEI), str(out), formats=["csv", "tiff"], progress=False)  # an earlier set
    before = _outputs(out, "nuclei_br")["summary"]["cells"]
    sys.path.insert(0, str(REPO / "tests"))
    from test_infer_api import KILL_AT_COMMIT_CHILD

    code = KILL_AT_COMMIT_CHILD.format(tests=str(REPO / "tests"), out=str(out), run=_KILL_RUN.format(image=str(NUCLEI)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (out / "nuclei_br_cells_summary.json").exists()  # the old set no longer claims to be complete
    assert any(".journal-" in p.name for p in out.iterdir())

    other = tmp_path / "other.png"
    assert cv2.imwrite(str(other), np.zeros((64, 64, 3), np.uint8))
    segment_file(_stand_in(), str(other), str(out), formats=["csv"], progress=False)  # the next start
    found = _outputs(out, "nuclei_br")
    assert sorted(Path(p).name for p in found["summary"]["outputs"]) == [
        "nuclei_br_cells.csv", "nuclei_br_cells.geojson", "nuclei_br_cells.tif", "nuclei_br_cells_tissue.png"]
    assert _assert_consistent(found) == 97 != before  # the killed run's cells, complete
    _assert_same_cells(_reference(read_rgb(NUCLEI)), found["ids"])
    assert not [p for p in out.rglob(".*")], "journal or temporaries left"


# ---------------------------------------------------------------------------- the command line
def _load_cli():
    spec = importlib.util.spec_from_file_location("uniseg_infer_cli", REPO / "tools/infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_the_cells_of_an_instance_model(models, tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, str(REPO / "tools/infer.py"), str(models["config"]), str(models["checkpoint"]), str(NUCLEI),
           "--out", str(out), "--formats", "geojson", "csv", "tiff", "--score-thr", "0", "--no-progress",
           "--batch-size", "4"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = _outputs(out, "nuclei_br")
    summary = found["summary"]
    assert _assert_consistent(found) > 0  # random weights, but every mask scores >= 0
    assert summary["config"] == str(models["config"]) and summary["tile"] == [96, 96] and summary["stride"] == [72, 72]
    assert summary["windows"] == 16 and summary["score_thr"] == 0.0
    assert list(summary["classes"]) == ["nucleus"]
    assert f"{summary['cells']} cells" in proc.stdout and "wrote" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "nuclei_br_cells.csv", "nuclei_br_cells.geojson", "nuclei_br_cells.tif", "nuclei_br_cells_summary.json",
        "nuclei_br_cells_tissue.png"]


def _corrupt_a_tensor(path: Path, tmp_path: Path) -> Path:
    """Flip one byte inside the largest stored tensor (torch does not check the zip's CRCs)."""
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        data = archive.read(entry)
    raw = bytearray(path.read_bytes())
    start = raw.find(data)
    assert start > 0
    raw[start + len(data) // 2] ^= 0x40
    bad = tmp_path / "flipped.pth"
    bad.write_bytes(bytes(raw))
    return bad


def test_cli_refuses_a_corrupted_checkpoint_without_a_traceback(models, tmp_path):
    bad = _corrupt_a_tensor(models["checkpoint"], tmp_path)
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, str(REPO / "tools/infer.py"), str(models["config"]), str(bad), str(NUCLEI),
                           "--out", str(out), "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {bad}: corrupted: the 'state_dict' tensors do not match the checksum" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize("which, words", [
    ("wrong_classes", r"does not fit this Mask2Former: \d+ of other shape \(panoptic_head\.cls_embed\.weight "),
    ("semantic", r"does not fit this Mask2Former: .*missing from the checkpoint .*unexpected \(decode_head\."),
])
def test_cli_refuses_a_checkpoint_of_another_model(models, tmp_path, capsys, which, words):
    out = tmp_path / "o"
    code = _load_cli().main([str(models["config"]), str(models[which]), str(NUCLEI), "--out", str(out),
                             "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and re.search(rf"^error: {re.escape(str(models[which]))}: {words}", err), err
    assert not out.exists()


CELL_CONFIG_ERRORS = [  # (arguments, expected words); the checkpoint is never read
    (["--window", "cosine"], r"--window \(window\) applies to semantic segmentation models \(a class per pixel\) "
                             r"only; .*cells_cfg\.py describes one of the instance models"),
    (["--formats", "geojson", "--simplify", "1"], r"--simplify \(simplify_tolerance\) applies to semantic"),
    (["--formats", "png", "csv"], r"--formats \(formats\) mixes outputs of semantic models \(png\) and of cell "
                                  r"models \(csv\); one config writes one kind"),
    (["--formats", "png"], r"unknown cell output format\(s\) \['png'\] in --formats \(formats\); choose from "
                                  r"\['csv', 'geojson', 'parquet', 'tiff'\] \(.*cells_cfg\.py describes one of the "
                                  r"instance models"),
    (["--stride", "100"], r"--stride \(stride\) \(100, 100\) is larger than the window --tile \(tile\) \(96, 96\) "
                          r"\(the tile is the config's crop_size\)"),
    (["--tile", "64", "--stride", "80"], r"--stride \(stride\) \(80, 80\) is larger than the window"),
    (["--score-thr", "1.5"], r"--score-thr \(score_thr\) must be a score in \[0, 1\]"),
    (["--min-visible", "0"], r"--min-visible \(min_visible\) must be a fraction in \(0, 1\]"),
    (["--duplicate-overlap", "1.5"], r"--duplicate-overlap \(duplicate_overlap\) must be a fraction in \(0, 1\]"),
    (["--max-per-window", "0"], r"--max-per-window \(max_per_window\) must be an integer >= 1"),
    (["--edge-width", "0"], r"--edge-width \(edge_width\) must be an integer >= 1"),
    (["--border-cells", "maybe"], r"argument --border-cells: invalid choice: 'maybe'"),
]
SEMANTIC_CONFIG_ERRORS = [
    (["--score-thr", "0.3"], r"--score-thr \(score_thr\) applies to instance models \(cells as objects\) only; "
                             r".*ihc-demo-128x128\.py describes one of the semantic segmentation models"),
    (["--border-cells", "drop"], r"--border-cells \(border_cells\) applies to instance models"),
    (["--formats", "csv"], r"unknown output format\(s\) \['csv'\] in --formats \(formats\)"),
    (["--simplify", "1"], r"--simplify applies to the GeoJSON output only: add geojson to --formats"),
]


@pytest.mark.parametrize("config, arguments, message",
                         [("cells", a, m) for a, m in CELL_CONFIG_ERRORS] +
                         [("semantic", a, m) for a, m in SEMANTIC_CONFIG_ERRORS])
def test_cli_option_errors_name_the_flag_before_any_model_is_loaded(models, tmp_path, capsys, config, arguments,
                                                                    message):
    config = models["config"] if config == "cells" else SEMANTIC_CONFIG
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exit_info:
        _load_cli().main([str(config), str(tmp_path / "never-read.pth"), str(NUCLEI), "--out", str(out)] + arguments)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "never-read.pth" not in err and not out.exists()


def test_cli_refuses_inputs_with_the_same_stem_in_cell_mode(models, tmp_path, capsys):
    a, b = tmp_path / "a" / "nuclei.png", tmp_path / "b" / "nuclei.png"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(NUCLEI.read_bytes())
    with pytest.raises(SystemExit) as exit_info:
        _load_cli().main([str(models["config"]), str(models["checkpoint"]), str(a), str(b),
                          "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert f"inputs {a} and {b} would both write outputs named nuclei_*" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_api_refuses_options_of_the_other_kind_of_model(tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from test_infer_api import _segmentor

    out = tmp_path / "o"
    for segmentor, options, message in [
            (_stand_in(), dict(window="cosine"), r"--window \(window\) applies to semantic .* stand-in describes"),
            (_stand_in(), dict(formats=["probs"]), r"unknown cell output format\(s\) \['probs'\]"),
            (_stand_in(), dict(export_options={"geojson": {"simplify_tolerance": 1.0}}, formats=["geojson"]),
             r"invalid options for cell output format 'geojson'"),
            (_stand_in(), dict(border_cells="sometimes"), r"--border-cells \(border_cells\) must be one of keep, drop"),
            (_segmentor(), dict(score_thr=0.3), r"--score-thr \(score_thr\) applies to instance models"),
            (_segmentor(), dict(edge_width=2), r"--edge-width \(edge_width\) applies to instance models")]:
        with pytest.raises(ValueError, match=message):
            segment_file(segmentor, str(NUCLEI), str(out), progress=False, **options)
    assert not out.exists()


def test_a_semantic_model_in_an_instance_config_is_refused(tmp_path):
    from uniseg.inference.api import config_task, read_config

    config = tmp_path / "odd.py"
    config.write_text(f"_base_ = [{str(SEMANTIC_CONFIG)!r}]\nmodel = dict(test_cfg=dict(instance_on=True))\n")
    with pytest.raises(ValueError, match=r"odd.py: model.test_cfg.instance_on is set, but cells are read from "
                                         r"UniMask2Former or Mask2Former or MaskFormer only, not from "
                                         r"'UniEncoderDecoder'"):
        config_task(read_config(str(config)), str(config))
    assert config_task(read_config(str(SEMANTIC_CONFIG))) == "semantic"


def test_a_model_that_cannot_be_built_is_a_config_error(models, tmp_path):
    config = tmp_path / "typo_cfg.py"
    config.write_text(f"_base_ = [{str(models['config'])!r}]\nmodel = dict(backbone=dict(type='mmseg.VitAdaptor'))\n")
    with pytest.raises(ValueError, match=r"typo_cfg.py: cannot build its model: .*VitAdaptor"):
        load_segmentor(str(config), str(models["checkpoint"]))


def test_no_cells_when_the_model_finds_none(tmp_path):
    """Empty outputs are still a complete set: headers, an empty FeatureCollection, an all-zero TIFF."""
    summary = segment_file(_stand_in(threshold=255), str(NUCLEI), str(tmp_path), formats=["geojson", "csv", "tiff"],
                           progress=False)
    found = _outputs(tmp_path, "nuclei_br")
    assert summary["cells"] == 0 and _assert_consistent(found) == 0
    assert not found["ids"].any() and os.path.getsize(tmp_path / "nuclei_br_cells.csv") > 0
