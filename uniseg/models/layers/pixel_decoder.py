"""Mask2Former's pixel decoder with uniseg's deformable-attention dispatch.

mmdet's ``MSDeformAttnPixelDecoder`` builds its encoder layers with mmcv's ``MultiScaleDeformableAttention``,
which sends every CUDA tensor to mmcv's compiled kernel (a crash when mmcv was built without CUDA ops) and
casts the sampling locations to float16 under fp16 autocast. This registered variant is the same decoder
whose encoder self-attention is :class:`UniMultiScaleDeformableAttention`: same parameters (names, shapes,
initialisation), so checkpoints of the stock decoder load unchanged, but the dispatch of
:func:`~uniseg.models.layers.ms_deform_attn`. A config selects it with
``pixel_decoder=dict(type='UniMSDeformAttnPixelDecoder', ...)`` (mmseg scope) or
``type='mmseg.UniMSDeformAttnPixelDecoder'`` from an mmdet-scoped config.
"""
from __future__ import annotations

from mmdet.models.layers import MSDeformAttnPixelDecoder
from mmdet.registry import MODELS as MMDET_MODELS
from mmseg.registry import MODELS

from .deform_attn import UniMultiScaleDeformableAttention

__all__ = ["UniMSDeformAttnPixelDecoder"]


@MMDET_MODELS.register_module()
@MODELS.register_module()
class UniMSDeformAttnPixelDecoder(MSDeformAttnPixelDecoder):
    """mmdet's multi-scale deformable-attention pixel decoder; arguments are mmdet's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for layer in self.encoder.layers:
            layer.self_attn = UniMultiScaleDeformableAttention.from_mmcv(layer.self_attn, **layer.self_attn_cfg)
