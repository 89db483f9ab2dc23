#!/usr/bin/env python
"""Evaluate a trained uniseg model: per-class IoU and Dice, mIoU, mDice (mmengine runner).

``python tools/test.py CONFIG CHECKPOINT [--show-dir DIR] [--out DIR]``; multi-GPU with ``tools/dist_test.sh``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from uniseg.engine.launch import add_launch_args, build_runner, build_runner_config, init_distributed  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a uniseg segmentor on the config's test set.")
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file (from tools/train.py)")
    parser.add_argument("--work-dir", help="folder for the evaluation log and metrics")
    parser.add_argument("--show-dir", help="save prediction overlays (image | ground truth | prediction) here")
    parser.add_argument("--out", help="save predictions here: label masks (PNG); for cell metrics each image's "
                        "cell ids (16-bit PNG) and cell table (<stem>_cells.csv)")
    add_launch_args(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if not Path(args.checkpoint).is_file():
        sys.exit(f"error: {args.checkpoint}: checkpoint not found")
    from uniseg.engine.checkpoint import CheckpointError

    cfg = build_runner_config(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options,
                              launcher=args.launcher)
    cfg.load_from = args.checkpoint
    cfg.setdefault("runner_type", "UnisegRunner")  # verified, strict loading even for configs from elsewhere
    cfg.load_from_strict = True  # metrics of a model the checkpoint does not fit are never printed
    if args.show_dir:
        # the config's own hook: SegVisualizationHook for segmentors, DetVisualizationHook for cell detectors
        visualization = cfg.default_hooks.setdefault("visualization", dict(type="SegVisualizationHook"))
        visualization.update(draw=True, interval=1)
        cfg.visualizer.save_dir = args.show_dir  # LocalVisBackend writes <show_dir>/vis_data/vis_image/*.png
    if args.out:
        # IoUMetric writes label PNGs (keep_results: from the predictions, not reduced to a format); CellInstanceMetric
        # writes each image's cells (id PNG + cell table)
        cfg.test_evaluator["output_dir"] = args.out
        if "CellInstanceMetric" not in str(cfg.test_evaluator.get("type")):
            cfg.test_evaluator["keep_results"] = True
    if args.amp:
        # mmengine's TestLoop autocasts to the device's default low precision: fp16 on GPUs, bf16 on CPUs.
        cfg.setdefault("test_cfg", dict(type="TestLoop"))
        cfg.test_cfg["fp16"] = True
    init_distributed(args.launcher)
    runner = build_runner(cfg)
    try:
        metrics = runner.test()
    except CheckpointError as exc:
        sys.exit(f"error: {exc}")
    print_summary(metrics)


def print_summary(metrics: dict) -> None:
    """One ``summary:`` line per metric family: pixel scores (mmseg's IoUMetric) and cell scores
    (CellInstanceMetric's ``cell/`` keys: panoptic quality, detection F1 and the object counts)."""
    keys = [k for k in ("mIoU", "mDice", "aAcc", "mAcc") if k in metrics]
    if keys:
        print("summary: " + "  ".join(f"{k} {metrics[k]:.2f}" for k in keys))
    cell = {k[len("cell/"):]: v for k, v in metrics.items() if k.startswith("cell/")}
    keys = [k for k in ("bPQ", "bDQ", "bSQ", "mPQ", "F1_d") if k in cell]
    if keys:
        counts = "".join(f"  {label} {int(cell[k])}" for k, label in (("num_gt", "objects_gt"),
                                                                      ("num_pred", "objects_pred")) if k in cell)
        print("summary: " + "  ".join(f"{k} {float(cell[k]):.2f}" for k in keys) + counts)


if __name__ == "__main__":
    main()
