"""Segmenting files with a trained uniseg model: load once, then regions of slides to disk.

``load_segmentor`` builds the model from its config, loads the fine-tuned checkpoint and settles the
class names, palette, window and working resolution (from the config's test settings). ``segment_file``
opens an image or slide, plans the region at the working resolution, streams it through the
:class:`SlidingWindowInferencer` and into the requested export sinks, and writes a JSON summary. Every
output appears only when complete; on any error all of them are removed.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..utils.atomic import atomic_output
from ..utils.palette import resolve_palette
from .inferencer import SlidingWindowInferencer

__all__ = ["Segmentor", "load_segmentor", "segment_file"]


@dataclass
class Segmentor:
    """A loaded model with what inference needs to know about it."""

    model: nn.Module
    classes: Tuple[str, ...]
    palette: List[Tuple[int, int, int]]
    tile: Tuple[int, int]
    stride: Tuple[int, int]
    working_mpp: Optional[float]   # resolution the encoder expects (UNI: 0.5 um/px)
    config_path: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _class_names(cfg, checkpoint_meta: Mapping, config: str) -> Tuple[Tuple[str, ...], Optional[list]]:
    for loader in ("test_dataloader", "val_dataloader", "train_dataloader"):
        dataset = (cfg.get(loader) or {}).get("dataset") or {}
        metainfo = dataset.get("metainfo") or {}
        if metainfo.get("classes"):
            return tuple(metainfo["classes"]), metainfo.get("palette")
    dataset_meta = checkpoint_meta.get("dataset_meta") or {}
    if dataset_meta.get("classes"):
        return tuple(dataset_meta["classes"]), dataset_meta.get("palette")
    raise ValueError(f"{config}: no class names: set test_dataloader.dataset.metainfo.classes in the config "
                     f"(the checkpoint records none either)")


def load_segmentor(config: str, checkpoint: str, device: str = "cpu",
                   cfg_options: Optional[dict] = None) -> Segmentor:
    """Build the model of ``config`` and load ``checkpoint`` (a tools/train.py checkpoint) strictly."""
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import uniseg  # noqa: F401  (registers uniseg's modules)

    from ..engine.checkpoint import load_model_state, load_verified_checkpoint
    from ..models.backbones import get_encoder_spec

    if not os.path.isfile(config):
        raise FileNotFoundError(f"{config}: config file not found")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: checkpoint file not found")
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    backbone = cfg.model.get("backbone", {})
    if "encoder_weights" in backbone:
        backbone["encoder_weights"] = None  # the fine-tuned checkpoint carries the encoder
    model = MODELS.build(cfg.model)
    ckpt = load_verified_checkpoint(checkpoint, map_location="cpu")  # weights-only, checksum verified
    load_model_state(model, ckpt, checkpoint, strict=True)
    model.to(device).eval()

    classes, palette = _class_names(cfg, ckpt.get("meta", {}), config)
    num_outputs = getattr(model, "out_channels", len(classes))
    if num_outputs != len(classes):
        raise ValueError(f"{config}: {len(classes)} class names but the model predicts {num_outputs} classes")
    test_cfg = cfg.model.get("test_cfg") or {}
    if test_cfg.get("mode") == "slide":
        tile = tuple(test_cfg["crop_size"])
        stride = tuple(test_cfg["stride"])
    else:
        tile = (512, 512)
        stride = (341, 341)
    encoder = backbone.get("encoder")
    working_mpp = get_encoder_spec(encoder).mpp if encoder else None
    return Segmentor(model, classes, resolve_palette(classes, palette), tile, stride, working_mpp, config)


def _output_stem(path: Path, region) -> str:
    return path.stem if region is None else f"{path.stem}_{region.x}_{region.y}_{region.w}_{region.h}"


def segment_file(segmentor: Segmentor, path: str, out_dir: str, formats: Sequence[str] = ("png",),
                 region: Optional[str] = None, level: Optional[int] = None, target_mpp: Optional[float] = None,
                 slide_mpp: Optional[float] = None, tile: Optional[Tuple[int, int]] = None,
                 stride: Optional[Tuple[int, int]] = None, batch_size: int = 4, window: str = "uniform",
                 tissue_threshold: Optional[float] = None, amp: bool = False, progress: bool = True,
                 export_options: Optional[Dict[str, dict]] = None) -> dict:
    """Segment one file (or one region of it) and write the requested outputs; returns the summary.

    Resolution: ``level`` reads a pyramid level as it is; ``target_mpp`` resamples to that resolution;
    by default a slide with known microns per pixel is read at the encoder's working resolution and an
    image without that metadata at its native resolution.
    """
    from ..export import ExportContext, build_sinks
    from ..io import RegionSource, open_slide, parse_region

    src_path = Path(path)
    roi = parse_region(region) if region else None
    reader = open_slide(src_path, mpp=slide_mpp)
    try:
        if level is None and target_mpp is None and reader.mpp is not None:
            target_mpp = segmentor.working_mpp
        source = RegionSource.open(reader, roi, target_mpp, level)
        width, height = source.size
        ctx = ExportContext(width=width, height=height, classes=segmentor.classes, palette=segmentor.palette,
                            origin=source.origin, scale=source.scale, mpp=source.mpp)
        stem = _output_stem(src_path, roi)
        sinks = build_sinks(formats, out_dir, stem, **(export_options or {}))
        inferencer = SlidingWindowInferencer(
            segmentor.model, segmentor.num_classes, tile=tile or segmentor.tile, stride=stride or segmentor.stride,
            batch_size=batch_size, window=window, tissue_threshold=tissue_threshold, amp=amp,
            with_probs=any(getattr(s, "requires_probs", False) for s in sinks))
        opened = []
        try:
            for sink in sinks:
                sink.open(ctx)
                opened.append(sink)
            stats = inferencer.run(source, opened, progress=progress)
            outputs = [str(p) for sink in opened for p in sink.close()]
        except BaseException:
            for sink in opened:
                sink.abort()
            raise
    finally:
        reader.close()

    area = None if source.mpp is None else (source.mpp / 1000.0) ** 2  # mm^2 per output pixel
    summary = dict(
        input=str(src_path), config=segmentor.config_path, region=None if roi is None else str(roi),
        level=source.plan.level, mpp=source.mpp, origin=list(source.origin), scale=source.scale,
        size=[width, height], tile=list(inferencer.tile), stride=list(inferencer.stride), window=window,
        tiles=stats.tiles, tiles_skipped=stats.tiles_skipped, seconds=round(stats.seconds, 3),
        tiles_per_second=round(stats.tiles_per_second, 3),
        classes={name: dict(pixels=n, area_mm2=None if area is None else round(n * area, 6))
                 for name, n in zip(segmentor.classes, stats.class_pixels)},
        outputs=outputs, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    summary_path = Path(out_dir) / f"{stem}_summary.json"
    with atomic_output(summary_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    summary["outputs"].append(str(summary_path))
    return summary


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
