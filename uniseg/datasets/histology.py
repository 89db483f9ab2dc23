"""One dataset class for every converted histology dataset.

All uniseg converters (and the shipped demo data) write the same layout::

    <root>/images/<stem>.png              RGB tiles
    <root>/masks/<stem>.png               uint8 labels 0..K-1, 255 = ignore
    <root>/splits/{train,val,test}.txt    one stem per line
    <root>/meta.json                      {"classes": [...], "palette": [...], "mpp": ..., ...}

so a new dataset needs a converter and a config, not a new class. Class names, palette and the
microns-per-pixel of the source come from the config when given there, else from ``meta.json``;
``mpp`` is attached to every sample so a later transform can resample tiles to the encoder's working
resolution (UNI was trained at about 0.5 um/px; feeding it 0.25 um/px tiles halves its field of view).

Problems that would otherwise surface as a cryptic worker crash mid-epoch, or not at all, are reported
naming the file (checks in :mod:`uniseg.datasets.validation`):

- when the dataset is built, from the file headers: a stem whose image or mask is missing, an empty
  split file, an image deeper than 8 bits or in CMYK, a mask that is not a single-channel index image,
  an image and mask of different sizes;
- on the first read of each sample in each process (so DataLoader workers check the samples they
  load, once): label values that are neither a class nor ``ignore_index`` after mmseg's
  ``reduce_zero_label``/``label_map``, transparent pixels in an image.
"""
from __future__ import annotations

import json
import os.path as osp
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import mmengine
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from uniseg.utils.palette import resolve_palette

from .validation import LabelRule, check_sample_headers, check_sample_pixels

__all__ = ["HistologySegDataset", "read_meta_json"]

META_FILE = "meta.json"
_LISTED_ERRORS = 10  # unusable samples named in one load-time error


def read_meta_json(root: Optional[str]) -> Optional[Dict[str, Any]]:
    """Return the parsed ``<root>/meta.json`` or None when there is none; malformed files are an error."""
    if not root:
        return None
    path = Path(root) / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def _dataset_root(data_root: Optional[str], ann_file: str) -> Optional[str]:
    """The folder holding meta.json: ``data_root``, else the grandparent of an absolute split file."""
    if data_root:
        return str(data_root)
    if ann_file and osp.isabs(ann_file):
        return str(Path(ann_file).parent.parent)
    return None


def _resolve_metainfo(metainfo: Optional[dict], meta: Optional[Dict[str, Any]], root: Optional[str]) -> dict:
    """Merge class names/palette from the config (wins) and meta.json; validate the palette."""
    merged = dict(metainfo or {})
    meta = meta or {}
    classes = merged.get("classes")
    if classes is None:
        classes = meta.get("classes")
        if classes is None:
            where = f"{Path(root) / META_FILE}" if root else "the dataset (no data_root given)"
            raise ValueError(f"HistologySegDataset: no class names: give metainfo=dict(classes=...) in the config "
                             f"or provide {where}")
        palette = merged.get("palette", meta.get("palette"))
    else:
        meta_classes = meta.get("classes")
        if meta_classes is not None and len(meta_classes) != len(classes):
            raise ValueError(f"HistologySegDataset: config lists {len(classes)} classes {list(classes)} but "
                             f"{Path(root or '.') / META_FILE} lists {len(meta_classes)} {list(meta_classes)}")
        palette = merged.get("palette")
        if palette is None and meta_classes is not None and list(meta_classes) == list(classes):
            palette = meta.get("palette")
    merged["classes"] = tuple(classes)
    merged["palette"] = [list(c) for c in resolve_palette(merged["classes"], palette)]
    return merged


@DATASETS.register_module()
class HistologySegDataset(BaseSegDataset):
    """Semantic segmentation dataset in the uniseg histology layout.

    Args:
        data_root: Dataset folder (the one holding ``images/``, ``masks/``, ``splits/``, ``meta.json``).
        ann_file: Split file relative to ``data_root``; one stem per line.
        data_prefix: Image and mask folders relative to ``data_root``.
        img_suffix: Image file suffix (``.png``; ``.tif`` also works).
        seg_map_suffix: Mask file suffix.
        mpp: Microns per pixel of the source images; None reads it from meta.json (may stay None).
        metainfo: ``dict(classes=..., palette=...)``; missing entries are read from meta.json.
        **kwargs: Any other :class:`mmseg.datasets.BaseSegDataset` argument (pipeline, test_mode, ...).
    """

    METAINFO: dict = dict()

    def __init__(self,
                 data_root: Optional[str] = None,
                 ann_file: str = "splits/train.txt",
                 data_prefix: dict = dict(img_path="images", seg_map_path="masks"),
                 img_suffix: str = ".png",
                 seg_map_suffix: str = ".png",
                 mpp: Optional[float] = None,
                 metainfo: Optional[dict] = None,
                 reduce_zero_label: bool = False,
                 ignore_index: int = 255,
                 **kwargs: Any) -> None:
        root = _dataset_root(data_root, ann_file)
        meta = read_meta_json(root)
        if mpp is None and meta is not None:
            mpp = meta.get("mpp")
        if mpp is not None and (not isinstance(mpp, (int, float)) or isinstance(mpp, bool) or mpp <= 0):
            raise ValueError(f"HistologySegDataset ({root}): mpp must be a positive number or None, got {mpp!r}")
        self.mpp: Optional[float] = None if mpp is None else float(mpp)
        self._pixels_checked: Set[int] = set()  # indices whose labels this process has checked
        super().__init__(
            ann_file=ann_file,
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            metainfo=_resolve_metainfo(metainfo, meta, root),
            data_root=data_root,
            data_prefix=data_prefix,
            reduce_zero_label=reduce_zero_label,
            ignore_index=ignore_index,
            **kwargs,
        )
        self.label_rule = LabelRule(classes=tuple(self.metainfo["classes"]), ignore_index=self.ignore_index,
                                    reduce_zero_label=self.reduce_zero_label, label_map=self.label_map)

    def prepare_data(self, idx: int) -> Any:
        """Check the sample's label values (and opacity) on its first read in this process, then load it."""
        if idx not in self._pixels_checked:
            info = self.get_data_info(idx)
            check_sample_pixels(info["img_path"], info.get("seg_map_path"), self.label_rule)
            self._pixels_checked.add(idx)
        return super().prepare_data(idx)

    def load_data_list(self) -> List[dict]:
        """Read the split file; check that every listed image and mask exists and that their headers fit."""
        if not self.ann_file:  # no split file: every image in the folder (mmseg's behaviour)
            data_list = super().load_data_list()
            if not data_list:
                raise ValueError(f"{self.data_prefix.get('img_path')}: no images with suffix {self.img_suffix!r}")
        else:
            if not osp.isfile(self.ann_file):
                raise FileNotFoundError(f"{self.ann_file}: split file not found")
            lines = mmengine.list_from_file(self.ann_file, backend_args=self.backend_args)
            stems = [line.strip() for line in lines if line.strip()]
            if not stems:
                raise ValueError(f"{self.ann_file}: split file lists no images")
            img_dir, ann_dir = self.data_prefix.get("img_path", ""), self.data_prefix.get("seg_map_path")
            data_list = []
            for stem in stems:
                info = dict(img_path=osp.join(img_dir, stem + self.img_suffix), label_map=self.label_map,
                            reduce_zero_label=self.reduce_zero_label, seg_fields=[])
                if ann_dir is not None:
                    info["seg_map_path"] = osp.join(ann_dir, stem + self.seg_map_suffix)
                data_list.append(info)
        for info in data_list:
            for key in ("img_path", "seg_map_path"):
                if key in info and not osp.isfile(info[key]):
                    listed = f" (listed in {self.ann_file})" if self.ann_file else ""
                    raise FileNotFoundError(f"{info[key]}: file not found{listed}")
            info["mpp"] = self.mpp
        self._check_headers(data_list)
        return data_list

    def _check_headers(self, data_list: List[dict]) -> None:
        """Refuse the dataset if any sample's headers are unusable, naming every such file (up to a few)."""
        problems = []
        for info in data_list:
            try:
                check_sample_headers(info["img_path"], info.get("seg_map_path"))
            except (OSError, ValueError) as exc:
                problems.append(exc)
        if len(problems) == 1:
            raise problems[0]
        if not problems:
            return
        listed = "\n  ".join(str(exc) for exc in problems[:_LISTED_ERRORS])
        more = f"\n  ... and {len(problems) - _LISTED_ERRORS} more" if len(problems) > _LISTED_ERRORS else ""
        source = f" listed in {self.ann_file}" if self.ann_file else ""
        raise ValueError(f"{len(problems)} of {len(data_list)} samples{source} cannot be used:\n  {listed}{more}")
