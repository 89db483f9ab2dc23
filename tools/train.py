#!/usr/bin/env python
"""Train a uniseg model (mmengine runner): ``python tools/train.py CONFIG [--work-dir DIR] [--resume] ...``.

Multi-GPU: ``bash tools/dist_train.sh CONFIG GPUS`` (torchrun) or ``tools/slurm_train.sh``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from uniseg.engine.launch import add_launch_args, build_runner, build_runner_config, init_distributed  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fine-tune a uniseg segmentor.")
    parser.add_argument("config", help="config file")
    parser.add_argument("--work-dir", help="folder for logs and checkpoints (default: work_dirs/<config name>)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                        help="resume training: from the latest checkpoint in the work dir, or from CHECKPOINT")
    parser.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp",
                        help="distributed wrapper when launched with several processes")
    parser.add_argument("--auto-scale-lr", action="store_true", help="scale lr by total batch / base batch")
    add_launch_args(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    from uniseg.engine.checkpoint import CheckpointError

    cfg = build_runner_config(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options,
                              launcher=args.launcher, amp=args.amp, resume=args.resume,
                              strategy=args.strategy, auto_scale_lr=args.auto_scale_lr)
    init_distributed(args.launcher)
    runner = build_runner(cfg)
    try:
        runner.train()
    except CheckpointError as exc:  # unusable checkpoint to resume from, or a save that failed (disk full)
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
