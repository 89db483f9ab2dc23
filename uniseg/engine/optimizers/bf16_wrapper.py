"""bfloat16 autocast for training on any device.

mmengine's ``AmpOptimWrapper`` insists on an accelerator and always brings a gradient scaler. bf16
has float32's exponent range, so it needs no loss scaling, and CPUs run it natively; this wrapper only
enters ``torch.autocast`` around the forward pass. fp16 keeps using mmengine's wrapper (dynamic loss
scaling, GPUs only).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from mmdet.registry import OPTIM_WRAPPERS as MMDET_OPTIM_WRAPPERS
from mmengine.optim import OptimWrapper
from mmseg.registry import OPTIM_WRAPPERS
from torch import nn

__all__ = ["BF16OptimWrapper"]


@MMDET_OPTIM_WRAPPERS.register_module()
@OPTIM_WRAPPERS.register_module()
class BF16OptimWrapper(OptimWrapper):

    @contextmanager
    def optim_context(self, model: nn.Module):
        device_type = next(model.parameters()).device.type
        with super().optim_context(model), torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            yield
