"""Resuming a run over many slides: what an earlier run left for each slide in the output folder.

A rerun of the same command skips a slide whose outputs are complete and were made by the same model
with the same settings, and redoes the others. "Same" is a fingerprint recorded in each summary:
the SHA-256 of

* the config as resolved (every value after ``_base_`` inheritance and overrides, not its file name),
* the weights' SHA-256 (the checksum uniseg records in its checkpoints and verifies at loading, so the
  weights are not hashed again; computed once for checkpoints written without one),
* every option that can change the outputs: formats, region, level / mpp, slide mpp, tile, stride,
  window, tissue threshold, export options, amp, allow-partial, the cell options, and any option added
  later (options are in unless listed in :data:`NOT_IN_FINGERPRINT`, so a new option can cause a redo,
  never a wrong skip);
* a user's tissue mask by its path and by the SHA-256 of its bytes (:func:`file_digest`): a redrawn
  annotation under the same name redoes the slide. Masks are small, so hashing them on every run is cheap.

Not in it (:data:`NOT_IN_FINGERPRINT`): the batch size, reader workers, the device and progress
display, which change how fast, not what (a different batch size or device can change the last bits of
floating-point sums; a slide is not redone for that).

A slide is complete when its summary exists (written last, so its set is whole: see
:func:`~uniseg.utils.atomic.publish_together`), records this fingerprint and the same input, and every
output it lists is in place. A slide that failed has an error record, ``<name>_error.json``
(``<name>_cells_error.json`` for cell models), written atomically when it fails and removed when it
later succeeds, so the cohort table finds the error even if the run is killed afterwards.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from ..utils.atomic import atomic_output

__all__ = ["NOT_IN_FINGERPRINT", "config_digest", "file_digest", "fingerprint", "SlideState", "slide_state",
           "failure_name", "record_failure", "clear_failure"]

#: options of segment_file / tools/infer.py that do not change the outputs (see the module docstring)
NOT_IN_FINGERPRINT = frozenset({"batch_size", "progress", "device", "num_workers", "workers", "name"})
#: bump when the meaning of a fingerprint changes, so that earlier runs are redone
_FINGERPRINT_VERSION = 1


def _canonical(value):
    """JSON-ready with one spelling per value: tuples as lists, mappings with sorted keys."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def config_digest(cfg) -> str:
    """Hex SHA-256 of a resolved config (an mmengine ``Config`` or a dict): every value, not the file name."""
    config = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return hashlib.sha256(json.dumps(_canonical(config), sort_keys=True).encode()).hexdigest()


def file_digest(path) -> Optional[str]:
    """Hex SHA-256 of a file's bytes, or None when it cannot be read (the run then fails on that file and
    says why; a fingerprint with None never matches one of a readable file)."""
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
    except OSError:
        return None
    return sha.hexdigest()


def fingerprint(config_sha: str, weights_digest: str, options: Mapping) -> str:
    """Hex SHA-256 of the config's digest (:func:`config_digest`), the weights' digest and the options
    that change the outputs."""
    record = dict(version=_FINGERPRINT_VERSION, config=config_sha, weights=weights_digest,
                  options=_canonical({k: v for k, v in options.items() if k not in NOT_IN_FINGERPRINT}))
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def failure_name(name: str, task: str = "semantic") -> str:
    """File name of the error record of output name ``name`` (beside its summary, same task suffix)."""
    return f"{name}_cells_error.json" if task == "cells" else f"{name}_error.json"


@dataclass
class SlideState:
    """``complete`` (``summary`` set), ``failed`` (``error`` set: the last failure's message) or ``absent``
    (never segmented, interrupted, or made with other settings: ``summary`` is then the outdated one)."""

    status: str
    summary: Optional[dict] = None
    error: Optional[str] = None
    record: dict = field(default_factory=dict)


def _same_input(recorded, path: str) -> bool:
    return recorded is not None and os.path.realpath(str(recorded)) == os.path.realpath(path)


def _output_present(out: Path, listed: str) -> bool:
    """A listed output is in ``out`` (or an output folder of it), wherever the earlier run's --out was
    spelled from: the summary records the paths as that run wrote them."""
    listed = Path(listed)
    return (out / listed.name).exists() or (out / listed.parent.name / listed.name).exists()


def slide_state(out_dir, name: str, task: str, path: str, expected: str) -> SlideState:
    """What ``out_dir`` holds for output name ``name`` of input ``path``, against fingerprint ``expected``."""
    from .api import _read_json_object, summary_name

    out = Path(out_dir)
    summary = _read_json_object(out / summary_name(name, task))
    if summary is not None:
        listed = summary.get("outputs")
        if (summary.get("fingerprint") == expected and _same_input(summary.get("input"), path)
                and isinstance(listed, list) and all(_output_present(out, str(p)) for p in listed)):
            return SlideState("complete", summary)
    record = _read_json_object(out / failure_name(name, task))
    if record is not None and _same_input(record.get("input"), path):
        return SlideState("failed", summary, str(record.get("error", "")), record)
    return SlideState("absent", summary)


def record_failure(out_dir, name: str, task: str, path: str, error: str, expected: str) -> Path:
    """Write the error record of ``name`` atomically; raises ``OSError`` when the folder cannot take it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / failure_name(name, task)
    with atomic_output(target) as tmp:
        tmp.write_text(json.dumps(dict(input=str(path), error=error, fingerprint=expected,
                                       failed=time.strftime("%Y-%m-%d %H:%M:%S")), indent=2))
    return target


def clear_failure(out_dir, name: str, task: str) -> None:
    """Remove the error record of ``name`` (it succeeded since, or is complete)."""
    try:
        (Path(out_dir) / failure_name(name, task)).unlink()
    except FileNotFoundError:
        pass
