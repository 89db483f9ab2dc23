from .encoder_decoder import UniEncoderDecoder

__all__ = ["UniEncoderDecoder"]
