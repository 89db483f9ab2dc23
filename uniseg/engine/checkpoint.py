"""Resumable mmengine checkpoints under torch >= 2.6, without giving up safe loading.

torch 2.6 made ``torch.load`` default to ``weights_only=True``. mmengine 0.10.7 calls it without the
argument, and its checkpoints hold more than tensors: the message hub keeps ``HistoryBuffer`` objects
with numpy arrays, and each buffer pickles its statistics *functions* (``getattr(HistoryBuffer, 'min')``).
So ``--resume`` fails with "Weights only load failed".

The fix keeps the weights-only unpickler and widens it only as far as mmengine's own state needs:

1. ``HistoryBuffer`` no longer pickles its statistics functions (they are class-level registrations that
   every process re-creates on import), so checkpoints need no ``getattr`` global;
2. mmengine's local-file loader unpickles with ``weights_only=True`` plus an allowlist of exactly the
   classes its checkpoints contain (``HistoryBuffer`` and numpy array reconstruction).

Third-party weights (UNI's ``pytorch_model.bin``) are read elsewhere with the plain weights-only loader.

Checkpoints are also written atomically (temporary file, then rename): mmengine writes in place, so a
job killed while saving left a truncated ``iter_N.pth`` that the next ``--resume`` tried to load.
"""
from __future__ import annotations

import functools
import os.path as osp
import pickle
from typing import List

import numpy as np
import torch
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from ..utils.atomic import atomic_output

__all__ = ["MMENGINE_CHECKPOINT_GLOBALS", "install_safe_checkpointing", "load_mmengine_checkpoint"]


def _numpy_globals() -> List[object]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype,
            *(type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?"))]


MMENGINE_CHECKPOINT_GLOBALS: List[object] = [HistoryBuffer, *_numpy_globals()]


def _history_buffer_state(self: HistoryBuffer) -> dict:
    state = dict(self.__dict__)
    state.pop("statistics_methods", None)  # functions: re-registered on import, never unpickled
    return state


def _atomic_put(self: LocalBackend, obj: bytes, filepath) -> None:
    with atomic_output(filepath) as tmp:
        with open(tmp, "wb") as f:
            f.write(obj)


def load_mmengine_checkpoint(filename: str, map_location=None):
    """Load an mmengine checkpoint with the weights-only unpickler and mmengine's allowlist."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f"{filename}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
            raise RuntimeError(
                f"{filename}: refused by the safe (weights-only) loader: it contains objects beyond tensors and "
                f"mmengine's training state ({exc}). Checkpoints written by uniseg load; a file from elsewhere "
                f"that you trust can be converted with torch.load(..., weights_only=False) and re-saved."
            ) from exc
        raise


def load_from_local(filename: str, map_location=None):
    """mmengine's scheme for local paths (the name is what mmengine's log line shows)."""
    return load_mmengine_checkpoint(filename, map_location)


@functools.lru_cache(maxsize=None)
def install_safe_checkpointing() -> None:
    """Apply the changes above (idempotent); called when ``uniseg`` is imported."""
    HistoryBuffer.__getstate__ = _history_buffer_state
    LocalBackend.put = _atomic_put
    # '' is mmengine's scheme for local paths; force replaces its torch.load call.
    CheckpointLoader.register_scheme(prefixes="", force=True)(load_from_local)
