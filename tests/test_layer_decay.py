"""Layer-wise learning-rate decay for timm ViT parameter names."""
from __future__ import annotations

import pytest
from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

from uniseg.engine.optimizers import vit_layer_id
from uniseg.engine.optimizers.layer_decay import HEAD_EMBEDDINGS


def test_layer_ids_of_timm_names():
    n = 26  # depth 24 + 2
    assert vit_layer_id("backbone.vit.patch_embed.proj.weight", n) == 0
    assert vit_layer_id("backbone.vit.pos_embed", n) == 0
    assert vit_layer_id("backbone.vit.reg_token", n) == 0
    assert vit_layer_id("backbone.vit.blocks.0.attn.qkv.weight", n) == 1
    assert vit_layer_id("backbone.vit.blocks.23.ls2.gamma", n) == 24
    assert vit_layer_id("backbone.spm.stem.0.weight", n) == 25
    assert vit_layer_id("backbone.level_embed", n) == 25  # the adapter's, not the head's
    assert vit_layer_id("decode_head.query_embed.weight", n) == 0  # ViT-Adapter's recipe
    assert vit_layer_id("decode_head.query_embed.weight", n, decay_head_embeddings=False) == 25
    assert vit_layer_id("decode_head.pixel_decoder.level_encoding.weight", n) == 25


def _groups_by_name(model, **paramwise_cfg):
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type="ViTLayerDecayOptimizerConstructor",
        optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05)),
        paramwise_cfg=dict(layer_decay_rate=0.5, **paramwise_cfg)))
    optimizer = constructor(model).optimizer
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_name[names[id(p)]] = (group["lr"], group["weight_decay"])
    return by_name


@pytest.fixture
def optimizer_and_names(tiny_model_cfg):
    model = MODELS.build(tiny_model_cfg)
    return model, _groups_by_name(model)


def test_learning_rates_follow_depth(optimizer_and_names):
    model, groups = optimizer_and_names
    depth = len(model.backbone.vit.blocks)  # 4 -> 6 layers, top layer 5
    base = 1e-3
    assert groups["backbone.vit.patch_embed.proj.weight"][0] == pytest.approx(base * 0.5 ** (depth + 1))
    assert groups["backbone.vit.cls_token"][0] == pytest.approx(base * 0.5 ** (depth + 1))
    assert groups["backbone.vit.blocks.0.attn.qkv.weight"][0] == pytest.approx(base * 0.5 ** depth)
    assert groups[f"backbone.vit.blocks.{depth - 1}.mlp.fc1.weight"][0] == pytest.approx(base * 0.5)
    assert groups["backbone.interactions.0.injector.attn.value_proj.weight"][0] == pytest.approx(base)
    assert groups["decode_head.pixel_decoder.encoder.layers.0.self_attn.value_proj.weight"][0] == pytest.approx(base)


def test_weight_decay_exclusions(optimizer_and_names):
    model, groups = optimizer_and_names
    no_decay = ["backbone.vit.pos_embed", "backbone.vit.cls_token", "backbone.vit.blocks.0.norm1.weight",
                "backbone.vit.blocks.0.attn.qkv.bias", "backbone.vit.blocks.0.ls1.gamma", "backbone.level_embed",
                "decode_head.query_embed.weight", "decode_head.query_feat.weight", "backbone.norms.0.weight"]
    for name in no_decay:
        assert groups[name][1] == 0.0, name
    for name in ["backbone.vit.blocks.0.attn.qkv.weight", "backbone.spm.stem.0.weight", "decode_head.cls_embed.weight"]:
        assert groups[name][1] == 0.05, name
    assert "backbone.vit.norm.weight" not in groups  # frozen (unused by the pyramid): not optimised
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(groups) == trainable


def test_head_embeddings_follow_vit_adapters_recipe_unless_switched_off(tiny_model_cfg):
    """ViT-Adapter's get_num_layer_for_vit puts the Mask2Former head's embeddings at layer 0."""
    model = MODELS.build(tiny_model_cfg)
    depth, base = len(model.backbone.vit.blocks), 1e-3
    embeddings = [n for n, p in model.named_parameters()
                  if p.requires_grad and n.split(".")[0] == "decode_head" and n.split(".")[1] in HEAD_EMBEDDINGS]
    # every name the recipe lists exists in mmseg's real Mask2Former head (weights and biases of the MLP)
    assert {n.split(".")[1] for n in embeddings} == set(HEAD_EMBEDDINGS)
    assert {"decode_head.cls_embed.bias", "decode_head.mask_embed.4.weight", "decode_head.query_feat.weight",
            "decode_head.query_embed.weight", "decode_head.level_embed.weight"} <= set(embeddings)
    rest_of_head = [n for n, p in model.named_parameters()
                    if p.requires_grad and n.startswith("decode_head.") and n not in embeddings]
    assert len(rest_of_head) > 100
    for cfg, embedding_lr in ((dict(), base * 0.5 ** (depth + 1)),
                              (dict(decay_head_embeddings=True), base * 0.5 ** (depth + 1)),
                              (dict(decay_head_embeddings=False), base)):
        groups = _groups_by_name(model, **cfg)
        for name in embeddings:
            assert groups[name][0] == pytest.approx(embedding_lr), (cfg, name)
        for name in rest_of_head:
            assert groups[name][0] == pytest.approx(base), (cfg, name)
        # the switch moves learning rates only: weight decay stays as before
        assert groups["decode_head.cls_embed.weight"][1] == 0.05
        assert groups["decode_head.query_embed.weight"][1] == 0.0 and groups["decode_head.cls_embed.bias"][1] == 0.0
