"""Models registered into mmseg's registry: the ViT-Adapter backbone, the Mask2Former head and pixel decoder,
the segmentor."""
import torch

from .backbones import ViTAdapter
from .decode_heads import UniMask2FormerHead
from .layers import UniMSDeformAttnPixelDecoder
from .segmentors import UniEncoderDecoder

# On CPUs, arithmetic on subnormal floats is 10-100x slower. Fine-tuning produces them (layer-scale factors
# of 1e-5, AdamW moments of tiny gradients): a tiny-model training step on 2 cores went from 0.3 s to 3.5 s
# after 20 iterations. Flushing them to zero changes nothing a float32 model can resolve.
torch.set_flush_denormal(True)

__all__ = ["ViTAdapter", "UniMask2FormerHead", "UniMSDeformAttnPixelDecoder", "UniEncoderDecoder"]
