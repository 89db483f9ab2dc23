"""The pathology encoders uniseg builds on, as data.

Each entry says how to build the encoder with timm so that its ``state_dict`` has exactly the key
layout of the published checkpoint, plus the constants a caller needs around it (normalisation,
patch size, prefix tokens, working resolution, where the weights live). Tiny variants share the
construction path of their full-size parent and differ only in width and depth, so tests and the
CPU demo exercise the same code as a real UNI fine-tune.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from timm.layers import SwiGLUPacked
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["EncoderSpec", "ENCODERS", "get_encoder_spec", "list_encoders", "IMAGENET_MEAN", "IMAGENET_STD"]


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder and what a caller must know to use it."""

    name: str
    timm_name: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    num_reg_tokens: int = 0
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    pretrain_img_size: int = 224
    # Resolution the encoder was trained at. UNI/UNI2-h saw 20x H&E (about 0.5 um/px); inputs at
    # other magnifications should be resampled to it.
    mpp: float = 0.5
    hf_hub_id: Optional[str] = None
    hf_filename: str = "pytorch_model.bin"
    # Other spellings under which the same repository may sit in a local Hugging Face cache.
    hf_aliases: Tuple[str, ...] = ()
    license_note: str = ""

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: one class token plus the register tokens."""
        return 1 + self.num_reg_tokens

    def build_kwargs(self, **overrides: Any) -> Dict[str, Any]:
        kwargs: Dict[str, Any] = dict(
            img_size=self.pretrain_img_size,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            num_classes=0,
            dynamic_img_size=True,
        )
        if self.num_reg_tokens:
            kwargs["reg_tokens"] = self.num_reg_tokens
        kwargs.update(self.timm_kwargs)
        kwargs.update(overrides)
        return kwargs


_UNI_LICENSE = ("UNI weights are released by the Mahmood Lab under CC-BY-NC-ND 4.0 behind a gated "
                "Hugging Face repository; uniseg does not redistribute them.")

_UNI = EncoderSpec(
    name="uni", timm_name="vit_large_patch16_224", patch_size=16, embed_dim=1024, depth=24, num_heads=16,
    timm_kwargs=dict(init_values=1e-5), hf_hub_id="MahmoodLab/UNI", hf_aliases=("MahmoodLab/uni",),
    license_note=_UNI_LICENSE,
)
_UNI2_H = EncoderSpec(
    name="uni2-h", timm_name="vit_giant_patch14_224", patch_size=14, embed_dim=1536, depth=24, num_heads=24,
    num_reg_tokens=8,
    # UNI2-h's published timm arguments: packed SwiGLU MLP with SiLU, hidden = 2 * 2.66667 * dim, and
    # position embeddings only for patch tokens (class and register tokens carry none).
    timm_kwargs=dict(init_values=1e-5, mlp_ratio=2.66667 * 2, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU,
                     no_embed_class=True),
    hf_hub_id="MahmoodLab/UNI2-h",
    hf_aliases=("MahmoodLab/uni2-h",), license_note=_UNI_LICENSE,
)

ENCODERS: Dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        _UNI,
        _UNI2_H,
        # Same construction path, small width/depth: for tests and the CPU demo. No published weights.
        # (uni2-h-tiny is 96 wide because the packed SwiGLU needs an even hidden size: 96 * 5.33334 = 512.)
        dataclasses.replace(_UNI, name="uni-tiny", embed_dim=64, depth=4, num_heads=4, hf_hub_id=None,
                            hf_aliases=(), license_note=""),
        dataclasses.replace(_UNI2_H, name="uni2-h-tiny", embed_dim=96, depth=4, num_heads=4, hf_hub_id=None,
                            hf_aliases=(), license_note=""),
    )
}


def list_encoders() -> Tuple[str, ...]:
    return tuple(ENCODERS)


def get_encoder_spec(name: str) -> EncoderSpec:
    try:
        return ENCODERS[name]
    except KeyError:
        raise KeyError(f"unknown encoder {name!r}; known encoders: {', '.join(ENCODERS)}") from None
