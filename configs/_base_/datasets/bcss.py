# BCSS breast tissue regions (Amgad et al., Bioinformatics 2019), 0.25 um/px, tiled to 1024 px,
# grouped into the challenge's five main classes; outside_roi is 255 (ignored).
# Convert the download first:
#   python tools/dataset_converters/bcss.py 0_Public-data-Amgad2019_0.25MPP data/bcss

_base_ = ['./histology_folder.py']

data_root = 'data/bcss'
mpp = 0.25
metainfo = dict(
    classes=('tumor', 'stroma', 'inflammatory', 'necrosis', 'other'),
    palette=[[213, 94, 0], [240, 228, 66], [0, 114, 178], [128, 128, 128], [0, 158, 115]])
# Samples are resampled to UNI's working resolution (20x, 0.5 um/px) from their mpp:
working_mpp = 0.5
img_scale = (512, 512)  # (w, h) after resampling: 1024 px tiles at 0.25 um/px are 512 px at 0.5 um/px
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
