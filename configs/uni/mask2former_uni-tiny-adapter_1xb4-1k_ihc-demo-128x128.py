# The embedded demo: tiny UNI-layout ViT-Adapter + Mask2Former fine-tuned on the IHC image shipped in
# data/ihc (3 classes, masks derived by colour deconvolution), on one CPU in minutes.
_base_ = [
    '../_base_/models/mask2former_vit-adapter_uni-tiny.py',
    '../_base_/datasets/ihc_demo.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_40k_layer-decay.py',
]
num_classes = 3
model = dict(
    backbone=dict(norm_cfg=dict(type='SyncBN', requires_grad=True)),
    decode_head=dict(num_classes=num_classes, loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    test_cfg=dict(mode='slide', crop_size=(128, 128), stride=(96, 96)))

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
    checkpoint=dict(interval=250, max_keep_ckpts=1, save_best='mDice'),
    visualization=dict(type='SegVisualizationHook', draw=True, interval=1))
env_cfg = dict(cudnn_benchmark=False)
