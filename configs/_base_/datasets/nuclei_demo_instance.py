# Cells as objects on the demo data shipped in data/nuclei: one real fluorescence image (NOT H&E) of nuclei
# with expert instance masks (2018 Data Science Bowl, via stardist), 4 quadrants of 256x256, 3 train and
# 1 held out (val = test). Classes: background, nucleus (the one thing class). The pixel size is unknown,
# so there is no resampling (see data/nuclei/README.md).

_base_ = ['./histology_instance_folder.py', '../augmentations/fluorescence.py']

data_root = 'data/nuclei'
mpp = None
metainfo = dict(classes=('nucleus', ))  # the thing classes; class names of masks/ come from meta.json
crop_size = (256, 256)  # the whole quadrant: the models are trained at the size they are tested at

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadInstanceAnnotations'),
    dict(type='mmseg.RandomCrop', crop_size=crop_size, cat_max_ratio=1.0),
    dict(type='Albumentations', transforms={{_base_.fluorescence_augmentation}}),
    dict(type='InstanceMapToTargets'),
    dict(type='PackInstanceInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadInstanceAnnotations'),
    dict(type='InstanceMapToTargets', with_masks=False, keep_instance_map=True),  # one id map, no mask stack
    dict(type='PackInstanceInputs'),
]

dataset = dict(data_root=data_root, metainfo=metainfo, mpp=mpp)
train_dataloader = dict(dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))

# Objects pair for F1 within 12 px: half the median nucleus diameter of the training quadrants (23 px),
# the same proportion as HoVer-Net's 12 px at 40x.
val_evaluator = dict(pair_radius=12)
test_evaluator = val_evaluator
