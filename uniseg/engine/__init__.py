"""Training machinery: optimizer constructor, hooks, safe resumable checkpoints, launch helpers."""
from .checkpoint import install_safe_checkpointing
from .hooks import IterationSeedHook
from .optimizers import BF16OptimWrapper, ViTLayerDecayOptimizerConstructor
from .strategies import FSDP2Strategy, FullyShardedModel

install_safe_checkpointing()

__all__ = ["BF16OptimWrapper", "FSDP2Strategy", "FullyShardedModel", "IterationSeedHook", "ViTLayerDecayOptimizerConstructor"]
