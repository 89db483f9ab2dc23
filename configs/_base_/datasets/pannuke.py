# PanNuke nucleus types (Gamper et al. 2019/2020): 256x256 patches at 0.25 um/px.
# Convert the three extracted folds first (train fold 1, val fold 2, test fold 3):
#   python tools/dataset_converters/pannuke.py pannuke/ data/pannuke

_base_ = ['./histology_folder.py']

data_root = 'data/pannuke'
mpp = 0.25
metainfo = dict(
    classes=('background', 'neoplastic', 'inflammatory', 'connective', 'dead', 'epithelial'),
    palette=[[0, 0, 0], [213, 94, 0], [0, 114, 178], [0, 158, 115], [128, 128, 128], [240, 228, 66]])
# Samples are resampled to UNI's working resolution (20x, 0.5 um/px) from their mpp:
working_mpp = 0.5
img_scale = (128, 128)  # (w, h) after resampling: 256 px patches at 0.25 um/px are 128 px at 0.5 um/px
crop_size = (128, 128)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='ResampleToMPP', target_mpp=working_mpp),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=1.0),
    dict(type='Albumentations', transforms={{_base_.histology_augmentation}}),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResampleToMPP', target_mpp=working_mpp),  # predictions are mapped back to ori_shape
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]

dataset = dict(data_root=data_root, metainfo=metainfo, mpp=mpp)
# 128 px samples: 8 per GPU
train_dataloader = dict(batch_size=8, dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))
