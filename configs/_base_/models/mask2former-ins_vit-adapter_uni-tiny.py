# The instance model at test size: the modules and code paths of mask2former-ins_vit-adapter_uni.py with the
# widths of mask2former_vit-adapter_uni-tiny.py (uni-tiny is vit_large_patch16_224 at width 64 / depth 4,
# random initialisation), small enough to train on a CPU.
#
# 100 queries: the shipped demo data (data/nuclei) holds at most 18 nuclei in a 128 px window and 44 in a
# 256 px one (its whole test quadrant holds 35), so every nucleus is within reach with room to spare.
_base_ = ['./mask2former-ins_vit-adapter_uni.py']
embed_dim = 64
feat = 64
num_queries = 100
model = dict(
    backbone=dict(
        encoder='uni-tiny', encoder_weights=None, drop_path_rate=0.1, conv_inplane=16, deform_num_heads=4,
        interaction_indexes=None),
    panoptic_head=dict(
        in_channels=[embed_dim] * 4,
        feat_channels=feat,
        out_channels=feat,
        num_queries=num_queries,
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
                ffn_cfg=dict(embed_dims=feat, feedforward_channels=4 * feat)))),
    train_cfg=dict(num_points=2048),
    test_cfg=dict(max_per_image=num_queries))
