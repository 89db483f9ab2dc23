# Demo data shipped in data/ihc: scikit-image's IHC image (DAB + hematoxylin), 4 quadrants of
# 256x256 (3 train, 1 val = test). Masks are derived by colour deconvolution, NOT expert labels
# (see data/README.md; regenerate with `python tools/make_demo_data.py --overwrite`).
# The source resolution is unknown, so mpp is None.

_base_ = ['../augmentations/histology.py']

dataset_type = 'HistologySegDataset'
data_root = 'data/ihc'
mpp = None
metainfo = dict(
    classes=('background', 'nuclei', 'dab_positive'),
    palette=[[0, 0, 0], [86, 180, 233], [213, 94, 0]])
crop_size = (128, 128)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    # >>> ResampleToMPP goes here once the demo's mpp is known: dict(type='ResampleToMPP', target_mpp=0.5)
    #     (it is unknown for this image, so no resampling and no scale jitter: crops + flips only)
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=1.0),
    dict(type='Albumentations', transforms={{_base_.histology_augmentation}}),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    # >>> ResampleToMPP goes here once the demo's mpp is known: dict(type='ResampleToMPP', target_mpp=0.5)
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
