"""Segmenting files with a trained uniseg model: load once, then regions of slides to disk.

``load_segmentor`` builds the model from its config, loads the fine-tuned checkpoint and settles the
kind of model (:func:`config_task`), class names, palette, window and working resolution.
``segment_file`` opens an image or slide, plans the region at the working resolution and streams it
through the model into the requested export sinks, then writes a JSON summary:

* a semantic model (mmseg): :class:`SlidingWindowInferencer` -> masks (:data:`~uniseg.export.SINK_FORMATS`),
  summary ``<stem>_summary.json``;
* an instance model (mmdet Mask2Former with ``test_cfg.instance_on``): :class:`CellStitcher` with
  :class:`Mask2FormerCellPredictor` -> cells (:data:`~uniseg.export.cells.CELL_SINK_FORMATS`),
  summary ``<stem>_cells_summary.json``; the two sets of one slide can share a folder.

Either way the outputs of one input appear together, the summary last, or not at all (see
:func:`segment_file`).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from torch import nn

from ..utils.atomic import OutputWriteError, PendingFile, publish_together, recover_folder
from ..utils.palette import resolve_palette
from .options import DEFAULT_FORMATS, check_pair, check_segment_options, default_num_workers, format_table
from .tiling import DEFAULT_WINDOW
from .tissue import DEFAULT_MIN_FRACTION
from .window_plan import TissueOptions, plan_windows, thumbnail_name

__all__ = ["Segmentor", "load_segmentor", "read_config", "config_task", "window_defaults", "segment_file",
           "output_stem", "check_distinct_stems", "check_distinct_names", "prepare_output_folder", "summary_name",
           "CELL_TILE", "CELL_STRIDE_FRACTION"]

#: window of a cell model whose config has no ``crop_size``
CELL_TILE = 512
#: default stride of a cell model as a fraction of its tile (the overlap, a quarter of the tile, must
#: exceed the largest cell for each cell to be seen whole by some window: 128 px = 64 um at 0.5 um/px)
CELL_STRIDE_FRACTION = 0.75

#: the detectors whose instance output the cell predictor reads
_INSTANCE_MODELS = ("UniMask2Former", "Mask2Former", "MaskFormer")  # uniseg's, then mmdet's


@dataclass
class Segmentor:
    """A loaded model with what inference needs to know about it.

    ``task`` is ``'semantic'`` (an mmseg segmentor: masks) or ``'cells'`` (an mmdet Mask2Former in
    instance mode: cells; ``classes`` are then its thing classes). ``window_sources`` says where the
    default ``tile`` and ``stride`` come from (for messages).
    """

    model: nn.Module
    classes: Tuple[str, ...]
    palette: List[Tuple[int, int, int]]
    tile: Tuple[int, int]
    stride: Tuple[int, int]
    working_mpp: Optional[float]   # resolution the encoder expects (UNI: 0.5 um/px)
    config_path: str
    task: str = "semantic"
    window_sources: Tuple[str, str] = ("the config's test_cfg.crop_size", "the config's test_cfg.stride")
    checkpoint_digest: Optional[str] = None  # SHA-256 of the weights (the checkpoint's recorded checksum)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_config(config: str, cfg_options: Optional[dict] = None):
    """The mmengine ``Config`` of ``config`` with ``cfg_options`` merged (a missing file names itself)."""
    from mmengine.config import Config

    if not os.path.isfile(config):
        raise FileNotFoundError(f"{config}: config file not found")
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def config_task(cfg, config: str = "") -> str:
    """``'cells'`` for a Mask2Former/MaskFormer detector (uniseg's or mmdet's) whose ``model.test_cfg.instance_on``
    is set, else ``'semantic'``.

    This is how ``tools/infer.py`` chooses what to write: the config, not a flag, says what the
    model predicts.
    """
    model = cfg.get("model") or {}
    test_cfg = model.get("test_cfg") or {}
    if not test_cfg.get("instance_on", False):
        return "semantic"
    kind = str(model.get("type", "")).split(".")[-1]
    if kind not in _INSTANCE_MODELS:
        raise ValueError(f"{config or 'the config'}: model.test_cfg.instance_on is set, but cells are read from "
                         f"{' or '.join(_INSTANCE_MODELS)} only, not from {model.get('type')!r}")
    return "cells"


def _class_names(cfg, checkpoint_meta: Mapping, config: str, task: str) -> Tuple[Tuple[str, ...], Optional[list]]:
    """Class names (for cells: the thing classes, the detector's labels) and palette.

    From the config's dataset ``metainfo``, else the checkpoint's ``dataset_meta`` (what the model
    was trained with), else the dataset's ``meta.json`` (as the datasets read it).
    """
    datasets = [(cfg.get(loader) or {}).get("dataset") or {}
                for loader in ("test_dataloader", "val_dataloader", "train_dataloader")]
    for dataset in datasets:
        metainfo = dataset.get("metainfo") or {}
        if metainfo.get("classes"):
            return tuple(metainfo["classes"]), metainfo.get("palette")
    dataset_meta = checkpoint_meta.get("dataset_meta") or {}
    if dataset_meta.get("classes"):
        return tuple(dataset_meta["classes"]), dataset_meta.get("palette")
    from ..datasets.histology import read_meta_json

    for dataset in datasets:
        root = dataset.get("data_root")
        meta = read_meta_json(root) if root else None
        if meta and meta.get("classes"):
            if task == "cells":
                from ..datasets.instances import resolve_thing_classes

                resolved = resolve_thing_classes(None, meta, root)
                return tuple(resolved["classes"]), resolved["palette"]
            return tuple(meta["classes"]), meta.get("palette")
    where = "test_dataloader.dataset.metainfo.classes" + (" (the thing classes)" if task == "cells" else "")
    raise ValueError(f"{config}: no class names: set {where} in the config (the checkpoint and the dataset's "
                     f"meta.json record none either)")


def _build_model(cfg, task: str) -> nn.Module:
    """Build ``cfg.model`` in the scope of its library: mmdet for instance models, mmseg otherwise.

    (An mmdet detector built in mmseg's scope fails: its parts, e.g. the fusion head, are mmdet's.)
    """
    if task == "cells":
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules as register_mmdet
        from mmengine.registry import DefaultScope

        register_mmdet(init_default_scope=False)
        with DefaultScope.overwrite_default_scope("mmdet"):
            return MODELS.build(cfg.model)
    from mmseg.registry import MODELS

    return MODELS.build(cfg.model)


def window_defaults(cfg, task: str) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[str, str]]:
    """Default tile, stride and where they come from.

    Semantic: the config's sliding-window test settings (mmseg ``test_cfg``). Cells: mmdet's test_cfg
    has no window, so the config's ``crop_size`` (the size the model was trained at) is the tile and
    :data:`CELL_STRIDE_FRACTION` of it the stride; without one, :data:`CELL_TILE`.
    """
    test_cfg = cfg.model.get("test_cfg") or {}
    if task == "semantic":
        if test_cfg.get("mode") == "slide":
            return tuple(test_cfg["crop_size"]), tuple(test_cfg["stride"]), (
                "the config's test_cfg.crop_size", "the config's test_cfg.stride")
        return (512, 512), (341, 341), ("uniseg's default 512 (the config's test_cfg is not mode='slide')",
                                        "uniseg's default 341")
    crop = cfg.get("crop_size")
    tile, source = (check_pair("crop_size", crop), "the config's crop_size") if crop else (
        (CELL_TILE, CELL_TILE), f"uniseg's default {CELL_TILE} (the config has no crop_size)")
    stride = tuple(max(1, round(t * CELL_STRIDE_FRACTION)) for t in tile)
    return tile, stride, (source, f"{CELL_STRIDE_FRACTION:g} of the tile")


def load_segmentor(config: Union[str, Any], checkpoint: str, device: str = "cpu",
                   cfg_options: Optional[dict] = None) -> Segmentor:
    """Build the model of ``config`` and load ``checkpoint`` (a tools/train.py checkpoint) strictly.

    ``config`` is a file or a ``Config`` read by :func:`read_config`. Semantic (mmseg) and instance
    (mmdet Mask2Former, ``test_cfg.instance_on``) models load the same way: the checkpoint is read
    weights-only with its checksum verified and must fit the model exactly; any problem is a
    :class:`~uniseg.engine.checkpoint.CheckpointError` that names the file.
    """
    from mmseg.utils import register_all_modules

    import uniseg  # noqa: F401  (registers uniseg's modules)

    from ..engine.checkpoint import load_model_state, load_verified_checkpoint
    from ..models.backbones import get_encoder_spec

    if isinstance(config, (str, os.PathLike)):
        config = str(config)
        cfg = read_config(config, cfg_options)
    else:  # a Config already read (tools/infer.py reads it first to check the options): not changed here
        cfg = copy.deepcopy(config)
        config = str(cfg.filename)
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: checkpoint file not found")
    task = config_task(cfg, config)
    register_all_modules(init_default_scope=True)
    backbone = cfg.model.get("backbone", {})
    if "encoder_weights" in backbone:
        backbone["encoder_weights"] = None  # the fine-tuned checkpoint carries the encoder
    try:
        model = _build_model(cfg, task)
    except KeyError as exc:  # a type no registry of the model's scope knows
        raise ValueError(f"{config}: cannot build its model: {exc.args[0] if exc.args else exc}") from exc
    ckpt = load_verified_checkpoint(checkpoint, map_location="cpu")  # weights-only, checksum verified
    load_model_state(model, ckpt, checkpoint, strict=True)
    model.to(device).eval()
    weights_digest = _weights_digest(ckpt)

    classes, palette = _class_names(cfg, ckpt.get("meta", {}), config, task)
    if task == "cells":
        num_outputs = model.panoptic_fusion_head.num_things_classes
    else:
        num_outputs = getattr(model, "out_channels", len(classes))
    if num_outputs != len(classes):
        raise ValueError(f"{config}: {len(classes)} class names but the model predicts {num_outputs} classes")
    tile, stride, sources = window_defaults(cfg, task)
    encoder = backbone.get("encoder")
    working_mpp = get_encoder_spec(encoder).mpp if encoder else None
    return Segmentor(model, classes, resolve_palette(classes, palette), tile, stride, working_mpp, config, task,
                     sources, weights_digest)


def _weights_digest(ckpt: Mapping) -> str:
    """The SHA-256 of a loaded checkpoint's weights: the one recorded at writing (just verified against the
    tensors by the loader), computed here only for checkpoints written without one."""
    from ..engine.checkpoint import CHECKSUM_KEY, digest

    record = (ckpt.get("meta") or {}).get(CHECKSUM_KEY) or {}
    return record.get("state_dict") or digest(ckpt["state_dict"])


def summary_name(stem: str, task: str = "semantic") -> str:
    """File name of the summary of ``stem``'s outputs: ``<stem>_summary.json`` (masks) or
    ``<stem>_cells_summary.json`` (cells), so the two sets of one slide live side by side."""
    return f"{stem}_cells_summary.json" if task == "cells" else f"{stem}_summary.json"


def output_stem(path: str, region: Optional[str] = None) -> str:
    """The name every output of ``path`` (and ``region``) starts with: ``<file stem>[_x_y_w_h]``."""
    from ..io import parse_region

    roi = parse_region(region) if region else None
    stem = Path(path).stem
    return stem if roi is None else f"{stem}_{roi.x}_{roi.y}_{roi.w}_{roi.h}"


def check_distinct_stems(paths: Sequence[str], region: Optional[str] = None) -> Dict[str, str]:
    """Output stem of each input; two inputs with the same stem would overwrite each other's outputs.

    Raises ``ValueError`` naming both inputs and the shared stem (see :func:`check_distinct_names`).
    """
    stems = {path: output_stem(path, region) for path in paths}
    check_distinct_names([(path, output_stem(path, region)) for path in paths])
    return stems


def check_distinct_names(named: Sequence[Tuple[str, str]]) -> None:
    """Refuse two inputs (``(what, output name)`` pairs) whose outputs would have the same name.

    Names are compared ignoring case, as on case-insensitive file systems (macOS, Windows) they
    would be the same files. Raises ``ValueError`` naming both inputs and the shared name.
    """
    seen: Dict[str, str] = {}
    for what, name in named:
        key = name.casefold()
        if key in seen:
            raise ValueError(
                f"inputs {seen[key]} and {what} would both write outputs named {name}_* (the output name is "
                f"the input's file name without folder and extension, or a manifest's name column); segment "
                f"them into different --out folders (out_dir), or rename one")
        seen[key] = what


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


def _read_json_object(path: Path) -> Optional[dict]:
    """An earlier run's JSON record (a summary, an error record), or None when there is none or it cannot be
    read as one."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _earlier_outputs(out: Path, stem: str, keep: Sequence[Path], task: str) -> List[Path]:
    """Outputs that the summary of an earlier run for ``stem`` (and ``task``) lists and this run does not rewrite.

    Only names this stem's outputs of this task can have are considered (a hand-edited summary cannot
    make uniseg delete anything else, and a semantic run never deletes cells, nor the reverse); an
    unreadable summary lists nothing.
    """
    table, _ = format_table(task)
    earlier = _read_json_object(out / summary_name(stem, task))
    listed = earlier.get("outputs") if earlier else None
    if not isinstance(listed, list):
        return []
    listed = [Path(str(p)) for p in listed]
    names = [pattern.format(stem=stem) for pattern, _ in table.values()]
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


def _check_summary_owner(out: Path, stem: str, task: str, path: str) -> None:
    """Refuse to replace a set of the other task whose names meet this one's.

    A semantic input ``x_cells.png`` and a cell input ``x.png`` both name their summary (and GeoJSON)
    ``x_cells*``: segmenting one after the other into one folder would replace the first set's
    files with the second's. Re-running the same task replaces its own set, as documented.
    """
    summary_path = out / summary_name(stem, task)
    earlier = _read_json_object(summary_path)
    if earlier is None:
        return  # none, or unreadable: nothing to protect that can be told apart
    earlier_task = earlier.get("task", "semantic")
    if earlier_task != task:
        what = {"semantic": "mask", "cells": "cell"}
        raise OutputWriteError(
            f"{path}: {summary_path} is the summary of the {what.get(earlier_task, earlier_task)} outputs of "
            f"{earlier.get('input', 'another input')}; the {what.get(task, task)} outputs of this input have the "
            f"same names and would replace them. Write them to another --out folder (nothing was written)")


def segment_file(segmentor: Segmentor, path: str, out_dir: str, formats: Optional[Sequence[str]] = None,
                 region: Optional[str] = None, level: Optional[int] = None, target_mpp: Optional[float] = None,
                 slide_mpp: Optional[float] = None, tile: Optional[Tuple[int, int]] = None,
                 stride: Optional[Tuple[int, int]] = None, batch_size: int = 4, window: Optional[str] = None,
                 tissue_threshold: Optional[float] = None, amp: bool = False, progress: bool = True,
                 export_options: Optional[Dict[str, dict]] = None, allow_partial: bool = False, *,
                 score_thr: Optional[float] = None, min_visible: Optional[float] = None,
                 max_per_window: Optional[int] = None, duplicate_overlap: Optional[float] = None,
                 edge_width: Optional[int] = None, border_cells: Optional[str] = None,
                 num_workers: Optional[int] = None, name: Optional[str] = None,
                 fingerprint: Optional[str] = None, tissue_mask: Optional[str] = None, tissue_detection: bool = True,
                 tissue_min_fraction: float = DEFAULT_MIN_FRACTION) -> dict:
    """Segment one file (or one region of it) and write the requested outputs; returns the summary.

    ``name`` is the name every output starts with (default :func:`output_stem`); ``fingerprint`` is
    recorded in the summary (see :mod:`uniseg.inference.resume`: what a rerun compares to skip the input).

    Resolution: ``level`` reads a pyramid level as it is; ``target_mpp`` resamples to that resolution;
    by default a slide with known microns per pixel is read at the encoder's working resolution and an
    image without that metadata at its native resolution. ``allow_partial`` lets ``region`` extend
    beyond the slide (the outside is white). ``formats=None`` writes the task's
    :data:`~uniseg.inference.options.DEFAULT_FORMATS`.

    What runs follows ``segmentor.task``. Semantic models: ``window`` (default
    :data:`~uniseg.inference.tiling.DEFAULT_WINDOW`) blends overlapping windows; formats of
    :data:`~uniseg.export.SINK_FORMATS`. Cell models: :class:`~uniseg.inference.cell_stitching.CellStitcher`
    keeps every cell once; ``score_thr``, ``min_visible`` and ``max_per_window`` go to
    :class:`~uniseg.inference.cell_predictor.Mask2FormerCellPredictor` (``max_per_image``),
    ``duplicate_overlap``, ``edge_width`` and ``border_cells`` to the stitcher (``None``: their
    defaults); formats of :data:`~uniseg.export.cells.CELL_SINK_FORMATS`. An option of the other
    kind of model is a ``ValueError`` naming it. ``num_workers``: threads reading windows ahead of the
    model (plus one writing outputs); ``None``: :func:`~uniseg.inference.options.default_num_workers`.

    Outputs form one set per input and task: the summary (:func:`summary_name`) appears last and
    only when every other output is complete and in place (see
    :func:`uniseg.utils.atomic.publish_together`), and it lists them; a file of this stem that the
    summary does not list is not part of the set. Outputs that the previous summary for this stem
    listed and this run does not write (other formats) are deleted with the old set. On any error
    before that, nothing of this input is written and an earlier set is left as it was. Option
    errors are ``ValueError``; errors writing the outputs are
    :class:`~uniseg.utils.atomic.OutputWriteError` (an ``OSError``); errors reading the input are
    :class:`~uniseg.utils.imageio.ImageReadError` (also an ``OSError``).
    """
    from ..io import open_slide

    cell_options = dict(score_thr=score_thr, min_visible=min_visible, max_per_window=max_per_window,
                        duplicate_overlap=duplicate_overlap, edge_width=edge_width, border_cells=border_cells)
    check_segment_options(task=segmentor.task, config=segmentor.config_path, formats=formats, region=region,
                          level=level, target_mpp=target_mpp, slide_mpp=slide_mpp, tile=tile, stride=stride,
                          batch_size=batch_size, window=window, tissue_threshold=tissue_threshold,
                          export_options=export_options, default_tile=segmentor.tile,
                          default_stride=segmentor.stride, default_sources=segmentor.window_sources,
                          num_workers=num_workers, tissue_mask=tissue_mask, tissue_detection=tissue_detection,
                          tissue_min_fraction=tissue_min_fraction, **cell_options)
    tissue = TissueOptions(tissue_mask, tissue_detection, tissue_min_fraction)
    num_workers = default_num_workers() if num_workers is None else num_workers
    formats = DEFAULT_FORMATS[segmentor.task] if formats is None else formats
    tile, stride = check_pair("tile", tile) or segmentor.tile, check_pair("stride", stride) or segmentor.stride
    if segmentor.task == "cells":
        run = _cell_run(segmentor, tile, stride, batch_size, tissue_threshold, amp, num_workers, **cell_options)
    else:
        run = _semantic_run(segmentor, tile, stride, batch_size, window or DEFAULT_WINDOW, tissue_threshold, amp,
                            num_workers)
    with open_slide(Path(path), mpp=slide_mpp) as reader:  # an unreadable input fails before the folder is touched
        out = prepare_output_folder(out_dir)
        stem = name or output_stem(path, region)
        _check_summary_owner(out, stem, segmentor.task, path)
        summary, staged, summary_file, stale = _write_outputs(
            segmentor, reader, path, out, stem, formats, region, level, target_mpp, export_options, allow_partial,
            run, progress, fingerprint, (tile, stride, tissue))
    try:
        published = publish_together(staged, summary_file, stale)
    except OutputWriteError as exc:  # interrupted after the journal: completed at the next start
        raise OutputWriteError(f"{path}: {exc}") from exc
    except OSError as exc:  # before the journal: nothing changed (the temporaries are gone)
        raise OutputWriteError(f"{path}: cannot publish the outputs in {out} ({exc.strerror or exc}); nothing "
                               f"was written for this input and earlier outputs were left as they were") from exc
    summary["outputs"] = [str(p) for p in published]
    return summary


#: one task's work on an opened region: (source, opened sinks, progress, windows selected or None) -> the task's
#: summary fields
_Run = Callable[[Any, Sequence, bool, Any], dict]


def _semantic_run(segmentor: Segmentor, tile, stride, batch_size, window, tissue_threshold, amp,
                  num_workers: int = 0) -> _Run:
    """Class masks: the sliding-window inferencer, with class areas in the summary."""
    from .inferencer import SlidingWindowInferencer

    def run(source, sinks: Sequence, progress: bool, select) -> dict:
        inferencer = SlidingWindowInferencer(
            segmentor.model, segmentor.num_classes, tile=tile, stride=stride, batch_size=batch_size, window=window,
            tissue_threshold=tissue_threshold, amp=amp, num_workers=num_workers,
            with_probs=any(getattr(s, "requires_probs", False) for s in sinks))
        stats = inferencer.run(source, sinks, progress=progress, select=select)
        area = None if source.mpp is None else (source.mpp / 1000.0) ** 2  # mm^2 per output pixel
        return dict(
            tile=list(inferencer.tile), stride=list(inferencer.stride), window=window, tiles=stats.tiles,
            tiles_skipped=stats.tiles_skipped, seconds=round(stats.seconds, 3),
            tiles_per_second=round(stats.tiles_per_second, 3),
            classes={name: dict(pixels=n, area_mm2=None if area is None else round(n * area, 6))
                     for name, n in zip(segmentor.classes, stats.class_pixels)})

    return run


def _cell_run(segmentor: Segmentor, tile, stride, batch_size, tissue_threshold, amp, num_workers: int = 0,
              **options) -> _Run:
    """Cells: the instance model per window, stitched so that each cell is kept once (see :mod:`.cell_stitching`).

    Options that are ``None`` keep the defaults of the predictor and the stitcher; the summary
    records the values used.
    """
    from .cell_predictor import Mask2FormerCellPredictor
    from .cell_stitching import CellStitcher, cell_summary

    given = {name: value for name, value in options.items() if value is not None}
    predictor = Mask2FormerCellPredictor(
        segmentor.model, amp=amp, max_per_image=given.pop("max_per_window", None),
        **{name: given.pop(name) for name in ("score_thr", "min_visible") if name in given})
    stitcher = CellStitcher(predictor, tile=tile, stride=stride, batch_size=batch_size,
                            tissue_threshold=tissue_threshold, num_workers=num_workers, **given)

    def run(source, sinks: Sequence, progress: bool, select) -> dict:
        stats = stitcher.run(source, sinks, progress=progress, select=select)
        return dict(
            tile=list(stitcher.tile), stride=list(stitcher.stride), score_thr=predictor.score_thr,
            min_visible=predictor.min_visible, max_per_window=predictor.max_per_image,
            duplicate_overlap=stitcher.duplicate_overlap, edge_width=stitcher.edge_width,
            border_cells=stitcher.border_cells, tissue_threshold=tissue_threshold,
            **cell_summary(stats, segmentor.classes, source.mpp))

    return run


def _write_outputs(segmentor: Segmentor, reader, path: str, out: Path, stem: str, formats, region, level, target_mpp,
                   export_options, allow_partial, run: _Run, progress: bool, fingerprint: Optional[str],
                   windows: Tuple[Tuple[int, int], Tuple[int, int], TissueOptions]):
    """Segment and write every output under a temporary name, the summary included (the prepare phase).

    ``windows`` (tile, stride, tissue options) plans which windows are read (:func:`plan_windows`);
    the plan's thumbnail joins the outputs and its tissue figures the summary.

    Returns the summary, the finished outputs, the summary's file and the earlier outputs to delete;
    on any error every temporary is removed and nothing else changed.
    """
    from ..export import ExportContext, build_sinks
    from ..io import RegionSource, parse_region

    task = segmentor.task
    roi = parse_region(region) if region else None
    if level is None and target_mpp is None and reader.mpp is not None:
        target_mpp = segmentor.working_mpp
    source = RegionSource.open(reader, roi, target_mpp, level, allow_partial=allow_partial)
    width, height = source.size
    ctx = ExportContext(width=width, height=height, classes=segmentor.classes, palette=segmentor.palette,
                        origin=source.origin, scale=source.scale, mpp=source.mpp)
    table, kind = format_table(task)
    sinks = build_sinks(formats, out, stem, table=table, kind=kind, **(export_options or {}))
    opened: List = []
    extra: List[PendingFile] = []
    summary_file: Optional[PendingFile] = None
    try:
        plan = plan_windows(reader, source, *windows)  # before any window is read
        for sink in sinks:
            sink.open(ctx)
            opened.append(sink)
        fields = run(source, opened, progress, plan.select)
        for key, value in plan.summary_fields(source).items():  # cells measure their tissue area on the
            fields.setdefault(key, value)                          # pixels read: their densities' denominator
        staged = [pending for sink in opened for pending in sink.finish()]
        extra.append(plan.thumbnail(out / thumbnail_name(stem, task), reader, source))
        staged += extra
        summary = dict(
            task=task, input=str(path), config=segmentor.config_path, region=None if roi is None else str(roi),
            level=source.plan.level, mpp=source.mpp, origin=list(source.origin), scale=source.scale,
            size=[width, height], **fields, outputs=[str(pending.path) for pending in staged],
            finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        if fingerprint is not None:
            summary["fingerprint"] = fingerprint
        summary_path = out / summary_name(stem, task)
        try:
            summary_file = PendingFile(summary_path)
            summary_file.tmp.write_text(json.dumps(summary, indent=2))
        except OSError as exc:
            raise OutputWriteError(f"{summary_path}: cannot write this output ({exc.strerror or exc})") from exc
        stale = _earlier_outputs(out, stem, [pending.path for pending in staged], task)
    except OutputWriteError as exc:
        _discard(opened, summary_file, extra)
        raise OutputWriteError(f"{path}: {exc}; nothing was written for this input and earlier outputs in {out} "
                               f"were left as they were") from exc
    except BaseException:
        _discard(opened, summary_file, extra)
        raise
    return summary, staged, summary_file, stale


def _discard(sinks: Sequence, summary_file: Optional[PendingFile], extra: Sequence[PendingFile] = ()) -> None:
    for sink in sinks:
        sink.abort()
    for pending in extra:
        pending.discard()
    if summary_file is not None:
        summary_file.discard()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
