from .iteration_seed import IterationSeedHook

__all__ = ["IterationSeedHook"]
