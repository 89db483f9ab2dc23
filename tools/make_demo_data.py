"""Regenerate the embedded demo dataset ``data/ihc/`` from scikit-image's IHC image.

Usage::

    python tools/make_demo_data.py --overwrite            # rewrites data/ihc/
    python tools/make_demo_data.py --out /tmp/ihc         # writes elsewhere

Needs scikit-image (part of the ``dev`` extra: ``pip install -e .[dev]``); the image is the real
immunohistochemistry photograph returned by ``skimage.data.immunohistochemistry()`` (colonic glands,
FHL2 revealed with DAB, hematoxylin counterstain; 512x512 RGB).

The masks are NOT expert annotations. They are derived, reproducibly, by colour deconvolution:

1. ``skimage.color.rgb2hed`` separates the hematoxylin (H) and DAB (D) optical densities;
2. Otsu's threshold on each channel, over the whole image, gives a hematoxylin-rich and a
   DAB-positive mask;
3. light morphology on each: binary opening with a disk of radius ``OPEN_RADIUS`` and removal of
   connected components smaller than ``MIN_OBJECT_PX`` pixels;
4. labels: 0 background, 1 hematoxylin-rich nuclei, then 2 DAB-positive on top. DAB wins overlaps
   because the hematoxylin channel of ``rgb2hed`` picks up part of the dense brown stain (the two
   absorption spectra are not fully separable), which would otherwise turn stained glands into
   large false "nuclei"; hematoxylin-rich pixels outside the stain are the counterstained nuclei.

The 512x512 image is cut into four disjoint 256x256 quadrants: top-left, top-right and bottom-left
train, bottom-right is the held-out image (listed in both val.txt and test.txt). Output goes through
an atomic directory and fixed PNG/JSON settings, so a re-run produces the same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from uniseg.datasets.converters.common import LayoutWriter, save_png

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "data" / "ihc"

CLASSES = ("background", "nuclei", "dab_positive")
PALETTE = ((0, 0, 0), (86, 180, 233), (213, 94, 0))
OPEN_RADIUS = 2
MIN_OBJECT_PX = 30
TILE = 256
#: stem -> (top, left, split)
QUADRANTS: Dict[str, Tuple[int, int, str]] = {
    "ihc_tl": (0, 0, "train"),
    "ihc_tr": (0, TILE, "train"),
    "ihc_bl": (TILE, 0, "train"),
    "ihc_br": (TILE, TILE, "val"),
}
SOURCE = "scikit-image skimage.data.immunohistochemistry() (file skimage/data/ihc.png)"
LICENCE = ("scikit-image documents the image as acquired at the Center for Microscopy And Molecular Imaging "
           "(CMMI) with 'No known copyright restrictions'; scikit-image itself is BSD-3-Clause")


def load_source() -> np.ndarray:
    """The IHC image as (512, 512, 3) uint8, located through ``skimage.data``."""
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("make_demo_data.py needs scikit-image: pip install -e .[dev]") from exc
    image = np.asarray(data.immunohistochemistry())
    if image.shape != (2 * TILE, 2 * TILE, 3) or image.dtype != np.uint8:
        raise ValueError(f"skimage.data.immunohistochemistry(): expected (512, 512, 3) uint8, got {image.dtype} "
                         f"{image.shape}")
    return image


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def _clean(mask: np.ndarray) -> np.ndarray:
    """Binary opening, then drop connected components under ``MIN_OBJECT_PX`` pixels."""
    opened = ndimage.binary_opening(mask, structure=_disk(OPEN_RADIUS))
    components, _ = ndimage.label(opened)
    sizes = np.bincount(components.ravel())
    keep = sizes >= MIN_OBJECT_PX
    keep[0] = False
    return keep[components]


def derive_labels(image: np.ndarray) -> Tuple[np.ndarray, Dict[str, float]]:
    """Labels (H, W) uint8 in {0, 1, 2} from colour deconvolution; also returns the thresholds used."""
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu

    hed = rgb2hed(image)
    hematoxylin, dab = hed[..., 0], hed[..., 2]
    th_h, th_d = float(threshold_otsu(hematoxylin)), float(threshold_otsu(dab))
    nuclei = _clean(hematoxylin > th_h)
    dab_positive = _clean(dab > th_d)
    labels = np.zeros(image.shape[:2], dtype=np.uint8)
    labels[nuclei] = CLASSES.index("nuclei")
    labels[dab_positive] = CLASSES.index("dab_positive")
    return labels, {"hematoxylin_otsu": th_h, "dab_otsu": th_d}


def write_demo(out: Path = DEFAULT_OUT, overwrite: bool = False) -> Dict[str, Any]:
    """Derive the masks and write the demo dataset to ``out``; returns meta.json's content."""
    import skimage

    image = load_source()
    labels, thresholds = derive_labels(image)
    splits: Dict[str, List[str]] = {"train": [], "val": [], "test": []}
    with LayoutWriter(out, CLASSES, PALETTE, overwrite=overwrite) as writer:
        save_png(image, writer.root / "source.png")
        for stem, (top, left, split) in QUADRANTS.items():
            window = (slice(top, top + TILE), slice(left, left + TILE))
            writer.add(stem, image[window], labels[window], source=f"{SOURCE} quadrant {stem}")
            splits[split].append(stem)
        splits["test"] = list(splits["val"])
        return writer.finish(
            splits, mpp=None, source=SOURCE, converter="tools/make_demo_data.py",
            licence=LICENCE,
            labels="derived by colour deconvolution, not expert annotations",
            derivation=("skimage.color.rgb2hed; Otsu threshold on the hematoxylin and on the DAB channel over the "
                        f"whole image; binary opening (disk radius {OPEN_RADIUS}) and removal of components "
                        f"< {MIN_OBJECT_PX} px on each; label 1 = hematoxylin-rich nuclei, then label 2 = "
                        "DAB-positive on top (DAB wins overlaps); 0 = background"),
            thresholds=thresholds,
            quadrants={stem: {"top": t, "left": x, "size": TILE} for stem, (t, x, _) in QUADRANTS.items()},
            source_pixels_sha256=hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest(),
            scikit_image_version=skimage.__version__,
            regenerate="python tools/make_demo_data.py --overwrite",
        )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate data/ihc/ from scikit-image's IHC image.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    args = parser.parse_args(argv)
    try:
        meta = write_demo(args.out, overwrite=args.overwrite)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {meta['split_counts']}, thresholds {meta['thresholds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
