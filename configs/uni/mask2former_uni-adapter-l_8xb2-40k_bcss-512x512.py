# UNI (ViT-L/16) + ViT-Adapter + Mask2Former on BCSS tissue regions (5 main classes), 8 GPUs x 2, 40k, 512 crops.
_base_ = [
    '../_base_/models/mask2former_vit-adapter_uni.py',
    '../_base_/datasets/bcss.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_40k_layer-decay.py',
]
num_classes = 5
model = dict(decode_head=dict(num_classes=num_classes, loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])))
