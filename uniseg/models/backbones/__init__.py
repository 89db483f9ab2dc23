from .encoders import create_encoder, patch_token_grid
from .spec import ENCODERS, IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, get_encoder_spec, list_encoders
from .vit_adapter import ViTAdapter
from .weights import CheckpointError, load_encoder_weights

__all__ = [
    "ENCODERS", "EncoderSpec", "IMAGENET_MEAN", "IMAGENET_STD", "create_encoder", "get_encoder_spec", "list_encoders",
    "patch_token_grid", "CheckpointError", "load_encoder_weights", "ViTAdapter",
]
