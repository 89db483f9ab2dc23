"""UniMask2Former: mmdet's Mask2Former, plus a sliding-window test mode for images with more cells than queries."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

import uniseg  # noqa: F401  (registers UniMask2Former)
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from uniseg.evaluation import CellInstanceMetric
from uniseg.inference.cell_predictor import Mask2FormerCellPredictor
from uniseg.structures import paint_instances

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs/uni/mask2former_uni-tiny-adapter_1xb2-800_nuclei-instance-256x256.py"
# A random model scores about 0.25 (two classes times a coin-flip mask) and its masks overlap: keep what it finds.
LOOSE = dict(score_thr=0.0, min_visible=0.01)


def build(**test_cfg):
    cfg = Config.fromfile(str(DEMO)).model
    cfg.test_cfg.update(test_cfg)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope("mmdet"):
        return MODELS.build(copy.deepcopy(cfg)).eval()


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Blobs on a background, so that a random model has structure to respond to."""
    rng = np.random.default_rng(seed)
    rgb = np.full((height, width, 3), 40, np.uint8)
    for _ in range(height * width // 300):
        y, x = rng.integers(4, height - 4), rng.integers(4, width - 4)
        rgb[max(0, y - 4):y + 4, max(0, x - 4):x + 4] = rng.integers(120, 255, 3)
    return rgb


def packed(model, rgb: np.ndarray, ori_shape=None):
    """(inputs, data sample) as the test pipeline and DetDataPreprocessor make them (image loaded BGR)."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    h, w = rgb.shape[:2]
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=ori_shape or (h, w), scale_factor=(1.0, 1.0),
                                         img_path="blobs.png"))
    data = model.data_preprocessor(dict(inputs=[torch.from_numpy(bgr).permute(2, 0, 1)], data_samples=[sample]),
                                   False)
    return data["inputs"], data["data_samples"]


def cells(ids: np.ndarray, labels, scores):
    """Order-free description of painted cells: (label, score, pixel indices) per present id."""
    return sorted((int(labels[k - 1]), round(float(scores[k - 1]), 5), tuple(np.flatnonzero(ids == k)))
                  for k in np.unique(ids[ids > 0]))


def test_one_window_is_the_whole_prediction_painted():
    """Slide mode with the window as large as the image is mmdet's prediction, painted into cells."""
    model = build(mode="slide", crop_size=(96, 96), stride=(96, 96), **LOOSE)
    inputs, samples = packed(model, image(96, 96))
    with torch.no_grad():
        (whole,) = model.predict_whole(inputs, copy.deepcopy(samples), rescale=False)
        (slide,) = model.predict(inputs, samples, rescale=False)
    pred = whole.pred_instances
    painted = paint_instances(pred.masks.numpy(), pred.scores.numpy(), pred.labels.numpy(), **LOOSE)
    assert painted.num_instances > 3  # the comparison below is not between two empty maps
    ids = slide.pred_instance_map.ids[0].numpy()
    assert "masks" not in slide.pred_instances
    assert cells(ids, slide.pred_instances.labels.numpy(), slide.pred_instances.scores.numpy()) == \
        cells(painted.ids, painted.labels, painted.scores)


def test_windows_stitch_into_one_map_at_the_original_size_that_the_metric_reads():
    model = build(mode="slide", crop_size=(64, 64), stride=(48, 48), **LOOSE)
    rgb = image(160, 128, seed=1)
    inputs, samples = packed(model, rgb, ori_shape=(320, 256))  # the pipeline resampled 320x256 to 160x128
    assert np.array_equal(model._unnormalise(inputs[0]), rgb)  # the windows see exactly the pipeline's image
    with torch.no_grad():
        (sample,) = model.predict(inputs, samples, rescale=True)
    ids = sample.pred_instance_map.ids
    labels, scores = sample.pred_instances.labels, sample.pred_instances.scores
    assert tuple(ids.shape) == (1, 320, 256) and ids.dtype == torch.int32
    assert len(labels) == len(scores) > 3 and int(ids.max()) <= len(labels)
    assert (labels == 0).all() and ((scores >= 0) & (scores <= 1)).all()
    # the id map is the stitched map at 160x128 enlarged by 2 (nearest): every id is a block of 2x2 pixels
    assert torch.equal(ids[0, ::2, ::2].repeat_interleave(2, 0).repeat_interleave(2, 1), ids[0])

    metric = CellInstanceMetric(pred_source="instances", gt_source="instance_map", score_thr=0.0)
    metric.dataset_meta = dict(classes=("nucleus",))
    result = sample.to_dict()
    result["gt_instance_map"] = dict(ids=ids.clone(), ignore=torch.zeros_like(ids, dtype=torch.bool))
    result["gt_instances"] = dict(labels=labels.clone())
    metric.process(None, [result])
    scores_out = metric.evaluate(1)
    present = len(torch.unique(ids[ids > 0]))
    assert scores_out["cell/bPQ"] == pytest.approx(100.0) and scores_out["cell/num_pred"] == present


def test_the_cell_predictor_runs_each_window_whole_for_a_sliding_model():
    """tools/infer.py's windows: a slide-mode config must not slide again inside each window."""
    tiles = np.stack([image(64, 64, seed=2), image(64, 64, seed=3)])
    slide = Mask2FormerCellPredictor(build(mode="slide", crop_size=(32, 32), stride=(16, 16)), **LOOSE)
    whole = Mask2FormerCellPredictor(build(mode="whole"), **LOOSE)
    for a, b in zip(slide.predict(tiles), whole.predict(tiles)):
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)


@pytest.mark.parametrize("test_cfg, message", [
    (dict(mode="tiles"), "test_cfg.mode must be one of"),
    (dict(mode="slide", stride=(48, 48)), "needs test_cfg.crop_size"),
    (dict(mode="slide", crop_size=(64, 64), stride=(0, 48)), "needs test_cfg.stride"),
])
def test_bad_test_modes_are_refused_when_built(test_cfg, message):
    with pytest.raises(ValueError, match=message):
        build(**test_cfg)


def test_consep_config_slides_over_its_test_tiles():
    cfg = Config.fromfile(str(REPO / "configs/uni/mask2former_uni-adapter-l_8xb2-10k_consep-instance-256x256.py"))
    assert cfg.model.type == "UniMask2Former"
    assert cfg.model.test_cfg.mode == "slide" and tuple(cfg.model.test_cfg.crop_size) == tuple(cfg.crop_size)
    assert all(t > s for t, s in zip(cfg.model.test_cfg.crop_size, cfg.model.test_cfg.stride))


@pytest.mark.parametrize("path", sorted((REPO / "configs/uni").glob("*-instance-*.py")), ids=lambda p: p.stem)
def test_instance_configs_are_cell_models_for_inference(path):
    """tools/infer.py decides from the config: every instance config gives cells."""
    from uniseg.inference.api import config_task

    assert config_task(Config.fromfile(str(path)), str(path)) == "cells"
