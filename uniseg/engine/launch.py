"""Turning a config file plus command-line switches into the config mmengine's Runner gets.

Shared by ``tools/train.py`` and ``tools/test.py`` so that both resolve work dirs, mixed precision,
the distributed backend and the wrapper (DDP or FSDP) the same way.
"""
from __future__ import annotations

import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config, DictAction

__all__ = ["add_launch_args", "build_runner", "build_runner_config", "init_distributed", "parse_cfg_options",
           "resolve_amp_dtype", "schedule_overrides"]

parse_cfg_options = DictAction


def add_launch_args(parser) -> None:
    """Options every runner tool shares: mixed precision, config overrides, the distributed launcher."""
    parser.add_argument("--amp", nargs="?", const="auto", choices=["auto", "bf16", "fp16"], default=None,
                        help="automatic mixed precision (auto: bf16 where supported, else fp16)")
    parser.add_argument("--cfg-options", nargs="+", action=parse_cfg_options, default={},
                        help="override config entries, e.g. train_cfg.max_iters=1000 model.backbone.with_cp=True")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)


def resolve_amp_dtype(amp: str) -> str:
    """``auto`` -> bfloat16 where the device supports it (CPU, Ampere+ GPUs), else float16."""
    if amp == "auto":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return "float16"
        return "bfloat16"
    return {"bf16": "bfloat16", "fp16": "float16"}[amp]


def build_runner_config(config: str, work_dir: Optional[str] = None, cfg_options: Optional[dict] = None,
                        launcher: str = "none", amp: Optional[str] = None, resume: Optional[str] = None,
                        strategy: str = "ddp", auto_scale_lr: bool = False) -> Config:
    if not osp.isfile(config):
        raise FileNotFoundError(f"{config}: config file not found")
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get("work_dir") or osp.join("./work_dirs", osp.splitext(osp.basename(config))[0])

    # NCCL needs GPUs; gloo lets the same config run distributed on CPUs (and in CI).
    if not torch.cuda.is_available():
        cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"

    if amp:
        wrapper = cfg.optim_wrapper
        if wrapper.get("type", "OptimWrapper") != "OptimWrapper":
            raise ValueError(f"--amp: optim_wrapper.type is {wrapper.type!r}; set it to OptimWrapper or drop --amp")
        dtype = resolve_amp_dtype(amp)
        if dtype == "bfloat16":
            wrapper.type = "BF16OptimWrapper"  # autocast only: bf16 needs no loss scaling, and runs on CPUs
        else:
            if not torch.cuda.is_available():
                raise ValueError("--amp fp16 needs a GPU; use --amp bf16 on CPUs")
            wrapper.type = "AmpOptimWrapper"
            wrapper.dtype = dtype
            wrapper.loss_scale = "dynamic"

    if resume:
        cfg.resume = True
        cfg.load_from = None if resume == "auto" else resume

    distributed = launcher != "none"
    if strategy == "ddp" and distributed and not torch.cuda.is_available():
        # mmengine passes device_ids=[LOCAL_RANK], which DDP rejects for CPU modules.
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False,
                                     find_unused_parameters=cfg.get("find_unused_parameters", False))
    if strategy == "fsdp":
        # Sharded training runs under mmengine's FlexibleRunner (uniseg's subclass, which loads checkpoints
        # as UnisegRunner does) with uniseg's FSDP2 strategy (torch's fully_shard: GPUs with NCCL, CPUs with gloo).
        cfg.strategy = dict(type="FSDP2Strategy")
        cfg.runner_type = "UnisegFlexibleRunner"
    elif strategy != "ddp":
        raise ValueError(f"unknown strategy {strategy!r}: use ddp or fsdp")

    if auto_scale_lr:
        if "auto_scale_lr" not in cfg or "base_batch_size" not in cfg.auto_scale_lr:
            raise ValueError("--auto-scale-lr needs auto_scale_lr = dict(base_batch_size=...) in the config")
        cfg.auto_scale_lr.enable = True
    return cfg


def init_distributed(launcher: str, backend: str = "gloo", **kwargs) -> None:
    """Start the process group for CPU-only distributed runs before mmengine tries to.

    mmengine's launchers call ``torch.cuda.set_device`` unconditionally, which fails on machines without
    GPUs; with a group already initialised, the Runner skips its own initialisation. ``kwargs`` go to
    ``init_process_group`` (e.g. ``timeout``).
    """
    import os

    import torch.distributed as dist

    if launcher == "none" or torch.cuda.is_available() or dist.is_initialized():
        return
    if launcher != "pytorch":
        raise RuntimeError(f"--launcher {launcher} without GPUs is not supported; use torchrun (--launcher pytorch)")
    dist.init_process_group(backend=backend, rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                            **kwargs)


def build_runner(cfg: Config):
    """The runner the config asks for (``runner_type``, as mmengine's own tools build it), else mmengine's Runner."""
    from mmengine.runner import Runner
    from mmseg.registry import RUNNERS

    if "runner_type" in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def schedule_overrides(iters: int, warmup: int = 50) -> list:
    """``--cfg-options`` that shorten a warm-up + poly schedule (the demo configs') to ``iters`` iterations.

    The warm-up keeps its length but never takes more than half the run, so a short smoke run
    (``--iters 4``) still has a valid schedule (mmengine refuses a scheduler whose end precedes its begin).
    """
    if iters < 2:
        raise ValueError(f"--iters must be at least 2, got {iters}")
    warm = min(warmup, iters // 2)
    return [f"train_cfg.max_iters={iters}", f"param_scheduler.0.end={warm}", f"param_scheduler.1.begin={warm}",
            f"param_scheduler.1.end={iters}"]
