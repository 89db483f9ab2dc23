# CRAG colorectal gland segmentation (Graham et al., MedIA 2019): 20x tiles, ~0.55 um/px.
# Convert the download first:
#   python tools/dataset_converters/crag.py CRAG_v2/CRAG data/crag

_base_ = ['./histology_folder.py']

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

dataset = dict(data_root=data_root, metainfo=metainfo, mpp=mpp)
train_dataloader = dict(dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))
