"""ClassCountCheckHook: the model's num_classes against each dataset's classes, before any step runs."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from mmengine.config import Config
from torch import nn

from mmseg.registry import HOOKS
from uniseg.engine.hooks import ClassCountCheckHook

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("background", "tumour", "stroma")


class _Head(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes


class _Segmentor(nn.Module):
    def __init__(self, num_classes: int, auxiliary=None) -> None:
        super().__init__()
        self.decode_head = _Head(num_classes)
        if auxiliary is not None:
            self.auxiliary_head = auxiliary


class _Logger:
    def __init__(self) -> None:
        self.warnings = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def _loop(classes=CLASSES, root="/data/crag"):
    dataset = SimpleNamespace(metainfo=dict(classes=classes), data_root=root)
    return SimpleNamespace(dataloader=SimpleNamespace(dataset=dataset))


def _runner(model, train=None, val=None, test=None):
    return SimpleNamespace(model=model, train_loop=train, val_loop=val, test_loop=test, logger=_Logger())


def test_fewer_model_classes_than_dataset_classes_is_an_error() -> None:
    runner = _runner(_Segmentor(2), train=_loop())
    with pytest.raises(ValueError, match=r"model.decode_head.num_classes is 2 but the train dataset "
                                         r"\(SimpleNamespace at /data/crag\) has 3 classes .*labels 2..2 cannot"):
        ClassCountCheckHook().before_train(runner)


def test_more_model_classes_than_dataset_classes_is_a_warning() -> None:
    runner = _runner(_Segmentor(5), train=_loop(), val=_loop(root="/data/val"))
    ClassCountCheckHook().before_train(runner)
    assert len(runner.logger.warnings) == 2  # train and val datasets, each named
    assert "num_classes is 5 but the train dataset (SimpleNamespace at /data/crag) has 3" in runner.logger.warnings[0]
    assert "the val dataset (SimpleNamespace at /data/val)" in runner.logger.warnings[1]
    assert "classes 3..4 are never trained" in runner.logger.warnings[0]


def test_matching_counts_pass_silently() -> None:
    runner = _runner(_Segmentor(3), train=_loop(), val=_loop(), test=_loop())
    hook = ClassCountCheckHook()
    hook.before_train(runner)
    hook.before_test(runner)
    assert runner.logger.warnings == []


def test_each_dataset_is_checked_once_across_validations() -> None:
    val = _loop()
    runner = _runner(_Segmentor(4), train=_loop(), val=val)
    hook = ClassCountCheckHook()
    hook.before_train(runner)
    for _ in range(3):  # validation runs every val_interval during training
        hook.before_val(runner)
    assert len(runner.logger.warnings) == 2


def test_test_dataset_is_checked_when_testing() -> None:
    runner = _runner(_Segmentor(2), test=_loop())
    with pytest.raises(ValueError, match="the test dataset"):
        ClassCountCheckHook().before_test(runner)


def test_wrapped_model_and_auxiliary_heads_are_checked() -> None:
    model = nn.DataParallel(_Segmentor(3, auxiliary=nn.ModuleList([_Head(3), _Head(2)])))
    runner = _runner(model, train=_loop())
    with pytest.raises(ValueError, match=r"model.auxiliary_head\[1\].num_classes is 2"):
        ClassCountCheckHook().before_train(runner)
    tta = SimpleNamespace(module=_Segmentor(2))  # SegTTAModel holds the segmentor as .module
    with pytest.raises(ValueError, match="decode_head.num_classes is 2"):
        ClassCountCheckHook().before_test(_runner(tta, test=_loop()))


def test_loops_and_datasets_without_classes_are_skipped() -> None:
    runner = _runner(_Segmentor(2), train=_loop(classes=None), val=None)
    ClassCountCheckHook().before_train(runner)
    assert runner.logger.warnings == []


def test_registered_and_enabled_in_the_default_runtime() -> None:
    assert isinstance(HOOKS.build(dict(type="ClassCountCheckHook")), ClassCountCheckHook)
    runtime = Config.fromfile(str(REPO / "configs" / "_base_" / "default_runtime.py"))
    assert dict(type="ClassCountCheckHook") in runtime.custom_hooks


class _Detector(nn.Module):
    """mmdet's Mask2Former: one panoptic_head whose num_classes is num_things + num_stuff."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.panoptic_head = _Head(num_classes)


def _instance_loop(classes, semantic_classes, root="/data/pannuke"):
    metainfo = dict(classes=classes, semantic_classes=semantic_classes)
    return SimpleNamespace(dataloader=SimpleNamespace(dataset=SimpleNamespace(metainfo=metainfo, data_root=root)))


PANNUKE_TYPES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")


def test_instance_detector_is_checked_against_the_cell_classes() -> None:
    loop = _instance_loop(PANNUKE_TYPES, ("background",) + PANNUKE_TYPES)
    with pytest.raises(ValueError, match=r"model.panoptic_head.num_classes is 1 but the train dataset .* has 5 "
                                         r"classes \('neoplastic'"):
        ClassCountCheckHook().before_train(_runner(_Detector(1), train=loop))
    runner = _runner(_Detector(5), train=loop, test=loop)  # 5 cell types, background is not an object class
    ClassCountCheckHook().before_train(runner)
    assert runner.logger.warnings == []


def test_semantic_model_scored_as_cells_is_checked_against_the_semantic_classes() -> None:
    """The nuclei demo's semantic twin (background, nucleus) is validated on the instance dataset (classes:
    nucleus): its head predicts the semantic classes, which is no mismatch."""
    loop = _instance_loop(("nucleus",), ("background", "nucleus"))
    runner = _runner(_Segmentor(2), train=_loop(classes=("background", "nucleus")), val=loop)
    ClassCountCheckHook().before_train(runner)
    assert runner.logger.warnings == []
    with pytest.raises(ValueError, match="decode_head.num_classes is 1 but the val dataset"):
        ClassCountCheckHook().before_val(_runner(_Segmentor(1), val=loop))


def test_real_instance_head_of_the_tiny_config_is_checked() -> None:
    """mmdet's own Mask2FormerHead, built from the tiny instance config, not only the fakes above."""
    import uniseg  # noqa: F401  (registers the pixel decoder the head builds)
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope

    cfg = Config.fromfile(str(REPO / "configs/uni/mask2former_uni-tiny-adapter_1xb2-800_nuclei-instance-256x256.py"))
    with DefaultScope.overwrite_default_scope("mmdet"):
        head = MODELS.build(cfg.model.panoptic_head)
    model = nn.Module()
    model.panoptic_head = head
    loop = _instance_loop(("nucleus",), ("background", "nucleus"))
    ClassCountCheckHook().before_train(_runner(model, train=loop))  # the demo's one cell class: fine
    with pytest.raises(ValueError, match="panoptic_head.num_classes is 1 but the test dataset .* has 5 classes"):
        ClassCountCheckHook().before_test(_runner(model, test=_instance_loop(PANNUKE_TYPES, None)))
