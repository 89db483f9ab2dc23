"""CellInstanceMetric end to end: mmdet DetDataSamples (and their dict form) through mmengine's Evaluator,
a semantic model's SegDataSamples through the same metric, and what it keeps per image."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from mmdet.registry import METRICS as MMDET_METRICS
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.evaluator import Evaluator
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData, PixelData
from mmseg.registry import METRICS as MMSEG_METRICS
from mmseg.structures import SegDataSample

from uniseg.evaluation import CellInstanceMetric

H = W = 32
THINGS = ("tumour", "immune")


def box(y0, x0, y1, x1, shape=(H, W)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


# Ground truth: G1 = 10x10 tumour cell, G2 = 10x10 immune cell.
GT_MASKS = np.stack([box(0, 0, 10, 10), box(20, 20, 30, 30)])
GT_LABELS = [0, 1]
# Predictions (mask, score, label):
#   P1 10x8 inside G1, tumour, 0.9        -> IoU 80/100 = 0.8 with G1
#   P2 exactly G2 but called tumour, 0.8  -> IoU 1.0 with G2, wrong class
#   P3 P1 shifted by one column, 0.7      -> 70 of its 80 px already P1's: a duplicate, dropped when painted
#   P4 4x4 far from both, immune, 0.6     -> FP
#   P5 4x4, score 0.2                      -> below score_thr 0.5, ignored
PRED = [(box(0, 0, 10, 8), 0.9, 0), (box(20, 20, 30, 30), 0.8, 0), (box(0, 1, 10, 9), 0.7, 0),
        (box(0, 25, 4, 29), 0.6, 1), (box(12, 12, 16, 16), 0.2, 0)]

# Worked out by hand (painted prediction: P1, P2 tumour; P4 immune):
#   binary: TP 2 (IoU 0.8, 1.0), FP 1 (P4), FN 0 -> DQ 2 / 2.5 = 0.8, SQ 0.9, PQ 0.72
#   tumour: GT {G1} vs {P1, P2}: TP 1 (0.8), FP 1, FN 0 -> DQ 2/3, SQ 0.8, PQ 0.5333
#   immune: GT {G2} vs {P4}: TP 0, FP 1, FN 1 -> PQ 0;   mPQ = mPQ+ = 0.2667
#   centroids (y, x): G1 (4.5, 4.5), G2 (24.5, 24.5); P1 (4.5, 3.5), P2 (24.5, 24.5), P4 (1.5, 26.5)
#   Hungarian pairs G1-P1 (1 px), G2-P2 (0 px): TP_d 2, FP_d 1 (P4), FN_d 0 -> F1_d = 4/5
#   tumour: TP_c 1, FP_c 1 (G2 called tumour) -> F1 = 2 / (2 + 2) = 0.5
#   immune: FN_c 1 (G2), FP_d 1 (P4) -> F1 = 0 / (2 + 1) = 0;  Acc_type = 1/2
EXPECTED = {"bPQ": 72.0, "bDQ": 80.0, "bSQ": 90.0, "mPQ": 26.67, "mPQ+": 26.67, "F1_d": 80.0, "Acc_type": 50.0,
            "PQ_tumour": 53.33, "F1_tumour": 50.0, "PQ_immune": 0.0, "F1_immune": 0.0,
            "num_images": 1, "num_gt": 2, "num_pred": 3}


def det_sample(name="img0.png", gt_masks=None, tissue=None):
    meta = dict(img_path=name, img_id=0, ori_shape=(H, W))
    if tissue is not None:
        meta["tissue"] = tissue
    sample = DetDataSample(metainfo=meta)
    masks, scores, labels = zip(*PRED)
    sample.pred_instances = InstanceData(masks=torch.from_numpy(np.stack(masks)), scores=torch.tensor(scores),
                                         labels=torch.tensor(labels))
    gt = GT_MASKS if gt_masks is None else gt_masks
    sample.gt_instances = InstanceData(masks=BitmapMasks(gt.astype(np.uint8), H, W),
                                       labels=torch.tensor(GT_LABELS[:len(gt)]))
    return sample


def evaluator(scope="mmdet", classes=THINGS, **kw):
    with DefaultScope.overwrite_default_scope(scope):
        ev = Evaluator(dict(type="CellInstanceMetric", **kw))
    ev.dataset_meta = dict(classes=classes)
    return ev


def strip_prefix(results):
    assert all(k.startswith("cell/") for k in results)
    return {k[len("cell/"):]: v for k, v in results.items()}


def test_registered_for_mmdet_and_mmseg_configs():
    assert MMDET_METRICS.get("CellInstanceMetric") is CellInstanceMetric
    assert MMSEG_METRICS.get("CellInstanceMetric") is CellInstanceMetric
    for scope in ("mmdet", "mmseg"):
        assert isinstance(evaluator(scope).metrics[0], CellInstanceMetric)


def test_det_data_samples_through_the_evaluator():
    ev = evaluator()
    ev.process([det_sample()])
    results = strip_prefix(ev.evaluate(1))
    assert results == pytest.approx(EXPECTED)
    assert list(results) == list(EXPECTED)  # the documented keys, in order


def test_score_threshold_decides_which_predictions_count():
    ev = evaluator(score_thr=0.1)
    ev.process([det_sample()])
    results = strip_prefix(ev.evaluate(1))
    # P5 now counts as a second FP: DQ = 2 / (2 + 1) -> PQ = 2/3 * 0.9 = 0.6
    assert results["bPQ"] == pytest.approx(60.0) and results["num_pred"] == 4


def test_dict_samples_and_tensor_masks_give_the_same_scores():
    metric = CellInstanceMetric()
    metric.dataset_meta = dict(classes=THINGS)
    plain = det_sample().to_dict()
    plain["gt_instances"]["masks"] = torch.from_numpy(GT_MASKS)  # a tensor instead of BitmapMasks
    metric.process(None, [plain])
    metric.process(None, [det_sample()])  # a DetDataSample given directly
    assert len(metric.results) == 2
    results = metric.evaluate(2)
    assert results["cell/bPQ"] == pytest.approx(72.0) and results["cell/num_images"] == 2


def test_per_image_results_are_small_and_picklable():
    metric = CellInstanceMetric()
    metric.dataset_meta = dict(classes=THINGS)
    big = (512, 512)
    masks = np.stack([box(16 * i, 16 * i, 16 * i + 12, 16 * i + 12, big) for i in range(30)])
    sample = DetDataSample(metainfo=dict(img_path="big.png", ori_shape=big))
    sample.pred_instances = InstanceData(masks=torch.from_numpy(masks), scores=torch.full((30,), 0.9),
                                         labels=torch.zeros(30, dtype=torch.long))
    sample.gt_instances = InstanceData(masks=BitmapMasks(masks.astype(np.uint8), *big),
                                       labels=torch.zeros(30, dtype=torch.long))
    metric.process(None, [sample])
    size = len(pickle.dumps(metric.results))
    assert size < 4096, size  # the masks alone are 30 x 512 x 512 bytes
    assert pickle.loads(pickle.dumps(metric.results))[0].bin_tp == 30


def test_groups_from_metainfo():
    ev = evaluator(group_key="tissue")
    perfect = det_sample("a.png", tissue="breast")
    perfect.pred_instances = InstanceData(masks=torch.from_numpy(GT_MASKS), scores=torch.tensor([0.9, 0.9]),
                                          labels=torch.tensor(GT_LABELS))
    ev.process([perfect, det_sample("b.png", tissue="breast"), det_sample("c.png", tissue="colon")])
    # bPQ per image 1, 0.72, 0.72: breast mean 0.86, colon 0.72 -> 0.79 (not the image mean 0.8133)
    assert strip_prefix(ev.evaluate(3))["bPQ"] == pytest.approx(79.0)
    with pytest.raises(KeyError, match="group_key"):
        missing = evaluator(group_key="organ")
        missing.process([det_sample()])


def test_clear_errors_name_the_image():
    metric = CellInstanceMetric()
    metric.dataset_meta = dict(classes=THINGS)
    small_gt = det_sample("resized.png")
    small_gt.gt_instances = InstanceData(masks=BitmapMasks(np.zeros((1, 16, 16), np.uint8), 16, 16),
                                         labels=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"resized.png: ground truth is 16x16 but the prediction is 32x32"):
        metric.process(None, [small_gt])
    no_gt = det_sample("nogt.png")
    del no_gt.gt_instances
    with pytest.raises(KeyError, match="nogt.png.*with_masks=True.*gt_source=.instance_map."):
        metric.process(None, [no_gt])
    one_class = CellInstanceMetric()
    one_class.dataset_meta = dict(classes=("tumour",))
    with pytest.raises(ValueError, match=r"img0.png: .*classes must be in \[0, 1\)"):
        one_class.process(None, [det_sample()])
    no_meta = CellInstanceMetric()
    with pytest.raises(ValueError, match="dataset_meta"):
        no_meta.process(None, [det_sample()])
    with pytest.raises(ValueError, match="pred_source"):
        CellInstanceMetric(pred_source="panoptic")


# ---------------------------------------------------------------- semantic model, same metric
SEM_CLASSES = ("background",) + THINGS


def touching_gt():
    """Two touching tumour cells (10x10 and 10x4) and an immune cell; as ids, as class map, as masks."""
    ids = np.zeros((H, W), np.int32)
    ids[0:10, 0:10] = 1
    ids[0:10, 10:14] = 2
    ids[20:30, 20:30] = 3
    sem = np.zeros((H, W), np.int64)
    sem[ids > 0] = 1
    sem[ids == 3] = 2
    return ids, sem


def test_semantic_and_instance_models_scored_side_by_side():
    ids, sem = touching_gt()
    # The semantic model gets every pixel right: pred_sem_seg == gt_sem_seg.
    seg = SegDataSample(metainfo=dict(img_path="touch.png", ori_shape=(H, W), gt_instance_map=ids))
    seg.pred_sem_seg = PixelData(data=torch.from_numpy(sem)[None])
    seg.gt_sem_seg = PixelData(data=torch.from_numpy(sem)[None])
    sem_eval = evaluator("mmseg", classes=SEM_CLASSES, pred_source="semantic", gt_source="instance_map")
    sem_eval.process([seg])
    semantic = strip_prefix(sem_eval.evaluate(1))
    # Its connected components merge the two touching tumour cells into one 140 px object:
    # IoU 100/140 with the first (TP), the 40 px cell is missed (FN); the immune cell is exact.
    #   binary: TP 2, FN 1: DQ = 2 / 2.5 = 0.8, SQ = (100/140 + 1) / 2 = 0.857, PQ = 0.6857
    #   tumour: TP 1, FN 1: DQ 2/3, SQ 0.714 -> PQ 0.4762; immune PQ 1 -> mPQ 0.7381
    assert semantic["bPQ"] == pytest.approx(68.57) and semantic["mPQ"] == pytest.approx(73.81)
    assert semantic["PQ_tumour"] == pytest.approx(47.62) and semantic["num_pred"] == 2

    # An instance model that separates the touching cells, on the same ground truth (mmdet form):
    det = DetDataSample(metainfo=dict(img_path="touch.png", ori_shape=(H, W)))
    masks = np.stack([ids == k for k in (1, 2, 3)])
    det.gt_instances = InstanceData(masks=BitmapMasks(masks.astype(np.uint8), H, W), labels=torch.tensor([0, 0, 1]))
    det.pred_instances = InstanceData(masks=torch.from_numpy(masks), scores=torch.tensor([0.9, 0.9, 0.9]),
                                      labels=torch.tensor([0, 0, 1]))
    inst_eval = evaluator()
    inst_eval.process([det])
    instance = strip_prefix(inst_eval.evaluate(1))
    assert instance["bPQ"] == 100 and instance["mPQ"] == 100
    assert set(instance) == set(semantic)  # same keys: the two rows print side by side


def test_semantic_ground_truth_merges_touching_cells_too():
    # gt_source='semantic' makes objects of gt_sem_seg's components: the same merge on both sides
    # looks perfect, which is why it is only right for annotations whose cells never touch.
    _, sem = touching_gt()
    seg = SegDataSample(metainfo=dict(img_path="touch.png", ori_shape=(H, W)))
    seg.pred_sem_seg = PixelData(data=torch.from_numpy(sem)[None])
    seg.gt_sem_seg = PixelData(data=torch.from_numpy(sem)[None])
    ev = evaluator("mmseg", classes=SEM_CLASSES, pred_source="semantic", gt_source="semantic")
    ev.process([seg])
    results = strip_prefix(ev.evaluate(1))
    assert results["bPQ"] == 100 and results["num_gt"] == 2


def test_instance_map_objects_must_lie_on_cell_classes():
    ids, sem = touching_gt()
    sem[ids == 2] = 0  # object 2 annotated on background
    seg = SegDataSample(metainfo=dict(img_path="bad.png", ori_shape=(H, W), gt_instance_map=ids))
    seg.pred_sem_seg = PixelData(data=torch.from_numpy(sem)[None])
    seg.gt_sem_seg = PixelData(data=torch.from_numpy(sem)[None])
    ev = evaluator("mmseg", classes=SEM_CLASSES, pred_source="semantic", gt_source="instance_map")
    with pytest.raises(ValueError, match=r"bad.png: 1 objects of gt_instance_map lie on gt_sem_seg values \[0\]"):
        ev.process([seg])


def test_custom_imports_register_the_metric_for_an_mmdet_scoped_config(tmp_path, repo_root):
    """A fresh interpreter with only mmdet's scope: the config's custom_imports=['uniseg'] is what registers it."""
    import subprocess
    import sys

    cfg = tmp_path / "cells.py"
    cfg.write_text("default_scope = 'mmdet'\n"
                   "custom_imports = dict(imports=['uniseg'], allow_failed_imports=False)\n"
                   "test_evaluator = dict(type='CellInstanceMetric', score_thr=0.3, pair_radius=6.0)\n")
    code = ("import sys; from mmengine.config import Config; from mmengine.registry import init_default_scope; "
            "from mmengine.evaluator import Evaluator; from mmdet.registry import METRICS; "
            "assert METRICS.get('CellInstanceMetric') is None or 'uniseg' in sys.modules; "
            f"cfg = Config.fromfile({str(cfg)!r}); init_default_scope(cfg.default_scope); "
            "m = Evaluator(cfg.test_evaluator).metrics[0]; print(type(m).__module__, m.score_thr, m.pair_radius)")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["uniseg.evaluation.metrics.cell_metric", "0.3", "6.0"]
