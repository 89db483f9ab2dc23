"""Segmenting files with a trained uniseg model: load once, then regions of slides to disk.

``load_segmentor`` builds the model from its config, loads the fine-tuned checkpoint and settles the
class names, palette, window and working resolution (from the config's test settings). ``segment_file``
opens an image or slide, plans the region at the working resolution, streams it through the
:class:`SlidingWindowInferencer` and into the requested export sinks, and writes a JSON summary. The
outputs of one input appear together, the summary last, or not at all (see :func:`segment_file`).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from torch import nn

from ..utils.atomic import OutputWriteError, PendingFile, publish_together, recover_folder
from ..utils.palette import resolve_palette
from .inferencer import SlidingWindowInferencer
from .options import check_segment_options
from .tiling import DEFAULT_WINDOW

__all__ = ["Segmentor", "load_segmentor", "segment_file", "output_stem", "check_distinct_stems",
           "prepare_output_folder"]


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


def output_stem(path: str, region: Optional[str] = None) -> str:
    """The name every output of ``path`` (and ``region``) starts with: ``<file stem>[_x_y_w_h]``."""
    from ..io import parse_region

    roi = parse_region(region) if region else None
    stem = Path(path).stem
    return stem if roi is None else f"{stem}_{roi.x}_{roi.y}_{roi.w}_{roi.h}"


def check_distinct_stems(paths: Sequence[str], region: Optional[str] = None) -> Dict[str, str]:
    """Output stem of each input; two inputs with the same stem would overwrite each other's outputs.

    Names are compared ignoring case, as on case-insensitive file systems (macOS, Windows) they
    would be the same files. Raises ``ValueError`` naming both inputs and the shared stem.
    """
    stems: Dict[str, str] = {}
    seen: Dict[str, str] = {}
    for path in paths:
        stem = output_stem(path, region)
        key = stem.casefold()
        if key in seen:
            raise ValueError(
                f"inputs {seen[key]} and {path} would both write outputs named {stem}_* (the output name is "
                f"the input's file name without folder and extension); segment them into different --out "
                f"folders (out_dir), or rename one")
        seen[key] = path
        stems[path] = stem
    return stems


def prepare_output_folder(out_dir: str) -> Path:
    """Create the output folder if needed and finish what killed runs left in it (see :func:`recover_folder`)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputWriteError(f"{out}: the output folder (--out, out_dir) is an existing file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        notes = recover_folder(out)
    except OutputWriteError:
        raise
    except OSError as exc:
        raise OutputWriteError(f"{out}: cannot use this output folder (--out, out_dir): "
                               f"{exc.strerror or exc}") from exc
    for note in notes:
        print_log(note, logger="current", level=logging.WARNING)
    return out


def _earlier_outputs(out: Path, stem: str, keep: Sequence[Path]) -> List[Path]:
    """Outputs that the summary of an earlier run for ``stem`` lists and this run does not rewrite.

    Only names this stem's outputs can have are considered (a hand-edited summary cannot make
    uniseg delete anything else); an unreadable summary lists nothing.
    """
    from ..export.build import SINK_FORMATS

    try:
        listed = json.loads((out / f"{stem}_summary.json").read_text()).get("outputs", [])
        listed = [Path(str(p)) for p in listed]
    except (OSError, ValueError, AttributeError):
        return []
    names = [pattern.format(stem=stem) for pattern, _ in SINK_FORMATS.values()]
    folders = {name for name in names if not Path(name).suffix}  # outputs that are folders of files
    files = set(names) - folders
    keep = {p.resolve() for p in keep}
    stale = []
    for old in listed:
        if old.parent.name in folders:  # a file inside an output folder (per-class probability maps)
            candidate = out / old.parent.name / old.name
        elif old.name in files:
            candidate = out / old.name
        else:
            continue
        if candidate.is_file() and candidate.resolve() not in keep:
            stale.append(candidate)
    return stale


def segment_file(segmentor: Segmentor, path: str, out_dir: str, formats: Sequence[str] = ("png",),
                 region: Optional[str] = None, level: Optional[int] = None, target_mpp: Optional[float] = None,
                 slide_mpp: Optional[float] = None, tile: Optional[Tuple[int, int]] = None,
                 stride: Optional[Tuple[int, int]] = None, batch_size: int = 4, window: str = DEFAULT_WINDOW,
                 tissue_threshold: Optional[float] = None, amp: bool = False, progress: bool = True,
                 export_options: Optional[Dict[str, dict]] = None, allow_partial: bool = False) -> dict:
    """Segment one file (or one region of it) and write the requested outputs; returns the summary.

    Resolution: ``level`` reads a pyramid level as it is; ``target_mpp`` resamples to that resolution;
    by default a slide with known microns per pixel is read at the encoder's working resolution and an
    image without that metadata at its native resolution. ``allow_partial`` lets ``region`` extend
    beyond the slide (the outside is white).

    Outputs form one set per input: ``<stem>_summary.json`` appears last and only when every other
    output is complete and in place (see :func:`uniseg.utils.atomic.publish_together`), and it lists
    them; a file of this stem that the summary does not list is not part of the set. Outputs that the
    previous summary for this stem listed and this run does not write (other formats) are deleted
    with the old set. On any error before that, nothing of this input is written and an earlier set
    is left as it was. Option errors are ``ValueError``; errors writing the outputs are
    :class:`~uniseg.utils.atomic.OutputWriteError` (an ``OSError``); errors reading the input are
    :class:`~uniseg.utils.imageio.ImageReadError` (also an ``OSError``).
    """
    from ..io import open_slide

    check_segment_options(formats=formats, region=region, level=level, target_mpp=target_mpp,
                          slide_mpp=slide_mpp, tile=tile, stride=stride, batch_size=batch_size, window=window,
                          tissue_threshold=tissue_threshold, export_options=export_options,
                          default_tile=segmentor.tile, default_stride=segmentor.stride)
    with open_slide(Path(path), mpp=slide_mpp) as reader:  # an unreadable input fails before the folder is touched
        out = prepare_output_folder(out_dir)
        summary, staged, summary_file, stale = _write_outputs(
            segmentor, reader, path, out, formats, region, level, target_mpp, tile, stride, batch_size, window,
            tissue_threshold, amp, progress, export_options, allow_partial)
    try:
        published = publish_together(staged, summary_file, stale)
    except OutputWriteError as exc:  # interrupted after the journal: completed at the next start
        raise OutputWriteError(f"{path}: {exc}") from exc
    except OSError as exc:  # before the journal: nothing changed (the temporaries are gone)
        raise OutputWriteError(f"{path}: cannot publish the outputs in {out} ({exc.strerror or exc}); nothing "
                               f"was written for this input and earlier outputs were left as they were") from exc
    summary["outputs"] = [str(p) for p in published]
    return summary


def _write_outputs(segmentor: Segmentor, reader, path: str, out: Path, formats, region, level, target_mpp, tile,
                   stride, batch_size, window, tissue_threshold, amp, progress, export_options, allow_partial):
    """Segment and write every output under a temporary name, the summary included (the prepare phase).

    Returns the summary, the finished outputs, the summary's file and the earlier outputs to delete;
    on any error every temporary is removed and nothing else changed.
    """
    from ..export import ExportContext, build_sinks
    from ..io import RegionSource, parse_region

    roi = parse_region(region) if region else None
    if level is None and target_mpp is None and reader.mpp is not None:
        target_mpp = segmentor.working_mpp
    source = RegionSource.open(reader, roi, target_mpp, level, allow_partial=allow_partial)
    width, height = source.size
    ctx = ExportContext(width=width, height=height, classes=segmentor.classes, palette=segmentor.palette,
                        origin=source.origin, scale=source.scale, mpp=source.mpp)
    stem = output_stem(path, region)
    sinks = build_sinks(formats, out, stem, **(export_options or {}))
    inferencer = SlidingWindowInferencer(
        segmentor.model, segmentor.num_classes, tile=tile or segmentor.tile, stride=stride or segmentor.stride,
        batch_size=batch_size, window=window, tissue_threshold=tissue_threshold, amp=amp,
        with_probs=any(getattr(s, "requires_probs", False) for s in sinks))
    opened: List = []
    summary_file: Optional[PendingFile] = None
    try:
        for sink in sinks:
            sink.open(ctx)
            opened.append(sink)
        stats = inferencer.run(source, opened, progress=progress)
        staged = [pending for sink in opened for pending in sink.finish()]
        area = None if source.mpp is None else (source.mpp / 1000.0) ** 2  # mm^2 per output pixel
        summary = dict(
            input=str(path), config=segmentor.config_path, region=None if roi is None else str(roi),
            level=source.plan.level, mpp=source.mpp, origin=list(source.origin), scale=source.scale,
            size=[width, height], tile=list(inferencer.tile), stride=list(inferencer.stride), window=window,
            tiles=stats.tiles, tiles_skipped=stats.tiles_skipped, seconds=round(stats.seconds, 3),
            tiles_per_second=round(stats.tiles_per_second, 3),
            classes={name: dict(pixels=n, area_mm2=None if area is None else round(n * area, 6))
                     for name, n in zip(segmentor.classes, stats.class_pixels)},
            outputs=[str(pending.path) for pending in staged], finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        summary_path = out / f"{stem}_summary.json"
        try:
            summary_file = PendingFile(summary_path)
            summary_file.tmp.write_text(json.dumps(summary, indent=2))
        except OSError as exc:
            raise OutputWriteError(f"{summary_path}: cannot write this output ({exc.strerror or exc})") from exc
        stale = _earlier_outputs(out, stem, [pending.path for pending in staged])
    except OutputWriteError as exc:
        _discard(opened, summary_file)
        raise OutputWriteError(f"{path}: {exc}; nothing was written for this input and earlier outputs in {out} "
                               f"were left as they were") from exc
    except BaseException:
        _discard(opened, summary_file)
        raise
    return summary, staged, summary_file, stale


def _discard(sinks: Sequence, summary_file: Optional[PendingFile]) -> None:
    for sink in sinks:
        sink.abort()
    if summary_file is not None:
        summary_file.discard()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
