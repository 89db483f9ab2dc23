"""Putting checkpoint files in place so that a crash at any instant leaves a usable one.

A checkpoint is first written completely under a temporary name in its destination folder, flushed
to the disk (``fsync``) and only then renamed over its final name (``os.replace`` is atomic on POSIX
file systems). A process killed while writing leaves a temporary, never a truncated ``iter_N.pth``;
those temporaries are recognised by name and removed when training starts again.

The temporary name is derived from the final name alone (no process id, no random part), because
under sharded training every rank calls the save and all of them must agree on the file rank 0 writes.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import List, Union

from ...utils.atomic import atomic_output

__all__ = ["temporary_checkpoint_name", "fsync_file", "replace_durably", "write_text_durably",
           "remove_stale_temporaries"]

PathLike = Union[str, os.PathLike]

_SUFFIX = ".partial"
# Ours (".iter_4.pth.partial") and uniseg.utils.atomic's (".last_checkpoint.partial-x1y2z3").
_STALE = re.compile(r"^\..+\.partial(-[A-Za-z0-9_]+)?$")


def temporary_checkpoint_name(filename: str) -> str:
    """``iter_4.pth`` -> ``.iter_4.pth.partial``: hidden, the same on every rank, never loaded as a checkpoint."""
    return f".{filename}{_SUFFIX}"


def fsync_file(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: PathLike) -> None:
    # A rename is durable only once the folder entry is; some file systems refuse fsync on folders.
    with contextlib.suppress(OSError):
        fsync_file(path)


def replace_durably(src: PathLike, dst: PathLike) -> None:
    """Flush ``src`` to disk, rename it over ``dst``, flush the folder."""
    fsync_file(src)
    os.replace(src, dst)
    _fsync_dir(Path(dst).parent)


def write_text_durably(path: PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (temporary sibling, fsync, rename)."""
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    _fsync_dir(Path(path).parent)


def remove_stale_temporaries(folder: PathLike) -> List[Path]:
    """Delete the temporaries that killed runs left in ``folder``; return what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if _STALE.match(entry.name) and not entry.is_dir():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed
