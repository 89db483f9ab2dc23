"""Training machinery: optimizer constructor, hooks, safe resumable checkpoints, launch helpers."""
from .checkpoint import install_safe_checkpointing
from .hooks import IterationSeedHook
from .optimizers import ViTLayerDecayOptimizerConstructor

install_safe_checkpointing()

__all__ = ["IterationSeedHook", "ViTLayerDecayOptimizerConstructor"]
