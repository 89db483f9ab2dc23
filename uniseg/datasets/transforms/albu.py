"""Run an albumentations 2.x pipeline, described in an mmseg config, on image and label maps.

mmseg's own ``Albu`` wrapper maps only ``gt_seg_map``, leaves ``img_shape`` stale, hands BGR
images to colour transforms, pads labels with 0 (a real class) and leaves albumentations 2.x's
private random generators unseeded. This wrapper gets those right: every label map follows the
image (nearest interpolation, ignore-index padding), colour operations see RGB, seeded runs
repeat, and config mistakes are reported with the transform's position and name.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import random
from typing import Any, Dict, List, Sequence, Union

import albumentations as A
import cv2
import numpy as np
from albumentations.core.composition import BaseCompose
from albumentations.core.transforms_interface import BasicTransform
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS as MMDET_TRANSFORMS
from mmseg.registry import TRANSFORMS

from .seg_fields import seg_map_keys
from .stain import HEDJitter

__all__ = ["ALBU_EXTRA_TRANSFORMS", "Albumentations", "build_albu_transform"]

AlbuTransform = Union[BasicTransform, BaseCompose]

#: uniseg's own albumentations-compatible transforms, looked up by name before albumentations'
#: namespace. Add new ones here so configs can name them.
ALBU_EXTRA_TRANSFORMS: Dict[str, type] = {"HEDJitter": HEDJitter}


def _albu_class_names() -> List[str]:
    names = list(ALBU_EXTRA_TRANSFORMS)
    for name in dir(A):
        obj = getattr(A, name)
        if inspect.isclass(obj) and issubclass(obj, (BasicTransform, BaseCompose)):
            names.append(name)
    return names


def _resolve_type(type_: Any, where: str) -> type:
    if inspect.isclass(type_) and issubclass(type_, (BasicTransform, BaseCompose)):
        return type_
    if not isinstance(type_, str):
        raise ValueError(
            f"Albumentations: {where}: 'type' must be an albumentations class name or class, got {type_!r}"
        )
    if type_ in ALBU_EXTRA_TRANSFORMS:
        return ALBU_EXTRA_TRANSFORMS[type_]
    obj = getattr(A, type_, None)
    if inspect.isclass(obj) and issubclass(obj, (BasicTransform, BaseCompose)):
        return obj
    close = difflib.get_close_matches(type_, _albu_class_names(), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Albumentations: {where}: unknown transform type {type_!r}; expected an albumentations "
        f"{A.__version__} class name or one of uniseg's {sorted(ALBU_EXTRA_TRANSFORMS)}.{hint}"
    )


def _with_fill_defaults(cls: type, kwargs: Dict[str, Any], img_fill: float, mask_fill: float) -> None:
    """Make padding fill the ignore index in masks (and ``img_fill`` in images) unless configured.

    Only numeric library defaults are replaced: they mean "pad with this value". A ``None`` default
    (e.g. ``CoarseDropout.fill_mask``) means "leave the mask alone" and is kept. Dropout transforms
    (``MaskDropout``) are skipped: their fill is what a removed object turns into, not padding.
    """
    if "Dropout" in cls.__name__:
        return
    params = inspect.signature(cls.__init__).parameters
    for name, value in (("fill", img_fill), ("fill_mask", mask_fill)):
        param = params.get(name)
        if param is None or name in kwargs:
            continue
        if isinstance(param.default, (int, float)) and not isinstance(param.default, bool):
            kwargs[name] = value


def build_albu_transform(
    cfg: Union[Dict[str, Any], AlbuTransform],
    *,
    img_fill: float = 0,
    mask_fill: float = 255,
    where: str = "transform",
) -> AlbuTransform:
    """Build one albumentations transform (or ``OneOf``/``SomeOf``/``Sequential`` tree) from a dict.

    Args:
        cfg: ``dict(type=..., **kwargs)``; ``type`` is a class name from uniseg's
            :data:`ALBU_EXTRA_TRANSFORMS` or from ``albumentations``, or the class itself.
            Composition types take a ``transforms`` list of such dicts. Ready-made transform
            objects are passed through.
        img_fill: Image padding value used where the config does not give ``fill``.
        mask_fill: Label padding value used where the config does not give ``fill_mask``.
        where: Position in the config, used in error messages (e.g. ``transforms[2]``).

    Raises:
        ValueError: naming the position and transform, for an unknown type, unknown or missing
            arguments, or values albumentations rejects.
    """
    if isinstance(cfg, (BasicTransform, BaseCompose)):
        return cfg
    if not isinstance(cfg, dict):
        raise ValueError(f"Albumentations: {where}: expected a dict with a 'type' key, got {cfg!r}")
    if "type" not in cfg:
        raise ValueError(f"Albumentations: {where}: missing 'type' in {cfg!r}")
    kwargs = copy.deepcopy({k: v for k, v in cfg.items() if k != "type"})
    cls = _resolve_type(cfg["type"], where)
    name = cls.__name__

    if issubclass(cls, BaseCompose):
        children = kwargs.get("transforms")
        if not isinstance(children, (list, tuple)) or not children:
            raise ValueError(f"Albumentations: {where} ({name}): needs a non-empty 'transforms' list")
        kwargs["transforms"] = [
            build_albu_transform(child, img_fill=img_fill, mask_fill=mask_fill, where=f"{where}.transforms[{i}]")
            for i, child in enumerate(children)
        ]
    else:
        _with_fill_defaults(cls, kwargs, img_fill, mask_fill)

    try:
        inspect.signature(cls.__init__).bind(None, **kwargs)
    except TypeError as exc:
        given = sorted(k for k in cfg if k != "type")
        raise ValueError(f"Albumentations: {where} ({name}): {exc} (config gives {given})") from exc
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Albumentations: {where} ({name}): invalid arguments: {exc}") from exc


@MMDET_TRANSFORMS.register_module()
@TRANSFORMS.register_module()
class Albumentations(BaseTransform):
    """Apply an albumentations 2.x pipeline to ``img`` and every map in ``seg_fields``.

    Config example::

        dict(type='Albumentations', transforms=[
            dict(type='HorizontalFlip', p=0.5),
            dict(type='OneOf', transforms=[dict(type='GaussianBlur'), dict(type='MedianBlur')], p=0.2),
            dict(type='HEDJitter', sigma=0.05, bias=0.05, p=0.5),
            dict(type='RandomResizedCrop', size=(512, 512), scale=(0.5, 1.0), p=1.0)])

    Alignment: all seg maps go through albumentations as ``masks``, so every geometric transform
    applies the same parameters to them as to the image. The top-level ``Compose`` forces
    nearest interpolation for masks, and every transform with a padding ``fill_mask`` pads labels
    with ``seg_pad_val`` (the ignore index) unless the config says otherwise. ``img_shape`` (and
    ``pad_shape`` if present) are updated; ``scale_factor`` is not, since crops and warps have no
    single scale.

    Colour order: mmseg loads BGR by default. Colour transforms (``HEDJitter``, hue, RGB shifts)
    assume RGB, so 3-channel images are converted to RGB for the pipeline and back afterwards
    when ``channel_order='bgr'``.

    Seeding: albumentations 2.x transforms draw from their own ``numpy.random.Generator`` and
    ``random.Random``, never from the global RNGs, and create them once, at construction. Left
    alone, runs do not repeat and forked dataloader workers inherit copies of the same generator
    state, so they repeat each other's augmentations. ``Compose(seed=s)`` fixes the first problem
    but not the second, and (like ``Compose.set_random_seed(s)``) hands *each* child its own
    generator seeded with the same ``s``, so the children's draws are correlated (in 2.0.8,
    ``HorizontalFlip`` and ``VerticalFlip`` with equal ``p`` always fire together). Instead,
    each call draws a 32-bit seed from numpy's global RNG and installs
    one shared generator pair with ``Compose.set_random_state``, which passes the same objects
    down the whole tree. mmengine seeds numpy's global RNG in the main process
    (``randomness.seed``) and per dataloader worker (``worker_init_fn``: seed + worker id + rank
    offset), the same source mmcv's own random transforms use, so seeded runs repeat exactly and
    workers differ.

    Args:
        transforms: List of albumentations transform configs (see :func:`build_albu_transform`).
        channel_order: Channel order of ``results['img']``: ``'bgr'`` (mmseg default) or ``'rgb'``.
        seg_pad_val: Label value for pixels padded in by geometric transforms (ignore index).
        img_pad_val: Image value for padded pixels.
    """

    def __init__(
        self,
        transforms: Sequence[Union[Dict[str, Any], AlbuTransform]],
        channel_order: str = "bgr",
        seg_pad_val: int = 255,
        img_pad_val: float = 0,
    ) -> None:
        if not isinstance(transforms, (list, tuple)):
            raise ValueError(f"Albumentations: 'transforms' must be a list of dicts, got {type(transforms).__name__}")
        if channel_order not in ("bgr", "rgb"):
            raise ValueError(f"Albumentations: channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
        self.channel_order = channel_order
        self.seg_pad_val = seg_pad_val
        self.img_pad_val = img_pad_val
        self.transforms_cfg = copy.deepcopy(list(transforms))
        built = [
            build_albu_transform(cfg, img_fill=img_pad_val, mask_fill=seg_pad_val, where=f"transforms[{i}]")
            for i, cfg in enumerate(transforms)
        ]
        self.aug = A.Compose(built, mask_interpolation=cv2.INTER_NEAREST)

    def transform(self, results: Dict[str, Any]) -> Dict[str, Any]:
        img = results["img"]
        src = results.get("img_path", "<image>")
        seg_keys = seg_map_keys(results)
        segs = [results[k] for k in seg_keys]
        for key, seg in zip(seg_keys, segs):
            if seg.shape[:2] != img.shape[:2]:
                raise ValueError(
                    f"Albumentations: {src}: seg map {key!r} has shape {seg.shape[:2]} but the image has "
                    f"{img.shape[:2]}; they must match before augmentation"
                )

        swap = self.channel_order == "bgr" and img.ndim == 3 and img.shape[2] == 3
        if swap:
            img = img[..., ::-1]

        seed = int(np.random.randint(0, 2**32, dtype=np.int64))
        self.aug.set_random_state(np.random.default_rng(seed), random.Random(seed))
        data = {"image": np.ascontiguousarray(img)}
        if segs:
            data["masks"] = segs
        out = self.aug(**data)

        img = out["image"]
        if swap:
            img = img[..., ::-1]
        results["img"] = np.ascontiguousarray(img)
        for key, orig, seg in zip(seg_keys, segs, out.get("masks", [])):
            # albumentations stacks masks into one array, promoting dtypes; restore each one.
            results[key] = np.ascontiguousarray(np.asarray(seg).astype(orig.dtype, copy=False))
        results["img_shape"] = results["img"].shape[:2]
        if "pad_shape" in results:
            results["pad_shape"] = results["img"].shape[:2]
        return results

    def __repr__(self) -> str:
        names = [cfg.get("type") if isinstance(cfg, dict) else type(cfg).__name__ for cfg in self.transforms_cfg]
        return (
            f"{self.__class__.__name__}(transforms={names}, channel_order={self.channel_order!r}, "
            f"seg_pad_val={self.seg_pad_val}, img_pad_val={self.img_pad_val})"
        )
