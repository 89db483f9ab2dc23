"""Multi-scale deformable attention on top of mmcv's op, with the dispatch uniseg needs.

mmcv's ``MultiScaleDeformableAttention`` chooses the compiled kernel whenever a tensor is on a GPU and
crashes when mmcv was built without CUDA ops (a CPU wheel on a GPU node), and under mixed precision it
casts the sampling locations to the value's half-precision dtype. uniseg keeps mmcv's parameters,
initialisation and call contract but owns the dispatch (:func:`ms_deform_attn`):

* compiled kernel on CUDA when mmcv has CUDA ops;
* mmcv's PyTorch reference path on CPU, and on CUDA without compiled kernels, with a one-time warning;
* on either path, float16 and bfloat16 inputs are computed in float32 and the result is cast back.

Two modules use it: :class:`UniMultiScaleDeformableAttention` (a drop-in for mmcv's module, used by
the registered pixel decoder ``UniMSDeformAttnPixelDecoder``) and :class:`DeformableAttention`
(ViT-Adapter's injector and extractor, which need the attention output without mmcv's residual).
"""
from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch
from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttention, MultiScaleDeformableAttnFunction,
                                              multi_scale_deformable_attn_pytorch)

__all__ = ["DeformableAttention", "UniMultiScaleDeformableAttention", "ms_deform_attn", "mmcv_has_cuda_ops",
           "use_compiled_kernel"]

_REDUCED_PRECISION = (torch.float16, torch.bfloat16)


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


def use_compiled_kernel(on_cuda: bool) -> bool:
    """Whether tensors on this device go to mmcv's compiled kernel (warning once when they cannot)."""
    if not on_cuda:
        return False
    if mmcv_has_cuda_ops():
        return True
    _warn_cuda_fallback()
    return False


def _compiled_kernel(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                     im2col_step):
    return MultiScaleDeformableAttnFunction.apply(value, spatial_shapes, level_start_index, sampling_locations,
                                                  attention_weights, im2col_step)


def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                   im2col_step: int = 64) -> torch.Tensor:
    """Sample and weight ``value`` (B, N, heads, C/heads); returns (B, Lq, C) in ``value``'s dtype.

    Half-precision inputs are computed in float32. Sampling locations are fractions of each level's
    extent, and float16 resolves only 2^-11 near 1.0: a whole cell of a 2048-wide level, so bilinear
    sampling would snap to the wrong pixels on large inputs. mmcv's kernel casts the locations to the
    value's dtype (so autocast's float32 locations would be rounded to float16 there), and not every mmcv
    build takes bfloat16 at all.
    """
    dtype = value.dtype
    compute = torch.float32 if dtype in _REDUCED_PRECISION else dtype
    value, sampling_locations, attention_weights = (
        value.to(compute), sampling_locations.to(compute), attention_weights.to(compute))
    if use_compiled_kernel(value.is_cuda):
        out = _compiled_kernel(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                               im2col_step)
    else:
        out = multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)
    return out.to(dtype)


class UniMultiScaleDeformableAttention(MultiScaleDeformableAttention):
    """mmcv's deformable attention (same parameters, initialisation and ``forward`` contract) computed
    through :func:`ms_deform_attn`.

    Parameter names are mmcv's, so checkpoints of models built with mmcv's module load unchanged.
    """

    def attend(self, query: torch.Tensor, value: torch.Tensor, reference_points: torch.Tensor,
               spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
               key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The attention output, projected (batch-first; no dropout, no residual).

        ``reference_points`` is (B or 1, Lq, levels, 2) points in [0, 1] of each level's extent, or
        (..., 4) boxes (centre, size) whose size scales the offsets, as in mmcv.
        """
        bs, num_query, _ = query.shape
        num_value = value.shape[1]
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, self.num_heads, -1)
        offsets = self.sampling_offsets(query).view(
            bs, num_query, self.num_heads, self.num_levels, self.num_points, 2)
        weights = self.attention_weights(query).view(bs, num_query, self.num_heads, -1).softmax(-1)
        weights = weights.view(bs, num_query, self.num_heads, self.num_levels, self.num_points)
        if reference_points.shape[-1] == 2:
            # Offsets are in cells of each level; reference points in the level's normalised extent.
            normalizer = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).to(offsets.dtype)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / self.num_points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points must end in 2 (points) or 4 (boxes) values, got shape "
                             f"{tuple(reference_points.shape)}")
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, self.im2col_step)
        return self.output_proj(out)

    def forward(self, query: torch.Tensor, key: Optional[torch.Tensor] = None,  # type: ignore[override]
                value: Optional[torch.Tensor] = None, identity: Optional[torch.Tensor] = None,
                query_pos: Optional[torch.Tensor] = None, key_padding_mask: Optional[torch.Tensor] = None,
                reference_points: Optional[torch.Tensor] = None, spatial_shapes: Optional[torch.Tensor] = None,
                level_start_index: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        """mmcv's contract: ``value`` and ``identity`` default to ``query``; returns
        ``dropout(attention) + identity`` in the module's ``batch_first`` layout (``key`` is unused)."""
        value = query if value is None else value
        identity = query if identity is None else identity
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query, value = query.transpose(0, 1), value.transpose(0, 1)
        out = self.attend(query, value, reference_points, spatial_shapes, level_start_index, key_padding_mask)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return self.dropout(out) + identity

    @classmethod
    def from_mmcv(cls, module: MultiScaleDeformableAttention, **cfg) -> "UniMultiScaleDeformableAttention":
        """The same attention as ``module`` (built from ``cfg``), holding ``module``'s parameter tensors.

        The new module is built on the meta device: nothing is allocated twice and nothing is drawn from
        the random generator, so a seeded model initialises exactly as it would with mmcv's module.
        """
        with torch.device("meta"):
            new = cls(**cfg)
        new.load_state_dict(module.state_dict(keep_vars=True), strict=True, assign=True)
        return new.train(module.training)


class DeformableAttention(UniMultiScaleDeformableAttention):
    """Deformable attention that returns the attention output only (no residual, no dropout).

    ViT-Adapter's injector and extractor add it themselves (``x + gamma * attn``). Inputs are batch-first;
    ``reference_points`` is (B or 1, Lq, levels, 2) in [0, 1] of each level's extent.
    """

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int = 4,
                 value_proj_ratio: float = 1.0, im2col_step: int = 64):
        super().__init__(embed_dims=embed_dims, num_heads=num_heads, num_levels=num_levels, num_points=num_points,
                         im2col_step=im2col_step, dropout=0.0, batch_first=True, value_proj_ratio=value_proj_ratio)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,  # type: ignore[override]
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor) -> torch.Tensor:
        return self.attend(query, value, reference_points, spatial_shapes, level_start_index)
