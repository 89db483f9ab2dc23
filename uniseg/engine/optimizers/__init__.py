from .bf16_wrapper import BF16OptimWrapper
from .layer_decay import ViTLayerDecayOptimizerConstructor, vit_layer_id

__all__ = ["BF16OptimWrapper", "ViTLayerDecayOptimizerConstructor", "vit_layer_id"]
