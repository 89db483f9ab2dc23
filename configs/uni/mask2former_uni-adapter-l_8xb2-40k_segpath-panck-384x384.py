# UNI (ViT-L/16) + ViT-Adapter + Mask2Former on SegPath panCK epithelium (984 px tiles at 0.22 um/px, resampled
# to 435 px at 0.5 um/px, hence 384 crops), 8 GPUs x 2, 40k iterations.
_base_ = [
    '../_base_/models/mask2former_vit-adapter_uni.py',
    '../_base_/datasets/segpath.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_40k_layer-decay.py',
]
num_classes = 2
model = dict(
    data_preprocessor=dict(size=(384, 384)),
    decode_head=dict(num_classes=num_classes, loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    test_cfg=dict(mode='slide', crop_size=(384, 384), stride=(256, 256)))
