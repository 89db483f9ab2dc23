# CoNSeP nuclei as objects (Graham et al., MedIA 2019): 41 H&E tiles of 1000x1000 at 40x (0.25 um/px), with
# HoVer-Net's four classes (other, inflammatory, epithelial, spindle-shaped). Convert the download first:
#   python tools/dataset_converters/consep.py CoNSeP data/consep
# (Test/ is the test set; val is a seeded 10% of Train/).
#
# Training crops are 256 px at 0.5 um/px (128 um square, about 155 nuclei on average in CoNSeP; 200+ in
# dense tumour), within the 300 queries of the instance model. A whole test tile is 500 px at 0.5 um/px and
# holds about 590 nuclei on average: more than 300 queries can return, so the CoNSeP model config predicts
# test tiles by sliding windows of the training size (UniMask2Former, test_cfg.mode='slide'), as
# tools/infer.py predicts slides; predicted whole, a tile would be under-detected by construction.

_base_ = ['./histology_instance_folder.py']

data_root = 'data/consep'
mpp = 0.25
metainfo = dict(classes=('other', 'inflammatory', 'epithelial', 'spindle-shaped'))
working_mpp = 0.5
crop_size = (256, 256)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadInstanceAnnotations'),
    dict(type='ResampleToMPP', target_mpp=working_mpp),
    dict(type='mmseg.RandomCrop', crop_size=crop_size, cat_max_ratio=1.0),
    dict(type='Albumentations', transforms={{_base_.histology_augmentation}}),
    dict(type='InstanceMapToTargets'),
    dict(type='PackInstanceInputs'),
]
# The image is resampled to the working resolution; the annotations are loaded afterwards, so the ground
# truth stays at the source resolution, where the model returns its predictions (ori_shape). It is packed as
# one id map plus a label per object (gt_instance_map), not as an (n, H, W) mask stack.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResampleToMPP', target_mpp=working_mpp),
    dict(type='LoadInstanceAnnotations'),
    dict(type='InstanceMapToTargets', with_masks=False, keep_instance_map=True),
    dict(type='PackInstanceInputs'),
]

dataset = dict(data_root=data_root, metainfo=metainfo, mpp=mpp)
train_dataloader = dict(dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))

# Scored at the source resolution (0.25 um/px): HoVer-Net's 12 px (3 um) pairing radius, as in its CoNSeP results.
val_evaluator = dict(pair_radius=12)
test_evaluator = val_evaluator
