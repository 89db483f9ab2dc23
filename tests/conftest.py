"""Shared pytest set-up: mmseg's default scope and uniseg's registrations, a tiny model config."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _registries():
    from mmseg.utils import register_all_modules

    import uniseg  # noqa: F401  (registers uniseg's modules)

    register_all_modules(init_default_scope=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def svs_path() -> Path:
    """The shipped real whole-slide file (data/wsi), read by the slide-reader tests."""
    svs = REPO_ROOT / "data" / "wsi" / "CMU-1-Small-Region.svs"
    if not svs.is_file():
        pytest.fail(f"test slide {svs} is missing; see data/README.md for how to re-obtain it")
    return svs


@pytest.fixture(scope="session")
def _tiny_model_cfg():
    from mmengine.config import Config

    return Config.fromfile(str(REPO_ROOT / "configs/_base_/models/mask2former_vit-adapter_uni-tiny.py"))


@pytest.fixture
def tiny_model_cfg(_tiny_model_cfg):
    """A fresh copy of the tiny UNI + ViT-Adapter + Mask2Former model config (3 classes)."""
    cfg = copy.deepcopy(_tiny_model_cfg.model)
    num_classes = 3
    cfg.decode_head.num_classes = num_classes
    cfg.decode_head.loss_cls.class_weight = [1.0] * num_classes + [0.1]
    return cfg
