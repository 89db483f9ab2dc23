# SegPath, one antibody-defined set (Komura et al., Patterns 2023): 984x984 tiles at 0.2208 um/px.
# This file is set up for the epithelium (panCK) set; for another set change the second class
# name and data_root. Convert the download first:
#   python tools/dataset_converters/segpath.py segpath/ data/segpath_panck --antibody panCK

_base_ = ['../augmentations/histology.py']

dataset_type = 'HistologySegDataset'
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

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='splits/train.txt',
        data_prefix=dict(img_path='images', seg_map_path='masks'),
        metainfo=metainfo,
        mpp=mpp,
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='splits/val.txt',
        data_prefix=dict(img_path='images', seg_map_path='masks'),
        metainfo=metainfo,
        mpp=mpp,
        pipeline=test_pipeline))
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='splits/test.txt',
        data_prefix=dict(img_path='images', seg_map_path='masks'),
        metainfo=metainfo,
        mpp=mpp,
        pipeline=test_pipeline))

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU', 'mDice'])
test_evaluator = val_evaluator
