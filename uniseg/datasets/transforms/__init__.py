"""Data transforms for histology: albumentations pipelines, HED stain jitter, resolution resampling.

Importing this package registers ``Albumentations`` and ``ResampleToMPP`` in mmseg's
``TRANSFORMS`` registry; ``HEDJitter`` is an albumentations transform used inside
``Albumentations``.
"""
from .albu import ALBU_EXTRA_TRANSFORMS, Albumentations, build_albu_transform
# instance transforms: registered in mmdet's TRANSFORMS, for mmdet-scoped instance configs
from .instances import InstanceMapToTargets, LoadInstanceAnnotations, PackInstanceInputs, instance_boxes
from .resample import ResampleToMPP, resize_nearest
from .stain import HED_STAIN_VECTORS, HEDJitter, hed_to_rgb, jitter_hed, rgb_to_hed

__all__ = [
    "ALBU_EXTRA_TRANSFORMS",
    "Albumentations",
    "HEDJitter",
    "HED_STAIN_VECTORS",
    "InstanceMapToTargets",
    "LoadInstanceAnnotations",
    "PackInstanceInputs",
    "ResampleToMPP",
    "build_albu_transform",
    "hed_to_rgb",
    "instance_boxes",
    "jitter_hed",
    "resize_nearest",
    "rgb_to_hed",
]
