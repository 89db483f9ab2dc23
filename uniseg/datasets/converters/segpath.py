"""SegPath (one antibody-defined mask set at a time) to the uniseg layout.

SegPath (Komura et al., "Restaining-based annotation for cancer histology segmentation to overcome
annotation-related limitations among pathologists", Patterns 4(2):100688, 2023; data on Zenodo via
https://dakomura.github.io/SegPath/) labels eight cell/tissue types by immunofluorescence restaining
of the same H&E section. Each type is a separate download::

    panCK_Epithelium.tar.gz  -> panCK_Epithelium/<name>_HE.png     984x984 RGB H&E tile
                                panCK_Epithelium/<name>_mask.png   same size, 0 = other, 1 = target
    panCK_fileinfo.csv       -> columns include ``filename`` (the tile file name) and
                                ``train_val_test`` (train / val / test): the published split

The eight sets (folder name -> antibody prefix of the CSV): panCK_Epithelium, aSMA_SmoothMuscle,
CD235a_RBC, CD3CD20_Lymphocyte, CD45RB_Leukocyte, ERG_Endothelium, MIST1_PlasmaCell,
MNDA_MyeloidCell. Tiles are 984x984 px at 0.2208 um/px (``SEGPATH_MPP``).

The CSV may list the mask files too; only rows whose file name ends in ``_HE.png`` are used, and the
file is looked up by its base name inside the set folder (the CSV is found next to the folder or in
it). One conversion handles one set (``antibody`` or auto-detection when the source holds exactly one),
because the masks of different sets overlap and cannot be merged into one semantic label map.

Output classes: ``background`` (0) and the set's target (1).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from uniseg.utils.imageio import read_label, read_rgb

from .common import ConversionError, LayoutWriter, PathLike, check_same_size

__all__ = ["SEGPATH_SETS", "SEGPATH_MPP", "find_segpath_set", "convert_segpath"]

SEGPATH_MPP = 0.2208

#: antibody prefix -> (folder name, output class name)
SEGPATH_SETS: Dict[str, Tuple[str, str]] = {
    "panCK": ("panCK_Epithelium", "epithelium"),
    "aSMA": ("aSMA_SmoothMuscle", "smooth_muscle"),
    "CD235a": ("CD235a_RBC", "red_blood_cell"),
    "CD3CD20": ("CD3CD20_Lymphocyte", "lymphocyte"),
    "CD45RB": ("CD45RB_Leukocyte", "leukocyte"),
    "ERG": ("ERG_Endothelium", "endothelium"),
    "MIST1": ("MIST1_PlasmaCell", "plasma_cell"),
    "MNDA": ("MNDA_MyeloidCell", "myeloid_cell"),
}
_IMAGE_SUFFIX = "_HE.png"
_MASK_SUFFIX = "_mask.png"
_SPLIT_VALUES = ("train", "val", "test")


def _antibody_of_folder(name: str) -> Optional[str]:
    for antibody, (folder, _) in SEGPATH_SETS.items():
        if name == folder or name.split("_", 1)[0] == antibody:
            return antibody
    return None


def find_segpath_set(src: PathLike, antibody: Optional[str] = None) -> Tuple[str, Path, Path]:
    """Locate (antibody, tile folder, fileinfo CSV) for one SegPath set under ``src``.

    ``src`` may be the set folder itself or a folder holding one or more set folders and CSVs.
    """
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"{src}: SegPath source folder does not exist")
    if antibody is not None and antibody not in SEGPATH_SETS:
        raise ValueError(f"unknown SegPath antibody {antibody!r}; choose from {sorted(SEGPATH_SETS)}")

    own = _antibody_of_folder(src.name)
    if own is not None and any(src.glob(f"*{_IMAGE_SUFFIX}")):
        if antibody is not None and antibody != own:
            raise ConversionError(f"{src}: folder holds the {own} set, not {antibody}")
        folder, candidates = src, [src.parent, src]
        antibody = own
    else:
        present = [a for a, (folder_name, _) in SEGPATH_SETS.items() if (src / folder_name).is_dir()]
        if antibody is None:
            if len(present) != 1:
                raise ConversionError(
                    f"{src}: found SegPath sets {present or 'none'}; pass antibody= (one of {sorted(SEGPATH_SETS)})")
            antibody = present[0]
        folder = src / SEGPATH_SETS[antibody][0]
        if not folder.is_dir():
            raise ConversionError(f"{folder}: SegPath set folder for {antibody} is missing")
        candidates = [src, folder]
    csv_name = f"{antibody}_fileinfo.csv"
    for parent in candidates:
        if (parent / csv_name).is_file():
            return antibody, folder, parent / csv_name
    raise ConversionError(f"{candidates[0] / csv_name}: SegPath split file is missing (it is part of the "
                          f"Zenodo record next to {SEGPATH_SETS[antibody][0]}.tar.gz)")


def _read_fileinfo(csv_path: Path) -> List[Tuple[str, str]]:
    """(tile base name, split) for every H&E row of a SegPath fileinfo CSV."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or [])
            if not {"filename", "train_val_test"} <= columns:
                raise ConversionError(f"{csv_path}: expected columns 'filename' and 'train_val_test', "
                                      f"found {sorted(columns)}")
            rows = []
            for line, row in enumerate(reader, start=2):
                name = Path((row["filename"] or "").strip()).name
                split = (row["train_val_test"] or "").strip().lower()
                if not name.endswith(_IMAGE_SUFFIX):
                    continue
                if split not in _SPLIT_VALUES:
                    raise ConversionError(f"{csv_path}, line {line}: split {split!r} is not one of {_SPLIT_VALUES}")
                rows.append((name, split))
    except UnicodeDecodeError as exc:
        raise ConversionError(f"{csv_path}: not a text CSV file ({exc})") from exc
    except csv.Error as exc:
        raise ConversionError(f"{csv_path}: malformed CSV ({exc})") from exc
    if not rows:
        raise ConversionError(f"{csv_path}: lists no *{_IMAGE_SUFFIX} files")
    return rows


def _load_pair(image_path: Path, mask_path: Path) -> Tuple[np.ndarray, np.ndarray]:
    if not mask_path.is_file():
        raise ConversionError(f"{mask_path}: mask for {image_path} is missing")
    image = read_rgb(image_path)
    mask = read_label(mask_path)
    if mask.ndim != 2:
        raise ConversionError(f"{mask_path}: mask must be single-channel, got shape {mask.shape}")
    check_same_size(image, mask, image_path, mask_path)
    bad = np.setdiff1d(np.unique(mask), [0, 1])
    if bad.size:
        raise ConversionError(f"{mask_path}: SegPath masks hold 0/1, found values {bad[:10].tolist()}")
    return image, mask.astype(np.uint8)


def convert_segpath(src: PathLike, out: PathLike, antibody: Optional[str] = None, overwrite: bool = False,
                    progress: bool = False) -> Dict[str, Any]:
    """Convert one SegPath set at ``src`` into the uniseg layout at ``out``; returns meta.json's content."""
    antibody, folder, csv_path = find_segpath_set(src, antibody)
    folder_name, target = SEGPATH_SETS[antibody]
    rows = _read_fileinfo(csv_path)
    seen: Dict[str, str] = {}
    for name, split in rows:
        if seen.setdefault(name, split) != split:
            raise ConversionError(f"{csv_path}: {name} is listed in both {seen[name]!r} and {split!r}")
        if not (folder / name).is_file():
            raise ConversionError(f"{folder / name}: listed in {csv_path.name} but missing")
        mask = folder / f"{name[: -len(_IMAGE_SUFFIX)]}{_MASK_SUFFIX}"
        if not mask.is_file():
            raise ConversionError(f"{mask}: mask for {folder / name} is missing")

    from tqdm import tqdm

    splits: Dict[str, List[str]] = {s: [] for s in _SPLIT_VALUES}
    with LayoutWriter(out, ("background", target), ((0, 0, 0), (230, 159, 0)), overwrite=overwrite) as writer:
        for name in tqdm(sorted(seen), desc=f"SegPath {antibody}", disable=not progress):
            stem = name[: -len(_IMAGE_SUFFIX)]
            image, mask = _load_pair(folder / name, folder / f"{stem}{_MASK_SUFFIX}")
            writer.add(stem, image, mask, source=folder / name)
            splits[seen[name]].append(stem)
        return writer.finish(
            splits, mpp=SEGPATH_MPP,
            source=f"SegPath {folder_name} (Komura et al., Patterns 2023) at {folder}",
            converter="uniseg.datasets.converters.segpath",
            antibody=antibody, split_rule=f"published split from {csv_path.name} (column train_val_test)",
        )
