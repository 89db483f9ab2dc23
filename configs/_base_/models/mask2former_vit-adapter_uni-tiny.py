# The UNI + ViT-Adapter + Mask2Former model at test size: same modules and code paths as the ViT-L
# configuration (uni-tiny is vit_large_patch16_224 at width 64 / depth 4), small enough to train on a CPU.
_base_ = ['./mask2former_vit-adapter_uni.py']
embed_dim = 64
feat = 64
model = dict(
    data_preprocessor=dict(size=(128, 128)),
    backbone=dict(
        encoder='uni-tiny', encoder_weights=None, drop_path_rate=0.1, conv_inplane=16, deform_num_heads=4,
        interaction_indexes=None),
    decode_head=dict(
        in_channels=[embed_dim] * 4,
        feat_channels=feat,
        out_channels=feat,
        num_queries=16,
        pixel_decoder=dict(
            encoder=dict(
                num_layers=2,
                layer_cfg=dict(
                    self_attn_cfg=dict(embed_dims=feat, num_heads=4),
                    ffn_cfg=dict(embed_dims=feat, feedforward_channels=4 * feat))),
            positional_encoding=dict(num_feats=feat // 2)),
        positional_encoding=dict(num_feats=feat // 2),
        transformer_decoder=dict(
            num_layers=3,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=feat, num_heads=4),
                cross_attn_cfg=dict(embed_dims=feat, num_heads=4),
                ffn_cfg=dict(embed_dims=feat, feedforward_channels=4 * feat))),
        train_cfg=dict(num_points=2048)),
    test_cfg=dict(mode='slide', crop_size=(128, 128), stride=(96, 96)))
