"""uniseg: UNI + ViT-Adapter + Mask2Former for histopathology segmentation."""
from .version import __version__

__all__ = ["__version__"]
