# UNI2-h (ViT-H/14, 8 register tokens, SwiGLU) + ViT-Adapter + Mask2Former. The adapter keeps ViT-Adapter's
# recipe; deformable attention uses 24 heads so each head stays a power of two (1536 * 0.5 / 24 = 32).
_base_ = ['./mask2former_vit-adapter_uni.py']
embed_dim = 1536
model = dict(
    backbone=dict(encoder='uni2-h', deform_num_heads=24),
    decode_head=dict(in_channels=[embed_dim] * 4))
