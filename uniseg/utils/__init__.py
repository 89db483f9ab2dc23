from .atomic import atomic_output, atomic_output_dir
from .imageio import IMAGE_SUFFIXES, ImageReadError, read_label, read_rgb
from .palette import default_palette, resolve_palette
from .typing_utils import PathLike

__all__ = [
    "atomic_output", "atomic_output_dir", "IMAGE_SUFFIXES", "ImageReadError", "read_label", "read_rgb",
    "default_palette", "resolve_palette", "PathLike",
]
