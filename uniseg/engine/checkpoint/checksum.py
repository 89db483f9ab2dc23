"""A checksum of a checkpoint's tensors, stored in the checkpoint and checked on every load.

``torch.load`` does not verify the CRCs of the zip archive it reads, so a flipped bit in a weight
tensor (bad disk, interrupted copy, bit rot on shared storage) loads silently and the model then
produces wrong masks with nothing to show for it. uniseg records a SHA-256 over the model weights
and over the optimizer state when it writes a checkpoint, and refuses a file whose tensors no
longer hash to the recorded value.

The digest covers, in the containers' own (pickle-preserved) order, every key, every tensor's dtype,
shape and raw bytes, and the ``repr`` of the other values (learning rates, betas, step counts), so
it is the same whether the tensors live on a CPU or a GPU and independent of the zip layout.
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, Optional

import torch

__all__ = ["CHECKSUM_KEY", "CHECKSUM_SECTIONS", "ChecksumMismatch", "add_checksum", "digest", "verify_checksum"]

CHECKSUM_KEY = "uniseg_checksum"            # in checkpoint["meta"]
CHECKSUM_SECTIONS = ("state_dict", "optimizer")
_ALGORITHM = "sha256"


class ChecksumMismatch(ValueError):
    """A section of the checkpoint does not hash to the value recorded when it was written."""


def _update(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            h.update(f"K{key!r}".encode())
            _update(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for value in obj:
            _update(h, value)
    else:
        h.update(f"V{obj!r}".encode())


def digest(obj: Any) -> str:
    """Hex SHA-256 of a (nested) state dict."""
    h = hashlib.new(_ALGORITHM)
    _update(h, obj)
    return h.hexdigest()


def add_checksum(checkpoint: Dict[str, Any]) -> None:
    """Record the digests of the sections present in ``checkpoint['meta']``."""
    record: Dict[str, str] = {"algorithm": _ALGORITHM}
    for section in CHECKSUM_SECTIONS:
        if section in checkpoint:
            record[section] = digest(checkpoint[section])
    checkpoint.setdefault("meta", {})[CHECKSUM_KEY] = record


def verify_checksum(checkpoint: Dict[str, Any]) -> Optional[bool]:
    """``True`` when every recorded section that is present matches, ``None`` when nothing was recorded.

    A recorded section that is absent is not an error: tools such as mmseg's ``publish_model`` drop
    the optimizer from finished checkpoints on purpose.
    """
    meta = checkpoint.get("meta")
    record = meta.get(CHECKSUM_KEY) if isinstance(meta, dict) else None
    if not isinstance(record, dict):
        return None
    if record.get("algorithm") != _ALGORITHM:
        raise ChecksumMismatch(f"unknown checksum algorithm {record.get('algorithm')!r}")
    for section in CHECKSUM_SECTIONS:
        if section in record and section in checkpoint:
            actual = digest(checkpoint[section])
            if actual != record[section]:
                raise ChecksumMismatch(f"the {section!r} tensors do not match the checksum recorded when the file "
                                       f"was written (sha256 {record[section][:16]}..., now {actual[:16]}...)")
    return True
