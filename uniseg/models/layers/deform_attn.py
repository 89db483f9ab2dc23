"""Multi-scale deformable attention on top of mmcv's op, with the dispatch uniseg needs.

mmcv's ``MultiScaleDeformableAttention`` chooses the compiled kernel whenever a tensor is on a GPU and
crashes when mmcv was built without CUDA ops (a CPU wheel on a GPU node). It also adds its input back
(``output + identity``), while ViT-Adapter's injector needs ``x + gamma * attn``. uniseg therefore
keeps mmcv's parameters and initialisation but owns the dispatch:

* compiled kernel on CUDA when mmcv has CUDA ops (bf16 is computed in float32 there: the kernel
  does not take bfloat16 on every mmcv build);
* mmcv's PyTorch reference path on CPU, and on CUDA without compiled kernels, with a one-time warning.
"""
from __future__ import annotations

import functools
import warnings

import torch
from mmcv.ops import multi_scale_deform_attn as _mmcv_msda
from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttention, MultiScaleDeformableAttnFunction,
                                              multi_scale_deformable_attn_pytorch)

__all__ = ["DeformableAttention", "ms_deform_attn", "mmcv_has_cuda_ops", "patch_mmcv_deformable_attention",
           "use_compiled_kernel"]


@functools.lru_cache(maxsize=None)
def mmcv_has_cuda_ops() -> bool:
    """Whether this mmcv build contains the CUDA kernels of its ops."""
    from mmcv.ops import get_compiling_cuda_version

    return get_compiling_cuda_version() not in ("not available", "", None)


@functools.lru_cache(maxsize=None)
def _warn_cuda_fallback() -> None:
    warnings.warn(
        "mmcv was built without CUDA ops: multi-scale deformable attention runs through the slower PyTorch "
        "path on the GPU. Rebuild with `UNISEG_CUDA=1 bash tools/setup_env.sh` for the compiled kernel.",
        RuntimeWarning, stacklevel=4)


def _cuda_kernel(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
    dtype = value.dtype
    if dtype == torch.bfloat16:
        value, sampling_locations, attention_weights = (
            value.float(), sampling_locations.float(), attention_weights.float())
    out = MultiScaleDeformableAttnFunction.apply(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    return out.to(dtype)


def use_compiled_kernel(on_cuda: bool) -> bool:
    """Whether tensors on this device go to mmcv's compiled kernel (warning once when they cannot)."""
    if not on_cuda:
        return False
    if mmcv_has_cuda_ops():
        return True
    _warn_cuda_fallback()
    return False


def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                   im2col_step: int = 64) -> torch.Tensor:
    """Sample and weight ``value`` (B, N, heads, C/heads); returns (B, Lq, C)."""
    if use_compiled_kernel(value.is_cuda):
        return _cuda_kernel(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                            im2col_step)
    return multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)


class DeformableAttention(MultiScaleDeformableAttention):
    """mmcv's deformable attention that returns the attention output only (no residual, no dropout).

    Inputs are batch-first. ``reference_points`` is (B or 1, Lq, levels, 2) in [0, 1] of each level's extent.
    """

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int = 4,
                 value_proj_ratio: float = 1.0, im2col_step: int = 64):
        super().__init__(embed_dims=embed_dims, num_heads=num_heads, num_levels=num_levels, num_points=num_points,
                         im2col_step=im2col_step, dropout=0.0, batch_first=True, value_proj_ratio=value_proj_ratio)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,  # type: ignore[override]
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor) -> torch.Tensor:
        bs, num_query, _ = query.shape
        num_value = value.shape[1]
        value = self.value_proj(value).view(bs, num_value, self.num_heads, -1)
        offsets = self.sampling_offsets(query).view(
            bs, num_query, self.num_heads, self.num_levels, self.num_points, 2)
        weights = self.attention_weights(query).view(bs, num_query, self.num_heads, -1).softmax(-1)
        weights = weights.view(bs, num_query, self.num_heads, self.num_levels, self.num_points)
        # Offsets are in cells of each level; reference points in the level's normalised extent.
        normalizer = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).to(offsets.dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, self.im2col_step)
        return self.output_proj(out)


@functools.lru_cache(maxsize=None)
def patch_mmcv_deformable_attention() -> None:
    """Give mmcv's own module (used by mmdet's Mask2Former pixel decoder) the same dispatch.

    Without CUDA ops, mmcv's module is told CUDA is unavailable so it takes its PyTorch path on GPU
    tensors; with CUDA ops, bf16 inputs are computed in float32. Idempotent.
    """
    if not torch.cuda.is_available():
        return
    if not mmcv_has_cuda_ops():
        _mmcv_msda.IS_CUDA_AVAILABLE = False
        return

    class _Float32ForBF16:
        @staticmethod
        def apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
            return _cuda_kernel(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                im2col_step)

    _mmcv_msda.MultiScaleDeformableAttnFunction = _Float32ForBF16
