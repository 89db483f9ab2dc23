"""Reading checkpoints safely and refusing the ones that cannot be trusted, with the file named.

* Unpickling is weights-only: checkpoints uniseg writes are plain data (see ``plain_state``) and load
  with torch's default loader. Checkpoints written by earlier uniseg versions hold mmengine's
  ``HistoryBuffer`` objects; for those, and only when the plain read refused the file, the
  weights-only unpickler is retried with an allowlist of exactly those classes.
* A missing, empty, truncated or otherwise unreadable file is an error that names it (torch itself
  says ``EOFError`` or ``failed finding central directory``).
* The tensors are verified against the checksum recorded at writing (``checksum``); a file without
  one (third-party, older uniseg) loads with a warning that it could not be verified.
"""
from __future__ import annotations

import logging
import os.path as osp
import pickle
from typing import Any, Callable, Dict, List, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log

from ...models.backbones.weights import CheckpointError
from .checksum import ChecksumMismatch, verify_checksum

__all__ = ["CheckpointError", "MMENGINE_CHECKPOINT_GLOBALS", "load_mmengine_checkpoint", "load_verified_checkpoint"]

MapLocation = Union[None, str, torch.device, Callable]


def _numpy_globals() -> List[object]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype,
            *(type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?"))]


# What checkpoints of earlier uniseg versions contain beyond weights-only data.
MMENGINE_CHECKPOINT_GLOBALS: List[object] = [HistoryBuffer, *_numpy_globals()]


def _refused(exc: BaseException) -> bool:
    # torch reports an object outside the allowlist as an UnpicklingError with this text; a truncated
    # legacy (non-zip) file is an UnpicklingError too, but a different one.
    return "Weights only load failed" in str(exc)


def _check_file(filename: str) -> None:
    if not osp.exists(filename):
        raise CheckpointError(f"{filename}: checkpoint not found")
    if osp.isdir(filename):
        raise CheckpointError(f"{filename}: is a folder, expected a checkpoint file")
    if not osp.isfile(filename):
        raise CheckpointError(f"{filename}: not a regular file")
    if osp.getsize(filename) == 0:
        raise CheckpointError(f"{filename}: empty file (0 bytes): the save that wrote it did not complete")


def load_mmengine_checkpoint(filename: str, map_location: MapLocation = None) -> Dict[str, Any]:
    """Read a checkpoint with the weights-only unpickler (and, for earlier uniseg files, mmengine's allowlist)."""
    filename = osp.expanduser(str(filename))
    _check_file(filename)
    try:
        try:
            checkpoint = torch.load(filename, map_location=map_location, weights_only=True)
        except Exception as exc:
            if not _refused(exc):
                raise
            with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
                checkpoint = torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as exc:
        if _refused(exc):
            raise CheckpointError(
                f"{filename}: refused by the safe (weights-only) loader: it contains objects beyond tensors and "
                f"mmengine's training state ({exc}). Checkpoints written by uniseg load; a file from elsewhere "
                f"that you trust can be converted with torch.load(..., weights_only=False) and re-saved."
            ) from exc
        if isinstance(exc, (EOFError, RuntimeError, OSError, ValueError, pickle.UnpicklingError)):
            raise CheckpointError(f"{filename}: cannot be read as a checkpoint (truncated or corrupted? "
                                  f"{osp.getsize(filename)} bytes): {type(exc).__name__}: {exc}") from exc
        raise
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{filename}: holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def load_verified_checkpoint(filename: str, map_location: MapLocation = "cpu",
                             logger: Union[str, logging.Logger, None] = "current") -> Dict[str, Any]:
    """Read ``filename`` safely and check its tensors against the recorded checksum."""
    filename = osp.expanduser(str(filename))
    checkpoint = load_mmengine_checkpoint(filename, map_location)
    try:
        verified = verify_checksum(checkpoint)
    except ChecksumMismatch as exc:
        raise CheckpointError(f"{filename}: corrupted: {exc}. Use another copy or an earlier checkpoint.") from exc
    if verified is None:
        print_log(f"{filename}: has no uniseg checksum (written by another tool or an older uniseg), "
                  f"so its tensors could not be verified", logger=logger, level=logging.WARNING)
    return checkpoint
