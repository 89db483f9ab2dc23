# Runtime for cells as objects (mmdet Mask2Former in instance mode): the shared uniseg runtime, in mmdet's
# scope. Everything default_runtime.py sets (custom_imports, seeding, the IterationSeedHook, logging) applies;
# uniseg's engine classes are registered in mmdet's registries as well, so they resolve here by bare name.
_base_ = ['./default_runtime.py']
default_scope = 'mmdet'
visualizer = dict(type='DetLocalVisualizer', vis_backends={{_base_.vis_backends}}, name='visualizer')
tta_model = None  # mmseg's SegTTAModel does not apply to instance masks
