from .layer_decay import ViTLayerDecayOptimizerConstructor, vit_layer_id

__all__ = ["ViTLayerDecayOptimizerConstructor", "vit_layer_id"]
