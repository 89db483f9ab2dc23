#!/usr/bin/env python
"""Segment images, ROIs and whole slides with a trained uniseg model, streaming large inputs to disk.

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] --out DIR \\
        [--formats ...] [--region x,y,w,h] [--allow-partial] [--level L | --mpp M] \\
        [--tile 512] [--stride 384] [--batch-size 4] [--tissue-threshold 0.05] [semantic or cell options]

The config decides what is written. A semantic segmentation config (mmseg, a class per pixel)
writes masks: png, tiff, geojson (QuPath annotations), overlay, probs; `<stem>_summary.json`. An
instance config (an mmdet Mask2Former whose model.test_cfg.instance_on is True) writes cells, each
kept once across overlapping windows: geojson (QuPath detections), csv / parquet (one row per
cell), tiff (uint32 cell-id image); `<stem>_cells_summary.json`. Options of the other kind of model
are refused.

Tile and stride default to the config's sliding-window test settings (semantic) or to its crop_size
and 3/4 of it (cells); a slide with known microns per pixel is read at the encoder's
working resolution (UNI: 0.5 um/px).

The outputs of each input appear together, the summary last: a summary means its set is complete.
Inputs whose outputs would share a name (same file stem) are refused before any work. A failing
input (unreadable, or outputs that cannot be written) is reported and skipped; the others are still
segmented, and the exit status is 1. Invalid options, configs and checkpoints exit with status 2.
"""
from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from uniseg.export.build import SINK_FORMATS  # noqa: E402
from uniseg.export.cells.build import CELL_SINK_FORMATS  # noqa: E402
from uniseg.inference.options import BORDER_CELLS, check_segment_options, check_task_options  # noqa: E402
from uniseg.inference.tiling import DEFAULT_WINDOW, WINDOWS  # noqa: E402

#: outputs when --formats is not given
CLI_FORMATS = {"semantic": ["png", "overlay"], "cells": ["geojson", "csv"]}


def _pair(text: str):
    """'N' or 'H,W' (or 'HxW') as integers; their range is checked with the other options."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or H,W (integers), got {text!r}")
    return tuple(parts * 2 if len(parts) == 1 else parts)


def _default(function, name: str):
    """The library's default of an argument, so that --help cannot drift from it."""
    return inspect.signature(function).parameters[name].default


def build_parser() -> argparse.ArgumentParser:
    from uniseg.inference.api import CELL_STRIDE_FRACTION, CELL_TILE
    from uniseg.inference.cell_predictor import Mask2FormerCellPredictor
    from uniseg.inference.cell_stitching import CellStitcher

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="model config: semantic (mmseg) or instance (mmdet Mask2Former with "
                                  "model.test_cfg.instance_on=True); it decides the outputs")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="PNG/JPEG/TIFF images, pyramidal TIFF/SVS slides")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--formats", nargs="+", default=None, choices=sorted(set(SINK_FORMATS) | set(CELL_SINK_FORMATS)),
                   help="semantic configs: png (indexed, small ROIs), tiff (pyramidal label mask), geojson (QuPath "
                        "annotations), overlay (preview), probs (per-class uint8 maps); default: png overlay. "
                        "Instance configs: geojson (QuPath detections), csv, parquet (one row per cell; parquet "
                        "needs pyarrow), tiff (pyramidal uint32 cell ids); default: geojson csv")
    p.add_argument("--region", help="x,y,w,h in level-0 pixels (default: the whole image)")
    p.add_argument("--allow-partial", action="store_true",
                   help="let --region extend beyond the slide; the outside is read as white")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--level", type=int, help="read this pyramid level (>= 0) as it is")
    res.add_argument("--mpp", type=float, help="resample to this many microns per pixel (> 0)")
    p.add_argument("--slide-mpp", type=float, help="override the input's microns per pixel at level 0 (> 0)")
    p.add_argument("--tile", type=_pair,
                   help=f"window size, N or H,W (default: semantic, the config's test_cfg.crop_size; cells, the "
                        f"config's crop_size, else {CELL_TILE})")
    p.add_argument("--stride", type=_pair,
                   help=f"window step, N or H,W, at most the tile (default: semantic, the config's test_cfg.stride; "
                        f"cells, {CELL_STRIDE_FRACTION:g} of the tile: the overlap, tile - stride, must exceed the "
                        f"largest cell)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (>= 1)")
    p.add_argument("--tissue-threshold", type=float, default=None,
                   help="skip windows with less tissue than this fraction in [0, 1] (labelled background; no cells)")
    p.add_argument("--workers", type=int, default=None,
                   help="threads reading windows ahead of the model, plus one writing the outputs (>= 0; 0: all in "
                        "one thread; default: the CPU count - 1, at most 4); results are the same")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--no-progress", action="store_true")

    sem = p.add_argument_group("semantic configs only")
    sem.add_argument("--window", choices=WINDOWS, default=None,
                     help=f"blending of overlapping windows (default {DEFAULT_WINDOW}: down-weights window borders, "
                          f"so no seams; uniform = mmseg's average, as in tools/test.py)")
    sem.add_argument("--simplify", type=float, default=None,
                     help="GeoJSON polygon simplification tolerance, in output pixels (>= 0; default 0: exact)")

    cells = p.add_argument_group("instance (cell) configs only")
    cells.add_argument("--score-thr", type=float, default=None,
                       help=f"ignore masks scoring below this, in [0, 1] (mmdet's score: class probability x mean mask "
                            f"probability; default {_default(Mask2FormerCellPredictor, 'score_thr')})")
    cells.add_argument("--min-visible", type=float, default=None,
                       help=f"drop a mask left with less than this fraction of its pixels once more confident masks "
                            f"of its window are painted, in (0, 1] (default "
                            f"{_default(Mask2FormerCellPredictor, 'min_visible')})")
    cells.add_argument("--max-per-window", type=int, default=None,
                       help="keep at most this many cells per window, the most confident (>= 1; default: all that "
                            "the config's test_cfg.max_per_image lets through)")
    cells.add_argument("--duplicate-overlap", type=float, default=None,
                       help=f"a cell of one window is the same cell as a kept cell of another window when either's "
                            f"centroid lies on the other or they share at least this fraction of the smaller one's "
                            f"pixels, in (0, 1] (default {_default(CellStitcher, 'duplicate_overlap')})")
    cells.add_argument("--edge-width", type=int, default=None,
                       help=f"a cell this close (pixels) to an inner window border may be cut by it and is taken "
                            f"from a window that holds it whole (>= 1; default {_default(CellStitcher, 'edge_width')}"
                            f": touching; raise it for models that stop short of the border)")
    cells.add_argument("--border-cells", choices=BORDER_CELLS, default=None,
                       help=f"cells cut by a window border that no window holds whole (larger than the overlap): "
                            f"keep them or drop them (default {_default(CellStitcher, 'border_cells')})")
    return p


def _segment_options(args: argparse.Namespace) -> dict:
    """segment_file's keyword arguments from the command line (None: not given)."""
    export_options = {}
    if args.simplify is not None:
        export_options["geojson"] = {"simplify_tolerance": args.simplify}
    return dict(formats=args.formats, region=args.region, level=args.level, target_mpp=args.mpp,
                slide_mpp=args.slide_mpp, tile=args.tile, stride=args.stride, batch_size=args.batch_size,
                window=args.window, tissue_threshold=args.tissue_threshold, export_options=export_options,
                score_thr=args.score_thr, min_visible=args.min_visible, max_per_window=args.max_per_window,
                duplicate_overlap=args.duplicate_overlap, edge_width=args.edge_width, border_cells=args.border_cells,
                num_workers=args.workers)


def parse_args(argv=None, parser: argparse.ArgumentParser = None) -> argparse.Namespace:
    """Parse and check the options that are wrong for any config (argparse errors, exit status 2),
    before the config is read or any model is loaded."""
    from uniseg.inference.api import check_distinct_stems

    parser = parser or build_parser()
    args = parser.parse_args(argv)
    try:
        check_segment_options(**_segment_options(args))
        args.stems = check_distinct_stems(args.inputs, args.region)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _print_result(path: str, summary: dict) -> None:
    where = f"{summary['size'][0]} x {summary['size'][1]} px at {summary['mpp'] or 'native'} um/px"
    if summary["task"] == "cells":
        print(f"{path}: {where}, {summary['cells']} cells ({summary['duplicates_dropped']} duplicates and "
              f"{summary['fragments_dropped']} fragments dropped), {summary['windows']} windows in "
              f"{summary['seconds']} s")
    else:
        print(f"{path}: {where}, {summary['tiles']} windows in {summary['seconds']} s")
    for output in summary["outputs"]:
        print(f"  wrote {output}")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from uniseg.engine.checkpoint import CheckpointError
    from uniseg.inference.api import (config_task, default_device, load_segmentor, read_config, segment_file,
                                      window_defaults)

    try:
        cfg = read_config(args.config)
        task = config_task(cfg, args.config)
        tile, stride, sources = window_defaults(cfg, task)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = _segment_options(args)
    if options["formats"] is None:
        options["formats"] = CLI_FORMATS[task]
    try:  # what depends on the config (the kind of model, its window), before any model is loaded
        check_task_options(task, args.config, simplify_tolerance=args.simplify)
        if args.simplify is not None and "geojson" not in options["formats"]:
            raise ValueError("--simplify applies to the GeoJSON output only: add geojson to --formats")
        check_segment_options(task=task, config=args.config, **options, default_tile=tile, default_stride=stride,
                              default_sources=sources)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        segmentor = load_segmentor(cfg, args.checkpoint, device=args.device or default_device())
    except (FileNotFoundError, ValueError, CheckpointError) as exc:  # a wrong model never runs
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failures = 0
    for path in args.inputs:
        try:
            summary = segment_file(segmentor, path, args.out, progress=not args.no_progress,
                                   amp=args.amp, allow_partial=args.allow_partial, **options)
        except (OSError, ValueError) as exc:  # unreadable input, unwritable output, input-specific option
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        _print_result(path, summary)
    if failures:
        print(f"{failures} of {len(args.inputs)} input(s) failed (errors above)", file=sys.stderr)
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_args(argv, parser)
    from uniseg.engine.hooks import flush_denormal

    with flush_denormal():  # process state: set by the tool for its own work, and restored after it
        return run(args, parser)


if __name__ == "__main__":
    sys.exit(main())
