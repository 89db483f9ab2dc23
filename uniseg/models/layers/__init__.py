from .deform_attn import (DeformableAttention, UniMultiScaleDeformableAttention, mmcv_has_cuda_ops, ms_deform_attn,
                          use_compiled_kernel)
from .norm import SyncBatchNorm2d, build_adapter_norm, is_distributed
from .pixel_decoder import UniMSDeformAttnPixelDecoder

__all__ = [
    "DeformableAttention", "UniMultiScaleDeformableAttention", "UniMSDeformAttnPixelDecoder", "mmcv_has_cuda_ops",
    "ms_deform_attn", "use_compiled_kernel", "SyncBatchNorm2d", "build_adapter_norm", "is_distributed",
]
