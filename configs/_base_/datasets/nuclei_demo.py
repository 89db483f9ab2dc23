# The demo nuclei (data/nuclei, fluorescence, NOT H&E) for a *semantic* model (background / nucleus), trained
# exactly as nuclei_demo_instance.py trains an instance model: same images, crops and augmentations, drawn
# from the same random stream. It is evaluated as cells: the held-out quadrant is read as objects (mmdet's
# HistologyInstanceDataset and instance transforms) and CellInstanceMetric splits the predicted nucleus
# pixels into connected components, so both models are scored by one metric against one ground truth.

_base_ = ['./histology_folder.py', '../augmentations/fluorescence.py']

data_root = 'data/nuclei'
mpp = None
metainfo = dict(classes=('background', 'nucleus'), palette=[[0, 0, 0], [86, 180, 233]])
crop_size = (256, 256)  # the whole quadrant: the models are trained at the size they are tested at

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=1.0),
    dict(type='Albumentations', transforms={{_base_.fluorescence_augmentation}}),
    dict(type='PackSegInputs'),
]
cell_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmdet.LoadInstanceAnnotations'),
    dict(type='mmdet.InstanceMapToTargets', with_masks=False, keep_instance_map=True),
    dict(type='mmdet.PackInstanceInputs'),
]
cell_dataset = dict(
    type='mmdet.HistologyInstanceDataset',
    data_prefix=dict(img_path='images', seg_map_path='masks', inst_map_path='instances'),
    data_root=data_root,
    metainfo=dict(classes=('nucleus', )),
    mpp=mpp,
    test_mode=True,
    pipeline=cell_test_pipeline)

train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo, mpp=mpp, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(_delete_=True, ann_file='splits/val.txt', **cell_dataset))
test_dataloader = dict(dataset=dict(_delete_=True, ann_file='splits/test.txt', **cell_dataset))

# The semantic class 'nucleus' (value 1) is the cell class; 12 px pairing radius as in nuclei_demo_instance.py.
val_evaluator = dict(_delete_=True, type='CellInstanceMetric', pred_source='semantic', gt_source='instance_map',
                     classes=['nucleus'], semantic_thing_classes=[1], pair_radius=12)
test_evaluator = val_evaluator
