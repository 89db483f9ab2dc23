"""Per-iteration torch seeding so that a resumed run continues the random stream of the original.

mmengine restores weights, optimizer, schedulers and the iteration on resume and replays the data
loader (so augmentation randomness in workers, and in the main process, repeats), but torch's global
generator, which drop path, dropout and Mask2Former's point sampling draw from, restarts from the
seed. Seeding torch at every iteration from (seed, rank, iteration) makes iteration ``k`` draw the same
numbers whether the run got there directly or through a kill and ``--resume``.
"""
from __future__ import annotations

from typing import Optional

import torch
from mmdet.registry import HOOKS as MMDET_HOOKS
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

__all__ = ["IterationSeedHook"]


@MMDET_HOOKS.register_module()
@HOOKS.register_module()
class IterationSeedHook(Hook):
    priority = "VERY_HIGH"

    def __init__(self, seed: Optional[int] = None):
        self.seed = seed

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        base = self.seed if self.seed is not None else (runner.seed if runner.seed is not None else 0)
        # Distinct, reproducible streams per rank and iteration (64-bit mix, kept positive for manual_seed).
        torch.manual_seed((base * 1_000_003 + get_rank() * 7_919 + runner.iter * 104_729) % (2 ** 63))
