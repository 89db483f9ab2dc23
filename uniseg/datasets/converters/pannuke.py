"""PanNuke (nucleus types, three folds of 256x256 patches) to the uniseg layout.

Source format (Gamper et al., "PanNuke: an open pan-cancer histology dataset for nuclei instance
segmentation and classification", ECDP 2019, and "PanNuke dataset extension, insights and
baselines", arXiv:2003.10778, 2020; TIA Centre, Warwick), one archive per fold, extracted as::

    Fold 1/images/fold1/images.npy   (N, 256, 256, 3) float64 (0..255) or uint8 H&E patches
    Fold 1/images/fold1/types.npy    (N,) tissue name of each patch (e.g. "Breast", "Colon")
    Fold 1/masks/fold1/masks.npy     (N, 256, 256, 6): channels 0..4 are instance maps (0 = none,
                                     k > 0 = nucleus k) for neoplastic, inflammatory, connective/soft
                                     tissue, dead and epithelial nuclei; channel 5 is background
    Fold 2/..., Fold 3/...           same layout

Fold folders may also be named ``fold1`` / ``Fold1``; the three ``.npy`` files are found anywhere under
each fold folder. Arrays are memory-mapped, so a 4 GB float64 fold is never loaded at once.

Output: semantic nucleus-type masks -- background (0), neoplastic (1), inflammatory (2),
connective (3), dead (4), epithelial (5) -- built from channels 0..4 (a pixel claimed by two channels,
which happens rarely at instance borders, takes the later channel, the convention of the HoVer-Net
PanNuke loader). Stems are ``fold<k>_<index>_<tissue>``; meta.json counts patches per tissue and
records each patch's tissue (``image_attributes['tissue']``), which the instance dataset attaches to its
samples so PanNuke's bPQ/mPQ can be averaged per tissue first, as its authors report them.

With ``instances=True`` (the default) every nucleus also becomes an object in ``instances/<stem>.png``
(the instance layout of :mod:`uniseg.datasets.instances`; thing classes: the five nucleus types).
Each (channel, id) pair is one object -- ids are per channel in the source, so equal ids in two
channels are two nuclei -- numbered 1..n in channel order, and the same later-channel-wins rule
decides contested pixels, so every object lies on exactly its own type in ``masks/``. An object that
loses all its pixels to a later channel disappears from both.

Splits: PanNuke is published as three folds for 3-fold cross-validation; the default is the paper's
first configuration (train fold 1, val fold 2, test fold 3). Any assignment of folds to splits can be
chosen, and a fold may appear in only one split. Resolution: 40x, 0.25 um/px (``PANNUKE_MPP``).
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from uniseg.structures.instances import relabel_dense

from .common import ConversionError, LayoutWriter, PathLike

__all__ = ["PANNUKE_CLASSES", "PANNUKE_MPP", "find_fold_files", "instances_to_semantic", "instances_to_objects",
           "convert_pannuke"]

PANNUKE_CLASSES = ("background", "neoplastic", "inflammatory", "connective", "dead", "epithelial")
PANNUKE_PALETTE = ((0, 0, 0), (213, 94, 0), (0, 114, 178), (0, 158, 115), (128, 128, 128), (240, 228, 66))
PANNUKE_MPP = 0.25
_NUM_TYPES = 5


def find_fold_files(src: PathLike, fold: int) -> Tuple[Path, Path, Optional[Path]]:
    """Return (images.npy, masks.npy, types.npy or None) for fold ``fold`` under ``src``."""
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"{src}: PanNuke source folder does not exist")
    names = (f"Fold {fold}", f"fold{fold}", f"Fold{fold}", f"fold {fold}", f"fold_{fold}")
    fold_dir = next((src / n for n in names if (src / n).is_dir()), None)
    if fold_dir is None:
        raise ConversionError(f"{src / names[0]}: PanNuke fold {fold} folder is missing")

    def find(name: str, subdir: str, required: bool) -> Optional[Path]:
        hits = sorted(fold_dir.rglob(name))
        if len(hits) > 1:
            raise ConversionError(f"{fold_dir}: several {name} files: {[str(h) for h in hits]}")
        if not hits and required:
            raise ConversionError(f"{fold_dir / subdir / f'fold{fold}' / name}: missing (no {name} anywhere under "
                                  f"{fold_dir})")
        return hits[0] if hits else None

    return (find("images.npy", "images", True), find("masks.npy", "masks", True),  # type: ignore[return-value]
            find("types.npy", "images", False))


def _load_npy(path: Path) -> np.ndarray:
    """Memory-map a .npy file; never unpickles (a downloaded file must not be able to run code)."""
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        raise ConversionError(f"{path}: not a .npy file (bad header)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Python objects" in str(exc):
            raise ConversionError(f"{path}: holds Python objects; PanNuke arrays are plain numeric or string "
                                  f"arrays and uniseg refuses to unpickle downloaded files") from exc
        raise ConversionError(f"{path}: corrupt .npy file ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise ConversionError(f"{path}: corrupt .npy file ({exc})") from exc


def instances_to_semantic(masks: np.ndarray) -> np.ndarray:
    """(H, W, 6) PanNuke instance channels -> (H, W) uint8 labels 0..5 (later channels win overlaps)."""
    labels = np.zeros(masks.shape[:2], dtype=np.uint8)
    for channel in range(_NUM_TYPES):
        labels[masks[..., channel] > 0] = channel + 1
    return labels


def instances_to_objects(masks: np.ndarray) -> np.ndarray:
    """(H, W, 6) PanNuke instance channels -> (H, W) int32 object ids 1..n (later channels win overlaps).

    Consistent with :func:`instances_to_semantic`: each pixel's object comes from the channel that
    gives the pixel its class. Ids must be whole numbers (the arrays are often stored as float64).
    """
    objects = np.zeros(masks.shape[:2], dtype=np.int64)
    offset = 0
    for channel in range(_NUM_TYPES):
        ids = np.asarray(masks[..., channel])
        if not np.array_equal(ids, np.floor(ids)):
            raise ValueError(f"channel {channel} holds non-integer instance ids")
        ids = ids.astype(np.int64)
        dense, source = relabel_dense(ids)
        objects[dense > 0] = dense[dense > 0] + offset
        offset += len(source)
    return relabel_dense(objects)[0]


def _to_uint8_image(patch: np.ndarray, path: Path, index: int) -> np.ndarray:
    if patch.dtype == np.uint8:
        return np.ascontiguousarray(patch)
    patch = np.asarray(patch, dtype=np.float64)
    if not np.all(np.isfinite(patch)) or patch.min() < 0 or patch.max() > 255:
        raise ConversionError(f"{path}[{index}]: pixel values must be finite and within 0..255")
    return np.rint(patch).astype(np.uint8)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "unknown"


def _check_fold(images: np.ndarray, masks: np.ndarray, types: Optional[np.ndarray],
                paths: Tuple[Path, Path, Optional[Path]]) -> None:
    image_path, mask_path, types_path = paths
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ConversionError(f"{image_path}: expected (N, H, W, 3) patches, got shape {images.shape}")
    if masks.ndim != 4 or masks.shape[-1] != _NUM_TYPES + 1:
        raise ConversionError(f"{mask_path}: expected (N, H, W, 6) instance channels, got shape {masks.shape}")
    if masks.shape[:3] != images.shape[:3]:
        raise ConversionError(f"{mask_path}: shape {masks.shape[:3]} does not match {image_path} {images.shape[:3]}")
    if not (np.issubdtype(masks.dtype, np.integer) or np.issubdtype(masks.dtype, np.floating)):
        raise ConversionError(f"{mask_path}: expected numeric instance ids, got dtype {masks.dtype}")
    if types is not None:
        if types.ndim != 1 or len(types) != len(images):
            raise ConversionError(f"{types_path}: expected {len(images)} tissue names, got shape {types.shape}")
        if types.dtype.kind not in "US":
            raise ConversionError(f"{types_path}: expected tissue names (strings), got dtype {types.dtype}")


def convert_pannuke(src: PathLike, out: PathLike, train_folds: Sequence[int] = (1,), val_folds: Sequence[int] = (2,),
                    test_folds: Sequence[int] = (3,), overwrite: bool = False, progress: bool = False,
                    instances: bool = True) -> Dict[str, Any]:
    """Convert PanNuke folds at ``src`` into the uniseg layout at ``out``; returns meta.json's content.

    ``instances=True`` also writes ``instances/`` (one object per nucleus, see the module docstring).
    """
    assignment: Dict[int, str] = {}
    for split, folds in (("train", train_folds), ("val", val_folds), ("test", test_folds)):
        for fold in folds:
            if fold in assignment:
                raise ValueError(f"fold {fold} is assigned to both {assignment[fold]!r} and {split!r}")
            assignment[int(fold)] = split
    if not train_folds:
        raise ValueError("at least one training fold is required")

    from tqdm import tqdm

    splits: Dict[str, List[str]] = {"train": [], "val": [], "test": []}
    tissues: Counter = Counter()
    tissue_of: Dict[str, str] = {}  # stem -> tissue, for evaluations averaged per tissue (PanNuke's protocol)
    loaded = {}
    for fold in sorted(assignment):  # check every fold's files and shapes before writing anything
        paths = find_fold_files(src, fold)
        images, masks = _load_npy(paths[0]), _load_npy(paths[1])
        types = _load_npy(paths[2]) if paths[2] is not None else None
        _check_fold(images, masks, types, paths)
        loaded[fold] = (paths, images, masks, types)
    with LayoutWriter(out, PANNUKE_CLASSES, PANNUKE_PALETTE, overwrite=overwrite) as writer:
        for fold, (paths, images, masks, types) in loaded.items():
            for index in tqdm(range(len(images)), desc=f"PanNuke fold {fold}", disable=not progress):
                channels = np.asarray(masks[index])
                if not np.all(np.isfinite(channels)) or channels.min() < 0:
                    raise ConversionError(f"{paths[1]}[{index}]: instance ids must be finite and non-negative")
                tissue = str(types[index]) if types is not None else "unknown"
                stem = f"fold{fold}_{index:05d}_{_safe(tissue)}"
                objects = None
                if instances:
                    try:
                        objects = instances_to_objects(channels)
                    except ValueError as exc:
                        raise ConversionError(f"{paths[1]}[{index}]: {exc}") from exc
                writer.add(stem, _to_uint8_image(images[index], paths[0], index), instances_to_semantic(channels),
                           source=f"{paths[1]}[{index}]", instances=objects)
                splits[assignment[fold]].append(stem)
                tissues[tissue] += 1
                tissue_of[stem] = tissue
        return writer.finish(
            splits, mpp=PANNUKE_MPP,
            source=f"PanNuke (Gamper et al. 2019/2020) at {Path(src)}",
            converter="uniseg.datasets.converters.pannuke",
            folds={str(k): v for k, v in sorted(assignment.items())},
            split_rule="whole folds per split (default: the paper's train 1 / val 2 / test 3)",
            tissue_counts=dict(sorted(tissues.items())),
            image_attributes={"tissue": tissue_of},
            **({"instance_rule": "one object per (channel, id) pair of masks.npy channels 0..4, numbered 1..n in "
                                 "channel order; later channels win contested pixels, as in masks/"}
               if instances else {}),
        )
