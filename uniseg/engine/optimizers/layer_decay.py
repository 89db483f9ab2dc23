"""Layer-wise learning-rate decay for timm ViTs inside a segmentor.

Fine-tuning a pretrained ViT works best when early blocks move less than late ones (BEiT; ViT-Adapter
uses a decay of 0.9 over 24 layers). mmseg's ``LayerDecayOptimizerConstructor`` only knows BEiT, MAE
and ConvNeXt parameter names, so uniseg has its own for timm's names:

* layer 0: ``patch_embed``, ``pos_embed``, ``cls_token``, ``reg_token`` of the encoder, and Mask2Former's
  query, level and output embeddings (``{decode_head,panoptic_head}.{mask_embed,cls_embed,level_embed,
  query_embed,query_feat}``: the semantic segmentor's and the instance detector's head alike);
* layer ``N + 1``: ``blocks.N``;
* top layer (``depth + 1``, full learning rate): everything else (adapter, pixel decoder, transformer decoder).

Parameter ``p`` of layer ``i`` gets ``lr = base_lr * decay ** (depth + 1 - i)``. Weight decay is zero for
norms, biases, layer-scale factors (every 1-D parameter) and for embeddings named in ``no_decay_keys``.

The head embeddings at layer 0 follow ViT-Adapter's reference Mask2Former recipe (its
``get_num_layer_for_vit``), so a reproduction of its numbers trains them at ``decay ** (depth + 1)`` of the
base lr (0.072 for ViT-L at 0.9). ``paramwise_cfg=dict(decay_head_embeddings=False)`` trains them at the
full lr instead, like the rest of the head (uniseg's behaviour before it followed the recipe).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMDET_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

__all__ = ["HEAD_EMBEDDINGS", "MASK2FORMER_HEADS", "ViTLayerDecayOptimizerConstructor", "is_head_embedding",
           "vit_layer_id"]

DEFAULT_NO_DECAY_KEYS = ("pos_embed", "cls_token", "reg_token", "level_embed", "query_embed", "query_feat",
                         "level_encoding")
#: Mask2Former heads: mmseg's segmentor calls its head ``decode_head``, mmdet's detector ``panoptic_head``.
MASK2FORMER_HEADS = ("decode_head", "panoptic_head")
#: Mask2Former head parameters that ViT-Adapter's recipe puts at layer 0 (see module docstring).
HEAD_EMBEDDINGS = ("mask_embed", "cls_embed", "level_embed", "query_embed", "query_feat")
_WRAPPER_PARTS = re.compile(r"(_fsdp_wrapped_module\.|_checkpoint_wrapped_module\.|module\.)")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def is_head_embedding(name: str) -> bool:
    """Whether parameter ``name`` is one of a Mask2Former head's :data:`HEAD_EMBEDDINGS`."""
    parts = name.split(".", 2)
    return len(parts) == 3 and parts[0] in MASK2FORMER_HEADS and parts[1] in HEAD_EMBEDDINGS


def vit_layer_id(name: str, num_layers: int, vit_prefix: str = "backbone.vit.",
                 decay_head_embeddings: bool = True) -> int:
    """Layer index of parameter ``name`` (``num_layers`` = depth + 2)."""
    if decay_head_embeddings and is_head_embedding(name):
        return 0
    if not name.startswith(vit_prefix):
        return num_layers - 1
    local = name[len(vit_prefix):]
    if local.startswith(("patch_embed.", "pos_embed", "cls_token", "reg_token")):
        return 0
    match = _BLOCK.match(local)
    if match:
        return int(match.group(1)) + 1
    return num_layers - 1


@MMDET_OPTIM_WRAPPER_CONSTRUCTORS.register_module()
@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """``paramwise_cfg``: ``layer_decay_rate`` (0.9), ``num_layers`` (encoder depth; read from the model if
    omitted), ``vit_prefix`` (``'backbone.vit.'``), ``no_decay_keys``, ``decay_head_embeddings`` (True: head
    embeddings at layer 0 as in ViT-Adapter; False: at full lr). See the module docstring."""

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = "", **kwargs) -> None:
        cfg = self.paramwise_cfg
        decay_rate = float(cfg.get("layer_decay_rate", 0.9))
        vit_prefix = cfg.get("vit_prefix", "backbone.vit.")
        depth = cfg.get("num_layers") or self._encoder_depth(module, vit_prefix)
        num_layers = depth + 2
        no_decay_keys: Sequence[str] = tuple(cfg.get("no_decay_keys", DEFAULT_NO_DECAY_KEYS))
        decay_head_embeddings = bool(cfg.get("decay_head_embeddings", True))
        base_wd = self.base_wd or 0.0

        groups: Dict[Tuple[int, bool], dict] = {}
        for raw_name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            name = _WRAPPER_PARTS.sub("", raw_name)
            layer = vit_layer_id(name, num_layers, vit_prefix, decay_head_embeddings)
            no_decay = param.ndim == 1 or any(key in name for key in no_decay_keys)
            group = groups.get((layer, no_decay))
            if group is None:
                scale = decay_rate ** (num_layers - 1 - layer)
                group = groups[(layer, no_decay)] = dict(
                    params=[], param_names=[], lr=self.base_lr * scale, lr_scale=scale,
                    weight_decay=0.0 if no_decay else base_wd, layer_id=layer)
            group["params"].append(param)
            group["param_names"].append(name)
        params.extend(groups[k] for k in sorted(groups))
        print_log(f"ViTLayerDecayOptimizerConstructor: {len(groups)} parameter groups over {num_layers} layers, "
                  f"decay {decay_rate}, head embeddings at "
                  f"{'layer 0' if decay_head_embeddings else 'full lr'}", logger="current")

    @staticmethod
    def _encoder_depth(module: nn.Module, vit_prefix: str) -> int:
        path = vit_prefix.rstrip(".").split(".")
        target: Optional[nn.Module] = module
        for part in path:
            target = getattr(target, part, None)
            if target is None:
                raise ValueError(f"paramwise_cfg.num_layers is not set and the model has no '{vit_prefix}' "
                                 f"encoder to read the depth from")
        return len(target.blocks)
