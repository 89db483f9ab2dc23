"""CRAG (colorectal adenocarcinoma gland) to the uniseg layout.

Source format (CRAG v2, as downloaded from the TIA Centre, Warwick; Graham et al., "MILD-Net:
Minimal information loss dilated network for gland instance segmentation in colon histology
images", Medical Image Analysis 52, 2019)::

    CRAG/
      train/Images/train_<n>.png        173 H&E tiles, RGB, mostly 1512x1516 px
      train/Annotation/train_<n>.png    instance labels, same stem: 0 = background, 1..N = one gland each
      train/Overlay/                    visualisation only (ignored)
      valid/Images/test_<n>.png         40 tiles: the official *test* set
      valid/Annotation/test_<n>.png

The release README spells the folders ``Annotations`` and ``test``; the archive itself uses
``Annotation`` and ``valid``. Both spellings are accepted, as is the ``CRAG_v2/`` wrapper folder.
Version 1 shipped five annotation files without an image in the test set; such orphan masks are
skipped and listed in meta.json.

Resolution: the release describes the tiles as 20x. They come from 38 colorectal adenocarcinoma slides
scanned on an Omnyx VL120 at 0.275 um/px (Awan et al., Scientific Reports 7:16852, 2017, the study the
images were first collected for), so 20x corresponds to 0.55 um/px -- the value ``CRAG_MPP`` records.
It is derived from those two published facts, not read from the files (PNGs carry no resolution);
override ``mpp`` in the dataset config if your copy differs.

Output: classes ``background`` (0) and ``gland`` (1; every instance id > 0). Splits: the official
``valid`` folder becomes ``test``; ``val`` is carved from the official train set with a seeded fraction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from uniseg.utils.imageio import read_label, read_rgb

from .common import ConversionError, LayoutWriter, PathLike, carve_val_split, check_fraction, check_same_size

__all__ = ["CRAG_CLASSES", "CRAG_PALETTE", "CRAG_MPP", "find_crag_root", "convert_crag"]

CRAG_CLASSES = ("background", "gland")
CRAG_PALETTE = ((0, 0, 0), (230, 159, 0))
CRAG_MPP = 0.55

_TRAIN_DIRS = ("train",)
_TEST_DIRS = ("valid", "test")
_IMAGE_DIRS = ("Images", "images")
_MASK_DIRS = ("Annotation", "Annotations", "annotation", "annotations")


def _first_existing(parent: Path, names: Sequence[str]) -> Optional[Path]:
    for name in names:
        if (parent / name).is_dir():
            return parent / name
    return None


def find_crag_root(src: PathLike) -> Path:
    """Return the folder holding ``train/`` and ``valid/`` (descending into a ``CRAG/`` wrapper)."""
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"{src}: CRAG source folder does not exist")
    for candidate in (src, src / "CRAG", src / "CRAG_v2" / "CRAG"):
        if _first_existing(candidate, _TRAIN_DIRS) and _first_existing(candidate, _TEST_DIRS):
            return candidate
    raise ConversionError(f"{src}: not a CRAG download (expected train/ and valid/ folders, each with "
                          f"Images/ and Annotation/)")


def _pairs(split_dir: Path) -> Tuple[List[Tuple[str, Path, Path]], List[str]]:
    """(stem, image, mask) for every image in ``split_dir``; plus orphan mask names."""
    image_dir = _first_existing(split_dir, _IMAGE_DIRS)
    mask_dir = _first_existing(split_dir, _MASK_DIRS)
    if image_dir is None:
        raise ConversionError(f"{split_dir}: missing Images/ folder")
    if mask_dir is None:
        raise ConversionError(f"{split_dir}: missing Annotation/ folder")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() == ".png")
    if not images:
        raise ConversionError(f"{image_dir}: no .png images")
    pairs = []
    for image in images:
        mask = mask_dir / image.name
        if not mask.is_file():
            raise ConversionError(f"{mask}: annotation for {image} is missing")
        pairs.append((image.stem, image, mask))
    stems = {stem for stem, _, _ in pairs}
    orphans = sorted(p.name for p in mask_dir.iterdir() if p.suffix.lower() == ".png" and p.stem not in stems)
    return pairs, orphans


def _load_pair(image_path: Path, mask_path: Path) -> Tuple[np.ndarray, np.ndarray]:
    image = read_rgb(image_path)
    instances = read_label(mask_path)
    if instances.ndim != 2:
        raise ConversionError(f"{mask_path}: instance annotation must be single-channel, got shape {instances.shape}")
    if not np.issubdtype(instances.dtype, np.integer) and not np.issubdtype(instances.dtype, np.bool_):
        raise ConversionError(f"{mask_path}: instance annotation must hold integer ids, got {instances.dtype}")
    if np.issubdtype(instances.dtype, np.signedinteger) and instances.min() < 0:
        raise ConversionError(f"{mask_path}: negative instance ids {int(instances.min())}")
    check_same_size(image, instances, image_path, mask_path)
    return image, (instances > 0).astype(np.uint8)


def convert_crag(src: PathLike, out: PathLike, val_fraction: float = 0.1, seed: int = 0,
                 overwrite: bool = False, progress: bool = False) -> Dict[str, Any]:
    """Convert a CRAG download at ``src`` into the uniseg layout at ``out``; returns meta.json's content."""
    check_fraction(val_fraction)
    root = find_crag_root(src)
    train_pairs, train_orphans = _pairs(_first_existing(root, _TRAIN_DIRS))  # type: ignore[arg-type]
    test_pairs, test_orphans = _pairs(_first_existing(root, _TEST_DIRS))  # type: ignore[arg-type]
    clash = {s for s, _, _ in train_pairs} & {s for s, _, _ in test_pairs}
    if clash:
        raise ConversionError(f"{root}: file names occur in both train and test: {sorted(clash)[:5]}")

    from tqdm import tqdm

    with LayoutWriter(out, CRAG_CLASSES, CRAG_PALETTE, overwrite=overwrite) as writer:
        for stem, image_path, mask_path in tqdm(train_pairs + test_pairs, desc="CRAG", disable=not progress):
            image, mask = _load_pair(image_path, mask_path)
            writer.add(stem, image, mask, source=mask_path)
        train, val = carve_val_split([s for s, _, _ in train_pairs], val_fraction, seed)
        return writer.finish(
            {"train": train, "val": val, "test": sorted(s for s, _, _ in test_pairs)},
            mpp=CRAG_MPP,
            source=f"CRAG v2 (Graham et al., Medical Image Analysis 2019) at {root}",
            converter="uniseg.datasets.converters.crag",
            split_rule=("test = official valid/ folder; val = seeded fraction of official train/"),
            val_fraction=val_fraction, seed=seed,
            ignored_orphan_masks=train_orphans + test_orphans,
        )
