from .atomic import atomic_output, atomic_output_dir
from .imageio import IMAGE_SUFFIXES, ImageReadError, read_label, read_rgb
from .palette import colorize, default_palette, resolve_palette

__all__ = [
    "atomic_output", "atomic_output_dir", "IMAGE_SUFFIXES", "ImageReadError", "read_label", "read_rgb",
    "colorize", "default_palette", "resolve_palette",
]
