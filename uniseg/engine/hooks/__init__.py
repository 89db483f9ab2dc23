from .iteration_seed import IterationSeedHook
from .safe_checkpoint import SafeCheckpointHook

__all__ = ["IterationSeedHook", "SafeCheckpointHook"]
