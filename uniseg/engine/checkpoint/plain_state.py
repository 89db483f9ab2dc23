"""Checkpoint state that torch's weights-only unpickler reads without any allowlist.

mmengine's message hub (the log history that smoothed losses and the ETA are computed from) is
saved as ``HistoryBuffer`` objects holding numpy arrays, and a buffer pickles its statistics
*functions* too; runtime information such as the best score is a numpy scalar. Since torch 2.6
``torch.load`` refuses all of that by default, so mmengine 0.10.7 cannot resume its own checkpoints.

Instead of widening the unpickler, uniseg writes those values as plain data: tensors (which keep
numpy's dtype and bits exactly), lists and Python numbers, with a tag where an object has to be
rebuilt on loading. ``to_weights_only`` runs just before a checkpoint is written, ``from_weights_only``
right after one is read (both from :class:`~uniseg.engine.hooks.SafeCheckpointHook`), so a resumed
run continues with exactly the history it was interrupted with.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ["to_weights_only", "from_weights_only"]

_TAG = "__uniseg_plain__"
# The tensors and optimizer state are weights-only data already; the rest is small and converted.
_TENSOR_SECTIONS = ("state_dict", "optimizer")


def _array_to_plain(array: np.ndarray):
    try:
        return torch.from_numpy(np.ascontiguousarray(array).copy())
    except TypeError:  # dtypes torch has no tensor type for (object, strings): Python values
        return array.tolist()


def _array_from_plain(value) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.array(value)


def _empty_like(mapping: dict) -> dict:
    # OrderedDict is weights-only data; other dict subclasses would not load, so they become dicts.
    return OrderedDict() if isinstance(mapping, OrderedDict) else {}


def _encode(obj: Any) -> Any:
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {_TAG: "HistoryBuffer", "log_history": _array_to_plain(log), "count_history": _array_to_plain(count),
                "max_length": int(obj.max_length)}
    if isinstance(obj, np.ndarray):
        return {_TAG: "ndarray", "data": _array_to_plain(obj)}
    if isinstance(obj, np.generic):
        return obj.item()  # numpy scalars (the best score, the ETA): the Python number of the same value
    if isinstance(obj, dict):
        out = _empty_like(obj)
        for key, value in obj.items():
            out[key] = _encode(value)
        return out
    if isinstance(obj, (list, tuple)):
        items = [_encode(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        kind = obj.get(_TAG)
        if kind == "HistoryBuffer":
            return HistoryBuffer(_array_from_plain(obj["log_history"]), _array_from_plain(obj["count_history"]),
                                 obj["max_length"])
        if kind == "ndarray":
            return _array_from_plain(obj["data"])
        out = _empty_like(obj)
        for key, value in obj.items():
            out[key] = _decode(value)
        return out
    if isinstance(obj, (list, tuple)):
        items = [_decode(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def to_weights_only(checkpoint: Dict[str, Any]) -> None:
    """Replace, in place, the objects outside the tensor sections by plain data."""
    for key in list(checkpoint):
        if key not in _TENSOR_SECTIONS:
            checkpoint[key] = _encode(checkpoint[key])


def from_weights_only(checkpoint: Dict[str, Any]) -> None:
    """Rebuild, in place, the objects :func:`to_weights_only` stored as plain data."""
    for key in list(checkpoint):
        if key not in _TENSOR_SECTIONS:
            checkpoint[key] = _decode(checkpoint[key])
