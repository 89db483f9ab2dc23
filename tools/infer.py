#!/usr/bin/env python
"""Segment images, ROIs and whole slides with a trained uniseg model, streaming large inputs to disk.

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] --out DIR \\
        [--formats png tiff geojson overlay probs] [--region x,y,w,h] [--allow-partial] [--level L | --mpp M] \\
        [--tile 512] [--stride 384] [--batch-size 4] [--window cosine] [--tissue-threshold 0.05]

Tile and stride default to the config's sliding-window test settings; a slide with known microns per
pixel is read at the encoder's working resolution (UNI: 0.5 um/px).

The outputs of each input appear together, `<stem>_summary.json` last: a summary means its set is
complete. Inputs whose outputs would share a name (same file stem) are refused before any work.
A failing input (unreadable, or outputs that cannot be written) is reported and skipped; the
others are still segmented, and the exit status is 1. Invalid options exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from uniseg.export.build import SINK_FORMATS  # noqa: E402
from uniseg.inference.options import check_segment_options  # noqa: E402
from uniseg.inference.tiling import DEFAULT_WINDOW, WINDOWS  # noqa: E402


def _pair(text: str):
    """'N' or 'H,W' (or 'HxW') as integers; their range is checked with the other options."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or H,W (integers), got {text!r}")
    return tuple(parts * 2 if len(parts) == 1 else parts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="PNG/JPEG/TIFF images, pyramidal TIFF/SVS slides")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--formats", nargs="+", default=["png", "overlay"], choices=sorted(SINK_FORMATS),
                   help="outputs: png (indexed, small ROIs), tiff (pyramidal label mask), geojson (QuPath), "
                        "overlay (preview), probs (per-class uint8 maps)")
    p.add_argument("--region", help="x,y,w,h in level-0 pixels (default: the whole image)")
    p.add_argument("--allow-partial", action="store_true",
                   help="let --region extend beyond the slide; the outside is read as white")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--level", type=int, help="read this pyramid level (>= 0) as it is")
    res.add_argument("--mpp", type=float, help="resample to this many microns per pixel (> 0)")
    p.add_argument("--slide-mpp", type=float, help="override the input's microns per pixel at level 0 (> 0)")
    p.add_argument("--tile", type=_pair, help="window size, N or H,W (default: the config's crop_size)")
    p.add_argument("--stride", type=_pair, help="window step, N or H,W, at most the tile (default: the config's "
                                                "stride)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (>= 1)")
    p.add_argument("--window", choices=WINDOWS, default=DEFAULT_WINDOW,
                   help=f"blending of overlapping windows (default {DEFAULT_WINDOW}: down-weights window borders, so "
                        f"no seams; uniform = mmseg's average, as in tools/test.py)")
    p.add_argument("--tissue-threshold", type=float, default=None,
                   help="skip windows with less tissue than this fraction in [0, 1] (labelled background)")
    p.add_argument("--simplify", type=float, default=None,
                   help="GeoJSON polygon simplification tolerance, in output pixels (>= 0; default 0: exact)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--no-progress", action="store_true")
    return p


def _segment_options(args: argparse.Namespace) -> dict:
    """segment_file's keyword arguments from the command line."""
    export_options = {}
    if args.simplify is not None:
        export_options["geojson"] = {"simplify_tolerance": args.simplify}
    return dict(formats=args.formats, region=args.region, level=args.level, target_mpp=args.mpp,
                slide_mpp=args.slide_mpp, tile=args.tile, stride=args.stride, batch_size=args.batch_size,
                window=args.window, tissue_threshold=args.tissue_threshold, export_options=export_options)


def parse_args(argv=None, parser: argparse.ArgumentParser = None) -> argparse.Namespace:
    """Parse and check the options (argparse errors, exit status 2), before any model is loaded."""
    from uniseg.inference.api import check_distinct_stems

    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if args.simplify is not None and "geojson" not in args.formats:
        parser.error("--simplify applies to the GeoJSON output only: add geojson to --formats")
    try:
        check_segment_options(**_segment_options(args))
        args.stems = check_distinct_stems(args.inputs, args.region)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_args(argv, parser)
    from uniseg.inference.api import default_device, load_segmentor, segment_file

    try:
        segmentor = load_segmentor(args.config, args.checkpoint, device=args.device or default_device())
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = _segment_options(args)
    try:  # now with the config's tile and stride where the command line gave none
        check_segment_options(**options, default_tile=segmentor.tile, default_stride=segmentor.stride)
    except ValueError as exc:
        parser.error(str(exc))
    failures = 0
    for path in args.inputs:
        try:
            summary = segment_file(segmentor, path, args.out, progress=not args.no_progress,
                                   amp=args.amp, allow_partial=args.allow_partial, **options)
        except (OSError, ValueError) as exc:  # unreadable input, unwritable output, input-specific option
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        print(f"{path}: {summary['size'][0]} x {summary['size'][1]} px at "
              f"{summary['mpp'] or 'native'} um/px, {summary['tiles']} windows in {summary['seconds']} s")
        for output in summary["outputs"]:
            print(f"  wrote {output}")
    if failures:
        print(f"{failures} of {len(args.inputs)} input(s) failed (errors above)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
