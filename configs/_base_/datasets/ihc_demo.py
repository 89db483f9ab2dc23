# Demo data shipped in data/ihc: scikit-image's IHC image (DAB + hematoxylin), 4 quadrants of
# 256x256 (3 train, 1 val = test). Masks are derived by colour deconvolution, NOT expert labels
# (see data/README.md; regenerate with `python tools/make_demo_data.py --overwrite`).
# The source resolution is unknown, so mpp is None.

_base_ = ['./histology_folder.py']

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

dataset = dict(data_root=data_root, metainfo=metainfo, mpp=mpp)
train_dataloader = dict(dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))
