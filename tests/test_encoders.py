"""The encoder table, checkpoint loading in UNI's key layout, and token grids."""
from __future__ import annotations

import pytest
import timm
import torch

from uniseg.models.backbones import CheckpointError, create_encoder, get_encoder_spec, patch_token_grid
from uniseg.models.backbones.weights import load_encoder_weights


def _save_state_dict(model, path):
    torch.save(model.state_dict(), path)
    return path


def test_table_has_the_published_arguments():
    uni = get_encoder_spec("uni")
    assert (uni.timm_name, uni.patch_size, uni.embed_dim, uni.depth, uni.num_prefix_tokens) == (
        "vit_large_patch16_224", 16, 1024, 24, 1)
    assert uni.timm_kwargs["init_values"] == 1e-5
    assert uni.mean == (0.485, 0.456, 0.406) and uni.std == (0.229, 0.224, 0.225)
    uni2 = get_encoder_spec("uni2-h")
    assert (uni2.timm_name, uni2.patch_size, uni2.embed_dim, uni2.depth, uni2.num_heads) == (
        "vit_giant_patch14_224", 14, 1536, 24, 24)
    assert uni2.num_reg_tokens == 8 and uni2.num_prefix_tokens == 9
    assert uni2.timm_kwargs["no_embed_class"] is True
    assert uni2.timm_kwargs["mlp_ratio"] == pytest.approx(2.66667 * 2)
    with pytest.raises(KeyError, match="unknown encoder 'uni3'"):
        get_encoder_spec("uni3")


def test_full_size_key_layout_without_allocating():
    with torch.device("meta"):
        uni = create_encoder("uni")
        uni2 = create_encoder("uni2-h")
    n_uni = sum(p.numel() for p in uni.parameters())
    n_uni2 = sum(p.numel() for p in uni2.parameters())
    assert 303e6 < n_uni < 304e6, n_uni  # ViT-L/16: 303.35M
    assert 681e6 < n_uni2 < 682e6, n_uni2  # UNI2-h: 681.39M
    sd = uni.state_dict()
    assert sd["pos_embed"].shape == (1, 197, 1024)  # 14 x 14 patches + class token
    assert sd["blocks.23.ls1.gamma"].shape == (1024,) and "head.weight" not in sd
    sd2 = uni2.state_dict()
    assert sd2["reg_token"].shape == (1, 8, 1536)
    assert sd2["pos_embed"].shape == (1, 256, 1536)  # no entry for class/register tokens
    assert sd2["blocks.0.mlp.fc1.weight"].shape == (8192, 1536)  # packed SwiGLU: value and gate halves
    assert sd2["blocks.0.mlp.fc2.weight"].shape == (1536, 4096)


@pytest.mark.parametrize("name,size,grid", [("uni", 224, 14), ("uni", 512, 32), ("uni2-h", 224, 16),
                                            ("uni2-h", 448, 32)])
def test_patch_token_grid_full_size(name, size, grid):
    with torch.device("meta"):
        model = create_encoder(name)
        tokens = model.forward_features(torch.empty(1, 3, size, size))
        fmap = patch_token_grid(model, torch.empty(1, 3, size, size))
    spec = get_encoder_spec(name)
    assert tokens.shape == (1, grid * grid + spec.num_prefix_tokens, spec.embed_dim)
    assert fmap.shape == (1, spec.embed_dim, grid, grid)


def test_uni2h_drops_exactly_nine_prefix_tokens():
    torch.manual_seed(0)
    model = create_encoder("uni2-h-tiny").eval()
    x = torch.randn(1, 3, 224, 224)
    tokens = model.forward_features(x)
    fmap = patch_token_grid(model, x)
    assert model.num_prefix_tokens == 9
    assert fmap.shape[-2:] == (16, 16)
    assert torch.equal(fmap.flatten(2).transpose(1, 2), tokens[:, 9:])


def test_full_uni_checkpoint_from_timm_loads_strictly_with_same_features(tmp_path):
    """A real-size ViT-L state dict from timm's own model, in UNI's layout, round-trips exactly."""
    torch.manual_seed(0)
    reference = timm.create_model("vit_large_patch16_224", pretrained=False, init_values=1e-5, num_classes=0,
                                  dynamic_img_size=True).eval()
    ckpt = _save_state_dict(reference, tmp_path / "pytorch_model.bin")
    model = create_encoder("uni", weights=str(ckpt)).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert got.shape == (1, 1024)
    assert torch.equal(expected, got)


def _uni2h_tiny_reference():
    from timm.layers import SwiGLUPacked

    # UNI2-h's published timm arguments at tiny width/depth: an independent construction of the same layout.
    return timm.create_model("vit_giant_patch14_224", pretrained=False, img_size=224, patch_size=14, depth=4,
                             num_heads=4, init_values=1e-5, embed_dim=96, mlp_ratio=2.66667 * 2, num_classes=0,
                             no_embed_class=True, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, reg_tokens=8,
                             dynamic_img_size=True).eval()


def test_uni2h_layout_checkpoint_loads_with_same_features(tmp_path):
    torch.manual_seed(1)
    reference = _uni2h_tiny_reference()
    ckpt = _save_state_dict(reference, tmp_path / "pytorch_model.bin")
    model = create_encoder("uni2-h-tiny", weights=str(ckpt)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(reference(x), model(x))


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    reference = create_encoder("uni-tiny").eval()
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path))
    model = create_encoder("uni-tiny", weights=str(path)).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(reference(x), model(x))


def test_renamed_key_fails_naming_it(tmp_path):
    state = create_encoder("uni-tiny").state_dict()
    state["blocks.0.ls1.scale"] = state.pop("blocks.0.ls1.gamma")
    path = tmp_path / "renamed.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        create_encoder("uni-tiny", weights=str(path))
    message = str(info.value)
    assert "blocks.0.ls1.gamma" in message and "blocks.0.ls1.scale" in message and str(path) in message


def test_missing_layer_scale_is_not_silently_dropped(tmp_path):
    state = create_encoder("uni-tiny").state_dict()
    del state["blocks.3.ls2.gamma"]
    path = tmp_path / "no_ls.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing: blocks\.3\.ls2\.gamma"):
        create_encoder("uni-tiny", weights=str(path))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weights": create_encoder("uni-tiny").state_dict(), "obj": object()}, path)
    with pytest.raises(CheckpointError, match="not a readable weights-only checkpoint"):
        create_encoder("uni-tiny", weights=str(path))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="nope.bin: checkpoint file not found"):
        create_encoder("uni-tiny", weights=str(tmp_path / "nope.bin"))
    bad = tmp_path / "truncated.bin"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointError, match="truncated.bin"):
        create_encoder("uni-tiny", weights=str(bad))


def test_position_embeddings_are_resampled_for_another_input_size(tmp_path):
    torch.manual_seed(2)
    reference = create_encoder("uni-tiny").eval()  # 224 -> 14 x 14 position grid
    ckpt = _save_state_dict(reference, tmp_path / "w.bin")
    model = create_encoder("uni-tiny", weights=str(ckpt), img_size=512).eval()  # 32 x 32 grid stored
    assert model.pos_embed.shape == (1, 1 + 32 * 32, 64)
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        # the resampled table equals what the 224 model computes on the fly for a 512 input
        assert torch.allclose(reference(x), model(x), atol=1e-5)


def test_hub_id_offline_and_not_cached_says_what_to_do(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = get_encoder_spec("uni")
    model = torch.nn.Linear(1, 1)
    with pytest.raises(CheckpointError) as info:
        load_encoder_weights(model, "hf-hub:MahmoodLab/uni", spec)
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message and "hf download" in message
    assert "MahmoodLab/uni" in message


def test_gated_hub_repo_message(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    calls = []

    def fake_download(repo_id, filename, local_files_only=False, **kwargs):
        calls.append((repo_id, local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        raise _http_error(GatedRepoError, "401 Client Error: access to this model is restricted")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(CheckpointError) as info:
        load_encoder_weights(torch.nn.Linear(1, 1), "hub", get_encoder_spec("uni2-h"))
    message = str(info.value)
    assert "gated" in message and "https://huggingface.co/MahmoodLab/UNI2-h" in message and "HF_TOKEN" in message
    assert calls[0] == ("MahmoodLab/UNI2-h", True)  # the cache is always tried first


def _http_error(cls, message):
    """An instance of a huggingface_hub HTTP error without a real HTTP response (its signature varies)."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


def test_hub_id_resolves_from_local_cache_offline(tmp_path, monkeypatch):
    """A checkpoint placed in the Hugging Face cache layout loads with no network."""
    from huggingface_hub import constants

    reference = create_encoder("uni-tiny").eval()
    snapshot = tmp_path / "hub" / "models--MahmoodLab--UNI" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.save(reference.state_dict(), snapshot / "pytorch_model.bin")
    (tmp_path / "hub" / "models--MahmoodLab--UNI" / "refs").mkdir()
    (tmp_path / "hub" / "models--MahmoodLab--UNI" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    model = create_encoder("uni-tiny").eval()
    spec = get_encoder_spec("uni")  # the hub id and file name of real UNI, weights of the tiny layout
    tiny_spec = get_encoder_spec("uni-tiny")
    import dataclasses

    path = load_encoder_weights(model, "hf-hub:MahmoodLab/uni",
                                dataclasses.replace(tiny_spec, hf_hub_id=spec.hf_hub_id, hf_aliases=spec.hf_aliases))
    assert path.name == "pytorch_model.bin"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(reference(x), model(x))


def test_public_names_stay_importable_from_the_package():
    import uniseg.models.backbones as backbones
    from uniseg.models.backbones import spec

    for name in ("ENCODERS", "EncoderSpec", "get_encoder_spec", "list_encoders", "create_encoder",
                 "patch_token_grid", "CheckpointError", "load_encoder_weights", "ViTAdapter"):
        assert name in backbones.__all__ and hasattr(backbones, name), name
    assert backbones.ENCODERS is spec.ENCODERS and backbones.EncoderSpec is spec.EncoderSpec
