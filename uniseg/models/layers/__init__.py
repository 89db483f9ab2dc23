from .deform_attn import (DeformableAttention, mmcv_has_cuda_ops, ms_deform_attn, patch_mmcv_deformable_attention,
                          use_compiled_kernel)
from .norm import SyncBatchNorm2d, build_adapter_norm, is_distributed

__all__ = [
    "DeformableAttention", "mmcv_has_cuda_ops", "ms_deform_attn", "patch_mmcv_deformable_attention",
    "SyncBatchNorm2d", "build_adapter_norm", "is_distributed",
]
