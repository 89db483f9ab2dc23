"""mmseg's ``EncoderDecoder`` with the checks a ViT-Adapter config needs at build time.

A wrong ``in_channels`` in a Mask2Former head only surfaces as a shape error deep inside the pixel
decoder on the first forward pass, after minutes of data loading on a cluster. Checking it when the
model is built turns it into a message that names the field.
"""
from __future__ import annotations

from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS

__all__ = ["UniEncoderDecoder"]


@MODELS.register_module()
class UniEncoderDecoder(EncoderDecoder):
    """``EncoderDecoder`` that verifies the head reads what the backbone produces."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        produced = getattr(self.backbone, "out_channels", None)
        expected = getattr(self.decode_head, "in_channels", None)
        if produced is not None and expected is not None and list(expected) != list(produced):
            raise ValueError(
                f"model.decode_head.in_channels={list(expected)} does not match the backbone's outputs "
                f"{list(produced)} ({type(self.backbone).__name__} "
                f"encoder={getattr(self.backbone, 'spec', None) and self.backbone.spec.name!r}); "
                f"set in_channels to {list(produced)}")
