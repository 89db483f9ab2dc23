from .encoders import ENCODERS, EncoderSpec, create_encoder, get_encoder_spec, list_encoders, patch_token_grid
from .vit_adapter import ViTAdapter
from .weights import CheckpointError, load_encoder_weights

__all__ = [
    "ENCODERS", "EncoderSpec", "create_encoder", "get_encoder_spec", "list_encoders", "patch_token_grid",
    "CheckpointError", "load_encoder_weights", "ViTAdapter",
]
