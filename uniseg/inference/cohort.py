"""A cohort of slides for ``tools/infer.py``: which slides (manifest, glob), which rank segments each.

A cohort is a list of :class:`SlideJob`: a slide path with its optional region, microns-per-pixel
override, output name and tissue mask. It comes from the command line's INPUTs, each of which is

* a manifest: a ``.txt`` file (one slide path a line; blank lines and ``#`` comments ignored) or a
  ``.csv`` file with a header row: ``path`` (required), ``region`` (``x,y,w,h`` in level-0 pixels),
  ``mpp`` (the slide's microns per pixel at level 0, overriding its metadata), ``name`` (the output
  name, instead of the file stem) and ``tissue_mask`` (this slide's mask, a binary image or a GeoJSON
  of regions in level-0 pixels, instead of detecting its tissue); empty cells keep the command line's
  setting. Relative paths (slides and masks) are relative to the manifest's folder, so a manifest can
  travel with its slides;
* a glob pattern (``'slides/*.svs'``, quoted so that the shell leaves it alone; ``**`` recurses),
  expanded in sorted order; a pattern matching nothing is an error naming it;
* a slide path.

A malformed manifest (unknown column, bad region, bad mpp, bad name) is a :class:`ManifestError` naming
the file and the line, raised before any model is loaded; a missing or unreadable slide or tissue mask
is not a manifest error (the file may be put right before the rerun): that slide fails on its own when
its turn comes, and the other slides are still segmented.

Sharding (:func:`shard`) is static and computed identically by every rank from the cohort alone, so
ranks need not talk to each other until the end: largest slide first, each to the rank with the least
work so far (the classic longest-processing-time rule), so ranks finish close together.
"""
from __future__ import annotations

import csv
import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

__all__ = ["ManifestError", "SlideJob", "MANIFEST_SUFFIXES", "MANIFEST_COLUMNS", "read_manifest", "expand_inputs",
           "slide_weight", "shard"]

#: INPUTs with these suffixes are manifests, not images
MANIFEST_SUFFIXES = (".txt", ".csv")
#: columns a CSV manifest may have (``path`` is required)
MANIFEST_COLUMNS = ("path", "region", "mpp", "name", "tissue_mask")
_GLOB_CHARS = set("*?[")


class ManifestError(ValueError):
    """A manifest (or an INPUT pattern) that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class SlideJob:
    """One slide (or region of it) to segment; ``name`` is the output name every output starts with;
    ``tissue_mask`` the mask that replaces tissue detection for it (None: the command line's way)."""

    path: str
    name: str
    region: Optional[str] = None
    mpp: Optional[float] = None
    source: str = "command line"  # where it was listed: 'manifest.csv:3' or 'command line'
    tissue_mask: Optional[str] = None


def _check_region(text: str, where: str) -> str:
    from ..io import parse_region

    try:
        roi = parse_region(text)
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    return f"{roi.x},{roi.y},{roi.w},{roi.h}"


def _check_mpp(text: str, where: str) -> float:
    try:
        mpp = float(text)
    except ValueError:
        mpp = math.nan
    if not (math.isfinite(mpp) and mpp > 0):
        raise ManifestError(f"{where}: mpp {text!r} is not a number > 0 (microns per pixel at level 0)")
    return mpp


def _check_name(text: str, where: str) -> str:
    if text in (".", "..") or any(sep in text for sep in ("/", "\\", os.sep)) or text.startswith("."):
        raise ManifestError(f"{where}: name {text!r} is not a plain file name (no folders, not starting with '.')")
    return text


def _resolve(path: str, base: Path) -> str:
    return path if os.path.isabs(path) else str(base / path)


def _job(path: str, base: Path, region: Optional[str], mpp: Optional[float], name: Optional[str],
         where: str, tissue_mask: Optional[str] = None) -> SlideJob:
    from .api import output_stem

    resolved = _resolve(path, base)
    return SlideJob(resolved, name or output_stem(resolved, region), region, mpp, where, tissue_mask)


def read_manifest(manifest: str, region: Optional[str] = None, mpp: Optional[float] = None,
                  tissue_mask: Optional[str] = None) -> List[SlideJob]:
    """The slides a ``.txt`` or ``.csv`` manifest lists (see the module docstring), in its order.

    ``region``, ``mpp`` and ``tissue_mask`` are the command line's settings, kept where a row leaves
    them empty.
    """
    path = Path(manifest)
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (spreadsheet exports) is not part of the header
    except FileNotFoundError:
        raise ManifestError(f"{manifest}: manifest file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{manifest}: cannot read this manifest ({exc})") from None
    jobs: List[SlideJob] = []
    if path.suffix.lower() == ".txt":
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                jobs.append(_job(line, base, region, mpp, None, f"{manifest}:{number}", tissue_mask))
    else:
        rows = csv.reader(text.splitlines())
        header = [h.strip().lower() for h in next(rows, [])]
        unknown = [h for h in header if h not in MANIFEST_COLUMNS]
        if "path" not in header or unknown or len(set(header)) != len(header):
            problem = (f"unknown column(s) {unknown}" if unknown else "a repeated column" if "path" in header
                       else "no 'path' column")
            raise ManifestError(f"{manifest}:1: the header has {problem}; a CSV manifest's first row names its "
                                f"columns, among {', '.join(MANIFEST_COLUMNS)} ('path' required)")
        for number, row in enumerate(rows, 2):
            if not any(cell.strip() for cell in row):
                continue
            where = f"{manifest}:{number}"
            if len(row) > len(header):
                raise ManifestError(f"{where}: {len(row)} fields but the header names {len(header)} columns "
                                    f"(quote a region: \"x,y,w,h\")")
            cells = {key: (row[i].strip() if i < len(row) else "") for i, key in enumerate(header)}
            if not cells["path"]:
                raise ManifestError(f"{where}: no path")
            jobs.append(_job(cells["path"], base,
                             _check_region(cells["region"], where) if cells.get("region") else region,
                             _check_mpp(cells["mpp"], where) if cells.get("mpp") else mpp,
                             _check_name(cells["name"], where) if cells.get("name") else None, where,
                             _resolve(cells["tissue_mask"], base) if cells.get("tissue_mask") else tissue_mask))
    if not jobs:
        raise ManifestError(f"{manifest}: the manifest lists no slides")
    return jobs


def expand_inputs(inputs: Sequence[str], region: Optional[str] = None, mpp: Optional[float] = None,
                  tissue_mask: Optional[str] = None) -> List[SlideJob]:
    """The cohort of the command line's INPUTs: manifests read, patterns expanded, paths as they are;
    ``region``, ``mpp`` and ``tissue_mask`` are the command line's settings (see :func:`read_manifest`).

    Raises :class:`ManifestError` for a bad manifest or a pattern that matches nothing, and ``ValueError``
    (from :func:`~uniseg.inference.api.check_distinct_names`) when two slides would share an output name.
    """
    from .api import check_distinct_names

    jobs: List[SlideJob] = []
    for item in inputs:
        if Path(item).suffix.lower() in MANIFEST_SUFFIXES:
            jobs.extend(read_manifest(item, region, mpp, tissue_mask))
        elif _GLOB_CHARS & set(item) and not os.path.exists(item):
            matches = sorted(m for m in glob.glob(item, recursive=True) if os.path.isfile(m))
            if not matches:
                raise ManifestError(f"{item}: this INPUT pattern matches no file")
            jobs.extend(_job(m, Path("."), region, mpp, None, f"pattern {item}", tissue_mask) for m in matches)
        else:
            jobs.append(_job(item, Path("."), region, mpp, None, "command line", tissue_mask))
    check_distinct_names([(job.path if job.source == "command line" else f"{job.path} ({job.source})", job.name)
                          for job in jobs])
    return jobs


def slide_weight(job: SlideJob) -> int:
    """How much work a slide is, for balancing: its file size in bytes (0 if it cannot be read).

    File size is known without opening the slide (no reader, no decoding, cheap on every rank) and
    grows with the pixels to segment. A region is a part of the slide whose share of the file is unknown
    without opening it; it weighs ``w * h`` (bytes of a ~3x compressed RGB region), at most the file's size.
    The weight only balances the ranks: a poor estimate costs time, never correctness.
    """
    try:
        size = os.path.getsize(job.path)
    except OSError:
        return 0
    if job.region:
        x, y, w, h = (int(v) for v in job.region.split(","))
        return min(size, w * h)
    return size


def shard(jobs: Sequence[SlideJob], world_size: int, weights: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Indices into ``jobs`` for each rank: largest first, each to the least loaded rank (ties: lowest rank).

    Deterministic: equal weights keep the cohort's order, so every rank computes the same assignment;
    each slide goes to exactly one rank, and each rank's list is in decreasing weight (its work order).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    weights = [slide_weight(job) for job in jobs] if weights is None else list(weights)
    loads = [0] * world_size
    assignment: List[List[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(jobs)), key=lambda i: (-weights[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        assignment[rank].append(index)
        loads[rank] += weights[index]
    return assignment
