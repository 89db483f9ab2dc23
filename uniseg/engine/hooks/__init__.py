from .class_count import ClassCountCheckHook
from .denormal import FlushDenormalHook, flush_denormal, flush_denormal_enabled
from .iteration_seed import IterationSeedHook

__all__ = ["ClassCountCheckHook", "FlushDenormalHook", "IterationSeedHook", "flush_denormal", "flush_denormal_enabled"]
