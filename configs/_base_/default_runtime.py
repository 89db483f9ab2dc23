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
load_from = None
resume = False
randomness = dict(seed=0)
tta_model = dict(type='SegTTAModel')
# Reproducible resume: torch's generator is re-seeded from (seed, rank, iteration) each iteration.
# FlushDenormalHook: subnormal floats flushed to zero during the run (CPU steps slow down 10x without it).
# ClassCountCheckHook: the model's class count must cover every dataset's classes.
custom_hooks = [dict(type='IterationSeedHook'), dict(type='FlushDenormalHook'), dict(type='ClassCountCheckHook')]
