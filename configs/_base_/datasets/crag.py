# CRAG colorectal gland segmentation (Graham et al., MedIA 2019): 20x tiles, ~0.55 um/px.
# Convert the download first:
#   python tools/dataset_converters/crag.py CRAG_v2/CRAG data/crag

_base_ = ['../augmentations/histology.py']

dataset_type = 'HistologySegDataset'
data_root = 'data/crag'
mpp = 0.55
metainfo = dict(
    classes=('background', 'gland'),
    palette=[[0, 0, 0], [230, 159, 0]])
# Samples are resampled to UNI's working resolution (20x, 0.5 um/px) from their mpp:
working_mpp = 0.5
img_scale = (1663, 1663)  # (w, h) after resampling: 1512 px tiles at 0.55 um/px are 1663 px at 0.5 um/px
crop_size = (512, 512)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='ResampleToMPP', target_mpp=working_mpp),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
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
