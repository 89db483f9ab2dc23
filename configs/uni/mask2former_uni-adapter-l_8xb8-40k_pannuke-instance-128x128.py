# Cells as objects: UNI (ViT-L/16) + ViT-Adapter + mmdet Mask2Former (instance mode, 300 queries) on PanNuke's
# five nucleus types (256 px patches at 0.25 um/px are 128 px at UNI's 0.5 um/px), 8 GPUs x 8, 40k iterations.
# Scored with bPQ / mPQ / F1 (CellInstanceMetric) at the source resolution.
_base_ = [
    '../_base_/models/mask2former-ins_vit-adapter_uni.py',
    '../_base_/datasets/pannuke_instance.py',
    '../_base_/default_runtime_instance.py',
    '../_base_/schedules/schedule_40k_layer-decay_instance.py',
]
num_things_classes = 5
model = dict(
    panoptic_head=dict(num_things_classes=num_things_classes,
                       loss_cls=dict(class_weight=[1.0] * num_things_classes + [0.1])),
    panoptic_fusion_head=dict(num_things_classes=num_things_classes))
