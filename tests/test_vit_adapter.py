"""ViT-Adapter backbone: pyramid shapes, geometry, gradients, checkpointing, freezing, config errors."""
from __future__ import annotations

import math

import pytest
import torch

from uniseg.models.backbones import ViTAdapter
from uniseg.models.backbones.adapter_modules import AdapterGeometry, default_interaction_indexes

TINY = {"uni-tiny": dict(deform_num_heads=4), "uni2-h-tiny": dict(deform_num_heads=3)}


def _adapter(encoder="uni-tiny", **kwargs):
    torch.manual_seed(0)
    return ViTAdapter(encoder, conv_inplane=16, norm_cfg=dict(type="SyncBN"), **{**TINY[encoder], **kwargs})


@pytest.mark.parametrize("encoder", ["uni-tiny", "uni2-h-tiny"])
@pytest.mark.parametrize("hw", [(128, 128), (96, 160), (100, 75)])
def test_four_levels_at_strides_4_to_32(encoder, hw):
    model = _adapter(encoder).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *hw))
    assert len(outs) == 4
    for out, stride in zip(outs, (4, 8, 16, 32)):
        assert out.shape == (2, model.embed_dim, math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))
        assert torch.isfinite(out).all()


def test_interaction_groups():
    assert default_interaction_indexes(24) == [[0, 5], [6, 11], [12, 17], [18, 23]]
    assert default_interaction_indexes(4) == [[0, 0], [1, 1], [2, 2], [3, 3]]
    assert default_interaction_indexes(10) == [[0, 1], [2, 3], [4, 5], [6, 9]]
    with pytest.raises(ValueError, match="interaction_indexes"):
        _adapter(interaction_indexes=[[0, 1], [3, 3]])  # skips block 2
    with pytest.raises(ValueError, match="cover 3 blocks but the encoder has 4"):
        _adapter(interaction_indexes=[[0, 0], [1, 1], [2, 2]])


def test_geometry_aligns_patch14_tokens_with_the_pyramid():
    """Reference points of both streams address the same pixels when ViT and pyramid grids differ."""
    geom = AdapterGeometry.build((64, 96), patch_size=14, device=torch.device("cpu"))
    assert geom.vit_shape == (5, 7) and geom.vit_extent == (70, 98)
    assert geom.pyramid_shapes == [(8, 12), (4, 6), (2, 3)]
    ref, shapes, start = geom.injector_inputs
    # token (row 1, col 2) of the ViT grid has its centre at pixel (x, y) = (35, 21) of the 64 x 96 pyramid image
    idx = 1 * 7 + 2
    assert torch.allclose(ref[0, idx, 0], torch.tensor([35 / 96, 21 / 64]))
    assert torch.equal(ref[0, :, 0], ref[0, :, 2])  # all pyramid levels span the same padded image
    ref_x, shapes_x, _ = geom.extractor_inputs
    # stride-8 cell (row 0, col 3) has its centre at pixel (28, 4) of the 70 x 98 ViT input
    assert torch.allclose(ref_x[0, 3, 0], torch.tensor([28 / 98, 4 / 70]))
    assert shapes_x.tolist() == [[5, 7]]
    # a ViT map resampled to stride 16: the grid covers exactly the pyramid extent
    vit_map = torch.arange(35.0).view(1, 1, 5, 7)
    assert geom.vit_map_at(vit_map, 16).shape[-2:] == (4, 6)


def test_patch16_geometry_matches_the_original_adapter():
    geom = AdapterGeometry.build((128, 64), patch_size=16, device=torch.device("cpu"))
    ref, _, _ = geom.injector_inputs
    h, w = geom.vit_shape
    ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h) / h, torch.linspace(0.5, w - 0.5, w) / w,
                            indexing="ij")
    assert torch.allclose(ref[0, :, 0], torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))


def test_gradients_reach_vit_adapter_and_prefix_tokens():
    model = _adapter("uni2-h-tiny", init_values=0.1).train()
    outs = model(torch.randn(2, 3, 96, 112))
    sum(o.square().mean() for o in outs).backward()
    grads = {
        "vit block 0": model.vit.blocks[0].attn.qkv.weight,
        "vit last block": model.vit.blocks[-1].mlp.fc2.weight,
        "register tokens": model.vit.reg_token,
        "class token": model.vit.cls_token,
        "patch embed": model.vit.patch_embed.proj.weight,
        "spatial prior": model.spm.stem[0].weight,
        "injector attention": model.interactions[0].injector.attn.value_proj.weight,
        "injector gamma": model.interactions[0].injector.gamma,
        "extractor ffn": model.interactions[0].extractor.ffn.fc1.weight,
        "extra extractor": model.interactions[-1].extra_extractors[1].attn.output_proj.weight,
        "level embed": model.level_embed,
        "output norm": model.norms[0].weight,
    }
    for name, param in grads.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert not model.vit.norm.weight.requires_grad  # unused by the pyramid, frozen so DDP does not wait for it


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    x = torch.randn(1, 3, 64, 96)
    results = []
    for with_cp in (False, True):
        model = _adapter(with_cp=with_cp, init_values=0.1).eval()  # eval: deterministic (no drop path/BN stats)
        outs = model(x)
        sum(o.sum() for o in outs).backward()
        results.append(([o.detach() for o in outs],
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (outs_a, grads_a), (outs_b, grads_b) = results
    for a, b in zip(outs_a, outs_b):
        assert torch.allclose(a, b, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-4, rtol=1e-3), name


def test_freezing_options():
    frozen = _adapter(freeze_vit=True)
    assert not any(p.requires_grad for p in frozen.vit.parameters())
    assert all(p.requires_grad for p in frozen.spm.parameters())
    last2 = _adapter(trainable_vit_blocks=2)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in last2.vit.named_parameters() if p.requires_grad}
    assert trainable == {"blocks.2", "blocks.3"}
    with pytest.raises(ValueError, match="trainable_vit_blocks=7"):
        _adapter(trainable_vit_blocks=7)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="ViTAdapter.encoder: .*unknown encoder 'uni-huge'"):
        ViTAdapter("uni-huge")
    with pytest.raises(ValueError, match="deform_num_heads=5"):
        ViTAdapter("uni-tiny", deform_num_heads=5)


def test_encoder_weights_load_in_init_weights_not_at_build(tmp_path):
    from uniseg.models.backbones import create_encoder

    torch.manual_seed(5)
    source = create_encoder("uni-tiny")
    torch.save(source.state_dict(), tmp_path / "uni.bin")
    model = _adapter(encoder_weights=str(tmp_path / "uni.bin"))
    assert not torch.equal(model.vit.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    model.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(model.vit.state_dict()[key], value), key


def test_full_uni_adapter_builds_with_a_303m_encoder():
    with torch.device("meta"):
        model = ViTAdapter("uni", deform_num_heads=16, norm_cfg=dict(type="SyncBN"))
    vit = sum(p.numel() for p in model.vit.parameters())
    total = sum(p.numel() for p in model.parameters())
    print(f"UNI ViT-Adapter: encoder {vit / 1e6:.1f}M, adapter {(total - vit) / 1e6:.1f}M parameters")
    assert 303e6 < vit < 304e6
    assert model.interaction_indexes == [[0, 5], [6, 11], [12, 17], [18, 23]]
    assert model.out_channels == [1024] * 4
