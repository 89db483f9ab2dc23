from .optimizers import ViTLayerDecayOptimizerConstructor

__all__ = ["ViTLayerDecayOptimizerConstructor"]
