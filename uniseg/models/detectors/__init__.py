from .sliding_mask2former import UniMask2Former

__all__ = ["UniMask2Former"]
