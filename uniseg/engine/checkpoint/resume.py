"""Which checkpoint ``--resume`` (without a file) continues from.

mmengine resumes from whatever ``<work_dir>/last_checkpoint`` names. That file can be empty, name a
checkpoint that is gone, or lag behind a checkpoint that was completed just before a kill; mmengine
then fails with "checkpoint not found" (for an empty name) although ``iter_12.pth`` is right there.

Rule: the file ``last_checkpoint`` names is used when it exists and no checkpoint with a larger step
number sits next to it. Otherwise the newest checkpoint in the checkpoint folders that reads and
verifies is used, with a warning saying why; when none is usable the error names the folders. With
neither ``last_checkpoint`` nor any checkpoint, training starts from the beginning (as in mmengine).
"""
from __future__ import annotations

import logging
import os.path as osp
import re
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from mmengine.logging import print_log

from ...models.backbones.weights import CheckpointError
from .reading import load_verified_checkpoint

__all__ = ["find_resume_checkpoint", "list_checkpoints"]

POINTER = "last_checkpoint"
DEFAULT_TEMPLATES = ("iter_{}.pth", "epoch_{}.pth")


def _template_pattern(template: str) -> "re.Pattern[str]":
    before, _, after = template.partition("{}")
    return re.compile(f"^{re.escape(before)}(\\d+){re.escape(after)}$")


def _step(path: str, templates: Sequence[str]) -> Optional[int]:
    name = osp.basename(path)
    for template in templates:
        match = _template_pattern(template).match(name)
        if match:
            return int(match.group(1))
    return None


def list_checkpoints(folders: Iterable[Union[str, Path]],
                     templates: Sequence[str] = DEFAULT_TEMPLATES) -> List[Tuple[int, str]]:
    """``(step, path)`` of the non-empty regular files named like checkpoints, newest first."""
    found = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            step = _step(entry.name, templates)
            if step is not None and entry.is_file() and entry.stat().st_size > 0:
                found[str(entry)] = step
    return sorted(((s, p) for p, s in found.items()), key=lambda sp: (-sp[0], sp[1]))


def _read_pointer(pointer: str) -> Optional[str]:
    try:
        with open(pointer, "rb") as f:
            return f.read(4096).decode("utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None


def _is(test, path: str) -> bool:
    try:
        return bool(path) and test(path)
    except (ValueError, OSError):  # a garbled pointer: NUL bytes, names too long
        return False


def find_resume_checkpoint(work_dir: str, folders: Sequence[str] = (), templates: Sequence[str] = DEFAULT_TEMPLATES,
                           logger: Union[str, logging.Logger, None] = "current") -> Optional[str]:
    """The checkpoint to resume from in ``work_dir`` (and ``folders``), or ``None`` to start afresh."""
    pointer = osp.join(work_dir, POINTER)
    named = _read_pointer(pointer)
    named_dir = osp.dirname(named) if named else ""
    search = list(dict.fromkeys([work_dir, *folders, *([named_dir] if _is(osp.isdir, named_dir) else [])]))
    candidates = list_checkpoints(search, templates)

    if named and _is(osp.isfile, named):
        step = _step(named, templates)
        newer = [path for s, path in candidates if step is not None and s > step]
        if not newer:
            return named
        reason = f"{pointer} names {named}, but {newer[0]} is newer"
    elif named is None:
        if not candidates:
            print_log(f"{work_dir}: no checkpoint to resume from, training starts at the beginning", logger=logger)
            return None
        reason = f"{pointer} does not exist"
    elif not named:
        reason = f"{pointer} is empty"
    else:
        reason = f"{pointer} names {named!r}, which does not exist"

    for _, path in candidates:
        try:
            load_verified_checkpoint(path, map_location="cpu", logger=logger)
        except CheckpointError as exc:
            print_log(f"not resuming from {path}: {exc}", logger=logger, level=logging.WARNING)
            continue
        print_log(f"{reason}: resuming from {path}, the newest complete checkpoint in {', '.join(search)}",
                  logger=logger, level=logging.WARNING)
        return path
    names = ", ".join(t.replace("{}", "N") for t in templates)
    raise CheckpointError(f"{work_dir}: nothing to resume from: {reason}, and no complete, verified checkpoint "
                          f"({names}) is in {', '.join(search)}. Pass --resume CHECKPOINT to choose "
                          f"one, or train without --resume to start again.")
