"""Building blocks of ViT-Adapter (Chen et al., ICLR 2023), written for any patch size and input shape.

The adapter keeps two streams: the ViT's patch tokens (one grid at the patch stride) and a
convolutional pyramid ``c`` at strides 8, 16 and 32 from the spatial prior module. Injectors let ViT
tokens read from the pyramid; extractors let the pyramid read back from the ViT. Both are
multi-scale deformable attentions whose reference points are computed from pixel geometry
(:class:`AdapterGeometry`), so a patch-14 ViT (UNI2-h) and a stride-16 pyramid stay aligned without
resizing the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from timm.layers import DropPath
from torch import nn

from ..layers import DeformableAttention, build_adapter_norm

__all__ = [
    "AdapterGeometry", "SpatialPriorModule", "ConvFFN", "Injector", "Extractor", "InteractionBlock",
    "default_interaction_indexes",
]

PYRAMID_STRIDES = (8, 16, 32)  # the levels the injector reads and the extractor writes


def default_interaction_indexes(depth: int, num_interactions: int = 4) -> List[List[int]]:
    """Split ``depth`` blocks into contiguous groups: 24 -> [[0, 5], [6, 11], [12, 17], [18, 23]]."""
    if depth < num_interactions:
        raise ValueError(f"a ViT of depth {depth} cannot host {num_interactions} interaction blocks")
    size = depth // num_interactions
    groups = [[i * size, (i + 1) * size - 1] for i in range(num_interactions)]
    groups[-1][1] = depth - 1
    return groups


def _reference_points(shapes: Sequence[Tuple[int, int]], strides: Sequence[float], extent: Tuple[int, int],
                      device: torch.device) -> torch.Tensor:
    """Centres of the cells of each grid, in pixels, normalised by ``extent`` (H, W): (1, sum(h*w), 2) as (x, y)."""
    points = []
    for (h, w), stride in zip(shapes, strides):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride / extent[0]
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride / extent[1]
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], -1))
    return torch.cat(points, 0)[None]


def _level_start_index(shapes: torch.Tensor) -> torch.Tensor:
    return torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])


@dataclass
class AdapterGeometry:
    """Sizes and deformable-attention inputs for one padded input size.

    ``pyramid_extent`` is the padded image the spatial prior module sees (a multiple of 32); the ViT sees
    the same image padded further to a multiple of its patch size (``vit_extent``). Reference points are
    normalised by the extent of the map being *sampled*, so both streams index the same pixels.
    """

    pyramid_shapes: List[Tuple[int, int]]
    vit_shape: Tuple[int, int]
    patch_size: int
    pyramid_extent: Tuple[int, int]
    vit_extent: Tuple[int, int]
    injector_inputs: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    extractor_inputs: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]

    @classmethod
    def build(cls, padded_hw: Tuple[int, int], patch_size: int, device: torch.device) -> "AdapterGeometry":
        hp, wp = padded_hw
        if hp % 32 or wp % 32:
            raise ValueError(f"pyramid input must be padded to a multiple of 32, got {padded_hw}")
        pyramid = [(hp // s, wp // s) for s in PYRAMID_STRIDES]
        vit_shape = (math.ceil(hp / patch_size), math.ceil(wp / patch_size))
        vit_extent = (vit_shape[0] * patch_size, vit_shape[1] * patch_size)

        # Injector: queries are ViT tokens, values the three pyramid levels (all spanning the padded image).
        pyr_shapes = torch.as_tensor(pyramid, dtype=torch.long, device=device)
        ref = _reference_points([vit_shape], [patch_size], (hp, wp), device)
        injector = (ref[:, :, None].expand(-1, -1, len(pyramid), -1), pyr_shapes, _level_start_index(pyr_shapes))

        # Extractor: queries are pyramid cells, values the ViT grid (spanning the patch-padded image).
        vit_shapes = torch.as_tensor([vit_shape], dtype=torch.long, device=device)
        ref = _reference_points(pyramid, PYRAMID_STRIDES, vit_extent, device)
        extractor = (ref[:, :, None], vit_shapes, _level_start_index(vit_shapes))
        return cls(pyramid, vit_shape, patch_size, (hp, wp), vit_extent, injector, extractor)

    @property
    def pyramid_lengths(self) -> List[int]:
        return [h * w for h, w in self.pyramid_shapes]

    def vit_map_at(self, vit_map: torch.Tensor, stride: int) -> torch.Tensor:
        """Resample a ViT map (B, C, h, w) to the pyramid grid of ``stride``, pixel-aligned, then crop."""
        target = (self.pyramid_extent[0] // stride, self.pyramid_extent[1] // stride)
        scale = self.patch_size / stride
        if scale != 1.0:
            vit_map = F.interpolate(vit_map, scale_factor=scale, mode="bilinear", align_corners=False,
                                    recompute_scale_factor=False)
        return vit_map[..., :target[0], :target[1]]


def _conv_norm_relu(in_ch: int, out_ch: int, stride: int, norm_cfg: Optional[dict]) -> List[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), build_adapter_norm(norm_cfg, out_ch)[1],
            nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """A light ResNet-style stem giving the local, high-resolution detail a plain ViT lacks.

    Strides 4 (c1), 8, 16, 32 with ``inplanes`` x (1, 2, 4, 4) channels, each projected to ``embed_dim``.
    It is never checkpointed: recomputing it would update its batch-norm statistics twice per step.
    """

    def __init__(self, inplanes: int = 64, embed_dim: int = 1024, norm_cfg: Optional[dict] = None):
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_norm_relu(3, inplanes, 2, norm_cfg),
            *_conv_norm_relu(inplanes, inplanes, 1, norm_cfg),
            *_conv_norm_relu(inplanes, inplanes, 1, norm_cfg),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*_conv_norm_relu(inplanes, 2 * inplanes, 2, norm_cfg))
        self.conv3 = nn.Sequential(*_conv_norm_relu(2 * inplanes, 4 * inplanes, 2, norm_cfg))
        self.conv4 = nn.Sequential(*_conv_norm_relu(4 * inplanes, 4 * inplanes, 2, norm_cfg))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)


class MultiLevelDWConv(nn.Module):
    """One 3x3 depthwise conv applied to each pyramid level of a concatenated token sequence."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        b, _, c = x.shape
        chunks = torch.split(x, [h * w for h, w in shapes], dim=1)
        out = [self.dwconv(t.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
               for t, (h, w) in zip(chunks, shapes)]
        return torch.cat(out, dim=1)


class ConvFFN(nn.Module):
    """MLP with a depthwise conv between its layers, so pyramid tokens mix with their spatial neighbours."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = MultiLevelDWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), shapes)))
        return self.drop(self.fc2(x))


def _maybe_checkpoint(fn: Callable, with_cp: bool, *args: torch.Tensor):
    if with_cp and any(a.requires_grad for a in args):
        return cp.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class Injector(nn.Module):
    """ViT tokens attend to the pyramid: ``x + gamma * attn(norm(x), norm(c))``.

    ``gamma`` starts at ``init_values`` (0 keeps the pretrained ViT untouched at the start of fine-tuning).
    """

    def __init__(self, dim: int, num_heads: int, n_points: int = 4, n_levels: int = 3, deform_ratio: float = 1.0,
                 init_values: float = 0.0, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.query_norm = norm_layer(dim)
        self.feat_norm = norm_layer(dim)
        self.attn = DeformableAttention(dim, num_heads, n_levels, n_points, value_proj_ratio=deform_ratio)
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, geometry: AdapterGeometry) -> torch.Tensor:
        ref, shapes, start = geometry.injector_inputs

        def inner(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return x + self.gamma * self.attn(self.query_norm(x), ref, self.feat_norm(c), shapes, start)

        return _maybe_checkpoint(inner, self.with_cp, x, c)


class Extractor(nn.Module):
    """Pyramid tokens attend to the ViT tokens, then a ConvFFN refines them."""

    def __init__(self, dim: int, num_heads: int, n_points: int = 4, deform_ratio: float = 1.0,
                 with_cffn: bool = True, cffn_ratio: float = 0.25, drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.query_norm = norm_layer(dim)
        self.feat_norm = norm_layer(dim)
        self.attn = DeformableAttention(dim, num_heads, 1, n_points, value_proj_ratio=deform_ratio)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio), drop) if with_cffn else None
        self.ffn_norm = norm_layer(dim) if with_cffn else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, c: torch.Tensor, x: torch.Tensor, geometry: AdapterGeometry) -> torch.Tensor:
        ref, shapes, start = geometry.extractor_inputs

        def inner(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            c = c + self.attn(self.query_norm(c), ref, self.feat_norm(x), shapes, start)
            if self.ffn is not None:
                c = c + self.drop_path(self.ffn(self.ffn_norm(c), geometry.pyramid_shapes))
            return c

        return _maybe_checkpoint(inner, self.with_cp, c, x)


class InteractionBlock(nn.Module):
    """Inject, run a group of ViT blocks (prefix tokens included), extract (twice more on the last group)."""

    def __init__(self, dim: int, num_heads: int, n_points: int = 4, deform_ratio: float = 1.0,
                 init_values: float = 0.0, with_cffn: bool = True, cffn_ratio: float = 0.25, drop: float = 0.0,
                 drop_path: float = 0.0, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 extra_extractor: bool = False, with_cp: bool = False):
        super().__init__()
        self.injector = Injector(dim, num_heads, n_points, 3, deform_ratio, init_values, norm_layer, with_cp)
        extractor_kwargs = dict(num_heads=num_heads, n_points=n_points, deform_ratio=deform_ratio,
                                with_cffn=with_cffn, cffn_ratio=cffn_ratio, drop=drop, drop_path=drop_path,
                                norm_layer=norm_layer, with_cp=with_cp)
        self.extractor = Extractor(dim, **extractor_kwargs)
        self.extra_extractors = (nn.ModuleList([Extractor(dim, **extractor_kwargs) for _ in range(2)])
                                 if extra_extractor else None)

    def forward(self, x: torch.Tensor, c: torch.Tensor, prefix: torch.Tensor, blocks: Sequence[nn.Module],
                geometry: AdapterGeometry, checkpoint_blocks: bool = False
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.injector(x, c, geometry)
        num_prefix = prefix.shape[1]
        tokens = torch.cat([prefix, x], dim=1)
        for blk in blocks:
            tokens = _maybe_checkpoint(blk, checkpoint_blocks, tokens)
        prefix, x = tokens[:, :num_prefix], tokens[:, num_prefix:]
        c = self.extractor(c, x, geometry)
        for extractor in self.extra_extractors or ():
            c = extractor(c, x, geometry)
        return x, c, prefix
