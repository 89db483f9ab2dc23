# PanNuke nuclei as objects (Gamper et al. 2019/2020): 256x256 patches at 0.25 um/px, five nucleus types.
# The PanNuke converter writes the instance layout (instances/ beside masks/) by default:
#   python tools/dataset_converters/pannuke.py pannuke/ data/pannuke
# (train fold 1, val fold 2, test fold 3). The same folder also trains the semantic pannuke.py configs.

_base_ = ['./histology_instance_folder.py']

data_root = 'data/pannuke'
mpp = 0.25
# The thing classes (detector labels 0..4); the classes of masks/ (with background) come from meta.json.
metainfo = dict(classes=('neoplastic', 'inflammatory', 'connective', 'dead', 'epithelial'))
working_mpp = 0.5
crop_size = (128, 128)  # a whole patch: 256 px at 0.25 um/px is 128 px at 0.5 um/px

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadInstanceAnnotations'),
    dict(type='ResampleToMPP', target_mpp=working_mpp),
    # Scale jitter comes from the Affine in histology_augmentation: mmcv's RandomResize (used by the semantic
    # pannuke.py) resizes gt_seg_map only and would separate the class mask from the instance map.
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
# 128 px samples: 8 per GPU
train_dataloader = dict(batch_size=8, dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))

# Scored at the source resolution (0.25 um/px): objects pair for F1 within 12 px (3 um), HoVer-Net's radius at
# 40x, so F1 is comparable with published PanNuke figures. bPQ and mPQ follow PanNuke's protocol: averaged
# over the images of each tissue, then over the tissues (the converter records each patch's tissue in
# meta.json; group_key=None averages over all images instead).
val_evaluator = dict(pair_radius=12, group_key='tissue')
test_evaluator = val_evaluator
