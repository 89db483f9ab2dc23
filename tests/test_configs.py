"""Every config under configs/ loads, and every leaf config builds a consistent model (full size on meta)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
ALL = sorted((REPO / "configs").rglob("*.py"))
LEAVES = sorted((REPO / "configs" / "uni").glob("*.py"))


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_loads(path):
    Config.fromfile(str(path))


def test_leaf_names_follow_openmmlab_convention():
    import re

    pattern = re.compile(r"^[a-z0-9]+_[a-z0-9.-]+_\d+xb\d+-[\d.]+k?_[a-z0-9-]+-\d+x\d+\.py$")
    for path in LEAVES:
        assert pattern.match(path.name), path.name


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: p.stem)
def test_leaf_name_states_its_schedule_and_crop(path):
    """`{gpus}xb{batch}-{iters}_{dataset}-{crop}`: the name is what users read, so it must be true."""
    import re

    cfg = Config.fromfile(str(path))
    gpus_batch, iters, crop = re.search(r"_(\d+xb\d+)-([\d.]+k?)_.*-(\d+x\d+)\.py$", path.name).groups()
    assert gpus_batch.split("xb")[1] == str(cfg.train_dataloader.batch_size), "per-GPU batch size"
    expected_iters = float(iters[:-1]) * 1000 if iters.endswith("k") else float(iters)
    assert cfg.train_cfg.max_iters == expected_iters
    h, w = (int(v) for v in crop.split("x"))
    assert tuple(cfg.model.data_preprocessor.size) == (h, w)


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: p.stem)
def test_leaf_config_builds_a_consistent_model(path):
    cfg = Config.fromfile(str(path))
    classes = cfg.test_dataloader.dataset.metainfo.classes
    head = cfg.model.decode_head
    assert head.num_classes == len(classes)
    assert len(head.loss_cls.class_weight) == len(classes) + 1 and head.loss_cls.class_weight[-1] == 0.1
    assert cfg.custom_imports.imports == ["uniseg"]
    tiny = "tiny" in cfg.model.backbone.encoder
    with torch.device("cpu" if tiny else "meta"):
        model = MODELS.build(cfg.model)
    assert model.decode_head.num_classes == len(classes)
    assert model.backbone.out_channels == head.in_channels
    if not tiny:
        params = sum(p.numel() for p in model.parameters()) / 1e6
        vit = sum(p.numel() for p in model.backbone.vit.parameters()) / 1e6
        print(f"{path.name}: {params:.1f}M parameters, encoder {vit:.1f}M")
        assert cfg.model.backbone.encoder_weights == "hub"
        assert cfg.optim_wrapper.constructor == "ViTLayerDecayOptimizerConstructor"
        assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.9
