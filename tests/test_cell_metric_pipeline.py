"""CellInstanceMetric behind the real test pipelines: the packed ground truth (one id map + a label per object,
no mask stack) and a model's painted prediction map score exactly as full mask stacks do, on data/nuclei and
on a generated CoNSeP-like tile (1000 px at 0.25 um/px, 700 touching nuclei, four classes), in bounded memory."""
from __future__ import annotations

import copy
import json
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.evaluator import Evaluator
from mmengine.registry import DATASETS, DefaultScope
from mmengine.structures import InstanceData, PixelData
from PIL import Image
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
NUCLEI = REPO / "data" / "nuclei"
CONSEP_CLASSES = ("background", "other", "inflammatory", "epithelial", "spindle-shaped")


def dataset_from(config: str, data_root: Path, scope: str = "mmdet", split: str = "test", **changes):
    cfg = Config.fromfile(str(REPO / config))
    ds_cfg = copy.deepcopy(cfg[f"{split}_dataloader"].dataset)
    ds_cfg.update(data_root=str(data_root), **changes)
    with DefaultScope.overwrite_default_scope(scope):
        return DATASETS.build(ds_cfg), cfg


def evaluate(samples, dataset_classes, scope="mmdet", **metric):
    with DefaultScope.overwrite_default_scope(scope):
        evaluator = Evaluator(dict(type="CellInstanceMetric", **metric))
    evaluator.dataset_meta = dict(classes=dataset_classes)
    evaluator.process(samples)
    return {k.split("/")[-1]: v for k, v in evaluator.evaluate(len(samples)).items()}


def imperfect_prediction(gt_ids: np.ndarray, gt_labels: np.ndarray, num_classes: int):
    """A deterministic stand-in for a model: every 5th object missed, odd ones dilated and even ones eroded by
    one pixel, every 7th given the next class, and one spurious object; as painted ids (k = entry k - 1)."""
    ids = np.zeros_like(gt_ids, dtype=np.int32)
    labels, scores = [], []
    cross = ndimage.generate_binary_structure(2, 1)
    for k in range(1, int(gt_ids.max()) + 1):
        mask = gt_ids == k
        if k % 5 == 0 or not mask.any():
            continue
        mask = ndimage.binary_dilation(mask, cross) if k % 2 else ndimage.binary_erosion(mask, cross)
        mask &= ids == 0
        if not mask.any():
            continue
        labels.append((int(gt_labels[k - 1]) + (k % 7 == 0)) % num_classes)
        scores.append(0.55 + 0.4 * ((k * 37) % 11) / 11)
        ids[mask] = len(labels)
    spurious = (slice(0, 6), slice(gt_ids.shape[1] - 6, None))
    ids[spurious][ids[spurious] == 0] = len(labels) + 1
    labels.append(0)
    scores.append(0.9)
    return ids, np.asarray(labels, np.int64), np.asarray(scores, np.float32)


def with_painted_prediction(sample, ids, labels, scores):
    sample.pred_instances = InstanceData(labels=torch.from_numpy(labels), scores=torch.from_numpy(scores))
    sample.pred_instance_map = PixelData(ids=torch.from_numpy(ids)[None])
    return sample


def with_mask_prediction(sample, ids, labels, scores):
    masks = ids[None] == np.arange(1, len(labels) + 1, dtype=np.int32)[:, None, None]
    sample.pred_instances = InstanceData(masks=torch.from_numpy(masks), labels=torch.from_numpy(labels),
                                         scores=torch.from_numpy(scores))
    return sample


# ------------------------------------------------------------------------------------------ data/nuclei
def test_nuclei_test_pipeline_packs_one_map_and_scores_like_mask_stacks():
    ds, cfg = dataset_from("configs/uni/mask2former_uni-tiny-adapter_1xb2-800_nuclei-instance-256x256.py", NUCLEI)
    assert cfg.test_evaluator.gt_source == "instance_map"
    packed = ds[0]["data_samples"]
    assert "masks" not in packed.gt_instances and "gt_instance_map" in packed
    gt_ids = packed.gt_instance_map.ids[0].numpy()
    labels = packed.gt_instances.labels.numpy()
    assert gt_ids.shape == (256, 256) and gt_ids.max() == len(labels) == 35
    pred = imperfect_prediction(gt_ids, labels, 1)

    # the same quadrant through the old test pipeline (an (n, H, W) mask stack) as the reference
    with_stack = [t if t["type"] != "InstanceMapToTargets" else dict(type="InstanceMapToTargets")
                  for t in cfg.test_pipeline]
    reference_ds, _ = dataset_from(cfg.filename, NUCLEI, pipeline=with_stack)
    stacked = reference_ds[0]["data_samples"]
    assert stacked.gt_instances.masks.to_ndarray().shape == (35, 256, 256)

    new = evaluate([with_painted_prediction(packed, *pred)], ("nucleus",), gt_source="instance_map",
                   pair_radius=12)
    old = evaluate([with_mask_prediction(stacked, *pred)], ("nucleus",), gt_source="instances", pair_radius=12)
    assert new == old
    assert 30 < new["bPQ"] < 90 and new["num_gt"] == 35 and new["num_pred"] == len(pred[1])


def test_semantic_twin_scores_its_components_against_the_packed_map():
    ds, cfg = dataset_from("configs/uni/mask2former_uni-tiny-adapter_1xb2-800_nuclei-256x256.py", NUCLEI,
                           scope="mmseg")
    evaluator_cfg = {k: v for k, v in cfg.test_evaluator.items() if k not in ("type", "_delete_")}
    assert evaluator_cfg["gt_source"] == "instance_map" and evaluator_cfg["pred_source"] == "semantic"
    sample = ds[0]["data_samples"]
    assert "masks" not in sample.gt_instances
    gt_ids = sample.gt_instance_map.ids[0].numpy()
    nucleus = torch.from_numpy((gt_ids > 0).astype(np.int64))[None]
    sample.pred_sem_seg = PixelData(data=nucleus)  # every nucleus pixel right: touching nuclei merge
    scores = evaluate([sample], ds.metainfo["classes"], scope="mmseg", **evaluator_cfg)
    components = ndimage.label(gt_ids > 0)[1]
    assert scores["num_gt"] == 35 and scores["num_pred"] == components < 35 and scores["bPQ"] < 100


# ------------------------------------------------------------------------------------------ CoNSeP-like
def consep_like(root: Path, size: int = 1000, count: int = 700, seed: int = 0) -> Path:
    """One tile at 0.25 um/px: ``count`` touching elliptical nuclei of four classes (later ones drawn over
    earlier ones), plus one object whose pixels are all unknown (255 in masks/)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((size, size), np.int32)
    classes = rng.integers(1, 5, count + 1)
    for k in range(1, count + 1):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(7, 16, 2))
        cv2.ellipse(ids, centre, axes, float(rng.integers(0, 180)), 0, 360, k, thickness=-1)
    semantic = np.concatenate([[0], classes]).astype(np.uint8)[ids]
    ids[40:60, 40:60] = count + 1  # the unknown object
    semantic[40:60, 40:60] = 255
    image = np.full((size, size, 3), 235, np.uint8)
    image[ids > 0] = (90, 40, 140)
    for folder in ("images", "masks", "instances", "splits"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / "tile.png")
    Image.fromarray(semantic).save(root / "masks" / "tile.png")
    Image.fromarray(ids.astype(np.uint16)).save(root / "instances" / "tile.png")
    (root / "splits" / "test.txt").write_text("tile\n")
    (root / "meta.json").write_text(json.dumps({"classes": list(CONSEP_CLASSES), "mpp": 0.25}))
    return root


@pytest.fixture(scope="module")
def consep_tile(tmp_path_factory):
    return consep_like(tmp_path_factory.mktemp("consep"))


def test_consep_like_tile_scores_through_the_consep_test_pipeline_in_bounded_memory(consep_tile):
    ds, cfg = dataset_from("configs/_base_/datasets/consep_instance.py", consep_tile)
    tracemalloc.start()
    try:
        packed = ds[0]
        sample = packed["data_samples"]
        gt_ids = sample.gt_instance_map.ids[0].numpy()
        labels = sample.gt_instances.labels.numpy()
        perfect = (gt_ids.copy(), labels.copy(), np.ones(len(labels), np.float32))
        scores = evaluate([with_painted_prediction(sample, *perfect)], cfg.metainfo.classes,
                          gt_source="instance_map", pair_radius=12)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tuple(packed["inputs"].shape[1:]) == (500, 500)  # the image at 0.5 um/px ...
    assert gt_ids.shape == (1000, 1000) and sample.ori_shape == (1000, 1000)  # ... the ground truth at 0.25
    assert 600 < len(labels) <= 700 and gt_ids.max() == len(labels)
    assert set(labels.tolist()) == {0, 1, 2, 3}
    assert sample.gt_instance_map.ignore[0, 40:60, 40:60].all()
    assert scores["bPQ"] == scores["mPQ"] == 100.0 and scores["num_gt"] == len(labels)
    # an (n, H, W) uint8 stack of these objects alone is n MB; everything here stays well below one
    print(f"peak traced memory: {peak / 2**20:.1f} MiB for {len(labels)} objects on 1000x1000")
    assert peak < 64 * 2**20, peak


def test_predictions_on_unknown_pixels_are_not_scored(consep_tile):
    ds, cfg = dataset_from("configs/_base_/datasets/consep_instance.py", consep_tile)
    sample = ds[0]["data_samples"]
    gt_ids = sample.gt_instance_map.ids[0].numpy()
    labels = sample.gt_instances.labels.numpy()
    ids = gt_ids.copy()
    n = len(labels)
    ids[42:58, 42:58] = n + 1  # a prediction on the unknown object: neither a hit nor a false positive
    ids[0:3, 0:3][ids[0:3, 0:3] == 0] = n + 2  # a prediction on annotated background: a false positive
    pred = (ids, np.concatenate([labels, [0, 0]]), np.ones(n + 2, np.float32))
    scores = evaluate([with_painted_prediction(sample, *pred)], cfg.metainfo.classes, gt_source="instance_map")
    assert scores["num_gt"] == n and scores["num_pred"] == n + 1
    assert scores["bDQ"] == pytest.approx(100 * n / (n + 0.5), abs=0.01)
