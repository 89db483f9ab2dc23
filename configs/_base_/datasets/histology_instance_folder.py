# The instance layout (uniseg/datasets/instances.py): the folder layout of histology_folder.py plus
#   <data_root>/instances/<name>.png   16-bit object ids (0 = none)
# read by HistologyInstanceDataset (mmdet's registry). A dataset file inherits this and fills in data_root,
# the thing classes, microns per pixel and the pipelines, as the semantic dataset files do.
#
# Pipelines carry the class mask and the instance map as seg fields through every geometric transform and
# only then turn objects into mmdet targets (InstanceMapToTargets). Only transforms that move every seg field
# may come in between: uniseg's ResampleToMPP and Albumentations, mmseg's RandomCrop, RandomFlip, RandomRotate
# and Resize, written mmseg.X here (in this mmdet scope the bare Resize, RandomResize, RandomFlip and RandomCrop
# are mmdet's and move gt_seg_map alone; InstanceMapToTargets refuses the separated maps).

_base_ = ['./histology_folder.py']

dataset_type = 'HistologyInstanceDataset'
folder_layout = dict(type=dataset_type,
                     data_prefix=dict(img_path='images', seg_map_path='masks', inst_map_path='instances'))

train_dataloader = dict(dataset=dict(**folder_layout))
val_dataloader = dict(dataset=dict(**folder_layout, test_mode=True))
test_dataloader = dict(dataset=dict(**folder_layout, test_mode=True))

# Panoptic quality (bPQ, mPQ) and detection/type F1 of the predicted objects against the ground truth at the
# original resolution, read as the test pipelines pack it (InstanceMapToTargets(with_masks=False,
# keep_instance_map=True): one id map and a label per object). pair_radius (pixels of the evaluated images) is
# set per dataset.
val_evaluator = dict(_delete_=True, type='CellInstanceMetric', pred_source='instances', gt_source='instance_map')
test_evaluator = val_evaluator
