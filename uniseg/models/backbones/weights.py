"""Finding and loading encoder checkpoints.

UNI's weights are gated and cannot be fetched at run time on many clusters, so resolution is
offline-first: a local file, then the local Hugging Face cache, and only then the hub. Every
failure says what to do next. Loading is strict: a checkpoint whose keys do not match the encoder
exactly is an error naming the keys (ViT-Adapter's ``strict=False`` silently dropped layer-scale
weights; uniseg does not).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Union

import torch
from torch import nn

from .spec import EncoderSpec

__all__ = [
    "CheckpointError", "resolve_checkpoint", "read_state_dict", "checkpoint_filter_fn", "load_encoder_weights",
    "hf_checkpoint_path",
]

CHECKPOINT_SUFFIXES = (".bin", ".pth", ".pt", ".safetensors", ".ckpt")
_HUB_PREFIX = "hf-hub:"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be found, read, or does not fit the encoder."""


def hf_checkpoint_path(repo_id: str, filename: str, aliases: Iterable[str] = ()) -> Path:
    """Return the local path of ``filename`` in a Hugging Face repo, offline-first."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError)

    for candidate in (repo_id, *aliases):
        try:
            return Path(hf_hub_download(candidate, filename, local_files_only=True))
        except (LocalEntryNotFoundError, EntryNotFoundError, OfflineModeIsEnabled):
            continue

    cache = constants.HF_HUB_CACHE
    how_to_get = (f"On a machine with internet and access, run `hf download {repo_id} {filename}` (shares the cache "
                  f"at {cache}), or download the file and pass its local path as the encoder weights.")
    if constants.is_offline_mode():
        raise CheckpointError(f"{repo_id}/{filename} is not in the local Hugging Face cache ({cache}) and "
                              f"HF_HUB_OFFLINE is set. {how_to_get}")
    try:
        return Path(hf_hub_download(repo_id, filename))
    except GatedRepoError as exc:
        raise CheckpointError(
            f"{repo_id} is a gated repository and this account has no access: request access at "
            f"https://huggingface.co/{repo_id}, then log in with `hf auth login` or set HF_TOKEN. {how_to_get}"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(
            f"{repo_id} was not found or is not visible without logging in (gated repositories look missing to "
            f"anonymous users): check the id, request access at https://huggingface.co/{repo_id} and log in with "
            f"`hf auth login` or set HF_TOKEN."
        ) from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise CheckpointError(f"cannot download {repo_id}/{filename} and it is not cached at {cache}: {exc}. "
                              f"{how_to_get}") from exc


def resolve_checkpoint(source: str, spec: EncoderSpec) -> Path:
    """Turn a weights source (path, ``hf-hub:org/name``, ``org/name`` or ``"hub"``) into a local file."""
    if source == "hub":
        if spec.hf_hub_id is None:
            raise CheckpointError(f"encoder {spec.name!r} has no published weights; pass a local checkpoint")
        return hf_checkpoint_path(spec.hf_hub_id, spec.hf_filename, spec.hf_aliases)
    path = Path(os.path.expanduser(source))
    if path.is_file():
        return path
    looks_like_path = path.suffix in CHECKPOINT_SUFFIXES or source.startswith((".", "/", "~")) or path.exists()
    if source.startswith(_HUB_PREFIX) or (not looks_like_path and source.count("/") == 1):
        repo_id = source[len(_HUB_PREFIX):] if source.startswith(_HUB_PREFIX) else source
        aliases = spec.hf_aliases if spec.hf_hub_id and repo_id.lower() == spec.hf_hub_id.lower() else ()
        aliases = tuple(a for a in (spec.hf_hub_id, *aliases) if a and a != repo_id)
        return hf_checkpoint_path(repo_id, spec.hf_filename, aliases)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)})")
    raise CheckpointError(f"{path}: checkpoint file not found")


def read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read a plain tensor state dict with safe loading (``weights_only=True`` / safetensors)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt archive, pickle with code objects, truncated download, ...
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint ({type(exc).__name__}: {exc})") from exc
    # Unwrap the containers training frameworks put around a model's weights.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: does not contain a state dict of tensors")
    return state


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Adapt a checkpoint to ``model``: drop a DDP ``module.`` prefix, resample position embeddings.

    Nothing is discarded here; whatever does not fit is reported by :func:`load_encoder_weights`.
    """
    from timm.layers import resample_abs_pos_embed

    out = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}

    pos = out.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if pos is not None and target is not None and pos.shape != target.shape:
        num_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        out["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=num_prefix)
    return out


def load_encoder_weights(model: nn.Module, source: str, spec: EncoderSpec, strict: bool = True) -> Path:
    """Load weights from ``source`` into ``model`` (a timm ViT built from ``spec``); return the file used."""
    path = resolve_checkpoint(source, spec)
    state = checkpoint_filter_fn(read_state_dict(path), model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if mismatched:
        details = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched[:10])
        raise CheckpointError(f"{path}: shapes do not match encoder {spec.name!r}: {details}")
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{path}: keys do not match encoder {spec.name!r} "
            f"(missing: {_short(missing)}; unexpected: {_short(unexpected)}). "
            f"Is this a checkpoint of {spec.timm_name} with the arguments of {spec.name!r}?")
    model.load_state_dict(state, strict=strict)
    return path


def _short(keys: list, limit: int = 12) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
