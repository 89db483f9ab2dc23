# Cells as objects with UNI2-h (ViT-H/14 + registers) + ViT-Adapter + mmdet Mask2Former (instance mode, 300
# queries) on PanNuke's five nucleus types (128 px at 0.5 um/px), 8 GPUs x 8, 40k iterations.
# Gradient checkpointing (with_cp) trades compute for activation memory around the 681M-parameter encoder.
_base_ = [
    '../_base_/models/mask2former-ins_vit-adapter_uni2-h.py',
    '../_base_/datasets/pannuke_instance.py',
    '../_base_/default_runtime_instance.py',
    '../_base_/schedules/schedule_40k_layer-decay_instance.py',
]
num_things_classes = 5
model = dict(
    backbone=dict(with_cp=True),
    panoptic_head=dict(num_things_classes=num_things_classes,
                       loss_cls=dict(class_weight=[1.0] * num_things_classes + [0.1])),
    panoptic_fusion_head=dict(num_things_classes=num_things_classes))
