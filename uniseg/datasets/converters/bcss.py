"""BCSS (Breast Cancer Semantic Segmentation) to the uniseg layout, tiled.

Source format (Amgad et al., "Structured crowdsourcing enables convolutional segmentation of
histology images", Bioinformatics 35(18), 2019; https://github.com/PathologyDataScience/BCSS), as
in the public ``0_Public-data-Amgad2019_0.25MPP`` folder::

    rgbs_colorNormalized/<roi>.png   151 colour-normalised RGB ROIs at 0.25 um/px, a few thousand px a side
    masks/<roi>.png                  same name and size, one integer code per pixel
    meta/gtruth_codes.tsv            ``label<TAB>GT_code``: outside_roi 0, tumor 1, stroma 2, ... other 21

ROI names start with the TCGA barcode, e.g. ``TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500``; the
two letters after ``TCGA-`` are the tissue source site (hospital). The download script variant stores
the RGBs under ``images/`` instead; both are accepted. Code 0 (``outside_roi``) marks pixels outside
the annotated region: the authors state it is a "don't care" label, so it becomes 255 (ignore).

Classes (``classes=``):

* ``"main"`` (default): the grouping of the BCSS challenge baseline -- tumor (tumor, angioinvasion,
  dcis), stroma, inflammatory (lymphocytic_infiltrate, plasma_cells, other_immune_infiltrate),
  necrosis (necrosis_or_debris) and other (every remaining code, including ``exclude`` and
  ``undetermined``, as in the baseline; pass ``classes="all"`` to treat them differently);
* ``"all"``: the 21 annotated codes 1..21 as classes 0..20, named from the code table.

Splits: the published held-out hospitals (``BCSS_TEST_SITES``: OL, LL, E2, EW, GM, S3) form ``test``;
``val`` is a seeded fraction of the remaining *cases* (all tiles of one TCGA case stay together, so
near-identical neighbouring tiles never straddle train and val).

The ROIs are large, so each is cut into ``tile`` x ``tile`` tiles (the last row/column is shifted
inwards to end at the ROI border rather than padded; ROIs smaller than a tile stay whole) and tiles
with no annotated pixel are dropped. Output stems are ``<roi>_x<left>_y<top>``.
"""
from __future__ import annotations

import contextlib
import csv
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from uniseg.utils.imageio import read_label, read_rgb

from .common import (IGNORE_INDEX, ConversionError, LayoutWriter, PathLike, carve_val_split, check_fraction,
                     check_same_size)

__all__ = ["BCSS_MPP", "BCSS_CODES", "BCSS_MAIN_CLASSES", "BCSS_TEST_SITES", "find_bcss_root", "read_code_table",
           "build_lut", "tile_origins", "convert_bcss"]

BCSS_MPP = 0.25

#: The published code table (meta/gtruth_codes.tsv); used when the download lacks the file.
BCSS_CODES: Dict[str, int] = {
    "outside_roi": 0, "tumor": 1, "stroma": 2, "lymphocytic_infiltrate": 3, "necrosis_or_debris": 4,
    "glandular_secretions": 5, "blood": 6, "exclude": 7, "metaplasia_NOS": 8, "fat": 9, "plasma_cells": 10,
    "other_immune_infiltrate": 11, "mucoid_material": 12, "normal_acinus_or_duct": 13, "lymphatics": 14,
    "undetermined": 15, "nerve": 16, "skin_adnexa": 17, "blood_vessel": 18, "angioinvasion": 19, "dcis": 20,
    "other": 21,
}
BCSS_MAIN_CLASSES = ("tumor", "stroma", "inflammatory", "necrosis", "other")
_MAIN_GROUPS = {
    "tumor": "tumor", "angioinvasion": "tumor", "dcis": "tumor",
    "stroma": "stroma",
    "lymphocytic_infiltrate": "inflammatory", "plasma_cells": "inflammatory", "other_immune_infiltrate": "inflammatory",
    "necrosis_or_debris": "necrosis",
}
_MAIN_PALETTE = ((213, 94, 0), (240, 228, 66), (0, 114, 178), (128, 128, 128), (0, 158, 115))
BCSS_TEST_SITES = ("OL", "LL", "E2", "EW", "GM", "S3")
_OUTSIDE = "outside_roi"
_BARCODE = re.compile(r"^TCGA-([0-9A-Z]{2})-([0-9A-Z]{4})", re.IGNORECASE)


def find_bcss_root(src: PathLike) -> Tuple[Path, Path, Path]:
    """Return (root, rgb folder, mask folder), descending into ``0_Public-data-Amgad2019_0.25MPP``."""
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"{src}: BCSS source folder does not exist")
    candidates = [src] + sorted(p for p in src.glob("0_Public-data-Amgad2019*") if p.is_dir())
    for root in candidates:
        masks = root / "masks"
        for rgb_name in ("rgbs_colorNormalized", "images"):
            if (root / rgb_name).is_dir() and masks.is_dir():
                return root, root / rgb_name, masks
    raise ConversionError(f"{src}: not a BCSS download (expected rgbs_colorNormalized/ and masks/)")


def read_code_table(root: Path) -> Tuple[Dict[str, int], str]:
    """Read ``meta/gtruth_codes.tsv`` (or fall back to the published table); returns (codes, origin)."""
    path = root / "meta" / "gtruth_codes.tsv"
    if not path.is_file():
        return dict(BCSS_CODES), "built-in copy of meta/gtruth_codes.tsv"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            if not {"label", "GT_code"} <= set(reader.fieldnames or []):
                raise ConversionError(f"{path}: expected columns 'label' and 'GT_code', found {reader.fieldnames}")
            codes = {row["label"].strip(): int(row["GT_code"]) for row in reader}
    except (ValueError, UnicodeDecodeError, csv.Error) as exc:
        if isinstance(exc, ConversionError):
            raise
        raise ConversionError(f"{path}: cannot be read as the BCSS code table ({exc})") from exc
    if codes.get(_OUTSIDE) != 0:
        raise ConversionError(f"{path}: expected outside_roi to have code 0")
    if len(set(codes.values())) != len(codes) or not all(0 <= c < IGNORE_INDEX for c in codes.values()):
        raise ConversionError(f"{path}: codes must be distinct integers in 0..254")
    return codes, str(path)


def build_lut(codes: Dict[str, int], classes: str) -> Tuple[np.ndarray, Tuple[str, ...], Optional[Sequence]]:
    """Map source codes to output labels.

    Returns (lut, class names, palette): ``lut[code]`` is the output label, 255 for ``outside_roi``,
    and -1 for codes the table does not define (so they are reported, not silently remapped).
    """
    lut = np.full(256, -1, dtype=np.int16)
    lut[codes[_OUTSIDE]] = IGNORE_INDEX
    annotated = sorted((c, n) for n, c in codes.items() if n != _OUTSIDE)
    if classes == "main":
        names: Tuple[str, ...] = BCSS_MAIN_CLASSES
        for code, name in annotated:
            lut[code] = names.index(_MAIN_GROUPS.get(name, "other"))
        return lut, names, _MAIN_PALETTE
    if classes == "all":
        names = tuple(n for _, n in annotated)
        for label, (code, _) in enumerate(annotated):
            lut[code] = label
        return lut, names, None
    raise ValueError(f"classes must be 'main' or 'all', got {classes!r}")


def tile_origins(length: int, tile: int) -> List[int]:
    """Tile start offsets covering ``[0, length)``; the last tile is shifted to end at the border."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _site_and_case(stem: str, path: Path) -> Tuple[str, str]:
    match = _BARCODE.match(stem)
    if not match:
        raise ConversionError(f"{path}: BCSS ROI names start with a TCGA barcode (TCGA-XX-XXXX...), got {stem!r}")
    return match.group(1).upper(), match.group(0).upper()


@contextlib.contextmanager
def _large_images() -> Iterator[None]:
    """BCSS ROIs legitimately exceed Pillow's decompression-bomb limit; lift it while reading them."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _load_roi(image_path: Path, mask_path: Path, lut: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    if not mask_path.is_file():
        raise ConversionError(f"{mask_path}: mask for {image_path} is missing")
    with _large_images():
        image = read_rgb(image_path)
        codes = read_label(mask_path)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ConversionError(f"{mask_path}: mask must be single-channel integer codes, got {codes.dtype} {codes.shape}")
    check_same_size(image, codes, image_path, mask_path)
    present = np.unique(codes)
    unknown = [int(v) for v in present if not 0 <= v < 256 or lut[int(v)] < 0]
    if unknown:
        raise ConversionError(f"{mask_path}: codes {unknown[:10]} are not in the BCSS code table")
    return image, lut[codes.astype(np.int64)].astype(np.uint8)


def convert_bcss(src: PathLike, out: PathLike, tile: int = 1024, classes: str = "main", val_fraction: float = 0.1,
                 seed: int = 0, test_sites: Sequence[str] = BCSS_TEST_SITES, overwrite: bool = False,
                 progress: bool = False) -> Dict[str, Any]:
    """Convert a BCSS download at ``src`` into tiles in the uniseg layout at ``out``; returns meta.json's content."""
    if tile < 16:
        raise ValueError(f"tile must be at least 16 px, got {tile}")
    check_fraction(val_fraction)
    root, rgb_dir, mask_dir = find_bcss_root(src)
    codes, code_origin = read_code_table(root)
    lut, class_names, palette = build_lut(codes, classes)
    images = sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() == ".png")
    if not images:
        raise ConversionError(f"{rgb_dir}: no .png ROIs")
    test_set = {s.upper() for s in test_sites}
    rois = []
    for image_path in images:
        site, case = _site_and_case(image_path.stem, image_path)
        rois.append((image_path, mask_dir / image_path.name, site, case))
    for _, mask_path, _, _ in rois:
        if not mask_path.is_file():
            raise ConversionError(f"{mask_path}: mask is missing")

    from tqdm import tqdm

    tiles_of_case: Dict[str, List[str]] = {}
    test: List[str] = []
    with LayoutWriter(out, class_names, palette, overwrite=overwrite) as writer:
        for image_path, mask_path, site, case in tqdm(rois, desc="BCSS", disable=not progress):
            image, labels = _load_roi(image_path, mask_path, lut)
            height, width = labels.shape
            for top in tile_origins(height, tile):
                for left in tile_origins(width, tile):
                    window = labels[top:top + tile, left:left + tile]
                    if np.all(window == IGNORE_INDEX):
                        continue
                    stem = f"{image_path.stem}_x{left:05d}_y{top:05d}"
                    writer.add(stem, image[top:top + tile, left:left + tile], window, source=mask_path)
                    (test if site in test_set else tiles_of_case.setdefault(case, [])).append(stem)
        train_cases, val_cases = carve_val_split(list(tiles_of_case), val_fraction, seed)
        return writer.finish(
            {"train": sorted(s for c in train_cases for s in tiles_of_case[c]),
             "val": sorted(s for c in val_cases for s in tiles_of_case[c]),
             "test": sorted(test)},
            mpp=BCSS_MPP,
            source=f"BCSS (Amgad et al., Bioinformatics 2019) at {root}",
            converter="uniseg.datasets.converters.bcss",
            class_mode=classes, code_table=code_origin, tile=tile,
            source_codes_to_labels={name: int(lut[code]) for name, code in sorted(codes.items(), key=lambda kv: kv[1])},
            split_rule=(f"test = tissue source sites {sorted(test_set)}; val = seeded fraction of the remaining "
                        f"TCGA cases"),
            val_fraction=val_fraction, seed=seed,
        )
