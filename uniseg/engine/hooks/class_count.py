"""Compare the model's number of classes with its datasets' before any sample is trained on or scored.

A config whose head has fewer classes (K) than the dataset fails in Mask2Former's target assignment
with a bare ``IndexError`` once a label above K reaches the loss, or worse, trains without a word when
the extra label is exactly K, which Mask2Former takes for its "no object" class (measured: 2 iterations,
exit 0); under ``tools/test.py`` it scores a model that can never predict those classes as if it could.
That is an error, raised before the first iteration and naming both numbers. A head with *more* classes than the dataset trains and
evaluates consistently (its extra classes are never targets, and predicting one counts against the
true class), but it is almost always a config left over from another dataset: a warning.

Which classes a head is compared with: a semantic head (``decode_head``, ``auxiliary_head``) predicts
every class of the masks, so it is compared with ``semantic_classes`` where an instance dataset gives
them (a semantic model scored as cells, such as the nuclei demo's twin) and ``classes`` otherwise; the
head of an mmdet detector (``panoptic_head`` of Mask2Former, ``num_things_classes +
num_stuff_classes``) predicts the dataset's ``classes``, which an instance dataset sets to the cell
classes.
"""
from __future__ import annotations

from typing import Iterator, Optional, Set, Tuple

from mmdet.registry import HOOKS as MMDET_HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

__all__ = ["ClassCountCheckHook"]


@MMDET_HOOKS.register_module()
@HOOKS.register_module()
class ClassCountCheckHook(Hook):
    """Check ``num_classes`` of the decode (and auxiliary) heads against each dataset's classes.

    The train and val datasets are checked when training starts, the test dataset when testing
    starts, and the val dataset when a stand-alone validation starts; each dataset once.
    """

    priority = "VERY_HIGH"  # before any hook that could run the model

    def __init__(self) -> None:
        self._checked: Set[int] = set()

    def before_train(self, runner) -> None:
        self._check(runner, "train", runner.train_loop)
        self._check(runner, "val", runner.val_loop)

    def before_val(self, runner) -> None:
        self._check(runner, "val", runner.val_loop)

    def before_test(self, runner) -> None:
        self._check(runner, "test", runner.test_loop)

    def _check(self, runner, split: str, loop) -> None:
        dataset = _dataset_of(loop)
        if dataset is None or id(dataset) in self._checked:
            return
        self._checked.add(id(dataset))
        metainfo = getattr(dataset, "metainfo", None) or {}
        where = _describe(dataset)
        for name, num_classes, predicts_semantic in _head_class_counts(runner.model):
            classes = (predicts_semantic and metainfo.get("semantic_classes")) or metainfo.get("classes")
            if not classes:
                continue
            if num_classes < len(classes):
                raise ValueError(
                    f"model.{name}.num_classes is {num_classes} but the {split} dataset ({where}) has "
                    f"{len(classes)} classes {tuple(classes)}: labels {num_classes}..{len(classes) - 1} cannot "
                    f"be learnt or predicted. Set model.{name}.num_classes={len(classes)} in the config")
            if num_classes > len(classes):
                runner.logger.warning(
                    f"model.{name}.num_classes is {num_classes} but the {split} dataset ({where}) has "
                    f"{len(classes)} classes {tuple(classes)}: classes {len(classes)}..{num_classes - 1} are "
                    f"never trained as targets, and predicting one counts as an error in the metrics. Is the "
                    f"config meant for another dataset?")


def _dataset_of(loop) -> Optional[object]:
    dataloader = getattr(loop, "dataloader", None)
    return getattr(dataloader, "dataset", None)


def _describe(dataset) -> str:
    root = getattr(dataset, "data_root", None)
    return f"{type(dataset).__name__} at {root}" if root else type(dataset).__name__


def _head_class_counts(model) -> Iterator[Tuple[str, int, bool]]:
    """(config path, num_classes, whether it predicts the semantic classes) of the decode head, every
    auxiliary head and an mmdet detector's panoptic head, for those that have a class count."""
    if is_model_wrapper(model):  # DDP and other registered wrappers
        model = model.module
    if not hasattr(model, "decode_head") and hasattr(getattr(model, "module", None), "decode_head"):
        model = model.module  # test-time augmentation (SegTTAModel) holds the segmentor as .module
    heads = [("decode_head", getattr(model, "decode_head", None))]
    panoptic = getattr(model, "panoptic_head", None)
    auxiliary = getattr(model, "auxiliary_head", None)
    if auxiliary is not None:
        if hasattr(auxiliary, "__iter__"):  # nn.ModuleList of several auxiliary heads
            heads += [(f"auxiliary_head[{i}]", head) for i, head in enumerate(auxiliary)]
        else:
            heads.append(("auxiliary_head", auxiliary))
    for name, head in heads:
        num_classes = getattr(head, "num_classes", None)
        if isinstance(num_classes, int):
            yield name, num_classes, True
    num_classes = getattr(panoptic, "num_classes", None)
    if isinstance(num_classes, int):
        yield "panoptic_head", num_classes, False
