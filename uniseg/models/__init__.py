"""Models registered into mmseg's registry: the ViT-Adapter backbone, the Mask2Former head and pixel decoder,
the segmentor. Importing this package registers them and changes nothing else."""
from .backbones import ViTAdapter
from .decode_heads import UniMask2FormerHead
from .layers import UniMSDeformAttnPixelDecoder
from .segmentors import UniEncoderDecoder

__all__ = ["ViTAdapter", "UniMask2FormerHead", "UniMSDeformAttnPixelDecoder", "UniEncoderDecoder"]
