"""mmseg's Mask2Former head with the output size chosen the way the rest of mmseg chooses it.

mmseg 1.2.2's ``Mask2FormerHead.predict`` upsamples mask logits to ``pad_shape`` (the whole padded
image), but in ``slide`` mode the features come from one window, so adding the window's logits into
the full-image buffer fails (open upstream PR open-mmlab/mmsegmentation#3752). ``slide_inference``
marks its windows by setting ``img_shape`` to a ``torch.Size``, the convention ``BaseDecodeHead``
already honours; this head honours it too.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from mmseg.models.decode_heads import Mask2FormerHead as _MMSegMask2FormerHead
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

__all__ = ["UniMask2FormerHead", "output_size"]


def output_size(img_meta: dict) -> Tuple[int, int]:
    """Spatial size the head's logits must have for the input described by ``img_meta``."""
    if isinstance(img_meta["img_shape"], torch.Size):  # a window of slide inference
        return tuple(img_meta["img_shape"][:2])
    if "pad_shape" in img_meta:
        return tuple(img_meta["pad_shape"][:2])
    return tuple(img_meta["img_shape"][:2])


@MODELS.register_module()
class UniMask2FormerHead(_MMSegMask2FormerHead):
    """Mask2Former head (mmdet pixel decoder, masked-attention decoder, Hungarian matching) for ``whole``
    and ``slide`` inference alike."""

    def __init__(self, in_channels, **kwargs):
        super().__init__(in_channels=in_channels, **kwargs)
        self.in_channels = list(in_channels)  # kept so the segmentor can check it against the backbone

    def predict(self, x: Tuple[torch.Tensor, ...], batch_img_metas: List[dict], test_cfg: dict) -> torch.Tensor:
        data_samples = [SegDataSample(metainfo=meta) for meta in batch_img_metas]
        all_cls_scores, all_mask_preds = self(x, data_samples)
        mask_logits = F.interpolate(all_mask_preds[-1], size=output_size(batch_img_metas[0]), mode="bilinear",
                                    align_corners=False)
        # Semantic inference of Mask2Former: per-class score = sum over queries of p(class) * p(mask).
        class_probs = F.softmax(all_cls_scores[-1], dim=-1)[..., :-1]
        return torch.einsum("bqc,bqhw->bchw", class_probs, mask_logits.sigmoid())
