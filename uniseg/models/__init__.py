"""Models registered into mmseg's registry (the ViT-Adapter backbone, the Mask2Former head and pixel decoder,
the segmentor) and mmdet's (the cell detector). Importing this package registers them and changes nothing else."""
from .backbones import ViTAdapter
from .decode_heads import UniMask2FormerHead
from .detectors import UniMask2Former
from .layers import UniMSDeformAttnPixelDecoder
from .segmentors import UniEncoderDecoder

__all__ = ["ViTAdapter", "UniMask2FormerHead", "UniMask2Former", "UniMSDeformAttnPixelDecoder", "UniEncoderDecoder"]
