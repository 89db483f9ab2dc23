"""Crash-safe file output.

Every file uniseg writes (masks, features, converted datasets, checkpoints) goes through these
helpers: the content is produced under a temporary name next to the destination and renamed
into place only once complete. An interrupted run, a bad input discovered half-way or a full
disk therefore never leaves a truncated file where a user (or QuPath) would pick it up.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .typing_utils import PathLike

__all__ = ["atomic_output", "atomic_output_dir"]


def _default_mode(is_dir: bool) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if is_dir else 0o666) & ~umask


def _temp_sibling(path: Path, is_dir: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix last so writers that dispatch on it (tifffile, cv2, np.save) behave.
    prefix = f".{path.stem}.partial-"
    # mkdtemp/mkstemp create private (0700/0600) entries; the final output gets the usual permissions.
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    os.chmod(tmp, _default_mode(is_dir))
    return tmp


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path``, on any exception it is removed."""
    final = Path(path)
    tmp = _temp_sibling(final, is_dir=False)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_output_dir(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block completes.

    An existing non-empty ``path`` is an error unless ``overwrite`` is set, in which case it is
    replaced only after the new content is complete.
    """
    final = Path(path)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise FileExistsError(f"{final}: output folder exists and is not empty (pass overwrite to replace it)")
    tmp = _temp_sibling(final, is_dir=True)
    try:
        yield tmp
        if final.exists():
            backup = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, backup)
            os.replace(tmp, final)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
