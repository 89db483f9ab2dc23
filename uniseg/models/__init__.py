"""Models registered into mmseg's registry: the ViT-Adapter backbone, the Mask2Former head, the segmentor."""
from .backbones import ViTAdapter
from .decode_heads import UniMask2FormerHead
from .layers import patch_mmcv_deformable_attention
from .segmentors import UniEncoderDecoder

patch_mmcv_deformable_attention()

__all__ = ["ViTAdapter", "UniMask2FormerHead", "UniEncoderDecoder"]
