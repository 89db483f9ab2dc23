"""CoNSeP (colorectal nuclei, 7 types) to the uniseg instance layout.

Source format (Graham et al., "HoVer-Net: Simultaneous segmentation and classification of nuclei in
multi-tissue histology images", Medical Image Analysis 58, 2019; TIA Centre, Warwick)::

    CoNSeP/
      Train/Images/train_<n>.png     27 H&E tiles, 1000x1000 (RGBA PNGs; alpha is dropped)
      Train/Labels/train_<n>.mat     MATLAB v5 files with
                                       inst_map       (H, W) nucleus ids 0 = none, 1..N
                                       inst_type      (N, 1) type of nucleus k at row k-1, 1..7
                                       type_map       (H, W) type per pixel (0 = background)
                                       inst_centroid  (N, 2) x, y of each nucleus (not used)
      Train/Overlay/                 visualisation only (ignored)
      Test/Images/test_<n>.png       14 tiles, same format
      Test/Labels/test_<n>.mat

The seven types are 1 other, 2 inflammatory, 3 healthy epithelial, 4 dysplastic/malignant
epithelial, 5 fibroblast, 6 muscle, 7 endothelial. By default they are merged into the four classes
of the HoVer-Net paper (other; inflammatory; epithelial = 3 + 4; spindle-shaped = 5 + 6 + 7);
``merge_types=False`` keeps all seven.

Output: ``instances/`` from ``inst_map`` and ``masks/`` painted from each nucleus's ``inst_type``, so
every nucleus lies on exactly one class (the instance layout's rule). ``inst_type`` is the per-nucleus
label HoVer-Net's own evaluation (``compute_stats.py``) uses; ``type_map`` is only compared against it,
and the pixels where the two disagree are counted in meta.json (``type_map_disagreement``) rather
than silently mixed into the labels.

Splits: ``Test/`` is the test set; ``val`` is a seeded fraction of ``Train/``.

Resolution: the tiles are described as 40x, conventionally taken as 0.25 um/px (``CONSEP_MPP``).
They were scanned on an Omnyx VL120, whose 40x pixel is 0.275 um according to the study CRAG comes
from (see :mod:`.crag`); override ``mpp`` in the dataset config if that matters to you.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from uniseg.utils.imageio import read_rgb

from .common import ConversionError, LayoutWriter, PathLike, carve_val_split, check_fraction

__all__ = ["CONSEP_CLASSES", "CONSEP_CLASSES_7", "CONSEP_MPP", "CONSEP_MERGE", "find_consep_root", "read_consep_mat",
           "convert_consep"]

CONSEP_CLASSES = ("background", "other", "inflammatory", "epithelial", "spindle-shaped")
CONSEP_PALETTE = ((0, 0, 0), (128, 128, 128), (0, 114, 178), (240, 228, 66), (0, 158, 115))
CONSEP_CLASSES_7 = ("background", "other", "inflammatory", "healthy_epithelial", "dysplastic_malignant_epithelial",
                    "fibroblast", "muscle", "endothelial")
CONSEP_PALETTE_7 = ((0, 0, 0), (128, 128, 128), (0, 114, 178), (240, 228, 66), (213, 94, 0), (0, 158, 115),
                    (204, 121, 167), (86, 180, 233))
#: source type (index) -> merged class, HoVer-Net's convention; index 0 is background.
CONSEP_MERGE = np.array([0, 1, 2, 3, 3, 4, 4, 4], dtype=np.int64)
CONSEP_MPP = 0.25
_NUM_TYPES = 7
_SPLIT_DIRS = (("train", ("Train", "train")), ("test", ("Test", "test")))


def find_consep_root(src: PathLike) -> Path:
    """Return the folder holding ``Train/`` and ``Test/`` (descending into a ``CoNSeP/`` wrapper)."""
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"{src}: CoNSeP source folder does not exist")
    for candidate in (src, src / "CoNSeP", src / "consep"):
        if any((candidate / name).is_dir() for name in ("Train", "train")):
            return candidate
    raise ConversionError(f"{src}: not a CoNSeP download (expected Train/Images and Train/Labels)")


def _pairs(split_dir: Path) -> List[Tuple[str, Path, Path]]:
    images = split_dir / "Images"
    labels = split_dir / "Labels"
    for folder in (images, labels):
        if not folder.is_dir():
            raise ConversionError(f"{folder}: folder is missing")
    pairs = []
    for image in sorted(images.glob("*.png")):
        mat = labels / f"{image.stem}.mat"
        if not mat.is_file():
            raise ConversionError(f"{mat}: label file is missing for {image}")
        pairs.append((image.stem, image, mat))
    if not pairs:
        raise ConversionError(f"{images}: no .png images")
    return pairs


def _integral(array: np.ndarray, name: str, path: Path) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "uif" or not np.all(np.isfinite(array)) or not np.array_equal(array, np.floor(array)):
        raise ConversionError(f"{path}: {name} must hold whole numbers")
    if array.size and array.min() < 0:
        raise ConversionError(f"{path}: {name} must be non-negative, found {array.min()}")
    return array.astype(np.int64)


def read_consep_mat(path: PathLike) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Return (inst_map (H, W) int64, inst_type (N,) int64 in 1..7, type_map or None) of one label file."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    path = Path(path)
    try:
        mat = loadmat(str(path))
    except (MatReadError, ValueError, OSError, TypeError) as exc:
        raise ConversionError(f"{path}: cannot be read as a MATLAB v5 file ({exc})") from exc
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise ConversionError(f"{path}: unsupported MATLAB file version ({exc}); CoNSeP ships v5 files") from exc
    for key in ("inst_map", "inst_type"):
        if key not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise ConversionError(f"{path}: no {key!r} entry (found {found})")
    inst_map = _integral(mat["inst_map"], "inst_map", path)
    if inst_map.ndim != 2:
        raise ConversionError(f"{path}: inst_map must be 2-D, got shape {inst_map.shape}")
    inst_type = _integral(mat["inst_type"], "inst_type", path).reshape(-1)
    bad = sorted({int(t) for t in inst_type if not 1 <= t <= _NUM_TYPES})
    if bad:
        raise ConversionError(f"{path}: inst_type holds {bad}; CoNSeP types are 1..{_NUM_TYPES}")
    top = int(inst_map.max()) if inst_map.size else 0
    if top > len(inst_type):
        raise ConversionError(f"{path}: inst_map has nucleus id {top} but inst_type describes only {len(inst_type)} "
                              f"nuclei (row k-1 is the type of id k)")
    type_map = None
    if "type_map" in mat:
        type_map = _integral(mat["type_map"], "type_map", path)
        if type_map.shape != inst_map.shape:
            raise ConversionError(f"{path}: type_map {type_map.shape} and inst_map {inst_map.shape} differ in size")
    return inst_map, inst_type, type_map


def convert_consep(src: PathLike, out: PathLike, merge_types: bool = True, val_fraction: float = 0.1, seed: int = 0,
                   overwrite: bool = False, progress: bool = False) -> Dict[str, Any]:
    """Convert a CoNSeP download at ``src`` into the uniseg instance layout at ``out``; returns meta.json's content."""
    check_fraction(val_fraction)
    root = find_consep_root(src)
    split_pairs: Dict[str, List[Tuple[str, Path, Path]]] = {}
    for split, names in _SPLIT_DIRS:
        folder = next((root / n for n in names if (root / n).is_dir()), root / names[0])
        split_pairs[split] = _pairs(folder)
    clash = {s for s, _, _ in split_pairs["train"]} & {s for s, _, _ in split_pairs["test"]}
    if clash:
        raise ConversionError(f"{root}: file names occur in both Train and Test: {sorted(clash)[:5]}")
    lookup = CONSEP_MERGE if merge_types else np.arange(_NUM_TYPES + 1)
    classes, palette = (CONSEP_CLASSES, CONSEP_PALETTE) if merge_types else (CONSEP_CLASSES_7, CONSEP_PALETTE_7)

    from tqdm import tqdm

    disagreement: Dict[str, int] = {}
    nuclei: Counter = Counter()
    with LayoutWriter(out, classes, palette, overwrite=overwrite) as writer:
        pairs = split_pairs["train"] + split_pairs["test"]
        for stem, image_path, mat_path in tqdm(pairs, desc="CoNSeP", disable=not progress):
            image = read_rgb(image_path)
            inst_map, inst_type, type_map = read_consep_mat(mat_path)
            if inst_map.shape != image.shape[:2]:
                raise ConversionError(f"{mat_path}: inst_map is {inst_map.shape[1]}x{inst_map.shape[0]} px but "
                                      f"{image_path} is {image.shape[1]}x{image.shape[0]} px")
            object_class = lookup[np.concatenate([[0], inst_type])]  # id -> class; id 0 -> background
            mask = object_class[inst_map].astype(np.uint8)
            if type_map is not None:
                type_classes = lookup[np.clip(type_map, 0, _NUM_TYPES)]
                differ = int(np.count_nonzero((type_classes != mask) | (type_map > _NUM_TYPES)))
                if differ:
                    disagreement[stem] = differ
            present = np.unique(inst_map)
            nuclei.update(classes[int(c)] for c in object_class[present[present > 0]])
            writer.add(stem, image, mask, source=mat_path, instances=inst_map)
        train, val = carve_val_split([s for s, _, _ in split_pairs["train"]], val_fraction, seed)
        return writer.finish(
            {"train": train, "val": val, "test": sorted(s for s, _, _ in split_pairs["test"])},
            mpp=CONSEP_MPP,
            source=f"CoNSeP (Graham et al., Medical Image Analysis 2019) at {root}",
            converter="uniseg.datasets.converters.consep",
            split_rule="test = official Test/ folder; val = seeded fraction of official Train/",
            val_fraction=val_fraction, seed=seed,
            type_merge=("HoVer-Net 4 classes: 1 other; 2 inflammatory; 3+4 epithelial; 5+6+7 spindle-shaped"
                        if merge_types else "all 7 CoNSeP types kept"),
            class_source="inst_type (one type per nucleus); masks/ painted from it",
            type_map_disagreement={"pixels": int(sum(disagreement.values())), "per_image": disagreement},
            nucleus_counts=dict(sorted(nuclei.items())),
        )
