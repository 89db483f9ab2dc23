# The folder layout every histology dataset in uniseg is converted to (tools/dataset_converters/):
#   <data_root>/images/<name>.png, <data_root>/masks/<name>.png, <data_root>/splits/{train,val,test}.txt
# A dataset file inherits this and fills in what is its own: data_root, classes and palette, microns
# per pixel, and the pipelines, e.g.
#   dataset = dict(data_root=data_root, metainfo=metainfo, mpp=mpp)
#   train_dataloader = dict(dataset=dict(**dataset, pipeline=train_pipeline))

_base_ = ['../augmentations/histology.py']

dataset_type = 'HistologySegDataset'
folder_layout = dict(type=dataset_type, data_prefix=dict(img_path='images', seg_map_path='masks'))

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**folder_layout, ann_file='splits/train.txt'))
eval_loader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False))
val_dataloader = dict(**eval_loader, dataset=dict(**folder_layout, ann_file='splits/val.txt'))
test_dataloader = dict(**eval_loader, dataset=dict(**folder_layout, ann_file='splits/test.txt'))

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU', 'mDice'])
test_evaluator = val_evaluator
