"""Building a known encoder with timm (random or with its checkpoint), and reading its patch tokens as a map.

What each encoder is lives in :mod:`.spec`; finding and loading its checkpoint in :mod:`.weights`.
"""
from __future__ import annotations

from typing import Any, Optional

import timm
import torch
from torch import nn

from .spec import get_encoder_spec
from .weights import load_encoder_weights

__all__ = ["create_encoder", "patch_token_grid"]


def create_encoder(name: str, weights: Optional[str] = None, strict: bool = True, **overrides: Any) -> nn.Module:
    """Build a known encoder as a timm ``VisionTransformer`` and optionally load its weights.

    ``weights``: ``None`` (random init), a local file (``.bin``/``.pth``/``.pt``/``.safetensors``), a Hugging
    Face id (``hf-hub:MahmoodLab/uni``, ``MahmoodLab/UNI2-h``) or ``"hub"`` for the encoder's own hub id.
    ``overrides`` go to timm (e.g. ``drop_path_rate``, ``img_size``).
    """
    spec = get_encoder_spec(name)
    model = timm.create_model(spec.timm_name, pretrained=False, **spec.build_kwargs(**overrides))
    if weights is not None:
        load_encoder_weights(model, weights, spec, strict=strict)
    return model


def patch_token_grid(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Patch tokens of ``x`` as a ``(B, C, H / patch, W / patch)`` map, prefix tokens dropped."""
    tokens = model.forward_features(x)
    patch = model.patch_embed.patch_size
    h, w = x.shape[-2] // patch[0], x.shape[-1] // patch[1]
    tokens = tokens[:, model.num_prefix_tokens:]
    return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)
