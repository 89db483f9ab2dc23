# Runtime shared by every uniseg config (mmengine 0.10 / mmseg 1.x conventions).
default_scope = 'mmseg'
custom_imports = dict(imports=['uniseg'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer', alpha=0.5)
log_processor = dict(by_epoch=False)
log_level = 'INFO'
# uniseg's runner: checkpoints are read weights-only and checksum-verified, weights load strictly
# (a checkpoint that does not fit the model is an error listing the keys), and `--resume` falls back to
# the newest complete checkpoint when last_checkpoint is empty or stale. Under --strategy fsdp,
# tools/train.py selects 'UnisegFlexibleRunner'.
runner_type = 'UnisegRunner'
load_from = None
# Set to False to initialise from weights of another task (e.g. another class count): the fitting
# weights load, the others are listed in a warning. Resuming is always strict; tools/test.py too.
load_from_strict = True
resume = False
randomness = dict(seed=0)
tta_model = dict(type='SegTTAModel')
# Reproducible resume: torch's generator is re-seeded from (seed, rank, iteration) each iteration.
# FlushDenormalHook: subnormal floats flushed to zero during the run (CPU steps slow down 10x without it).
# ClassCountCheckHook: the model's class count must cover every dataset's classes.
custom_hooks = [dict(type='IterationSeedHook'), dict(type='FlushDenormalHook'), dict(type='ClassCountCheckHook')]
