# ViT-Adapter's fine-tuning schedule for ViT-L: AdamW, weight decay 0.05, layer-wise lr decay 0.9,
# linear warm-up over 1500 iterations then poly decay (power 1.0). 40k iterations suit histology
# datasets of a few thousand tiles (ADE20K uses 160k).
# decay_head_embeddings=True follows ViT-Adapter's recipe: Mask2Former's query/level/class/mask embeddings
# share the patch embedding's layer 0 (lr x 0.9^(depth+1)); False trains them at the full lr like the rest
# of the head.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-5, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='ViTLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9, decay_head_embeddings=True))
max_iters = 40000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=4000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # mmengine's CheckpointHook, reordered: write (temporary, fsync, rename), then update last_checkpoint,
    # then remove superseded checkpoints; checkpoints are plain (weights-only) data with a checksum.
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=4000, max_keep_ckpts=2, save_best='mDice'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
# 8 GPUs x 2 images, as in the recipe; `--auto-scale-lr` rescales lr for other totals.
auto_scale_lr = dict(enable=False, base_batch_size=16)
