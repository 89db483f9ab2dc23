"""Layer-wise learning-rate decay for timm ViT parameter names."""
from __future__ import annotations

import pytest
from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

from uniseg.engine.optimizers import vit_layer_id


def test_layer_ids_of_timm_names():
    n = 26  # depth 24 + 2
    assert vit_layer_id("backbone.vit.patch_embed.proj.weight", n) == 0
    assert vit_layer_id("backbone.vit.pos_embed", n) == 0
    assert vit_layer_id("backbone.vit.reg_token", n) == 0
    assert vit_layer_id("backbone.vit.blocks.0.attn.qkv.weight", n) == 1
    assert vit_layer_id("backbone.vit.blocks.23.ls2.gamma", n) == 24
    assert vit_layer_id("backbone.spm.stem.0.weight", n) == 25
    assert vit_layer_id("decode_head.query_embed.weight", n) == 25


@pytest.fixture
def optimizer_and_names(tiny_model_cfg):
    model = MODELS.build(tiny_model_cfg)
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type="ViTLayerDecayOptimizerConstructor",
        optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05)),
        paramwise_cfg=dict(layer_decay_rate=0.5)))
    optimizer = constructor(model).optimizer
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_name[names[id(p)]] = (group["lr"], group["weight_decay"])
    return model, by_name


def test_learning_rates_follow_depth(optimizer_and_names):
    model, groups = optimizer_and_names
    depth = len(model.backbone.vit.blocks)  # 4 -> 6 layers, top layer 5
    base = 1e-3
    assert groups["backbone.vit.patch_embed.proj.weight"][0] == pytest.approx(base * 0.5 ** (depth + 1))
    assert groups["backbone.vit.cls_token"][0] == pytest.approx(base * 0.5 ** (depth + 1))
    assert groups["backbone.vit.blocks.0.attn.qkv.weight"][0] == pytest.approx(base * 0.5 ** depth)
    assert groups[f"backbone.vit.blocks.{depth - 1}.mlp.fc1.weight"][0] == pytest.approx(base * 0.5)
    assert groups["backbone.interactions.0.injector.attn.value_proj.weight"][0] == pytest.approx(base)
    assert groups["decode_head.cls_embed.weight"][0] == pytest.approx(base)


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
