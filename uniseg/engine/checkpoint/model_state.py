"""Putting a checkpoint's weights into a model: strictly by default, with an error that lists the keys.

mmengine loads ``load_from`` with ``strict=False`` and only logs what did not fit, so a checkpoint
trained for another number of classes, or a state dict of an unrelated model, is evaluated as a
partly or wholly random model and its metrics are printed as if nothing happened. Here a checkpoint
must fit the model exactly unless the caller asks otherwise (fine-tuning from weights of another
task: ``load_from_strict = False`` in a config), and even then keys of the wrong shape are skipped by
name, never copied.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from torch import nn

from ...models.backbones.weights import CheckpointError

__all__ = ["StateDictMismatch", "compare_state_dict", "extract_state_dict", "load_model_state"]

DEFAULT_REVISE_KEYS: Sequence[Tuple[str, str]] = ((r"^module\.", ""),)


class StateDictMismatch:
    """Keys the checkpoint lacks, keys the model lacks, and keys whose shapes differ."""

    def __init__(self, missing: List[str], unexpected: List[str], mismatched: List[Tuple[str, tuple, tuple]]):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 8) -> str:
        def listing(keys: List[str]) -> str:
            more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = []
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} of other shape ("
                         + listing([f"{k} {tuple(a)} in the checkpoint vs {tuple(b)} in the model"
                                    for k, a, b in self.mismatched]) + ")")
        if self.missing:
            parts.append(f"{len(self.missing)} missing from the checkpoint ({listing(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({listing(self.unexpected)})")
        return "; ".join(parts)


def extract_state_dict(checkpoint: Mapping[str, Any], filename: str,
                       revise_keys: Iterable[Tuple[str, str]] = DEFAULT_REVISE_KEYS) -> "OrderedDict[str, Any]":
    """The model weights of a checkpoint (``checkpoint['state_dict']`` or a bare state dict), keys revised."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{filename}: does not contain a state dict of tensors")
    metadata = getattr(state, "_metadata", None)
    for pattern, replacement in revise_keys:
        state = OrderedDict((re.sub(pattern, replacement, k), v) for k, v in state.items())
    state = OrderedDict(state)
    if metadata is not None:
        state._metadata = metadata  # per-module versions that _load_from_state_dict consults
    return state


def compare_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> StateDictMismatch:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in expected
                  if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    return StateDictMismatch(missing, unexpected, mismatched)


def load_model_state(model: nn.Module, checkpoint: Mapping[str, Any], filename: str, strict: bool = True,
                     revise_keys: Iterable[Tuple[str, str]] = DEFAULT_REVISE_KEYS,
                     logger: Union[str, logging.Logger, None] = "current",
                     load_fn: Optional[Any] = None) -> StateDictMismatch:
    """Load the weights of ``checkpoint`` (read from ``filename``) into ``model``.

    ``strict``: any missing, unexpected or differently shaped key is a :class:`CheckpointError` naming
    the file and the keys, raised before a single weight is copied. Otherwise the fitting keys load and
    the others are listed in a warning. ``load_fn(state, strict)`` replaces ``model.load_state_dict``
    for wrappers that load differently (FSDP).
    """
    state = extract_state_dict(checkpoint, filename, revise_keys)
    mismatch = compare_state_dict(model, state)
    name = type(model).__name__
    if mismatch and strict:
        raise CheckpointError(f"{filename}: does not fit this {name}: {mismatch.describe()}. Is it a checkpoint of "
                              f"this config (same classes and backbone)? To initialise from weights of another "
                              f"task on purpose, set load_from_strict = False in the config.")
    if mismatch:
        print_log(f"{filename}: loaded non-strictly into {name}; not loaded: {mismatch.describe()}",
                  logger=logger, level=logging.WARNING)
        for key, _, _ in mismatch.mismatched:
            state.pop(key)
    if load_fn is None:
        model.load_state_dict(state, strict=strict)
    else:
        load_fn(state, strict)
    return mismatch
