"""ViT-Adapter around a pathology encoder: a four-level feature pyramid from a plain ViT.

The encoder is built from the table in :mod:`.encoders` (UNI, UNI2-h, tiny variants) and keeps its
exact timm key layout under ``backbone.vit.*``, so a UNI checkpoint loads strictly and a fine-tuned
model still contains a complete UNI. Inputs of any size are padded to what the spatial prior module
(multiples of 32) and the patch embedding (multiples of the patch size) need, and outputs are cropped
back to ``ceil(H / stride)`` x ``ceil(W / stride)``.
"""
from __future__ import annotations

import logging
import math
from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from timm.layers import trunc_normal_
from torch import nn

from ..layers import DeformableAttention, build_adapter_norm
from .adapter_modules import PYRAMID_STRIDES, AdapterGeometry, InteractionBlock, SpatialPriorModule
from .adapter_modules import default_interaction_indexes
from .encoders import create_encoder
from .spec import get_encoder_spec
from .weights import load_encoder_weights

__all__ = ["ViTAdapter"]

OUTPUT_STRIDES = (4, 8, 16, 32)


@MMDET_MODELS.register_module()
@MODELS.register_module()
class ViTAdapter(BaseModule):
    """ViT-Adapter backbone for a known encoder (``uni``, ``uni2-h``, ``uni-tiny``, ``uni2-h-tiny``).

    Args:
        encoder: name in the encoder table.
        encoder_weights: ``None`` (random init), a local checkpoint, a Hugging Face id or ``"hub"``; loaded in
            :meth:`init_weights` (so ``tools/test.py`` with a fine-tuned checkpoint never needs UNI's file).
        drop_path_rate: stochastic depth of the ViT blocks and the extractors' FFN.
        interaction_indexes: ViT block groups ``[[first, last], ...]`` (4 groups covering all blocks); derived
            from the encoder's depth when omitted.
        norm_cfg: norm of the convolutional parts; ``SyncBN`` synchronises only when distributed.
        with_cp: gradient checkpointing of the ViT blocks and the injectors/extractors (activations are
            recomputed in the backward pass instead of stored).
        freeze_vit: freeze the whole encoder (train adapter + head only).
        trainable_vit_blocks: if set, freeze the encoder except its last K blocks.
    """

    def __init__(self,
                 encoder: str = "uni",
                 encoder_weights: Optional[str] = None,
                 drop_path_rate: float = 0.0,
                 conv_inplane: int = 64,
                 n_points: int = 4,
                 deform_num_heads: int = 16,
                 init_values: float = 0.0,
                 interaction_indexes: Optional[Sequence[Sequence[int]]] = None,
                 with_cffn: bool = True,
                 cffn_ratio: float = 0.25,
                 deform_ratio: float = 0.5,
                 add_vit_feature: bool = True,
                 use_extra_extractor: bool = True,
                 norm_cfg: Optional[dict] = None,
                 with_cp: bool = False,
                 freeze_vit: bool = False,
                 trainable_vit_blocks: Optional[int] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        try:
            self.spec = get_encoder_spec(encoder)
        except KeyError as exc:
            raise ValueError(f"ViTAdapter.encoder: {exc.args[0]}") from None
        self.encoder_weights = encoder_weights
        self.vit = create_encoder(encoder, drop_path_rate=drop_path_rate)
        dim = self.spec.embed_dim
        depth = len(self.vit.blocks)
        self.embed_dim = dim
        self.out_channels = [dim] * len(OUTPUT_STRIDES)
        self.patch_size = self.spec.patch_size
        self.with_cp = with_cp
        self.add_vit_feature = add_vit_feature
        self.interaction_indexes = self._check_indexes(interaction_indexes, depth)
        if (dim * deform_ratio) % deform_num_heads:
            raise ValueError(f"ViTAdapter: deform_num_heads={deform_num_heads} must divide embed_dim * deform_ratio "
                             f"= {dim} * {deform_ratio} of encoder {encoder!r}")

        self.level_embed = nn.Parameter(torch.zeros(len(PYRAMID_STRIDES), dim))
        self.spm = SpatialPriorModule(conv_inplane, dim, norm_cfg)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.interactions = nn.ModuleList([
            InteractionBlock(dim, deform_num_heads, n_points, deform_ratio, init_values, with_cffn, cffn_ratio,
                             drop_path=drop_path_rate, norm_layer=norm_layer,
                             extra_extractor=use_extra_extractor and i == len(self.interaction_indexes) - 1,
                             with_cp=with_cp)
            for i in range(len(self.interaction_indexes))
        ])
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norms = nn.ModuleList([build_adapter_norm(norm_cfg, dim)[1] for _ in OUTPUT_STRIDES])

        # The encoder's final norm and pooling are not part of the pyramid; freezing them keeps DDP from
        # waiting for gradients that never come while leaving the encoder complete in checkpoints.
        for p in self.vit.norm.parameters():
            p.requires_grad = False
        self._freeze(freeze_vit, trainable_vit_blocks, depth)
        self._init_adapter()

    @staticmethod
    def _check_indexes(indexes: Optional[Sequence[Sequence[int]]], depth: int) -> List[List[int]]:
        if indexes is None:
            return default_interaction_indexes(depth)
        groups = [list(g) for g in indexes]
        expected = 0
        for first, last in groups:
            if first != expected or last < first:
                raise ValueError(f"ViTAdapter.interaction_indexes {groups} must be contiguous [first, last] groups "
                                 f"covering blocks 0..{depth - 1} in order")
            expected = last + 1
        if expected != depth:
            raise ValueError(f"ViTAdapter.interaction_indexes {groups} cover {expected} blocks but the encoder has "
                             f"{depth}")
        return groups

    def _freeze(self, freeze_vit: bool, trainable_vit_blocks: Optional[int], depth: int) -> None:
        if not freeze_vit and trainable_vit_blocks is None:
            return
        keep = 0 if freeze_vit else int(trainable_vit_blocks)
        if not 0 <= keep <= depth:
            raise ValueError(f"ViTAdapter.trainable_vit_blocks={trainable_vit_blocks} must be in 0..{depth}")
        for p in self.vit.parameters():
            p.requires_grad = False
        for blk in list(self.vit.blocks)[depth - keep:]:
            for p in blk.parameters():
                p.requires_grad = True

    def _init_adapter(self) -> None:
        def init(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        for module in (self.spm, self.interactions, self.up, self.norms):
            module.apply(init)
        for m in self.interactions.modules():
            if isinstance(m, DeformableAttention):
                m.init_weights()  # deformable attention has its own scheme (sampling offsets on a ring)
        nn.init.normal_(self.level_embed)

    def init_weights(self) -> None:
        """Load the encoder checkpoint (strictly); the adapter was initialised at construction.

        mmengine would otherwise call timm's own ``init_weights`` on the encoder and wipe pretrained weights.
        """
        if self.encoder_weights is not None:
            path = load_encoder_weights(self.vit, self.encoder_weights, self.spec, strict=True)
            print_log(f"ViTAdapter: loaded {self.spec.name} weights from {path}", logger="current",
                      level=logging.INFO)
        self._is_init = True

    def _pad(self, x: torch.Tensor, multiple: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % multiple, (-w) % multiple
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        vit = self.vit
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        return tokens[:, :vit.num_prefix_tokens], tokens[:, vit.num_prefix_tokens:]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        b, _, h, w = x.shape
        x = self._pad(x, 32)
        geometry = AdapterGeometry.build(tuple(x.shape[-2:]), self.patch_size, x.device)

        c1, c2, c3, c4 = self.spm(x)
        c = torch.cat([lvl.flatten(2).transpose(1, 2) + self.level_embed[i]
                       for i, lvl in enumerate((c2, c3, c4))], dim=1)

        prefix, tokens = self._embed(self._pad(x, self.patch_size))
        vh, vw = geometry.vit_shape
        vit_maps = []
        for block, (first, last) in zip(self.interactions, self.interaction_indexes):
            tokens, c, prefix = block(tokens, c, prefix, self.vit.blocks[first:last + 1], geometry,
                                      checkpoint_blocks=self.with_cp)
            vit_maps.append(tokens.transpose(1, 2).reshape(b, self.embed_dim, vh, vw))

        c2, c3, c4 = [t.transpose(1, 2).reshape(b, self.embed_dim, hh, ww)
                      for t, (hh, ww) in zip(torch.split(c, geometry.pyramid_lengths, dim=1),
                                             geometry.pyramid_shapes)]
        pyramid = [self.up(c2) + c1, c2, c3, c4]
        if self.add_vit_feature:
            pyramid = [p + geometry.vit_map_at(v, s) for p, v, s in zip(pyramid, vit_maps, OUTPUT_STRIDES)]
        return tuple(norm(p)[..., :math.ceil(h / s), :math.ceil(w / s)]
                     for norm, p, s in zip(self.norms, pyramid, OUTPUT_STRIDES))
