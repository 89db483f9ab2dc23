"""Every config under configs/ loads, every leaf's name states its recipe, and every semantic leaf builds a
consistent model (full size on meta; instance leaves: tests/test_instance_model.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
ALL = sorted((REPO / "configs").rglob("*.py"))
LEAVES = sorted((REPO / "configs" / "uni").glob("*.py"))
# Cells as objects (mmdet Mask2Former in instance mode) carry "-instance" in the dataset part of their name,
# as mmdet marks panoptic configs "coco-panoptic"; test_leaf_scope_matches_its_name holds names to that.
INSTANCE_LEAVES = [p for p in LEAVES if "-instance-" in p.name]
SEMANTIC_LEAVES = [p for p in LEAVES if p not in INSTANCE_LEAVES]


def pipeline_crop(cfg):
    """(h, w) of the train pipeline's RandomCrop (mmseg's, also named 'mmseg.RandomCrop'), or None."""
    crops = [tuple(t.crop_size) for t in cfg.train_dataloader.dataset.pipeline
             if t.type.split(".")[-1] == "RandomCrop"]
    assert len(crops) <= 1, f"{len(crops)} RandomCrop steps in the train pipeline"
    return crops[0] if crops else None


def batch_size_hw(cfg):
    """(h, w) training batches are padded to: mmseg's ``size``, or a fixed-size batch augment of mmdet's."""
    preprocessor = cfg.model.data_preprocessor
    if preprocessor.get("size") is not None:
        return tuple(preprocessor.size)
    sizes = [tuple(step.size) for step in preprocessor.get("batch_augments") or [] if "size" in step]
    return sizes[0] if sizes else None


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
    crops = {c for c in (pipeline_crop(cfg), batch_size_hw(cfg)) if c is not None}
    assert crops == {(h, w)}, "training crop (train pipeline's RandomCrop, preprocessor's batch size)"


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: p.stem)
def test_leaf_scope_matches_its_name(path):
    cfg = Config.fromfile(str(path))
    if path in INSTANCE_LEAVES:
        assert cfg.default_scope == "mmdet" and cfg.model.type == "UniMask2Former"  # mmdet's Mask2Former + slide
        assert cfg.model.test_cfg.instance_on and not cfg.model.test_cfg.panoptic_on
    else:
        assert cfg.default_scope == "mmseg" and "decode_head" in cfg.model


@pytest.mark.parametrize("path", SEMANTIC_LEAVES, ids=lambda p: p.stem)
def test_leaf_config_builds_a_consistent_model(path):
    cfg = Config.fromfile(str(path))
    classes = cfg.train_dataloader.dataset.metainfo.classes
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
