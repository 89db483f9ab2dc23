"""uniseg: UNI + ViT-Adapter + Mask2Former for histopathology segmentation.

Importing the package registers its models, datasets, transforms and engine parts in mmseg's
registries, which is what ``custom_imports = dict(imports=['uniseg'])`` in a config relies on.
"""
from .version import __version__

from . import datasets, engine, models  # noqa: E402,F401  (registration side effects)
from . import evaluation  # noqa: E402,F401  (registers CellInstanceMetric in mmdet and mmseg METRICS)

__all__ = ["__version__"]
