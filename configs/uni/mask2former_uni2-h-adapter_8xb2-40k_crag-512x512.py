# UNI2-h (ViT-H/14 + registers) + ViT-Adapter + Mask2Former on CRAG glands, 8 GPUs x 2, 40k iterations, 512 crops.
# Gradient checkpointing (with_cp) trades compute for activation memory around the 681M-parameter encoder.
_base_ = [
    '../_base_/models/mask2former_vit-adapter_uni2-h.py',
    '../_base_/datasets/crag.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_40k_layer-decay.py',
]
num_classes = 2
model = dict(
    backbone=dict(with_cp=True),
    decode_head=dict(num_classes=num_classes, loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])))
