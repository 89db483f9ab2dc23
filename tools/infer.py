#!/usr/bin/env python
"""Segment images, ROIs and whole slides with a trained uniseg model, streaming large inputs to disk.

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] --out DIR \\
        [--formats ...] [--region x,y,w,h] [--allow-partial] [--level L | --mpp M] \\
        [--tile 512] [--stride 384] [--batch-size 4] [--tissue-threshold 0.05] [semantic or cell options] \\
        [--force] [--launcher none|pytorch|slurm]

The config decides what is written. A semantic segmentation config (mmseg, a class per pixel)
writes masks: png, tiff, geojson (QuPath annotations), overlay, probs; `<stem>_summary.json`. An
instance config (an mmdet Mask2Former whose model.test_cfg.instance_on is True) writes cells, each
kept once across overlapping windows: geojson (QuPath detections), csv / parquet (one row per
cell), tiff (uint32 cell-id image); `<stem>_cells_summary.json`. Options of the other kind of model
are refused.

Tile and stride default to the config's sliding-window test settings (semantic) or to its crop_size
and 3/4 of it (cells); a slide with known microns per pixel is read at the encoder's
working resolution (UNI: 0.5 um/px).

An INPUT is an image or slide, a quoted glob pattern ('slides/*.svs'; sorted; one that matches nothing
is an error) or a manifest: a .txt file (a slide path a line, # comments) or a .csv file with a header:
path (required), region (x,y,w,h), mpp (the slide's um/px at level 0), name (output name instead of
the file stem), tissue_mask (this slide's mask, as --tissue-mask; it applies even with
--no-tissue-detection); empty cells keep the command line's setting; relative paths are relative to the
manifest's folder. A malformed manifest is an error naming its file and line (status 2); a missing
slide or mask file fails that slide only.

The outputs of each input appear together, the summary last: a summary means its set is complete.
Inputs whose outputs would share a name (same file stem) are refused before any work. A rerun of the
same command skips inputs whose outputs are complete and were made with the same config, weights and
output-changing options, a tissue mask's content included (a fingerprint in the summary), and redoes
the rest; --force redoes all. A failing input (unreadable, region outside the slide, missing tissue
mask, outputs that cannot be written) is reported and skipped (with a manifest, pattern or launcher
also recorded as <stem>_error.json); the others are still segmented, and the exit status is 1.
Invalid options, configs and checkpoints exit with status 2. With a manifest, a pattern or a
launcher, cohort.csv in --out has one row per input: status, error, size, areas, windows, seconds.

Many GPUs: bash tools/dist_infer.sh CONFIG CHECKPOINT GPUS INPUT... --out DIR (torchrun) or
tools/slurm_infer.sh; inputs are shared among the processes, largest file first.
"""
from __future__ import annotations

import argparse
import inspect
import os
import signal
import sys
import traceback
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
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="PNG/JPEG/TIFF images, pyramidal TIFF/SVS slides, quoted glob patterns, or manifests "
                        "(.txt: a path a line; .csv: columns path, region, mpp, name, tissue_mask)")
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
    tissue = p.add_argument_group(
        "tissue", "before any window is read, tissue is found on a low-resolution overview (Otsu on saturation, "
                  "about 8 um/px); windows that touch none are never read (background; no cells). The summary "
                  "reports the tissue area and <name>_tissue.png shows the outline and the windows run")
    tissue_source = tissue.add_mutually_exclusive_group()
    tissue_source.add_argument("--tissue-mask", metavar="PATH",
                               help="segment where this mask says instead of detecting tissue: a binary image (any "
                                    "size, stretched over the slide; non-zero = segment) or a GeoJSON of regions in "
                                    "level-0 pixels (QuPath's annotation export); per slide: a manifest's "
                                    "tissue_mask column")
    tissue_source.add_argument("--no-tissue-detection", dest="tissue_detection", action="store_false",
                               help="run every window")
    tissue.add_argument("--tissue-min-fraction", type=float, default=0.0,
                        help="run a window only when the tissue mask covers at least this fraction of it, in [0, 1] "
                             "(default 0: any tissue)")
    tissue.add_argument("--tissue-threshold", type=float, default=None,
                        help="also skip a window read whose own pixels hold less tissue than this fraction in [0, 1] "
                             "(a full-resolution test after reading it)")
    p.add_argument("--workers", type=int, default=None,
                   help="threads reading windows ahead of the model, plus one writing the outputs (>= 0; 0: all in "
                        "one thread; default: the CPU count - 1, at most 4); results are the same")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="segment every input again, even those whose outputs an earlier run completed with the "
                        "same config, weights and options (default: skip them)")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none",
                   help="one process per GPU, inputs shared among them: pytorch (torchrun, tools/dist_infer.sh) "
                        "or slurm (tools/slurm_infer.sh)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)

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
                tissue_mask=args.tissue_mask, tissue_detection=args.tissue_detection,
                tissue_min_fraction=args.tissue_min_fraction,
                score_thr=args.score_thr, min_visible=args.min_visible, max_per_window=args.max_per_window,
                duplicate_overlap=args.duplicate_overlap, edge_width=args.edge_width, border_cells=args.border_cells,
                num_workers=args.workers)


def parse_args(argv=None, parser: argparse.ArgumentParser = None) -> argparse.Namespace:
    """Parse and check the options that are wrong for any config (argparse errors, exit status 2),
    before the config is read or any model is loaded."""
    from uniseg.inference.cohort import expand_inputs

    parser = parser or build_parser()
    args = parser.parse_args(argv)
    try:
        check_segment_options(**_segment_options(args))
        args.jobs = expand_inputs(args.inputs, args.region, args.slide_mpp, args.tissue_mask)
    except ValueError as exc:  # a bad option or manifest, an INPUT pattern matching nothing, two equal names
        parser.error(str(exc))
    args.cohort = args.launcher != "none" or any(job.source != "command line" for job in args.jobs)
    return args


def _print_result(path: str, summary: dict) -> None:
    where = f"{summary['size'][0]} x {summary['size'][1]} px at {summary['mpp'] or 'native'} um/px"
    if summary["task"] == "cells":
        print(f"{path}: {where}, {summary['cells']} cells ({summary['duplicates_dropped']} duplicates and "
              f"{summary['fragments_dropped']} fragments dropped), {summary['windows']} windows in "
              f"{summary['seconds']} s")
    else:
        print(f"{path}: {where}, {summary['tiles']} windows in {summary['seconds']} s")
    outside = summary.get("windows_outside_tissue")
    if outside:
        area = summary.get("tissue_area_mm2")
        print(f"  {outside} windows without tissue were not read" + (f" (tissue {area} mm2)" if area else ""))
    for output in summary["outputs"]:
        print(f"  wrote {output}")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from uniseg.inference.api import config_task, read_config, window_defaults

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
    from uniseg.inference.ranks import finish, gather, init_ranks

    try:
        ranks = init_ranks(args.launcher)
    except (RuntimeError, KeyError, ValueError) as exc:  # no process group to join (missing variables, no GPU)
        print(f"error: --launcher {args.launcher}: {exc}", file=sys.stderr)
        return 2
    try:
        mine = _segment_share(args, cfg, task, options, ranks)
        everyone = gather(ranks, mine)
        return _conclude(args, task, everyone, ranks)
    finally:
        finish(ranks)


def _segment_share(args: argparse.Namespace, cfg, task: str, options: dict, ranks) -> dict:
    """Load the model and segment this rank's share of the inputs; what happened to each, for the others."""
    from uniseg.engine.checkpoint import CheckpointError
    from uniseg.inference.api import default_device, load_segmentor, prepare_output_folder, segment_file
    from uniseg.inference.cohort import shard
    from uniseg.inference.ranks import kill_hook_count
    from uniseg.inference.resume import clear_failure, config_digest, fingerprint, record_failure, slide_state

    status, errors = {}, {}
    share = [args.jobs[i] for i in shard(args.jobs, ranks.world_size)[ranks.rank]]
    try:
        segmentor = load_segmentor(cfg, args.checkpoint, device=args.device or ranks.device or default_device())
    except (FileNotFoundError, ValueError, CheckpointError) as exc:  # a wrong model never runs
        print(f"error: {exc}", file=sys.stderr)
        return dict(fatal=str(exc), status=status, errors=errors)
    config_sha = config_digest(cfg)
    fingerprints = {job.name: fingerprint(config_sha, segmentor.checkpoint_digest, _job_options(args, options, job))
                    for job in args.jobs}
    try:  # once per rank: complete the commits of killed runs before judging what is complete
        prepare_output_folder(args.out)
    except OSError:
        pass  # each input below reports the folder's problem as its own failure
    kill_after = kill_hook_count()
    for job in share:
        expected = fingerprints[job.name]
        if not args.force and slide_state(args.out, job.name, task, job.path, expected).status == "complete":
            status[job.name] = "skipped-complete"
            clear_failure(args.out, job.name, task)
            print(f"{job.path}: skipped: complete ({job.name}, same model and settings)")
            continue
        try:
            if job.tissue_mask is not None and not os.path.isfile(job.tissue_mask):  # may be drawn before a rerun
                raise FileNotFoundError(f"{job.tissue_mask}: no such file (the tissue mask of {job.path}, "
                                        f"{job.source})")
            summary = segment_file(segmentor, job.path, args.out, progress=not args.no_progress, amp=args.amp,
                                   allow_partial=args.allow_partial, name=job.name, fingerprint=expected,
                                   **_slide_options(options, job))
        except Exception as exc:  # this input fails; the others are still segmented
            expected_kind = isinstance(exc, (OSError, ValueError))  # unreadable input, unwritable output, region
            message = str(exc) if expected_kind else f"{job.path}: {type(exc).__name__}: {exc}"
            print(f"error: {message}" if expected_kind else traceback.format_exc(), file=sys.stderr, end="\n")
            status[job.name], errors[job.name] = "failed", message
            try:  # for the cohort table, which finds it even if this run is killed later
                if args.cohort:
                    record_failure(args.out, job.name, task, job.path, message, expected)
            except OSError:
                pass  # the folder cannot take it (the message above already says why)
            continue
        clear_failure(args.out, job.name, task)
        status[job.name] = "done"
        _print_result(job.path, summary)
        if kill_after is not None and sum(s == "done" for s in status.values()) >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook (uniseg.inference.ranks.kill_hook_count)
    return dict(fatal=None, status=status, errors=errors, fingerprints=fingerprints, classes=segmentor.classes)


def _slide_options(options: dict, job) -> dict:
    """segment_file's options for one input: the command line's, with the input's own region, mpp and mask.

    A slide's own mask (a manifest's tissue_mask) applies even under --no-tissue-detection, as its other
    columns override the command line.
    """
    return dict(options, region=job.region, slide_mpp=job.mpp, tissue_mask=job.tissue_mask,
                tissue_detection=options["tissue_detection"] or job.tissue_mask is not None)


def _job_options(args: argparse.Namespace, options: dict, job) -> dict:
    """Everything that decides one input's outputs, for its fingerprint (see uniseg.inference.resume),
    the mask's content included: a redrawn mask under the same name must redo the slide."""
    from uniseg.inference.resume import file_digest

    given = _slide_options(options, job)
    if given["tissue_mask"] is not None:
        given["tissue_mask_sha256"] = file_digest(given["tissue_mask"])
    return dict(given, amp=args.amp, allow_partial=args.allow_partial)


def _conclude(args: argparse.Namespace, task: str, everyone: list, ranks) -> int:
    """Exit status, the same on every rank (2: a rank could not load the model; 1: an input failed), and on
    rank 0 the cohort table."""
    from uniseg.inference.cohort_table import cohort_rows, write_cohort_table

    status = {name: s for part in everyone for name, s in part["status"].items()}
    errors = {name: e for part in everyone for name, e in part["errors"].items()}
    fatal = any(part["fatal"] for part in everyone)
    failures = sum(s == "failed" for s in status.values())
    table_error = None
    loaded = next((part for part in everyone if not part["fatal"]), None)
    if ranks.rank == 0 and args.cohort and loaded is not None:
        rows = cohort_rows(args.jobs, args.out, task, loaded["fingerprints"], status, errors)
        try:
            path = write_cohort_table(args.out, rows, task, loaded["classes"])
            print(f"cohort table: {path}")
        except OSError as exc:
            table_error = f"{args.out}: cannot write the cohort table ({exc.strerror or exc})"
            print(f"error: {table_error}", file=sys.stderr)
    if ranks.rank == 0 and failures:
        print(f"{failures} of {len(args.jobs)} input(s) failed (errors above)", file=sys.stderr)
    return 2 if fatal else 1 if failures or table_error else 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_args(argv, parser)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))  # launchers that pass --local_rank (as train.py)
    from uniseg.engine.hooks import flush_denormal

    with flush_denormal():  # process state: set by the tool for its own work, and restored after it
        return run(args, parser)


if __name__ == "__main__":
    sys.exit(main())
