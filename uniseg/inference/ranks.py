"""Processes of a distributed inference run: torch.distributed started as training starts it.

``tools/infer.py --launcher pytorch`` (torchrun, ``tools/dist_infer.sh``) or ``--launcher slurm``
(``tools/slurm_infer.sh``) runs one process per GPU. With GPUs the group is mmengine's
(``mmengine.dist.init_dist``, NCCL, each rank on ``cuda:LOCAL_RANK``); without, uniseg's gloo group
(:func:`uniseg.engine.launch.init_distributed`, as for CPU training). Slides are shared statically
(:func:`uniseg.inference.cohort.shard`), so ranks exchange nothing while they work: they meet once, at
the end, to gather what each did (:func:`gather`), over a gloo group (small Python objects, and a rank
may wait there for hours while others finish their slides: hence the long timeout).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch

__all__ = ["Ranks", "init_ranks", "gather", "finish", "kill_hook_count", "WAIT_AT_END"]

#: how long a rank that finished its slides waits for the others
WAIT_AT_END = datetime.timedelta(days=7)


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    device: Optional[str] = None   # this rank's device when distributed on GPUs (cuda:LOCAL_RANK)
    group: Any = None              # the gloo group of the final exchange

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.group is not None


def init_ranks(launcher: str) -> Ranks:
    """Join the process group of ``launcher`` (``none``: a single process, nothing started)."""
    if launcher == "none":
        return Ranks()
    import torch.distributed as dist

    from ..engine.launch import init_distributed

    if torch.cuda.is_available():
        from mmengine.dist import init_dist

        if not dist.is_initialized():
            init_dist(launcher, backend="nccl", timeout=int(WAIT_AT_END.total_seconds()))
        device = f"cuda:{torch.cuda.current_device()}"  # set to LOCAL_RANK by init_dist
        group = dist.new_group(backend="gloo", timeout=WAIT_AT_END)
    else:
        init_distributed(launcher, timeout=WAIT_AT_END)
        device, group = None, dist.group.WORLD
    return Ranks(dist.get_rank(), dist.get_world_size(), device, group)


def gather(ranks: Ranks, value: Any) -> List[Any]:
    """Every rank's ``value``, in rank order, on every rank (the only exchange of a run)."""
    if not ranks.distributed:
        return [value]
    import torch.distributed as dist

    values: List[Any] = [None] * ranks.world_size
    dist.all_gather_object(values, value, group=ranks.group)
    return values


def finish(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()


def kill_hook_count() -> Optional[int]:
    """Test hook: ``UNISEG_INFER_TEST_KILL_AFTER=RANK:N`` makes rank RANK SIGKILL itself once it has
    completed N slides (how the tests kill a rank mid-run at a known point). Unset: ``None``."""
    spec = os.environ.get("UNISEG_INFER_TEST_KILL_AFTER")
    if not spec:
        return None
    rank, count = (int(v) for v in spec.split(":"))
    return count if rank == int(os.environ.get("RANK", "0")) else None
