# SegPath, one antibody-defined set (Komura et al., Patterns 2023): 984x984 tiles at 0.2208 um/px.
# This file is set up for the epithelium (panCK) set; for another set change the second class
# name and data_root. Convert the download first:
#   python tools/dataset_converters/segpath.py segpath/ data/segpath_panck --antibody panCK

_base_ = ['./histology_folder.py']

data_root = 'data/segpath_panck'
mpp = 0.2208
metainfo = dict(
    classes=('background', 'epithelium'),
    palette=[[0, 0, 0], [230, 159, 0]])
# Samples are resampled to UNI's working resolution (20x, 0.5 um/px) from their mpp:
working_mpp = 0.5
img_scale = (435, 435)  # (w, h) after resampling: 984 px tiles at 0.2208 um/px are 435 px at 0.5 um/px
crop_size = (384, 384)

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
train_dataloader = dict(dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))
