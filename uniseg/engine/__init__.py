"""Training machinery: runners, hooks, optimizer constructor and wrappers, FSDP2, checkpoints, launch helpers.

Importing it only registers these in mmseg's registries; configs select them (``runner_type``,
``default_hooks``, ``optim_wrapper``, ``strategy``). Nothing in mmengine or torch is changed.
"""
from .hooks import IterationSeedHook, SafeCheckpointHook
from .optimizers import BF16OptimWrapper, ViTLayerDecayOptimizerConstructor
from .runners import UnisegFlexibleRunner, UnisegRunner
from .strategies import FSDP2Strategy, FullyShardedModel

__all__ = ["BF16OptimWrapper", "FSDP2Strategy", "FullyShardedModel", "IterationSeedHook", "SafeCheckpointHook",
           "UnisegFlexibleRunner", "UnisegRunner", "ViTLayerDecayOptimizerConstructor"]
