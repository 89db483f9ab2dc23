"""Shared plumbing for the dataset converters: validation, the output layout, splits and meta.json.

Every converter turns a public dataset, as its users download it, into one layout that
:class:`uniseg.datasets.HistologySegDataset` reads::

    <out>/images/<stem>.png           RGB tile
    <out>/masks/<stem>.png            uint8 labels 0..K-1, 255 = ignore
    <out>/splits/{train,val,test}.txt one stem per line
    <out>/meta.json                   classes, palette, mpp, source, converter, ...
    <out>/instances/<stem>.png        (instance converters) 16-bit object ids, 0 = none; meta.json
                                      then also lists "thing_classes" (see uniseg.datasets.instances)

The whole output is produced inside :func:`uniseg.utils.atomic_output_dir`, so a converter that
meets a corrupt file half-way through a 7,000-image dataset leaves nothing at the destination
rather than a plausible-looking partial dataset that would silently train on a subset.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

import numpy as np

from uniseg.utils.atomic import atomic_output_dir
from uniseg.utils.palette import Color, resolve_palette
from uniseg.utils.typing_utils import PathLike

IGNORE_INDEX = 255
SPLIT_NAMES = ("train", "val", "test")

__all__ = [
    "IGNORE_INDEX", "SPLIT_NAMES", "ConversionError", "check_same_size", "check_labels", "carve_val_split",
    "check_fraction", "save_png", "write_split_files", "write_meta", "LayoutWriter",
    "save_instance_png",
]


class ConversionError(ValueError):
    """The source dataset does not look like its published format; the message names the file."""


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: PathLike, mask_path: PathLike) -> None:
    """Raise if an image and its mask differ in height/width (a mismatched pair is never usable)."""
    if image.shape[:2] != mask.shape[:2]:
        raise ConversionError(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} px but its image {image_path} is "
            f"{image.shape[1]}x{image.shape[0]} px"
        )


def check_labels(labels: np.ndarray, num_classes: int, path: PathLike, allow_ignore: bool = True) -> None:
    """Raise if ``labels`` holds a value that is neither a class index nor (optionally) the ignore index."""
    values = np.unique(labels)
    allowed = set(range(num_classes)) | ({IGNORE_INDEX} if allow_ignore else set())
    bad = [int(v) for v in values if int(v) not in allowed]
    if bad:
        raise ConversionError(f"{path}: label values {bad[:10]} are outside the {num_classes} classes "
                              f"(allowed 0..{num_classes - 1}{' and 255' if allow_ignore else ''})")


def check_fraction(value: float, name: str = "val_fraction") -> float:
    """Validate a split fraction in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def carve_val_split(items: Sequence[str], fraction: float, seed: int) -> Tuple[List[str], List[str]]:
    """Split ``items`` into (train, val) reproducibly.

    The result depends only on the *set* of items, the fraction and the seed (items are sorted
    first), so re-running a conversion on the same download gives the same split on any machine.
    A positive fraction always yields at least one validation item when there are two or more.
    """
    check_fraction(fraction)
    ordered = sorted(set(items))
    if fraction == 0 or len(ordered) < 2:
        return ordered, []
    n_val = min(len(ordered) - 1, max(1, round(fraction * len(ordered))))
    shuffled = list(ordered)
    random.Random(seed).shuffle(shuffled)
    val = set(shuffled[:n_val])
    return [s for s in ordered if s not in val], [s for s in ordered if s in val]


def save_png(array: np.ndarray, path: Path) -> None:
    """Write an RGB (H, W, 3) or label (H, W) uint8 array as PNG with fixed settings (byte-stable)."""
    from PIL import Image

    if array.dtype != np.uint8:
        raise TypeError(f"{path}: expected a uint8 array, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"{path}: cannot write an array of shape {array.shape} as PNG")
    # uint8 (H, W) becomes mode "L" and (H, W, 3) mode "RGB": exactly the two modes the layout allows.
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=6, optimize=False)


def save_instance_png(ids: np.ndarray, path: Path) -> None:
    """Write an (H, W) instance-id map as a 16-bit grey PNG (byte-stable); ids must fit in 0..65535."""
    from PIL import Image

    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.dtype.kind not in "ui":
        raise ValueError(f"{path}: an instance map must be a 2-D integer array, got {ids.dtype} {ids.shape}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) > 65535):
        raise ConversionError(f"{path}: instance ids must be within 0..65535 to fit a 16-bit PNG, got "
                              f"{int(ids.min())}..{int(ids.max())}")
    Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint16)).save(path, format="PNG", compress_level=6,
                                                                     optimize=False)


def write_split_files(root: Path, splits: Mapping[str, Sequence[str]]) -> None:
    """Write ``splits/<name>.txt`` (one stem per line) for every split that has items."""
    split_dir = root / "splits"
    split_dir.mkdir(parents=True, exist_ok=True)
    for name, stems in splits.items():
        if stems:
            (split_dir / f"{name}.txt").write_text("".join(f"{s}\n" for s in stems), encoding="utf-8")


def write_meta(root: Path, classes: Sequence[str], palette: Optional[Sequence[Sequence[int]]],
               mpp: Optional[float], source: str, converter: str, **extra: Any) -> Dict[str, Any]:
    """Write ``meta.json``; keys are sorted and the formatting fixed so re-runs are byte-identical."""
    meta: Dict[str, Any] = {
        "classes": list(classes),
        "palette": [list(c) for c in resolve_palette(classes, palette)],
        "mpp": None if mpp is None else float(mpp),
        "ignore_index": IGNORE_INDEX,
        "source": source,
        "converter": converter,
    }
    meta.update(extra)
    (root / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return meta


class LayoutWriter:
    """Collects image/mask pairs into the uniseg layout inside an atomic output directory.

    Use as a context manager; :meth:`finish` writes the split files and meta.json. Leaving the block
    with an exception (or without calling :meth:`finish`) discards everything written.

    Example::

        with LayoutWriter(out, classes=("background", "gland"), overwrite=False) as writer:
            writer.add("train_1", image, mask)
            writer.finish({"train": ["train_1"]}, mpp=0.55, source="CRAG v2", converter="crag")
    """

    def __init__(self, out_dir: PathLike, classes: Sequence[str],
                 palette: Optional[Sequence[Sequence[int]]] = None, overwrite: bool = False,
                 thing_classes: Optional[Sequence[str]] = None) -> None:
        if not classes:
            raise ValueError("classes must not be empty")
        # Instance output (instances/): the classes that come as objects; default all but class 0.
        self.thing_classes = tuple(classes[1:] if thing_classes is None else thing_classes)
        unknown = [t for t in self.thing_classes if t not in classes]
        if unknown:
            raise ValueError(f"thing classes {unknown} are not among the classes {list(classes)}")
        self._with_instances: set = set()
        self.out_dir = Path(out_dir)
        self.classes = tuple(classes)
        self.palette: List[Color] = resolve_palette(self.classes, palette)
        self.overwrite = overwrite
        self.stems: List[str] = []
        self._seen: set = set()
        self._ctx = None
        self._root: Optional[Path] = None
        self._finished = False

    def __enter__(self) -> "LayoutWriter":
        self._ctx = atomic_output_dir(self.out_dir, overwrite=self.overwrite)
        self._root = self._ctx.__enter__()
        (self._root / "images").mkdir()
        (self._root / "masks").mkdir()
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> bool:
        assert self._ctx is not None
        if exc_type is None and not self._finished:
            exc = RuntimeError(f"{self.out_dir}: conversion ended without LayoutWriter.finish(); output discarded")
            self._ctx.__exit__(type(exc), exc, None)
            raise exc
        return bool(self._ctx.__exit__(exc_type, exc, tb))

    @property
    def root(self) -> Path:
        """The temporary directory being written (becomes ``out_dir`` on success)."""
        if self._root is None:
            raise RuntimeError("LayoutWriter is not open; use it as a context manager")
        return self._root

    def add(self, stem: str, image: np.ndarray, mask: np.ndarray, source: PathLike = "",
            instances: Optional[np.ndarray] = None) -> None:
        """Validate and write one pair. ``source`` names the input in error messages.

        ``instances`` (optional, (H, W) integer ids, 0 = no object) is written to ``instances/`` after
        the checks the instance dataset applies (see :func:`uniseg.datasets.instances.parse_instance_annotation`).
        """
        where = source or stem
        if not stem or "/" in stem or "\\" in stem or stem != stem.strip():
            raise ConversionError(f"{where}: invalid output stem {stem!r}")
        if stem in self._seen:
            raise ConversionError(f"{where}: two inputs map to the same output name {stem!r}")
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ConversionError(f"{where}: image must be uint8 RGB, got {image.dtype} {image.shape}")
        if mask.ndim != 2:
            raise ConversionError(f"{where}: mask must be single-channel, got shape {mask.shape}")
        check_same_size(image, mask, where, where)
        check_labels(mask, len(self.classes), where)
        if instances is not None:
            from uniseg.datasets.instances import InstanceAnnotationError, parse_instance_annotation, \
                thing_label_lookup

            try:
                parse_instance_annotation(instances, mask, thing_label_lookup(self.classes, self.thing_classes),
                                          IGNORE_INDEX, self.classes, where=str(where))
            except InstanceAnnotationError as exc:
                raise ConversionError(str(exc)) from exc
            (self.root / "instances").mkdir(exist_ok=True)
            save_instance_png(instances, self.root / "instances" / f"{stem}.png")
            self._with_instances.add(stem)
        save_png(image, self.root / "images" / f"{stem}.png")
        save_png(mask.astype(np.uint8), self.root / "masks" / f"{stem}.png")
        self._seen.add(stem)
        self.stems.append(stem)

    def finish(self, splits: Mapping[str, Iterable[str]], mpp: Optional[float], source: str, converter: str,
               **extra: Any) -> Dict[str, Any]:
        """Write split files and meta.json after checking every listed stem was written."""
        clean: Dict[str, List[str]] = {}
        for name, stems in splits.items():
            if name not in SPLIT_NAMES:
                raise ValueError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
            clean[name] = list(stems)
            missing = [s for s in clean[name] if s not in self._seen]
            if missing:
                raise ConversionError(f"{self.out_dir}: split {name!r} lists stems that were not written: {missing[:5]}")
        if not clean.get("train"):
            raise ConversionError(f"{self.out_dir}: the conversion produced no training images")
        if self._with_instances:
            lacking = [s for s in self.stems if s not in self._with_instances]
            if lacking:
                raise ConversionError(f"{self.out_dir}: instance maps were written for some images but not for "
                                      f"{lacking[:5]}")
            extra = dict(extra, thing_classes=list(self.thing_classes))
        write_split_files(self.root, clean)
        counts = {name: len(stems) for name, stems in clean.items()}
        meta = write_meta(self.root, self.classes, self.palette, mpp, source, converter,
                          split_counts=counts, **extra)
        self._finished = True
        return meta


def run_converter_cli(convert: Callable[..., dict], src: PathLike, out: PathLike, **kwargs: Any) -> int:
    """Run ``convert(src, out, **kwargs)`` for a command line: bad input prints one line and exits 1."""
    try:
        meta = convert(src, out, progress=True, **kwargs)
    except (ConversionError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    details = ", ".join(f"{k} {meta[k]}" for k in ("antibody", "classes") if k in meta)
    print(f"wrote {out}" + (f" ({details})" if details else "") + f": {meta['split_counts']}")
    return 0

