# The cells-as-objects demo: tiny UNI-layout ViT-Adapter + mmdet Mask2Former (instance mode) trained on the
# fluorescence nuclei shipped in data/nuclei (expert masks; not H&E), on one CPU in minutes.
# tools/demo_cells.py trains it beside its semantic twin (..._nuclei-128x128.py: same crops, augmentations,
# iterations, seed and optimizer) and scores both with the same CellInstanceMetric.
_base_ = [
    '../_base_/models/mask2former-ins_vit-adapter_uni-tiny.py',
    '../_base_/datasets/nuclei_demo_instance.py',
    '../_base_/default_runtime_instance.py',
    '../_base_/schedules/schedule_40k_layer-decay_instance.py',
]
num_things_classes = 1
model = dict(
    panoptic_head=dict(num_things_classes=num_things_classes,
                       loss_cls=dict(class_weight=[1.0] * num_things_classes + [0.1])),
    panoptic_fusion_head=dict(num_things_classes=num_things_classes))

train_dataloader = dict(batch_size=4, num_workers=2)
max_iters = 1000
optim_wrapper = dict(optimizer=dict(lr=5e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=250)
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(interval=250, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False)
