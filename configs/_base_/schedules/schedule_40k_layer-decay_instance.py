# The shared 40k layer-decay schedule (schedule_40k_layer-decay.py: AdamW lr 2e-5, weight decay 0.05, layer
# decay 0.9, warm-up then poly) for instance models: the best checkpoint is chosen by binary panoptic quality
# (CellInstanceMetric's cell/bPQ) instead of mDice, and predictions are drawn by mmdet's hook.
_base_ = ['./schedule_40k_layer-decay.py']
default_hooks = dict(
    checkpoint=dict(save_best='cell/bPQ', rule='greater'),
    visualization=dict(type='DetVisualizationHook'))
