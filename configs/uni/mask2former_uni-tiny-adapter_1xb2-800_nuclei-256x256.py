# The semantic twin of the cells-as-objects demo: tiny UNI-layout ViT-Adapter + mmseg Mask2Former
# (background / nucleus) trained on data/nuclei exactly as ..._nuclei-instance-256x256.py (same crops,
# augmentations, iterations, seed and optimizer) and scored as cells: the connected components of its
# nucleus pixels against the expert objects (tools/demo_cells.py prints both).
_base_ = [
    '../_base_/models/mask2former_vit-adapter_uni-tiny.py',
    '../_base_/datasets/nuclei_demo.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_40k_layer-decay.py',
]
num_classes = 2
model = dict(
    data_preprocessor=dict(size=(256, 256)),
    decode_head=dict(num_classes=num_classes, loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    test_cfg=dict(_delete_=True, mode='whole'))  # the whole quadrant at once, as the instance model sees it

train_dataloader = dict(batch_size=2, num_workers=2)
max_iters = 800
optim_wrapper = dict(optimizer=dict(lr=5e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=200)
# data/nuclei's validation quadrant is its test quadrant: validation only reports, no checkpoint is chosen on it.
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(interval=400, max_keep_ckpts=1, save_best=None))
env_cfg = dict(cudnn_benchmark=False)
