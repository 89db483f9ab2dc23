from .class_count import ClassCountCheckHook
from .denormal import FlushDenormalHook, flush_denormal, flush_denormal_enabled
from .iteration_seed import IterationSeedHook
from .safe_checkpoint import SafeCheckpointHook

__all__ = ["ClassCountCheckHook", "FlushDenormalHook", "IterationSeedHook", "SafeCheckpointHook", "flush_denormal",
           "flush_denormal_enabled"]
