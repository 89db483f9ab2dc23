# Cells as objects: UNI (ViT-L/16) + ViT-Adapter + mmdet's Mask2Former in instance mode (one mask, class and
# score per nucleus). The backbone, pixel decoder, transformer decoder, losses (cls/mask/dice 2/5/5, no-object
# 0.1) and Hungarian matcher are taken from the semantic base by reference, so the two recipes cannot drift
# apart; only the parts an instance model needs differ: mmdet's detector, DetDataPreprocessor, the fusion head
# in instance mode and the number of queries.
#
# Queries: Mask2Former finds at most one object per query, so num_queries must exceed the most nuclei a
# training window or test image holds. H&E tumour holds 200+ nuclei per 256 px window at 0.5 um/px (about
# 128 um square); 300 queries (max_per_image 300) leave room above that at a cost that is small beside the
# encoder (queries enter only the 9 decoder layers and the per-query mask logits). Leaf configs for sparser
# data may lower it; configs whose test images hold more objects than queries under-detect by construction.
_base_ = ['./mask2former_vit-adapter_uni.py']

num_things_classes = 1  # leaf configs override this AND the three num_things_classes / class_weight below
num_stuff_classes = 0
num_queries = 300

det_data_preprocessor = dict(
    type='DetDataPreprocessor',
    # UNI's normalisation (ImageNet mean/std) in 0..255 units; images are loaded BGR.
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_size_divisor=32,
    pad_mask=True,
    mask_pad_value=0,
    # Batches are padded to their largest image (training crops are all the pipeline's crop size).
    pad_seg=False)
data_preprocessor = dict(_delete_=True, **det_data_preprocessor)  # replaces the semantic base's SegDataPreProcessor

model = dict(
    _delete_=True,
    type='UniMask2Former',  # mmdet's Mask2Former; test_cfg.mode='slide' predicts large images by windows
    data_preprocessor=det_data_preprocessor,
    backbone={{_base_.model.backbone}},
    panoptic_head=dict(
        type='Mask2FormerHead',
        in_channels={{_base_.model.decode_head.in_channels}},
        strides={{_base_.model.decode_head.strides}},
        feat_channels={{_base_.model.decode_head.feat_channels}},
        out_channels={{_base_.model.decode_head.out_channels}},
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        num_queries=num_queries,
        num_transformer_feat_level={{_base_.model.decode_head.num_transformer_feat_level}},
        pixel_decoder={{_base_.model.decode_head.pixel_decoder}},
        enforce_decoder_input_project={{_base_.model.decode_head.enforce_decoder_input_project}},
        positional_encoding={{_base_.model.decode_head.positional_encoding}},
        transformer_decoder={{_base_.model.decode_head.transformer_decoder}},
        loss_cls=dict(
            type='CrossEntropyLoss',
            use_sigmoid=False,
            loss_weight=2.0,
            reduction='mean',
            class_weight=[1.0] * num_things_classes + [0.1]),
        loss_mask={{_base_.model.decode_head.loss_mask}},
        loss_dice={{_base_.model.decode_head.loss_dice}}),
    panoptic_fusion_head=dict(
        type='MaskFormerFusionHead',
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        loss_panoptic=None,
        init_cfg=None),
    train_cfg={{_base_.model.decode_head.train_cfg}},
    test_cfg=dict(
        mode='whole',  # or 'slide' with crop_size and stride: images with more cells than queries
        panoptic_on=False,
        semantic_on=False,
        instance_on=True,
        # One scored mask per query (a query's other classes score below any evaluator's 0.5 threshold).
        max_per_image=num_queries,
        iou_thr=0.8,
        filter_low_score=True),
    init_cfg=None)
