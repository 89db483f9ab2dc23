"""Cells as objects, scored once: bPQ/mPQ (PanNuke) and detection/type F1 (HoVer-Net) as an mmengine metric.

The same class scores an instance model (mmdet ``Mask2Former`` with ``pred_instances``) and a
semantic model (mmseg ``pred_sem_seg``, whose cells are its connected components), so both can be
printed side by side against the same ground truth. Conventions: :mod:`uniseg.evaluation.cell_stats`.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmdet.registry import METRICS as MMDET_METRICS
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from mmengine.structures import BaseDataElement
from mmseg.registry import METRICS as MMSEG_METRICS
from prettytable import PrettyTable

from uniseg.evaluation.cell_stats import (HOVERNET_PAIR_RADIUS_PX, MATCH_IOU, CellSummary,
                                          drop_predictions_on_unknown, image_cell_stats, summarize_cell_stats)
from uniseg.evaluation.prediction_files import write_cell_prediction
from uniseg.evaluation.semantic_instances import semantic_to_instances
from uniseg.structures import InstanceMap, classes_from_semantic, paint_instances, relabel_dense

__all__ = ["CellInstanceMetric"]

PRED_SOURCES = ("instances", "semantic")
GT_SOURCES = ("instances", "instance_map", "semantic")
PRED_MAP_KEY = "pred_instance_map"
# A ground-truth object survives painting as long as one pixel of it is not claimed by an earlier one.
_KEEP_ANY_VISIBLE = 1e-12


def _to_numpy(value: Any) -> np.ndarray:
    """Tensors, mmdet BitmapMasks/PolygonMasks, PixelData dicts and arrays alike."""
    if isinstance(value, dict) and "data" in value:  # a PixelData after BaseDataElement.to_dict()
        value = value["data"]
    if isinstance(value, BaseDataElement) and "data" in value:
        value = value.data
    if hasattr(value, "to_ndarray"):  # mmdet BitmapMasks / PolygonMasks
        return value.to_ndarray()
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _as_map(value: Any) -> np.ndarray:
    array = _to_numpy(value)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    return array


def _fields(value: Any) -> Optional[Dict[str, Any]]:
    """The fields of a multi-field PixelData (as a dict); None for a bare array or tensor."""
    if isinstance(value, BaseDataElement):
        value = value.to_dict()
    return value if isinstance(value, dict) and "data" not in value else None


def _original_mpp(sample: Dict[str, Any]) -> Optional[float]:
    """Microns per pixel at the original size (where predictions are scored), undoing ResampleToMPP."""
    mpp = sample.get("mpp")
    if mpp is None:
        return None
    fx, fy = sample.get("resample_factor") or (1.0, 1.0)
    return float(mpp) * math.sqrt(float(fx) * float(fy))


@MMDET_METRICS.register_module()
@MMSEG_METRICS.register_module()
class CellInstanceMetric(BaseMetric):
    """Panoptic quality and detection/classification F1 of cells (nuclei) over a dataset.

    Each image's prediction and ground truth become non-overlapping :class:`InstanceMap` objects,
    are scored into a few counts (:func:`image_cell_stats`; no masks are kept, so what mmengine
    gathers from every rank stays small), and :meth:`compute_metrics` turns the counts into
    percentages, as mmseg's ``IoUMetric`` does.

    Args:
        pred_source: ``'instances'`` reads the objects of an instance model: its painted id map
            ``pred_instance_map`` (a :class:`PixelData` with ``ids`` (1, H, W), ``k`` =
            ``pred_instances[k - 1]``, whose labels and scores it reads) when the model gives one
            (:class:`~uniseg.models.detectors.UniMask2Former` in slide mode), else
            ``pred_instances.masks`` (N, H, W), painted by confidence. ``'semantic'`` takes the
            connected components of each cell class of ``pred_sem_seg`` (a semantic model's cells).
        gt_source: ``'instance_map'`` reads ``gt_instance_map`` as ``PackInstanceInputs`` packs it
            (``ids`` (1, H, W), ``k`` = ``gt_instances[k - 1]``, whose labels are the classes;
            ``ignore`` (1, H, W): unknown pixels): the test pipelines' ground truth, without an
            (n, H, W) mask stack. A bare id map there (a field or a metainfo key named
            ``gt_instance_map_key``) instead takes each object's class from ``gt_sem_seg``.
            ``'instances'`` reads ``gt_instances.masks`` (mmdet ``BitmapMasks`` or a tensor);
            ``'semantic'`` takes connected components of ``gt_sem_seg`` (only right when annotated
            cells never touch). Unknown pixels and ignored objects follow
            :mod:`uniseg.evaluation.cell_stats` (predictions mostly on them are not scored).
        score_thr, min_visible, max_per_image: how overlapping predicted masks are resolved
            (:func:`uniseg.structures.paint_instances`). A model's painted map was resolved by the
            model (its ``test_cfg``); of it, objects below ``score_thr`` are dropped and at most
            ``max_per_image`` of the most confident kept.
        match_iou: IoU a pair must exceed to be a PQ match (>= 0.5; 0.5 in every reference).
        pair_radius: centroid distance in pixels of the evaluated images up to which objects pair
            for F1 (HoVer-Net: 12 px at 40x, about 3 um; at 0.5 um/px, 12 px is 6 um).
        classes: names of the cell classes, overriding ``dataset_meta['classes']``.
        semantic_thing_classes: the semantic class values that are cells, in the order of the cell
            classes. Default: every class but 0 (uniseg's semantic datasets put background at 0).
        connectivity, min_area: connected components of semantic maps (see
            :func:`semantic_to_instances`).
        gt_instance_map_key: where ``gt_source='instance_map'`` finds the id map.
        group_key: metainfo key (e.g. ``'tissue'``) whose images are averaged first, then the
            groups, as PanNuke reports bPQ/mPQ over tissues. None: all images are one group.
        ignore_index: ignored value of semantic ground truth.
        output_dir: also write each image's predicted cells there (``tools/test.py --out``): a
            16-bit id PNG and a cell table per image (:mod:`uniseg.evaluation.prediction_files`).
    """

    default_prefix: Optional[str] = "cell"

    def __init__(self, pred_source: str = "instances", gt_source: str = "instances", score_thr: float = 0.5,
                 min_visible: float = 0.5, max_per_image: Optional[int] = None, match_iou: float = MATCH_IOU,
                 pair_radius: float = HOVERNET_PAIR_RADIUS_PX, classes: Optional[Sequence[str]] = None,
                 semantic_thing_classes: Optional[Sequence[int]] = None, connectivity: int = 1, min_area: int = 0,
                 gt_instance_map_key: str = "gt_instance_map", group_key: Optional[str] = None,
                 ignore_index: int = 255, output_dir: Optional[str] = None, collect_device: str = "cpu",
                 prefix: Optional[str] = None, collect_dir: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        if pred_source not in PRED_SOURCES:
            raise ValueError(f"CellInstanceMetric: pred_source must be one of {PRED_SOURCES}, got {pred_source!r}")
        if gt_source not in GT_SOURCES:
            raise ValueError(f"CellInstanceMetric: gt_source must be one of {GT_SOURCES}, got {gt_source!r}")
        if not MATCH_IOU <= match_iou < 1.0:
            raise ValueError(f"CellInstanceMetric: match_iou must be in [0.5, 1), got {match_iou}")
        if pair_radius < 0:
            raise ValueError(f"CellInstanceMetric: pair_radius must be >= 0 pixels, got {pair_radius}")
        if not 0.0 < min_visible <= 1.0:
            raise ValueError(f"CellInstanceMetric: min_visible must be in (0, 1], got {min_visible}")
        if connectivity not in (1, 2):
            raise ValueError(f"CellInstanceMetric: connectivity must be 1 or 2, got {connectivity}")
        self.pred_source = pred_source
        self.gt_source = gt_source
        self.score_thr = score_thr
        self.min_visible = min_visible
        self.max_per_image = max_per_image
        self.match_iou = match_iou
        self.pair_radius = pair_radius
        self.classes = None if classes is None else [str(c) for c in classes]
        self.semantic_thing_classes = (None if semantic_thing_classes is None
                                       else [int(v) for v in semantic_thing_classes])
        self.connectivity = connectivity
        self.min_area = min_area
        self.gt_instance_map_key = gt_instance_map_key
        self.group_key = group_key
        self.ignore_index = ignore_index
        self.output_dir = output_dir
        self._written: Dict[str, str] = {}  # output stem -> image, within one evaluation

    # ------------------------------------------------------------------ classes
    @property
    def _reads_semantic(self) -> bool:
        return self.pred_source == "semantic" or self.gt_source == "semantic"

    def _cell_classes(self) -> Tuple[List[str], List[int]]:
        """Names of the cell classes, and the semantic value of each (for semantic inputs)."""
        meta = list((self.dataset_meta or {}).get("classes") or [])
        if self.classes is not None:
            names = self.classes
        elif not meta:
            raise ValueError("CellInstanceMetric: no class names: the evaluator sets dataset_meta['classes'] from "
                             "the dataset's metainfo, or give classes=[...] to the metric")
        elif self._reads_semantic:
            values = self.semantic_thing_classes or list(range(1, len(meta)))
            bad = [v for v in values if not 0 <= v < len(meta)]
            if bad:
                raise ValueError(f"CellInstanceMetric: semantic_thing_classes {bad} are not classes of the dataset "
                                 f"({len(meta)} classes: {meta})")
            names = [str(meta[v]) for v in values]
        else:
            names = [str(c) for c in meta]
        values = self.semantic_thing_classes or list(range(1, len(names) + 1))
        if len(values) != len(names):
            raise ValueError(f"CellInstanceMetric: {len(values)} semantic_thing_classes {values} for "
                             f"{len(names)} cell classes {names}")
        if not names:
            raise ValueError("CellInstanceMetric: no cell classes (a semantic dataset needs classes beyond background)")
        return names, values

    # ------------------------------------------------------------------ per image
    def process(self, data_batch: Any, data_samples: Sequence[Any]) -> None:
        names, values = self._cell_classes()
        for sample in data_samples:
            if isinstance(sample, BaseDataElement):
                sample = sample.to_dict()
            image = next((str(sample[k]) for k in ("img_path", "img_id") if sample.get(k) is not None),
                         "<image without img_path>")
            gt, unknown = self._ground_truth(sample, image, values)
            pred = self._prediction(sample, image, values)
            if gt.ids.shape != pred.ids.shape:
                raise ValueError(f"CellInstanceMetric: {image}: ground truth is {gt.ids.shape[0]}x{gt.ids.shape[1]} "
                                 f"but the prediction is {pred.ids.shape[0]}x{pred.ids.shape[1]}; the ground truth "
                                 "must be at the original image size (load annotations after any Resize in the "
                                 "test pipeline)")
            if self.output_dir:
                self._write(sample, image, pred, names)
            pred = drop_predictions_on_unknown(pred, unknown)
            group = None
            if self.group_key is not None:
                if self.group_key not in sample:
                    raise KeyError(f"CellInstanceMetric: {image}: no '{self.group_key}' (group_key) in the data "
                                   f"sample: give each image one in the dataset's meta.json (image_attributes: "
                                   f"{{'{self.group_key}': {{stem: value}}}}, which the PanNuke converter writes; "
                                   "re-run it for folders converted before) or set group_key=None")
                group = sample[self.group_key]
            try:
                stats = image_cell_stats(gt, pred, len(names), self.match_iou, self.pair_radius, group)
            except ValueError as exc:
                raise ValueError(f"CellInstanceMetric: {image}: {exc} (cell classes: {names})") from exc
            self.results.append(stats)

    def _prediction(self, sample: Dict[str, Any], image: str, values: List[int]) -> InstanceMap:
        if self.pred_source == "semantic":
            if "pred_sem_seg" not in sample:
                raise KeyError(f"CellInstanceMetric: {image}: pred_source='semantic' needs pred_sem_seg "
                               "(a semantic segmentor's output)")
            return semantic_to_instances(_as_map(sample["pred_sem_seg"]), values, self.connectivity, self.min_area)
        pred = sample.get("pred_instances")
        painted = _fields(sample.get(PRED_MAP_KEY))
        if painted is not None:
            return self._select(self._painted_map(painted, pred, image, PRED_MAP_KEY, "pred_instances", scored=True))
        if pred is None or "masks" not in pred:
            raise KeyError(f"CellInstanceMetric: {image}: pred_source='instances' needs pred_instances with masks, "
                           f"or a painted {PRED_MAP_KEY} (an instance-segmentation model such as mmdet's Mask2Former "
                           "with instance_on=True)")
        masks = self._stack_masks(pred["masks"], sample, image)
        return paint_instances(masks, _to_numpy(pred["scores"]).reshape(-1), _to_numpy(pred["labels"]).reshape(-1),
                               score_thr=self.score_thr, min_visible=self.min_visible,
                               max_instances=self.max_per_image)

    def _select(self, painted: InstanceMap) -> InstanceMap:
        """The objects of a model-painted map that pass ``score_thr`` and ``max_per_image`` (ids renumbered)."""
        order = np.argsort(-painted.scores, kind="stable")
        order = order[painted.scores[order] >= self.score_thr][:self.max_per_image]
        keep = np.zeros(painted.num_instances, bool)
        keep[order] = True
        return painted.subset(keep)

    @staticmethod
    def _painted_map(fields: Dict[str, Any], objects: Optional[Dict[str, Any]], image: str, name: str,
                     objects_name: str, scored: bool) -> InstanceMap:
        """An id map ``fields['ids']`` whose object ``k`` is entry ``k - 1`` of ``objects`` (labels, scores)."""
        if "ids" not in fields:
            raise KeyError(f"CellInstanceMetric: {image}: {name} has no 'ids' (fields: {sorted(fields)})")
        ids = _as_map(fields["ids"])
        if ids.ndim != 2 or ids.dtype.kind not in "ui":
            raise ValueError(f"CellInstanceMetric: {image}: {name}.ids must be one integer map, got {ids.dtype} "
                             f"{ids.shape}")
        wanted = ("labels", "scores") if scored else ("labels",)
        if objects is None or any(k not in objects for k in wanted):
            raise KeyError(f"CellInstanceMetric: {image}: {name} needs {objects_name} with {' and '.join(wanted)} "
                           f"(id k is {objects_name}[k - 1])")
        labels = _to_numpy(objects["labels"]).reshape(-1)
        scores = _to_numpy(objects["scores"]).reshape(-1) if scored else np.ones(len(labels), np.float32)
        top = int(ids.max(initial=0))
        if top > len(labels) or (ids.size and int(ids.min()) < 0):
            raise ValueError(f"CellInstanceMetric: {image}: {name} holds ids up to {top} but {objects_name} has "
                             f"{len(labels)} objects (id k is {objects_name}[k - 1])")
        return InstanceMap(ids, labels, scores)

    def _ground_truth(self, sample: Dict[str, Any], image: str,
                      values: List[int]) -> Tuple[InstanceMap, Optional[np.ndarray]]:
        """The ground-truth objects and the unknown pixels (None: every pixel is known)."""
        if self.gt_source == "instances":
            gt = sample.get("gt_instances")
            if gt is None or "masks" not in gt:
                raise KeyError(f"CellInstanceMetric: {image}: gt_source='instances' needs gt_instances with masks "
                               "(InstanceMapToTargets(with_masks=True) in the test pipeline); the test pipelines "
                               "pack gt_instance_map instead: use gt_source='instance_map'")
            masks = self._stack_masks(gt["masks"], sample, image)
            labels = _to_numpy(gt["labels"]).reshape(-1)
            nonempty = int(masks.reshape(len(masks), -1).any(axis=1).sum())
            out = paint_instances(masks, np.ones(len(masks), np.float32), labels, score_thr=0.0,
                                  min_visible=_KEEP_ANY_VISIBLE)
            if out.num_instances < nonempty:
                print_log(f"CellInstanceMetric: {image}: {nonempty - out.num_instances} ground-truth masks lie "
                          "entirely under earlier ones and are not scored", logger="current", level=logging.WARNING)
            return out, None
        if self.gt_source == "instance_map":
            if self.gt_instance_map_key not in sample:
                raise KeyError(f"CellInstanceMetric: {image}: gt_source='instance_map' needs "
                               f"'{self.gt_instance_map_key}' in the data sample (InstanceMapToTargets("
                               "keep_instance_map=True) and PackInstanceInputs in the test pipeline)")
            packed = _fields(sample[self.gt_instance_map_key])
            if packed is not None:
                gt = self._painted_map(packed, sample.get("gt_instances"), image, self.gt_instance_map_key,
                                       "gt_instances", scored=False)
                unknown = None
                if "ignore" in packed:
                    unknown = _as_map(packed["ignore"]).astype(bool)
                    if unknown.shape != gt.ids.shape:
                        raise ValueError(f"CellInstanceMetric: {image}: {self.gt_instance_map_key}.ignore "
                                         f"{unknown.shape} and .ids {gt.ids.shape} differ in size")
                return gt, unknown
        if "gt_sem_seg" not in sample:
            raise KeyError(f"CellInstanceMetric: {image}: gt_source='{self.gt_source}' needs gt_sem_seg")
        semantic = _as_map(sample["gt_sem_seg"])
        if self.gt_source == "semantic":
            return semantic_to_instances(semantic, values, self.connectivity), None
        ids = _as_map(sample[self.gt_instance_map_key])
        if ids.shape != semantic.shape:
            raise ValueError(f"CellInstanceMetric: {image}: {self.gt_instance_map_key} {ids.shape} and gt_sem_seg "
                             f"{semantic.shape} differ in size")
        ids, _ = relabel_dense(ids.astype(np.int64))
        semantic_class, _ = classes_from_semantic(ids, semantic, ignore_index=self.ignore_index)
        lookup = {v: k for k, v in enumerate(values)}
        labels = np.array([lookup.get(int(v), -1) for v in semantic_class], np.int64)
        if (labels < 0).any():
            bad = sorted(set(int(v) for v in semantic_class[labels < 0]))
            raise ValueError(f"CellInstanceMetric: {image}: {int((labels < 0).sum())} objects of "
                             f"{self.gt_instance_map_key} lie on gt_sem_seg values {bad}, which are not cell classes "
                             f"{values} (-1: only ignored pixels)")
        return InstanceMap(ids, labels, np.ones(len(labels), np.float32)), None

    @staticmethod
    def _stack_masks(masks: Any, sample: Dict[str, Any], image: str) -> np.ndarray:
        array = _to_numpy(masks)
        if array.size == 0 and array.ndim != 3:
            shape = sample.get("ori_shape")
            if shape is None:
                raise ValueError(f"CellInstanceMetric: {image}: no masks and no ori_shape to size an empty image")
            return np.zeros((0, *shape[:2]), bool)
        if array.ndim != 3:
            raise ValueError(f"CellInstanceMetric: {image}: masks must be (N, H, W), got shape {array.shape}")
        return array.astype(bool, copy=False)

    # ------------------------------------------------------------------ files (tools/test.py --out)
    def _write(self, sample: Dict[str, Any], image: str, pred: InstanceMap, names: List[str]) -> None:
        stem = str(sample.get("stem") or Path(image).stem)
        earlier = self._written.setdefault(stem, image)
        if earlier != image:
            raise ValueError(f"CellInstanceMetric: output_dir {self.output_dir}: {image} and {earlier} would both "
                             f"be written as {stem}.png; their names must differ")
        write_cell_prediction(self.output_dir, stem, pred, names, _original_mpp(sample))

    def evaluate(self, size: int) -> dict:
        self._written.clear()  # the next evaluation may write the same images again
        return super().evaluate(size)

    # ------------------------------------------------------------------ dataset
    def compute_metrics(self, results: list) -> Dict[str, float]:
        names, _ = self._cell_classes()
        summary = summarize_cell_stats(results)
        self._log_tables(summary, names)

        def pct(x) -> float:
            return float(np.round(float(x) * 100, 2))

        metrics = {"bPQ": pct(summary.bpq), "bDQ": pct(summary.bdq), "bSQ": pct(summary.bsq),
                   "mPQ": pct(summary.mpq), "mPQ+": pct(summary.mpq_plus),
                   "F1_d": pct(summary.f1_d), "Acc_type": pct(summary.acc_type)}
        for name, pq, f1 in zip(names, summary.pq, summary.f1_type):
            key = "_".join(name.split())
            metrics[f"PQ_{key}"] = pct(pq)
            metrics[f"F1_{key}"] = pct(f1)
        metrics.update(num_images=summary.num_images, num_gt=int(summary.num_gt.sum()),
                       num_pred=int(summary.num_pred.sum()))
        return metrics

    @staticmethod
    def _log_tables(summary: CellSummary, names: List[str]) -> None:
        logger = MMLogger.get_current_instance()

        def fmt(x) -> str:
            return "nan" if np.isnan(x) else f"{x * 100:.2f}"

        table = PrettyTable()
        table.field_names = ["Class", "PQ", "DQ", "SQ", "F1", "GT", "Pred"]
        for i, name in enumerate(names):
            table.add_row([name, fmt(summary.pq[i]), fmt(summary.dq[i]), fmt(summary.sq[i]),
                           fmt(summary.f1_type[i]), int(summary.num_gt[i]), int(summary.num_pred[i])])
        table.add_row(["all (binary)", fmt(summary.bpq), fmt(summary.bdq), fmt(summary.bsq), fmt(summary.f1_d),
                       int(summary.num_gt.sum()), int(summary.num_pred.sum())])
        print_log("cell results (PQ per image, then averaged; F1 pooled over the dataset):", logger)
        print_log("\n" + table.get_string(), logger=logger)
        print_log(f"mPQ {fmt(summary.mpq)}  mPQ+ {fmt(summary.mpq_plus)}  Acc_type {fmt(summary.acc_type)}  "
                  f"images {summary.num_images}", logger=logger)
