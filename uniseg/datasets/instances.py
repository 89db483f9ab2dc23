"""Cells as objects: the instance layout of a histology dataset and the dataset that reads it.

The instance layout is the semantic layout (:mod:`uniseg.datasets.histology`) plus one folder::

    <root>/images/<stem>.png              RGB tiles
    <root>/masks/<stem>.png               uint8 class per pixel: 0..K-1, 255 = ignore
    <root>/instances/<stem>.png           16-bit instance ids: 0 = no object, 1..65535 = one object each
    <root>/splits/{train,val,test}.txt    one stem per line
    <root>/meta.json                      {"classes": [...], "thing_classes": [...], "palette", "mpp", ...}

so one converted dataset trains both a semantic model (:class:`HistologySegDataset` never looks at
``instances/``) and an instance model (:class:`HistologyInstanceDataset`). Ids need not be dense or
ordered; an object may consist of several pieces (a nucleus cut by a tile border twice).

What ties the two maps together -- and is checked, because a detector trained on inconsistent maps
learns the inconsistency silently:

- image, class mask and instance map have the same size;
- every object lies on one *thing* class: the classes under its non-ignored pixels are all the same
  (purity 1.0), and that class is a thing class. This class is the object's label;
- every pixel of a thing class belongs to some object (a nucleus painted in ``masks/`` but missing
  from ``instances/`` would otherwise be taught as background);
- an object whose pixels all lie under the ignore index has no known class: it is kept as an
  *ignored* object (mmdet's ``gt_ignore_flags``), neither a positive nor background.

``meta.json["image_attributes"]`` (optional) gives each image named attributes,
``{"tissue": {"<stem>": "Breast", ...}}``: every sample carries them (``results["tissue"]``) and
:class:`~uniseg.datasets.transforms.PackInstanceInputs` packs them into the data sample, where an
evaluator groups images by them (PanNuke's scores are averaged per tissue first). A listed image
without a value is an error naming the stem.

``meta.json["thing_classes"]`` names the classes that come as objects, in the order of the detector's
labels ``0..T-1``; without it every class but the first (``background`` in every uniseg converter)
is a thing class. Non-thing classes other than background (e.g. a tissue region) are allowed; they
simply carry no objects.
"""
from __future__ import annotations

import os.path as osp
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import mmengine
import numpy as np
from mmdet.datasets import BaseDetDataset
from mmdet.registry import DATASETS

from uniseg.structures.instances import InstanceMap, classes_from_semantic, relabel_dense
from uniseg.utils.imageio import read_label
from uniseg.utils.palette import resolve_palette

from .histology import META_FILE, _dataset_root, read_meta_json

__all__ = [
    "HistologyInstanceDataset", "InstanceAnnotation", "InstanceAnnotationError", "INSTANCES_DIR",
    "MAX_INSTANCE_ID", "parse_instance_annotation", "read_instance_annotation", "read_instance_map",
    "resolve_thing_classes", "thing_label_lookup", "read_image_attributes",
]

INSTANCES_DIR = "instances"
#: Largest id a 16-bit instance PNG can hold.
MAX_INSTANCE_ID = 65535


class InstanceAnnotationError(ValueError):
    """An instance map and its class mask disagree; the message names the file and the object id."""


@dataclass
class InstanceAnnotation:
    """One image's objects as read from ``masks/`` + ``instances/``.

    Attributes:
        instances: dense ids ``1..n`` and, per object, its thing label (``-1`` for ignored objects).
        ignored: (n,) bool, True for an object whose pixels all lie under the ignore index.
        source_ids: (n,) the id each object has in the instance file (for error messages and provenance).
    """

    instances: InstanceMap
    ignored: np.ndarray
    source_ids: np.ndarray


def thing_label_lookup(classes: Sequence[str], thing_classes: Sequence[str]) -> np.ndarray:
    """Map each class index of ``masks/`` to its detector label (index in ``thing_classes``) or -1."""
    position = {name: i for i, name in enumerate(thing_classes)}
    return np.asarray([position.get(name, -1) for name in classes], dtype=np.int64)


def _name(class_names: Optional[Sequence[str]], index: int) -> str:
    if class_names is not None and 0 <= index < len(class_names):
        return repr(class_names[index])
    return str(index)


def parse_instance_annotation(ids: np.ndarray, semantic: np.ndarray, thing_labels: Sequence[int],
                              ignore_index: int = 255, class_names: Optional[Sequence[str]] = None,
                              where: str = "<instance map>") -> InstanceAnnotation:
    """Check an instance map against its class mask and return its objects with their labels.

    Args:
        ids: (H, W) non-negative integer instance ids (0 = no object).
        semantic: (H, W) class indices of ``masks/`` (``ignore_index`` = unknown).
        thing_labels: for each class index, its detector label or -1 (see :func:`thing_label_lookup`).
        class_names: names of the class indices, for error messages.
        where: the file (or sample) named in error messages.

    Raises:
        InstanceAnnotationError: for any violation of the rules in the module docstring.
    """
    ids, semantic = np.asarray(ids), np.asarray(semantic)
    if ids.ndim != 2 or semantic.ndim != 2:
        raise InstanceAnnotationError(f"{where}: instance map {ids.shape} and class mask {semantic.shape} must be "
                                      f"single-channel 2-D images")
    if ids.shape != semantic.shape:
        raise InstanceAnnotationError(f"{where}: instance map is {ids.shape[1]}x{ids.shape[0]} px but its class mask "
                                      f"is {semantic.shape[1]}x{semantic.shape[0]} px")
    if ids.dtype.kind not in "ui":
        raise InstanceAnnotationError(f"{where}: instance ids must be integers, got dtype {ids.dtype}")
    if semantic.dtype.kind not in "ui":
        raise InstanceAnnotationError(f"{where}: class mask must hold integers, got dtype {semantic.dtype}")
    if ids.size and int(ids.min()) < 0:
        raise InstanceAnnotationError(f"{where}: instance ids must be non-negative, found {int(ids.min())}")
    lookup = np.asarray(thing_labels, dtype=np.int64)
    num_classes = len(lookup)
    values = np.unique(semantic)
    bad = [int(v) for v in values if not (0 <= int(v) < num_classes or int(v) == ignore_index)]
    if bad:
        raise InstanceAnnotationError(f"{where}: class mask holds values {bad[:10]} outside the {num_classes} classes "
                                      f"(and the ignore index {ignore_index})")

    dense, source_ids = relabel_dense(ids)
    n = len(source_ids)
    classes, purity = classes_from_semantic(dense, semantic, n, ignore_index)
    impure = np.flatnonzero((classes >= 0) & (purity < 1.0))
    if impure.size:
        k = int(impure[0])
        under = semantic[(dense == k + 1) & (semantic != ignore_index)]
        found, counts = np.unique(under, return_counts=True)
        spans = ", ".join(f"{_name(class_names, int(c))} ({int(m)} px)" for c, m in zip(found, counts))
        raise InstanceAnnotationError(f"{where}: object id {int(source_ids[k])} spans several classes in the class "
                                      f"mask: {spans}; each object must lie on one class ({impure.size} object(s) "
                                      f"affected)")
    labels = np.where(classes >= 0, lookup[np.clip(classes, 0, None)], -1)
    off_thing = np.flatnonzero((classes >= 0) & (labels < 0))
    if off_thing.size:
        k = int(off_thing[0])
        raise InstanceAnnotationError(f"{where}: object id {int(source_ids[k])} lies on class "
                                      f"{_name(class_names, int(classes[k]))}, which is not a thing class "
                                      f"({off_thing.size} object(s) affected)")
    pixel_labels = np.where(semantic == ignore_index, -1, lookup[np.minimum(semantic, num_classes - 1)])
    uncovered = (pixel_labels >= 0) & (dense == 0)
    if uncovered.any():
        row, col = np.argwhere(uncovered)[0]
        cls = int(semantic[row, col])
        raise InstanceAnnotationError(f"{where}: {int(uncovered.sum())} pixel(s) of thing classes belong to no object "
                                      f"in the instance map (first at row {row}, column {col}, class "
                                      f"{_name(class_names, cls)})")
    instances = InstanceMap(dense, labels, np.ones(n, np.float32))
    return InstanceAnnotation(instances, classes < 0, source_ids)


def read_instance_map(path: str) -> np.ndarray:
    """Read an instance-id PNG (16-bit, or 8-bit for few objects) as an integer array; names the file on error."""
    ids = read_label(path)
    if ids.dtype.kind not in "ui":
        raise InstanceAnnotationError(f"{path}: instance map must hold integer ids (a 16-bit grey PNG), got dtype "
                                      f"{ids.dtype}")
    return ids


def read_instance_annotation(mask_path: str, inst_map_path: str, thing_labels: Sequence[int],
                             ignore_index: int = 255,
                             class_names: Optional[Sequence[str]] = None) -> InstanceAnnotation:
    """Read ``masks/<stem>.png`` and ``instances/<stem>.png`` and check them against each other.

    This is also how an evaluator obtains the ground truth at the original resolution.
    """
    return parse_instance_annotation(read_instance_map(inst_map_path), read_label(mask_path), thing_labels,
                                     ignore_index, class_names, where=str(inst_map_path))


def resolve_thing_classes(metainfo: Optional[dict], meta: Optional[Dict[str, Any]], root: Optional[str]) -> dict:
    """Class names of ``masks/``, the thing classes (config wins over meta.json) and their palette."""
    cfg = dict(metainfo or {})
    meta = meta or {}
    where = str(Path(root) / META_FILE) if root else "meta.json (no data_root given)"
    classes = cfg.pop("semantic_classes", None) or meta.get("classes")
    if not classes:
        raise ValueError(f"HistologyInstanceDataset: the class names of masks/ are unknown: provide {where} with "
                         f"'classes' or give metainfo=dict(semantic_classes=...)")
    classes = tuple(classes)
    things = cfg.get("classes") or meta.get("thing_classes") or classes[1:]
    things = tuple(things)
    unknown = [t for t in things if t not in classes]
    if unknown:
        raise ValueError(f"HistologyInstanceDataset: thing classes {unknown} are not among the classes of masks/ "
                         f"{list(classes)} ({where})")
    if len(set(things)) != len(things) or not things:
        raise ValueError(f"HistologyInstanceDataset: thing classes must be distinct and not empty, got {list(things)}")
    palette = cfg.get("palette")
    if palette is None:
        full = resolve_palette(classes, meta.get("palette") if list(meta.get("classes") or []) == list(classes)
                               else None)
        palette = [full[classes.index(t)] for t in things]
    cfg.update(classes=things, palette=[tuple(c) for c in resolve_palette(things, palette)],
               semantic_classes=classes)
    return cfg


def _check_mpp(mpp: Any, root: Optional[str]) -> Optional[float]:
    if mpp is None:
        return None
    if not isinstance(mpp, (int, float)) or isinstance(mpp, bool) or mpp <= 0:
        raise ValueError(f"HistologyInstanceDataset ({root}): mpp must be a positive number or None, got {mpp!r}")
    return float(mpp)


def _image_size(path: str) -> tuple:
    """(height, width) from the file header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise FileNotFoundError(f"{path}: cannot be read as an image ({exc})") from exc
    return height, width


IMAGE_ATTRIBUTES_KEY = "image_attributes"


def read_image_attributes(meta: Optional[Dict[str, Any]], root: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """``meta.json["image_attributes"]``: attribute name -> {stem: value}, checked for shape."""
    attributes = (meta or {}).get(IMAGE_ATTRIBUTES_KEY) or {}
    where = osp.join(root, META_FILE) if root else META_FILE
    if not isinstance(attributes, dict) or not all(isinstance(v, dict) for v in attributes.values()):
        raise ValueError(f"{where}: '{IMAGE_ATTRIBUTES_KEY}' must map attribute names to {{stem: value}} objects, "
                         f"e.g. {{\"tissue\": {{\"fold1_00000_Breast\": \"Breast\"}}}}")
    return attributes


@DATASETS.register_module()
class HistologyInstanceDataset(BaseDetDataset):
    """Instance segmentation dataset in the uniseg histology instance layout (see the module docstring).

    Registered in mmdet's ``DATASETS``: an mmdet-scoped config names it ``'HistologyInstanceDataset'``,
    an mmseg-scoped one ``'mmdet.HistologyInstanceDataset'``. ``metainfo['classes']`` are the thing
    classes (mmdet labels ``0..T-1``); ``metainfo['semantic_classes']`` the classes of ``masks/``;
    ``metainfo['mpp']`` and every sample's ``mpp`` the source resolution, for ``ResampleToMPP``.

    Every sample carries ``img_path``, ``seg_map_path``, ``inst_map_path``, ``thing_labels`` (class
    index -> detector label, for ``LoadInstanceAnnotations``), ``ignore_index``, ``mpp``, ``stem``,
    ``height`` and ``width``, and each of meta.json's ``image_attributes`` (named in
    ``image_attribute_keys``).

    Args:
        data_root: Dataset folder holding ``images/``, ``masks/``, ``instances/``, ``splits/``, ``meta.json``.
        ann_file: Split file relative to ``data_root``; one stem per line.
        data_prefix: Folders of images, class masks and instance maps relative to ``data_root``.
        mpp: Microns per pixel of the source; None reads it from meta.json (may stay None).
        metainfo: ``dict(classes=<thing classes>, palette=...)`` and optionally ``semantic_classes``;
            missing entries come from meta.json.
        check_annotations: Read and check every class mask and instance map when the dataset is built,
            so an inconsistent file stops the run before training rather than in a worker mid-epoch
            (7 ms per 256x256 tile measured on a 2-core machine: about 20 s for a PanNuke fold). The
            loading transform checks each sample again when read.
            With it, samples also carry ``num_instances`` and ``instance_labels`` (used by
            ``filter_cfg=dict(filter_empty_gt=True)`` and :meth:`get_cat_ids`).
        **kwargs: Any other :class:`mmdet.datasets.BaseDetDataset` argument (pipeline, test_mode, filter_cfg, ...).
    """

    METAINFO: dict = dict()

    def __init__(self,
                 data_root: Optional[str] = None,
                 ann_file: str = "splits/train.txt",
                 data_prefix: dict = dict(img_path="images", seg_map_path="masks", inst_map_path=INSTANCES_DIR),
                 img_suffix: str = ".png",
                 seg_map_suffix: str = ".png",
                 inst_map_suffix: str = ".png",
                 mpp: Optional[float] = None,
                 metainfo: Optional[dict] = None,
                 ignore_index: int = 255,
                 check_annotations: bool = True,
                 **kwargs: Any) -> None:
        root = _dataset_root(data_root, ann_file)
        meta = read_meta_json(root)
        if mpp is None and meta is not None:
            mpp = meta.get("mpp")
        self.mpp = _check_mpp(mpp, root)
        self.img_suffix = img_suffix
        self.inst_map_suffix = inst_map_suffix
        self.ignore_index = int(ignore_index)
        self.check_annotations = bool(check_annotations)
        resolved = resolve_thing_classes(metainfo, meta, root)
        resolved["mpp"] = self.mpp
        self.image_attributes = read_image_attributes(meta, root)
        self._meta_path = osp.join(root, META_FILE) if root else META_FILE
        missing = [k for k in ("img_path", "seg_map_path", "inst_map_path") if k not in data_prefix]
        if missing:
            raise ValueError(f"HistologyInstanceDataset: data_prefix needs {missing} (got {data_prefix})")
        super().__init__(data_root=data_root, ann_file=ann_file, data_prefix=data_prefix, metainfo=resolved,
                         seg_map_suffix=seg_map_suffix, **kwargs)

    def load_data_list(self) -> List[dict]:
        """Read the split file, check every listed file exists and agrees in size (and content, if asked)."""
        if not self.ann_file or not osp.isfile(self.ann_file):
            raise FileNotFoundError(f"{self.ann_file or '<no ann_file>'}: split file not found")
        lines = mmengine.list_from_file(self.ann_file, backend_args=self.backend_args)
        stems = [line.strip() for line in lines if line.strip()]
        if not stems:
            raise ValueError(f"{self.ann_file}: split file lists no images")
        classes = self.metainfo["semantic_classes"]
        thing_labels = thing_label_lookup(classes, self.metainfo["classes"])
        suffixes = dict(img_path=self.img_suffix, seg_map_path=self.seg_map_suffix,
                        inst_map_path=self.inst_map_suffix)
        data_list = []
        for img_id, stem in enumerate(stems):
            info: Dict[str, Any] = dict(img_id=img_id, stem=stem, mpp=self.mpp, ignore_index=self.ignore_index,
                                        thing_labels=thing_labels.tolist())
            for name, values in self.image_attributes.items():
                if stem not in values:
                    raise ValueError(f"{self._meta_path}: image_attributes[{name!r}] has no value for {stem!r} "
                                     f"(listed in {self.ann_file})")
                info[name] = values[stem]
            info["image_attribute_keys"] = tuple(self.image_attributes)
            for key, suffix in suffixes.items():
                info[key] = osp.join(self.data_prefix[key], stem + suffix)
                if not osp.isfile(info[key]):
                    raise FileNotFoundError(f"{info[key]}: file not found (listed in {self.ann_file})")
            info["height"], info["width"] = _image_size(info["img_path"])
            if self.check_annotations:
                ann = read_instance_annotation(info["seg_map_path"], info["inst_map_path"], thing_labels,
                                               self.ignore_index, classes)
                size = ann.instances.ids.shape
                labels = ann.instances.labels[~ann.ignored]
                info["num_instances"] = int(len(labels))
                info["instance_labels"] = sorted(set(labels.tolist()))
            else:
                size = _image_size(info["seg_map_path"])
                if _image_size(info["inst_map_path"]) != size:
                    raise InstanceAnnotationError(f"{info['inst_map_path']}: size differs from {info['seg_map_path']}")
            if tuple(size) != (info["height"], info["width"]):
                raise InstanceAnnotationError(f"{info['seg_map_path']}: annotation is {size[1]}x{size[0]} px but the "
                                              f"image {info['img_path']} is {info['width']}x{info['height']} px")
            data_list.append(info)
        return data_list

    def filter_data(self) -> List[dict]:
        """``filter_cfg=dict(filter_empty_gt=True)`` drops training images without objects."""
        if self.test_mode or not self.filter_cfg or not self.filter_cfg.get("filter_empty_gt", False):
            return self.data_list
        if not self.check_annotations:
            raise ValueError("HistologyInstanceDataset: filter_empty_gt needs check_annotations=True (object counts "
                             "are taken while checking)")
        return [info for info in self.data_list if info["num_instances"] > 0]

    def get_cat_ids(self, idx: int) -> List[int]:
        """Thing labels present in image ``idx`` (used by mmdet's ``ClassBalancedDataset``)."""
        info = self.get_data_info(idx)
        if "instance_labels" not in info:
            raise ValueError("HistologyInstanceDataset.get_cat_ids needs check_annotations=True")
        return list(info["instance_labels"])
