from .mask2former_head import UniMask2FormerHead

__all__ = ["UniMask2FormerHead"]
