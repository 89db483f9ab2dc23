"""Regenerate the shipped instance demo dataset ``data/nuclei/`` from stardist's 2-D nuclei example.

Usage::

    pip download stardist==0.9.2 --no-deps -d /tmp/stardist          # once, anywhere with a registry
    python tools/make_nuclei_demo_data.py /tmp/stardist/stardist-0.9.2-*.whl --overwrite
    python tools/make_nuclei_demo_data.py path/to/folder_with_img2d_and_mask2d --out /tmp/nuclei

SOURCE is the stardist 0.9.2 wheel (a zip; nothing is installed) or a folder holding ``img2d.tif``
and ``mask2d.tif`` (for example an unpacked wheel). The script never downloads anything, and it
refuses files whose SHA-256 differs from the ones the shipped data was made from.

The source: ``stardist/data/images/img2d.tif`` (512x512 uint16 fluorescence image of stained nuclei)
and ``mask2d.tif`` (uint16 instance ids, 125 nuclei, ids up to 183), a training image of the 2018 Data
Science Bowl (image set BBBC038v1, Caicedo et al., Nature Methods 2019) as redistributed in stardist
(BSD-3-Clause). It is fluorescence microscopy, not H&E: the demo exercises the instance pipeline on
real, expertly delineated nuclei, not the stain a histology model will see.

What the script does:

1. image -> 8-bit: ``(x - p1) / (p99.8 - p1)`` with the 1st and 99.8th percentiles of the whole image
   (numpy's default linear interpolation), clipped to [0, 1], times 255, rounded; the grey value is
   copied into R, G and B (the dataset layout stores RGB tiles);
2. classes: ``background`` (0) and ``nucleus`` (1, the only thing class); ``masks/`` is 1 where
   ``mask2d.tif`` has a nucleus; ``instances/`` keeps the source ids (not renumbered, so an object can
   be traced back to ``mask2d.tif``);
3. four disjoint 256x256 quadrants. Nuclei cut by the quadrant borders stay in each quadrant as the
   partial objects they are (meta.json lists how many per quadrant); the quadrants can be put back
   together into the full 512x512 image and instance map exactly;
4. held out: the quadrant whose number of nuclei (objects with at least one pixel) is closest to the
   mean over the four quadrants (ties: the first in tl, tr, bl, br order); it is listed in both
   ``val.txt`` and ``test.txt``, the other three in ``train.txt``.

It also measures how many nuclei a window of 128 and of 256 px holds, over every window position in
the full image (stride 1; an object counts when at least one of its pixels is inside), and records
the distribution in meta.json (``nuclei_per_window``): the number of queries of an instance model
must exceed the maximum.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from uniseg.datasets.converters.common import LayoutWriter  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "data" / "nuclei"

CLASSES = ("background", "nucleus")
PALETTE = ((0, 0, 0), (86, 180, 233))
TILE = 256
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.8
WINDOWS = (128, 256)
WHEEL_DIR = "stardist/data/images"
#: file -> SHA-256 of the stardist 0.9.2 copies the shipped data was made from
SOURCE_SHA256 = {
    "img2d.tif": "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
    "mask2d.tif": "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
}
#: stem -> (top, left)
QUADRANTS: Dict[str, Tuple[int, int]] = {
    "nuclei_tl": (0, 0), "nuclei_tr": (0, TILE), "nuclei_bl": (TILE, 0), "nuclei_br": (TILE, TILE),
}
SOURCE = ("stardist 0.9.2 stardist/data/images/img2d.tif + mask2d.tif: a training image of the 2018 Data Science "
          "Bowl (image set BBBC038v1, Broad Bioimage Benchmark Collection; Caicedo et al., Nature Methods 16, 2019)")
LICENCE = ("redistributed from stardist 0.9.2 (BSD-3-Clause, Copyright (c) 2018-2025, Uwe Schmidt, Martin Weigert; "
           "notice in data/nuclei/README.md); the Data Science Bowl 2018 data were released under CC0")


def read_source(source: Path) -> Dict[str, bytes]:
    """The bytes of img2d.tif and mask2d.tif from the wheel or folder ``source``, checked by SHA-256."""
    source = Path(source)
    found: Dict[str, bytes] = {}
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise ValueError(f"{source}: not a wheel (zip) file; give the stardist 0.9.2 wheel or a folder with "
                             f"img2d.tif and mask2d.tif")
        with zipfile.ZipFile(source) as wheel:
            for name in SOURCE_SHA256:
                try:
                    found[name] = wheel.read(f"{WHEEL_DIR}/{name}")
                except KeyError:
                    raise ValueError(f"{source}: has no {WHEEL_DIR}/{name}") from None
    elif source.is_dir():
        for name in SOURCE_SHA256:
            hits = sorted(source.rglob(name))
            if not hits:
                raise ValueError(f"{source}: no {name} anywhere below this folder")
            if len(hits) > 1:
                raise ValueError(f"{source}: several {name} files: {[str(h) for h in hits]}")
            found[name] = hits[0].read_bytes()
    else:
        raise ValueError(f"{source}: no such file or folder")
    for name, data in found.items():
        digest = hashlib.sha256(data).hexdigest()
        if digest != SOURCE_SHA256[name]:
            raise ValueError(f"{source}: {name} has SHA-256 {digest}, expected {SOURCE_SHA256[name]} (stardist 0.9.2)")
    return found


def decode(found: Dict[str, bytes]) -> Tuple[np.ndarray, np.ndarray]:
    import tifffile

    image = tifffile.imread(io.BytesIO(found["img2d.tif"]))
    ids = tifffile.imread(io.BytesIO(found["mask2d.tif"]))
    if image.shape != (2 * TILE, 2 * TILE) or ids.shape != image.shape or ids.dtype.kind not in "ui":
        raise ValueError(f"img2d.tif {image.dtype} {image.shape} / mask2d.tif {ids.dtype} {ids.shape}: expected two "
                         f"512x512 single-channel images with integer ids in the mask")
    return image, ids


def to_rgb8(image: np.ndarray) -> Tuple[np.ndarray, Dict[str, float]]:
    """Percentile normalisation to 8 bits, grey copied into three channels."""
    low, high = (float(v) for v in np.percentile(image.astype(np.float64), [LOW_PERCENTILE, HIGH_PERCENTILE]))
    scaled = np.clip((image.astype(np.float64) - low) / (high - low), 0.0, 1.0)
    grey = np.rint(scaled * 255.0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2), {f"p{LOW_PERCENTILE:g}": low, f"p{HIGH_PERCENTILE:g}": high}


def objects_in(ids: np.ndarray) -> np.ndarray:
    present = np.unique(ids)
    return present[present > 0]


def nuclei_per_window(ids: np.ndarray, window: int) -> np.ndarray:
    """Number of objects with at least one pixel in each ``window`` x ``window`` window (stride 1).

    Per object, an integral image of its mask gives its pixel count in every window at once.
    """
    height, width = ids.shape
    counts = np.zeros((height - window + 1, width - window + 1), np.int64)
    for k in objects_in(ids):
        integral = np.pad((ids == k).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        inside = (integral[window:, window:] - integral[:-window, window:] - integral[window:, :-window]
                  + integral[:-window, :-window])
        counts += inside > 0
    return counts


def window_statistics(ids: np.ndarray) -> Dict[str, Dict[str, float]]:
    stats = {}
    for window in WINDOWS:
        counts = nuclei_per_window(ids, window).ravel()
        stats[str(window)] = {"windows": int(counts.size), "min": int(counts.min()),
                              "mean": round(float(counts.mean()), 2), "median": float(np.median(counts)),
                              "p95": float(np.percentile(counts, 95)), "max": int(counts.max())}
    return stats


def choose_held_out(counts: Dict[str, int]) -> str:
    mean = sum(counts.values()) / len(counts)
    return min(counts, key=lambda stem: (abs(counts[stem] - mean), list(counts).index(stem)))


def write_demo(source: Path, out: Path = DEFAULT_OUT, overwrite: bool = False) -> Dict[str, Any]:
    """Build the demo dataset from ``source`` (wheel or folder) at ``out``; returns meta.json's content."""
    image, ids = decode(read_source(source))
    rgb, percentiles = to_rgb8(image)
    mask = (ids > 0).astype(np.uint8)
    windows = {stem: (slice(top, top + TILE), slice(left, left + TILE)) for stem, (top, left) in QUADRANTS.items()}
    counts = {stem: len(objects_in(ids[w])) for stem, w in windows.items()}
    partial = {stem: int(sum(np.count_nonzero(ids[w] == k) < np.count_nonzero(ids == k) for k in objects_in(ids[w])))
               for stem, w in windows.items()}
    held_out = choose_held_out(counts)
    train = [stem for stem in QUADRANTS if stem != held_out]
    with LayoutWriter(out, CLASSES, PALETTE, overwrite=overwrite, thing_classes=("nucleus",)) as writer:
        for stem, window in windows.items():
            writer.add(stem, rgb[window], mask[window], source=f"mask2d.tif quadrant {stem}", instances=ids[window])
        return writer.finish(
            {"train": train, "val": [held_out], "test": [held_out]}, mpp=None, source=SOURCE,
            converter="tools/make_nuclei_demo_data.py", licence=LICENCE,
            modality="fluorescence microscopy (stained nuclei), not H&E",
            labels="expert instance annotations of the 2018 Data Science Bowl, as shipped in stardist",
            normalisation=(f"8-bit: (x - p{LOW_PERCENTILE:g}) / (p{HIGH_PERCENTILE:g} - p{LOW_PERCENTILE:g}) over the "
                           f"whole image, clipped to [0, 1], x255, rounded; grey copied to R, G, B"),
            percentiles=percentiles,
            quadrants={stem: {"top": t, "left": x, "size": TILE} for stem, (t, x) in QUADRANTS.items()},
            nuclei_per_quadrant=counts, partial_nuclei_per_quadrant=partial,
            held_out_rule="the quadrant whose nucleus count is closest to the mean of the four (ties: tl, tr, bl, br)",
            source_nuclei=int(len(objects_in(ids))), source_sha256=SOURCE_SHA256,
            nuclei_per_window=window_statistics(ids),
            regenerate="python tools/make_nuclei_demo_data.py <stardist-0.9.2 wheel or folder> --overwrite",
        )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate data/nuclei/ from stardist 0.9.2's img2d/mask2d.tif.")
    parser.add_argument("source", type=Path, help="stardist-0.9.2 wheel (.whl) or a folder holding img2d.tif and "
                                                  "mask2d.tif")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    args = parser.parse_args(argv)
    try:
        meta = write_demo(args.source, args.out, overwrite=args.overwrite)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {meta['split_counts']}, nuclei per quadrant {meta['nuclei_per_quadrant']}")
    for window, stats in meta["nuclei_per_window"].items():
        print(f"nuclei per {window}x{window} window: {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
