# Cells as objects: UNI (ViT-L/16) + ViT-Adapter + mmdet Mask2Former (instance mode, 300 queries) on CoNSeP
# with HoVer-Net's four nucleus classes, 256 px crops at 0.5 um/px (512 px of the 40x tiles), 8 GPUs x 2.
# CoNSeP has 24 training tiles: 10k iterations (160k crops) instead of the base schedule's 40k.
# Whole CoNSeP test tiles (500 px at 0.5 um/px, about 590 nuclei) hold more nuclei than 300 queries can return,
# so they are predicted as tools/infer.py predicts slides: 256 px windows (the training size), stride 192, each
# nucleus kept by exactly one window (test_cfg.mode='slide').
_base_ = [
    '../_base_/models/mask2former-ins_vit-adapter_uni.py',
    '../_base_/datasets/consep_instance.py',
    '../_base_/default_runtime_instance.py',
    '../_base_/schedules/schedule_40k_layer-decay_instance.py',
]
num_things_classes = 4
model = dict(
    panoptic_head=dict(num_things_classes=num_things_classes,
                       loss_cls=dict(class_weight=[1.0] * num_things_classes + [0.1])),
    panoptic_fusion_head=dict(num_things_classes=num_things_classes),
    test_cfg=dict(mode='slide', crop_size=(256, 256), stride=(192, 192)))

max_iters = 10000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=1000)
default_hooks = dict(checkpoint=dict(interval=1000))
