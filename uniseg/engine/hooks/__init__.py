from .class_count import ClassCountCheckHook
from .iteration_seed import IterationSeedHook

__all__ = ["ClassCountCheckHook", "IterationSeedHook"]
