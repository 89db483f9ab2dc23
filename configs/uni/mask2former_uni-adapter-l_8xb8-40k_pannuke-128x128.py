# UNI (ViT-L/16) + ViT-Adapter + Mask2Former on PanNuke nucleus types (256 px patches at 0.25 um/px are 128 px
# at UNI's 0.5 um/px), 8 GPUs x 8, 40k iterations. Whole-image inference: a patch is smaller than a window.
_base_ = [
    '../_base_/models/mask2former_vit-adapter_uni.py',
    '../_base_/datasets/pannuke.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_40k_layer-decay.py',
]
num_classes = 6
model = dict(
    data_preprocessor=dict(size=(128, 128)),
    decode_head=dict(num_classes=num_classes, loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    test_cfg=dict(mode='whole'))
