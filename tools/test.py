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

from uniseg.engine.launch import build_runner_config, init_distributed, parse_cfg_options  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a uniseg segmentor on the config's test set.")
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file (from tools/train.py)")
    parser.add_argument("--work-dir", help="folder for the evaluation log and metrics")
    parser.add_argument("--show-dir", help="save prediction overlays (image | ground truth | prediction) here")
    parser.add_argument("--out", help="save predicted label masks (PNG) here")
    parser.add_argument("--amp", nargs="?", const="auto", choices=["auto", "bf16", "fp16"], default=None,
                        help="run inference under autocast")
    parser.add_argument("--cfg-options", nargs="+", action=parse_cfg_options, default={},
                        help="override config entries, e.g. model.test_cfg.mode=whole")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if not Path(args.checkpoint).is_file():
        sys.exit(f"error: {args.checkpoint}: checkpoint not found")
    from mmengine.runner import Runner

    from uniseg.engine.launch import resolve_amp_dtype

    cfg = build_runner_config(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options,
                              launcher=args.launcher)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        cfg.default_hooks.visualization.update(type="SegVisualizationHook", draw=True, interval=1)
        cfg.visualizer.save_dir = args.show_dir  # LocalVisBackend writes <show_dir>/vis_data/vis_image/*.png
    if args.out:
        cfg.test_evaluator["output_dir"] = args.out
        cfg.test_evaluator["keep_results"] = True
    if args.amp:
        cfg.setdefault("test_cfg", dict(type="TestLoop"))
        cfg.test_cfg["fp16"] = resolve_amp_dtype(args.amp) == "float16"
    init_distributed(args.launcher)
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    print_summary(metrics)


def print_summary(metrics: dict) -> None:
    keys = [k for k in ("mIoU", "mDice", "aAcc", "mAcc") if k in metrics]
    if keys:
        print("summary: " + "  ".join(f"{k} {metrics[k]:.2f}" for k in keys))


if __name__ == "__main__":
    main()
