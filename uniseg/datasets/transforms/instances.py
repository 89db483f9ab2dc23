"""Pipeline transforms for cells as objects: instance maps in, mmdet ground truth out.

An instance pipeline carries the class mask and the instance map as two *seg fields* until the last
geometric transform, and only transforms that move *every* seg field, with nearest interpolation and
the same parameters, may come in between. Only then are the objects turned into what mmdet's
Mask2Former trains on (one bitmap, box and label per object), so crops that cut an object keep its
visible part and crops that miss it drop it, with no per-object bookkeeping in between.

Which transforms move every seg field (measured with mmcv 2.1, mmseg 1.2.2, mmdet 3.3): uniseg's
``ResampleToMPP`` and ``Albumentations``; mmseg's ``RandomCrop``, ``RandomRotate``, ``RandomFlip``
and ``Resize``. The instance configs are mmdet-scoped, where the bare names ``Resize``,
``RandomFlip`` and ``RandomCrop`` are mmdet's and ``RandomResize`` builds mmdet's ``Resize``: those
move ``gt_seg_map`` alone and would separate the class mask from the instance map, so write
``mmseg.Resize``, ``mmseg.RandomFlip``, ``mmseg.RandomCrop`` there (mmcv's ``RandomResize`` with
``resize_type='mmseg.Resize'``). A transform that separates them is an error, not silence:
:class:`InstanceMapToTargets` refuses maps of different sizes, or of a size the image no longer has,
and checks their content again (each object on one class, every cell pixel in an object), which
catches a flip or shift of one map without the other.

Padding: those transforms pad label maps with the ignore index (255). So that padding never becomes
an object, :class:`LoadInstanceAnnotations` renumbers objects ``1..n`` skipping ``pad_id`` (255) and
:class:`InstanceMapToTargets` reads ``pad_id`` as "no object". The class mask is padded with 255
(ignore) at the same pixels, so the two maps stay consistent.

A training pipeline (mmdet-scoped config, ``default_scope='mmdet'``)::

    dict(type='LoadImageFromFile'),
    dict(type='LoadInstanceAnnotations'),
    dict(type='mmseg.ResampleToMPP', target_mpp=0.5),
    dict(type='mmseg.RandomCrop', crop_size=(256, 256)),
    dict(type='mmseg.Albumentations', transforms=[...]),
    dict(type='InstanceMapToTargets'),
    dict(type='PackInstanceInputs'),

and a test pipeline, with the annotations loaded *after* resampling so that the ground truth stays
at the original resolution, where Mask2Former's predictions are returned::

    dict(type='LoadImageFromFile'),
    dict(type='mmseg.ResampleToMPP', target_mpp=0.5),
    dict(type='LoadInstanceAnnotations'),
    dict(type='InstanceMapToTargets', with_masks=False, keep_instance_map=True),
    dict(type='PackInstanceInputs'),

which packs the ground truth as one id map (``gt_instance_map``) and one label per object, the form
``CellInstanceMetric(gt_source='instance_map')`` reads, rather than an (n, H, W) mask stack (a
1000x1000 CoNSeP tile with 700 nuclei would need 700 MB of masks).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.datasets.transforms import PackDetInputs
from mmdet.registry import TRANSFORMS
from mmdet.structures.bbox import HorizontalBoxes
from mmdet.structures.mask import BitmapMasks
from mmengine.structures import PixelData

from ..instances import (MAX_INSTANCE_ID, InstanceAnnotationError, parse_instance_annotation, read_instance_map)
from uniseg.structures.instances import keep_objects
from uniseg.utils.imageio import read_label

__all__ = ["LoadInstanceAnnotations", "InstanceMapToTargets", "PackInstanceInputs", "instance_boxes"]

CLASS_KEY = "gt_seg_map"
INSTANCE_KEY = "gt_instance_map"


def _renumber_skipping(dense: np.ndarray, pad_id: int) -> np.ndarray:
    """Dense ids ``1..n`` -> uint16 ids that never equal ``pad_id`` (ids >= pad_id move up by one)."""
    out = dense.astype(np.int64)
    if pad_id > 0:
        out[out >= pad_id] += 1
    if out.size and int(out.max()) > MAX_INSTANCE_ID:
        raise ValueError(f"more than {MAX_INSTANCE_ID - 1} objects in one image")
    return out.astype(np.uint16)


def instance_boxes(ids: np.ndarray, n: int) -> np.ndarray:
    """(n, 4) ``x1, y1, x2, y2`` boxes of objects ``1..n`` (exclusive end, mmdet's mask-to-box convention).

    Objects with no pixel get an all-zero box.
    """
    rows, cols = np.nonzero(ids)
    index = ids[rows, cols].astype(np.int64) - 1
    low = np.full((n, 2), np.iinfo(np.int64).max, np.int64)
    high = np.full((n, 2), -1, np.int64)
    np.minimum.at(low, index, np.stack([cols, rows], axis=1))
    np.maximum.at(high, index, np.stack([cols, rows], axis=1))
    boxes = np.concatenate([low, high + 1], axis=1).astype(np.float32)
    boxes[high[:, 0] < 0] = 0
    return boxes


@TRANSFORMS.register_module()
class LoadInstanceAnnotations(BaseTransform):
    """Load ``masks/<stem>.png`` and ``instances/<stem>.png``, check them, add them as seg fields.

    Required keys: ``seg_map_path``, ``inst_map_path``, ``thing_labels`` (class index -> detector
    label; set by :class:`~uniseg.datasets.HistologyInstanceDataset`). Added keys: ``gt_seg_map``
    (uint8 classes), ``gt_instance_map`` (uint16, objects ``1..n`` renumbered to skip ``pad_id``),
    ``instance_pad_id``, ``ignore_index``, ``instance_load_img_shape`` (the image's size when the maps
    were loaded, for :class:`InstanceMapToTargets`' size check); both maps are appended to ``seg_fields``.

    Args:
        pad_id: Id never given to an object, so that label-map padding (255 in uniseg's and mmseg's
            transforms) reads as "no object".
        ignore_index: Class-mask value of unknown pixels (overridden by the sample's ``ignore_index``).
    """

    def __init__(self, pad_id: int = 255, ignore_index: int = 255) -> None:
        if not 0 < int(pad_id) <= MAX_INSTANCE_ID:
            raise ValueError(f"LoadInstanceAnnotations: pad_id must be in 1..{MAX_INSTANCE_ID}, got {pad_id}")
        self.pad_id = int(pad_id)
        self.ignore_index = int(ignore_index)

    def transform(self, results: Dict[str, Any]) -> Dict[str, Any]:
        for key in ("seg_map_path", "inst_map_path", "thing_labels"):
            if key not in results:
                raise KeyError(f"LoadInstanceAnnotations: sample {results.get('img_path', '?')} has no {key!r}; "
                               f"use HistologyInstanceDataset")
        ignore_index = int(results.get("ignore_index", self.ignore_index))
        semantic = read_label(results["seg_map_path"])
        ann = parse_instance_annotation(read_instance_map(results["inst_map_path"]), semantic,
                                        results["thing_labels"], ignore_index, where=str(results["inst_map_path"]))
        ori_shape = results.get("ori_shape")  # the image as read, before any resampling
        if ori_shape is not None and tuple(ori_shape[:2]) != semantic.shape:
            raise InstanceAnnotationError(f"{results['seg_map_path']}: annotation is {semantic.shape[1]}x"
                                          f"{semantic.shape[0]} px but the image {results.get('img_path')} is "
                                          f"{ori_shape[1]}x{ori_shape[0]} px")
        results[CLASS_KEY] = semantic.astype(np.uint8, copy=False)
        results[INSTANCE_KEY] = _renumber_skipping(ann.instances.ids, self.pad_id)
        results["instance_pad_id"] = self.pad_id
        results["ignore_index"] = ignore_index
        if results.get("img") is not None:
            results["instance_load_img_shape"] = tuple(results["img"].shape[:2])
        fields = results.setdefault("seg_fields", [])
        for key in (CLASS_KEY, INSTANCE_KEY):
            if key not in fields:
                fields.append(key)
        return results

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(pad_id={self.pad_id}, ignore_index={self.ignore_index})"


@TRANSFORMS.register_module()
class InstanceMapToTargets(BaseTransform):
    """Turn the (augmented) instance map into mmdet ground truth, one entry per visible object.

    Objects that transforms removed (cropped away) are absent from the map and so from the targets;
    objects cut by a crop keep their visible part. The maps are checked again (each object on one
    thing class, every thing pixel in an object), which catches a transform that moved the two maps
    differently.

    Required keys: ``gt_seg_map``, ``gt_instance_map``, ``thing_labels``. Added keys: ``gt_bboxes``
    (:class:`HorizontalBoxes`), ``gt_bboxes_labels`` (int64), ``gt_ignore_flags`` (bool: objects whose
    pixels all lie under the ignore index; their label is -1), ``gt_masks`` (:class:`BitmapMasks`,
    unless ``with_masks=False``). With ``keep_instance_map=True`` also ``gt_instance_ids`` (int32,
    ``k`` = the ``k``-th non-ignored object, in the order of ``gt_bboxes_labels[~gt_ignore_flags]``)
    and ``gt_ignore_mask`` (bool: ignore-index pixels and ignored objects), which
    :class:`PackInstanceInputs` packs for the evaluator. Removed keys: the two maps (so that mmdet's
    ``PackDetInputs`` does not pack uniseg's class mask as a semantic target).

    Args:
        with_masks: Build the (n, H, W) bitmaps (needed for training; test pipelines skip them, since
            a 1000x1000 tile with 700 nuclei would need 700 MB).
        keep_instance_map: Also output ``gt_instance_ids`` and ``gt_ignore_mask``.
        min_area: Objects with fewer visible pixels are dropped (1: only those cropped away entirely).
    """

    def __init__(self, with_masks: bool = True, keep_instance_map: bool = False, min_area: int = 1) -> None:
        if int(min_area) < 1:
            raise ValueError(f"InstanceMapToTargets: min_area must be at least 1, got {min_area}")
        self.with_masks = bool(with_masks)
        self.keep_instance_map = bool(keep_instance_map)
        self.min_area = int(min_area)

    def transform(self, results: Dict[str, Any]) -> Dict[str, Any]:
        where = str(results.get("inst_map_path", results.get("img_path", "<sample>")))
        for key in (CLASS_KEY, INSTANCE_KEY, "thing_labels"):
            if key not in results:
                raise KeyError(f"InstanceMapToTargets: {where}: no {key!r}; run LoadInstanceAnnotations first")
        ids = np.asarray(results[INSTANCE_KEY]).astype(np.int64)
        pad_id = results.get("instance_pad_id")
        if pad_id is not None:
            ids[ids == int(pad_id)] = 0
        semantic = np.asarray(results[CLASS_KEY])
        ignore_index = int(results.get("ignore_index", 255))
        self._check_sizes(results, semantic.shape[:2], ids.shape[:2], where)
        ann = parse_instance_annotation(ids, semantic, results["thing_labels"], ignore_index,
                                        where=f"{where} (after augmentation)")
        dense, labels, ignored = ann.instances.ids, ann.instances.labels, ann.ignored
        n = len(labels)
        areas = np.bincount(dense.ravel(), minlength=n + 1)[1:]
        keep = areas >= self.min_area
        if not keep.all():  # renumber the kept objects 1..m, dropped ones become 0
            dense = keep_objects(dense, keep)
            labels, ignored = labels[keep], ignored[keep]
            n = len(labels)
        height, width = dense.shape
        results["gt_bboxes"] = HorizontalBoxes(instance_boxes(dense, n))
        results["gt_bboxes_labels"] = labels.astype(np.int64)
        results["gt_ignore_flags"] = ignored.astype(bool)
        if self.with_masks:
            masks = (dense[None] == np.arange(1, n + 1, dtype=np.int32)[:, None, None]).astype(np.uint8)
            results["gt_masks"] = BitmapMasks(masks, height, width)
        if self.keep_instance_map:
            valid_id = np.zeros(n + 1, np.int32)
            valid_id[1:][~ignored] = np.arange(1, int((~ignored).sum()) + 1, dtype=np.int32)
            ignored_pixel = np.concatenate([[False], ignored])[dense]
            results["gt_instance_ids"] = valid_id[dense]
            results["gt_ignore_mask"] = (semantic == ignore_index) | ignored_pixel
        for key in (CLASS_KEY, INSTANCE_KEY):
            results.pop(key, None)
        results["seg_fields"] = [k for k in results.get("seg_fields", []) if k not in (CLASS_KEY, INSTANCE_KEY)]
        return results

    def _check_sizes(self, results: Dict[str, Any], class_shape, ids_shape, where: str) -> None:
        """The two maps have one size, and it is the image's, unless the image was resized before the
        maps were loaded and not since (a test pipeline: ground truth at the original size)."""
        culprit = ("a transform between LoadInstanceAnnotations and InstanceMapToTargets moved {what} (in an "
                   "mmdet-scoped config the bare Resize, RandomResize, RandomFlip and RandomCrop are mmdet's and "
                   "move gt_seg_map alone: use mmseg.Resize, mmseg.RandomFlip, mmseg.RandomCrop)")
        if tuple(class_shape) != tuple(ids_shape):
            raise InstanceAnnotationError(
                f"InstanceMapToTargets: {where}: the class mask is {class_shape[1]}x{class_shape[0]} px but the "
                f"instance map {ids_shape[1]}x{ids_shape[0]} px: " + culprit.format(what="one map without the other"))
        if results.get("img") is None:
            return
        image = tuple(results["img"].shape[:2])
        if image == tuple(ids_shape):
            return
        if self.with_masks:
            raise InstanceAnnotationError(
                f"InstanceMapToTargets: {where}: the maps are {ids_shape[1]}x{ids_shape[0]} px but the image is "
                f"{image[1]}x{image[0]} px; training targets must lie on the image: load the annotations before "
                f"any resizing (only test pipelines load them afterwards, at the original size, with "
                f"with_masks=False)")
        at_load = results.get("instance_load_img_shape")
        if at_load is None or tuple(at_load) != image:
            raise InstanceAnnotationError(
                f"InstanceMapToTargets: {where}: the maps are {ids_shape[1]}x{ids_shape[0]} px but the image is "
                f"{image[1]}x{image[0]} px: " + culprit.format(what="the image without the maps"))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(with_masks={self.with_masks}, keep_instance_map={self.keep_instance_map}, "
                f"min_area={self.min_area})")


@TRANSFORMS.register_module()
class PackInstanceInputs(PackDetInputs):
    """mmdet's ``PackDetInputs`` plus what an instance evaluator and ``ResampleToMPP`` users need.

    Adds ``data_sample.gt_instance_map``, a :class:`PixelData` with ``ids`` (1, H, W) int32 --
    ``k`` is ``gt_instances[k - 1]`` -- and ``ignore`` (1, H, W) bool, when the sample has
    ``gt_instance_ids`` (``InstanceMapToTargets(keep_instance_map=True)``). Its metainfo keys add
    ``mpp``, ``resample_factor``, ``seg_map_path``, ``inst_map_path`` and ``stem`` to mmdet's, and
    the dataset's per-image attributes (``image_attribute_keys``, e.g. PanNuke's ``tissue``), which
    evaluators group images by.
    """

    def __init__(self, meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                                  'flip_direction', 'mpp', 'resample_factor', 'seg_map_path', 'inst_map_path',
                                  'stem')) -> None:
        super().__init__(meta_keys=meta_keys)

    def transform(self, results: Dict[str, Any]) -> Dict[str, Any]:
        packed = super().transform(results)
        attributes = {key: results[key] for key in results.get("image_attribute_keys", ()) if key in results}
        if attributes:
            packed["data_samples"].set_metainfo(attributes)
        ids: Optional[np.ndarray] = results.get("gt_instance_ids")
        if ids is not None:
            import torch

            ignore = results.get("gt_ignore_mask")
            if ignore is None:
                ignore = np.zeros(ids.shape, bool)
            packed["data_samples"].gt_instance_map = PixelData(
                ids=torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int32))[None],
                ignore=torch.from_numpy(np.ascontiguousarray(ignore, dtype=bool))[None])
        return packed
