from .fsdp2 import FSDP2Strategy, FullyShardedModel

__all__ = ["FSDP2Strategy", "FullyShardedModel"]
