#!/usr/bin/env python
"""Segment images, ROIs and whole slides with a trained uniseg model, streaming large inputs to disk.

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] --out DIR \\
        [--formats png tiff geojson overlay probs] [--region x,y,w,h] [--level L | --mpp M] \\
        [--tile 512] [--stride 384] [--batch-size 4] [--window cosine] [--tissue-threshold 0.05]

Tile and stride default to the config's sliding-window test settings; a slide with known microns per
pixel is read at the encoder's working resolution (UNI: 0.5 um/px).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from uniseg.export.build import SINK_FORMATS  # noqa: E402
from uniseg.inference.tiling import WINDOWS  # noqa: E402


def _pair(text: str):
    parts = [int(p) for p in text.replace("x", ",").split(",")]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected N or H,W with positive integers, got {text!r}")
    return tuple(parts)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="PNG/JPEG/TIFF images, pyramidal TIFF/SVS slides")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--formats", nargs="+", default=["png", "overlay"], choices=sorted(SINK_FORMATS),
                   help="outputs: png (indexed, small ROIs), tiff (pyramidal label mask), geojson (QuPath), "
                        "overlay (preview), probs (per-class uint8 maps)")
    p.add_argument("--region", help="x,y,w,h in level-0 pixels (default: the whole image)")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--level", type=int, help="read this pyramid level as it is")
    res.add_argument("--mpp", type=float, help="resample to this many microns per pixel")
    p.add_argument("--slide-mpp", type=float, help="override the input's microns per pixel (level 0)")
    p.add_argument("--tile", type=_pair, help="window size (default: the config's crop_size)")
    p.add_argument("--stride", type=_pair, help="window step (default: the config's stride)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--window", choices=WINDOWS, default="cosine",
                   help="blending of overlapping windows (uniform = mmseg's average)")
    p.add_argument("--tissue-threshold", type=float, default=None,
                   help="skip windows with less tissue than this fraction (labelled background)")
    p.add_argument("--simplify", type=float, default=0.0, help="GeoJSON polygon simplification, in pixels")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from uniseg.inference.api import default_device, load_segmentor, segment_file
    from uniseg.utils.imageio import ImageReadError

    try:
        segmentor = load_segmentor(args.config, args.checkpoint, device=args.device or default_device())
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    export_options = {"geojson": {"simplify_tolerance": args.simplify}} if "geojson" in args.formats else {}
    failures = 0
    for path in args.inputs:
        try:
            summary = segment_file(
                segmentor, path, args.out, formats=args.formats, region=args.region, level=args.level,
                target_mpp=args.mpp, slide_mpp=args.slide_mpp, tile=args.tile, stride=args.stride,
                batch_size=args.batch_size, window=args.window, tissue_threshold=args.tissue_threshold,
                amp=args.amp, progress=not args.no_progress, export_options=export_options)
        except (ImageReadError, ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        print(f"{path}: {summary['size'][0]} x {summary['size'][1]} px at "
              f"{summary['mpp'] or 'native'} um/px, {summary['tiles']} windows in {summary['seconds']} s")
        for output in summary["outputs"]:
            print(f"  wrote {output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
