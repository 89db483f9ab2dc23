"""Normalisation layers for the adapter's convolutional parts, chosen from the config.

ViT-Adapter hard-codes ``nn.SyncBatchNorm``, which refuses CPU tensors and breaks any single-process
run. uniseg reads ``norm_cfg`` instead: ``BN``/``GN``/``LN``... go to mmcv's builder, and ``SyncBN`` maps
to :class:`SyncBatchNorm2d`, which synchronises batch statistics across processes only when a process
group with more than one member exists, on any backend (NCCL on GPUs, gloo on CPUs), and behaves as
plain batch norm otherwise.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from mmcv.cnn import build_norm_layer
from torch import nn

__all__ = ["SyncBatchNorm2d", "build_adapter_norm", "is_distributed"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    # The autograd-aware collective: its backward sums the gradients of every rank, which together with
    # DDP's gradient averaging gives exactly the gradient of the global-batch statistics.
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t, op=dist.ReduceOp.SUM)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the global batch of all processes; plain batch norm in a single process."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        channels = x.shape[1]
        dims = (0, 2, 3)
        local_count = x.new_tensor([x.numel() / channels], dtype=torch.float32)
        xf = x.float()
        stats = _all_reduce_sum(torch.cat([xf.sum(dims), local_count]))
        count = stats[-1]
        mean = stats[:-1] / count
        # Second pass on centred values: numerically safer than E[x^2] - E[x]^2.
        var = _all_reduce_sum(((xf - mean[None, :, None, None]) ** 2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
                self.num_batches_tracked.add_(1)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def build_adapter_norm(norm_cfg: Optional[dict], num_features: int) -> Tuple[str, nn.Module]:
    """Build the norm layer named by ``norm_cfg`` (mmcv style); see the module docstring for ``SyncBN``."""
    cfg = dict(norm_cfg or dict(type="BN"))
    if cfg.get("type") == "SyncBN":
        requires_grad = cfg.pop("requires_grad", True)
        cfg.pop("type")
        layer = SyncBatchNorm2d(num_features, **cfg)
        for p in layer.parameters():
            p.requires_grad = requires_grad
        return "bn", layer
    return build_norm_layer(cfg, num_features)

