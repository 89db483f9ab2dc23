# Cells as objects with UNI2-h (ViT-H/14, 8 register tokens, SwiGLU) + ViT-Adapter + mmdet's Mask2Former in
# instance mode; the same changes to the instance base as mask2former_vit-adapter_uni2-h.py makes to the
# semantic one (24 deformable heads so each head stays a power of two: 1536 * 0.5 / 24 = 32).
_base_ = ['./mask2former-ins_vit-adapter_uni.py']
embed_dim = 1536
model = dict(
    backbone=dict(encoder='uni2-h', deform_num_heads=24),
    panoptic_head=dict(in_channels=[embed_dim] * 4))
